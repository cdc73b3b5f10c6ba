"""LeJEPA (Balestriero & LeCun 2025): every multi-crop view's projection predicts the mean of
the global views' projections, and SIGReg keeps each view's projections an isotropic Gaussian.
No teacher, no stop-gradient, no predictor network, no negatives: one trade-off, `loss.lambd`.

The network is a backbone + MLP projector (Linear-BatchNorm-ReLU hidden layers, a plain Linear
last, as the authors' ``MINIMAL.md``); the evaluated representation is the backbone's, as the
authors probe it. SIGReg's random directions are drawn afresh each step from the step's key,
which every device shares (the authors seed them with the global step).
"""

import jax

from experiments import _multicrop
from experiments._redundancy import EncoderProjector
from sslx import experiment
from sslx.losses import lejepa
from sslx.method import Method


def check_config(config) -> None:
  c = config.loss
  if not 0 <= c.lambd <= 1:
    raise ValueError(f"loss.lambd must be in [0, 1], got {c.lambd!r}")
  experiment.check_int_at_least("loss.num_slices", c.num_slices, 1)
  experiment.check_positive("loss.t_max", c.t_max)
  experiment.check_int_at_least("loss.num_knots", c.num_knots, 2)


def get_method(config) -> Method:
  check_config(config)
  c = config.loss
  images = _multicrop.images_for(config)
  net = _multicrop.MultiCropNetwork(
      lambda rngs, shape: EncoderProjector(config, shape, rngs=rngs), config, images)
  num_global = _multicrop.crop_config(config)[_multicrop.GLOBAL]["number"]

  def init(rng, batch):
    del batch  # the model's shapes come from the config and the dataset
    return net.init(rng)

  apply = experiment.encoder_apply(net, images)

  def loss(params, variables, batch, rng):
    views, encoder_rng = _multicrop.crop_views(rng, batch["image"], config, images)
    # One pass per crop resolution; [V, B, K] with the global views first.
    projections, batch_stats = net.encode(lambda m, x, r: m(x, train=True, rng=r), params,
                                          variables["batch_stats"], views, encoder_rng)
    directions = jax.random.normal(jax.random.fold_in(rng, 2),
                                   (projections.shape[-1], c.num_slices))
    local = projections[num_global:] if projections.shape[0] > num_global else None
    value, terms = lejepa(projections[:num_global], local, directions, lambd=c.lambd,
                          t_max=c.t_max, num_knots=c.num_knots)
    metrics = {**experiment.embedding_metrics(projections[0], projections[1]),
               "train/prediction_loss": terms["prediction"], "train/sigreg": terms["sigreg"]}
    return value, {"metrics": metrics, "state": {"batch_stats": batch_stats}}

  return Method(init=init, apply=apply, loss=loss, param_axes=net.param_axes)
