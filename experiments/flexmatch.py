"""FlexMatch (Zhang et al. 2021): FixMatch with class-wise thresholds from curriculum pseudo
labelling. Its state is the class of the last confident prediction of every unlabelled image
(int32 [number of unlabelled images], -1 until selected), indexed by the image's position in the
unlabelled set, replicated on every device (4 bytes an image: 5 MB for ImageNet) and saved with
the train state, so a resumed or multi-process run sees the same thresholds.
"""

from experiments import _semisup
from sslx.losses import flexmatch, flexmatch_init, flexmatch_update
from sslx.method import Method


def get_method(config) -> Method:
  _semisup.check_threshold("loss.threshold", config.loss.threshold)
  num_unlabelled = _semisup.num_unlabelled(config)
  kwargs = {"warmup": config.loss.threshold_warmup, "mapping": config.loss.mapping}

  def objective(u: _semisup.Unlabelled):
    learning_status = u.state["flexmatch"]
    loss, aux = flexmatch(u.strong, u.weak, learning_status, threshold=config.loss.threshold,
                          **kwargs)
    new_status = flexmatch_update(learning_status, u.weak, u.batch["unlabelled_index"],
                                  threshold=config.loss.threshold)
    metrics = {"mask_rate": aux["mask_rate"],
               "flexmatch_selected": (new_status >= 0).mean()}
    return loss, metrics, {"flexmatch": new_status}

  return _semisup.semi_supervised_method(
      config, objective, init_state=lambda: {"flexmatch": flexmatch_init(num_unlabelled)})
