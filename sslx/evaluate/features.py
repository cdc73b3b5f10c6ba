"""Frozen features of a whole split, computed on the mesh and returned to every host."""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np

from sslx import sharding
from sslx.data import pipeline


@functools.lru_cache(maxsize=16)
def _features_fn(apply_fn, mesh):
  """One jitted feature function per (method, mesh), so every split and every set of variables
  with the same shapes reuses one compilation."""
  replicated = sharding.replicated(mesh)

  # Outputs are replicated so every process can read all of them, whatever the process count.
  @jax.jit
  def features_of(variables, batch):
    images = batch["image"].astype(jnp.float32) / 255.0
    out = (apply_fn(variables, images), batch["label"], batch["mask"])
    return jax.lax.with_sharding_constraint(out, replicated)

  return features_of


# Batches dispatched ahead of the one fetched to the host. The fetch of batch i waits only for
# batch i itself while i+1 and i+2 run, so the accelerator never idles on the host's copy.
BATCHES_IN_FLIGHT = 2


def extract_features(apply_fn, variables, source, *, mesh, batch_size: int,
                     worker_count: int = 0):
  """Runs `apply_fn(variables, images)` over every example of `source` once.

  Returns (features [N, D] float32, labels [N] int64) as NumPy arrays on every process: the
  output is replicated by the jit, which gathers the shards across devices and hosts.
  `worker_count`: grain worker processes decoding the images (`pipeline.eval_iterator`; -1: one
  per core for JPEG datasets); any count gives the same arrays.
  """
  batch_sharding = sharding.batch_sharding(mesh)
  features_of = _features_fn(apply_fn, mesh)
  feats, labels = [], []
  in_flight = collections.deque()

  def fetch_oldest():
    f, y, mask = jax.device_get(in_flight.popleft())
    feats.append(f[mask])
    labels.append(y[mask])

  iterator = pipeline.eval_iterator(source, global_batch_size=batch_size,
                                    worker_count=worker_count)
  try:
    for local in iterator:
      in_flight.append(features_of(variables, pipeline.to_global_batch(local, batch_sharding)))
      if len(in_flight) > BATCHES_IN_FLIGHT:
        fetch_oldest()
    while in_flight:
      fetch_oldest()
  finally:
    iterator.close()  # stops the grain workers, if any
  return np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int64)


def raw_pixel_features(source) -> tuple[np.ndarray, np.ndarray]:
  """Flattened pixels in [0, 1]: the baseline any representation has to beat."""
  examples = pipeline.read_examples(source, range(len(source)))
  images = np.stack([np.asarray(e["image"]) for e in examples])
  labels = np.asarray([e["label"] for e in examples], np.int64)
  return images.reshape(len(images), -1).astype(np.float32) / 255.0, labels
