"""Offline linear probe on frozen features.

Protocol (the "offline" linear evaluation: features are extracted once, without augmentation, and
the encoder is never touched):

1. Features are standardised with the mean and standard deviation of the examples the classifier is
   fitted on (never with test statistics).
2. A multinomial logistic regression ``logits = x @ W + b`` is fitted by minimising
   ``mean_i cross_entropy(softmax(logits_i), y_i) + 0.5 * weight_decay * ||W||^2`` (the bias is
   not regularised): the problem scikit-learn's ``LogisticRegression(C=1 / (weight_decay * n))``
   solves. The objective is convex, so it is solved to convergence with full-batch L-BFGS
   (``optax.lbfgs`` with its zoom line search) inside one jitted ``lax.while_loop``, stopping when
   the gradient norm falls below ``tol`` or after ``max_iters`` iterations. To make L-BFGS fast on
   correlated features (raw pixels, low-rank embeddings) it runs on V with W = P V, where
   P = (Cov + 0.01 I)^(-1/2) is estimated from the standardised train features: a
   reparametrisation that leaves the objective and its minimiser unchanged.
3. The weight decay is chosen among ``weight_decays`` by holdout accuracy: a seeded, stratified
   ``holdout_fraction`` of the train split is held out, a probe is fitted on the rest for each
   candidate, and the best holdout top-1 wins (ties go to the larger weight decay). The candidates
   are fitted from the strongest to the weakest weight decay, each starting from the previous
   solution (the first from zero); for weight_decay > 0 the minimiser is unique, so this only saves
   iterations (with weight_decay = 0 on separable data there is no minimiser and the result depends
   on the path, as with any solver).
4. The probe is refitted with the chosen weight decay on the full train split, starting from the
   holdout solution, and its top-1 on the test split is reported. The test split is used only
   once, at the end.

Each fit is one jitted function of the full train array (rows left out of a fit get zero weight),
so a probe compiles once per feature shape.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslx.data.sources import stratified_split
from sslx.evaluate.knn import check_train_test

try:  # optax >= 0.2.5
  _tree_get, _tree_norm = optax.tree.get, optax.tree.norm
except AttributeError:  # older optax
  _tree_get, _tree_norm = optax.tree_utils.tree_get, optax.tree_utils.tree_l2_norm

_STD_EPS = 1e-6
_PRECOND_EPS = 1e-2


def _standardize_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  x64 = x.astype(np.float64)
  mean = x64.mean(axis=0)
  std = x64.std(axis=0)
  std = np.where(std < _STD_EPS, 1.0, std)  # constant features stay (zero) instead of blowing up
  return mean.astype(np.float32), std.astype(np.float32)


def _logits(params, x):
  return jnp.dot(x, params["w"], precision=jax.lax.Precision.HIGHEST) + params["b"]


def _objective(params, x, y, sample_weight, weight_decay):
  """Weighted mean cross-entropy + 0.5 * weight_decay * ||W||^2 (bias not regularised)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(_logits(params, x), y)
  mean_ce = jnp.sum(sample_weight * ce) / jnp.sum(sample_weight)
  return mean_ce + 0.5 * weight_decay * jnp.sum(params["w"] ** 2)


@jax.jit
def _preconditioner(rows, eps):
  """(P, P^-1) with P = (C + eps * I)^(-1/2), C = rows^T rows / n the (standardised) feature
  covariance. Optimising V with W = P V makes the cross-entropy part of the Hessian roughly
  isotropic, so L-BFGS needs far fewer iterations on correlated features (e.g. raw pixels)."""
  cov = jnp.dot(rows.T, rows, precision=jax.lax.Precision.HIGHEST) / rows.shape[0]
  evals, evecs = jnp.linalg.eigh(cov)
  evals = jnp.maximum(evals, 0.0) + eps
  p = (evecs * evals ** -0.5) @ evecs.T
  p_inv = (evecs * evals ** 0.5) @ evecs.T
  return p, p_inv


