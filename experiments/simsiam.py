"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning"): one encoder +
projector for both views, a predictor, and negative cosine onto the stop-gradient other view.
"""

from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

from sslx import experiment
from sslx.losses import negative_cosine
from sslx.method import Method
from sslx.models import MLP, Backbone


class SimSiamModel(nnx.Module):
  """Encoder, projector with BN on every layer (the output BN without affine, as
  facebookresearch/simsiam builder.py) and a bottleneck predictor without output BN.

  ``extra_outputs`` widens the predictor's last layer (VI-SimSiam reads kappa from it).
  """

  def __init__(self, config, image_shape, *, extra_outputs: int = 0, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    p, q = config.projector, config.predictor
    self.projector = MLP(self.encoder.num_features, tuple(p.hidden), p.out_features,
                         norm_last=True, rngs=rngs)
    self.predictor = MLP(p.out_features, tuple(q.hidden), p.out_features + extra_outputs,
                         rngs=rngs)

  def __call__(self, x, *, train: bool, rng=None):
    """x -> (projection z, predictor output p)."""
    z = self.projector(self.encoder(x, train=train, rng=rng), train=train)
    return z, self.predictor(z, train=train)


# objective(p1, p2, z1, z2) -> (loss, metrics): the predictor outputs and projections of the two
# views; the objective applies the stop-gradient on z (the sslx losses do).
Objective = Callable[..., tuple[jnp.ndarray, dict]]


def simsiam_objective(p1, p2, z1, z2):
  # Symmetrised D(p, sg(z)), averaged over the two directions (SimSiam eq. 2).
  value = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
  return value, {}


def siamese_method(config, objective: Objective, *, extra_outputs: int = 0) -> Method:
  """A SimSiam-style Method (shared weights, no teacher) with the given objective."""
  images = experiment.images_for(config)
  net = experiment.Network(lambda rngs: SimSiamModel(config, images.view_shape,
                                                     extra_outputs=extra_outputs, rngs=rngs),
                           dtype=config.model.dtype)

  def init(rng, batch):
    del batch  # shapes come from the config and the dataset
    return net.init(rng)

  apply = experiment.encoder_apply(net, images)

  def loss(params, variables, batch, rng):
    (v1, v2), encoder_rng = experiment.two_views(rng, batch["image"], config, images)
    model = net.merge(params, variables["batch_stats"])
    # One pass over both views (BatchNorm statistics of the 2B images together; SimSiam's code
    # normalises each view's batch on its own), half the passes of separate views.
    z, p = model(jnp.concatenate([v1, v2]), train=True, rng=encoder_rng)
    z1, z2 = jnp.split(z, 2)
    p1, p2 = jnp.split(p, 2)
    value, metrics = objective(p1, p2, z1, z2)
    return value, {"metrics": {**experiment.embedding_metrics(z1, z2), **metrics},
                   "state": {"batch_stats": net.batch_stats(model)}}

  return Method(init=init, apply=apply, loss=loss, param_axes=net.param_axes)


def get_method(config) -> Method:
  return siamese_method(config, simsiam_objective)
