"""FixMatch (Sohn et al. 2020): confident weak-view pseudo-labels supervise the strong view.

Launch (from the repository root):
  python -m sslx.main --config configs/fixmatch.py:mnist,labels=4 --workdir runs/fixmatch
  python -m sslx.main --config configs/fixmatch.py:cifar10,labels=4 --workdir runs/fixmatch_c10
Variants: mnist (default) | fashion_mnist | cifar10; labels=N per class; smoke.
Expected:
  mnist / fashion_mnist: docs/results/semi-supervised.md (error of the EMA classifier).
  cifar10 (USB's classic setting, 2^20 steps of 64 labelled + 448 unlabelled images):
    8.33 / 4.97 / 4.29 % error with 40 / 250 / 4000 labels (USB's classic-CV table;
    WRN-28-2 there, a ResNet-18 here).
"""

import ml_collections

from configs import _semisup


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c, args = _semisup.semisup_config("fixmatch", arg)
  c.loss.threshold = 0.95
  return _semisup.finish(c, args)
