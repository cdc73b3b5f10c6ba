"""SoftMatch (Chen et al. 2023): every pseudo-label is used, weighted by a truncated Gaussian of
its confidence whose mean and variance are EMAs of the batch's, after uniform alignment of the
weak predictions. Its state (the EMA class distribution, mean and variance) is replicated on
every device and saved with the train state.
"""

from experiments import _semisup
from sslx.data import sources
from sslx.losses import softmatch, softmatch_init
from sslx.method import Method


def get_method(config) -> Method:
  num_classes = sources.get_dataset_info(config.data.name).num_classes

  def objective(u: _semisup.Unlabelled):
    loss, aux = softmatch(u.strong, u.weak, u.state["softmatch"], momentum=config.loss.momentum,
                          n_sigma=config.loss.n_sigma)
    return loss, {"mask_rate": aux["mask_rate"]}, {"softmatch": aux["state"]}

  return _semisup.semi_supervised_method(
      config, objective, init_state=lambda: {"softmatch": softmatch_init(num_classes)})
