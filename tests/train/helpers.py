"""Running the trainer from tests: in this process, or as `python -m sslx.main` subprocesses."""

import os
import subprocess
import sys

import orbax.checkpoint as ocp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, "configs", "simclr.py") + ":smoke"


def set_fields(config, overrides: dict):
  """Sets dotted fields ({"optim.lr": 0.1}) of an ml_collections config, new ones included."""
  with config.unlocked():
    for key, value in overrides.items():
      node = config
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  return config


def smoke_config(data_dir, method="simclr", **overrides):
  import importlib
  config = importlib.import_module(f"configs.{method}").get_config("smoke")
  config.data.data_dir = data_dir
  config.data.allow_download = False
  return set_fields(config, overrides)


def with_teacher_moved(variables) -> dict:
  """`variables` whose EMA teacher's params are not the student's (1.1 x + 0.01), so that a loss
  or an `apply` reading the wrong network shows."""
  import jax
  teacher = variables["teacher"]
  return {**variables,
          "teacher": {**teacher, "params": jax.tree.map(lambda x: 1.1 * x + 0.01,
                                                        teacher["params"])}}


def assert_teacher_follows_the_encoder(method, variables, momentum: float) -> None:
  """`method.after_update` at step 0 moves every teacher param to
  ``momentum * teacher + (1 - momentum) * student encoder`` and logs that momentum."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import pytest
  new_state, metrics = method.after_update(variables["params"], {"teacher": variables["teacher"]},
                                           jnp.asarray(0))
  assert float(metrics["train/ema_momentum"]) == pytest.approx(momentum)
  for new, old, student in zip(jax.tree.leaves(new_state["teacher"]["params"]),
                               jax.tree.leaves(variables["teacher"]["params"]),
                               jax.tree.leaves(variables["params"]["encoder"]), strict=True):
    np.testing.assert_allclose(new, momentum * old + (1 - momentum) * student, rtol=1e-5,
                               atol=1e-7)


def main_command(workdir, data_dir, *flags, config=SMOKE):
  return [sys.executable, "-m", "sslx.main", f"--config={config}", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", "--config.data.allow_download=False", *flags]


def xla_flags(num_devices: int) -> str:
  """The test session's XLA_FLAGS (tests/conftest.py) with `num_devices` fake CPU devices."""
  kept = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
          if not flag.startswith("--xla_force_host_platform_device_count=")]
  return " ".join([*kept, f"--xla_force_host_platform_device_count={num_devices}"])


def subprocess_env(num_devices=8):
  env = dict(os.environ)
  env["XLA_FLAGS"] = xla_flags(num_devices)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def run_main(workdir, data_dir, *flags, num_devices=8, timeout=600, config=SMOKE):
  result = subprocess.run(main_command(workdir, data_dir, *flags, config=config), cwd=REPO,
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
