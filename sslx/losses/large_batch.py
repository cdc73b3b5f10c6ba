"""Contrastive losses for large global batches, computed without the ``[2B, 2B]`` logits.

``nt_xent`` materialises every anchor-key similarity at once, and its gradient keeps them for
the backward pass: memory grows with the square of the global batch ``B`` (a global batch of
16384 is 4 GiB of float32 logits, per copy). ``nt_xent_blockwise`` computes the same value and
gradient from blocks of keys, flash-attention style, so that its memory grows linearly in ``B``.
"""

import functools
import numbers
from collections.abc import Hashable

import jax
import jax.numpy as jnp

from sslx.losses import _checks
from sslx.losses._common import (
    as_float32, l2_normalize, mean_across_devices, num_shards, replicate_rows)

# Keys per block. Each block's logits are [2b, block_size] float32 (b the local batch), so the
# working set is 2b * block_size floats; 256 keeps it near the size of the embeddings themselves
# for projector widths around 128-256, while blocks stay large enough for an efficient matmul.
DEFAULT_BLOCK_SIZE = 256


def nt_xent_blockwise(
    z1: jax.Array,
    z2: jax.Array,
    *,
    temperature: float | jax.Array = 0.1,
    block_size: int = DEFAULT_BLOCK_SIZE,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""NT-Xent (SimCLR) with memory linear in the global batch: ``nt_xent``, computed blockwise.

  From Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for Contrastive Learning of
  Visual Representations", ICML 2020 (arXiv:2002.05709), eq. (1). The value and the gradient
  are those of :func:`sslx.losses.nt_xent` (same layout, norm clamp and ``log1p`` numerics); see
  its docstring for the definitions. With ``u = [z1; z2]`` normalised (``2B`` rows), ``p(i) =
  (i + B) mod 2B`` the positive of anchor ``i``, cosine similarities ``s_ik`` and temperature
  ``t``::

      l_i = log(1 + sum_{k != i, p(i)} exp((s_ik - s_{i,p(i)}) / t))
      L   = 1/(2B) * sum_{i=1}^{2B} l_i

  which is ``-log(exp(s_{i,p(i)}/t) / sum_{k != i} exp(s_ik/t))`` rewritten so that easy
  anchors keep their precision.

  How: a ``jax.custom_vjp`` whose forward pass visits the keys in blocks of ``block_size``
  rows and keeps, per anchor, a running maximum and a rescaled running sum of
  ``exp(margin)`` (an online log-sum-exp), so only one ``[2b, block_size]`` block of logits
  exists at a time. It saves O(b) residuals (the normalised embeddings and each ``l_i``); the
  backward pass recomputes each block's softmax weights ``w_ik = exp(margin_ik - l_i) =
  dl_i/dmargin_ik`` and accumulates the gradients of anchors and keys block by block. Norm
  clamping and the temperature are outside the ``custom_vjp``, so their gradients (a learned
  temperature included) come from ordinary autodiff.

  Memory, by setting (``b`` the local batch, ``D`` the dimension, ``n`` the axis size):

  * One device, ``axis_name=None``: O(B * (D + block_size)) instead of O(B^2).
  * Inside ``jax.shard_map`` with ``axis_name`` set (the scalable path): a ring. Each device
    keeps its ``2b`` anchors and passes its ``2b`` keys around the axis with ``ppermute``,
    ``n - 1`` hops; at every hop it scans the visiting keys block by block. No device ever
    holds more than its own keys plus one visiting shard, and no logits beyond one block: O(b *
    (D + block_size)) per device, whatever ``n``. In the backward pass each visiting shard
    carries an accumulator of its keys' gradient around the ring and one more hop brings it
    home to the owning device, summed over every device's anchors (what ``all_gather``'s
    transpose, ``psum_scatter``, does for ``nt_xent``).
  * Under ``jax.jit`` with batch-sharded global arrays and ``axis_name=None``: correct value
    and gradient (the keys are replicated like ``nt_xent``'s, and XLA inserts the
    collectives), and no ``[2B, 2B]`` logits, but each device holds all ``2B`` keys and its
    anchors' ``[2b, block_size]`` block. Prefer ``shard_map`` at scale.

  Args:
    z1: ``[b, D]`` projections of the first view.
    z2: ``[b, D]`` projections of the second view; row ``j`` is the same example as row ``j``
      of ``z1``.
    temperature: ``t`` above, > 0. Python numbers are checked; a (traced) array is used as is,
      so a learned temperature works.
    block_size: keys per block, a Python int > 0; peak memory grows with ``2b * block_size``,
      and per-block overhead with ``2B / block_size``. It need not divide anything: the keys
      of each shard (``2b`` rows; ``2B`` without ``axis_name``) are padded with masked rows up
      to a multiple of the block, and a ``block_size`` larger than a shard is cut to the shard.
    axis_name: as for ``nt_xent``: ``None`` for global arrays (one device, or ``jax.jit`` over a
      mesh), or the mapped axis inside ``jax.shard_map`` where shard ``r`` holds examples
      ``r*b .. r*b + b - 1`` (``in_specs=P(axis)``). All shards must have the same ``b``.

  Returns:
    A float32 scalar: the loss ``L`` over the global batch. Inputs of any float dtype are cast
    to float32 and the similarity matmuls run at full float32 precision. Zero vectors behave
    as in ``nt_xent`` (norms clamped at 1e-6: similarity 0 with everything, finite loss and
    gradient). With ``axis_name`` the value is the same ``L`` on every device, and gradients
    follow ``nt_xent``'s rules under ``shard_map``: with the default ``check_vma=True``,
    ``jax.grad`` inside the body gives ``dL/d(local shard)`` on each device, and replicated
    parameters' gradients come back already summed.

  Raises:
    ValueError: if ``z1`` or ``z2`` is not rank 2, their shapes differ, the global batch is
      smaller than 2, ``temperature`` is a number <= 0, or ``block_size`` is not an int > 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import nt_xent_blockwise
    >>> z1 = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> z2 = jnp.array([[2.0, 0.0], [0.0, 3.0]])  # same directions: cosine 1 with the positive
    >>> loss = nt_xent_blockwise(z1, z2, temperature=1.0, block_size=3)  # = log(1 + 2/e)
    >>> loss.dtype, round(float(loss), 4)
    (dtype('float32'), 0.5514)
  """
  _checks.check_pair("z1", z1, "z2", z2)
  _checks.check_positive("temperature", temperature)
  # bool is an int subclass, but block_size=True is surely a mistake.
  if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral):
    raise ValueError(f"block_size must be a Python int > 0, but got {block_size!r}.")
  _checks.check_positive("block_size", block_size)

  z1, z2 = as_float32(z1, z2)
  _checks.check_global_batch_size(
      "z1", z1, axis_name, 2, "with a single example an anchor has no negatives")

  anchors1 = l2_normalize(z1)
  anchors2 = l2_normalize(z2)
  anchors = jnp.concatenate([anchors1, anchors2], axis=0)  # [2b, D]
  partners = jnp.concatenate([anchors2, anchors1], axis=0)
  positive = jnp.sum(anchors * partners, axis=1) / temperature  # [2b]
  # Dividing the anchors rather than the logits keeps the temperature out of the custom_vjp:
  # its gradient (for a learned temperature) then comes from autodiff through these two lines.
  queries = anchors / temperature
  # Without an axis the keys are the global batch; on an Explicit mesh their batch sharding
  # must leave the type, as in nt_xent. With an axis, the local keys travel around the ring.
  keys = replicate_rows(anchors) if axis_name is None else anchors

  per_anchor = _negatives_log1p(queries, keys, positive, axis_name, int(block_size))
  loss = jnp.mean(per_anchor)
  # Equal shard sizes make the mean of local means the global mean.
  loss = mean_across_devices(loss, axis_name)
  return loss


# --- The blockwise core ------------------------------------------------------------------------
#
# _negatives_log1p(queries, keys, positive) returns, for each local anchor i,
#     l_i = log(1 + sum_{k negative for i} exp(queries_i . keys_k - positive_i))
# where k runs over the global keys. `keys` holds this device's shard of them in the layout
# [view-1 rows; view-2 rows]; shard `src` of an axis of size n holds global columns
# src*b .. src*b + b - 1 (view 1) and B + src*b .. B + src*b + b - 1 (view 2), as in nt_xent's
# gathered keys. Without an axis there is one shard, the whole global batch.


def _ring_position(local_rows: int, axis_name: Hashable | None):
  """(this shard's index, number of shards, examples per shard, global batch)."""
  b = local_rows // 2
  n = num_shards(axis_name)
  r = 0 if axis_name is None else jax.lax.axis_index(axis_name)
  return r, n, b, n * b


def _anchor_columns(r, b: int, global_batch: int):
  """Global key columns of each local anchor itself and of its positive: [2b] each."""
  rows = jnp.arange(b) + r * b
  self_col = jnp.concatenate([rows, rows + global_batch])
  positive_col = jnp.concatenate([rows + global_batch, rows])
  return self_col, positive_col


def _blocks(keys: jax.Array, src, b: int, global_batch: int, block_size: int):
  """Splits shard ``src``'s ``[2b, D]`` keys into ``[num_blocks, size, D]`` blocks, padded with
  zero rows, and gives each row its global column (-1 for padding, which is never a negative)."""
  rows, dim = keys.shape
  size = min(block_size, rows)
  pad = -rows % size
  j = jnp.arange(rows)
  cols = jnp.where(j < b, src * b + j, global_batch + src * b + (j - b))
  if pad:
    keys = jnp.pad(keys, ((0, pad), (0, 0)))
    cols = jnp.concatenate([cols, jnp.full((pad,), -1, cols.dtype)])
  num_blocks = (rows + pad) // size
  return keys.reshape(num_blocks, size, dim), cols.reshape(num_blocks, size)


def _margins(queries, positive, key_block, cols, self_col, positive_col):
  """``[2b, size]`` margins of each key over each anchor's positive; -inf where the key is not
  a negative (the anchor itself, its positive, padding), so that exp gives exactly 0."""
  logits = jnp.matmul(queries, key_block.T, precision=jax.lax.Precision.HIGHEST)
  is_negative = ((cols[None, :] != self_col[:, None]) & (cols[None, :] != positive_col[:, None])
                 & (cols[None, :] >= 0))
  return jnp.where(is_negative, logits - positive[:, None], -jnp.inf)


def _key_cotangent(c: jax.Array, queries: jax.Array, key_block: jax.Array) -> jax.Array:
  """``c.T @ queries``, a contraction over the anchors' dimension.

  On an Explicit mesh without ``axis_name`` both operands are sharded along that dimension, and
  JAX asks for the output sharding: the keys' (replicated rows), i.e. a sum over devices.
  """
  sharding = jax.typeof(queries).sharding
  spec = tuple(sharding.spec)
  out_sharding = jax.typeof(key_block).sharding if spec and spec[0] is not None else None
  return jnp.matmul(c.T, queries, precision=jax.lax.Precision.HIGHEST, out_sharding=out_sharding)


def _shift(x, axis_name: Hashable, n: int):
  """Sends each device's ``x`` to the next device of the ring."""
  return jax.lax.ppermute(x, axis_name, perm=[(i, (i + 1) % n) for i in range(n)])


def _forward(queries, keys, positive, axis_name, block_size):
  r, n, b, global_batch = _ring_position(queries.shape[0], axis_name)
  self_col, positive_col = _anchor_columns(r, b, global_batch)

  def visit(stats, visiting, src):
    def step(stats, block):
      running_max, running_sum = stats
      key_block, cols = block
      margins = _margins(queries, positive, key_block, cols, self_col, positive_col)
      # Online log-sum-exp. The maximum starts at 0, nt_xent's clamp m = max(max margin, 0):
      # exp never overflows, and when no margin is positive nothing is ever rescaled.
      new_max = jnp.maximum(running_max, jnp.max(margins, axis=1))
      running_sum = (running_sum * jnp.exp(running_max - new_max)
                     + jnp.sum(jnp.exp(margins - new_max[:, None]), axis=1))
      return (new_max, running_sum), None

    stats, _ = jax.lax.scan(step, stats, _blocks(visiting, src, b, global_batch, block_size))
    return stats

  # zeros_like keeps the anchors' sharding / varying type, which the scan carries must match.
  stats = visit((jnp.zeros_like(positive), jnp.zeros_like(positive)), keys, r)
  if n > 1:
    def hop(carry, s):
      stats, visiting = carry
      visiting = _shift(visiting, axis_name, n)  # after s hops: the keys of device r - s
      return (visit(stats, visiting, (r - s) % n), visiting), None

    (stats, _), _ = jax.lax.scan(hop, (stats, keys), jnp.arange(1, n))
  m, shifted_sum = stats
  # As in nt_xent: log1p keeps an easy anchor's tiny loss precise, and expm1(-m) is exactly 0
  # when no shift was needed (m = 0).
  per_anchor = m + jnp.log1p(shifted_sum + jnp.expm1(-m))
  return per_anchor, (queries, keys, positive, per_anchor)


def _backward(axis_name, block_size, residuals, g):
  queries, keys, positive, per_anchor = residuals
  r, n, b, global_batch = _ring_position(queries.shape[0], axis_name)
  self_col, positive_col = _anchor_columns(r, b, global_batch)

  def visit(d_queries, visiting, src):
    def step(d_queries, block):
      key_block, cols = block
      margins = _margins(queries, positive, key_block, cols, self_col, positive_col)
      # dl_i/dmargin_ik = exp(margin_ik) / (1 + sum) = exp(margin_ik - l_i) <= 1: no overflow,
      # and exactly 0 for non-negatives (margin -inf).
      c = g[:, None] * jnp.exp(margins - per_anchor[:, None])  # dL/dlogit_ik
      d_queries = d_queries + jnp.matmul(c, key_block, precision=jax.lax.Precision.HIGHEST)
      return d_queries, _key_cotangent(c, queries, key_block)

    blocks = _blocks(visiting, src, b, global_batch, block_size)
    d_queries, d_blocks = jax.lax.scan(step, d_queries, blocks)
    return d_queries, d_blocks.reshape(-1, keys.shape[1])[:keys.shape[0]]  # drop padding

  d_queries, d_keys = visit(jnp.zeros_like(queries), keys, r)
  if n > 1:
    def hop(carry, s):
      d_queries, visiting, d_visiting = carry
      # The keys' gradient accumulator travels with the keys it belongs to.
      visiting, d_visiting = _shift((visiting, d_visiting), axis_name, n)
      d_queries, d_keys = visit(d_queries, visiting, (r - s) % n)
      return (d_queries, visiting, d_visiting + d_keys), None

    (d_queries, _, d_keys), _ = jax.lax.scan(hop, (d_queries, keys, d_keys), jnp.arange(1, n))
    # After n - 1 hops device r holds device r + 1's accumulator: one more hop takes it home.
    d_keys = _shift(d_keys, axis_name, n)
  # dl_i/dpositive_i = -sum_k w_ik = -sum / (1 + sum) = expm1(-l_i), exactly, at no cost.
  d_positive = g * jnp.expm1(-per_anchor)
  return d_queries, d_keys, d_positive


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _negatives_log1p(queries, keys, positive, axis_name, block_size):
  return _forward(queries, keys, positive, axis_name, block_size)[0]


_negatives_log1p.defvjp(_forward, _backward)
