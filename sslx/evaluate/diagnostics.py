"""Diagnostics from the scope papers: where a representation's probe error comes from (Dubois et
al.'s risk decomposition) and how much an encoder memorised its training images (SSLMem).

Both work on features, so any encoder (a Method's ``apply``, a checkpoint, another library's
model) can be diagnosed: extract features with `sslx.evaluate.features.extract_features`.
``benchmarks/diagnostics_table.py`` runs both protocols on Fashion-MNIST for a few methods.
"""

import numpy as np

from sslx.data import sources
from sslx.evaluate import linear
from sslx.evaluate.knn import check_train_test

RISK_TERMS = ("approximation", "usability", "probe_generalization", "encoder_generalization")


def risk_decomposition(train_features, train_labels, test_features, test_labels, *,
                       num_classes: int, supervised_train_error: float | None = None,
                       seed: int = 0, **probe_kwargs) -> dict:
  """The four-term decomposition of a linear probe's test error (Dubois, Hashimoto and Liang,
  "Evaluating Self-Supervised Learning via Risk Decomposition", ICML 2023), estimated with the
  authors' protocol (YannDubs/SSL-Risk-Decomposition, notebooks/minimal.ipynb).

  ``train`` holds the images the encoder was pre-trained on, with labels; ``test`` images it never
  saw. The train split is cut (class-stratified, seeded) into ``sub``, as many images as
  ``test``, and the rest ``comp``. With ``err(A -> B)`` the error on ``B`` of the probe fit on
  ``A`` (`sslx.evaluate.linear_probe`, its weight decay chosen on a hold-out of ``A``)::

      approximation          = supervised_train_error (the train error of a supervised model
                               of the same architecture; None: 0, merged into usability)
      usability              = err(train -> train) - approximation
      probe_generalization   = err(comp -> sub) - err(train -> train)
      encoder_generalization = err(train -> test) - err(comp -> sub)

  They sum to ``total = err(train -> test)``, the usual linear-probe error. Usability: can a
  linear probe separate the classes at all on these features; probe generalisation: what a probe
  fit on finitely many labels loses on new images the encoder has seen; encoder generalisation:
  what it loses because the test images were not in the encoder's pre-training set.

  Args:
    train_features / train_labels: [N, D] and [N]: images the encoder was trained on.
    test_features / test_labels: [M, D] and [M], M < N: held-out images.
    num_classes: number of classes.
    supervised_train_error: the approximation error, in [0, 1], or None.
    seed: seeds the sub / comp split and the probes' hold-outs.
    **probe_kwargs: passed to `sslx.evaluate.linear_probe` (``weight_decays``, ``max_iters``).

  Returns:
    ``{term: error in [0, 1] for term in RISK_TERMS, "total": err(train -> test),
    "train_error": err(train -> train), "sub_error": err(comp -> sub)}`` (approximation None
    when not given).
  """
  num_classes, x_train, y_train, x_test, y_test = check_train_test(
      train_features, train_labels, test_features, test_labels, num_classes)
  if not len(y_test) < len(y_train):
    raise ValueError(f"risk_decomposition: the test split ({len(y_test)} images) must be smaller "
                     f"than the train split ({len(y_train)}): a train subset of its size is held "
                     "out to measure the probe's generalisation")
  if supervised_train_error is not None and not 0 <= supervised_train_error <= 1:
    raise ValueError(f"supervised_train_error must be in [0, 1] (an error rate), got "
                     f"{supervised_train_error!r}")
  full = linear.linear_probe(x_train, y_train, x_test, y_test, num_classes=num_classes, seed=seed,
                             **probe_kwargs)
  comp, sub = sources.stratified_split(y_train, len(y_test) / len(y_train), seed)
  held = linear.linear_probe(x_train[comp], y_train[comp], x_train[sub], y_train[sub],
                             num_classes=num_classes, seed=seed, **probe_kwargs)
  train_error, sub_error, total = 1 - full["train_top1"], 1 - held["top1"], 1 - full["top1"]
  approximation = supervised_train_error
  return {"approximation": approximation,
          "usability": train_error - (approximation or 0.0),
          "probe_generalization": sub_error - train_error,
          "encoder_generalization": total - sub_error,
          "total": total, "train_error": train_error, "sub_error": sub_error}


def alignment(views, *, normalize: bool = False) -> np.ndarray:
  """SSLMem's alignment loss per image: the mean Euclidean distance between the representations
  of every pair of its augmented views. ``views``: [N, A, D], A >= 2 views of each of N images
  through one encoder; ``normalize``: l2-normalise the representations first. Returns [N]."""
  views = np.asarray(views, np.float64)
  if views.ndim != 3 or views.shape[1] < 2:
    raise ValueError(f"views must be [images, views >= 2, dim], got shape {views.shape}")
  if normalize:
    views = views / np.maximum(np.linalg.norm(views, axis=-1, keepdims=True), 1e-12)
  a, b = np.triu_indices(views.shape[1], k=1)
  return np.linalg.norm(views[:, a] - views[:, b], axis=-1).mean(axis=1)


def sslmem(views_with, views_without, *, normalize: bool = False) -> np.ndarray:
  """SSLMem (Wang et al., "Memorization in Self-Supervised Learning Improves Downstream
  Generalization", ICLR 2024, Definition 3.1): how much better an encoder ``f`` trained on an
  image aligns that image's augmented views than an encoder ``g`` trained on the same data
  without it::

      m(x) = L_align(g, x) - L_align(f, x),   L_align(h, x) = E_{x', x'' ~ Aug(x)} ||h(x') - h(x'')||

  Args:
    views_with: [N, A, D]: A augmented views of each of N images through ``f`` (trained on them).
    views_without: [N, A, D]: the same views through ``g`` (not trained on them).
    normalize: compare l2-normalised representations (encoders of different scale).

  Returns:
    [N] scores: > 0 where ``f`` aligns the image's views more tightly than ``g`` (memorised);
    about 0 on images both encoders trained on (the protocol's noise floor).
  """
  views_with, views_without = np.asarray(views_with), np.asarray(views_without)
  if views_with.shape != views_without.shape:
    raise ValueError(f"views_with and views_without must have one shape (the same views through "
                     f"the two encoders), got {views_with.shape} and {views_without.shape}")
  return (alignment(views_without, normalize=normalize)
          - alignment(views_with, normalize=normalize))
