"""BYOL (Grill et al. 2020): an online encoder + projector + predictor regresses the projection
of the other view by a target network, an EMA of the online encoder + projector; no negatives.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from sslx import experiment
from sslx.losses import negative_cosine
from sslx.method import Method
from sslx.models import MLP, Backbone


class Target(nnx.Module):
  """Encoder + projector: the target network, and the part of the online network it follows."""

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    p = config.projector
    self.projector = MLP(self.encoder.num_features, tuple(p.hidden), p.out_features,
                         norm=p.norm, rngs=rngs)

  def __call__(self, x, *, train: bool, rng=None):
    return self.projector(self.encoder(x, train=train, rng=rng), train=train)


class Online(Target):

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    super().__init__(config, image_shape, rngs=rngs)
    q = config.predictor
    self.predictor = MLP(config.projector.out_features, tuple(q.hidden),
                         config.projector.out_features, norm=q.norm, rngs=rngs)


def get_method(config) -> Method:
  images = experiment.images_for(config)
  online = experiment.Network(lambda rngs: Online(config, images.view_shape, rngs=rngs),
                              dtype=config.model.dtype)
  target = experiment.Network(lambda rngs: Target(config, images.view_shape, rngs=rngs),
                              dtype=config.model.dtype)

  def followed(params):  # the online parameters (or BN statistics, if any) the target averages
    return {k: v for k, v in params.items() if k in ("encoder", "projector")}

  def init(rng, batch):
    del batch
    variables = online.init(rng)
    # The target starts as a copy of the online encoder + projector (BYOL Sec. 3.1).
    teacher = {"params": followed(variables["params"]),
               "batch_stats": followed(variables["batch_stats"])}
    return {**variables, "teacher": jax.tree.map(jnp.copy, teacher)}

  apply = experiment.encoder_apply(online, images)  # BYOL evaluates the online encoder

  def loss(params, variables, batch, rng):
    (v1, v2), encoder_rng = experiment.two_views(rng, batch["image"], config, images)
    views = jnp.concatenate([v1, v2])
    model = online.merge(params, variables["batch_stats"])
    z = model(views, train=True, rng=encoder_rng)
    p1, p2 = jnp.split(model.predictor(z, train=True), 2)
    teacher = target.merge(variables["teacher"]["params"], variables["teacher"]["batch_stats"])
    t1, t2 = jnp.split(jax.lax.stop_gradient(teacher(views, train=True)), 2)
    # Symmetric: each view's prediction regresses the other view's target (BYOL eq. 2-3).
    value = (negative_cosine(p1, t2, form="byol") + negative_cosine(p2, t1, form="byol"))
    z1, z2 = jnp.split(z, 2)
    state = {"batch_stats": online.batch_stats(model),
             "teacher": {"params": variables["teacher"]["params"],
                         "batch_stats": target.batch_stats(teacher)}}
    return value, {"metrics": experiment.embedding_metrics(z1, z2), "state": state}

  return Method(init=init, apply=apply, loss=loss, param_axes=online.param_axes,
                after_update=experiment.ema_teacher_update(config, followed))
