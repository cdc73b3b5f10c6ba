"""Redundancy-reduction, covariance-based and distribution-matching losses: Barlow Twins, Mixed
Barlow Twins, VICReg, W-MSE, the Eckhart-Young CCA family (SSL-EY, PLS-EY), and LeJEPA's SIGReg.

All of them are functions of batch statistics (means, variances, cross-correlations,
covariances, empirical characteristic functions), so the statistics must be those of the
*global* batch. Every loss here reduces the per-device sums with ``psum`` inside
``jax.shard_map`` (never a per-device mean or variance), so one device, ``jax.jit`` over a mesh
and ``jax.shard_map`` with ``axis_name`` give the same value and gradient. The PyTorch reference
implementations get this wrong in places (per-device standardisation, a cross-correlation
divided by the local batch size); the docstrings say where this module deliberately differs.
"""

import numbers
from collections.abc import Hashable

import jax
import jax.numpy as jnp

from sslx.losses import _checks
from sslx.losses._common import as_float32, batch_mean, batch_offset, l2_normalize, replicate_rows

_HIGHEST = jax.lax.Precision.HIGHEST

# nn.BatchNorm1d's default eps, which the Barlow Twins code uses (affine=False) to standardise.
BATCH_NORM_EPS = 1e-5
# Added to the unbiased variance before the square root in Mixed Barlow Twins. The authors
# divide by the standard deviation directly (0/0 on a constant dimension); this keeps the loss
# finite there and is negligible for any dimension with variance >> 1e-5.
MIXED_STD_EPS = 1e-5
# VICReg's std hinge: sqrt(var + 1e-4), as in facebookresearch/vicreg.
VICREG_VAR_EPS = 1e-4


# --- Private helpers -----------------------------------------------------------------------------


def _batch_contract(a: jax.Array, b: jax.Array, axis_name: Hashable | None) -> jax.Array:
  """``sum_k a_k^T b_k`` over the global batch: ``[n, I]`` and ``[n, J]`` give ``[I, J]``.

  On an Explicit mesh a contraction over two batch-sharded operands is ambiguous (partial sums
  on every device) and raises ShardingTypeError unless the output sharding is given: asking for
  a replicated output makes XLA all-reduce the partial sums, which is what ``psum`` does
  inside ``shard_map``. Nothing is gathered.
  """
  out_sharding = None
  if axis_name is None:
    sharding = jax.typeof(a).sharding
    if tuple(sharding.spec) and sharding.spec[0] is not None:
      out_sharding = sharding.update(spec=jax.sharding.PartitionSpec())
  total = jnp.einsum("ki,kj->ij", a, b, precision=_HIGHEST, out_sharding=out_sharding)
  return total if axis_name is None else jax.lax.psum(total, axis_name)


def _centre(z: jax.Array, axis_name: Hashable | None) -> jax.Array:
  return z - batch_mean(z, axis_name)


def _standardize(z: jax.Array, axis_name: Hashable | None, *, ddof: int, eps: float,
                 global_batch: int) -> jax.Array:
  """``(z - mean) / sqrt(var + eps)`` per dimension, with global-batch mean and variance
  (``ddof=0``: biased, as BatchNorm normalises; ``ddof=1``: unbiased, as ``torch.std``)."""
  centred = _centre(z, axis_name)
  var = batch_mean(centred * centred, axis_name) * (global_batch / (global_batch - ddof))
  return centred * jax.lax.rsqrt(var + eps)


def _off_diagonal_sq_sum(m: jax.Array) -> jax.Array:
  """``sum_{i != j} m_ij^2``, without building the masked copy of ``m``."""
  return jnp.sum(m * m) - jnp.sum(jnp.diagonal(m) ** 2)


# --- Barlow Twins --------------------------------------------------------------------------------


