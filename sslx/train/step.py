"""The jitted train step: loss and gradient of the method, one optimizer update, skipped (and
counted) when the loss or the gradient is not finite so the state never holds NaNs.
"""

import jax
import jax.numpy as jnp
import optax

from sslx.method import Method
from sslx.train.state import TrainState


def _float_leaves(tree) -> list:
  """The floating-point leaves of `tree`: the ones that can turn non-finite. Integer state (a
  queue pointer, FlexMatch's class per unlabelled image) is left out: its squares would wrap
  around in int32 and read as NaN in a global norm."""
  return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]


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
    grad_norm = optax.global_norm(grads)
    # Decided before anything is written: the loss, the gradient, the update (an optimizer can
    # overflow on a finite gradient) and the state the forward pass produced. Each new leaf is
    # then one elementwise select of its old value (`keep`), which XLA fuses with the update
    # and writes into the donated buffer: no second copy of the state is ever held. (Checking
    # the new parameters themselves would read each update twice and make XLA keep both.)
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
              & jnp.isfinite(optax.global_norm(updates))
              & jnp.isfinite(optax.global_norm(_float_leaves(aux["state"]))))

    def keep(new, old):
      return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    params = optax.apply_updates(state.params, updates)
    model_state, update_metrics = aux["state"], {}
    if method.after_update is not None:  # EMA teachers follow the updated student
      model_state, update_metrics = method.after_update(params, model_state, state.step)
    skipped = (~finite).astype(jnp.int32)
    new_state = state._replace(step=state.step + 1, params=keep(params, state.params),
                               model_state=keep(model_state, state.model_state),
                               opt_state=keep(opt_state, state.opt_state),
                               nonfinite_steps=state.nonfinite_steps + skipped)
    metrics = {
        "train/loss": loss,
        "train/learning_rate": schedule(state.step),
        "train/grad_norm": grad_norm,
        "train/nonfinite": skipped,
        **aux["metrics"],
        **update_metrics,
    }
    return new_state, metrics

  return jax.jit(train_step, in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, metric_sharding), donate_argnums=0)
