"""Label-free measures of representation quality, as pure jax functions of embedding arrays.

Each metric needs only embeddings (no labels, no probe training), so it can be logged every few
steps of self-supervised training:

* :func:`rankme`: effective rank of the embedding matrix (Garrido et al., ICML 2023).
* :func:`lidar`: effective rank of the LDA matrix of a surrogate task whose classes are the
  source samples and whose examples are their augmented views (Thilak et al., ICLR 2024).
* :func:`alpha_req`: power-law decay exponent of the covariance eigenspectrum (Agrawal et al.,
  NeurIPS 2022).
* :func:`alignment` and :func:`uniformity`: the two terms of Wang & Isola (ICML 2020).
* :func:`embedding_std` / :func:`embedding_std_per_dim`: SimSiam's collapse detector (Chen &
  He, CVPR 2021).
* :func:`representation_metrics`: all of the above from one ``[n, q, d]`` array of views.

Every function casts its input to float32 and computes in float32 (matmuls at
``Precision.HIGHEST``), never float64, and can be wrapped in ``jax.jit``. Arguments are checked
when the function is called (or traced): a wrong rank, too few rows or views, or a non-numeric
dtype raises ValueError naming the argument, the shape received and the shape expected.
Non-finite values are rejected too when the input is concrete; under ``jax.jit`` the values are
unknown at trace time, so that check is skipped there (the result is then NaN).
"""

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp, xlogy

_HIGHEST = jax.lax.Precision.HIGHEST
# Norm floor of the L2 normalisation: an all-zero row stays zero instead of becoming NaN.
_NORM_EPS = 1e-12
# Floor of the eigenvalues whose logarithm alpha_req takes: a collapsed direction (eigenvalue 0,
# or -1e-9 from rounding) gives a large but finite exponent instead of NaN.
_LOG_FLOOR = float(np.finfo(np.float32).tiny)

# Rank range of the alpha-ReQ fit, 1-based and inclusive: the default of `get_alpha` in reptrix,
# the library of the alpha-ReQ authors (`fit_range=np.arange(5, 100)` over 0-based indices). The
# first five eigenvalues are skipped because they hold a few dominant directions, not the tail.
DEFAULT_ALPHA_FIT_RANGE = (6, 100)


# ----------------------------------------------------------------------------------------------
# Input checks (run at call or trace time: shapes are static under jit).
# ----------------------------------------------------------------------------------------------


def _as_float32(z, name: str, expected: str, rank: int, min_sizes: dict[int, tuple[int, str]]):
  """``z`` as a float32 jax array after checking rank, sizes, dtype and (if concrete) values.

  ``min_sizes`` maps an axis to (its minimum size, why that minimum).
  """
  if not isinstance(z, jax.Array):
    z = np.asarray(z)
  shape = tuple(z.shape)
  if len(shape) != rank:
    raise ValueError(f"{name} must have rank {rank} with shape {expected}, "
                     f"but got shape {shape} (rank {len(shape)}).")
  for axis, (minimum, why) in min_sizes.items():
    if shape[axis] < minimum:
      raise ValueError(f"{name} must have shape {expected} with {why}, but got shape {shape}.")
  dtype = np.dtype(z.dtype)
  if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)
          or dtype == np.bool_):
    raise ValueError(f"{name} must hold real numbers, but got dtype {dtype} (shape {shape}).")
  if not isinstance(z, jax.core.Tracer):
    # One scalar comes back to the host; the array itself stays where it is.
    finite = np.isfinite(z).all() if isinstance(z, np.ndarray) else jnp.isfinite(z).all()
    if not bool(finite):
      raise ValueError(f"{name} (shape {shape}) contains NaN or infinite values.")
  return jnp.asarray(z).astype(jnp.float32)


def _check_number(name: str, value, *, minimum: float, inclusive: bool) -> None:
  """Checks a Python/NumPy number; a (possibly traced) array is let through unchecked."""
  if isinstance(value, bool) or (isinstance(value, numbers.Number)
                                 and not isinstance(value, numbers.Real)):
    raise ValueError(f"{name} must be a real number, but got {value!r}.")
  if isinstance(value, numbers.Real):
    ok = math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
    if not ok:
      relation = ">=" if inclusive else ">"
      raise ValueError(f"{name} must be a finite number {relation} {minimum}, but got {value!r}.")


