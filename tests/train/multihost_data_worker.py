"""One process of a multi-process input-pipeline check (tests/train/test_multihost.py):

  python tests/train/multihost_data_worker.py PORT NUM_PROCESSES PROCESS_ID NUM_EXAMPLES BATCH OUT

Starts `jax.distributed` on localhost, iterates one epoch of `pipeline.train_iterator` with the
process layout JAX reports (no explicit process index), assembles each global batch on the mesh
with `pipeline.to_global_batch`, and writes to OUT (JSON) which examples this process read from
the source, the labels of its rows, and the labels of every global batch gathered back from all
processes.
"""

import json
import sys
import threading

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils


class RecordingSource:
  """Example i has label i; records the indices read."""

  def __init__(self, size):
    self.size, self.read, self._lock = size, [], threading.Lock()

  def __len__(self):
    return self.size

  def __getitem__(self, i):
    with self._lock:
      self.read.append(int(i))
    return {"image": np.full((4, 4, 1), int(i) % 256, np.uint8), "label": int(i)}


def main(port, num_processes, process_id, num_examples, batch, out):
  from sslx import sharding
  from sslx.data import pipeline
  sharding.initialize_distributed(ml_collections.ConfigDict(dict(
      coordinator_address=f"localhost:{port}", num_processes=num_processes,
      process_id=process_id, auto_detect=False, timeout_s=120)))
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(
      num_devices=-1, shape=(-1,), axes=("data",))))
  source = RecordingSource(num_examples)
  it = pipeline.train_iterator(source, global_batch_size=batch, seed=3)
  labels, global_labels = [], []
  for _ in range(num_examples // batch):
    local = next(it)
    labels.extend(local["label"].tolist())
    global_batch = pipeline.to_global_batch(local, sharding.batch_sharding(mesh))
    global_labels.append(
        multihost_utils.process_allgather(global_batch["label"], tiled=True).tolist())
  with open(out, "w") as f:
    json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
               "read": sorted(set(source.read)), "labels": labels,
               "global_labels": global_labels}, f)


if __name__ == "__main__":
  main(*map(int, sys.argv[1:6]), sys.argv[6])
