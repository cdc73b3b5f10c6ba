"""The grain pipeline: the global batch across process counts, epochs, resume, eval, arrays."""

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sslx.data import pipeline

REPO = Path(__file__).resolve().parents[2]
SHAPE = (3, 2, 1)


class Source:
  """Random access; example i has label i and image pixels i % 251 + the pixel index; records
  which indices were read."""

  def __init__(self, size: int):
    self.size = size
    self.read = []
    self._lock = threading.Lock()

  def __len__(self):
    return self.size

  def __getitem__(self, i):
    i = int(i)
    if not 0 <= i < self.size:
      raise IndexError(i)
    with self._lock:
      self.read.append(i)
    image = ((i % 251) + np.arange(np.prod(SHAPE))).reshape(SHAPE).astype(np.uint8)
    return {"image": image, "label": i}


def _image(i):
  return ((i % 251) + np.arange(np.prod(SHAPE))).reshape(SHAPE).astype(np.uint8)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _check_rows(batch):
  """Images match labels (the pipeline keeps each row's image and label together)."""
  for label, image in zip(batch["label"], batch["image"], strict=True):
    np.testing.assert_array_equal(image, _image(int(label)))


def _stream(src, batch, seed, steps):
  """Labels of the first `steps` global batches, one process, concatenated."""
  it = pipeline.train_iterator(src, global_batch_size=batch, seed=seed, process_index=0,
                               process_count=1)
  return np.concatenate([b["label"] for b in _take(it, steps)])


def test_train_batch_format_and_determinism():
  src = Source(50)
  it = pipeline.train_iterator(src, global_batch_size=8, seed=3, process_index=0, process_count=1)
  b = next(it)
  assert set(b) == {"image", "label", "index", "mask"}
  assert b["image"].dtype == np.uint8 and b["image"].shape == (8,) + SHAPE
  assert b["label"].dtype == np.int32 and b["label"].shape == (8,)
  # The source's example i has label i: "index" is each row's position in the source.
  assert b["index"].dtype == np.int32
  np.testing.assert_array_equal(b["index"], b["label"])
  assert b["mask"].dtype == np.bool_ and b["mask"].all()
  _check_rows(b)
  a = _stream(Source(50), 8, 3, 20)
  np.testing.assert_array_equal(a, _stream(Source(50), 8, 3, 20))
  assert not np.array_equal(a, _stream(Source(50), 8, 4, 20))
  assert not np.array_equal(a[:50], np.arange(50))  # shuffled


def test_index_is_the_position_in_a_subset():
  # A long-tailed (or any) subset: "index" counts its examples, not the source's, so it can
  # index a per-example table of len(subset) rows.
  kept = np.array([3, 7, 8, 20, 33, 41])
  it = pipeline.train_iterator(pipeline.Subset(Source(50), kept), global_batch_size=4, seed=0,
                               process_index=0, process_count=1)
  for b in _take(it, 3):
    assert np.all(b["index"] < len(kept))
    np.testing.assert_array_equal(kept[b["index"]], b["label"])


def test_epochs_each_example_once_and_reshuffled():
  n, batch = 50, 8  # 50 % 8 != 0: global batches span epoch boundaries
  labels = _stream(Source(n), batch, seed=0, steps=25)  # 200 positions = 4 epochs
  epochs = labels.reshape(4, n)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
  assert len({tuple(e) for e in epochs}) == 4
  # Neighbouring seeds do not replay each other's epochs shifted by one.
  other = _stream(Source(n), batch, seed=1, steps=7)[:n]
  assert not np.array_equal(other, epochs[1])


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_concatenate_to_the_global_batch(process_count):
  n, batch, steps = 50, 8, 14  # steps 6, 12: batches across the epoch boundaries at 50, 100
  reference = _stream(Source(n), batch, seed=7, steps=steps).reshape(steps, batch)
  local = batch // process_count
  iters = [
    pipeline.train_iterator(Source(n), global_batch_size=batch, seed=7, process_index=p,
                            process_count=process_count)
    for p in range(process_count)
  ]
  for step in range(steps):
    parts = [next(it) for it in iters]
    for part in parts:
      assert part["label"].shape == (local,) and part["image"].shape == (local,) + SHAPE
      _check_rows(part)
    np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), reference[step])


