"""The offline evaluation of a trained encoder: kNN and the linear probe (with the opt-in few-shot
and label-fraction probes) on frozen features, beside the baselines, each number with its protocol.

Imports run one way. The training loop (`sslx.train.loop`) uses only the instruments that run
while it trains (`sslx.evaluate.monitor`, `online_probe`, `plots`), never this module or the CLI;
this module and `python -m sslx.evaluate` (cli.py) import `sslx.train` to rebuild and restore a
run; `sslx.run` (train, then evaluate) imports both. tests/test_imports.py keeps it so.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from sslx import sharding
from sslx.data import pipeline, sources
from sslx.evaluate import features as features_lib
from sslx.evaluate import fewshot, knn, linear


def check_config(config, mesh) -> None:
  """Refuses evaluation settings that could only fail once the features are computed: called by
  `sslx.run` with the training run's checks and by the CLI before it restores a checkpoint."""
  fraction = config.eval.train_fraction
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
      0.0 < fraction <= 1.0):
    raise ValueError(f"eval.train_fraction must be a number in (0, 1] (1: the whole train "
                     f"split), got {fraction!r}")
  try:
    sharding.check_batch_divisible(config.eval.batch_size, mesh)
  except ValueError as e:
    raise ValueError(f"eval.{e}") from None


def evaluate(config, method, state, mesh, info, source_kwargs) -> dict:
  """kNN and linear-probe top-1 of the trained encoder, a random encoder and raw pixels."""
  train_source, test_source = eval_sources(config, info, source_kwargs)
  bs = config.eval.batch_size
  workers = config.data.worker_count  # -1: a grain worker per core for JPEG datasets
  candidates = {
      "SSL encoder": lambda s: features_lib.extract_features(
          method.apply, state.variables, s, mesh=mesh, batch_size=bs, worker_count=workers),
  }
  if "random_encoder" in config.eval.baselines:
    random_vars = jax.jit(method.init, out_shardings=sharding.replicated(mesh))(
        jax.random.PRNGKey(config.seed + 1),
        {"image": jnp.zeros((bs, *info.image_shape), jnp.uint8),
         "label": jnp.zeros((bs,), jnp.int32)})
    candidates["random encoder"] = lambda s: features_lib.extract_features(
        method.apply, random_vars, s, mesh=mesh, batch_size=bs, worker_count=workers)
  if "raw_pixels" in config.eval.baselines:
    candidates["raw pixels"] = features_lib.raw_pixel_features

  rows = {name: evaluate_features(config, info, featurize, train_source, test_source, name,
                                 mesh=mesh)
          for name, featurize in candidates.items()}
  if method.predict is not None:  # a classifier (semi-supervised methods): its own top-1
    logits, labels = features_lib.extract_features(method.predict, state.variables, test_source,
                                                   mesh=mesh, batch_size=bs, worker_count=workers)
    rows["SSL encoder"]["classifier_top1"] = float(np.mean(np.argmax(logits, -1) == labels))
  return {"rows": rows, "protocol": describe_protocols(config, method.predict is not None),
          "dataset": config.data.name, "steps": int(state.step)}


def _train_split_text(config) -> str:
  """The train examples the kNN bank and the probes use, in words."""
  first = config.eval.train_examples
  fraction = config.eval.train_fraction
  if fraction < 1.0:
    of = f"the first {first} of the train split" if first else "the train split"
    return f"class-balanced {fraction * 100:g}% of {of} (seed {config.seed})"
  return "train split" + (f" (first {first})" if first else "")