def _f32(value) -> jax.Array:
  """A hyper-parameter as a float32 scalar, so nothing is float64 even with jax_enable_x64."""
  return jnp.asarray(value, dtype=jnp.float32)


def _check_fit_range(fit_range, n: int, d: int, *, arg: str = "fit_range",
                     z_name: str = "z") -> tuple[int, int]:
  """Validated (first, last) 1-based ranks, ``last`` clipped to the non-zero spectrum."""
  if (not isinstance(fit_range, (tuple, list)) or len(fit_range) != 2
      or not all(isinstance(r, (int, np.integer)) and not isinstance(r, bool)
                 for r in fit_range)):
    raise ValueError(f"{arg} must be a pair of ints (first, last), got {fit_range!r}.")
  first, last = int(fit_range[0]), int(fit_range[1])
  if not 1 <= first < last:
    raise ValueError(f"{arg} must satisfy 1 <= first < last, got {fit_range!r}.")
  # A centred [n, d] matrix has rank <= min(n - 1, d): later eigenvalues are exactly zero and
  # would only feed log(0) to the fit.
  available = min(n - 1, d)
  last = min(last, available)
  if last - first + 1 < 2:
    hint = f", or a smaller {arg} such as (1, {available})" if available >= 2 else ""
    raise ValueError(
        f"{arg} {tuple(fit_range)} leaves fewer than 2 eigenvalues for {z_name} of shape "
        f"[n, d] = ({n}, {d}): its centred covariance has at most min(n - 1, d) = {available} "
        f"non-zero eigenvalues. Use more rows or dimensions{hint}."
    )
  return first, last


# ----------------------------------------------------------------------------------------------
# Jitted kernels.
# ----------------------------------------------------------------------------------------------


def _l2_normalize(z: jax.Array) -> jax.Array:
  norm = jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True))
  return z / jnp.maximum(norm, _NORM_EPS)


def _entropy_effective_rank(values: jax.Array, eps) -> jax.Array:
  """exp(-sum_k p_k log p_k) with p_k = v_k / ||v||_1 + eps: the effective rank of RankMe/LiDAR.

  As in both papers eps is added after the normalisation, so the p_k sum to 1 + K * eps; it
  keeps log finite for zero values. ``values`` are >= 0.
  """
  total = jnp.sum(jnp.abs(values))
  # All values zero (an all-zero embedding): every p_k is eps and the rank comes out ~1.
  p = values / jnp.where(total > 0, total, jnp.ones_like(total)) + eps
  return jnp.exp(-jnp.sum(xlogy(p, p)))  # xlogy: 0 log 0 = 0 when eps = 0


@jax.jit
def _rankme(z, eps):
  singular_values = jnp.linalg.svd(z, compute_uv=False)
  return _entropy_effective_rank(singular_values, eps)


def _lda_eigenvalues(z, delta):
  """Eigenvalues of Sigma_w^{-1/2} Sigma_b Sigma_w^{-1/2} (see `lidar`), clamped at 0."""
  n, q, d = z.shape
  class_means = jnp.mean(z, axis=1)  # mu_i, [n, d]
  between = class_means - jnp.mean(class_means, axis=0)  # mu_i - mu
  sigma_b = jnp.matmul(between.T, between, precision=_HIGHEST) / (n - 1)
  within = (z - class_means[:, None, :]).reshape(n * q, d)  # e(x_ij) - mu_i
  sigma_w = jnp.matmul(within.T, within, precision=_HIGHEST) / (n * (q - 1))
  sigma_w = sigma_w + delta * jnp.eye(d, dtype=z.dtype)
  w_values, w_vectors = jnp.linalg.eigh(sigma_w)
  # Exactly, every eigenvalue of Sigma_w is >= delta; the clamp only undoes rounding.
  inv_sqrt = jnp.matmul(w_vectors * jax.lax.rsqrt(jnp.maximum(w_values, delta)), w_vectors.T,
                        precision=_HIGHEST)
  sigma_lidar = jnp.matmul(jnp.matmul(inv_sqrt, sigma_b, precision=_HIGHEST), inv_sqrt,
                           precision=_HIGHEST)
  # Symmetric in exact arithmetic; symmetrising keeps eigvalsh from reading rounding noise.
  sigma_lidar = 0.5 * (sigma_lidar + sigma_lidar.T)
  return jnp.maximum(jnp.linalg.eigvalsh(sigma_lidar), 0.0)


