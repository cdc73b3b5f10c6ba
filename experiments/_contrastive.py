"""The Method skeleton shared by the two-view contrastive methods (SimCLR, DCL, SupCon, NNCLR): an
encoder + projector over both views in one pass, and a method-specific objective on the two views'
projections.
"""

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from sslx import experiment
from sslx.method import Method

# objective(model, z1, z2, batch, variables) -> (loss, metrics, new_state): `model` is the merged
# module (a predictor can be applied to the projections), `new_state` the method's own state
# entries (queues, support sets), returned beside the batch statistics.
Objective = Callable[[Any, Any, Any, dict, dict], tuple[Any, dict, dict]]


def two_view_method(config, build_model: Callable, objective: Objective,
                    init_state: Callable[[], dict] = dict) -> Method:
  """A Method whose model has `.encoder` and `.projector` (SimCLRModel and kin).

  build_model(config, image_shape, rngs=...) -> nnx.Module; init_state() -> the method's extra
  non-trainable entries at the start (e.g. an empty support set).
  """
  images = experiment.images_for(config)
  net = experiment.Network(lambda rngs: build_model(config, images.view_shape, rngs=rngs),
                           dtype=config.model.dtype)

  def init(rng, batch):
    del batch  # the model's shapes come from the config and the dataset
    return {**net.init(rng), **init_state()}

  def apply(variables, x):
    model = net.merge(variables["params"], variables["batch_stats"])
    return model.encoder(images.for_eval(x), train=False)

  def loss(params, variables, batch, rng):
    (v1, v2), encoder_rng = experiment.two_views(rng, batch["image"], config, images)
    # One forward pass over both views: BatchNorm sees the 2B images together, as in SimCLR.
    model = net.merge(params, variables["batch_stats"])
    z = model.projector(model.encoder(jnp.concatenate([v1, v2]), train=True, rng=encoder_rng),
                        train=True)
    z1, z2 = jnp.split(z, 2)
    value, metrics, state = objective(model, z1, z2, batch, variables)
    # Read after the objective: a predictor applied there updates its BatchNorm statistics too.
    return value, {"metrics": {**experiment.embedding_metrics(z1, z2), **metrics},
                   "state": {"batch_stats": net.batch_stats(model), **state}}

  return Method(init=init, apply=apply, loss=loss, param_axes=net.param_axes)
