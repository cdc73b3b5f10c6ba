"""The Method skeleton shared by the two-view contrastive methods (SimCLR, DCL, SupCon, NNCLR): an
encoder + projector over both views in one pass, and a method-specific objective on the two views'
projections.

With ``optim.grad_cache_chunks`` > 1 the encoder + projector run by gradient caching
(sslx.train.grad_cache): the same loss and gradient as the full batch with one micro-batch's
activations in memory. The objective (NNCLR's predictor and support set, SupCon's labels) still
sees the whole batch's projections at once, so it may use BatchNorm; the encoder and projector may
not.
"""

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from sslx import experiment
from sslx.method import Method
from sslx.train import grad_cache

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
  chunks = grad_cache.chunks_from_config(config)
  embed_cached = None
  if chunks > 1:  # refused here, before any compute, unless exact
    grad_cache.check_no_batch_norm(net.abstract.encoder, "encoder")
    grad_cache.check_no_batch_norm(net.abstract.projector, "projector")

    def embed(params, batch_stats, x, rng):
      model = net.merge(params, batch_stats)
      return model.projector(model.encoder(x, train=True, rng=rng), train=True)

    embed_cached = grad_cache.cached_embedding(embed, chunks)

  def init(rng, batch):
    del batch  # the model's shapes come from the config and the dataset
    return {**net.init(rng), **init_state()}

  apply = experiment.encoder_apply(net, images)

  def loss(params, variables, batch, rng):
    (v1, v2), encoder_rng = experiment.two_views(rng, batch["image"], config, images)
    model = net.merge(params, variables["batch_stats"])
    if embed_cached is None:
      # One forward pass over both views: BatchNorm sees the 2B images together, as in SimCLR.
      z = model.projector(model.encoder(jnp.concatenate([v1, v2]), train=True, rng=encoder_rng),
                          train=True)
    else:
      # The whole batch augmented first, then embedded in micro-batches (no BatchNorm there,
      # so `model`'s statistics, read below, are only the objective's predictor's).
      z = embed_cached(params, variables["batch_stats"], jnp.concatenate([v1, v2]), encoder_rng)
    z1, z2 = jnp.split(z, 2)
    value, metrics, state = objective(model, z1, z2, batch, variables)
    # Read after the objective: a predictor applied there updates its BatchNorm statistics too.
    return value, {"metrics": {**experiment.embedding_metrics(z1, z2), **metrics},
                   "state": {"batch_stats": net.batch_stats(model), **state}}

  return Method(init=init, apply=apply, loss=loss, param_axes=net.param_axes,
                grad_cache_chunks=chunks)
