"""Low-label protocols on frozen features: few-shot ridge-regression probes and label fractions.

Few-shot (big_vision's ``fewshot_lsr`` evaluator, used by ViT / BiT / SigLIP papers): for each
seed, every class's train examples are shuffled with ``np.random.default_rng(seed)`` and its first
``shots`` become the training set, so a seed's 1-shot set is inside its 5-shot set and so on. On
those ``shots * num_classes`` examples a closed-form least-squares classifier is fitted:

1. features are standardised with the mean and std (+1e-5) of the few-shot examples (a feature
   constant on them is only centred);
2. a constant feature of value 100 is appended, a bias the L2 penalty barely touches;
3. targets are the one-hot labels mapped to {-1, +1};
4. W = argmin ||X W - Y||^2 + l2_reg ||W||^2 = (X^T X + l2_reg I)^-1 X^T Y, computed through the
   eigendecomposition of X^T X (or of X X^T, W = X^T (X X^T + l2_reg I)^-1 Y, when there are
   fewer examples than features), in float64 on the host (the problems are small);
5. a test example's prediction is argmax(x W); the top-1 on the whole test split is reported.

big_vision's defaults are kept: shots 1, 5, 10, 25, l2_reg = 2**10, three seeds, no sweep of the
regulariser (its code keeps a fixed l2_reg; choosing it on the test split would be tuning on
test). Results are per seed plus the mean and a 95% Student-t interval (`sslx.evaluate.stats`).

Label fractions (SimCLRv2, Chen et al. 2020b): the offline linear probe of
`sslx.evaluate.linear` fitted on a class-balanced, seeded 1% or 10% of the train labels
(`sslx.data.sources.label_fraction`) and scored on the whole test split, reported as
``linear_top1@1%`` / ``linear_top1@10%``.
"""

from collections.abc import Sequence

import numpy as np

from sslx.data.sources import label_fraction
from sslx.evaluate import linear, stats
from sslx.evaluate.knn import (_check_features, _check_labels, _check_num_classes,
                               check_train_test)

DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_L2_REG = 2.0**10
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_FRACTIONS = (0.01, 0.1)
# The appended bias feature: large, so the L2 penalty on its weight is negligible (big_vision).
BIAS_FEATURE = 100.0
_STD_EPS = 1e-5


def sample_shots(labels, shots: int, *, num_classes: int, seed: int) -> np.ndarray:
  """Indices of ``shots`` examples of every class, class by class, drawn with
  ``np.random.default_rng(seed)`` (one permutation per class, first ``shots`` kept: the same
  seed's smaller shot sets are subsets of its larger ones)."""
  num_classes = _check_num_classes(num_classes)
  labels = np.asarray(labels)
  if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
    raise ValueError(f"shots must be a positive int, got {shots!r}")
  counts = np.bincount(labels, minlength=num_classes)
  if counts.min() < shots:
    short = np.flatnonzero(counts < shots).tolist()
    raise ValueError(f"shots={shots}: classes {short} have only {counts[short].tolist()} train "
                     f"examples; expected at least {shots} of every class")
  rng = np.random.default_rng(seed)
  per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
  return np.concatenate([members[:shots] for members in per_class])


def _fit_ridge(x: np.ndarray, y: np.ndarray, l2_reg: float, num_classes: int) -> dict:
  x = x.astype(np.float64)
  mean = x.mean(axis=0)
  std = x.std(axis=0)
  # A feature constant on the few-shot examples gets weight 0 whatever it is divided by; dividing
  # it by big_vision's 1e-5 would only blow rounding errors up on test rows where it is not.
  std = np.where(std < _STD_EPS, 1.0, std + _STD_EPS)
  x = _with_bias((x - mean) / std)
  targets = 2.0 * np.eye(num_classes)[y] - 1.0
  num_examples, dim = x.shape
  # One eigendecomposition of the smaller Gram matrix, as big_vision does: (Q diag(e) Q^T +
  # l2 I)^-1 = Q diag(1 / (e + l2)) Q^T. Float64 on the host: the bias column of 100 makes the
  # Gram matrix ill-conditioned enough (1e6 and more) that float32 loses digits at small l2_reg.
  if num_examples >= dim:  # primal: (X^T X + l2 I)^-1 X^T Y
    eigs, q = np.linalg.eigh(x.T @ x)
    left, right = q, q.T @ (x.T @ targets)
  else:  # dual: X^T (X X^T + l2 I)^-1 Y
    eigs, q = np.linalg.eigh(x @ x.T)
    left, right = x.T @ q, q.T @ targets
  return {"mean": mean, "std": std, "w": (left / (eigs + l2_reg)[None, :]) @ right}


