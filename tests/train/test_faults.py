"""Faults a real run meets, each on a real run: preemption (SIGTERM), SIGKILL in the middle of a
checkpoint save, a truncated checkpoint, NaN losses (stop or skip), and run-to-run determinism.

The subprocess tests share one uninterrupted run (`straight`) of the smoke config as the reference
every interrupted run must end equal to, bit for bit.
"""

import os
import signal
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx.train import loop
from sslx.train.checkpoint import UnreadableCheckpointError
from sslx.train.metrics import read_metrics
from tests.train.helpers import (REPO, kill_processes, main_command, restore_state, run_main,
                                 smoke_config, start_processes, subprocess_env)

pytestmark = pytest.mark.slow

# 40 steps: a SIGTERM sent when step 10's checkpoint appears lands well before the end (the run
# stops at the next step), and every restart runs a few dozen steps, not a hundred.
TOTAL_STEPS = 40
FLAGS = [f"--config.total_steps={TOTAL_STEPS}", "--config.checkpoint_every=10",
         "--config.log_every=1", "--config.eval.enabled=False"]


def _losses(workdir):
  return [r["train/loss"] for r in read_metrics(str(workdir))]


def _assert_same_final_state(workdir_a, workdir_b, step):
  step_a, a = restore_state(str(workdir_a))
  step_b, b = restore_state(str(workdir_b))
  assert step_a == step_b == step
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def straight(fashion_mnist_dir, tmp_path_factory):
  """The uninterrupted run of TOTAL_STEPS steps."""
  workdir = tmp_path_factory.mktemp("straight")
  run_main(workdir, fashion_mnist_dir, *FLAGS)
  return workdir


@pytest.fixture
def started():
  """Starts subprocesses; any still running when the test ends is killed."""
  procs = []

  def start(command, env=None):
    procs.extend(start_processes([command], env))
    return procs[-1]

  yield start
  kill_processes(procs)


def _wait_for(path, proc, timeout=300):
  deadline = time.time() + timeout
  while not os.path.exists(path):
    if proc.poll() is not None or time.time() > deadline:
      proc.kill()
      raise AssertionError(f"{path} never appeared; output:\n{proc.communicate()[0][-4000:]}")
    time.sleep(0.005)


def test_the_host_waits_for_a_step_before_dispatching_the_one_after_next(fashion_mnist_dir,
                                                                         tmp_path, monkeypatch):
  """XLA dispatches steps asynchronously; unchecked, the host runs ahead up to the next log and a
  SIGTERM's save waits for every step queued. With each step's loss delayed 0.2 s on the device,
  the step two before must be done whenever the loop dispatches one."""
  real_make_train_step = loop.make_train_step
  losses, unfinished_at_dispatch = [], []

  def on_device_after_a_pause(x):
    time.sleep(0.2)
    return x

  delay = jax.jit(lambda loss: jax.pure_callback(
      on_device_after_a_pause, jax.ShapeDtypeStruct(loss.shape, loss.dtype), loss))

  def make_slow_train_step(*args, **kwargs):
    train_step = real_make_train_step(*args, **kwargs)

    def slow_train_step(state, batch):
      if len(losses) >= 2:
        unfinished_at_dispatch.append(not losses[-2].is_ready())
      state, metrics = train_step(state, batch)
      metrics = {**metrics, "train/loss": delay(metrics["train/loss"])}
      losses.append(metrics["train/loss"])
      return state, metrics

    return slow_train_step

  monkeypatch.setattr(loop, "make_train_step", make_slow_train_step)
  config = smoke_config(fashion_mnist_dir, **{"total_steps": 8, "log_every": 8,
                                              "checkpoint_every": 8, "eval.enabled": False})
  loop.train(config, str(tmp_path))
  assert len(unfinished_at_dispatch) == 6 and not any(unfinished_at_dispatch)