@jax.jit
def _lidar(z, delta, eps):
  return _entropy_effective_rank(_lda_eigenvalues(z, delta), eps)


@functools.partial(jax.jit, static_argnames=("first", "last"))
def _alpha_req(z, *, first: int, last: int):
  n = z.shape[0]
  centered = z - jnp.mean(z, axis=0)
  # Covariance eigenvalues as squared singular values of the centred data: a small singular
  # value is accurate to ~1e-7 of the largest, so eigenvalues down to ~1e-12 of the top one
  # survive float32, while eigh of the covariance would drown them below ~1e-7.
  singular_values = jnp.linalg.svd(centered, compute_uv=False)  # descending
  eigenvalues = singular_values[first - 1:last] ** 2 / (n - 1)
  log_rank = jnp.log(jnp.arange(first, last + 1, dtype=jnp.float32))
  log_eig = jnp.log(jnp.maximum(eigenvalues, _LOG_FLOOR))
  # Ordinary least squares of log(eigenvalue) on log(rank): alpha is minus the slope.
  x = log_rank - jnp.mean(log_rank)
  slope = jnp.sum(x * (log_eig - jnp.mean(log_eig))) / jnp.sum(x * x)
  return -slope


@jax.jit
def _alignment(z1, z2, alpha):
  diff = _l2_normalize(z1) - _l2_normalize(z2)
  squared = jnp.sum(diff * diff, axis=-1)
  return jnp.mean(squared ** (alpha / 2))


@jax.jit
def _uniformity(z, t):
  n = z.shape[0]
  u = _l2_normalize(z)
  squared_norms = jnp.sum(u * u, axis=-1)  # 1, or 0 for an all-zero row
  gram = jnp.matmul(u, u.T, precision=_HIGHEST)
  squared = jnp.maximum(squared_norms[:, None] + squared_norms[None, :] - 2.0 * gram, 0.0)
  pairs = jnp.triu(jnp.ones((n, n), dtype=bool), k=1)  # i < j
  # log-mean-exp over pairs; logsumexp keeps large t * distance from underflowing to log(0).
  log_terms = jnp.where(pairs, -t * squared, jnp.full_like(squared, -jnp.inf))
  return logsumexp(log_terms) - math.log(n * (n - 1) / 2)


@jax.jit
def _embedding_std_per_dim(z):
  u = _l2_normalize(z)
  # Written out rather than jnp.std, whose ddof handling adds a float64 NaN under x64.
  return jnp.sqrt(jnp.mean(jnp.square(u - jnp.mean(u, axis=0)), axis=0))


# ----------------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------------

_TWO_ROWS = {0: (2, "n >= 2 rows")}


def rankme(z, *, eps: float = 1e-7) -> jax.Array:
  r"""RankMe: the smooth effective rank of an embedding matrix.

  From Garrido, Balestriero, Najman and LeCun, "RankMe: Assessing the downstream performance
  of pretrained self-supervised representations by their rank", ICML 2023. With
  ``s_1 >= ... >= s_K`` the ``K = min(n, d)`` singular values of ``z`` (not centred, as in the
  paper)::

      p_k    = s_k / ||s||_1 + eps
      RankMe = exp(-sum_k p_k log p_k)

  It is ~``K`` when all singular values are equal, ~1 for a rank-1 matrix, and invariant to
  scaling ``z``, permuting its rows and rotating its columns.

  Args:
    z: ``[n, d]`` embeddings of ``n >= 2`` inputs.
    eps: ``eps`` above, >= 0 (the paper's 1e-7 by default).

  Returns:
    A float32 scalar in ``[~1, min(n, d)]``.

  Raises:
    ValueError: if ``z`` is not ``[n, d]`` with ``n >= 2`` and ``d >= 1``, is not real, or holds
      NaN/inf, or if ``eps`` is a negative number.
  """
  z = _as_float32(z, "z", "[n, d]", 2, {**_TWO_ROWS, 1: (1, "d >= 1 dimensions")})
  _check_number("eps", eps, minimum=0.0, inclusive=True)
  return _rankme(z, _f32(eps))


