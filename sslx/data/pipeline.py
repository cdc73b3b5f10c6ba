"""The input pipeline: a random-access source -> grain -> this process's rows -> global jax arrays.

Global batches and process slicing
----------------------------------
Think of the training data as one infinite stream of *positions* 0, 1, 2, ...: position ``g``
belongs to epoch ``g // N`` (N = len(source)) and is the example ``perm_e(g % N)``, where
``perm_e`` is a permutation of 0..N-1 drawn from the seed and the epoch (grain's
``MapDataset.shuffle(seed).repeat()``: ``ShuffleMapDataset`` reseeds each epoch, ``repeat`` makes
the index space infinite). Epochs are concatenated, so a global batch may span an epoch boundary,
and each epoch shows every example exactly once.

The global batch at step ``s`` is positions ``[s*B, (s+1)*B)`` (B = global_batch_size), whatever
the number of processes. With P processes and L = B // P rows each, process ``p`` gets positions
``[s*B + p*L, s*B + (p+1)*L)``: cut the stream into blocks of L (``.batch(L)``), then process
``p`` takes blocks ``p, p+P, p+2P, ...`` (``[p::P]``, grain's lazy strided slice). Both are lazy
index mappings on a ``MapDataset``, so a process reads and decodes only its own rows. These are
the rows ``jax.make_array_from_process_local_data`` expects from process ``p`` on a mesh whose
devices are ordered by process (``to_global_batch``).

Checkpointing
-------------
The iterators are grain ``DatasetIterator``s: ``it.get_state()`` / ``it.set_state(state)``
(a small JSON-able dict), and with orbax::

  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(train_state),
      data=grain.checkpoint.CheckpointSave(it)))
  mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(it)))   # restores `it` in place

Each process writes its own ``process_<i>-of-<n>.json``; a restore must use the same process
count, global batch size, seed, dataset and worker_count (the state of a worker-process iterator
has a different form).

Worker processes
----------------
``worker_count > 0`` prefetches with grain's multiprocessing (``IterDataset.mp_prefetch``): each
worker produces every ``worker_count``-th batch and they are interleaved back in order, so the
batches are identical to ``worker_count=0``. Workers are started with the ``spawn`` method, so the
main module must be importable (``if __name__ == "__main__":``), and grain reads its settings from
absl flags: run the program under ``absl.app.run(main)`` (or call ``absl.flags.FLAGS(sys.argv)``
once; in a notebook ``absl.flags.FLAGS.mark_as_parsed()``) before creating the iterator, else
``train_iterator`` / ``eval_iterator`` raise RuntimeError. The source must be picklable (tfds
data sources are).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import grain
import jax
import numpy as np
from absl import flags

__all__ = ["DEFAULT_READ_OPTIONS", "default_worker_count", "eval_iterator",
           "semi_supervised_iterator", "to_global_batch", "train_iterator"]

# Elements of the grain IterDataset are whole local batches, so the prefetch buffer counts
# batches (grain's default of 500 is meant for single records). Threads decode different batches
# concurrently; for more throughput use worker processes (worker_count).
DEFAULT_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)


def _process_layout(global_batch_size: int, process_index: Optional[int],
                    process_count: Optional[int]) -> tuple[int, int, int]:
  """(process_index, process_count, local_batch_size), validated."""
  if process_count is None:
    process_count = jax.process_count()
  if process_index is None:
    process_index = jax.process_index()
  if process_count < 1:
    raise ValueError(f"process_count must be >= 1, got {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  if global_batch_size < 1:
    raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
  if global_batch_size % process_count:
    raise ValueError(
      f"global_batch_size {global_batch_size} is not divisible by the process count"
      f" {process_count}")
  return process_index, process_count, global_batch_size // process_count


def _shuffle_seed(seed: int) -> int:
  # grain's shuffle uses seed + epoch for epoch `epoch`, so hash the user's seed first: otherwise
  # seed s at epoch 1 would replay seed s + 1 at epoch 0.
  return int(np.random.SeedSequence(int(seed)).generate_state(1, dtype=np.uint32)[0])


class Subset:
  """The examples of `source` at `indices` (the first n for a quick evaluation, a label
  fraction), as a random-access source."""

  def __init__(self, source: Any, indices):
    self.source, self.indices = source, np.asarray(indices, np.int64)
    # A subset of JPEGs decoded on read is decoded on read too (worker_count=-1 starts workers).
    self.decodes_images = bool(getattr(source, "decodes_images", False))

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, index):
    if not 0 <= index < len(self.indices):
      raise IndexError(index)
    return self.source[int(self.indices[index])]

  def __getitems__(self, indices):
    return read_examples(self.source, self.indices[np.asarray(indices, np.int64)])


def read_examples(source: Any, indices) -> list:
  """The examples at `indices`, read in one call where the source supports it (tfds array_record
  sources read a batch ~5x faster through `__getitems__` than one record at a time)."""
  indices = [int(i) for i in indices]
  if hasattr(source, "__getitems__"):
    return list(source.__getitems__(indices))
  return [source[i] for i in indices]


class _TrainBatch:
  """example indices [L] -> {"image": uint8 [L, H, W, C], "label": int32 [L], "index": int32
  [L] (the examples' positions in the source), "mask": all True}, the examples read together
  (``read_examples``)."""

  def __init__(self, source: Any):
    self._source = source

  def __call__(self, indices) -> dict[str, np.ndarray]:
    examples = read_examples(self._source, indices)
    return {
      "image": np.stack([np.asarray(e["image"], dtype=np.uint8) for e in examples]),
      "label": np.asarray([e["label"] for e in examples], dtype=np.int32),
      "index": np.asarray(indices, dtype=np.int32),
      "mask": np.ones((len(examples),), dtype=bool),
    }


class _CroppedTrainBatch:
  """(j, example indices [L]) -> {"image": views, "label", "index", "mask"} for this process's j-th
  block:
  each record decoded and cropped by ``host_crops`` (`sslx.data.decode.HostCrops`) with
  randomness from the seed and the record's global position in the training stream, so the
  views do not depend on the worker or process count and replay exactly on resume."""

  def __init__(self, source: Any, host_crops: Any, seed: int, local: int, process_index: int,
               process_count: int):
    self._source, self._crops, self._seed = source, host_crops, seed
    self._local, self._first, self._stride = local, process_index, process_count

  def __call__(self, j, indices) -> dict[str, Any]:
    block = j * self._stride + self._first  # the block of the global stream this process reads
    positions = block * self._local + np.arange(len(indices))
    images, labels = self._crops.batch(self._source, indices, positions, self._seed)
    return {"image": images, "label": labels, "index": np.asarray(indices, dtype=np.int32),
            "mask": np.ones((len(indices),), dtype=bool)}


def default_worker_count(decodes_images: bool) -> int:
  """grain worker processes for ``worker_count=-1``: one per CPU core this process may use when
  the records are images decoded on read (JPEG datasets), else 0 (in-memory arrays such as
  Fashion-MNIST batch faster in the main process than workers can ship them)."""
  if not decodes_images:
    return 0
  cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
  return len(cores) if cores else (os.cpu_count() or 1)


class _EvalBatch:
  """positions [L] -> {"image", "label", "mask"} for the examples there, read together; positions
  past the end of the split give zero rows with mask False."""

  def __init__(self, source: Any, image_shape: tuple[int, ...]):
    self._source = source
    self._size = len(source)
    self._image_shape = image_shape

  def __call__(self, positions) -> dict[str, np.ndarray]:
    positions = np.asarray(positions)
    mask = positions < self._size
    images = np.zeros((len(positions), *self._image_shape), np.uint8)
    labels = np.zeros((len(positions),), np.int32)
    for row, example in zip(np.flatnonzero(mask), read_examples(self._source, positions[mask])):
      images[row] = example["image"]
      labels[row] = example["label"]
    return {"image": images, "label": labels, "mask": mask}


def train_iterator(source: Any, *, global_batch_size: int, seed: int,
                   process_index: Optional[int] = None, process_count: Optional[int] = None,
                   worker_count: int = 0, host_crops: Any = None,
                   read_options: Optional[grain.ReadOptions] = None) -> grain.DatasetIterator:
  """An infinite iterator over this process's rows of each global training batch.

  Yields ``{"image": uint8 [L, H, W, C], "label": int32 [L], "index": int32 [L], "mask": bool
  [L] (all True)}`` (``index``: each example's position in ``source``, for per-example state)
  with L = global_batch_size // process_count: rows [p*L, (p+1)*L) of the global batch, which is
  the same for any process count. Reshuffled every epoch, deterministically from ``seed``.
  ``it.get_state()`` / ``it.set_state()`` resume exactly (see the module doc for orbax).
  ``worker_count > 0``: decode in that many grain worker processes (needs absl flags parsed);
  -1: `default_worker_count` (a worker per core when records are decoded on read, else none).
  ``host_crops``: a `sslx.data.decode.HostCrops` for a source of encoded images
  (``sources.load_source(..., encoded=True)``); ``"image"`` is then its views of each record,
  cropped from the full image ([L, V, s, s, C], or ``{group: [L, n, s, s, C]}``).
  ``read_options``: grain reader threads / prefetch buffer (in batches) per process.
  """
  process_index, process_count, local = _process_layout(global_batch_size, process_index,
                                                        process_count)
  if len(source) == 0:
    raise ValueError("train_iterator: the source is empty")
  worker_count = _resolved_worker_count(
      worker_count, host_crops is not None or bool(getattr(source, "decodes_images", False)))
  ds = (
    grain.MapDataset.range(len(source))
    .shuffle(seed=_shuffle_seed(seed))  # epoch e of the index space uses its own permutation
    .repeat()  # infinite: position g -> epoch g // N
    .batch(local, drop_remainder=True)  # block k = the example indices of positions [kL, (k+1)L)
  )
  # This process's block of each global batch, and only then read: a batch of indices is read in
  # one call (tfds array_record sources read ~5x faster that way than record by record).
  ds = ds[process_index::process_count]
  if host_crops is None:
    ds = ds.map(_TrainBatch(source))
  else:
    ds = ds.map_with_index(_CroppedTrainBatch(source, host_crops, seed, local, process_index,
                                              process_count))
  return iter(_with_workers(ds.to_iter_dataset(read_options or DEFAULT_READ_OPTIONS),
                            worker_count, "train_iterator"))


class _SemiSupervisedBatch:
  """(j, labelled positions [L]) -> this process's j-th block of a semi-supervised batch: the
  labelled examples at those positions of ``labelled`` and the unlabelled block j of
  ``unlabelled_blocks`` (positions into ``unlabelled``), read together."""

  def __init__(self, source: Any, labelled: np.ndarray, unlabelled: np.ndarray,
               unlabelled_blocks: grain.MapDataset):
    self._source, self._labelled, self._unlabelled = source, labelled, unlabelled
    self._unlabelled_blocks = unlabelled_blocks

  def __call__(self, j, positions) -> dict[str, np.ndarray]:
    labelled = read_examples(self._source, self._labelled[positions])
    unlabelled_positions = np.asarray(self._unlabelled_blocks[j], np.int64)
    unlabelled = read_examples(self._source, self._unlabelled[unlabelled_positions])
    return {
      "image": np.stack([np.asarray(e["image"], dtype=np.uint8) for e in labelled]),
      "label": np.asarray([e["label"] for e in labelled], dtype=np.int32),
      "mask": np.ones((len(labelled),), dtype=bool),
      "unlabelled_image": np.stack([np.asarray(e["image"], dtype=np.uint8) for e in unlabelled]),
      # The position in the unlabelled set: the row of per-example state (FlexMatch's).
      "unlabelled_index": unlabelled_positions.astype(np.int32),
    }


def semi_supervised_iterator(source: Any, *, labelled, unlabelled, global_batch_size: int,
                             uratio: int, seed: int, process_index: Optional[int] = None,
                             process_count: Optional[int] = None, worker_count: int = 0,
                             read_options: Optional[grain.ReadOptions] = None
                             ) -> grain.DatasetIterator:
  """An infinite iterator over this process's rows of each semi-supervised global batch.

  ``labelled`` / ``unlabelled``: indices into ``source`` of the labelled set and of the
  unlabelled set (USB's: every training image, or the others). Each step yields
  ``{"image": uint8 [L, H, W, C], "label": int32 [L], "mask": [L] all True,
  "unlabelled_image": uint8 [uratio*L, H, W, C], "unlabelled_index": int32 [uratio*L]}``
  (L = global_batch_size // process_count; ``unlabelled_index`` is the position in
  ``unlabelled``). Each part is its own stream, laid out as `train_iterator`'s (global batch s
  is positions [s*B, (s+1)*B) of its epoch-shuffled, repeated index space, process p reading
  only its own block), with its own seed, so the small labelled set cycles through many epochs
  while the unlabelled one is seen once. One grain iterator holds both: ``get_state`` /
  ``set_state`` (and the checkpoint) resume both exactly.
  """
  process_index, process_count, local = _process_layout(global_batch_size, process_index,
                                                        process_count)
  if isinstance(uratio, bool) or not isinstance(uratio, (int, np.integer)) or uratio < 1:
    raise ValueError(f"uratio: expected an integer >= 1 (unlabelled images per labelled one), "
                     f"got {uratio!r}")
  labelled = np.asarray(labelled, np.int64)
  unlabelled = np.asarray(unlabelled, np.int64)
  for name, indices in (("labelled", labelled), ("unlabelled", unlabelled)):
    if indices.ndim != 1 or indices.size == 0:
      raise ValueError(f"{name}: expected a non-empty 1-D array of source indices, got shape "
                       f"{indices.shape}")
    if indices.min() < 0 or indices.max() >= len(source):
      raise ValueError(f"{name}: indices must lie in [0, {len(source)}), got "
                       f"[{indices.min()}, {indices.max()}]")
  worker_count = _resolved_worker_count(worker_count,
                                        bool(getattr(source, "decodes_images", False)))

  def blocks(n: int, block: int, stream_seed: int) -> grain.MapDataset:
    return (grain.MapDataset.range(n).shuffle(seed=_shuffle_seed(stream_seed)).repeat()
            .batch(block, drop_remainder=True)[process_index::process_count])

  # Seeds 2s and 2s+1: the two streams never share a permutation, whatever the user's seed.
  unlabelled_blocks = blocks(len(unlabelled), uratio * local, 2 * seed + 1)
  ds = blocks(len(labelled), local, 2 * seed).map_with_index(
      _SemiSupervisedBatch(source, labelled, unlabelled, unlabelled_blocks))
  return iter(_with_workers(ds.to_iter_dataset(read_options or DEFAULT_READ_OPTIONS),
                            worker_count, "semi_supervised_iterator"))


def _resolved_worker_count(worker_count: int, decodes_images: bool) -> int:
  """``worker_count``, with -1 resolved by `default_worker_count`; anything below -1 refused."""
  if worker_count == -1:
    return default_worker_count(decodes_images)
  if worker_count < 0:
    raise ValueError(f"worker_count must be >= 0 or -1 (one per core for decoded images), got"
                     f" {worker_count}")
  return worker_count


def _with_workers(it_ds: grain.IterDataset, worker_count: int, caller: str) -> grain.IterDataset:
  """``it_ds`` prefetched by ``worker_count`` grain worker processes (none: unchanged); the
  batches and their order are the same either way."""
  if worker_count == 0:
    return it_ds
  if not flags.FLAGS.is_parsed():
    raise RuntimeError(
      f"{caller}(worker_count > 0) starts grain worker processes, and grain reads its"
      " settings from absl flags, which are not parsed yet: run the program under"
      " absl.app.run(main), or call absl.flags.FLAGS(sys.argv) (in a notebook:"
      " absl.flags.FLAGS.mark_as_parsed()) before creating the iterator.")
  return it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))


def eval_iterator(source: Any, *, global_batch_size: int, process_index: Optional[int] = None,
                  process_count: Optional[int] = None, worker_count: int = 0,
                  read_options: Optional[grain.ReadOptions] = None) -> grain.DatasetIterator:
  """One pass over the whole split, in order, process-sliced like ``train_iterator``.

  Every process yields ceil(N / global_batch_size) batches (so all take the same number of
  steps); the positions past the end of the split are zero rows with ``"mask"`` False, so across
  processes every example appears exactly once with mask True. ``worker_count`` as in
  ``train_iterator``: ImageNet's evaluation decodes ~180k JPEGs, which one process's reader
  threads cannot do as fast as an accelerator takes them.
  """
  process_index, process_count, local = _process_layout(global_batch_size, process_index,
                                                        process_count)
  size = len(source)
  if size == 0:
    raise ValueError("eval_iterator: the source is empty")
  worker_count = _resolved_worker_count(worker_count,
                                        bool(getattr(source, "decodes_images", False)))
  steps = -(-size // global_batch_size)
  image_shape = np.asarray(source[0]["image"]).shape
  ds = grain.MapDataset.range(steps * global_batch_size).batch(local, drop_remainder=True)
  # Slice before reading, so each process reads only its own rows.
  ds = ds[process_index::process_count].map(_EvalBatch(source, image_shape))
  return iter(_with_workers(ds.to_iter_dataset(read_options or DEFAULT_READ_OPTIONS),
                            worker_count, "eval_iterator"))


def to_global_batch(local_batch: Mapping[str, np.ndarray],
                    sharding: jax.sharding.Sharding | Mapping[str, jax.sharding.Sharding]
                    ) -> dict[str, jax.Array]:
  """This process's rows -> global ``jax.Array``s, via ``jax.make_array_from_process_local_data``.

  ``sharding``: one sharding for every key (e.g. ``NamedSharding(mesh, P("data"))``, which splits
  the leading batch axis and so fits arrays of any rank), or a dict of shardings by key. The
  leading axis of the result is global_batch_size = local rows * process count.
  """
  out = {}
  for key, value in local_batch.items():
    s = sharding[key] if isinstance(sharding, Mapping) else sharding
    # A value may be a dict itself (host multi-crop views: {group: array}).
    out[key] = jax.tree.map(
        lambda v, s=s: jax.make_array_from_process_local_data(s, np.asarray(v)), value)
  return out
