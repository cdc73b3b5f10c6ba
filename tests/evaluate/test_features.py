"""extract_features: every example once, in order, with each batch fetched to the host only
once two later batches are dispatched, giving the arrays a fetch per batch gives."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sslx import sharding
from sslx.data import pipeline
from sslx.evaluate import features as features_lib

N, BATCH = 37, 8  # 5 batches on 8 devices, the last with 5 real rows


def _apply(variables, images):
  return jnp.tanh(images.reshape(images.shape[0], -1) @ variables["w"])


def _source():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (N, 4, 4, 1), dtype=np.uint8)
  return [{"image": images[i], "label": int(i % 3)} for i in range(N)]


def test_lagged_fetches_give_the_arrays_of_a_fetch_per_batch(monkeypatch):
  mesh = Mesh(np.array(jax.devices()), ("data",))
  variables = {"w": jax.random.normal(jax.random.PRNGKey(0), (16, 5))}
  source = _source()

  # The path before: each batch fetched as soon as it is dispatched.
  features_of = features_lib._features_fn(_apply, mesh)
  per_batch = [jax.device_get(features_of(variables, pipeline.to_global_batch(
      local, sharding.batch_sharding(mesh))))
      for local in pipeline.eval_iterator(source, global_batch_size=BATCH)]
  expected_x = np.concatenate([f[m] for f, _, m in per_batch])
  expected_y = np.concatenate([y[m] for _, y, m in per_batch])

  dispatched, at_fetch = [], []
  def counting(v, b):
    dispatched.append(1)
    return features_of(v, b)

  monkeypatch.setattr(features_lib, "_features_fn", lambda apply_fn, mesh: counting)
  device_get = jax.device_get
  monkeypatch.setattr(jax, "device_get", lambda x: at_fetch.append(len(dispatched))
                      or device_get(x))
  x, y = features_lib.extract_features(_apply, variables, source, mesh=mesh, batch_size=BATCH)

  np.testing.assert_array_equal(x, expected_x)  # bit-identical
  np.testing.assert_array_equal(y, [e["label"] for e in source])
  np.testing.assert_array_equal(y, expected_y)
  assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (N, 5)
  # Batch i is fetched once batch i + BATCHES_IN_FLIGHT is dispatched; the rest at the end.
  assert features_lib.BATCHES_IN_FLIGHT == 2 and at_fetch == [3, 4, 5, 5, 5]
