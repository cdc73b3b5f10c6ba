"""Supervised training of the classifier on the labelled images only: the "labels only" row of a
semi-supervised table (semi.labels_per_class labels per class), or the "fully supervised" one
(semi.labels_per_class=-1). Same model, weak augmentation, optimizer, EMA and evaluation as the
semi-supervised methods, so the rows differ only in the unlabelled loss.
"""

from experiments._semisup import semi_supervised_method
from sslx.method import Method


def get_method(config) -> Method:
  return semi_supervised_method(config)
