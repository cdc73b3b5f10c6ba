"""Running the trainer from tests: in this process, or as `python -m sslx.main` subprocesses."""

import os
import subprocess
import sys

import orbax.checkpoint as ocp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, "configs", "simclr.py") + ":smoke"


def smoke_config(data_dir, method="simclr", **overrides):
  import importlib
  config = importlib.import_module(f"configs.{method}").get_config("smoke")
  config.data.data_dir = data_dir
  config.data.allow_download = False
  with config.unlocked():
    for key, value in overrides.items():
      node = config
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  return config


def main_command(workdir, data_dir, *flags):
  return [sys.executable, "-m", "sslx.main", f"--config={SMOKE}", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", "--config.data.allow_download=False", *flags]


def subprocess_env(num_devices=8):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def run_main(workdir, data_dir, *flags, num_devices=8, timeout=600):
  result = subprocess.run(main_command(workdir, data_dir, *flags), cwd=REPO,
                          env=subprocess_env(num_devices), capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def restore_state(workdir, step=None):
  """The saved train state of `workdir` as NumPy arrays (latest step by default)."""
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
    step = manager.latest_step() if step is None else step
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return step, restored.state


def start_processes(commands, env=None):
  """Popen each command from the repository root, output captured as text."""
  return [subprocess.Popen(c, cwd=REPO, env=env or subprocess_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True) for c in commands]


def kill_processes(procs):
  """A failed test must not leave runs behind (they slow the other pytest worker, and processes
  of a multi-process run would wait on each other forever)."""
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()