def lidar(z, *, delta: float = 1e-4, eps: float = 1e-8) -> jax.Array:
  r"""LiDAR: the effective rank of the LDA matrix of the instance-discrimination surrogate task.

  From Thilak et al., "LiDAR: Sensing Linear Probing Performance in Joint Embedding SSL
  Architectures", ICLR 2024 (arXiv:2312.04000), Sec. 3 (the sample estimates of Sigma_b and
  Sigma_w, the delta ridge and the eps-smoothed effective rank as defined there).
  Each of the ``n`` source samples is a class whose examples are its ``q`` augmented views
  ``z[i, j]``. With class means ``mu_i = 1/q sum_j z[i, j]`` and ``mu = 1/n sum_i mu_i``::

      Sigma_b     = 1/(n - 1)     sum_i       (mu_i - mu)(mu_i - mu)^T
      Sigma_w     = 1/(n (q - 1)) sum_i sum_j (z[i, j] - mu_i)(z[i, j] - mu_i)^T + delta I_d
      Sigma_lidar = Sigma_w^{-1/2} Sigma_b Sigma_w^{-1/2}
      p_k         = lambda_k / ||lambda||_1 + eps      (lambda: eigenvalues of Sigma_lidar)
      LiDAR       = exp(-sum_k p_k log p_k)

  ``Sigma_w^{-1/2}`` is the symmetric inverse square root (from an eigendecomposition).
  Eigenvalues that rounding makes slightly negative are set to 0. ``Sigma_b`` has rank at most
  ``min(n - 1, d)``, which bounds LiDAR. It is invariant to rotating the embedding space and to
  permuting samples or views; unlike RankMe it is not scale-invariant, because ``delta`` is
  absolute (as in the paper).

  Args:
    z: ``[n, q, d]``: ``q >= 2`` augmented views of each of ``n >= 2`` source samples.
    delta: ``delta`` above, > 0: ridge that keeps ``Sigma_w`` invertible (default 1e-4).
    eps: ``eps`` above, >= 0 (default 1e-8).

  Returns:
    A float32 scalar in ``[~1, d]``.

  Raises:
    ValueError: if ``z`` is not ``[n, q, d]`` with ``n >= 2``, ``q >= 2``, ``d >= 1``, is not
      real, or holds NaN/inf, or if ``delta <= 0`` or ``eps < 0``.
  """
  z = _as_float32(z, "z", "[n, q, d]", 3, {
      **_TWO_ROWS, 1: (2, "q >= 2 views per sample (the within-class covariance needs two)"),
      2: (1, "d >= 1 dimensions")})
  _check_number("delta", delta, minimum=0.0, inclusive=False)
  _check_number("eps", eps, minimum=0.0, inclusive=True)
  return _lidar(z, _f32(delta), _f32(eps))


