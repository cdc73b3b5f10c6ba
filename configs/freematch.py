"""FreeMatch (Wang et al. 2023): self-adaptive thresholds and class fairness.

Launch (from the repository root):
  python -m sslx.main --config configs/freematch.py:mnist,labels=4 --workdir runs/freematch
Variants: mnist (default) | fashion_mnist | cifar10; labels=N per class; smoke.
Expected: the README's semi-supervised table; USB's classic CIFAR-10 setting with WRN-28-2
(a ResNet-18 here) in the FreeMatch paper: 4.90 % error with 40 labels.
"""

import ml_collections

from configs import _semisup


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c, args = _semisup.semisup_config("freematch", arg)
  c.loss.momentum = 0.999  # EMA of the threshold statistics
  # USB's released configs all use 0.001 (its command-line default is 0.01).
  c.loss.fairness_weight = 0.001
  return _semisup.finish(c, args)