def barlow_twins(
    z1: jax.Array,
    z2: jax.Array,
    *,
    lambd: float | jax.Array = 0.0051,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""The Barlow Twins redundancy-reduction loss.

  From Zbontar, Jing, Misra, LeCun and Deny, "Barlow Twins: Self-Supervised Learning via
  Redundancy Reduction", ICML 2021 (arXiv:2103.03230), eq. (1), as implemented in
  facebookresearch/barlowtwins (``main.py``).

  Each embedding dimension is standardised over the global batch of ``B`` examples, as the
  authors' ``BatchNorm1d(affine=False)`` does in training mode (converted to SyncBatchNorm, so
  with global statistics): biased variance and ``eps = 1e-5``::

      zn_k = (z_k - mean_k z_k) / sqrt(var_k z_k + 1e-5)         (per view, per dimension)
      c    = 1/B * sum_k zn1_k zn2_k^T                          (D x D cross-correlation)
      L    = sum_i (1 - c_ii)^2 + lambd * sum_{i != j} c_ij^2

  ``c`` is summed over the whole global batch and divided by the global ``B``, as the authors'
  ``c / batch_size`` followed by ``all_reduce(c)`` does.

  Difference from the authors' code in the gradient only: ``torch.distributed.all_reduce`` is
  not differentiable, so there each GPU back-propagates only its own share of ``c`` and DDP then
  averages, which gives ``1/n_gpus`` times the gradient of ``L``. Here the gradient is exactly
  ``dL/dz`` on any number of devices (LARS, which the authors use, is largely insensitive to
  that scale; plain SGD/Adam with a per-device recipe is not).

  Args:
    z1: ``[b, D]`` projections of the first view.
    z2: ``[b, D]`` projections of the second view; row ``k`` is the same example as row ``k``
      of ``z1``.
    lambd: the weight of the off-diagonal (redundancy) term, >= 0; the paper's 0.0051 by
      default. A Python number is checked, a (traced) array is used as is.
    axis_name: ``None`` when ``z1``/``z2`` are the whole global batch (one device, or
      ``jax.jit`` with inputs sharded along the batch over a mesh of Auto or Explicit axes:
      the ``D x D`` partial sums are all-reduced, nothing is gathered). Inside
      ``jax.shard_map``, the mapped axis: means, variances and ``c`` are ``psum``-ed over it,
      so the value equals the single-device one. All shards must have the same ``b``.

  Returns:
    A float32 scalar ``L``, the same on every device. Inputs of any float dtype are cast to
    float32 first. Under ``jax.shard_map`` (default ``check_vma=True``), ``jax.grad`` inside
    the body gives each device ``dL/d(local shard)`` (see ``nt_xent`` for the details of
    gradients across devices, which hold here too).

    A dimension that is constant over the batch (e.g. all-zero embeddings) standardises to 0
    (the ``eps`` keeps it finite), so its ``c_ii = 0``: all-zero inputs give ``L = D`` with a
    finite gradient.

  Raises:
    ValueError: if ``z1`` or ``z2`` is not rank 2, their shapes differ, the global batch is
      smaller than 2, or ``lambd`` is a number < 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import barlow_twins
    >>> z1 = jnp.array([[1.0, 1.0], [-1.0, -1.0]])  # both dimensions standardise to [1, -1]
    >>> z2 = jnp.array([[1.0, -1.0], [-1.0, 1.0]])  # dimension 2 anti-correlated with z1's
    >>> loss = barlow_twins(z1, z2, lambd=0.5)  # c = [[1, -1], [1, -1]] / (1 + 1e-5)
    >>> loss.dtype, round(float(loss), 4)
    (dtype('float32'), 4.9999)
  """
  _checks.check_pair("z1", z1, "z2", z2)
  _checks.check_non_negative("lambd", lambd)
  z1, z2 = as_float32(z1, z2)
  global_batch = _checks.check_global_batch_size(
      "z1", z1, axis_name, 2, "a per-dimension variance needs two examples")

  z1n = _standardize(z1, axis_name, ddof=0, eps=BATCH_NORM_EPS, global_batch=global_batch)
  z2n = _standardize(z2, axis_name, ddof=0, eps=BATCH_NORM_EPS, global_batch=global_batch)
  c = _batch_contract(z1n, z2n, axis_name) / global_batch
  on_diag = jnp.sum((1.0 - jnp.diagonal(c)) ** 2)
  return on_diag + lambd * _off_diagonal_sq_sum(c)


# --- Mixed Barlow Twins --------------------------------------------------------------------------


def mixed_barlow_twins_regularizer(
    z1: jax.Array,
    z2: jax.Array,
    z_mixed: jax.Array,
    mix_ratio: float | jax.Array,
    permutation: jax.Array,
    *,
    lambd: float | jax.Array = 0.0051,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""The mixed-sample regulariser of Mixed Barlow Twins.

  From Bandara, De Melo and Patel, "Guarding Barlow Twins Against Overfitting with Mixed
  Samples", arXiv:2312.02151 (2023), code github.com/wgcban/mix-bt. The caller mixes the input
  images as ``y_m = a * y1 + (1 - a) * y2[permutation]`` (MixUp, ``a ~ Beta(1, 1)`` in the
  paper), embeds them into ``z_mixed``, and adds this term, times a weight ``lambda_reg``, to
  the Barlow Twins loss. Assuming the embedding is linear in the input, the cross-correlations
  of the mixed embeddings with each view are predicted from those of the unmixed ones::

      zn = (z - mean z) / sqrt(var_unbiased z + 1e-5)   (per dimension, global batch; A, B, M
                                                         from z1, z2, z_mixed)
      S  = B[permutation]                               (row k: the example mixed into row k)
      C^MA = M^T A / B_size,   C^MA_gt = (a A^T A + (1 - a) S^T A) / B_size
      C^MB = M^T B / B_size,   C^MB_gt = (a A^T B + (1 - a) S^T B) / B_size
      R    = lambd / 2 * ( ||C^MA - C^MA_gt||_F^2 + ||C^MB - C^MB_gt||_F^2 )

  This follows the paper's equations (README of wgcban/mix-bt) and the authors' CIFAR/STL/
  TinyImageNet code (``main.py``): standardisation with the unbiased ``torch.std``, ``C``
  divided by the batch size. Deliberate differences:

  * The statistics are those of the global batch. The authors' ImageNet code
    (``main_imagenet.py``) standardises per GPU and only all-reduces the ``C`` matrices.
  * That ImageNet code uses ``a B^T B`` instead of ``a A^T B`` in ``C^MB_gt``; the paper's
    equation and the CIFAR code use ``A^T B``, the linear prediction of ``C^MB``.
  * ``1e-5`` is added to the variance: the authors divide by the standard deviation, which is
    0/0 on a constant dimension.
  * ``R`` includes ``lambd / 2`` as the ImageNet code does (its ``lambda_reg`` of 1.0 and 2.0
    are then the values to multiply ``R`` by). The CIFAR code has no ``1/2``: its
    ``mixup_loss_scale`` of 4.0 corresponds to multiplying ``R`` by 8.0.

  ``R`` itself contains no Barlow Twins term: add ``barlow_twins(z1, z2)`` (whose
  standardisation uses the biased variance of the original Barlow Twins code; the mix-bt code
  uses the unbiased one there too, a relative difference of ``1/B`` in ``c``).

  Permutation under sharding: ``permutation`` indexes the *global* batch, so it is correct on
  any number of devices. Under ``jax.jit`` (``axis_name=None``) the three embeddings are
  replicated (an all-gather) to apply it. Inside ``jax.shard_map``, pass the whole
  ``permutation`` to every device (``in_specs=P()``); ``z2``'s standardised rows are gathered
  from all devices and each device takes the rows its local examples were mixed with. The
  caller must have mixed the *inputs* with the same global permutation, which needs the images
  of other devices. The authors' ImageNet code draws ``torch.randperm`` of the local batch on
  each GPU instead; that is the global permutation ``r * b + local_perm_r`` on shard ``r``
  (build it with ``jax.lax.all_gather(offset + local_perm, axis_name, tiled=True)``), which
  mixes only within a device and needs no image exchange.

  Args:
    z1: ``[b, D]`` projections of the first view.
    z2: ``[b, D]`` projections of the second view (row ``k`` the same example as ``z1``'s).
    z_mixed: ``[b, D]`` projections of the mixed inputs; row ``k`` mixes example ``k`` of the
      first view with example ``permutation[k]`` of the second view.
    mix_ratio: ``a`` above, the weight of the first view in the mix, in [0, 1]. A Python
      number is checked, a (traced) array is used as is.
    permutation: ``[B]`` integer indices into the global batch (``B = b`` times the number of
      shards), the same on every device. Any index map is accepted (it need not be a
      bijection); out-of-range indices are clamped, as jax indexing does.
    lambd: the Barlow Twins off-diagonal weight that scales the term (>= 0; 0.0051 by
      default).
    axis_name: ``None`` for global arrays (one device, or ``jax.jit`` over a mesh), or the
      mapped axis inside ``jax.shard_map`` (see above). All shards must have the same ``b``.

  Returns:
    A float32 scalar ``R``, the same on every device. Gradients flow to ``z1``, ``z2`` (also
    through the permuted rows, back to the device that holds them) and ``z_mixed``, never to
    ``mix_ratio`` or ``permutation`` unless ``mix_ratio`` is a traced array.

    A constant (e.g. all-zero) dimension standardises to 0; all-zero inputs give ``R = 0``
    with a finite gradient.

  Raises:
    ValueError: if an embedding is not rank 2 or the shapes differ, ``permutation`` is not a
      rank-1 integer array of length ``B``, the global batch is smaller than 2, ``mix_ratio``
      is a number outside [0, 1], or ``lambd`` is a number < 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import mixed_barlow_twins_regularizer
    >>> z = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    >>> perm = jnp.array([2, 0, 1])
    >>> # Mixing a batch with itself, unshuffled, predicts the embeddings exactly.
    >>> float(mixed_barlow_twins_regularizer(z, z, z, 0.3, jnp.arange(3)))
    0.0
    >>> z2 = jnp.array([[0.5, 1.0], [1.0, -1.0], [-1.5, 0.0]])
    >>> z_mixed = 0.3 * z + 0.7 * z2[perm]  # mixed in embedding space
    >>> reg = mixed_barlow_twins_regularizer(z, z2, z_mixed, 0.3, perm, lambd=1.0)
    >>> reg.dtype, round(float(reg), 4)  # not 0: standardising z_mixed is not linear
    (dtype('float32'), 0.1228)
  """
  _checks.check_pair("z1", z1, "z2", z2)
  _checks.check_rank("z_mixed", z_mixed, 2, "[batch, dim]")
  _checks.check_same_shape("z1", z1, "z_mixed", z_mixed)
  _checks.check_non_negative("lambd", lambd)
  if isinstance(mix_ratio, numbers.Real) and not 0.0 <= mix_ratio <= 1.0:
    raise ValueError(f"mix_ratio must be in [0, 1], but got {mix_ratio!r}.")
  z1, z2, z_mixed = as_float32(z1, z2, z_mixed)
  global_batch = _checks.check_global_batch_size(
      "z1", z1, axis_name, 2, "a per-dimension variance needs two examples")
  permutation = jnp.asarray(permutation)
  _checks.check_rank("permutation", permutation, 1, f"[global_batch] = [{global_batch}]")
  if permutation.shape[0] != global_batch:
    raise ValueError(
        f"permutation must have shape [global_batch] = ({global_batch},) (indices into the "
        f"global batch), but got shape {tuple(permutation.shape)}.")
  if not jnp.issubdtype(permutation.dtype, jnp.integer):
    raise ValueError(f"permutation must be an integer array, but got dtype {permutation.dtype}.")

  if axis_name is None:
    # Indexing a batch-sharded array by a global permutation needs every row on every device.
    z1, z2, z_mixed = (replicate_rows(z) for z in (z1, z2, z_mixed))

  def standardize(z):
    return _standardize(z, axis_name, ddof=1, eps=MIXED_STD_EPS, global_batch=global_batch)

  a, b, m = standardize(z1), standardize(z2), standardize(z_mixed)
  if axis_name is None:
    shuffled = b[permutation]
  else:
    # Standardisation is per dimension, so permuting the standardised rows is the same as
    # standardising the permuted rows; gathering them routes the gradient back to their owner.
    local_batch = z1.shape[0]
    rows = jax.lax.dynamic_slice_in_dim(permutation, batch_offset(local_batch, axis_name),
                                        local_batch)
    shuffled = jax.lax.all_gather(b, axis_name, tiled=True)[rows]

  def cross(u, v):
    return _batch_contract(u, v, axis_name) / global_batch

  # One contraction per residual: M^T A - (a A^T A + (1 - a) S^T A) = (M - a A - (1 - a) S)^T A,
  # so the residual of the linear prediction is formed once per row.
  residual = m - mix_ratio * a - (1.0 - mix_ratio) * shuffled
  diff_a = cross(residual, a)
  diff_b = cross(residual, b)
  return lambd / 2.0 * (jnp.sum(diff_a * diff_a) + jnp.sum(diff_b * diff_b))