def test_each_process_reads_only_its_rows():
  n, batch = 1000, 8
  order = _stream(Source(n), batch, seed=5, steps=n // batch)  # one epoch, positions -> examples
  positions = np.arange(n)
  for p in range(2):
    src = Source(n)
    it = pipeline.train_iterator(src, global_batch_size=batch, seed=5, process_index=p,
                                 process_count=2)
    _take(it, 3)
    own = set(order[(positions % batch) // (batch // 2) == p].tolist())
    read = set(src.read)
    assert read and read <= own, sorted(read - own)[:10]


def test_batch_not_divisible_by_process_count():
  with pytest.raises(ValueError, match="divisible"):
    pipeline.train_iterator(Source(10), global_batch_size=10, seed=0, process_index=0,
                            process_count=3)
  with pytest.raises(ValueError, match="divisible"):
    pipeline.eval_iterator(Source(10), global_batch_size=10, process_index=0, process_count=4)


def test_default_process_layout_is_jax():
  it = pipeline.train_iterator(Source(20), global_batch_size=4, seed=0)
  assert next(it)["label"].shape == (4 // jax.process_count(),)


def test_get_state_set_state_resumes_exactly():
  it = pipeline.train_iterator(Source(30), global_batch_size=8, seed=2, process_index=1,
                               process_count=2)
  _take(it, 5)
  state = it.get_state()
  expected = _take(it, 6)  # crosses the epoch boundary at position 30
  fresh = pipeline.train_iterator(Source(30), global_batch_size=8, seed=2, process_index=1,
                                  process_count=2)
  fresh.set_state(state)
  for a, b in zip(expected, _take(fresh, 6), strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_orbax_checkpoint_manager_resumes_exactly(tmp_path):
  def make():
    return pipeline.train_iterator(Source(30), global_batch_size=6, seed=9, process_index=0,
                                   process_count=1)

  it = make()
  _take(it, 4)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(4, args=ocp.args.Composite(
      params=ocp.args.StandardSave({"w": np.arange(3.0)}),
      data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  expected = _take(it, 8)

  restored_it = make()
  _take(restored_it, 1)  # a different position, to be overwritten by the restore
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    assert mngr.latest_step() == 4
    restored = mngr.restore(4, args=ocp.args.Composite(
      params=ocp.args.StandardRestore({"w": np.zeros(3)}),
      data=grain.checkpoint.CheckpointRestore(restored_it)))
  np.testing.assert_array_equal(restored["params"]["w"], np.arange(3.0))
  for a, b in zip(expected, _take(restored_it, 8), strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("process_count", [1, 3])
def test_eval_covers_every_example_once(process_count):
  n, batch = 23, 6  # 4 global steps, the last with 5 real rows
  steps = -(-n // batch)
  per_process = []
  for p in range(process_count):
    src = Source(n)
    batches = list(pipeline.eval_iterator(src, global_batch_size=batch, process_index=p,
                                          process_count=process_count))
    assert len(batches) == steps  # every process takes the same number of steps
    for b in batches:
      assert set(b) == {"image", "label", "mask"}
      assert b["label"].shape == (batch // process_count,) and b["mask"].dtype == np.bool_
      assert b["image"].shape == (batch // process_count,) + SHAPE
      assert not b["image"][~b["mask"]].any()
      _check_rows({k: v[b["mask"]] for k, v in b.items()})
    per_process.append(batches)
  # Global batch s = the processes' parts concatenated = positions [s*B, (s+1)*B), in order.
  labels, masks = [], []
  for s in range(steps):
    labels.append(np.concatenate([per_process[p][s]["label"] for p in range(process_count)]))
    masks.append(np.concatenate([per_process[p][s]["mask"] for p in range(process_count)]))
  labels, masks = np.concatenate(labels), np.concatenate(masks)
  np.testing.assert_array_equal(labels[masks], np.arange(n))
  np.testing.assert_array_equal(masks, np.arange(steps * batch) < n)


def test_to_global_batch_on_eight_devices():
  devices = jax.devices()
  assert len(devices) == 8
  mesh = Mesh(np.array(devices), ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  it = pipeline.train_iterator(Source(40), global_batch_size=16, seed=0, process_index=0,
                               process_count=1)
  local = next(it)
  batch = pipeline.to_global_batch(local, sharding)
  assert set(batch) == {"image", "label", "index", "mask"}
  for key, value in batch.items():
    assert isinstance(value, jax.Array)
    assert value.shape == local[key].shape and value.dtype == local[key].dtype
    assert value.sharding == sharding
    np.testing.assert_array_equal(np.asarray(value), local[key])
    for shard in value.addressable_shards:
      assert shard.data.shape[0] == 2
      np.testing.assert_array_equal(np.asarray(shard.data), local[key][shard.index])
  # A dict of shardings works too.
  replicated = NamedSharding(mesh, PartitionSpec())
  batch = pipeline.to_global_batch(local, {"image": sharding, "label": replicated,
                                           "index": sharding, "mask": sharding})
  assert batch["label"].sharding == replicated
  np.testing.assert_array_equal(np.asarray(batch["label"]), local["label"])


def test_workers_need_parsed_absl_flags(monkeypatch):
  from absl import flags

  monkeypatch.setattr(type(flags.FLAGS), "is_parsed", lambda self: False)
  with pytest.raises(RuntimeError, match="absl"):
    pipeline.train_iterator(Source(10), global_batch_size=2, seed=0, process_index=0,
                            process_count=1, worker_count=2)


_WORKER_SCRIPT = textwrap.dedent("""
  from absl import app

  def main(argv):
    # Imported here, not at the top: grain's spawned workers import this file too.
    import gc
    import os
    import time
    import jax.numpy as jnp
    import numpy as np
    from sslx.data import pipeline, sources
    from sslx.train.checkpoint import Checkpointer, abstract_like

    def same(a, b, what):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{what} {key}")

    # A real tfds array_record source (digits), pickled to the workers, which decode it.
    src = sources.load_source("digits", "train", data_dir=os.environ["SSLX_TEST_DATA_DIR"])
    kw = dict(global_batch_size=6, seed=11, process_index=1, process_count=2)
    ref = pipeline.train_iterator(src, **kw)
    it = pipeline.train_iterator(src, worker_count=2, **kw)
    for step in range(15):
      same(next(ref), next(it), f"step {step}")

    # The iterator state goes into sslx's orbax checkpoint with the train state, and a fresh
    # worker iterator restored from it (set_state) continues where the saved one was.
    train_state = {"w": jnp.arange(3.0)}
    ckpt = Checkpointer(os.environ["SSLX_TEST_WORKDIR"])
    ckpt.save(15, train_state, it)
    ckpt.wait()
    expected = [next(ref) for _ in range(5)]
    for step in range(5):
      same(expected[step], next(it), f"after save, step {step}")
    fresh = pipeline.train_iterator(src, worker_count=2, **kw)  # at step 0
    restored = ckpt.restore(abstract_like(train_state), fresh)
    np.testing.assert_array_equal(restored["w"], np.arange(3.0))
    for step in range(5):
      same(expected[step], next(fresh), f"restored, step {step}")
    ckpt.close()
    for iterator in (it, fresh, ref):
      iterator.close()

    # One evaluation pass with workers, over a subset as eval.train_fraction makes: the same
    # batches as without.
    subset = pipeline.Subset(src, np.arange(0, len(src), 7))
    shm_before = set(os.listdir("/dev/shm"))
    with_workers = pipeline.eval_iterator(subset, global_batch_size=64, worker_count=2)
    for step, (a, b) in enumerate(zip(pipeline.eval_iterator(subset, global_batch_size=64),
                                      with_workers, strict=True)):
      same(a, b, f"eval batch {step}")
    with_workers.close()
    # The iterator (in reference cycles) and the last batches hold their shared-memory blocks
    # until they are collected (in extract_features: after it returns); grain then frees them on
    # a thread, which the process must not exit before (the leak check below).
    del a, b, with_workers
    gc.collect()
    deadline = time.monotonic() + 20
    while {f for f in os.listdir("/dev/shm") if f.startswith("psm_")} - shm_before and (
        time.monotonic() < deadline):
      time.sleep(0.1)
    print("WORKERS-OK")

  if __name__ == "__main__":
    app.run(main)  # grain's worker processes read absl flags
""")


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_resume(tmp_path):
  from sslx.data import sources

  sources.load_source("digits", "train", data_dir=tmp_path / "data")  # prepared once, here
  script = tmp_path / "workers.py"
  script.write_text(_WORKER_SCRIPT)
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
             SSLX_TEST_DATA_DIR=str(tmp_path / "data"), SSLX_TEST_WORKDIR=str(tmp_path / "run"),
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0 and "WORKERS-OK" in result.stdout, result.stderr[-3000:]
  assert "leaked shared_memory" not in result.stderr  # close() releases the workers' buffers


def test_semi_supervised_batches_processes_epochs_and_resume():
  src = Source(40)
  labelled, unlabelled = np.array([3, 7, 11, 20]), np.arange(10, 40)
  kwargs = dict(labelled=labelled, unlabelled=unlabelled, global_batch_size=4, uratio=3, seed=5)

  def stream(process_count, steps):
    its = [pipeline.semi_supervised_iterator(src, process_index=p, process_count=process_count,
                                             **kwargs) for p in range(process_count)]
    return [{k: np.concatenate([b[k] for b in batches])
             for k in ("label", "unlabelled_index", "unlabelled_image")}
            for batches in zip(*(_take(it, steps) for it in its))]

  one = stream(1, 20)
  for batch in one:
    assert set(batch["label"]) <= set(labelled)  # labels only from the labelled set
    assert batch["unlabelled_index"].shape == (12,)
    for position, image in zip(batch["unlabelled_index"], batch["unlabelled_image"]):
      np.testing.assert_array_equal(image, _image(unlabelled[position]))
  # The labelled set cycles once per step (4 of 4), the unlabelled one once per 30 positions.
  for s in range(20):
    assert sorted(one[s]["label"]) == sorted(labelled)
  positions = np.concatenate([b["unlabelled_index"] for b in one])
  for epoch in range(len(positions) // 30):
    assert sorted(positions[epoch * 30:(epoch + 1) * 30]) == list(range(30))
  assert not np.array_equal(positions[:30], positions[30:60])  # reshuffled every epoch
  # Two processes' rows concatenate to the one-process batch.
  for a, b in zip(one[:6], stream(2, 6)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # Both streams resume from one iterator state.
  it = pipeline.semi_supervised_iterator(src, **kwargs)
  _take(it, 7)
  state = it.get_state()
  rest = _take(it, 3)
  it2 = pipeline.semi_supervised_iterator(src, **kwargs)
  it2.set_state(state)
  for a, b in zip(rest, _take(it2, 3)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  with pytest.raises(ValueError, match=r"uratio: expected an integer >= 1 .*got 0"):
    pipeline.semi_supervised_iterator(src, **{**kwargs, "uratio": 0})
  with pytest.raises(ValueError, match=r"labelled: indices must lie in \[0, 40\)"):
    pipeline.semi_supervised_iterator(src, **{**kwargs, "labelled": np.array([1, 40])})