def alpha_req(z, *, fit_range: tuple[int, int] = DEFAULT_ALPHA_FIT_RANGE) -> jax.Array:
  r"""alpha-ReQ: the power-law decay exponent of the embedding covariance eigenspectrum.

  From Agrawal, Mondal, Ghosh and Richards, "alpha-ReQ: Assessing Representation Quality in
  Self-Supervised Learning by measuring eigenspectrum decay", NeurIPS 2022. The eigenvalues
  ``lambda_1 >= lambda_2 >= ...`` of the sample covariance of ``z`` are modelled as
  ``lambda_k ~ c k^{-alpha}``, and ``alpha`` is minus the slope of an ordinary least-squares
  line through ``(log k, log lambda_k)`` for ``k`` in ``fit_range``.

  The default range is ranks 6 to 100 (1-based, inclusive), the default of the authors' reptrix
  library: the top five eigenvalues are skipped so that the fit describes the decay of the tail.
  ``last`` is clipped to ``min(n - 1, d)``, beyond which a centred ``[n, d]`` matrix has only
  zero eigenvalues. (reptrix weights each rank by ``1/k``, after Stringer et al. 2019; this is
  the unweighted fit.) Large alpha means a fast decay (few dimensions used, towards collapse),
  small alpha a flat, whitened spectrum; the paper finds the best linear-probe accuracy in an
  intermediate range around 1. alpha is invariant to scaling, rotation and row permutation.

  Args:
    z: ``[n, d]`` embeddings.
    fit_range: ``(first, last)`` ranks, ``1 <= first < last``; after clipping ``last`` to
      ``min(n - 1, d)`` at least 2 ranks must remain.

  Returns:
    A float32 scalar. An exactly collapsed direction in the range gives a very large value.

  Raises:
    ValueError: if ``z`` is not ``[n, d]`` with ``n >= 2``, is not real, or holds NaN/inf, or if
      ``fit_range`` is malformed or leaves fewer than 2 eigenvalues.
  """
  z = _as_float32(z, "z", "[n, d]", 2, {**_TWO_ROWS, 1: (1, "d >= 1 dimensions")})
  first, last = _check_fit_range(fit_range, *z.shape)
  return _alpha_req(z, first=first, last=last)


def alignment(z1, z2, *, alpha: float = 2) -> jax.Array:
  r"""Alignment loss of Wang & Isola, ICML 2020, on L2-normalised embeddings.

  ``mean_i || z1_i / ||z1_i|| - z2_i / ||z2_i|| ||_2^alpha`` over the positive pairs
  ``(z1_i, z2_i)``: 0 when the two views embed identically, 2^alpha when they are antipodal.
  An all-zero row normalises to zero.

  Args:
    z1: ``[n, d]`` embeddings of one view (``n >= 1``).
    z2: ``[n, d]`` embeddings of the other view; row ``i`` is the same input as ``z1[i]``.
    alpha: exponent, > 0 (the paper's default 2).

  Returns:
    A float32 scalar in ``[0, 2^alpha]``; lower is better aligned.

  Raises:
    ValueError: on a wrong rank, an empty or mismatched shape, non-real or non-finite values,
      or ``alpha <= 0``.
  """
  sizes = {0: (1, "n >= 1 rows"), 1: (1, "d >= 1 dimensions")}
  z1 = _as_float32(z1, "z1", "[n, d]", 2, sizes)
  z2 = _as_float32(z2, "z2", "[n, d]", 2, sizes)
  if z1.shape != z2.shape:
    raise ValueError(f"z2 must have the same shape as z1: expected {tuple(z1.shape)}, "
                     f"but got z2 with shape {tuple(z2.shape)}.")
  _check_number("alpha", alpha, minimum=0.0, inclusive=False)
  return _alignment(z1, z2, _f32(alpha))


def uniformity(z, *, t: float = 2) -> jax.Array:
  r"""Uniformity loss of Wang & Isola, ICML 2020, on L2-normalised embeddings.

  ``log( 2/(n(n-1)) sum_{i<j} exp(-t ||u_i - u_j||_2^2) )`` with ``u_i = z_i / ||z_i||``: the
  log of the mean Gaussian potential over all distinct pairs, computed with a logsumexp. It is
  ``-4t`` for two antipodal points, 0 when all embeddings coincide (full collapse), and lower
  (better) the more uniformly the embeddings cover the sphere. Builds the ``[n, n]`` distance
  matrix, so memory grows as ``n^2``.

  Args:
    z: ``[n, d]`` embeddings, ``n >= 2``.
    t: the potential's scale, > 0 (the paper's default 2).

  Returns:
    A float32 scalar in ``[-4t, 0]``.

  Raises:
    ValueError: on a wrong rank, ``n < 2``, ``d < 1``, non-real or non-finite values, or
      ``t <= 0``.
  """
  z = _as_float32(z, "z", "[n, d]", 2, {**_TWO_ROWS, 1: (1, "d >= 1 dimensions")})
  _check_number("t", t, minimum=0.0, inclusive=False)
  return _uniformity(z, _f32(t))


