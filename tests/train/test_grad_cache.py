"""Gradient caching (sslx.train.grad_cache): the micro-batched loss and gradient equal the full
batch's, through the real train step; configs where it would not be exact are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import byol as byol_config
from configs import nnclr as nnclr_config
from configs import simclr as simclr_config
from experiments import nnclr, simclr
from sslx.train import grad_cache, loop
from sslx.train.state import TrainState
from sslx.train.step import make_train_step

BATCH = 8


def _config(module, chunks, vit=None, **overrides):
  """The smoke config with a 1-block ViT (LayerNorm only, no drop path), a LayerNorm projector
  and a batch of 8, its views cropped beforehand with no colour ops (they would only add compile
  time here)."""
  config = module.get_config("smoke")
  with config.unlocked():
    config.batch_size = BATCH
    config.model.name = "vit"
    config.projector.norm = "layer"
    config.optim.grad_cache_chunks = chunks
    config.augment.update(flip_prob=0.0, jitter_prob=0.0)
    config.model.vit.update(vit or {})
    config.update(overrides)
  return config


def _batch(seed=0):
  """Two views per image, as the host crops them (data.crop_on_host): [B, 2, 28, 28, 1]."""
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.integers(0, 256, (BATCH, 2, 28, 28, 1)), jnp.uint8),
          "label": jnp.asarray(rng.integers(0, 3, BATCH), jnp.int32)}


def _close(actual, expected, rtol=1e-5, leaf_rtol=1e-4):
  """In norm, the whole tree to `rtol` and each leaf to `leaf_rtol`. Not bit for bit: the
  micro-batches sum the gradients in another order (measured here: 4e-7 over the whole gradient,
  1e-6 for SimCLR). Micro-batches of 4 rows or fewer also take other float32 matmul kernels on a
  CPU, which round the embeddings by an ulp or two otherwise: SimCLR's gradient then moves by 5e-6
  and NNCLR's (its temperature-0.1 logits against the support set amplify) by 3e-5, while 4 and 8
  micro-batches agree with each other to 2e-7."""
  pairs = list(zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True))
  for a, e in pairs:
    assert float(jnp.linalg.norm(a - e)) <= leaf_rtol * float(jnp.linalg.norm(e))
  flat_a, flat_e = (jnp.concatenate([x.ravel() for x in xs]) for xs in zip(*pairs))
  assert float(jnp.linalg.norm(flat_a - flat_e)) <= rtol * float(jnp.linalg.norm(flat_e))


def _variables(method, batch, seed=0):
  """Variables of the method's shapes filled like an initialisation (kernels of variance
  1 / fan-in, scales near 1, the rest near 0), without compiling the initialisers (seconds on a
  small CPU); any values test the equality."""
  rng = np.random.default_rng(seed)

  def leaf(path, shape):
    if shape.ndim >= 2:
      return jnp.asarray(rng.normal(size=shape.shape) / np.sqrt(shape.shape[0]), shape.dtype)
    offset = 1.0 if "scale" in str(path[-1]) else 0.0
    return jnp.asarray(offset + 0.1 * rng.normal(size=shape.shape), shape.dtype)

  shapes = jax.eval_shape(method.init, jax.random.PRNGKey(0), batch)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _keep_gradient() -> optax.GradientTransformation:
  """Passes the update through and keeps it as its state: the step's gradient, to compare."""
  return optax.GradientTransformation(lambda params: jax.tree.map(jnp.zeros_like, params),
                                      lambda updates, state, params=None: (updates, updates))


def test_simclr_cached_loss_and_gradient_equal_the_full_batch_ones():
  """SimCLR with a 1-block ViT and 2 micro-batches of 4 images (8 views): the loss and every
  parameter's gradient of the full batch of 8."""
  batch = _batch()
  full, cached = (simclr.get_method(_config(simclr_config, chunks)) for chunks in (1, 2))
  assert (full.grad_cache_chunks, cached.grad_cache_chunks) == (1, 2)
  variables = _variables(full, batch)

  @jax.jit  # one program for both: compiled once
  def both(params, variables, batch, rng):
    return [jax.value_and_grad(m.loss, has_aux=True)(params, variables, batch, rng)
            for m in (full, cached)]

  ((full_loss, full_aux), full_gradient), ((loss, aux), gradient) = both(
      variables["params"], variables, batch, jax.random.PRNGKey(1))
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(full_gradient))
  np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
  _close(gradient, full_gradient)
  _close(aux["metrics"], full_aux["metrics"], leaf_rtol=1e-5)


