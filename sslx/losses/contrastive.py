"""Contrastive losses."""

import numbers
from collections.abc import Callable, Hashable

import jax
import jax.numpy as jnp

from sslx.losses import _checks
from sslx.losses._common import (
    as_float32, batch_offset, gather_batch, gather_batch_invariant, l2_normalize,
    mean_across_devices, replicate_rows)


def nt_xent(
    z1: jax.Array,
    z2: jax.Array,
    *,
    temperature: float | jax.Array = 0.1,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""NT-Xent, the normalized temperature-scaled cross-entropy loss of SimCLR.

  From Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for Contrastive Learning of
  Visual Representations", ICML 2020 (arXiv:2002.05709), eq. (1).

  Stack the two views of a global batch of ``B`` examples into ``u = [z1; z2]`` (``2B`` rows), so
  that row ``i`` and row ``p(i) = (i + B) mod 2B`` are the two views of the same example. With
  cosine similarity ``s_ik = u_i . u_k / (max(|u_i|, eps) max(|u_k|, eps))`` and temperature
  ``t``::

      l_i = -log( exp(s_{i,p(i)} / t) / sum_{k != i} exp(s_ik / t) )
      L   = 1/(2B) * sum_{i=1}^{2B} l_i

  Each anchor has one positive (the other view of its example) and ``2B - 2`` negatives (every
  other embedding from both views); its similarity with itself is excluded from the denominator.

  Args:
    z1: ``[b, D]`` projections of the first view.
    z2: ``[b, D]`` projections of the second view; row ``j`` is the same example as row ``j``
      of ``z1``.
    temperature: ``t`` above, > 0. Python numbers are checked; a (traced) array is used as is,
      so a learned temperature works.
    axis_name: ``None`` when ``z1``/``z2`` are the whole global batch (``b = B``). This is also
      the right choice under ``jax.jit`` with inputs sharded along the batch over a mesh (Auto
      or Explicit axes): the arrays are global and XLA inserts the collectives. Inside
      ``jax.shard_map`` (or another map that binds an axis name), pass the mapped axis:
      ``z1``/``z2`` are then the local shards, every device's embeddings are gathered with
      ``all_gather`` to serve as negatives, and shard ``r`` holds
      examples ``r*b .. r*b + b - 1`` of the global batch (the ordering ``in_specs=P(axis)``
      gives). All shards must have the same ``b``.

  Returns:
    A float32 scalar: the loss ``L`` over the global batch. Inputs of any float dtype
    (bfloat16, float16, ...) are cast to float32 first, and the similarity matmul runs at full
    float32 precision, since logits are divided by a small temperature.

    Norms are clamped at ``eps = 1e-6``, so an all-zero embedding normalises to zero and has
    similarity 0 with everything: the loss and its gradient stay finite (the gradient with
    respect to such a vector is scaled by ``1/eps``, as for any clamped normalisation).

    With ``axis_name`` the value is ``pmean`` of the local means, which is ``L`` itself, the
    same on every device. Under ``jax.shard_map`` with its default ``check_vma=True``, JAX types
    this value as invariant across the axis, and gradients come out as the gradient of ``L``:

    * ``jax.grad`` of a function wrapping the ``shard_map`` (``out_specs=P()``) is ``dL/dz``.
    * ``jax.grad`` taken inside the ``shard_map`` body gives, on each device, ``dL/d(local
      shard)``, with no world-size factor and the cross-device negative terms included:
      ``pmean``'s psum transposes to a plain broadcast of the cotangent (each device receives
      ``1/n``), and ``all_gather`` transposes to ``psum_scatter``, which returns to each shard
      the terms that other devices' anchors contributed through it. Gradients with respect to
      replicated parameters (``in_specs=P()``) come back already summed over devices, so they
      must not be ``psum``-ed again.

    With ``check_vma=False`` JAX has no invariance types and psum transposes to psum. The value
    and the gradient of a wrapping function are still right (shard_map then divides the
    cotangent of a replicated output by the axis size), but ``jax.grad`` inside the body is
    ``n`` times ``dL/d(local shard)`` for an axis of size ``n``; divide by
    ``jax.lax.axis_size(axis_name)`` there, or keep the default ``check_vma=True``.
    ``jax.vmap(..., axis_name=...)`` behaves like ``check_vma=False`` in this respect.

  Raises:
    ValueError: if ``z1`` or ``z2`` is not rank 2, their shapes differ, the global batch is
      smaller than 2 (there would be no negatives), or ``temperature`` is a number <= 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import nt_xent
    >>> z1 = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> z2 = jnp.array([[2.0, 0.0], [0.0, 3.0]])  # same directions: cosine 1 with the positive
    >>> loss = nt_xent(z1, z2, temperature=1.0)  # = log(1 + 2/e) for every anchor
    >>> loss.dtype, round(float(loss), 4)
    (dtype('float32'), 0.5514)
  """
  _checks.check_pair("z1", z1, "z2", z2)
  _checks.check_positive("temperature", temperature)

  z1, z2 = as_float32(z1, z2)
  local_batch = z1.shape[0]
  global_batch = _checks.check_global_batch_size(
      "z1", z1, axis_name, 2, "with a single example an anchor has no negatives")

  anchors1 = l2_normalize(z1)
  anchors2 = l2_normalize(z2)
  anchors = jnp.concatenate([anchors1, anchors2], axis=0)  # [2b, D]
  if axis_name is None:
    keys = replicate_rows(anchors)
  else:
    # Gathering each view separately keeps the global layout [all z1; all z2], so the
    # positive of global example g is always g + B away, whichever device holds it.
    keys = jnp.concatenate([
        jax.lax.all_gather(anchors1, axis_name, tiled=True),
        jax.lax.all_gather(anchors2, axis_name, tiled=True),
    ], axis=0)  # [2B, D]

  logits = jnp.matmul(anchors, keys.T, precision=jax.lax.Precision.HIGHEST) / temperature

  # The positive (the other view of the same example) is always on the same device, so its
  # logit is a row-wise dot product rather than a gather from the sharded logits.
  partners = jnp.concatenate([anchors2, anchors1], axis=0)
  positive = jnp.sum(anchors * partners, axis=1) / temperature  # [2b]

  # The global example index of each local row.
  rows = jnp.arange(local_batch) + batch_offset(local_batch, axis_name)
  self_col = jnp.concatenate([rows, rows + global_batch])  # [2b]
  positive_col = jnp.concatenate([rows + global_batch, rows])  # [2b]
  cols = jnp.arange(2 * global_batch)[None, :]
  is_negative = (cols != self_col[:, None]) & (cols != positive_col[:, None])
  # Margins of the negatives over the positive; -inf removes self and positive from the sum
  # exactly (exp(-inf) = 0) and `where` sends them no gradient.
  margins = jnp.where(is_negative, logits - positive[:, None], -jnp.inf)  # [2b, 2B]

  # l_i = log(1 + sum_neg exp(margin)). The usual logsumexp(logits) - positive cancels two
  # numbers of size ~1/t, so an easy anchor's loss of 1e-4 would keep only ~3 digits in float32;
  # log1p keeps full relative precision there. Shifting by m >= 0 keeps exp from overflowing
  # when negatives beat the positive by a wide margin at small temperature; expm1(-m) is exactly
  # 0 when no shift is needed, and any l_i with m > 0 is at least log 2, so nothing cancels.
  m = jax.lax.stop_gradient(jnp.maximum(jnp.max(margins, axis=1), 0.0))
  shifted_sum = jnp.sum(jnp.exp(margins - m[:, None]), axis=1)
  per_anchor = m + jnp.log1p(shifted_sum + jnp.expm1(-m))
  loss = jnp.mean(per_anchor)

  # Equal shard sizes make the mean of local means the global mean.
  loss = mean_across_devices(loss, axis_name)
  return loss


# --- Shared private helpers of the losses below ------------------------------------------------
#
# These are kept private to this module (the brief forbids editing _common.py); the first two
# would fit in _common if other modules need them.


def _log1p_sum_exp(margins: jax.Array) -> jax.Array:
  """``log(1 + sum_k exp(margins[:, k]))`` per row; ``-inf`` entries are excluded exactly.

  ``margins`` are negatives' logits minus the positive's, so this is the cross-entropy of the
  positive against itself plus the negatives, computed as nt_xent does: log1p keeps an easy
  anchor's tiny loss to full relative precision, and the stop-gradient shift ``m >= 0`` keeps
  exp from overflowing when negatives beat the positive by a wide margin.
  """
  m = jax.lax.stop_gradient(jnp.maximum(jnp.max(margins, axis=1), 0.0))
  shifted_sum = jnp.sum(jnp.exp(margins - m[:, None]), axis=1)
  return m + jnp.log1p(shifted_sum + jnp.expm1(-m))


def _masked_logsumexp(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """``log sum_k exp(logits[:, k])`` over the entries where ``mask`` is True (one at least)."""
  masked = jnp.where(mask, logits, -jnp.inf)
  m = jax.lax.stop_gradient(jnp.max(masked, axis=1))
  return m + jnp.log(jnp.sum(jnp.exp(masked - m[:, None]), axis=1))


def _matmul_t(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a @ b.T`` at full float32 precision: logits are divided by small temperatures."""
  return jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)


