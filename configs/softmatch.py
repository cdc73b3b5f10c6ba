"""SoftMatch (Chen et al. 2023): truncated-Gaussian weights of every pseudo-label and uniform
alignment.

Launch (from the repository root):
  python -m sslx.main --config configs/softmatch.py:mnist,labels=4 --workdir runs/softmatch
Variants: mnist (default) | fashion_mnist | cifar10; labels=N per class; smoke.
Expected: docs/results/semi-supervised.md; USB's classic CIFAR-10 setting with WRN-28-2
(a ResNet-18 here) in the SoftMatch paper: 4.91 % error with 40 labels.
"""

import ml_collections

from configs import _semisup


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c, args = _semisup.semisup_config("softmatch", arg)
  # USB: 0.999 over 2^20 steps. The CPU presets run 1000 times fewer steps, where 0.999 would
  # leave the statistics near their initial values (as semi.ema_momentum: 0.99 there).
  # EMA of the confidence's mean and variance and of the class mean.
  c.loss.momentum = 0.999 if c.data.name == "cifar10" else 0.99
  c.loss.n_sigma = 2.0
  return _semisup.finish(c, args)
