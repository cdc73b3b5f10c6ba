"""FlexMatch (Zhang et al. 2021): FixMatch with curriculum class-wise thresholds.

Launch (from the repository root):
  python -m sslx.main --config configs/flexmatch.py:mnist,labels=4 --workdir runs/flexmatch
Variants: mnist (default) | fashion_mnist | cifar10; labels=N per class; smoke.
Expected:
  mnist / fashion_mnist: docs/results/semi-supervised.md.
  cifar10 (USB's classic setting): 4.97 / 4.98 / 4.19 % error with 40 / 250 / 4000 labels
    (FlexMatch, Table 1; WRN-28-2 there, a ResNet-18 here).
"""

import ml_collections

from configs import _semisup


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c, args = _semisup.semisup_config("flexmatch", arg)
  c.loss.threshold = 0.95
  c.loss.threshold_warmup = True
  c.loss.mapping = "convex"
  return _semisup.finish(c, args)