def test_sigterm_saves_exits_zero_and_the_restart_ends_equal(fashion_mnist_dir, straight,
                                                            tmp_path, started):
  proc = started(main_command(tmp_path, fashion_mnist_dir, *FLAGS))
  _wait_for(tmp_path / "checkpoints" / "10", proc)
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, output[-4000:]
  assert "preempted: checkpoint" in output
  saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  # It stopped part-way, and saved the step it stopped at (not only the periodic ones).
  last = saved[-1]
  assert 10 < last < TOTAL_STEPS, saved
  assert [r["step"] for r in read_metrics(str(tmp_path))] == list(range(1, last + 1))

  run_main(tmp_path, fashion_mnist_dir, *FLAGS)
  _assert_same_final_state(straight, tmp_path, TOTAL_STEPS)
  np.testing.assert_array_equal(_losses(straight), _losses(tmp_path))


def test_sigkill_during_a_save_keeps_the_previous_checkpoint(fashion_mnist_dir, straight,
                                                             tmp_path, started):
  marker = tmp_path / "saving"
  env = {**subprocess_env(), "SSLX_TEST_HANG_STEP": "20", "SSLX_TEST_HANG_MARKER": str(marker)}
  command = main_command(tmp_path / "run", fashion_mnist_dir, *FLAGS)
  command[1:3] = [os.path.join(REPO, "tests", "train", "hang_in_checkpoint_main.py")]
  proc = started(command, env)
  _wait_for(marker, proc)  # step 20's files are written, its commit (rename) not yet done
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  checkpoints = tmp_path / "run" / "checkpoints"
  assert sorted(s for s in os.listdir(checkpoints) if s.isdigit()) == ["10"]
  assert os.path.isdir(marker.read_text())  # the half-written step 20 is left as a temporary

  run_main(tmp_path / "run", fashion_mnist_dir, *FLAGS)  # resumes from 10
  _assert_same_final_state(straight, tmp_path / "run", TOTAL_STEPS)
  np.testing.assert_array_equal(_losses(straight), _losses(tmp_path / "run"))


