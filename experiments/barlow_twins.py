"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of two views' standardised
projections is pushed towards the identity, so dimensions agree across views and decorrelate.
"""

from experiments import _redundancy
from sslx import experiment
from sslx.losses import barlow_twins
from sslx.method import Method


def get_method(config) -> Method:
  lambd, scale = config.loss.lambd, config.loss.scale
  experiment.check_non_negative("loss.lambd", lambd)
  experiment.check_positive("loss.scale", scale)

  def objective(context):
    z1, z2 = context.projections
    value = barlow_twins(z1, z2, lambd=lambd)
    # solo-learn's scale_loss: a constant factor, which LARS all but ignores and Adam fully does.
    return scale * value, {"train/barlow_twins": value}

  return _redundancy.redundancy_method(config, objective)