def test_nnclr_train_step_with_cached_gradient_equals_the_full_batch_step():
  """One step of the jitted train step (sslx.train.step) for NNCLR with 2 micro-batches: the
  loss, gradient, new parameters and new state (support set, the predictor's BatchNorm
  statistics) of the full batch. Its objective (a BatchNorm predictor, the support-set lookup
  and update) sees the whole batch's projections, so caching the encoder + projector is exact."""
  batch = _batch(1)
  # A ViT of no blocks, pooling the mean patch token (patch embedding, position, norm): compiles
  # 3x faster than one block, which the SimCLR test covers.
  vit = {"depth": 0, "class_token": False}
  full = nnclr.get_method(_config(nnclr_config, 1, support_size=2 * BATCH, vit=vit))
  # A filled support set (random rows): the general lookup, not the first step's own views.
  variables = _variables(full, batch)
  rng = jax.random.PRNGKey(1)
  step_rng = jax.random.fold_in(rng, 0)  # the train step's key at step 0
  (loss, aux), gradient = jax.jit(jax.value_and_grad(full.loss, has_aux=True))(
      variables["params"], {**variables, "step": jnp.zeros((), jnp.int32)}, batch, step_rng)
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(gradient))
  assert jax.tree.leaves(aux["state"]["batch_stats"])  # the predictor's BatchNorm
  expected_params = jax.tree.map(lambda p, g: p - 0.5 * g, variables["params"], gradient)

  cached = loop.build_method(_config(nnclr_config, 2, support_size=2 * BATCH, vit=vit))
  assert cached.grad_cache_chunks == 2
  tx = optax.chain(_keep_gradient(), optax.sgd(0.5))
  params = variables.pop("params")
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                     opt_state=tx.init(params), rng=rng, nonfinite_steps=jnp.zeros((), jnp.int32))
  step = make_train_step(cached, tx, lambda s: 0.5, state_sharding=None, batch_sharding=None,
                         metric_sharding=None)
  state, metrics = step(state, batch)
  assert int(state.nonfinite_steps) == 0
  np.testing.assert_allclose(metrics["train/loss"], loss, rtol=1e-6)
  _close(state.opt_state[0], gradient)  # every parameter's gradient
  _close(state.params, expected_params, rtol=1e-6, leaf_rtol=1e-5)
  _close(state.model_state, aux["state"], rtol=1e-6, leaf_rtol=1e-5)


def test_embedding_is_split_and_merged_in_the_same_order():
  x = jnp.arange(12.0).reshape(12, 1)
  cached = grad_cache.cached_embedding(lambda p, s, x, r: p * x, 3)
  np.testing.assert_array_equal(cached(2.0, None, x, jax.random.PRNGKey(0)), 2 * x)
  assert float(jax.grad(lambda p: cached(p, None, x, jax.random.PRNGKey(0)).sum())(2.0)) == 66


@pytest.mark.parametrize("overrides, message", [
    ({"model.name": "resnet"}, r"optim.grad_cache_chunks > 1 .* the encoder has BatchNorm"),
    ({"projector.norm": "batch"}, r"the projector has BatchNorm"),
    ({"optim.grad_cache_chunks": 3}, r"batch_size \(8\) must divide by optim.grad_cache_chunks"),
    ({"optim.grad_cache_chunks": 0}, r"optim.grad_cache_chunks must be an int >= 1"),
])
def test_refused_where_not_exact(overrides, message):
  config = _config(simclr_config, 2)
  with config.unlocked():
    for key, value in overrides.items():
      section, field = key.split(".")
      config[section][field] = value
  with pytest.raises(ValueError, match=message):
    simclr.get_method(config)


def test_refused_by_methods_that_do_not_cache():
  config = byol_config.get_config("smoke")
  with config.unlocked():
    config.model.name = "vit"
    config.optim.grad_cache_chunks = 2
  with pytest.raises(ValueError, match=r"experiment 'byol' does not support gradient caching; "
                                       r"it is supported by .*simclr"):
    loop.build_method(config)
