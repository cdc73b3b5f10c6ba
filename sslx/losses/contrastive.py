"""Contrastive losses."""

from collections.abc import Hashable

import jax
import jax.numpy as jnp

from sslx.losses import _checks
from sslx.losses._common import as_float32, batch_offset, l2_normalize, replicate_rows

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
      or Explicit axes): the arrays are global and XLA inserts the collectives. Inside ``jax.shard_map`` (or another map that binds an
      axis name), pass the mapped axis: ``z1``/``z2`` are then the local shards, every device's
      embeddings are gathered with ``all_gather`` to serve as negatives, and shard ``r`` holds
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
  _checks.check_rank("z1", z1, 2, "[batch, dim]")
  _checks.check_rank("z2", z2, 2, "[batch, dim]")
  _checks.check_same_shape("z1", z1, "z2", z2)
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

  rows = jnp.arange(local_batch) + batch_offset(local_batch, axis_name)  # global example index of each local row
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

  if axis_name is not None:
    # Equal shard sizes make the mean of local means the global mean.
    loss = jax.lax.pmean(loss, axis_name)
  return loss
