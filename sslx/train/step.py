"""The jitted train step: loss and gradient of the method, one optimizer update, skipped (and
counted) when the loss or the gradient is not finite so the state never holds NaNs.
"""

import jax
import jax.numpy as jnp
import optax

from sslx.method import Method
from sslx.train.state import TrainState


def make_train_step(method: Method, tx: optax.GradientTransformation, schedule, *,
                    state_sharding, batch_sharding, metric_sharding):
  """Returns `train_step(state, batch) -> (state, metrics)`, jitted with the given shardings.

  The state is donated (updated in place); `batch` is the global batch sharded along "data", so
  batch statistics and losses are those of the global batch whatever the device count.
  """

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(method.loss, has_aux=True)
    variables = {**state.variables, "step": state.step}
    (loss, aux), grads = grad_fn(state.params, variables, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    model_state, update_metrics = aux["state"], {}
    if method.after_update is not None:  # EMA teachers follow the updated student
      model_state, update_metrics = method.after_update(params, model_state, state.step)
    grad_norm = optax.global_norm(grads)
    # The new parameters and state are checked too: an update can overflow with a finite gradient.
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
              & jnp.isfinite(optax.global_norm(params))
              & jnp.isfinite(optax.global_norm(model_state)))
    updated = state._replace(step=state.step + 1, params=params, model_state=model_state,
                             opt_state=opt_state)
    skipped = state._replace(step=state.step + 1, nonfinite_steps=state.nonfinite_steps + 1)
    new_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), updated, skipped)
    metrics = {
        "train/loss": loss,
        "train/learning_rate": schedule(state.step),
        "train/grad_norm": grad_norm,
        "train/nonfinite": 1 - finite.astype(jnp.int32),
        **aux["metrics"],
        **update_metrics,
    }
    return new_state, metrics

  return jax.jit(train_step, in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, metric_sharding), donate_argnums=0)
