"""FreeMatch (Wang et al. 2023): self-adaptive thresholds and class fairness.

Launch (from the repository root):
  python -m sslx.main --config configs/freematch.py:mnist,labels=4 --workdir runs/freematch
Variants: mnist (default) | fashion_mnist | cifar10; labels=N per class; smoke.
Expected: docs/results/semi-supervised.md; USB's classic CIFAR-10 setting with WRN-28-2
(a ResNet-18 here) in the FreeMatch paper: 4.90 % error with 40 labels.
"""

import ml_collections

from configs import _semisup


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c, args = _semisup.semisup_config("freematch", arg)
  # USB: 0.999 over 2^20 steps. The CPU presets run 1000 times fewer steps, where 0.999 would
  # leave the statistics near their initial values (as semi.ema_momentum: 0.99 there).
  # EMA of the threshold statistics.
  c.loss.momentum = 0.999 if c.data.name == "cifar10" else 0.99
  # USB's released configs all use 0.001 (its command-line default is 0.01).
  c.loss.fairness_weight = 0.001
  return _semisup.finish(c, args)