def embedding_std_per_dim(z) -> jax.Array:
  r"""Per-dimension standard deviation of the L2-normalised embeddings, ``[d]`` float32.

  The collapse monitor of Chen & He, "Exploring Simple Siamese Representation Learning",
  CVPR 2021 (Sec. 4.1): ``std_i(z_i / ||z_i||)`` per output channel, with the population
  (``ddof=0``) estimator. A complete collapse gives 0 in every dimension; isotropic Gaussian
  embeddings give about ``1/sqrt(d)``.

  Args:
    z: ``[n, d]`` embeddings, ``n >= 2``.

  Raises:
    ValueError: on a wrong rank, ``n < 2``, ``d < 1``, or non-real or non-finite values.
  """
  z = _as_float32(z, "z", "[n, d]", 2, {**_TWO_ROWS, 1: (1, "d >= 1 dimensions")})
  return _embedding_std_per_dim(z)


def embedding_std(z) -> jax.Array:
  r"""Mean over dimensions of :func:`embedding_std_per_dim`: a float32 scalar.

  ``~1/sqrt(d)`` for healthy, spread-out embeddings and 0 for collapsed ones (SimSiam's
  collapse detector; compare it with ``1 / sqrt(d)``).
  """
  return jnp.mean(embedding_std_per_dim(z))


def representation_metrics(
    z_views,
    *,
    rankme_eps: float = 1e-7,
    lidar_delta: float = 1e-4,
    lidar_eps: float = 1e-8,
    alpha_fit_range: tuple[int, int] = DEFAULT_ALPHA_FIT_RANGE,
    alignment_alpha: float = 2,
    uniformity_t: float = 2,
) -> dict[str, float]:
  """All metrics of this module from ``q >= 2`` views of ``n`` inputs.

  Single-view metrics (RankMe, alpha-ReQ, uniformity, embedding std) use view 0
  (``z_views[:, 0]``); alignment compares views 0 and 1; LiDAR uses all ``q`` views as the
  examples of each sample's class. The keyword arguments are passed to the metrics.

  Args:
    z_views: ``[n, q, d]`` embeddings with ``n >= 2`` and ``q >= 2``.

  Returns:
    ``{"rankme", "lidar", "alpha_req", "alignment", "uniformity", "embedding_std"}`` as Python
    floats (one device-to-host transfer).

  Raises:
    ValueError: as the metrics do, naming ``z_views``.
  """
  z = _as_float32(z_views, "z_views", "[n, q, d]", 3, {
      **_TWO_ROWS, 1: (2, "q >= 2 views per sample"), 2: (1, "d >= 1 dimensions")})
  for name, value, minimum, inclusive in (
      ("rankme_eps", rankme_eps, 0.0, True), ("lidar_delta", lidar_delta, 0.0, False),
      ("lidar_eps", lidar_eps, 0.0, True), ("alignment_alpha", alignment_alpha, 0.0, False),
      ("uniformity_t", uniformity_t, 0.0, False)):
    _check_number(name, value, minimum=minimum, inclusive=inclusive)
  first, last = _check_fit_range(alpha_fit_range, z.shape[0], z.shape[2],
                                 arg="alpha_fit_range", z_name="z_views[:, 0]")
  view0 = z[:, 0]
  values = {
      "rankme": _rankme(view0, _f32(rankme_eps)),
      "lidar": _lidar(z, _f32(lidar_delta), _f32(lidar_eps)),
      "alpha_req": _alpha_req(view0, first=first, last=last),
      "alignment": _alignment(view0, z[:, 1], _f32(alignment_alpha)),
      "uniformity": _uniformity(view0, _f32(uniformity_t)),
      "embedding_std": jnp.mean(_embedding_std_per_dim(view0)),
  }
  return {key: float(value) for key, value in jax.device_get(values).items()}
