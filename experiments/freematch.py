"""FreeMatch (Wang et al. 2023): FixMatch with a self-adaptive threshold (an EMA of the model's
confidence, scaled per class by the EMA of its class-wise expectation) and the self-adaptive
fairness term. Its state (the global threshold, the class expectation and the label histogram,
a few floats) is replicated on every device and saved with the train state.
"""

from experiments import _semisup
from sslx.data import sources
from sslx.losses import freematch, freematch_init
from sslx.method import Method


def get_method(config) -> Method:
  num_classes = sources.get_dataset_info(config.data.name).num_classes

  def objective(u: _semisup.Unlabelled):
    loss, aux = freematch(u.strong, u.weak, u.state["freematch"],
                          momentum=config.loss.momentum,
                          fairness_weight=config.loss.fairness_weight)
    metrics = {"mask_rate": aux["mask_rate"], "freematch_tau": aux["state"]["tau"]}
    return loss, metrics, {"freematch": aux["state"]}

  return _semisup.semi_supervised_method(
      config, objective, init_state=lambda: {"freematch": freematch_init(num_classes)})
