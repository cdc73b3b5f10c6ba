"""The Method skeleton of the redundancy-reduction and whitening methods (Barlow Twins, Mixed
Barlow Twins, VICReg, W-MSE, SSL-EY): one encoder + projector embeds every view, and a loss on
batch statistics of the views' projections trains both; no teacher, predictor or negatives.
"""

import itertools
from collections.abc import Callable
from typing import NamedTuple

import jax
from flax import nnx

from sslx import experiment
from sslx.data import augment
from sslx.method import Method
from sslx.models import MLP, Backbone


class Context(NamedTuple):
  """What an objective sees.

  projections: the [B, D] projection of each view, in view order.
  views: the normalised augmented views [B, H, W, C] they came from.
  embed: images -> projections through the same encoder + projector in training mode (Mixed
    Barlow Twins embeds its mixed batch with it; its BatchNorm statistics are kept too).
  rng: a key for the objective's own randomness (mixing ratios, permutations).
  step: optimizer steps taken so far (int32 scalar), for schedules inside the loss.
  """

  projections: list
  views: list
  embed: Callable[[jax.Array], jax.Array]
  rng: jax.Array
  step: jax.Array


# objective(context) -> (loss, metrics): the method's loss on the views' projections and the
# method-specific scalars to log beside the collapse metrics.
Objective = Callable[[Context], tuple[jax.Array, dict]]


class EncoderProjector(nnx.Module):
  """Backbone + MLP projector (``config.projector``: hidden widths, out_features), each hidden
  layer Linear -> BatchNorm -> ReLU and a plain Linear last, as in all five authors' code."""

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    p = config.projector
    self.projector = MLP(self.encoder.num_features, tuple(p.hidden), p.out_features, rngs=rngs)

  def __call__(self, x, *, train: bool, rng=None):
    return self.projector(self.encoder(x, train=train, rng=rng), train=train)


def view_configs(config, num_views: int) -> list:
  """`experiment.view_configs` (two views, asymmetric where the config says) followed by
  ``num_views - 2`` more views of `config.augment` (W-MSE 4 draws four alike)."""
  base = config.augment.to_dict()
  return experiment.view_configs(config) + [base] * (num_views - 2)


def redundancy_method(config, objective: Objective, *, num_views: int = 2) -> Method:
  """A Method training `EncoderProjector` with `objective` on ``num_views`` views per image."""
  if not (isinstance(num_views, int) and num_views >= 2):
    raise ValueError(f"num_views must be an integer >= 2, got {num_views!r}")
  images = experiment.images_for(config)
  net = experiment.Network(lambda rngs: EncoderProjector(config, images.view_shape, rngs=rngs),
                           dtype=config.model.dtype)
  configs = view_configs(config, num_views)

  def init(rng, batch):
    del batch  # the model's shapes come from the config and the dataset
    return net.init(rng)

  apply = experiment.encoder_apply(net, images)

  def loss(params, variables, batch, rng):
    view_rng, encoder_rng, objective_rng = jax.random.split(rng, 3)
    views = [images.normalize(v)
             for v in augment.augment_views(view_rng, batch["image"], configs)]
    model = net.merge(params, variables["batch_stats"])
    forward_pass = itertools.count()

    def embed(x):  # a fresh encoder key per forward pass (drop-path, if any)
      return model(x, train=True, rng=jax.random.fold_in(encoder_rng, next(forward_pass)))

    # One forward pass per view, so BatchNorm normalises each view with its own statistics as
    # the authors' code does (barlowtwins, vicreg, SSL-EY, solo-learn, self-supervised).
    projections = [embed(v) for v in views]
    value, metrics = objective(Context(projections=projections, views=views, embed=embed,
                                       rng=objective_rng, step=variables["step"]))
    # Read after the objective: its own forward passes update the statistics too.
    return value, {"metrics": {**experiment.embedding_metrics(*projections[:2]), **metrics},
                   "state": {"batch_stats": net.batch_stats(model)}}

  return Method(init=init, apply=apply, loss=loss, param_axes=net.param_axes)
