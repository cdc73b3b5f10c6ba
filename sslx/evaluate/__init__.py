"""Frozen-feature evaluation: weighted kNN, an offline linear probe, and a results table."""

from sslx.evaluate.knn import knn_accuracy, knn_classify
from sslx.evaluate.linear import linear_probe
from sslx.evaluate.report import format_table

__all__ = ["format_table", "knn_accuracy", "knn_classify", "linear_probe"]
