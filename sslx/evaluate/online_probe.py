"""Online linear probe: a classifier trained beside pre-training on stop-gradient features.

The monitor of SimCLR's code and solo-learn / lightly: at every train step a linear classifier
``logits = features @ W + b`` takes one optimizer step of cross-entropy on the batch labels,
where ``features = stop_gradient(method.apply(variables, view))`` are the encoder's evaluation
features (before any projector) of one augmented view of the batch (the method's first view
config). Its accuracy on those training views is logged as ``train/online_probe_top1`` (and its
loss as ``train/online_probe_loss``), so how linearly separable the representation is can be
followed during training at the cost of one extra forward pass without gradient.

It is *not* the offline linear probe of `sslx.evaluate.linear`: it is measured on augmented
training views, by a classifier that chases a moving encoder with a fixed learning rate. Report it
as "online probe (stop-grad, augmented training views)", never as linear-evaluation accuracy.

The probe lives in the method's non-trainable state (``variables["online_probe"]``: its params
and its own Adam state) and takes its step inside the loss, so the pre-training optimizer, its
learning-rate schedule and weight decay never see it; the returned loss is the method's alone, so
the encoder's gradient is exactly the one without the probe (the features are also behind
``stop_gradient``, which lets XLA drop their backward pass); and the probe is checkpointed and
resumed with the rest of the train state.
Labels are used by the probe only; the self-supervised loss never sees them.
"""

import jax
import jax.numpy as jnp
import optax

from sslx import experiment
from sslx.data import augment, sources
from sslx.method import Method

STATE_KEY = "online_probe"
PROTOCOL = "online probe (stop-grad, augmented training views)"
# fold_in constant for the probe's view key: the wrapped loss gets the caller's rng unchanged.
_PROBE_STREAM = 0x0B5E


def _without_probe(variables: dict) -> dict:
  return {k: v for k, v in variables.items() if k != STATE_KEY}


def with_online_probe(method: Method, config, *, learning_rate: float = 1e-3) -> Method:
  """``method`` with an online linear probe (see the module docstring).

  ``config`` gives the number of classes (``config.data.name``) and the probe's view (the first
  of ``experiment.view_configs(config)``). ``learning_rate`` is the probe's Adam step size.
  ``apply`` and ``param_axes`` are the method's; ``init`` adds ``variables["online_probe"]``,
  ``loss`` updates it and adds the two metrics, ``after_update`` passes it through.
  """
  experiment.check_positive("learning_rate", learning_rate)
  num_classes = sources.get_dataset_info(config.data.name).num_classes
  view_config = experiment.view_configs(config)[0]
  tx = optax.adam(learning_rate)

  def init(rng, batch):
    variables = dict(method.init(rng, batch))
    if STATE_KEY in variables:
      raise ValueError(f"method: its variables already hold {STATE_KEY!r}; wrap a method once")
    features = jax.eval_shape(method.apply, variables,
                              jnp.asarray(batch["image"], jnp.float32) / 255.0)
    probe = {"w": jnp.zeros((features.shape[-1], num_classes), jnp.float32),
             "b": jnp.zeros((num_classes,), jnp.float32)}
    return {**variables, STATE_KEY: {"params": probe, "opt_state": tx.init(probe)}}

  def apply(variables, images):
    return method.apply(_without_probe(variables), images)

  def loss(params, variables, batch, rng):
    inner = _without_probe(variables)
    value, aux = method.loss(params, inner, batch, rng)
    view = augment.augment_views(jax.random.fold_in(rng, _PROBE_STREAM), batch["image"],
                                 [view_config])[0]
    # Evaluation features of the current encoder. The probe's loss is not part of `value`, so
    # nothing reaches the encoder; stop_gradient makes that explicit and drops a backward pass.
    features = jax.lax.stop_gradient(method.apply({**inner, "params": params}, view))
    probe = variables[STATE_KEY]

    def probe_loss(probe_params):
      logits = jnp.dot(features.astype(jnp.float32), probe_params["w"],
                       precision=jax.lax.Precision.HIGHEST) + probe_params["b"]
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
      return jnp.mean(ce), logits

    (probe_ce, logits), grads = jax.value_and_grad(probe_loss, has_aux=True)(probe["params"])
    updates, opt_state = tx.update(grads, probe["opt_state"], probe["params"])
    new_probe = {"params": optax.apply_updates(probe["params"], updates), "opt_state": opt_state}
    top1 = jnp.mean((jnp.argmax(logits, axis=-1) == batch["label"]).astype(jnp.float32))
    metrics = {**aux["metrics"], "train/online_probe_loss": probe_ce,
               "train/online_probe_top1": top1}
    return value, {**aux, "metrics": metrics, "state": {**aux["state"], STATE_KEY: new_probe}}

  after_update = None
  if method.after_update is not None:
    def after_update(params, state, step):
      inner_state, metrics = method.after_update(params, _without_probe(state), step)
      return {**inner_state, STATE_KEY: state[STATE_KEY]}, metrics

  return method._replace(init=init, apply=apply, loss=loss, after_update=after_update)
