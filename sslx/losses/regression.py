"""Regression (non-contrastive, predictor-based) losses: BYOL / SimSiam, VI-SimSiam and MYOW.

All of them regress a prediction onto a stop-gradient target on the unit sphere, so none needs
negatives; the batch only enters through the mean (and, for MYOW, the pool mined for views).
"""

import math
from collections.abc import Hashable
from typing import Literal

import jax
import jax.numpy as jnp

from sslx.losses import _checks
from sslx.losses._common import (
    as_float32, batch_mean, batch_offset, gather_batch, l2_normalize, num_shards, replicate_rows,
    take_rows)


def _cosine(p: jax.Array, z: jax.Array) -> jax.Array:
  """Row-wise cosine similarity with the clamped normalisation of ``_common.l2_normalize``."""
  return jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1)


def negative_cosine(
    p: jax.Array,
    z: jax.Array,
    *,
    form: Literal["simsiam", "byol"] = "simsiam",
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""Negative cosine regression of a prediction onto a stop-gradient target (SimSiam / BYOL).

  From Chen and He, "Exploring Simple Siamese Representation Learning", CVPR 2021
  (arXiv:2011.10566), eq. (1), and Grill et al., "Bootstrap Your Own Latent: A New Approach to
  Self-Supervised Learning", NeurIPS 2020 (arXiv:2006.07733), eq. (2).

  With ``c_i = p_i . sg(z_i) / (max(|p_i|, eps) max(|z_i|, eps))`` over a global batch of ``B``
  examples (``sg`` is stop-gradient)::

      form="simsiam":  L = -1/B * sum_i c_i               (SimSiam's D(p, z), in [-1, 1])
      form="byol":     L =  1/B * sum_i (2 - 2 c_i)       (BYOL's |p/|p| - z/|z||^2, in [0, 4])

  The two forms differ by an affine map (``byol = 2 + 2 * simsiam``), so their gradients differ
  by a factor of 2 only. The stop-gradient on ``z`` is applied here, as both papers do (SimSiam's
  Algorithm 1 ``z.detach()``; BYOL's target network receives no gradient): passing the target
  branch's output directly is safe and gives the gradient of the papers.

  This is one direction. The papers symmetrise over the two views: SimSiam averages,
  ``L = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2``; BYOL sums,
  ``L = negative_cosine(p1, z2, form="byol") + negative_cosine(p2, z1, form="byol")``, where for
  BYOL ``z`` is the output of the momentum (target) network's projector.

  Args:
    p: ``[b, D]`` predictor outputs of one view (online branch).
    z: ``[b, D]`` projections of the other view (target branch); row ``j`` is the same example as
      row ``j`` of ``p``. No gradient flows into ``z``.
    form: ``"simsiam"`` (negative cosine) or ``"byol"`` (``2 - 2 cos``).
    axis_name: ``None`` for global arrays (one device, or ``jax.jit`` over a sharded mesh), or
      the mapped axis inside ``jax.shard_map``, where ``p``/``z`` are the local shards; the mean
      of local means is then ``pmean``-ed over the axis (shards must have equal ``b``).

  Returns:
    A float32 scalar: ``L`` over the global batch (inputs of any float dtype are cast to
    float32). Norms are clamped at ``eps = 1e-6`` (``_common.NORM_EPS``) instead of SimSiam's
    ``F.cosine_similarity`` eps of 1e-8: an all-zero ``p`` or ``z`` has cosine 0 with
    everything, so the loss and its gradient stay finite. Gradients inside ``jax.shard_map``
    behave as for ``nt_xent`` (see its docstring): with the default ``check_vma=True`` the
    in-body gradient is ``dL/d(local shard)``.

  Raises:
    ValueError: if ``p`` or ``z`` is not rank 2, their shapes differ, or ``form`` is unknown.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import negative_cosine
    >>> p = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    >>> z = jnp.array([[3.0, 0.0], [1.0, 0.0]])  # cosines 1 and 0
    >>> round(float(negative_cosine(p, z)), 4), round(float(negative_cosine(p, z, form="byol")), 4)
    (-0.5, 1.0)
  """
  _checks.check_pair("p", p, "z", z)
  if form not in ("simsiam", "byol"):
    raise ValueError(f"form must be 'simsiam' or 'byol', but got {form!r}.")
  p, z = as_float32(p, z)
  cosine = _cosine(p, jax.lax.stop_gradient(z))
  per_example = -cosine if form == "simsiam" else 2.0 - 2.0 * cosine
  return batch_mean(per_example, axis_name)


def _power_spherical_log_normalizer(kappa: jax.Array, dim: int) -> jax.Array:
  """``log C(kappa, dim)`` of the power spherical density ``C * (1 + mu.x)^kappa`` on S^(dim-1).

  De Cao and Aziz (arXiv:2006.04437): ``C^-1 = 2^(a+b) pi^b Gamma(a) / Gamma(a+b)`` with
  ``a = (dim-1)/2 + kappa`` and ``b = (dim-1)/2``, the normaliser of their reference
  ``power_spherical`` package (``PowerSpherical.log_normalizer``), which VI-SimSiam builds on.
  """
  # jax 0.12's lgamma gathers from a coefficient table, which an Explicit batch sharding of
  # kappa turns into a ShardingTypeError; the [b] vector is cheap to compute replicated.
  sharding = jax.typeof(kappa).sharding
  replicated = replicate_rows(kappa)
  beta = (dim - 1) / 2.0
  alpha = beta + replicated
  out = -((alpha + beta) * math.log(2.0) + jax.lax.lgamma(alpha)
          - jax.lax.lgamma(alpha + beta) + beta * math.log(math.pi))
  return out if replicated is kappa else jax.sharding.reshard(out, sharding)


def vi_simsiam(
    p: jax.Array,
    z: jax.Array,
    kappa: jax.Array,
    *,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""VI-SimSiam: SimSiam as variational inference with a power spherical posterior.

  From Nakamura, Okada and Taniguchi, "Representation Uncertainty in Self-Supervised Learning as
  Variational Inference", ICCV 2023 (arXiv:2203.11437). The predictor output gives the mean
  direction ``mu_i = p_i / |p_i|`` and a separate head a per-example concentration ``kappa_i > 0``
  of a power spherical distribution (De Cao and Aziz, "The Power Spherical distribution", ICML
  2020 INNF+ workshop, arXiv:2006.04437); the loss is the negative log-likelihood of the
  stop-gradient target direction ``u_i = sg(z_i) / |z_i|`` under it::

      log q(u | mu, kappa) = log C(kappa) + kappa * log(1 + mu . u)
      log C(kappa)         = -[(a + b) log 2 + b log(pi) + lgamma(a) - lgamma(a + b)],
                             a = (D - 1)/2 + kappa,  b = (D - 1)/2
      L = -1/B * sum_i log q(u_i | mu_i, kappa_i)

  With a fixed kappa, ``L`` is ``-kappa * mean log(1 + cos)`` plus a constant: an increasing
  function of the SimSiam cosine, so the SimSiam term is recovered; a learned kappa lets the model
  state its uncertainty (a small kappa for ambiguous images), paying ``-log C(kappa)`` for
  confidence. The log-normaliser is the exact one of the ``power_spherical`` reference package
  that the paper cites; the authors' own training code was not available to check against, so
  this follows the paper's objective (one direction of its symmetric loss). Symmetrise as the
  paper does: ``(vi_simsiam(p1, z2, kappa1) + vi_simsiam(p2, z1, kappa2)) / 2``.

  Args:
    p: ``[b, D]`` predictor outputs of one view (the posterior's mean direction after
      normalisation), ``D >= 2``.
    z: ``[b, D]`` projections of the other view; no gradient flows into ``z``.
    kappa: ``[b]`` concentrations, one per example, > 0 (e.g. ``softplus(head(h)) + 1e-3``; not
      checked, as it is a traced array). Gradients flow into ``kappa``.
    axis_name: ``None`` for global arrays, or the mapped axis inside ``jax.shard_map`` (the mean
      is then ``pmean``-ed; shards must have equal ``b``).

  Returns:
    A float32 scalar: ``L`` (inputs cast to float32). Norms are clamped at ``eps = 1e-6``, so a
    zero ``p`` or ``z`` gives ``mu . u = 0`` and the finite loss ``-log C(kappa)`` with a finite
    gradient. An exactly antipodal pair (``mu . u = -1``) has zero likelihood: ``L = +inf``, as
    for the true density.

  Raises:
    ValueError: if ``p`` or ``z`` is not rank 2, their shapes differ, ``D < 2``, or ``kappa`` is
      not of shape ``[b]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import vi_simsiam
    >>> p = jnp.array([[1.0, 0.0, 0.0]])
    >>> z = jnp.array([[0.0, 1.0, 0.0]])  # orthogonal: log(1 + cos) = 0, only -log C remains
    >>> round(float(vi_simsiam(p, z, jnp.array([1.0]))), 4)  # C(1) = 1/(4 pi) on S^2
    2.531
  """
  _checks.check_pair("p", p, "z", z)
  batch, dim = p.shape
  _checks.check_min_size(f"the dimension of p (p of shape {tuple(p.shape)})", dim, 2,
                         "the power spherical distribution lives on a sphere of dimension >= 1")
  if tuple(jnp.shape(kappa)) != (batch,):
    raise ValueError(f"kappa must have shape [batch] = ({batch},), matching p of shape "
                     f"{tuple(p.shape)}, but got kappa with shape {tuple(jnp.shape(kappa))}.")
  p, z, kappa = as_float32(p, z, kappa)
  cosine = _cosine(p, jax.lax.stop_gradient(z))
  log_prob = _power_spherical_log_normalizer(kappa, dim) + kappa * jnp.log1p(cosine)
  return batch_mean(-log_prob, axis_name)


def myow_mining(
    queries: jax.Array,
    pool: jax.Array,
    *,
    k: int = 1,
    key: jax.Array | None = None,
    exclude_self: bool = True,
    axis_name: Hashable | None = None,
) -> tuple[jax.Array, jax.Array]:
  r"""MYOW's view miner: for each query, one of its ``k`` nearest pool elements by cosine.

  From Azabou et al., "Mine Your Own vieW: Self-Supervised Learning Through Across-Sample
  Prediction", 2021 (arXiv:2102.10106), Section 2 and the authors' code (nerdslab/myow,
  ``MYOW._knn`` and ``MYOWTrainer.train_epoch``). With ``q_i`` the online encoder output of query
  ``i`` and ``y_j`` the target encoder output of candidate ``j`` of the global pool::

      d_ij = 2 - 2 * q_i . y_j / (|q_i| |y_j|)
      N_i  = the k indices j with the smallest d_ij   (j != i when exclude_self)
      m_i  = one element of N_i drawn uniformly at random (N_i's only element when k = 1)

  As in the authors' code, the pool is gathered from every device (``all_gather``), the search is
  done in the encoder (representation) space without gradients, and the mined views are then
  passed through the target projector to give the regression targets of ``myow``.

  ``exclude_self=True`` is for a pool that is the batch itself (``pool`` row ``g`` is the same
  example as query ``g``, in the same global order), where each query would otherwise find itself;
  with a separate pool of other images (the paper's image setting) pass ``exclude_self=False``.

  Args:
    queries: ``[b, D]`` online representations of the views to mine for (stop-gradient).
    pool: ``[m, D]`` target representations of the candidates (this device's shard of the pool;
      stop-gradient). With ``exclude_self``, ``m`` must equal ``b``.
    k: the number of nearest neighbours to draw from (the paper's ``k``), ``1 <= k`` and at most
      the global pool size (minus one with ``exclude_self``).
    key: a ``jax.random`` key, required when ``k > 1``; the same key gives the same draws
      whatever the sharding (one draw per global query index).
    exclude_self: whether pool element ``g`` is excluded for query ``g`` (see above).
    axis_name: ``None`` for global arrays, or the mapped axis inside ``jax.shard_map``, where
      ``queries``/``pool`` are local shards and the pool is gathered over the axis.

  Returns:
    ``(indices, mined)``: ``indices`` ``[b]`` int32, the global pool index of each query's mined
    view, and ``mined`` ``[b, D]`` float32, those pool rows (``pool[indices]`` of the gathered
    pool), with no gradient. A zero vector has distance 2 to everything (cosine 0 after the
    clamped normalisation), so ties are broken by the lowest index.

  Raises:
    ValueError: if an input is not rank 2, the dimensions differ, ``exclude_self`` is set with a
      pool of a different size than the queries, ``k`` is out of range, or ``key`` is missing
      for ``k > 1``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import myow_mining
    >>> y = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    >>> indices, mined = myow_mining(y, y)  # the batch is its own pool; self excluded
    >>> indices.tolist()
    [2, 3, 0, 1]
  """
  _checks.check_rank("queries", queries, 2, "[batch, dim]")
  _checks.check_rank("pool", pool, 2, "[pool, dim]")
  if pool.shape[1] != queries.shape[1]:
    raise ValueError(f"pool must have the same dimension as queries: expected "
                     f"[pool, {queries.shape[1]}], but got pool with shape {tuple(pool.shape)}.")
  if exclude_self and pool.shape[0] != queries.shape[0]:
    raise ValueError(
        f"with exclude_self=True the pool must be the batch itself: expected pool of shape "
        f"{tuple(queries.shape)} like queries, but got pool with shape {tuple(pool.shape)}; "
        f"pass exclude_self=False for a separate pool.")
  if not isinstance(k, int) or k < 1:
    raise ValueError(f"k must be a positive int, but got {k!r}.")
  local_batch = queries.shape[0]
  global_pool = pool.shape[0] * num_shards(axis_name)
  candidates = global_pool - (1 if exclude_self else 0)
  _checks.check_min_size(
      f"the number of candidates per query (global pool of {global_pool}"
      f"{' minus the query itself' if exclude_self else ''})", candidates, k,
      f"k={k} neighbours are drawn from")
  if k > 1 and key is None:
    raise ValueError(f"key must be a jax.random key when k > 1 (got k={k} and key=None).")

  queries, pool = as_float32(jax.lax.stop_gradient(queries), jax.lax.stop_gradient(pool))
  gathered = gather_batch(pool, axis_name)  # [M, D]
  keys = l2_normalize(gathered)
  similarity = jnp.matmul(l2_normalize(queries), keys.T, precision=jax.lax.Precision.HIGHEST)
  rows = jnp.arange(local_batch) + batch_offset(local_batch, axis_name)
  if exclude_self:
    similarity = jnp.where(jnp.arange(global_pool)[None, :] == rows[:, None], -jnp.inf,
                           similarity)
  # The k smallest distances 2 - 2 cos are the k largest cosines; top_k breaks ties by index.
  _, neighbours = jax.lax.top_k(similarity, k)  # [b, k]
  if k == 1:
    choice = jnp.zeros((local_batch,), jnp.int32)
  else:
    # One draw per *global* query index, sliced to this shard, so the draws do not depend on how
    # the batch is split over devices.
    global_batch = local_batch * num_shards(axis_name)
    draws = jax.random.randint(key, (global_batch,), 0, k, dtype=jnp.int32)
    choice = jax.lax.dynamic_slice_in_dim(draws, batch_offset(local_batch, axis_name),
                                          local_batch)
  indices = jnp.take_along_axis(neighbours, choice[:, None], axis=1)[:, 0].astype(jnp.int32)
  return indices, take_rows(gathered, indices)


def myow(
    prediction: jax.Array,
    target: jax.Array,
    *,
    indices: jax.Array | None = None,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""MYOW's across-sample prediction loss: regress onto the target of the mined view.

  From Azabou et al., "Mine Your Own vieW: Self-Supervised Learning Through Across-Sample
  Prediction", 2021 (arXiv:2102.10106), with the cosine loss of the authors' code
  (nerdslab/myow ``CosineLoss``). With ``q_i`` the prediction of query ``i`` (second online
  projector and predictor) and ``v_{m_i}`` the target projection of its mined view ``m_i``::

      L = 1/B * sum_i (2 - 2 * q_i . sg(v_{m_i}) / (|q_i| |v_{m_i}|))

  The authors combine it with the BYOL term as
  ``1/(1+w) * L_byol + w/(1+w) * L_myow``, with ``w`` ramped up from 0 during training.

  Args:
    prediction: ``[b, D]`` online predictions ``q_i`` of the queries.
    target: without ``indices``, ``[b, D]`` the target projections of each query's mined view,
      row-aligned with ``prediction`` (e.g. the target projector applied to ``myow_mining``'s
      ``mined``). With ``indices``, ``[m, D]`` this device's shard of the target projections of
      the whole pool, gathered over ``axis_name`` and indexed by ``indices``. No gradient flows
      into ``target``.
    indices: optional ``[b]`` integer global pool indices from ``myow_mining``.
    axis_name: ``None`` for global arrays, or the mapped axis inside ``jax.shard_map`` (the mean
      is ``pmean``-ed; the pool, with ``indices``, is gathered over the axis).

  Returns:
    A float32 scalar in ``[0, 4]``. Norms are clamped at ``eps = 1e-6``: zero vectors have
    cosine 0 (loss 2) with a finite gradient.

  Raises:
    ValueError: if the inputs are not rank 2, their dimensions differ, or ``indices`` is not of
      shape ``[b]`` (or, without ``indices``, ``target`` is not of ``prediction``'s shape).

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import myow
    >>> q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> pool = jnp.array([[0.0, 5.0], [2.0, 0.0], [1.0, 1.0]])
    >>> round(float(myow(q, pool, indices=jnp.array([1, 0]))), 4)  # both mined views aligned
    0.0
  """
  _checks.check_rank("prediction", prediction, 2, "[batch, dim]")
  if indices is None:
    _checks.check_rank("target", target, 2, "[batch, dim]")
    _checks.check_same_shape("prediction", prediction, "target", target)
  else:
    _checks.check_rank("target", target, 2, "[pool, dim]")
    if target.shape[1] != prediction.shape[1]:
      raise ValueError(f"target must have the same dimension as prediction: expected "
                       f"[pool, {prediction.shape[1]}], but got target with shape "
                       f"{tuple(target.shape)}.")
    if tuple(jnp.shape(indices)) != (prediction.shape[0],):
      raise ValueError(f"indices must have shape [batch] = ({prediction.shape[0]},), matching "
                       f"prediction of shape {tuple(prediction.shape)}, but got indices with "
                       f"shape {tuple(jnp.shape(indices))}.")
  prediction, target = as_float32(prediction, target)
  target = jax.lax.stop_gradient(target)
  if indices is not None:
    target = take_rows(gather_batch(target, axis_name), indices)
  return batch_mean(2.0 - 2.0 * _cosine(prediction, target), axis_name)
