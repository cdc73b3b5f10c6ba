"""Equivariance evaluation: how well the transformation between two views can be read from their
representations (Garrido et al. 2023, "Self-Supervised Learning of Split Invariant-Equivariant
Representations", Sec. 5: rotation and colour prediction, reported as R^2).

Protocol:

1. Each image gets two views that differ by a transformation of the measured group only: a
   colour change (brightness, contrast) and a rotation about the centre, drawn independently per
   view by `sslx.data.augment` ops that report what they drew (no crop or flip, so nothing else
   separates the views).
2. The frozen encoder embeds both views; the regressor's input is the pair ``[z1, z2]``.
3. The target is the relative transformation from view 1 to view 2 (`relative_parameters`):
   ``sin`` and ``cos`` of the angle difference (so +179 and -179 degrees are close), and the log
   ratios of the brightness and contrast factors.
4. A regressor is fitted on the pairs of training images and scored on the pairs of held-out
   images: ridge regression (linear) and a 3-layer ReLU MLP (the paper's "deep-end" rotation
   predictor), both on inputs and targets standardised with the training statistics.
5. The score is R^2 = 1 - SS_res / SS_tot per target column, averaged over the columns of a
   group ("rotation": sin, cos; "color": brightness, contrast), as scikit-learn's
   ``r2_score(multioutput="uniform_average")``. 1 is perfect, 0 is predicting the mean.

The same parameter encoding conditions SIE's and seq-JEPA's predictors (experiments/sie.py,
experiments/seq_jepa.py), so the evaluation asks for exactly what they were trained to use.
"""

import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslx.data import augment

# Columns of `relative_parameters`, and which columns each evaluated group averages over.
PARAMETER_NAMES = ("rotation_sin", "rotation_cos", "log_brightness_ratio", "log_contrast_ratio")
GROUPS = {"rotation": (0, 1), "color": (2, 3)}
REGRESSORS = ("linear", "mlp")


def transformation_pipeline(base=None, *, degrees, brightness: float = 0.0,
                            contrast: float = 0.0) -> augment.Pipeline:
  """A pipeline whose params say how a view was rotated and recoloured.

  ``base`` (anything `augment.make_pipeline` takes, e.g. a config's ``augment``) supplies the
  other augmentations (crop, flip, its own colour jitter) and is followed by a `Rotate` of
  ``degrees``. Without ``base`` the pipeline is a colour jitter of ``brightness`` / ``contrast``
  (always applied) then the rotation: the evaluation's views.
  """
  if base is not None:
    ops = list(augment.make_pipeline(base).ops)
  else:
    ops = [augment.ColorJitter(brightness, contrast, 0.0, 0.0, p=1.0)]
  names = {op.name for op in ops}
  if "color_jitter" not in names:
    raise ValueError(f"base: the pipeline must contain a color_jitter op (its factors are part "
                     f"of the transformation), got {augment.make_pipeline(base).spec!r}")
  if "rotate" in names:
    raise ValueError("base: the pipeline already rotates; the rotation is added here, got "
                     f"{augment.make_pipeline(base).spec!r}")
  return augment.Pipeline([*ops, augment.Rotate(degrees)])


def view_with_parameters(key, images, pipeline: augment.Pipeline):
  """One view of every image of a uint8 batch [B, H, W, C] and its params (leading [B] axis)."""
  return augment.augment_batch(key, images, pipeline, return_params=True)


def relative_parameters(params1: Mapping, params2: Mapping) -> jax.Array:
  """The transformation from view 1 to view 2, [B, 4] float32 (columns `PARAMETER_NAMES`).

  ``params1`` / ``params2`` are the params of a `transformation_pipeline` (``rotate.angle`` in
  degrees, ``color_jitter.factors`` with brightness and contrast first). The angle difference
  enters as sin and cos (continuous across +-180 degrees); the colour factors as log ratios
  (a jitter that was not applied has the neutral factor 1).
  """
  for name, params in (("params1", params1), ("params2", params2)):
    if not isinstance(params, Mapping) or not {"rotate", "color_jitter"} <= set(params):
      got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
      raise ValueError(f"{name}: expected the params of a transformation_pipeline, with "
                       f"'rotate' and 'color_jitter' entries, got {got}")
  delta = (params2["rotate"]["angle"] - params1["rotate"]["angle"]) * (math.pi / 180.0)
  f1, f2 = params1["color_jitter"]["factors"], params2["color_jitter"]["factors"]
  log_ratio = jnp.log(f2[..., :2]) - jnp.log(f1[..., :2])
  return jnp.concatenate([jnp.sin(delta)[..., None], jnp.cos(delta)[..., None], log_ratio],
                         axis=-1).astype(jnp.float32)


def r2_score(prediction, target) -> float:
  """Mean over columns of 1 - SS_res / SS_tot (columns of constant target are skipped)."""
  prediction, target = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
  if prediction.shape != target.shape or target.ndim != 2:
    raise ValueError(f"prediction and target must be [N, K] of the same shape, got "
                     f"{prediction.shape} and {target.shape}")
  ss_res = np.sum((target - prediction) ** 2, axis=0)
  ss_tot = np.sum((target - target.mean(axis=0)) ** 2, axis=0)
  keep = ss_tot > 0
  if not keep.any():
    raise ValueError("target: every column is constant, R^2 is undefined")
  return float(np.mean(1.0 - ss_res[keep] / ss_tot[keep]))


def _standardizer(x):
  mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
  return lambda v: (v - mean) / std