def _check_queue(name: str, queue: jax.Array, dim: int, other: str) -> None:
  _checks.check_rank(name, queue, 2, "[size, dim]")
  if queue.shape[1] != dim:
    raise ValueError(
        f"{name} must have shape [size, dim] with dim = {dim} (the dim of {other}), but got "
        f"shape {tuple(queue.shape)}.")
  _checks.check_min_size(f"{name}.shape[0] (the queue size, {name} of shape "
                         f"{tuple(queue.shape)})", queue.shape[0], 1, "it holds the entries")


def _fifo_update(name: str, state: jax.Array, new_rows: jax.Array, rows_name: str,
                 axis_name: Hashable | None) -> jax.Array:
  """Shared body of :func:`update_queue` and :func:`update_support_set`."""
  _checks.check_rank(rows_name, new_rows, 2, "[batch, dim]")
  _check_queue(name, state, new_rows.shape[1], rows_name)
  rows = gather_batch_invariant(jax.lax.stop_gradient(new_rows), axis_name).astype(state.dtype)
  size = state.shape[0]
  # Newest first; when the global batch exceeds the queue, only its first `size` rows are kept.
  return jnp.concatenate([rows, state], axis=0)[:size]


# --- MoCo -------------------------------------------------------------------------------------


def info_nce(
    query: jax.Array,
    key: jax.Array,
    queue: jax.Array | None = None,
    *,
    temperature: float | jax.Array,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""InfoNCE of MoCo: each query against its key, with a queue (v2) or in-batch keys (v3).

  From He, Fan, Wu, Xie and Girshick, "Momentum Contrast for Unsupervised Visual Representation
  Learning", CVPR 2020 (arXiv:1911.05722), eq. (1); Chen, Fan, Girshick and He, "Improved
  Baselines with Momentum Contrastive Learning" (MoCo v2, arXiv:2003.04297); Chen, Xie and He,
  "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021 (MoCo v3,
  arXiv:2104.02057). Follows the authors' code (facebookresearch/moco ``builder.py`` and
  facebookresearch/moco-v3 ``moco/builder.py``).

  With cosine similarities ``s(a, b) = a.b / (max(|a|, eps) max(|b|, eps))``, temperature ``t``
  and a global batch of ``B`` query/key pairs::

      with a queue (MoCo v1/v2), negatives n_1..n_K are the queue's rows only:
        l_i = -log( exp(s(q_i, k_i)/t) / (exp(s(q_i, k_i)/t) + sum_j exp(s(q_i, n_j)/t)) )
      without one (MoCo v3), the negatives are the other B - 1 keys of the global batch:
        l_i = -log( exp(s(q_i, k_i)/t) / sum_{j=1}^{B} exp(s(q_i, k_j)/t) )
      L = 1/B * sum_i l_i

  With a queue, the other keys of the batch are *not* negatives, as in MoCo v1/v2's code (the
  logits are ``[q.k_i, q.queue]``); the current keys join the queue only afterwards, through
  :func:`update_queue`. Without a queue, the key of global example ``g`` sits in column ``g``
  of the gathered keys, so each device's labels are offset by its position (moco-v3's ``labels
  = arange(N) + N * rank``), which this function does for you.

  MoCo v3 multiplies each term by ``2 t`` and sums the two directions; this function does *not*
  include that factor, so MoCo v3's loss is ``2 * t * (info_nce(q1, k2, temperature=t) +
  info_nce(q2, k1, temperature=t))``. MoCo v2's loss is ``info_nce(q, k, queue, ...)`` as is.

  Gradients flow into ``query``, ``key`` and ``queue`` alike. MoCo's keys come from a momentum
  encoder that gets no gradient, so the caller passes ``jax.lax.stop_gradient(key)`` (or simply
  does not differentiate with respect to the momentum parameters); the queue is state and is
  normally not differentiated either.

  Args:
    query: ``[b, D]`` queries (online encoder).
    key: ``[b, D]`` keys; row ``i`` is the positive of query ``i``.
    queue: ``None`` (MoCo v3), or ``[K, D]`` negatives, the same whole array on every device
      (replicated, ``in_specs=P()`` under ``shard_map``; not sharded). Rows are normalised
      here, so it may hold raw or normalised keys.
    temperature: ``t`` above, > 0 (MoCo v2: 0.2; v3: 0.2 for ViT, 1.0 for ResNet). Python
      numbers are checked; a (traced) array is used as is.
    axis_name: ``None`` for global arrays (one device, or ``jax.jit`` over a mesh with the batch
      sharded); inside ``jax.shard_map``, the mapped axis: the local keys are gathered as
      negatives when there is no queue, and the loss is ``pmean``-ed over the axis. Shard ``r``
      holds examples ``r*b .. r*b + b - 1``; all shards have the same ``b``.

  Returns:
    A float32 scalar, ``L`` over the global batch, the same on every device (see
    :func:`nt_xent` for how gradients behave inside ``shard_map``). Inputs of any float dtype
    are cast to float32. Norms are clamped at ``eps = 1e-6``: an all-zero vector has cosine 0
    with everything, and the loss and its gradient stay finite.

  Raises:
    ValueError: if ``query``/``key`` are not rank 2 or differ in shape, ``queue`` is not
      ``[K, D]`` with ``K >= 1`` and the same ``D``, without a queue the global batch is below
      2 (no negatives), or ``temperature`` is a number <= 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import info_nce
    >>> q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> k = jnp.array([[2.0, 0.0], [0.0, 2.0]])
    >>> round(float(info_nce(q, k, temperature=1.0)), 4)  # log(1 + 1/e): one in-batch negative
    0.3133
    >>> queue = jnp.array([[0.0, 1.0], [1.0, 0.0]])  # negatives: cosines 1 and 0 per query
    >>> round(float(info_nce(q, k, queue, temperature=1.0)), 4)  # log(2 + 1/e)
    0.862
  """
  _checks.check_pair("query", query, "key", key)
  if queue is not None:
    _check_queue("queue", queue, query.shape[1], "query")
  _checks.check_positive("temperature", temperature)

  query, key = as_float32(query, key)
  q = l2_normalize(query)
  k = l2_normalize(key)
  positive = jnp.sum(q * k, axis=1) / temperature  # [b]
  if queue is None:
    global_batch = _checks.check_global_batch_size(
        "query", query, axis_name, 2, "with a single example a query has no negatives")
    keys = gather_batch(k, axis_name)  # [B, D]
    logits = _matmul_t(q, keys) / temperature  # [b, B]
    rows = jnp.arange(query.shape[0]) + batch_offset(query.shape[0], axis_name)
    is_negative = jnp.arange(global_batch)[None, :] != rows[:, None]
  else:
    (queue,) = as_float32(queue)
    logits = _matmul_t(q, l2_normalize(queue)) / temperature  # [b, K]
    is_negative = jnp.ones(logits.shape, bool)
  margins = jnp.where(is_negative, logits - positive[:, None], -jnp.inf)
  loss = jnp.mean(_log1p_sum_exp(margins))
  loss = mean_across_devices(loss, axis_name)
  return loss


def update_queue(
    queue: jax.Array, keys: jax.Array, axis_name: Hashable | None = None) -> jax.Array:
  """MoCo's dequeue-and-enqueue: the new queue, newest global keys first (FIFO).

  Returns ``concat([all keys of the global batch, queue])[:K]``: the ``B`` keys of this step
  (gathered over ``axis_name``, in global batch order) take the first rows and the oldest ``B``
  rows fall off the end. MoCo's code writes keys at a moving pointer into a ring buffer
  instead; the two hold the same set of keys, and the loss does not depend on the order of the
  negatives. When ``B > K`` only the first ``K`` keys are kept.

  Call it after the loss, so that a key is never its own negative. Keys are stored as given
  (the losses normalise queue rows), behind a stop-gradient, cast to the queue's dtype.

  Args:
    queue: ``[K, D]`` current queue, replicated on every device.
    keys: ``[b, D]`` keys of this step (the local shard inside ``shard_map``).
    axis_name: ``None`` for global arrays, or the mapped axis inside ``jax.shard_map``; there
      the result is the same on every device and typed invariant, so it can be returned with
      ``out_specs=P()``.

  Returns:
    The ``[K, D]`` new queue, in ``queue``'s dtype.

  Raises:
    ValueError: if ``queue`` is not ``[K, D]`` with ``K >= 1`` or ``keys`` is not ``[b, D]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import update_queue
    >>> update_queue(jnp.zeros((3, 2)), jnp.ones((2, 2))).tolist()
    [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
  """
  return _fifo_update("queue", queue, keys, "keys", axis_name)


# --- DCL --------------------------------------------------------------------------------------


def negative_von_mises_fisher_weight(
    sigma: float = 0.5) -> Callable[[jax.Array, Hashable | None], jax.Array]:
  r"""DCLW's positive weighting, as a ``weight_fn`` for :func:`dcl`.

  From Yeh et al., "Decoupled Contrastive Learning", ECCV 2022 (arXiv:2110.06848), Sec. 3, and
  the authors' ``DCLW`` (``w = 2 - N * softmax(z1 . z2 / sigma)`` over the batch)::

      w_i = 2 - B * exp(s_ii / sigma) / sum_{j=1}^{B} exp(s_jj / sigma)

  with ``s_ii`` the cosine similarity of example ``i``'s two views. The softmax runs over the
  global batch (the authors' code, written for one GPU, takes it over the local batch); the
  weights average to 1, and easy positives (high ``s_ii``) get less weight. The weight is
  differentiable, as in the authors' code.

  Args:
    sigma: the softmax temperature, > 0 (the paper's default 0.5).

  Returns:
    ``weight_fn(positive_similarity [b], axis_name) -> [b]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import negative_von_mises_fisher_weight
    >>> negative_von_mises_fisher_weight(0.5)(jnp.array([0.0, 0.0]), None).tolist()
    [1.0, 1.0]
  """
  _checks.check_positive("sigma", sigma)

  def weight_fn(positive_similarity: jax.Array, axis_name: Hashable | None) -> jax.Array:
    logits = positive_similarity / sigma
    shift = jax.lax.stop_gradient(jnp.max(logits))
    if axis_name is not None:
      shift = jax.lax.pmax(shift, axis_name)
    weights = jnp.exp(logits - shift)
    total = jnp.sum(weights)
    global_batch = positive_similarity.shape[0]
    if axis_name is not None:
      total = jax.lax.psum(total, axis_name)
      global_batch *= jax.lax.axis_size(axis_name)
    return 2.0 - global_batch * weights / total

  return weight_fn


def dcl(
    z1: jax.Array,
    z2: jax.Array,
    *,
    temperature: float | jax.Array,
    axis_name: Hashable | None = None,
    weight_fn: Callable[[jax.Array, Hashable | None], jax.Array] | None = None,
) -> jax.Array:
  r"""Decoupled Contrastive Learning loss (DCL, and DCLW with a weight function).

  From Yeh, Hong, Hsu, Liu, Chen and LeCun, "Decoupled Contrastive Learning", ECCV 2022
  (arXiv:2110.06848), eq. (6); follows the authors' code (``DCL``/``DCLW`` in
  raminnakhli/Decoupled-Contrastive-Learning, linked from the paper), which sums the one-way
  loss in both directions.

  With the ``2B`` embeddings ``u = [z1; z2]`` of a global batch, cosine similarities ``s`` and
  temperature ``t``, anchor ``i`` with positive ``p(i)`` (its other view)::

      l_i = -w_i s_{i,p(i)} / t + log sum_{k not in {i, p(i)}} exp(s_ik / t)
      L   = 2/(2B) * sum_{i=1}^{2B} l_i      (= one-way loss(z1, z2) + one-way loss(z2, z1))

  The positive is removed from the denominator (the "decoupling"); each anchor has the
  ``2B - 2`` other embeddings as negatives, as in :func:`nt_xent`. ``w_i = 1`` for DCL; DCLW
  passes ``weight_fn=negative_von_mises_fisher_weight(sigma)``. The loss can be negative.

  Args:
    z1: ``[b, D]`` projections of the first view.
    z2: ``[b, D]`` projections of the second view, row ``j`` the same example as in ``z1``.
    temperature: ``t`` above, > 0 (the paper uses 0.1 to 0.5). Numbers are checked; a (traced)
      array is used as is.
    axis_name: ``None`` for global arrays (one device, or ``jax.jit`` over a mesh); the mapped
      axis inside ``jax.shard_map``: embeddings are gathered as negatives, the weight's softmax
      runs over the global batch, and the loss is ``pmean``-ed. Shard ``r`` holds examples
      ``r*b .. r*b + b - 1``.
    weight_fn: ``None`` (DCL), or ``weight_fn(s_pos, axis_name) -> [b]`` mapping the local
      positive-pair cosine similarities ``s_pos [b]`` to the weights ``w`` of the positive term
      (the same weight for both directions, as ``s_pos`` is symmetric).

  Returns:
    A float32 scalar, ``L`` over the global batch, the same on every device (gradients inside
    ``shard_map`` behave as for :func:`nt_xent`). Inputs are cast to float32. Norms are clamped
    at ``eps = 1e-6``: all-zero embeddings give ``L = 2 log(2B - 2)`` with finite gradients.

  Raises:
    ValueError: if ``z1``/``z2`` are not rank 2 or differ in shape, the global batch is below
      2 (no negatives), or ``temperature`` is a number <= 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import dcl
    >>> z1 = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> z2 = jnp.array([[2.0, 0.0], [0.0, 3.0]])  # cosine 1 with the positive, 0 otherwise
    >>> round(float(dcl(z1, z2, temperature=1.0)), 4)  # 2 * (-1 + log 2)
    -0.6137
  """
  _checks.check_pair("z1", z1, "z2", z2)
  _checks.check_positive("temperature", temperature)
  z1, z2 = as_float32(z1, z2)
  local_batch = z1.shape[0]
  global_batch = _checks.check_global_batch_size(
      "z1", z1, axis_name, 2, "with a single example an anchor has no negatives")

  a1, a2 = l2_normalize(z1), l2_normalize(z2)
  anchors = jnp.concatenate([a1, a2], axis=0)  # [2b, D]
  keys = jnp.concatenate([gather_batch(a1, axis_name), gather_batch(a2, axis_name)], axis=0)
  logits = _matmul_t(anchors, keys) / temperature  # [2b, 2B]

  positive_similarity = jnp.sum(a1 * a2, axis=1)  # [b], the same for both directions
  weights = (jnp.ones_like(positive_similarity) if weight_fn is None
             else weight_fn(positive_similarity, axis_name))
  positive = jnp.concatenate([weights * positive_similarity] * 2) / temperature  # [2b]

  rows = jnp.arange(local_batch) + batch_offset(local_batch, axis_name)
  self_col = jnp.concatenate([rows, rows + global_batch])
  positive_col = jnp.concatenate([rows + global_batch, rows])
  cols = jnp.arange(2 * global_batch)[None, :]
  is_negative = (cols != self_col[:, None]) & (cols != positive_col[:, None])
  per_anchor = _masked_logsumexp(logits, is_negative) - positive
  # Sum of the two one-way means, as the authors' training code adds dcl(z1,z2) + dcl(z2,z1).
  loss = 2.0 * jnp.mean(per_anchor)
  loss = mean_across_devices(loss, axis_name)
  return loss


# --- SupCon -----------------------------------------------------------------------------------


def supcon(
    z: jax.Array,
    labels_or_positive_mask: jax.Array,
    *,
    temperature: float | jax.Array,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""Supervised contrastive loss ``L^sup_out`` (SupCon), with labels or known positive pairs.

  From Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu and Krishnan, "Supervised
  Contrastive Learning", NeurIPS 2020 (arXiv:2004.11362), eq. (2); follows the authors'
  ``SupConLoss`` (HobbitLong/SupContrast ``losses.py``, ``contrast_mode='all'``).

  The global batch holds ``B`` examples with ``V`` views each, ``N = B V`` embeddings ``u_a``
  (anchors and candidates alike). With cosine similarities ``s`` and temperature ``t``, ``A(i)``
  every embedding but ``i`` itself, and ``P(i)`` the positives of ``i`` in ``A(i)``::

      l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / t) / sum_{a in A(i)} exp(s_ia / t) )
      L   = 1/|I| * sum_{i in I} l_i,   I = {i : |P(i)| > 0}

  Positives of an anchor: every other view of its own example, and every view of each example
  related to it, by equal labels or by the positive mask. Anchors with no positive (a class
  seen once in a batch with ``V = 1``) are *excluded* from the mean; the authors' code instead
  counts them as 0 in a mean over all ``N`` anchors (with ``V >= 2`` every anchor has a
  positive and the two agree). If no anchor has a positive, the loss is 0.

  The authors' code also multiplies by ``t / base_temperature`` (1 with their defaults
  ``t = base_temperature = 0.07``); that factor is not included here.

  Known positive relations (e.g. from metadata, or several crops of a video) are fed as a
  boolean mask: ``mask[i, j] = True`` when example ``j`` is a positive of anchor example ``i``.
  It need not be symmetric (row ``i`` defines anchor ``i``'s positives) and its diagonal is
  ignored. ``labels`` is the special case ``mask[i, j] = labels[i] == labels[j]``.

  Args:
    z: ``[b, V, D]`` embeddings of ``V >= 1`` views, or ``[b, D]`` (one view, ``V = 1``).
    labels_or_positive_mask: either integer ``labels`` of shape ``[b]``, or a boolean mask of
      shape ``[b, B]``: the rows of this shard's examples against all ``B`` examples of the
      global batch in global order (so ``[B, B]`` for global arrays, sharded along its first
      dimension like ``z``).
    temperature: ``t`` above, > 0 (the paper uses 0.1). Numbers are checked; a (traced) array
      is used as is.
    axis_name: ``None`` for global arrays (one device, or ``jax.jit`` over a mesh); the mapped
      axis inside ``jax.shard_map``: embeddings (and labels) are gathered, and the sum and count
      of the per-anchor losses are ``psum``-ed. Shard ``r`` holds examples ``r*b .. r*b+b-1``.

  Returns:
    A float32 scalar, ``L`` over the global batch, the same on every device. Inputs are cast
    to float32. Norms are clamped at ``eps = 1e-6``: all-zero embeddings give
    ``L = log(N - 1)`` with finite gradients.

  Raises:
    ValueError: if ``z`` is not rank 2 or 3; labels are not an integer ``[b]`` array or the
      mask not a boolean ``[b, B]`` array; with ``V = 1`` the global batch is below 2; or
      ``temperature`` is a number <= 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import supcon
    >>> z = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    >>> labels = jnp.array([0, 0, 1, 1])
    >>> round(float(supcon(z, labels, temperature=1.0)), 4)  # log(1 + 2/e)
    0.5514
  """
  if jnp.ndim(z) not in (2, 3):
    raise ValueError(
        f"z must have rank 2 with shape [batch, dim] or rank 3 with shape [batch, views, dim], "
        f"but got shape {tuple(jnp.shape(z))} (rank {jnp.ndim(z)}).")
  relation = labels_or_positive_mask
  local_batch = z.shape[0]
  shards = 1 if axis_name is None else jax.lax.axis_size(axis_name)
  global_batch = local_batch * shards
  dtype = jnp.result_type(relation)
  if jnp.ndim(relation) == 1:
    if not jnp.issubdtype(dtype, jnp.integer):
      raise ValueError(f"labels (labels_or_positive_mask of rank 1) must be integers, "
                       f"but got dtype {dtype}.")
    expected = (local_batch,)
  elif jnp.ndim(relation) == 2:
    if dtype != jnp.bool_:
      raise ValueError(f"the positive mask (labels_or_positive_mask of rank 2) must be boolean, "
                       f"but got dtype {dtype}.")
    expected = (local_batch, global_batch)
  else:
    raise ValueError(
        f"labels_or_positive_mask must be labels of shape [batch] = ({local_batch},) or a mask "
        f"of shape [batch, global batch] = ({local_batch}, {global_batch}), but got shape "
        f"{tuple(jnp.shape(relation))}.")
  if tuple(jnp.shape(relation)) != expected:
    raise ValueError(
        f"labels_or_positive_mask must have shape {expected} (z of shape {tuple(z.shape)}"
        f"{'' if axis_name is None else f', axis {axis_name!r} of size {shards}'}), but got "
        f"shape {tuple(jnp.shape(relation))}.")
  _checks.check_positive("temperature", temperature)
  if z.ndim == 2:
    _checks.check_global_batch_size(
        "z", z, axis_name, 2, "with one view and one example an anchor has no candidates")
    z = z[:, None, :]
  (z,) = as_float32(z)
  views = z.shape[1]

  u = l2_normalize(z)  # [b, V, D]
  keys = gather_batch(u, axis_name)  # [B, V, D]
  # [b, V, B, V]: anchor (example i, view v) against candidate (example j, view w).
  logits = jnp.einsum("ivd,jwd->ivjw", u, keys, precision=jax.lax.Precision.HIGHEST)
  logits = logits / temperature

  rows = jnp.arange(local_batch) + batch_offset(local_batch, axis_name)  # global example ids
  same_example = rows[:, None] == jnp.arange(global_batch)[None, :]  # [b, B]
  if relation.ndim == 1:
    related = relation[:, None] == gather_batch(relation, axis_name)[None, :]
  else:
    related = relation
  # The other views of an anchor's own example are always positives, whatever the mask says.
  related = related | same_example
  same_view = jnp.eye(views, dtype=bool)
  is_self = same_example[:, None, :, None] & same_view[None, :, None, :]  # [b, V, B, V]
  is_positive = related[:, None, :, None] & ~is_self

  masked = jnp.where(is_self, -jnp.inf, logits)
  m = jax.lax.stop_gradient(jnp.max(masked, axis=(2, 3)))
  log_denominator = m + jnp.log(jnp.sum(jnp.exp(masked - m[..., None, None]), axis=(2, 3)))
  positive_count = jnp.sum(is_positive, axis=(2, 3))  # [b, V]
  positive_sum = jnp.sum(jnp.where(is_positive, logits, 0.0), axis=(2, 3))
  per_anchor = log_denominator - positive_sum / jnp.maximum(positive_count, 1)
  has_positive = positive_count > 0
  total = jnp.sum(jnp.where(has_positive, per_anchor, 0.0))
  count = jnp.sum(has_positive).astype(jnp.float32)
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
    count = jax.lax.psum(count, axis_name)
  return total / jnp.maximum(count, 1.0)


# --- NNCLR ------------------------------------------------------------------------------------


def nearest_neighbor(z: jax.Array, support: jax.Array) -> jax.Array:
  """Each row of ``z`` replaced by its nearest neighbour in ``support``, behind a stop-gradient.

  ``NN(z, Q) = argmin_{q in Q} |z/|z| - q/|q||``, i.e. the row of highest cosine similarity, as in
  NNCLR (Dwibedi et al., ICCV 2021, arXiv:2104.14548, eq. (3)). Ties go to the first row, so an
  all-zero ``z`` (cosine 0 with every row) gets ``support[0]``.

  Args:
    z: ``[b, D]`` embeddings (local shard or global; each row is looked up independently).
    support: ``[K, D]`` support set, replicated (not sharded).

  Returns:
    ``[b, D]`` float32: the selected rows of ``support`` as stored (not renormalised). No
    gradient flows to ``z`` or ``support``: the selection is not differentiable, and the paper
    treats the neighbour as a constant.

  Raises:
    ValueError: if ``z`` is not ``[b, D]`` or ``support`` not ``[K, D]`` with ``K >= 1``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import nearest_neighbor
    >>> support = jnp.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    >>> nearest_neighbor(jnp.array([[0.1, 3.0], [-5.0, 1.0]]), support).tolist()
    [[0.0, 2.0], [-1.0, 0.0]]
  """
  _checks.check_rank("z", z, 2, "[batch, dim]")
  _check_queue("support", support, z.shape[1], "z")
  z, support = as_float32(z, support)
  similarity = _matmul_t(l2_normalize(z), l2_normalize(support))  # [b, K]
  index = jnp.argmax(similarity, axis=1)
  # A one-hot matmul rather than support[index]: it keeps z's batch sharding on Explicit meshes
  # (a gather with sharded indices is not supported there), and at HIGHEST precision it is exact.
  one_hot = jax.nn.one_hot(index, support.shape[0], dtype=support.dtype)
  neighbors = jnp.matmul(one_hot, support, precision=jax.lax.Precision.HIGHEST)
  return jax.lax.stop_gradient(neighbors)


def nnclr(
    z1: jax.Array,
    z2: jax.Array,
    support: jax.Array,
    *,
    temperature: float | jax.Array,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""NNCLR: InfoNCE between each ``z1``'s nearest neighbour in a support set and ``z2``.

  From Dwibedi, Aytar, Tompson, Sermanet and Zisserman, "With a Little Help from My Friends:
  Nearest-Neighbor Contrastive Learning of Visual Representations", ICCV 2021
  (arXiv:2104.14548), eq. (2) and its symmetrised form (Sec. 3.2).

  With ``n_i = NN(z1_i, Q)`` (:func:`nearest_neighbor`, no gradient), ``p_i = z2_i`` (in the
  paper, the prediction head's output for the second view), both L2-normalised, temperature
  ``t`` and a global batch of ``B``::

      l_i = -log( exp(n_i.p_i / t) / sum_{k=1}^{B} exp(n_i.p_k / t) )     (eq. (2))
            -log( exp(n_i.p_i / t) / sum_{k=1}^{B} exp(n_k.p_i / t) )     (symmetric term)
      L   = 1/B * sum_i l_i

  The symmetric term is the paper's: the same ``n . p`` similarity matrix, normalised over its
  column instead of its row; gradients reach only ``z2`` (and what produces it), never ``z1``.
  Public re-implementations (VISSL, solo-learn, lightly) symmetrise differently, by averaging
  the eq. (2) loss over swapped views: ``0.5 * (nnclr_row(z1, p2) + nnclr_row(z2, p1))``. To
  get that form, call :func:`info_nce` with ``query = nearest_neighbor(z1, Q)`` and
  ``key = p2`` (and the swapped pair), then average.

  The support set is a FIFO queue of ``z1`` embeddings from past steps (98,304 in the paper),
  updated after the loss with :func:`update_support_set`.

  Args:
    z1: ``[b, D]`` embeddings whose neighbours are looked up (first view, projector output).
    z2: ``[b, D]`` embeddings of the second view (after the prediction head in the paper).
    support: ``[K, D]`` support set, replicated on every device (not sharded).
    temperature: ``t`` above, > 0 (0.1 in the paper). Numbers are checked; a (traced) array is
      used as is.
    axis_name: ``None`` for global arrays (one device, or ``jax.jit`` over a mesh); the mapped
      axis inside ``jax.shard_map``: neighbours and ``z2`` are gathered across devices, and the
      loss is ``pmean``-ed. Shard ``r`` holds examples ``r*b .. r*b + b - 1``.

  Returns:
    A float32 scalar, ``L`` over the global batch, the same on every device. Inputs are cast
    to float32. Norms are clamped at ``eps = 1e-6``: all-zero inputs give ``L = 2 log B`` with
    finite gradients.

  Raises:
    ValueError: if ``z1``/``z2`` are not rank 2 or differ in shape, ``support`` is not
      ``[K, D]`` with ``K >= 1``, the global batch is below 2 (no negatives), or
      ``temperature`` is a number <= 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import nnclr
    >>> support = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> z1 = jnp.array([[0.9, 0.1], [0.2, 0.8]])  # neighbours: the two support rows
    >>> z2 = jnp.array([[3.0, 0.0], [0.0, 3.0]])
    >>> round(float(nnclr(z1, z2, support, temperature=1.0)), 4)  # 2 log(1 + 1/e)
    0.6265
  """
  _checks.check_pair("z1", z1, "z2", z2)
  _check_queue("support", support, z1.shape[1], "z1")
  _checks.check_positive("temperature", temperature)
  local_batch = z1.shape[0]
  global_batch = _checks.check_global_batch_size(
      "z1", z1, axis_name, 2, "with a single example an anchor has no negatives")

  neighbors = l2_normalize(nearest_neighbor(z1, support))  # [b, D], constant
  (z2,) = as_float32(z2)
  predictions = l2_normalize(z2)
  positive = jnp.sum(neighbors * predictions, axis=1) / temperature  # [b]
  row_logits = _matmul_t(neighbors, gather_batch(predictions, axis_name)) / temperature
  column_logits = _matmul_t(predictions, gather_batch(neighbors, axis_name)) / temperature

  rows = jnp.arange(local_batch) + batch_offset(local_batch, axis_name)
  is_negative = jnp.arange(global_batch)[None, :] != rows[:, None]  # [b, B]
  per_example = (
      _log1p_sum_exp(jnp.where(is_negative, row_logits - positive[:, None], -jnp.inf))
      + _log1p_sum_exp(jnp.where(is_negative, column_logits - positive[:, None], -jnp.inf)))
  loss = jnp.mean(per_example)
  loss = mean_across_devices(loss, axis_name)
  return loss


def update_support_set(
    support: jax.Array, z: jax.Array, axis_name: Hashable | None = None) -> jax.Array:
  """NNCLR's support-set update: a FIFO queue, newest global embeddings first.

  Exactly :func:`update_queue` (``concat([gathered z, support])[:K]``, stop-gradient, in
  ``support``'s dtype); NNCLR enqueues the first view's projections ``z1`` after the loss.

  Args:
    support: ``[K, D]`` current support set, replicated.
    z: ``[b, D]`` embeddings of this step (local shard inside ``shard_map``).
    axis_name: ``None`` for global arrays, or the mapped axis inside ``jax.shard_map`` (the
      result is then typed invariant, returnable with ``out_specs=P()``).

  Returns:
    The ``[K, D]`` new support set.

  Raises:
    ValueError: if ``support`` is not ``[K, D]`` with ``K >= 1`` or ``z`` is not ``[b, D]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import update_support_set
    >>> update_support_set(jnp.zeros((3, 1)), jnp.array([[1.0], [2.0]])).tolist()
    [[1.0], [2.0], [0.0]]
  """
  return _fifo_update("support", support, z, "z", axis_name)


# --- iSogCLR ----------------------------------------------------------------------------------


def isogclr(
    z1: jax.Array,
    z2: jax.Array,
    tau: jax.Array,
    u: jax.Array,
    *,
    rho: float = 0.3,
    gamma: float = 0.9,
    axis_name: Hashable | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  r"""iSogCLR: robust global contrastive loss with a learned temperature per example.

  From Qiu, Hu, Yuan, Zhou, Zhang and Yang, "Not All Semantics are Created Equal: Contrastive
  Self-supervised Learning with Automatic Temperature Individualization", ICML 2023
  (arXiv:2305.11965), eq. (6) and Algorithm 1; follows the authors' implementation in LibAUC
  (Optimization-AI/LibAUC, ``libauc/losses/contrastive.py``, ``GCLoss_v1`` with
  ``enable_isogclr=True``, the unimodal image-image loss).

  Each example ``i`` of the dataset has its own temperature ``tau_i``. The objective is a
  KL-constrained DRO over its negatives::

      F(w, tau) = 1/n sum_i [ tau_i log( 1/|S_i| sum_{z in S_i} exp(h_i(z) / tau_i) )
                              + tau_i rho ],        h_i(z) = s(x_i, z) - s(x_i, x_i^+)

  with cosine similarities ``s``. As in LibAUC, both views of example ``i`` are anchors sharing
  ``tau_i``: for anchor ``a`` (a view of example ``i``) with positive ``a^+`` (its other view),
  ``S_a`` is the ``2B - 2`` other embeddings of the global batch, as in :func:`nt_xent`.

  ``g_a = 1/(2B-2) sum_{z in S_a} exp(s(a, z) / tau_i)`` is estimated across steps by a moving
  average ``u`` (stored per example by the caller)::

      u_a  = (1 - gamma) u_i + gamma g_a       (u_a = g_a where u_i = 0: never seen yet)

  and the gradients of Algorithm 1 are ``(tau_i/u_a) dg_a/dw - ds(a, a^+)/dw`` for the network
  and ``log u_a + rho + (tau_i/u_a) dg_a/dtau_i`` for ``tau_i``. The returned loss is the
  surrogate (``sg`` = stop-gradient)::

      phi_a = sg(tau_i) g_a/sg(u_a) - sg(tau_i g_a/u_a) - s(a, a^+) + tau_i (log sg(u_a) + rho)
      L     = 1/B sum_{i=1}^{B} (phi_{z1_i} + phi_{z2_i})

  whose ``jax.grad`` is exactly that estimator, summed over the two views and divided by ``B``
  (the loss is a batch mean): ``jax.grad(L)`` with respect to ``tau[i]`` is ``2/B`` times
  LibAUC's ``grad_tau`` (the mean of the two views' estimates). Multiply it by ``B/2`` to apply
  the paper's step ``tau_i <- clip(tau_i - eta * m_i, tau_min, tau_max)`` with its ``eta``
  (LibAUC: momentum ``m`` with ``beta = 0.9``, ``eta = 0.01``, clip to ``[0.05, 0.7]``), or use
  a scale-free optimiser (Adam). The network gradient is LibAUC's (which sums the two views).
  Its value, ``1/B sum (tau_i (log u_a + rho) - s(a, a^+))`` summed over views, is ``F``'s
  minibatch estimate with ``g`` replaced by ``u``; with ``gamma = 1`` (or ``u = 0``) it *is*
  ``F``'s minibatch value and the gradient is ``F``'s exact gradient.

  LibAUC's ``u`` estimates ``E exp(s/tau)`` rather than the paper's ``E exp(h/tau)``: the two
  differ by the factor ``exp(-s(a, a^+)/tau)`` and give identical gradients for the same
  estimate; this follows the code. It keeps one ``u`` per example, the mean of the two views'
  ``u_a``, which is what ``aux["u"]`` returns. The zero test for a fresh ``u`` is per example
  here (LibAUC tests whether the whole batch is fresh).

  Typical step: ``(loss, aux), grads = jax.value_and_grad(isogclr, argnums=(0, 1, 2),
  has_aux=True)(z1, z2, tau_table[idx], u_table[idx])``, then ``u_table =
  u_table.at[idx].set(aux["u"])`` and a clipped update of ``tau_table[idx]``; both tables
  start as ``tau = 0.1`` (LibAUC's initial value) and ``u = 0``.

  Args:
    z1: ``[b, D]`` projections of the first view.
    z2: ``[b, D]`` projections of the second view, row ``j`` the same example as in ``z1``.
    tau: ``[b]`` temperatures of these examples (gathered from a per-example table), > 0.
      Values below ``~0.012`` can overflow ``u`` in float32 (``exp(1/tau)``).
    u: ``[b]`` moving-average estimates of these examples from earlier steps, ``0`` for
      examples not seen yet. Used behind a stop-gradient.
    rho: the KL-ball radius ``rho >= 0`` (LibAUC's unimodal default 0.3; the paper tunes it in
      ``[0.1, 0.5]``).
    gamma: moving-average weight of the new estimate, in ``(0, 1]`` (LibAUC's default 0.9).
    axis_name: ``None`` for global arrays (one device, or ``jax.jit`` over a mesh); the mapped
      axis inside ``jax.shard_map``: embeddings are gathered as negatives and the loss is
      ``pmean``-ed; ``tau``, ``u`` and ``aux["u"]`` are the local rows. Shard ``r`` holds
      examples ``r*b .. r*b + b - 1``.

  Returns:
    ``(loss, aux)``: ``loss`` the float32 scalar ``L`` (the same on every device), and
    ``aux = {"u": [b] float32}`` the new moving averages for these examples (no gradient), to
    be written back into the caller's table. Inputs are cast to float32. Norms are clamped at
    ``eps = 1e-6``, so zero embeddings keep the loss and gradients finite.

  Raises:
    ValueError: if ``z1``/``z2`` are not rank 2 or differ in shape, ``tau``/``u`` are not
      ``[b]``, the global batch is below 2 (no negatives), ``rho`` is a number < 0, or
      ``gamma`` is a number outside ``(0, 1]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import isogclr
    >>> z1 = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> z2 = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> tau, u = jnp.array([0.5, 0.5]), jnp.zeros(2)  # u = 0: the first visit, u_a = g_a
    >>> loss, aux = isogclr(z1, z2, tau, u, rho=0.0, gamma=0.9)
    >>> round(float(loss), 4), aux["u"].tolist()  # 2 * (0.5 log 1 - 1); g = mean(e^0, e^0)
    (-2.0, [1.0, 1.0])
  """
  _checks.check_pair("z1", z1, "z2", z2)
  local_batch = z1.shape[0]
  for name, value in (("tau", tau), ("u", u)):
    _checks.check_rank(name, value, 1, "[batch]")
    if value.shape[0] != local_batch:
      raise ValueError(f"{name} must have shape [batch] = ({local_batch},) like z1's first "
                       f"dimension, but got shape {tuple(value.shape)}.")
  if isinstance(rho, (int, float)) and not rho >= 0:
    raise ValueError(f"rho must be >= 0, but got {rho!r}.")
  if isinstance(gamma, (int, float)) and not 0 < gamma <= 1:
    raise ValueError(f"gamma must be in (0, 1], but got {gamma!r}.")
  global_batch = _checks.check_global_batch_size(
      "z1", z1, axis_name, 2, "with a single example an anchor has no negatives")

  z1, z2, tau, u = as_float32(z1, z2, tau, u)
  a1, a2 = l2_normalize(z1), l2_normalize(z2)
  anchors = jnp.concatenate([a1, a2], axis=0)  # [2b, D]
  keys = jnp.concatenate([gather_batch(a1, axis_name), gather_batch(a2, axis_name)], axis=0)
  similarity = _matmul_t(anchors, keys)  # [2b, 2B] cosines

  rows = jnp.arange(local_batch) + batch_offset(local_batch, axis_name)
  self_col = jnp.concatenate([rows, rows + global_batch])
  positive_col = jnp.concatenate([rows + global_batch, rows])
  cols = jnp.arange(2 * global_batch)[None, :]
  is_negative = (cols != self_col[:, None]) & (cols != positive_col[:, None])

  anchor_tau = jnp.concatenate([tau, tau])  # both views of example i use tau_i
  # log g_a in the log domain: exp(s/tau) alone would overflow long before log g does.
  log_g = (_masked_logsumexp(similarity / anchor_tau[:, None], is_negative)
           - jnp.log(2.0 * global_batch - 2.0))
  g = jnp.exp(log_g)
  previous = jax.lax.stop_gradient(jnp.concatenate([u, u]))
  new_u = jnp.where(previous > 0, (1.0 - gamma) * previous + gamma * jax.lax.stop_gradient(g),
                    jax.lax.stop_gradient(g))
  log_u = jnp.log(new_u)
  ratio = jnp.exp(log_g - log_u)  # g / u, differentiable through g only
  weighted = jax.lax.stop_gradient(anchor_tau) * ratio
  positive = jnp.concatenate([jnp.sum(a1 * a2, axis=1)] * 2)  # s(a, a^+)
  # `weighted - sg(weighted)` is 0 in value and carries the gradient (tau/u) dg.
  per_anchor = (weighted - jax.lax.stop_gradient(weighted) - positive
                + anchor_tau * (log_u + rho))
  loss = 2.0 * jnp.mean(per_anchor)
  loss = mean_across_devices(loss, axis_name)
  return loss, {"u": 0.5 * (new_u[:local_batch] + new_u[local_batch:])}


# --- Memory-bank NCE (NPID, PIRL) ---------------------------------------------------------------


def memory_bank_nce(
    z: jax.Array,
    positives: jax.Array,
    negatives: jax.Array,
    *,
    num_data: int,
    temperature: float = 0.07,
    normalizer: float | jax.Array | None = None,
    axis_name: Hashable | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  r"""Noise-contrastive estimation against a memory bank: the loss of NPID and PIRL.

  From Wu, Xiong, Yu and Lin, "Unsupervised Feature Learning via Non-Parametric Instance
  Discrimination", CVPR 2018 (arXiv:1805.01978), eqs. (2)-(7), as PIRL uses it (Misra and van der
  Maaten, "Self-Supervised Learning of Pretext-Invariant Representations", CVPR 2020,
  arXiv:1912.01991, eq. (5)); follows VISSL's ``nce_loss_with_memory`` (``loss_type: nce``).

  Every training image ``i`` of the ``n = num_data`` has an entry ``m_i`` in a memory bank (kept
  by the caller: an exponential moving average of its past embeddings). With unit vectors, the
  probability that embedding ``v`` is image ``j`` is estimated as ``P(j|v) = exp(v . m_j / t) /
  Z``; NCE tells it apart from ``K`` noise samples drawn uniformly (``P_n = 1/n``)::

      h(v, m) = P(v, m) / (P(v, m) + K / n),      P(v, m) = exp(v . m / t) / Z
      L       = -1/B sum_{i=1}^{B} [ log h(z_i, m_i) + sum_{k=1}^{K} log(1 - h(z_i, m_{n_k})) ]

  with ``m_i`` the positive (``positives[i]``, the memory entry of image ``i``) and the ``K``
  ``negatives`` shared by the whole batch. ``Z`` is the partition function: ``normalizer``, or,
  when it is None, the estimate of NPID and VISSL from this batch, ``Z = n * mean(exp(s / t))``
  over every similarity ``s`` of the batch (positives and negatives; no gradient through it):
  VISSL computes it on the first batch and keeps it, so pass ``aux["normalizer"]`` back in.

  Args:
    z: ``[b, D]`` embeddings of the batch's images.
    positives: ``[b, D]`` their memory entries, row ``j`` the same image as ``z``'s.
    negatives: ``[K, D]`` memory entries drawn as noise, the same for every row of the batch
      (VISSL draws ``K`` per image; one shared draw is one gather and one matmul instead of a
      ``[B, K, D]`` gather, the same estimator in expectation). Replicated, not sharded.
    num_data: ``n``, the number of images in the memory bank, >= 1.
    temperature: ``t`` above, > 0 (0.07 in NPID and PIRL).
    normalizer: ``Z`` above, > 0; None estimates it from this batch.
    axis_name: ``None`` for global arrays (one device, or ``jax.jit`` over a mesh); the mapped
      axis inside ``jax.shard_map``, where ``z`` and ``positives`` are the local rows and the
      loss and the estimate of ``Z`` are averaged over the devices.

  Returns:
    ``(loss, aux)``: ``loss`` the float32 scalar ``L`` (the same on every device) and ``aux =
    {"normalizer": Z}``, the float32 scalar used (no gradient). Inputs are cast to float32 and
    l2-normalised (norms clamped at ``eps = 1e-6``).

  Raises:
    ValueError: if ``z``/``positives`` are not ``[b, D]`` of one shape, ``negatives`` is not
      ``[K, D]``, ``num_data`` is not a positive int, or ``temperature`` / a number
      ``normalizer`` is not > 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import memory_bank_nce
    >>> z = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> negatives = jnp.array([[0.0, 1.0], [1.0, 0.0]])  # K = 2
    >>> loss, aux = memory_bank_nce(z, z, negatives, num_data=2, temperature=1.0,
    ...                             normalizer=1.0)
    >>> # per image: h = e / (e + 1) for its positive; 1 - h = 1 / 2 and 1 / (e + 1) for the
    >>> # negatives: -(1 - log(e + 1) - log 2 - log(e + 1)) = 2.3197
    >>> round(float(loss), 4), float(aux["normalizer"])
    (2.3197, 1.0)
  """
  _checks.check_pair("z", z, "positives", positives)
  _checks.check_rank("negatives", negatives, 2, "[K, dim]")
  if negatives.shape[1] != z.shape[1]:
    raise ValueError(f"negatives must have shape [K, dim] with z's dim {z.shape[1]}, but got "
                     f"shape {tuple(negatives.shape)}.")
  if isinstance(num_data, bool) or not isinstance(num_data, numbers.Integral) or num_data < 1:
    raise ValueError(f"num_data must be an int >= 1 (the images in the memory bank), but got "
                     f"{num_data!r}.")
  _checks.check_positive("temperature", temperature)
  if normalizer is not None:
    _checks.check_positive("normalizer", normalizer)
  z, positives, negatives = as_float32(z, positives, negatives)
  z, positives, negatives = l2_normalize(z), l2_normalize(positives), l2_normalize(negatives)
  positive_logit = jnp.sum(z * positives, axis=1) / temperature  # [b]
  negative_logits = _matmul_t(z, negatives) / temperature  # [b, K]
  if normalizer is None:
    scores = jnp.concatenate([positive_logit[:, None], negative_logits], axis=1)
    normalizer = num_data * mean_across_devices(jnp.mean(jnp.exp(scores)), axis_name)
  normalizer = jax.lax.stop_gradient(jnp.asarray(normalizer, jnp.float32))
  # log h and log(1 - h) in the log domain: log P - log(P + K/n) with log P = logit - log Z.
  log_noise = jnp.log(negatives.shape[0] / num_data)
  log_p_positive = positive_logit - jnp.log(normalizer)
  log_p_negative = negative_logits - jnp.log(normalizer)
  log_h = log_p_positive - jnp.logaddexp(log_p_positive, log_noise)
  log_not_h = log_noise - jnp.logaddexp(log_p_negative, log_noise)
  per_example = -(log_h + jnp.sum(log_not_h, axis=1))
  loss = mean_across_devices(jnp.mean(per_example), axis_name)
  return loss, {"normalizer": normalizer}
