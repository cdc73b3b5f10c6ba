"""Pseudo-Label (Lee 2013), as USB runs it: the model's confident predictions (max softmax >=
loss.threshold) on the weak views of unlabelled images are their hard labels, trained on the same
views, with the weight ramped up over semi.unsup_warmup of the run.
"""

from experiments import _semisup
from sslx.losses import fixmatch
from sslx.method import Method


def get_method(config) -> Method:
  _semisup.check_threshold("loss.threshold", config.loss.threshold)

  def objective(u: _semisup.Unlabelled):
    # FixMatch's loss with the weak view on both sides: the target comes from its stop-gradient
    # copy, the gradient through the same logits.
    loss, aux = fixmatch(u.weak, u.weak, threshold=config.loss.threshold)
    return loss, {"mask_rate": aux["mask_rate"]}, u.state

  return _semisup.semi_supervised_method(config, objective, strong=False)
