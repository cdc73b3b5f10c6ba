"""Pseudo-Label (Lee 2013): confident predictions on unlabelled images become their labels.

Launch (from the repository root):
  python -m sslx.main --config configs/pseudo_label.py:mnist,labels=4 --workdir runs/pl
Variants: mnist (default) | fashion_mnist | cifar10; labels=N per class; smoke.
Expected: docs/results/semi-supervised.md. USB's classic setting: threshold 0.95, weight 1
ramped over the first 40% of the run.
"""

import ml_collections

from configs import _semisup


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c, args = _semisup.semisup_config("pseudo_label", arg)
  c.loss.threshold = 0.95
  c.semi.unsup_warmup = 0.4
  return _semisup.finish(c, args)