def describe_protocols(config, method_predicts: bool = False) -> dict[str, str]:
  """The protocol behind each number of `evaluate`'s rows (knn_top1, linear_top1), so an
  offline figure is never mistaken for an online one."""
  train = _train_split_text(config)
  test = "test split" + (f" (first {config.eval.test_examples})"
                         if config.eval.test_examples else "")
  extra = {}
  if method_predicts:
    extra["classifier"] = ("the trained classifier itself (the EMA model for semi-supervised "
                           f"methods), no augmentation, top-1 on the {test}")
  if config.eval.online_probe:
    extra["online_probe"] = ("online probe: linear classifier trained beside the method on "
                             "stop-gradient encoder features of augmented training views "
                             "(train/online_probe_top1 in metrics.jsonl; not an offline figure)")
  if config.eval.label_fractions:
    extra["linear@fraction"] = ("the offline linear probe fitted on a class-balanced, seeded "
                                f"label fraction of the {train}, top-1 on the {test}")
  if config.eval.fewshot:
    extra["fewshot"] = (f"big_vision few-shot ridge regression to +-1 targets, "
                        f"l2={fewshot.DEFAULT_L2_REG:g}, mean of {len(fewshot.DEFAULT_SEEDS)} "
                        f"seeds, shots per class from the {train}, top-1 on the {test}")
  return {
      "knn": f"weighted kNN (InstDisc/DINO), cosine, k={config.eval.knn_k}, "
             f"T={config.eval.knn_temperature}, frozen features, no augmentation, "
             f"bank = {train}, queries = {test}",
      "linear": "offline linear probe, multinomial logistic regression by L-BFGS on "
                "standardised frozen features, no augmentation, weight decay chosen on a "
                f"stratified 10% holdout of the {train}, refitted on all of it, top-1 on the "
                f"{test}",
      **extra,
  }


def eval_sources(config, info, source_kwargs):
  """The (train, test) sources of the evaluation: the first eval.train_examples /
  eval.test_examples of the dataset's splits (all of them when 0), the train source cut to a
  class-balanced eval.train_fraction of those, drawn with config.seed."""
  test_source = _first(sources.load_source(config.data.name, info.test_split, **source_kwargs),
                       config.eval.test_examples)
  train_split = sources.load_source(config.data.name, info.train_split, **source_kwargs)
  train_source = _first(train_split, config.eval.train_examples)
  fraction = config.eval.train_fraction
  if fraction < 1.0:
    # The labels come first, read without decoding a single image; then only the subsample's
    # images are decoded and run through the encoder.
    labels = sources.split_labels(config.data.name, info.train_split, limit=len(train_source),
                                  **source_kwargs)
    try:
      kept = sources.label_fraction(labels, fraction, config.seed)
    except ValueError as e:
      raise ValueError(f"eval.train_fraction={fraction}: {e}") from None
    train_source = pipeline.Subset(train_split, kept)
  return train_source, test_source


def evaluate_features(config, info, featurize, train_source, test_source, name="", *,
                      mesh=None) -> dict:
  """One row of the evaluation: kNN (and with eval.linear_probe, linear-probe; with
  eval.label_fractions, probes on label fractions; with eval.fewshot, few-shot probes) top-1 of
  the features `featurize(source) -> (features, labels)` gives, bank / probe fit on the train
  source, scored on the test source. With `mesh` the kNN bank is sharded over its devices."""
  t0 = time.perf_counter()
  train_x, train_y = featurize(train_source)
  test_x, test_y = featurize(test_source)
  row = {"knn_top1": knn.knn_accuracy(
      train_x, train_y, test_x, test_y, num_classes=info.num_classes,
      k=config.eval.knn_k, temperature=config.eval.knn_temperature, mesh=mesh)}
  if config.eval.linear_probe:
    probe = linear.linear_probe(train_x, train_y, test_x, test_y,
                                num_classes=info.num_classes, seed=config.seed)
    row["linear_top1"] = probe["top1"]
  if config.eval.label_fractions:
    fractions = fewshot.label_fraction_probes(
        train_x, train_y, test_x, test_y, num_classes=info.num_classes,
        fractions=tuple(config.eval.label_fractions), seed=config.seed)
    row.update({k: v for k, v in fractions.items() if k.startswith("linear_top1@")})
  if config.eval.fewshot:
    shots = fewshot.fewshot_probe(train_x, train_y, test_x, test_y,
                                  num_classes=info.num_classes)
    row.update({f"fewshot_top1@{s}shot": v for s, v in shots["top1"].items()})
  row["feature_dim"] = int(train_x.shape[1])
  row["seconds"] = round(time.perf_counter() - t0, 1)
  logging.info("eval %s: %s", name, row)
  return row


def _first(source, n: int):
  """The first n examples of `source` (all of them when n is 0 or too large)."""
  return pipeline.Subset(source, np.arange(n)) if 0 < n < len(source) else source
