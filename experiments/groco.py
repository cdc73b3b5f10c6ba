"""GroCo (Shvetsova et al., ICCV 2023, "Learning by Sorting"): SimCLR's two views and network,
trained to sort each anchor's positive above its hardest negatives through a differentiable
sorting network (`sslx.losses.groco`), instead of InfoNCE's softmax over all of them.
"""

from experiments import _contrastive
from experiments.simclr import SimCLRModel
from sslx import experiment
from sslx.losses import groco
from sslx.losses.ranking import RELAXATIONS
from sslx.method import Method


def check_config(config) -> None:
  c = config.loss
  experiment.check_int_at_least("loss.num_negatives", c.num_negatives, 1)
  if c.num_negatives + 1 > config.batch_size:
    raise ValueError(f"loss.num_negatives ({c.num_negatives}) must be below batch_size "
                     f"({config.batch_size}): each anchor ranks that many other images")
  experiment.check_positive("loss.steepness", c.steepness)
  if c.relaxation not in RELAXATIONS:
    raise ValueError(f"loss.relaxation must be one of {RELAXATIONS}, got {c.relaxation!r}")


def get_method(config) -> Method:
  check_config(config)
  c = config.loss

  def objective(model, z1, z2, batch, variables):
    del model, batch, variables
    value = groco(z1, z2, num_negatives=c.num_negatives, steepness=c.steepness,
                  relaxation=c.relaxation, stop_gradient=c.stop_gradient)
    return value, {}, {}

  return _contrastive.two_view_method(config, SimCLRModel, objective)