# --- VICReg --------------------------------------------------------------------------------------


def vicreg(
    z1: jax.Array,
    z2: jax.Array,
    *,
    sim_weight: float | jax.Array = 25.0,
    var_weight: float | jax.Array = 25.0,
    cov_weight: float | jax.Array = 1.0,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""The VICReg loss: variance-invariance-covariance regularisation.

  From Bardes, Ponce and LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
  Self-Supervised Learning", ICLR 2022 (arXiv:2105.04906), eqs. (1)-(6), exactly as in
  facebookresearch/vicreg (``main_vicreg.py``). For a global batch of ``B`` examples and ``D``
  dimensions, per view ``z`` with ``zc = z - mean_k z_k``::

      inv    = 1/(B D) * sum_k |z1_k - z2_k|^2                       (mean squared error)
      std_z  = sqrt(1/(B-1) * sum_k zc_k^2 + 1e-4)                    (per dimension)
      var    = 1/2 * 1/D * sum_j relu(1 - std_z1_j) + 1/2 * 1/D * sum_j relu(1 - std_z2_j)
      cov_z  = 1/(B-1) * sum_k zc_k zc_k^T                            (D x D)
      cov    = 1/D * sum_{i != j} cov_z1_ij^2 + 1/D * sum_{i != j} cov_z2_ij^2
      L      = sim_weight * inv + var_weight * var + cov_weight * cov

  As in the authors' code the two variance terms are averaged and the two covariance terms
  summed. The authors gather the full batch (``FullGatherLayer``) for the variance and
  covariance; here the per-device sums are ``psum``-ed instead, which gives the same statistics
  without gathering the embeddings, so the value is the single-device one on any mesh.

  Returns a scalar, as the authors' loss does; the three unweighted terms are the loss with one
  weight set to 1 and the others to 0.

  Args:
    z1: ``[b, D]`` projections (expander outputs) of the first view.
    z2: ``[b, D]`` of the second view; row ``k`` is the same example as row ``k`` of ``z1``.
    sim_weight: weight of the invariance term, >= 0 (the paper's lambda = 25).
    var_weight: weight of the variance term, >= 0 (mu = 25).
    cov_weight: weight of the covariance term, >= 0 (nu = 1). Python numbers are checked,
      (traced) arrays used as is.
    axis_name: ``None`` for global arrays (one device, or ``jax.jit`` over a mesh, where the
      ``D x D`` partial sums are all-reduced), or the mapped axis inside ``jax.shard_map``. All
      shards must have the same ``b``.

  Returns:
    A float32 scalar ``L``, the same on every device; ``jax.grad`` inside a ``shard_map`` body
    gives ``dL/d(local shard)`` (see ``nt_xent``).

    All-zero inputs are finite: ``std = sqrt(1e-4) = 0.01``, so ``L = 0.99 * var_weight`` with
    a finite gradient.

  Raises:
    ValueError: if ``z1`` or ``z2`` is not rank 2, their shapes differ, the global batch is
      smaller than 2 (the unbiased variance needs two examples), or a weight is a number < 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import vicreg
    >>> z1 = jnp.array([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [0.0, -2.0]])  # std 1.63 per dim
    >>> z2 = z1 + 0.5  # a shifted copy: same variance and covariance, MSE 0.25
    >>> loss = vicreg(z1, z2)  # = 25 * 0.25, no hinge or covariance penalty
    >>> loss.dtype, round(float(loss), 4)
    (dtype('float32'), 6.25)
  """
  _checks.check_pair("z1", z1, "z2", z2)
  for name, weight in (("sim_weight", sim_weight), ("var_weight", var_weight),
                       ("cov_weight", cov_weight)):
    _checks.check_non_negative(name, weight)
  z1, z2 = as_float32(z1, z2)
  global_batch = _checks.check_global_batch_size(
      "z1", z1, axis_name, 2, "the unbiased variance needs two examples")
  dim = z1.shape[1]

  diff = z1 - z2
  invariance = batch_mean(jnp.mean(diff * diff, axis=1), axis_name)

  def variance_and_covariance(z):
    zc = _centre(z, axis_name)
    cov = _batch_contract(zc, zc, axis_name) / (global_batch - 1)
    # The diagonal of the covariance is the unbiased variance the authors take with z.var().
    std = jnp.sqrt(jnp.diagonal(cov) + VICREG_VAR_EPS)
    return jnp.mean(jax.nn.relu(1.0 - std)), _off_diagonal_sq_sum(cov) / dim

  var1, cov1 = variance_and_covariance(z1)
  var2, cov2 = variance_and_covariance(z2)
  variance = (var1 + var2) / 2.0
  covariance = cov1 + cov2
  return sim_weight * invariance + var_weight * variance + cov_weight * covariance


# --- W-MSE ---------------------------------------------------------------------------------------


def w_mse(
    z1: jax.Array,
    z2: jax.Array,
    *,
    whitening_size: int | None = None,
    eps: float = 0.0,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""W-MSE: the normalised MSE between whitened embeddings of two views.

  From Ermolov, Siarohin, Sangineto and Sebe, "Whitening for Self-Supervised Representation
  Learning", ICML 2021 (arXiv:2007.06346), as implemented in htdt/self-supervised
  (``methods/w_mse.py``, ``methods/whitening.py``, ``methods/norm_mse.py``).

  The global batch of ``B`` examples is split into ``B / w`` sub-batches of ``w =
  whitening_size`` consecutive examples, and *each view* of each sub-batch is whitened on its
  own (the authors' code whitens ``h[idx + i * bs]``, view ``i`` of sub-batch ``idx``). For a
  sub-batch ``s`` and a view with rows ``x_k``::

      m_s   = 1/w * sum_{k in s} x_k
      S_s   = 1/(w-1) * sum_{k in s} (x_k - m_s)(x_k - m_s)^T
      L_s   = cholesky((1 - eps) S_s + eps I)                 (lower triangular)
      xw_k  = L_s^{-1} (x_k - m_s)                            (whitened: covariance I)

  then, with ``u = xw / max(|xw|, 1e-6)``::

      L = 1/B * sum_k (2 - 2 u1_k . u2_k)

  ``2 - 2 cos`` is the authors' ``norm_mse_loss`` (the MSE of unit vectors).

  The authors draw a random partition of the batch into sub-batches (``torch.randperm``) and
  average ``w_iter`` such draws; this function uses consecutive sub-batches, so shuffle
  ``z1`` and ``z2`` jointly along the batch beforehand to get a random partition, and average
  calls over several shuffles for ``w_iter > 1``. With ``whitening_size = B`` (the default)
  the loss does not depend on the batch order. For more than two views, average this loss over
  all pairs of views, as the authors do (each view is whitened separately anyway).

  Under sharding the whitening statistics are those of the global sub-batch, whichever devices
  its rows are on: per-sub-batch sums are ``psum``-ed (inside ``jax.shard_map``), so a
  sub-batch may span devices or a device may hold several sub-batches. Under ``jax.jit`` with
  ``axis_name=None`` the embeddings are replicated (an all-gather) before whitening.

  Args:
    z1: ``[b, D]`` projections of the first view.
    z2: ``[b, D]`` projections of the second view (row ``k`` the same example as ``z1``'s).
    whitening_size: ``w``, the sub-batch size; ``None`` whitens the whole global batch at
      once. It must divide the global batch and exceed ``D`` (a covariance estimated from
      ``w <= D`` centred rows is singular). The authors use 128 for ``D = 64`` and 256 for
      ``D = 128``.
    eps: shrinkage towards the identity, in [0, 1): ``(1 - eps) S + eps I``. The authors'
      default is 0.
    axis_name: ``None`` for global arrays, or the mapped axis inside ``jax.shard_map``. All
      shards must have the same ``b``.

  Returns:
    A float32 scalar ``L`` in [0, 4], the same on every device; ``jax.grad`` inside a
    ``shard_map`` body gives ``dL/d(local shard)`` (see ``nt_xent``).

    Degenerate input: with ``eps = 0`` a rank-deficient sub-batch (e.g. all-zero embeddings,
    or a dimension constant over the sub-batch) has no Cholesky factor and the loss is NaN, as
    in the authors' code. With ``eps > 0`` it is finite: an all-zero sub-batch whitens to zero
    vectors, whose cosine is 0, so all-zero inputs give ``L = 2`` with a finite gradient.
    Individual zero rows in an otherwise full-rank sub-batch are fine with any ``eps``.

  Raises:
    ValueError: if ``z1`` or ``z2`` is not rank 2, their shapes differ, ``whitening_size``
      does not divide the global batch or is not larger than ``D``, or ``eps`` is not a
      number in [0, 1).

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import w_mse
    >>> z1 = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    >>> loss = w_mse(z1, 3.0 * z1 + 1.0)  # the same after centring and whitening
    >>> loss.dtype, round(float(loss), 5)
    (dtype('float32'), 0.0)
    >>> round(float(w_mse(z1, -z1)), 5)  # opposite directions: 2 - 2 * (-1)
    4.0
  """
  _checks.check_pair("z1", z1, "z2", z2)
  if not isinstance(eps, numbers.Real) or not 0.0 <= eps < 1.0:
    raise ValueError(f"eps must be a number in [0, 1), but got {eps!r}.")
  z1, z2 = as_float32(z1, z2)
  local_batch, dim = z1.shape
  global_batch = _checks.check_global_batch_size(
      "z1", z1, axis_name, 2, "whitening needs a covariance")
  size = global_batch if whitening_size is None else whitening_size
  if not isinstance(size, numbers.Integral) or size <= dim or global_batch % size:
    raise ValueError(
        f"whitening_size must be an integer that divides the global batch size {global_batch} "
        f"and is larger than the embedding dimension {dim} (z1 of shape {tuple(z1.shape)}), "
        f"but got {whitening_size!r}.")
  num_groups = global_batch // size

  if axis_name is None:
    z1, z2 = replicate_rows(z1), replicate_rows(z2)
  # Sub-batch of each local row, and a [b, groups] one-hot to sum rows per sub-batch; rows of
  # one sub-batch may sit on several devices, so the sums are psum-ed below.
  group = (jnp.arange(local_batch) + batch_offset(local_batch, axis_name)) // size
  one_hot = (group[:, None] == jnp.arange(num_groups)[None, :]).astype(jnp.float32)

  def group_sum(x):  # [b, ...] -> [groups, ...], summed over the global batch
    total = jnp.einsum("kg,k...->g...", one_hot, x, precision=_HIGHEST)
    return total if axis_name is None else jax.lax.psum(total, axis_name)

  eye = jnp.eye(dim, dtype=jnp.float32)

  def whiten(x):
    # Two passes (mean, then centred second moments) rather than E[xx^T] - mm^T, which loses
    # precision in float32 when the mean is large compared with the spread.
    mean = group_sum(x) / size  # [groups, D]
    centred = x - mean[group]
    cov = group_sum(centred[:, :, None] * centred[:, None, :]) / (size - 1)  # [groups, D, D]
    inv_chol = jax.lax.map(_inverse_cholesky_factor, (1.0 - eps) * cov + eps * eye)
    return jnp.einsum("kij,kj->ki", inv_chol[group], centred, precision=_HIGHEST)

  u1 = l2_normalize(whiten(z1))
  u2 = l2_normalize(whiten(z2))
  return batch_mean(2.0 - 2.0 * jnp.sum(u1 * u2, axis=1), axis_name)


def _inverse_cholesky_factor(cov: jax.Array) -> jax.Array:
  """``L^-1`` for ``cov = L L^T``, one ``[D, D]`` matrix at a time.

  Called through ``lax.map`` rather than on the whole ``[groups, D, D]`` batch: jaxlib's CPU
  LAPACK kernels split a batch over XLA's intra-op thread pool and block on it, and two such
  batched triangular solves running at once (forward and backward pass) can deadlock a small
  pool (seen with 2 cores, jax 0.10). Unbatched calls never wait on the pool.
  """
  chol = jnp.linalg.cholesky(cov)
  return jax.scipy.linalg.solve_triangular(chol, jnp.eye(cov.shape[-1]), lower=True)


# --- The Eckhart-Young CCA family ----------------------------------------------------------------


def _cross_covariances(z1, z2, axis_name, global_batch):
  """Unbiased global-batch ``Cov(z1, z2)``, ``Var(z1)``, ``Var(z2)``."""
  z1c, z2c = _centre(z1, axis_name), _centre(z2, axis_name)
  scale = 1.0 / (global_batch - 1)
  return (_batch_contract(z1c, z2c, axis_name) * scale,
          _batch_contract(z1c, z1c, axis_name) * scale,
          _batch_contract(z2c, z2c, axis_name) * scale)


def cca_ey(
    z1: jax.Array,
    z2: jax.Array,
    *,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""SSL-EY: the Eckhart-Young CCA objective as a self-supervised loss.

  From Chapman, Wells and Lawry Aguila, "Unconstrained Stochastic CCA: Unifying Multiview and
  Self-Supervised Learning", ICLR 2024 (arXiv:2310.01012), as implemented in
  jameschapman19/SSL-EY (``ssley.py``) and the authors' solo-learn fork. With the unbiased
  global-batch covariances ``S_12 = Cov(z1, z2)``, ``S_11 = Var(z1)``, ``S_22 = Var(z2)``
  (``D x D``, ``1/(B-1)`` normalisation)::

      A = S_12 + S_21                 (the between-view term, C(theta) in the paper)
      V = S_11 + S_22                 (the within-view term, V(theta) in the paper)
      L = -2 tr(A) + tr(V V)  =  -4 tr(S_12) + ||V||_F^2

  ``L`` is minimised when the embeddings span the top canonical subspace with ``V`` equal to
  the diagonal of the top eigenvalues of the CCA generalised eigenproblem (no whitening or
  normalisation constraint is needed). Like the authors' SSL code, ``tr(V V)`` uses the same
  batch twice; the paper's unbiased alternative ``tr(V_1 V_2)`` from two independent batches is
  not used there and not implemented here.

  The authors' solo-learn ``ssley_loss_func`` divides the gathered covariance by the *local*
  batch size minus one; here, as in their SSL-EY repository, it is the global ``B - 1``.

  Args:
    z1: ``[b, D]`` projections of the first view.
    z2: ``[b, D]`` of the second view (row ``k`` the same example as ``z1``'s).
    axis_name: ``None`` for global arrays (one device, or ``jax.jit`` over a mesh: the ``D x D``
      partial sums are all-reduced), or the mapped axis inside ``jax.shard_map`` (means and
      covariances ``psum``-ed). All shards must have the same ``b``.

  Returns:
    A float32 scalar ``L`` (unbounded below only if the covariances blow up, which the
    ``tr(V V)`` term prevents), the same on every device; ``jax.grad`` inside a ``shard_map``
    body gives ``dL/d(local shard)`` (see ``nt_xent``). All-zero inputs give 0 with a finite
    gradient.

  Raises:
    ValueError: if ``z1`` or ``z2`` is not rank 2, their shapes differ, or the global batch is
      smaller than 2.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import cca_ey
    >>> z = jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # covariance I * 2/3
    >>> loss = cca_ey(z, z)  # -4 * 4/3 + ||I * 4/3||_F^2 = -16/3 + 32/9
    >>> loss.dtype, round(float(loss), 4)
    (dtype('float32'), -1.7778)
  """
  _checks.check_pair("z1", z1, "z2", z2)
  z1, z2 = as_float32(z1, z2)
  global_batch = _checks.check_global_batch_size(
      "z1", z1, axis_name, 2, "the unbiased covariance needs two examples")
  s12, s11, s22 = _cross_covariances(z1, z2, axis_name, global_batch)
  between = s12 + s12.T
  within = s11 + s22
  return -2.0 * jnp.trace(between) + jnp.sum(within * within)  # within is symmetric


def pls_ey(
    z1: jax.Array,
    z2: jax.Array,
    w1: jax.Array,
    w2: jax.Array,
    *,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""PLS-EY: the Eckhart-Young objective for partial least squares.

  From Chapman, Wells and Lawry Aguila, "Unconstrained Stochastic CCA: Unifying Multiview and
  Self-Supervised Learning", ICLR 2024 (arXiv:2310.01012), the PLS member of the family (the
  ``alpha = 0`` end of their ridge-regularised ``V_alpha``), as in jameschapman19/cca_zoo
  (``PLS_EY``, ``PLS_AB``). PLS maximises the covariance of the projections under orthonormal
  *weights*, so the within-view term is the weights' Gram matrix instead of the embeddings'
  covariance. For embeddings ``z_i = h_i @ w_i (+ bias)`` produced by a final linear layer with
  weights ``w_i`` (``[F_i, D]``), and ``S_12 = Cov(z1, z2)`` unbiased over the global batch::

      A = S_12 + S_21
      V = w1^T w1 + w2^T w2            (D x D)
      L = -2 tr(A) + tr(V V)

  The sums over the two views (not averages) match ``cca_ey`` and the paper's definitions;
  cca_zoo's ``PLS_AB`` divides both ``A`` and ``V`` by the number of views, which moves the
  minimiser's scale but not its subspace. With a shared projector pass the same matrix as
  ``w1`` and ``w2``.

  Args:
    z1: ``[b, D]`` projections of the first view.
    z2: ``[b, D]`` of the second view (row ``k`` the same example as ``z1``'s).
    w1: ``[F1, D]`` weights of the linear map that produced ``z1``, replicated on every device
      (``in_specs=P()`` inside ``jax.shard_map``).
    w2: ``[F2, D]`` weights of the map that produced ``z2``.
    axis_name: ``None`` for global arrays, or the mapped axis inside ``jax.shard_map``.

  Returns:
    A float32 scalar ``L``, the same on every device. Inside a ``shard_map`` body, ``jax.grad``
    gives ``dL/d(local shard)`` for ``z1``/``z2`` and the whole ``dL/dw`` for the replicated
    weights (not to be ``psum``-ed again). All-zero inputs and weights give 0 with a finite
    gradient.

  Raises:
    ValueError: if ``z1``/``z2`` is not rank 2 or their shapes differ, ``w1``/``w2`` is not
      rank 2 or its second dimension is not ``D``, or the global batch is smaller than 2.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import pls_ey
    >>> z = jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # covariance I * 2/3
    >>> w = jnp.eye(2) / jnp.sqrt(2.0)  # V = I
    >>> loss = pls_ey(z, z, w, w)  # -4 * 4/3 + 2
    >>> loss.dtype, round(float(loss), 4)
    (dtype('float32'), -3.3333)
  """
  _checks.check_pair("z1", z1, "z2", z2)
  dim = z1.shape[1]
  for name, w in (("w1", w1), ("w2", w2)):
    _checks.check_rank(name, w, 2, f"[in_features, dim] = [in_features, {dim}]")
    if w.shape[1] != dim:
      raise ValueError(
          f"{name} must have shape [in_features, dim] = [in_features, {dim}] (dim of z1 of "
          f"shape {tuple(z1.shape)}), but got shape {tuple(w.shape)}.")
  z1, z2, w1, w2 = as_float32(z1, z2, w1, w2)
  global_batch = _checks.check_global_batch_size(
      "z1", z1, axis_name, 2, "the unbiased covariance needs two examples")
  z1c, z2c = _centre(z1, axis_name), _centre(z2, axis_name)
  s12 = _batch_contract(z1c, z2c, axis_name) / (global_batch - 1)
  between = s12 + s12.T
  gram = (jnp.matmul(w1.T, w1, precision=_HIGHEST) + jnp.matmul(w2.T, w2, precision=_HIGHEST))
  return -2.0 * jnp.trace(between) + jnp.sum(gram * gram)


# --- SIGReg and LeJEPA ---------------------------------------------------------------------------


def _epps_pulley_knots(t_max: float, num_knots: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Knots ``t`` of [0, t_max], the standard normal's characteristic function ``phi(t)`` there,
  and trapezoid weights for the integral over [-t_max, t_max] of an even function times
  ``phi``: the error is even in t, so the negative half is the positive one counted twice (the
  end knot t = 0 once)."""
  t = jnp.linspace(0.0, t_max, num_knots, dtype=jnp.float32)
  phi = jnp.exp(-0.5 * t * t)
  step = t_max / (num_knots - 1)
  weights = jnp.full((num_knots,), 2.0 * step).at[0].set(step).at[-1].set(step)
  return t, phi, weights * phi


def sigreg(
    z: jax.Array,
    directions: jax.Array,
    *,
    t_max: float = 3.0,
    num_knots: int = 17,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""SIGReg: how far the embeddings ``z`` are from an isotropic standard Gaussian, tested along
  random 1-D projections with the Epps-Pulley statistic.

  From Balestriero and LeCun, "LeJEPA: Provable and Scalable Self-Supervised Learning Without
  the Heuristics", 2025 (arXiv:2511.08544), Sec. 4 and Algorithm 1 (sketched isotropic Gaussian
  regularisation). By Cramer-Wold, ``z ~ N(0, I)`` iff every 1-D projection is ``N(0, 1)``;
  SIGReg tests ``M`` of them. For a global batch of ``N`` rows and each unit direction
  ``a_m = directions[:, m] / |directions[:, m]|``, with ``x_k = z_k . a_m``::

      ecf_m(t)  = 1/N * sum_k exp(i t x_k)                   (empirical characteristic function)
      phi(t)    = exp(-t^2 / 2)                              (that of N(0, 1))
      EP_m      = N * integral_{-t_max}^{t_max} |ecf_m(t) - phi(t)|^2 phi(t) dt
      L         = 1/M * sum_m EP_m

  The integral is the trapezoid rule on ``num_knots`` knots of [0, t_max], counted twice (the
  integrand is even in t), as in the authors' ``lejepa.univariate.EppsPulley`` (t_max 3, 17
  knots); ``|ecf - phi|^2 = (mean cos(t x) - phi)^2 + (mean sin(t x))^2``. The means over the
  batch are global (``pmean`` of per-device means inside ``jax.shard_map``), so the value and
  gradient are the single-device ones on any mesh; the authors all-reduce them the same way.

  The directions are an argument, not drawn here, so the loss is a pure function: draw them
  afresh each step with a key that is the same on every device (the authors seed with the global
  step), e.g. ``jax.random.normal(jax.random.fold_in(key, step), (D, M))``. Their norms do not
  matter (each column is normalised).

  Args:
    z: ``[b, D]`` embeddings (LeJEPA: one view's projections).
    directions: ``[D, M]`` projection directions, replicated on every device (``in_specs=P()``
      inside ``jax.shard_map``); columns must be non-zero. No gradient is meant to flow into
      them.
    t_max: the integration range [-t_max, t_max], > 0.
    num_knots: knots on [0, t_max], an integer >= 2.
    axis_name: ``None`` for global arrays, or the mapped axis inside ``jax.shard_map`` (all shards
      must have the same ``b``).

  Returns:
    A float32 scalar, the same on every device. For ``N(0, I)`` samples its expectation is
    ``integral (1 - phi^2) phi dt = 1.05`` whatever ``N`` (``E|ecf - phi|^2 = (1 - phi^2) / N``);
    for any other distribution it grows like ``N``.
    ``jax.grad`` inside a ``shard_map`` body gives ``dL/d(local shard)``.

  Raises:
    ValueError: if ``z`` or ``directions`` is not rank 2, their ``D`` differ, ``t_max`` is a
      number <= 0, or ``num_knots`` is not an integer >= 2.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sslx.losses import sigreg
    >>> directions = jax.random.normal(jax.random.PRNGKey(0), (8, 64))
    >>> gaussian = jax.random.normal(jax.random.PRNGKey(1), (1024, 8))
    >>> collapsed = jnp.zeros((1024, 8))  # every projection is 0: ecf = 1 for every t
    >>> float(sigreg(gaussian, directions)) < 2.0, float(sigreg(collapsed, directions)) > 100.0
    (True, True)
  """
  _checks.check_rank("z", z, 2, "[batch, dim]")
  _checks.check_rank("directions", directions, 2, f"[dim, num_slices] = [{z.shape[1]}, M]")
  if directions.shape[0] != z.shape[1]:
    raise ValueError(f"directions must have shape [dim, num_slices] with dim = {z.shape[1]} "
                     f"(that of z of shape {tuple(z.shape)}), but got shape "
                     f"{tuple(directions.shape)}.")
  _checks.check_positive("t_max", t_max)
  if isinstance(num_knots, bool) or not isinstance(num_knots, numbers.Integral) or num_knots < 2:
    raise ValueError(f"num_knots must be an integer >= 2, but got {num_knots!r}.")
  z, directions = as_float32(z, directions)
  global_batch = _checks.check_global_batch_size("z", z, axis_name, 1, "the statistic needs rows")
  unit = directions / jnp.linalg.norm(directions, axis=0, keepdims=True)
  projected = jnp.matmul(z, unit, precision=_HIGHEST)  # [b, M]
  t, phi, weights = _epps_pulley_knots(float(t_max), int(num_knots))
  angles = projected[:, :, None] * t  # [b, M, T]
  real = batch_mean(jnp.cos(angles), axis_name)  # [M, T]
  imaginary = batch_mean(jnp.sin(angles), axis_name)
  squared_error = (real - phi) ** 2 + imaginary**2
  return jnp.mean(global_batch * jnp.matmul(squared_error, weights, precision=_HIGHEST))


def lejepa(
    global_z: jax.Array,
    local_z: jax.Array | None,
    directions: jax.Array,
    *,
    lambd: float | jax.Array = 0.05,
    t_max: float = 3.0,
    num_knots: int = 17,
    axis_name: Hashable | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  r"""The LeJEPA loss: every view's projection predicts the mean of the global views' ones, and
  SIGReg keeps each view's projections an isotropic Gaussian.

  From Balestriero and LeCun, "LeJEPA: Provable and Scalable Self-Supervised Learning Without
  the Heuristics", 2025 (arXiv:2511.08544), Algorithm 1 and the authors' ``MINIMAL.md``. With
  ``V_g`` global and ``V_l`` local views (``V = V_g + V_l``), a global batch of ``N`` and ``K``
  dimensions::

      c_k        = 1/V_g * sum_{g global} z_{g,k}                  (no stop-gradient)
      prediction = 1/(V N K) * sum_{v all} sum_k |c_k - z_{v,k}|^2
      L          = (1 - lambd) * prediction + lambd * 1/V * sum_{v all} sigreg(z_v, directions)

  with the same ``directions`` for every view (the authors draw one matrix per step).

  Args:
    global_z: ``[V_g, b, K]`` projections of the global views (``V_g >= 1``).
    local_z: ``[V_l, b, K]`` projections of the local views, or ``None`` (a two-view run).
    directions: ``[K, M]`` SIGReg directions, replicated (see `sigreg`).
    lambd: the trade-off in [0, 1], LeJEPA's one hyperparameter (0.05 in the paper's ImageNet
      runs, 0.02 in ``MINIMAL.md``). Python numbers are checked, arrays used as is.
    t_max, num_knots: SIGReg's integration range and knots (see `sigreg`).
    axis_name: ``None`` for global arrays, or the mapped axis inside ``jax.shard_map``.

  Returns:
    ``(L, {"prediction": ..., "sigreg": ...})``: float32 scalars, the same on every device; the
    two unweighted terms are for logging.

  Raises:
    ValueError: if the views are not rank 3, ``local_z`` differs from ``global_z`` in ``b`` or
      ``K``, ``lambd`` is a number outside [0, 1], or `sigreg` refuses its arguments.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sslx.losses import lejepa
    >>> z = jax.random.normal(jax.random.PRNGKey(0), (512, 4))
    >>> directions = jax.random.normal(jax.random.PRNGKey(1), (4, 16))
    >>> loss, terms = lejepa(jnp.stack([z, z]), None, directions)  # two identical views
    >>> float(terms["prediction"]), bool(terms["sigreg"] < 2.0)
    (0.0, True)
  """
  _checks.check_rank("global_z", global_z, 3, "[views, batch, dim]")
  views = global_z
  if local_z is not None:
    _checks.check_rank("local_z", local_z, 3, "[views, batch, dim]")
    if local_z.shape[1:] != global_z.shape[1:]:
      raise ValueError(f"local_z must have shape [V_l, {global_z.shape[1]}, {global_z.shape[2]}] "
                       f"(batch and dim of global_z of shape {tuple(global_z.shape)}), but got "
                       f"shape {tuple(local_z.shape)}.")
    views = jnp.concatenate([jnp.asarray(global_z), jnp.asarray(local_z)])
  _checks.check_unit_interval("lambd", lambd)
  (views,) = as_float32(views)
  centres = jnp.mean(views[:global_z.shape[0]], axis=0)
  prediction = batch_mean(jnp.mean((views - centres) ** 2, axis=(0, 2)), axis_name)
  regulariser = jnp.mean(jnp.stack([
      sigreg(view, directions, t_max=t_max, num_knots=num_knots, axis_name=axis_name)
      for view in views]))
  loss = (1.0 - lambd) * prediction + lambd * regulariser
  return loss, {"prediction": prediction, "sigreg": regulariser}
