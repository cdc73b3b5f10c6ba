"""Evaluation protocols: weighted kNN (bank sharded over the mesh), the offline linear probe,
few-shot ridge probes and label fractions, fine-tuning, the online probe, multi-seed summaries,
and a results table."""

from sslx.evaluate.fewshot import fewshot_probe, label_fraction_probes
from sslx.evaluate.knn import knn_accuracy, knn_classify
from sslx.evaluate.linear import linear_probe
from sslx.evaluate.online_probe import with_online_probe
from sslx.evaluate.report import format_table
from sslx.evaluate.stats import mean_interval, over_seeds

# Fine-tuning: sslx.evaluate.finetune.finetune (not re-exported here: the function would hide its
# module, sslx.evaluate.finetune). The offline evaluation of a trained run,
# sslx.evaluate.offline, is not imported here either: it imports sslx.train, whose loop imports
# this package's monitor and online probe.
__all__ = ["fewshot_probe", "format_table", "knn_accuracy", "knn_classify",
           "label_fraction_probes", "linear_probe", "mean_interval", "over_seeds",
           "with_online_probe"]
