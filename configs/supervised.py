"""The supervised rows of a semi-supervised table: the classifier trained on the labelled images
only ("labels only", labels=N) or on every label ("fully supervised", labels=-1), with the same
model, weak augmentation, optimizer, EMA and evaluation as the semi-supervised methods.

Launch (from the repository root):
  python -m sslx.main --config configs/supervised.py:mnist,labels=4 --workdir runs/labels_only
  python -m sslx.main --config configs/supervised.py:mnist,labels=-1 --workdir runs/full
Variants: mnist (default) | fashion_mnist | cifar10; labels=N per class; smoke.
Expected: docs/results/semi-supervised.md.
"""

import ml_collections

from configs import _semisup


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c, args = _semisup.semisup_config("supervised", arg)
  # The unlabelled part of the batch is read but not used: the smallest one.
  c.semi.uratio = 1
  return _semisup.finish(c, args)