def _fit_one(init_params, x, y, sample_weight, weight_decay, precond, tol, max_iters):
  """L-BFGS on :func:`_objective` from ``init_params``; returns (params, num_iters).

  The optimisation variable is V with W = P V (``precond`` = (P, P^-1)): the same objective and
  minimiser, better conditioned. ``tol`` applies to the gradient with respect to (V, b).
  """
  p, p_inv = precond

  def fun(v_params):
    return _objective({"w": jnp.dot(p, v_params["v"], precision=jax.lax.Precision.HIGHEST),
                       "b": v_params["b"]}, x, y, sample_weight, weight_decay)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
    return optax.apply_updates(params, updates), state

  def cond(carry):
    _, state = carry
    count = _tree_get(state, "count")
    # After the first step the state holds the gradient at the current params.
    grad_norm = _tree_norm(_tree_get(state, "grad"))
    return (count == 0) | ((count < max_iters) & (grad_norm >= tol))

  init = {"v": jnp.dot(p_inv, init_params["w"], precision=jax.lax.Precision.HIGHEST),
          "b": init_params["b"]}
  v_params, state = jax.lax.while_loop(cond, step, (init, opt.init(init)))
  params = {"w": jnp.dot(p, v_params["v"], precision=jax.lax.Precision.HIGHEST),
            "b": v_params["b"]}
  return params, _tree_get(state, "count")


@functools.partial(jax.jit, static_argnames=("max_iters",))
def _fit_lbfgs(init_params, x, y, sample_weight, weight_decay, precond, tol, *, max_iters: int):
  """Jitted :func:`_fit_one`. ``sample_weight`` [N] (0 masks a row out) lets fits on subsets of
  the rows reuse the compiled function of the full array."""
  return _fit_one(init_params, x, y, sample_weight, weight_decay, precond, tol, max_iters)


@jax.jit
def _predict(params, x):
  return jnp.argmax(_logits(params, x), axis=-1).astype(jnp.int32)


def _zero_params(dim: int, num_classes: int):
  return {"w": jnp.zeros((dim, num_classes), jnp.float32),
          "b": jnp.zeros((num_classes,), jnp.float32)}