def fit_ridge(x, y, *, l2: float = 1e-2) -> Callable[[np.ndarray], np.ndarray]:
  """Ridge regression on standardised inputs (float64 closed form); returns ``predict(x)``.
  ``l2`` is relative to the number of examples (``l2 * n * I`` is added to X^T X)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  scale = _standardizer(x)
  xs = scale(x)
  y_mean = y.mean(axis=0)
  weights = np.linalg.solve(xs.T @ xs + l2 * len(x) * np.eye(x.shape[1]), xs.T @ (y - y_mean))
  return lambda v: scale(np.asarray(v, np.float64)) @ weights + y_mean


def fit_mlp(x, y, *, hidden: int = 256, steps: int = 2000, batch_size: int = 256,
            lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0
            ) -> Callable[[np.ndarray], np.ndarray]:
  """A Linear-ReLU-Linear-ReLU-Linear regressor (the paper's rotation predictor) fitted by AdamW
  on the mean squared error of standardised targets; returns ``predict(x)``."""
  x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
  scale_x = _standardizer(x)
  y_mean, y_std = y.mean(axis=0), y.std(axis=0) + 1e-6
  xs, ys = jnp.asarray(scale_x(x)), jnp.asarray((y - y_mean) / y_std)
  sizes = (x.shape[1], hidden, hidden, y.shape[1])
  keys = jax.random.split(jax.random.PRNGKey(seed), len(sizes))
  params = [(jax.random.normal(k, (a, b)) * math.sqrt(2.0 / a), jnp.zeros(b))
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

  def forward(params, v):
    for i, (w, b) in enumerate(params):
      v = v @ w + b
      if i < len(params) - 1:
        v = jax.nn.relu(v)
    return v

  tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=weight_decay)
  batch_size = min(batch_size, len(x))

  @jax.jit
  def train(params, key):
    def step(carry, key):
      params, opt_state = carry
      rows = jax.random.choice(key, xs.shape[0], (batch_size,), replace=False)
      grads = jax.grad(lambda p: jnp.mean((forward(p, xs[rows]) - ys[rows]) ** 2))(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, steps))
    return params

  params = train(params, keys[-1])
  predict = jax.jit(forward)
  return lambda v: np.asarray(predict(params, jnp.asarray(scale_x(np.asarray(v, np.float32))))
                              ) * y_std + y_mean


def pair_regression_r2(train_pairs, train_targets, test_pairs, test_targets, *,
                       regressors=REGRESSORS, groups: Mapping = GROUPS, **mlp_kwargs) -> dict:
  """R^2 on the test pairs of each regressor fitted on the train pairs, per group of target
  columns: ``{regressor: {group: r2}}``. Pairs are [N, 2D] (``[z1, z2]``), targets [N, K]."""
  unknown = sorted(set(regressors) - set(REGRESSORS))
  if unknown:
    raise ValueError(f"regressors: unknown {unknown}; expected some of {REGRESSORS}")
  fits = {"linear": lambda: fit_ridge(train_pairs, train_targets),
          "mlp": lambda: fit_mlp(train_pairs, train_targets, **mlp_kwargs)}
  out = {}
  for name in regressors:
    prediction = fits[name]()(test_pairs)
    out[name] = {group: r2_score(prediction[:, list(cols)],
                                 np.asarray(test_targets)[:, list(cols)])
                 for group, cols in groups.items()}
  return out


def transformed_pairs(images, key, pipeline: augment.Pipeline, *, batch_size: int = 500):
  """Two views (float [N, h, w, C] in [0, 1]) of every image of a uint8 [N, H, W, C] array, and
  their `relative_parameters` [N, 4]."""
  draw = jax.jit(lambda k, x: (view_with_parameters(jax.random.fold_in(k, 0), x, pipeline),
                               view_with_parameters(jax.random.fold_in(k, 1), x, pipeline)))
  views1, views2, targets = [], [], []
  for start in range(0, len(images), batch_size):
    (v1, p1), (v2, p2) = draw(jax.random.fold_in(key, start),
                              jnp.asarray(images[start:start + batch_size]))
    views1.append(np.asarray(v1))
    views2.append(np.asarray(v2))
    targets.append(np.asarray(relative_parameters(p1, p2)))
  return np.concatenate(views1), np.concatenate(views2), np.concatenate(targets)


def embed_pairs(embed: Callable, views1, views2, *, batch_size: int = 500) -> np.ndarray:
  """``[embed(view 1), embed(view 2)]`` [N, 2D], embedding ``batch_size`` views at a time."""
  chunks = [np.concatenate([np.asarray(embed(views1[i:i + batch_size])),
                            np.asarray(embed(views2[i:i + batch_size]))], axis=1)
            for i in range(0, len(views1), batch_size)]
  return np.concatenate(chunks)


def evaluate_equivariance(embeds: Mapping[str, Callable], train_images, test_images, *,
                          degrees=180.0, brightness: float = 0.4, contrast: float = 0.4,
                          seed: int = 0, regressors=REGRESSORS, **mlp_kwargs) -> dict:
  """`pair_regression_r2` for each named representation in ``embeds``.

  ``embeds`` maps a name to ``embed(images) -> [n, D]`` (float images in [0, 1]), e.g. the
  invariant and equivariant parts of SIE's representation and a random encoder. Every embedding
  sees the same views. Returns ``{name: {regressor: {group: r2}}}``.
  """
  pipeline = transformation_pipeline(degrees=degrees, brightness=brightness, contrast=contrast)
  key = jax.random.PRNGKey(seed)
  train = transformed_pairs(train_images, jax.random.fold_in(key, 0), pipeline)
  test = transformed_pairs(test_images, jax.random.fold_in(key, 1), pipeline)
  return {name: pair_regression_r2(embed_pairs(embed, *train[:2]), train[2],
                                   embed_pairs(embed, *test[:2]), test[2],
                                   regressors=regressors, **mlp_kwargs)
          for name, embed in embeds.items()}
