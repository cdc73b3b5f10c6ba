"""MixMatch (Berthelot et al. 2019): sharpened guesses of two weak views, mixup of labelled and
unlabelled images, squared error on the unlabelled part.

Launch (from the repository root):
  python -m sslx.main --config configs/mixmatch.py:mnist,labels=4 --workdir runs/mixmatch
Variants: mnist (default) | fashion_mnist | cifar10; labels=N per class; smoke.
Expected:
  mnist / fashion_mnist: docs/results/semi-supervised.md (error of the EMA classifier).
  cifar10: 11.08 / 6.24 % error with 250 / 4000 labels (the MixMatch paper, WRN-28-2; USB's
    classic setting here: uratio 1, unlabelled weight 75 ramped over 40% of 2^20 steps).
"""

import ml_collections

from configs import _semisup


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c, args = _semisup.semisup_config("mixmatch", arg)
  c.semi.uratio = 1  # USB's MixMatch: one unlabelled image (two weak views) per labelled one
  c.semi.unsup_weight = 75.0
  c.semi.unsup_warmup = 0.4
  c.loss.temperature = 0.5  # sharpening
  c.loss.mixup_alpha = 0.5  # lam ~ Beta(0.5, 0.5)
  return _semisup.finish(c, args)
