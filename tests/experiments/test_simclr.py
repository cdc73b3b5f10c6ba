"""SimCLR's method triple: shapes, state handling, and that it learns on a fixed batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import simclr as simclr_config
from experiments import simclr


def _batch(n=32, seed=0):
  rng = np.random.default_rng(seed)
  # Blobs of different brightness and position, so there is something to tell apart.
  images = np.zeros((n, 28, 28, 1), np.uint8)
  for i in range(n):
    r, c = rng.integers(4, 20, size=2)
    images[i, r:r + 8, c:c + 8] = 60 + 6 * i
  return {"image": jnp.asarray(images), "label": jnp.zeros((n,), jnp.int32)}


def test_init_apply_loss_and_learning_on_a_fixed_batch():
  config = simclr_config.get_config("smoke")
  method = simclr.get_method(config)
  batch = _batch()
  variables = method.init(jax.random.PRNGKey(0), batch)
  assert set(variables) == {"params", "batch_stats"}
  features = method.apply(variables, batch["image"].astype(jnp.float32) / 255)
  assert features.shape == (32, 16)  # width 8 * 2 ** (2 stages - 1)

  tx = optax.adam(3e-3)
  params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
  opt_state = tx.init(params)

  @jax.jit
  def step(params, state, opt_state, key):
    (loss, aux), grads = jax.value_and_grad(method.loss, has_aux=True)(
        params, {"params": params, **state}, batch, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), aux["state"], opt_state, loss, aux, grads

  key = jax.random.PRNGKey(1)  # the same views every step: loss must go down
  losses = []
  for i in range(25):
    params, new_state, opt_state, loss, aux, grads = step(params, state, opt_state, key)
    if i == 0:
      # Every parameter receives gradient, and the batch statistics move.
      assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
      assert not np.allclose(jax.tree.leaves(new_state)[0], jax.tree.leaves(state)[0])
    state = new_state
    losses.append(float(loss))
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.7 * losses[0]
  # Not collapsed: unit embeddings still spread over dimensions.
  assert float(aux["metrics"]["train/embedding_std"]) > 0.05