def make_preconditioner(features, *, eps: float = _PRECOND_EPS, max_rows: int = 16384):
  """The preconditioner of :func:`fit_logistic_regression` for (standardised) ``features``,
  estimated on at most ``max_rows`` evenly spaced rows (it only has to be roughly right)."""
  x = np.asarray(features, np.float32)
  rows = x[::max(1, -(-x.shape[0] // max_rows))]
  return _preconditioner(jnp.asarray(rows), jnp.float32(eps))


def fit_logistic_regression(
    features,
    labels,
    *,
    num_classes: int,
    weight_decay: float,
    sample_weight=None,
    init_params=None,
    preconditioner=None,
    max_iters: int = 500,
    tol: float = 1e-4,
):
  """Fits the multinomial logistic regression of the probe; returns (params, num_iters).

  ``features`` are used as given (standardise them first). ``params`` is
  ``{"w": [D, C], "b": [C]}``; the objective is :func:`_objective`, started from zeros unless
  ``init_params`` is given. ``preconditioner`` defaults to :func:`make_preconditioner` of
  ``features``.
  """
  x = jnp.asarray(features, jnp.float32)
  sw = jnp.ones(x.shape[0], jnp.float32) if sample_weight is None else jnp.asarray(
      sample_weight, jnp.float32)
  if init_params is None:
    init_params = _zero_params(x.shape[1], num_classes)
  if preconditioner is None:
    preconditioner = make_preconditioner(features)
  params, count = _fit_lbfgs(
      init_params, x, jnp.asarray(labels, jnp.int32), sw, jnp.float32(weight_decay),
      preconditioner, jnp.float32(tol), max_iters=int(max_iters))
  return params, int(count)


def _accuracy(params, x, y: np.ndarray) -> float:
  return float(np.mean(np.asarray(_predict(params, x)) == y))


def linear_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    *,
    num_classes: int,
    weight_decays: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3),
    holdout_fraction: float = 0.1,
    max_iters: int = 500,
    tol: float = 1e-4,
    seed: int = 0,
) -> dict:
  """Offline linear probe on frozen features (see the module docstring for the protocol).

  Args:
    train_features: [N, D] frozen train features (NumPy or jax).
    train_labels: [N] integer labels in [0, num_classes).
    test_features: [M, D] frozen test features.
    test_labels: [M] integer labels.
    num_classes: number of classes.
    weight_decays: candidate L2 strengths (``0.5 * wd * ||W||^2`` on top of the mean
      cross-entropy), each >= 0. With a single candidate no holdout fit is made.
    holdout_fraction: share of each train class held out to choose the weight decay, in (0, 1).
    max_iters: L-BFGS iteration cap per fit (each iteration is >= 1 full pass over the data).
    tol: stop a fit when the gradient norm of the objective falls below this.
    seed: seeds the holdout split (the fits themselves are deterministic).

  Returns:
    ``{"top1": test accuracy in [0, 1], "weight_decay": the chosen candidate,
    "holdout_top1": {candidate: holdout accuracy}, "train_top1": accuracy on the full train
    split, "num_iters": L-BFGS iterations of the final fit, "converged": whether it stopped on
    ``tol`` before ``max_iters``}``.
  """
  num_classes, x_train, y_train, x_test, y_test = check_train_test(
      train_features, train_labels, test_features, test_labels, num_classes)
  weight_decays = tuple(float(wd) for wd in weight_decays)
  if not weight_decays:
    raise ValueError("weight_decays must name at least one candidate")
  if any(not np.isfinite(wd) or wd < 0 for wd in weight_decays):
    raise ValueError(f"weight_decays must be finite and >= 0, got {weight_decays}")
  if not 0.0 < holdout_fraction < 1.0:
    raise ValueError(f"holdout_fraction must lie in (0, 1), got {holdout_fraction}")
  if isinstance(max_iters, bool) or not isinstance(max_iters, (int, np.integer)) or max_iters < 1:
    raise ValueError(f"max_iters must be a positive int, got {max_iters!r}")

  n = x_train.shape[0]
  y_train_j = jnp.asarray(y_train)
  mean, std = _standardize_stats(x_train)
  # One preconditioner (from the full train split) serves every fit: it only changes the speed.
  precond = make_preconditioner((x_train - mean) / std)

  def fit(x_std, sample_weight, wd, init):
    params, _ = fit_logistic_regression(x_std, y_train_j, num_classes=num_classes,
                                        weight_decay=wd, sample_weight=sample_weight,
                                        init_params=init, preconditioner=precond,
                                        max_iters=max_iters, tol=tol)
    return params

  holdout_top1 = {}
  init = None
  if len(weight_decays) > 1:
    fit_idx, hold_idx = stratified_split(y_train, holdout_fraction, seed)
    if hold_idx.size == 0:
      raise ValueError(
          f"holdout_fraction={holdout_fraction} leaves no holdout examples out of "
          f"{n} train_labels; use more data, a larger fraction or one weight decay"
      )
    # The candidates are fitted on the full-size array with the held-out rows weighted 0, so that
    # every fit (and the final refit) reuses one compiled function; the standardisation uses the
    # fitted rows only.
    hold_mean, hold_std = _standardize_stats(x_train[fit_idx])
    x_std = jnp.asarray((x_train - hold_mean) / hold_std)
    fit_mask = np.zeros(n, np.float32)
    fit_mask[fit_idx] = 1.0
    fit_mask = jnp.asarray(fit_mask)
    x_hold = x_std[jnp.asarray(hold_idx)]
    solutions = {}
    # Continuation: from the strongest to the weakest weight decay, each fit starts from the
    # previous solution. The objectives are convex, so this only saves iterations.
    for wd in sorted(set(weight_decays), reverse=True):
      init = fit(x_std, fit_mask, wd, init)
      solutions[wd] = init
      holdout_top1[wd] = _accuracy(init, x_hold, y_train[hold_idx])
    holdout_top1 = {wd: holdout_top1[wd] for wd in weight_decays}
    # Best holdout accuracy; ties go to the larger (more regularising) weight decay.
    chosen = max(weight_decays, key=lambda wd: (holdout_top1[wd], wd))
    del x_std, x_hold
  else:
    chosen = weight_decays[0]

  if holdout_top1:
    # Warm start from the chosen holdout solution, re-expressed for the new standardisation:
    # (x - m1) / s1 @ W1 + b1 == (x - m2) / s2 @ (s2 / s1 * W1) + b1 + ((m2 - m1) / s1) @ W1.
    w1 = np.asarray(solutions[chosen]["w"], np.float64)
    b1 = np.asarray(solutions[chosen]["b"], np.float64)
    init = {
        "w": jnp.asarray((std / hold_std)[:, None] * w1, jnp.float32),
        "b": jnp.asarray(b1 + ((mean - hold_mean) / hold_std) @ w1, jnp.float32),
    }
  x_std = jnp.asarray((x_train - mean) / std)
  params, iters = fit_logistic_regression(
      x_std, y_train_j, num_classes=num_classes, weight_decay=chosen,
      sample_weight=jnp.ones(n, jnp.float32), init_params=init, preconditioner=precond,
      max_iters=max_iters, tol=tol)
  return {
      "top1": _accuracy(params, jnp.asarray((x_test - mean) / std), y_test),
      "weight_decay": chosen,
      "holdout_top1": holdout_top1,
      "train_top1": _accuracy(params, x_std, y_train),
      "num_iters": iters,
      "converged": iters < max_iters,
  }