def _truncate_largest_file(directory):
  files = [os.path.join(root, f) for root, _, names in os.walk(directory) for f in names]
  largest = max(files, key=os.path.getsize)
  size = os.path.getsize(largest)
  assert size > 100
  with open(largest, "r+b") as f:
    f.truncate(size // 2)


def test_truncated_latest_checkpoint_is_named_and_fallback_resumes(fashion_mnist_dir,
                                                                   tmp_path):
  config = smoke_config(fashion_mnist_dir, **{"eval.enabled": False})  # checkpoints at 3 and 6
  loop.train(config, str(tmp_path))
  _, uninterrupted = restore_state(str(tmp_path))
  latest = tmp_path / "checkpoints" / "6"
  _truncate_largest_file(latest / "state" / "d")  # the arrays (orbax's merged OCDBT data)

  # A rerun (or a longer one) must not silently start again, nor continue from the wrong step.
  with pytest.raises(UnreadableCheckpointError,
                     match=rf"{latest} \(step 6\) cannot be restored.*checkpoint_fallback=True "
                           r"to resume from step 3"):
    loop.train(config, str(tmp_path))
  assert latest.is_dir()  # nothing was moved or deleted without the option

  with config.unlocked():
    config.checkpoint_fallback = True
  out = loop.train(config, str(tmp_path))  # from step 3 back to step 6
  assert int(out["state"].step) == 6
  assert (tmp_path / "checkpoints_unreadable" / "6").is_dir()  # kept for inspection
  step, resumed = restore_state(str(tmp_path))
  assert step == 6
  for x, y in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(x, y)

  # When no checkpoint restores (as when the config no longer matches them), nothing is moved.
  for step in ("3", "6"):
    _truncate_largest_file(tmp_path / "checkpoints" / step / "state" / "d")
  with pytest.raises(UnreadableCheckpointError, match=r"none of the checkpoints \[6, 3\]"):
    loop.train(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]


def _simclr_with_nan_loss_at(bad_steps):
  """SimCLR whose loss is NaN at the given (1-based) steps."""
  from experiments import simclr
  from sslx.method import Method

  def get_method(config):
    base = simclr.get_method(config)

    def loss(params, variables, batch, rng):
      value, aux = base.loss(params, variables, batch, rng)
      bad = jnp.isin(variables["step"] + 1, jnp.asarray(bad_steps))
      return jnp.where(bad, jnp.nan, value), aux

    return Method(init=base.init, apply=base.apply, loss=loss)

  return types.SimpleNamespace(get_method=get_method)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(fashion_mnist_dir, tmp_path,
                                                                  monkeypatch):
  monkeypatch.setitem(sys.modules, "experiments.nan_at_4", _simclr_with_nan_loss_at([4]))
  config = smoke_config(fashion_mnist_dir, **{
      "experiment": "nan_at_4", "checkpoint_every": 1, "log_every": 2, "total_steps": 10,
      "eval.enabled": False})
  with pytest.raises(loop.NonFiniteLossError, match=r"NaN/inf at step 4\b") as info:
    loop.train(config, str(tmp_path))
  assert "last good checkpoint (step 3)" in str(info.value)
  step, state = restore_state(str(tmp_path))
  assert step == 3
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_nonfinite_policy_skip_counts_and_continues(fashion_mnist_dir, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "experiments.nan_at_4_5", _simclr_with_nan_loss_at([4, 5]))
  config = smoke_config(fashion_mnist_dir, **{
      "experiment": "nan_at_4_5", "checkpoint_every": 1, "max_checkpoints": 10,
      "log_every": 1, "total_steps": 7, "eval.enabled": False, "nonfinite_policy": "skip"})
  out = loop.train(config, str(tmp_path))
  assert int(out["state"].step) == 7 and int(out["state"].nonfinite_steps) == 2
  records = read_metrics(str(tmp_path))
  assert [r["train/nonfinite"] for r in records] == [0, 0, 0, 1, 1, 0, 0]
  assert [r["train/nonfinite_steps"] for r in records] == [0, 0, 0, 1, 2, 2, 2]
  trained = {s: {k: v for k, v in restore_state(str(tmp_path), s)[1].items()
                  if k in ("params", "opt_state", "model_state")} for s in (3, 5, 6)}
  for a, b in zip(jax.tree.leaves(trained[3]), jax.tree.leaves(trained[5]), strict=True):
    np.testing.assert_array_equal(a, b)  # steps 4 and 5 changed nothing
  assert any(not np.array_equal(a, b)
             for a, b in zip(jax.tree.leaves(trained[5]), jax.tree.leaves(trained[6])))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(out["state"].params))


def test_same_seed_and_config_twice_are_bit_identical(fashion_mnist_dir, tmp_path):
  config = smoke_config(fashion_mnist_dir, **{"eval.enabled": False})
  for name in ("a", "b"):
    loop.train(config, str(tmp_path / name))
  losses = [_losses(tmp_path / name) for name in ("a", "b")]
  assert len(losses[0]) == config.total_steps
  np.testing.assert_array_equal(losses[0], losses[1])
  _assert_same_final_state(tmp_path / "a", tmp_path / "b", config.total_steps)


def test_large_integer_state_does_not_read_as_non_finite():
  """Integer state (FlexMatch's class per unlabelled image) whose sum of squares overflows
  int32 must not make every step count as non-finite."""
  import optax

  from sslx.method import Method
  from sslx.train.state import TrainState
  from sslx.train.step import make_train_step

  def loss(params, variables, batch, rng):
    del batch, rng
    return (params["w"] - 1.0) ** 2, {"metrics": {}, "state": {"status": variables["status"]}}

  method = Method(init=None, apply=None, loss=loss)
  status = jnp.full((2200,), 997, jnp.int32)  # sum of squares 2.19e9: negative in int32
  tx = optax.sgd(0.1)
  params = {"w": jnp.zeros(())}
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={"status": status},
                     opt_state=tx.init(params), rng=jax.random.PRNGKey(0),
                     nonfinite_steps=jnp.zeros((), jnp.int32))
  step = make_train_step(method, tx, lambda s: 0.1, state_sharding=None, batch_sharding=None,
                         metric_sharding=None)
  state, _ = step(state, {})
  assert int(state.nonfinite_steps) == 0
  np.testing.assert_allclose(float(state.params["w"]), 0.2, rtol=1e-6)
