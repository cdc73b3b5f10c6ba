"""Several real processes on localhost (`jax.distributed` with gloo CPU collectives), as on a
GPU cluster or a TPU pod slice: the input pipeline's per-host slices, training, the label-free
monitor, the kNN evaluation with its bank sharded across hosts, checkpoints written by every
process, and those checkpoints restored onto other process / device counts."""

import json
import os
import signal
import socket
import sys
import time

import jax
import numpy as np
import pytest

from sslx.data import pipeline
from sslx.evaluate import cli
from sslx.train import loop
from sslx.train.checkpoint import Checkpointer
from sslx.train.metrics import read_metrics
from tests.train.helpers import (REPO, kill_processes, main_command, restore_state, run_main,
                                 start_processes, subprocess_env)
from tests.train.multihost_data_worker import RecordingSource

pytestmark = pytest.mark.slow

RUN_FLAGS = ["--config.total_steps=4", "--config.eval.train_examples=1000",
             "--config.eval.test_examples=200", "--config.eval.linear_probe=False",
             "--config.eval.baselines=()", "--config.eval.every=2"]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_processes(commands, env):
  procs = start_processes(commands, env)
  try:
    outputs = [p.communicate(timeout=600)[0] for p in procs]
  finally:
    kill_processes(procs)
  for p, o in zip(procs, outputs):
    assert p.returncode == 0, o[-4000:]