def _with_bias(x: np.ndarray) -> np.ndarray:
  return np.concatenate([x, np.full((x.shape[0], 1), BIAS_FEATURE, x.dtype)], axis=1)


def ridge_scores(params: dict, features) -> np.ndarray:
  """[M, C] float64 class scores x W of a classifier from `fit_ridge_classifier`."""
  x = np.asarray(features, np.float64)
  return _with_bias((x - params["mean"]) / params["std"]) @ params["w"]


def fit_ridge_classifier(features, labels, *, num_classes: int,
                         l2_reg: float = DEFAULT_L2_REG) -> dict:
  """The closed-form least-squares classifier of the few-shot protocol (steps 1-4 of the module
  docstring): ``{"mean": [D], "std": [D], "w": [D + 1, C]}``, the last row of w the bias's."""
  num_classes = _check_num_classes(num_classes)
  x = _check_features(features, "features")
  y = _check_labels(labels, "labels", x.shape[0], num_classes, "features")
  if not np.isfinite(l2_reg) or l2_reg <= 0:
    raise ValueError(f"l2_reg must be a positive finite number, got {l2_reg!r}")
  return _fit_ridge(x, y, float(l2_reg), num_classes)


def fewshot_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    *,
    num_classes: int,
    shots: Sequence[int] = DEFAULT_SHOTS,
    l2_reg: float = DEFAULT_L2_REG,
    seeds: Sequence[int] = DEFAULT_SEEDS,
) -> dict:
  """Few-shot ridge-regression probes (big_vision's protocol, see the module docstring).

  Returns ``{"top1": {shots: mean test top-1 over seeds}, "interval": {shots:
  stats.mean_interval}, "per_seed": {seed: {shots: top-1}}, "protocol": description}``.
  """
  num_classes, x_train, y_train, x_test, y_test = check_train_test(
      train_features, train_labels, test_features, test_labels, num_classes)
  shots = tuple(shots)
  if not shots:
    raise ValueError("shots must name at least one shot count, got none")

  def one_seed(seed):
    top1 = {}
    for s in shots:
      idx = sample_shots(y_train, s, num_classes=num_classes, seed=seed)
      params = fit_ridge_classifier(x_train[idx], y_train[idx], num_classes=num_classes,
                                    l2_reg=l2_reg)
      preds = ridge_scores(params, x_test).argmax(axis=-1)
      top1[s] = float(np.mean(preds == y_test))
    return top1

  runs = stats.over_seeds(one_seed, seeds)
  interval = {s: runs["summary"][str(s)] for s in shots}
  return {
      "top1": {s: interval[s]["mean"] for s in shots},
      "interval": interval,
      "per_seed": runs["per_seed"],
      "protocol": (f"few-shot ridge regression (big_vision fewshot_lsr): l2_reg={l2_reg:g}, "
                   f"shots {list(shots)} per class from the train split, {len(seeds)} seeds, "
                   "test-split top-1"),
  }


def fraction_key(metric: str, fraction: float) -> str:
  """("linear_top1", 0.01) -> "linear_top1@1%"."""
  return f"{metric}@{100.0 * fraction:g}%"


def label_fraction_probes(
    train_features,
    train_labels,
    test_features,
    test_labels,
    *,
    num_classes: int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    **probe_kwargs,
) -> dict:
  """The offline linear probe fitted on class-balanced ``fractions`` of the train labels.

  Each fraction's subset is ``label_fraction(train_labels, fraction, seed)``; the probe is
  `sslx.evaluate.linear.linear_probe` on that subset (``probe_kwargs`` are passed on, ``seed``
  too) and is scored on the whole test split. Returns ``{"linear_top1@1%": top-1, ...,
  "probes": {key: the full linear_probe result}, "num_labels": {key: subset size}}``.
  """
  x_train = _check_features(train_features, "train_features")
  y_train = np.asarray(train_labels)
  if y_train.ndim != 1 or y_train.shape[0] != x_train.shape[0]:
    raise ValueError(f"train_labels must be 1-D with one label per row of train_features "
                     f"({x_train.shape[0]}), got shape {y_train.shape}")
  out, probes, sizes = {}, {}, {}
  for fraction in fractions:
    idx = label_fraction(y_train, fraction, seed)
    key = fraction_key("linear_top1", fraction)
    probes[key] = linear.linear_probe(x_train[idx], y_train[idx], test_features, test_labels,
                                      num_classes=num_classes, seed=seed, **probe_kwargs)
    out[key] = probes[key]["top1"]
    sizes[key] = int(idx.size)
  return {**out, "probes": probes, "num_labels": sizes}
