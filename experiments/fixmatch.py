"""FixMatch (Sohn et al. 2020): a confident prediction on the weak view of an unlabelled image
(max softmax >= loss.threshold) is the hard label of its strong view (RandAugment + Cutout).
"""

from experiments import _semisup
from sslx.losses import fixmatch
from sslx.method import Method


def get_method(config) -> Method:
  _semisup.check_threshold("loss.threshold", config.loss.threshold)

  def objective(u: _semisup.Unlabelled):
    loss, aux = fixmatch(u.strong, u.weak, threshold=config.loss.threshold)
    return loss, {"mask_rate": aux["mask_rate"]}, u.state

  return _semisup.semi_supervised_method(config, objective)
