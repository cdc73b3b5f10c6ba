"""ResNet and MLP heads: published parameter counts, shapes, and BatchNorm statistics that are
those of the global batch when the batch is sharded over devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from sslx.models import MLP, resnet


def _num_params(module):
  _, params, _ = nnx.split(module, nnx.Param, ...)
  return sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize("depth, expected", [
    # torchvision's counts (11,689,512 and 25,557,032) minus the 1000-way classifier.
    (18, 11_689_512 - (512 * 1000 + 1000)),
    (50, 25_557_032 - (2048 * 1000 + 1000)),
])
def test_published_parameter_counts(depth, expected):
  model = nnx.eval_shape(lambda: resnet(3, depth=depth, stem="imagenet", rngs=nnx.Rngs(0)))
  assert _num_params(model) == expected


@pytest.mark.parametrize("stem, size", [("cifar", 28), ("imagenet", 64)])
def test_output_shape_and_features(stem, size):
  model = resnet(1, stage_sizes=(1, 1, 1), width=8, stem=stem, rngs=nnx.Rngs(0))
  assert model.num_features == 32
  y = model(jnp.ones((2, size, size, 1)), train=False)
  assert y.shape == (2, 32)


def test_zero_init_residual_makes_blocks_identity_on_the_residual_branch():
  model = resnet(1, stage_sizes=(1,), width=4, zero_init_residual=True, rngs=nnx.Rngs(0))
  assert float(jnp.abs(model.blocks[0].bn2.scale.value).max()) == 0.0


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="depth"):
    resnet(3, depth=19, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="block"):
    resnet(3, stage_sizes=(1,), block="fancy", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="stem"):
    resnet(3, stage_sizes=(1,), stem="tpu", rngs=nnx.Rngs(0))


def test_batch_norm_uses_global_batch_statistics_when_sharded():
  """Under jit with the batch split over 8 devices, train-mode BatchNorm normalises with the
  statistics of the whole batch (synchronised BN by construction): same output and same running
  statistics as on one device."""
  encoder = resnet(1, stage_sizes=(1, 1), width=4, rngs=nnx.Rngs(0))
  head = MLP(encoder.num_features, (8,), 4, rngs=nnx.Rngs(1))
  graphdef, params, stats = nnx.split((encoder, head), nnx.Param, nnx.BatchStat)

  def forward(params, stats, x):
    enc, hd = nnx.merge(graphdef, params, stats, copy=True)
    y = hd(enc(x, train=True), train=True)
    return y, nnx.split((enc, hd), nnx.Param, nnx.BatchStat)[2]

  # Each device's shard gets a very different distribution: per-device BN would differ a lot.
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 12, 12, 1)), jnp.float32)
  x = x * jnp.repeat(jnp.arange(1.0, 9.0), 2)[:, None, None, None]
  y1, s1 = jax.jit(forward)(params, stats, x)
  mesh = jax.make_mesh((8,), ("data",))
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  y8, s8 = jax.jit(forward)(params, stats, xs)
  np.testing.assert_allclose(y8, y1, rtol=2e-4, atol=2e-5)
  for a, b in zip(jax.tree.leaves(s8), jax.tree.leaves(s1)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  # And the statistics really moved away from their initial values.
  assert not np.allclose(jax.tree.leaves(s1)[0], jax.tree.leaves(stats)[0])


def test_mlp_shapes_and_last_batch_norm():
  head = MLP(16, (32, 32), 8, batch_norm_last=True, rngs=nnx.Rngs(0))
  y = head(jnp.ones((4, 16)) * jnp.arange(4.0)[:, None], train=True)
  assert y.shape == (4, 8)
  np.testing.assert_allclose(np.asarray(y).mean(0), 0.0, atol=1e-5)
