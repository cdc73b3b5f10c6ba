"""Decoupled Contrastive Learning (Yeh et al., ECCV 2022): SimCLR with the positive pair removed
from the InfoNCE denominator (DCL), optionally re-weighting positives by a von Mises-Fisher (DCLW).
"""

from experiments import _contrastive
from experiments.simclr import SimCLRModel
from sslx import experiment
from sslx.losses import dcl, negative_von_mises_fisher_weight
from sslx.method import Method

VARIANTS = ("dcl", "dclw")


def get_method(config) -> Method:
  loss_config = config.loss
  if loss_config.variant not in VARIANTS:
    raise ValueError(f"loss.variant must be one of {VARIANTS}, got {loss_config.variant!r}")
  experiment.check_positive("loss.temperature", loss_config.temperature)
  weight_fn = None
  if loss_config.variant == "dclw":  # DCLW: hard positives (low cosine) weigh more
    experiment.check_positive("loss.sigma", loss_config.sigma)
    weight_fn = negative_von_mises_fisher_weight(loss_config.sigma)

  def objective(model, z1, z2, batch, variables):
    del model, batch, variables
    # Both directions summed, as the authors' code adds dcl(z1, z2) + dcl(z2, z1).
    value = dcl(z1, z2, temperature=loss_config.temperature, weight_fn=weight_fn)
    return value, {}, {}

  return _contrastive.two_view_method(config, SimCLRModel, objective)