@pytest.mark.parametrize("num_processes", [2, 4])
def test_each_host_reads_its_slice_and_the_hosts_cover_an_epoch_once(num_processes, tmp_path):
  n, batch = 64, 8  # one epoch = 8 global batches
  port = _free_port()
  worker = os.path.join(REPO, "tests", "train", "multihost_data_worker.py")
  _run_processes(
      [[sys.executable, worker, str(port), str(num_processes), str(p), str(n), str(batch),
        str(tmp_path / f"{p}.json")] for p in range(num_processes)],
      subprocess_env(8 // num_processes))
  hosts = [json.loads((tmp_path / f"{p}.json").read_text()) for p in range(num_processes)]
  assert [h["process_index"] for h in hosts] == list(range(num_processes))
  assert {h["process_count"] for h in hosts} == {num_processes}

  seen = np.concatenate([h["labels"] for h in hosts])
  np.testing.assert_array_equal(np.sort(seen), np.arange(n))  # every example exactly once
  # The global batch assembled on the mesh is the hosts' rows in process order, and the same
  # batch one process would see alone (the stream does not depend on the process count).
  alone = pipeline.train_iterator(RecordingSource(n), global_batch_size=batch, seed=3,
                                  process_index=0, process_count=1)
  local = batch // num_processes
  for step in range(n // batch):
    rows = np.concatenate([h["labels"][step * local:(step + 1) * local] for h in hosts])
    for h in hosts:
      np.testing.assert_array_equal(h["global_labels"][step], rows)
    np.testing.assert_array_equal(next(alone)["label"], rows)
  # Each host read only its own rows: this epoch's, plus the next epoch's it prefetched.
  own_next = [set() for _ in hosts]
  for _ in range(n // batch):
    labels = next(alone)["label"]
    for p in range(num_processes):
      own_next[p].update(labels[p * local:(p + 1) * local].tolist())
  for p, h in enumerate(hosts):
    assert set(h["read"]) <= set(h["labels"]) | own_next[p]


@pytest.fixture(scope="module")
def one_process(fashion_mnist_dir, tmp_path_factory):
  """The reference: the same run in one process with 4 devices."""
  workdir = tmp_path_factory.mktemp("one")
  run_main(workdir, fashion_mnist_dir, *RUN_FLAGS, num_devices=4)
  return workdir


def test_processes_train_evaluate_and_checkpoint_like_one_process(one_process, fashion_mnist_dir,
                                                                  tmp_path):
  # Two processes of two devices each. Four processes of one device each (the GPU-cluster layout)
  # ran here too, but with 4 JAX processes on a 2-core CI machine it cost 2.5 minutes of a
  # 30-minute budget and exercised no other code path; the per-host data slices are checked with 4
  # processes above, and the 1-device-per-process layout by the SIGTERM test below.
  num_processes = 2
  port = _free_port()
  workdir = tmp_path / "multi"
  _run_processes(
      [main_command(workdir, fashion_mnist_dir, *RUN_FLAGS,
                    f"--config.distributed.coordinator_address=localhost:{port}",
                    f"--config.distributed.num_processes={num_processes}",
                    f"--config.distributed.process_id={i}") for i in range(num_processes)],
      subprocess_env(4 // num_processes))  # 4 devices in all, as in the reference

  losses = [[r["train/loss"] for r in read_metrics(str(d))] for d in (one_process, workdir)]
  assert len(losses[0]) == 4
  np.testing.assert_allclose(losses[1], losses[0], rtol=2e-5)
  # The label-free monitor runs on the whole mesh: the hosts log what 1 host with 4 devices logs.
  monitored = [[r["monitor/rankme"] for r in read_metrics(str(d)) if "monitor/rankme" in r]
               for d in (one_process, workdir)]
  assert len(monitored[0]) == 2
  np.testing.assert_allclose(monitored[1], monitored[0], rtol=1e-4)
  # The kNN bank is sharded over every host's devices (evaluate passes the mesh).
  knn = [json.loads((d / "results.json").read_text())["rows"]["SSL encoder"]["knn_top1"]
         for d in (one_process, workdir)]
  assert knn[0] == pytest.approx(knn[1], abs=1 / 200)
  # Every process wrote its part of the checkpoint (the grain iterator state is per process).
  saved = set(os.listdir(workdir / "checkpoints" / "4" / "data"))
  assert saved >= {f"process_{p}-of-{num_processes}.json" for p in range(num_processes)}

  # The checkpoint written by several processes restores, resharded by orbax, onto one process
  # with 1 device and with 4 devices (orbax refuses it without target shardings); the values are
  # those of the one-process run up to float reassociation in the all-reduce.
  _, reference = restore_state(str(one_process))
  config = cli.load_run_config(str(workdir))
  method = loop.build_method(config)
  restored = {}
  for num_devices in (1, 4):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), ("data",))
    checkpointer = Checkpointer(str(workdir))
    restored[num_devices] = loop.restore_onto_mesh(config, method, checkpointer, mesh)
    checkpointer.close()
    assert int(restored[num_devices].step) == 4
    leaves = jax.tree.leaves(restored[num_devices]._asdict())  # keyed like `reference`
    assert {len(x.sharding.device_set) for x in leaves} == {num_devices}
    assert len(leaves) == len(jax.tree.leaves(reference)) > 10
    for x, y in zip(jax.tree.leaves(reference), leaves):
      np.testing.assert_allclose(np.asarray(y), x, rtol=1e-4, atol=1e-6)
  for x, y in zip(jax.tree.leaves(restored[1]), jax.tree.leaves(restored[4])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sigterm_to_one_host_stops_every_host_at_the_same_step(fashion_mnist_dir, tmp_path):
  """JAX's preemption service: the host that gets SIGTERM tells the others, they all save the
  same step and exit 0, and the restarted hosts finish the run as one process does. The run is
  a semi-supervised one (FlexMatch), which carries the most state across a restart: both
  streams of every host's iterator, the EMA model and the per-image state, replicated; the
  labelled split is the same on 2 processes as on 1."""
  flags = ["--config.total_steps=30", "--config.checkpoint_every=10", "--config.log_every=1",
           "--config.eval.enabled=False", "--config.semi.labels_per_class=3",
           "--config.loss.threshold=0.5"]
  config = os.path.join(REPO, "configs", "flexmatch.py") + ":fashion_mnist,smoke"
  run_main(tmp_path / "one", fashion_mnist_dir, *flags, config=config, num_devices=2)

  def commands():
    port = _free_port()
    return [main_command(tmp_path / "two", fashion_mnist_dir, *flags,
                         f"--config.distributed.coordinator_address=localhost:{port}",
                         "--config.distributed.num_processes=2",
                         f"--config.distributed.process_id={i}", config=config)
            for i in range(2)]

  procs = start_processes(commands(), subprocess_env(1))
  try:
    deadline = time.time() + 300
    while not (tmp_path / "two" / "checkpoints" / "10").exists():
      assert all(p.poll() is None for p in procs) and time.time() < deadline
      time.sleep(0.005)
    procs[1].send_signal(signal.SIGTERM)  # the scheduler evicts one host
    outputs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    kill_processes(procs)
  for p, o in zip(procs, outputs):
    assert p.returncode == 0, o[-4000:]
    assert "preempted: checkpoint" in o, o[-4000:]
  steps = sorted(int(s) for s in os.listdir(tmp_path / "two" / "checkpoints") if s.isdigit())
  assert 10 < steps[-1] < 30, steps
  data = os.listdir(tmp_path / "two" / "checkpoints" / str(steps[-1]) / "data")
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data)

  _run_processes(commands(), subprocess_env(1))
  losses = [[r["train/loss"] for r in read_metrics(str(tmp_path / d))] for d in ("one", "two")]
  assert len(losses[1]) == 30
  np.testing.assert_allclose(losses[1], losses[0], rtol=2e-5)
  splits = [json.loads((tmp_path / d / loop.SPLIT_FILE).read_text()) for d in ("one", "two")]
  assert splits[0] == splits[1]
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
  restored = []
  for d in ("one", "two"):  # onto this process's devices (orbax needs target shardings)
    config = cli.load_run_config(str(tmp_path / d))
    checkpointer = Checkpointer(str(tmp_path / d))
    restored.append(loop.restore_onto_mesh(config, loop.build_method(config), checkpointer, mesh))
    checkpointer.close()
  one, two = (r.model_state for r in restored)
  np.testing.assert_array_equal(np.asarray(two["flexmatch"]), np.asarray(one["flexmatch"]))
  for x, y in zip(jax.tree.leaves(one["ema"]), jax.tree.leaves(two["ema"]), strict=True):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-6)

