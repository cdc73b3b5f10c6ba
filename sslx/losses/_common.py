"""Array helpers shared by the losses: safe normalisation and cross-device batch handling.

Every loss takes ``axis_name=None`` for global arrays (one device, or ``jax.jit`` over a mesh)
or a mapped axis name inside ``jax.shard_map``; the helpers here hide that difference.
"""

from collections.abc import Hashable

import jax
import jax.numpy as jnp

# Norms are clamped at this value before dividing, so an all-zero embedding normalises to zero
# (similarity 0 with everything) with a finite gradient instead of 0/0. It only affects vectors
# whose norm is below 1e-6, far from anything a projector head produces in practice.
NORM_EPS = 1e-6


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """``x / max(|x|, NORM_EPS)`` along ``axis``."""
  # max(|x|^2, eps^2) rather than |x| + eps: the result stays exactly unit-norm for ordinary
  # vectors (so scaling the input is a no-op) and sqrt is never evaluated at 0, whose derivative
  # is infinite.
  sq_norm = jnp.sum(x * x, axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq_norm, NORM_EPS**2))


def replicate_axis(x: jax.Array, axis: int) -> jax.Array:
  """Removes a mesh sharding of dimension ``axis`` of ``x`` from its type (an all-gather).

  On a mesh with Explicit axes (the default of ``jax.make_mesh`` in jax 0.10 and 0.12), the batch
  sharding is part of the array's type, and ``anchors @ keys.T`` with both operands sharded on
  the batch would need an output sharded twice over the same axis, a ShardingTypeError.
  Replicating the keys' batch dimension is what an Auto mesh does implicitly. Auto meshes and
  shard_map bodies carry no batch sharding in the type: there this returns ``x`` unchanged.
  """
  sharding = jax.typeof(x).sharding
  spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
  if not spec or spec[axis] is None:
    return x
  spec = spec[:axis] + (None,) + spec[axis + 1:]
  return jax.sharding.reshard(x, sharding.update(spec=jax.sharding.PartitionSpec(*spec)))


def replicate_rows(x: jax.Array) -> jax.Array:
  """``replicate_axis(x, 0)``: the whole batch on every device, for global arrays."""
  return replicate_axis(x, 0)


def take_rows(table: jax.Array, indices: jax.Array) -> jax.Array:
  """``table[indices]`` for a replicated ``table`` and batch ``indices``.

  On an Explicit mesh a gather with batch-sharded indices needs its output sharding spelled out
  (a plain ``jnp.take`` raises ShardingTypeError): the rows come out sharded like the indices.
  """
  spec = tuple(jax.typeof(indices).sharding.spec)
  if not spec or spec[0] is None:
    return jnp.take(table, indices, axis=0)
  return table.at[indices].get(
      out_sharding=jax.sharding.PartitionSpec(spec[0], *([None] * (table.ndim - 1))))


def num_shards(axis_name: Hashable | None) -> int:
  """How many pieces the global batch is split into: 1 for global arrays."""
  return 1 if axis_name is None else jax.lax.axis_size(axis_name)


def gather_batch(x: jax.Array, axis_name: Hashable | None) -> jax.Array:
  """The global batch: ``x`` itself for global arrays, else the shards concatenated in axis
  order (shard ``r`` holds rows ``r*b .. r*b + b - 1``, as ``in_specs=P(axis)`` gives).

  ``all_gather`` transposes to ``psum_scatter``, so gradients flowing back through the gathered
  rows reach the device that owns them, summed over every device that used them.
  """
  if axis_name is None:
    return replicate_rows(x)
  return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def batch_offset(local_batch: int, axis_name: Hashable | None) -> jax.Array | int:
  """Global index of this shard's first row."""
  if axis_name is None:
    return 0
  return jax.lax.axis_index(axis_name) * local_batch


def gather_batch_invariant(
    x: jax.Array, axis_name: Hashable | None, axis: int = 0) -> jax.Array:
  """Like ``gather_batch`` (along ``axis``), but typed invariant across ``axis_name``.

  ``all_gather``'s output is typed varying under ``shard_map`` (check_vma=True), so state built
  from it (a queue) could not be returned with ``out_specs=P()``. Writing the local rows into a
  zero buffer at this shard's offset and ``psum``-ing gives the same array, typed invariant.
  For state updates outside the gradient, where the psum's extra cost is irrelevant.
  """
  if axis_name is None:
    return replicate_axis(x, axis)
  local_batch = x.shape[axis]
  shape = x.shape[:axis] + (local_batch * jax.lax.axis_size(axis_name),) + x.shape[axis + 1:]
  placed = jax.lax.dynamic_update_slice_in_dim(
      jnp.zeros(shape, x.dtype), x, batch_offset(local_batch, axis_name), axis=axis)
  return jax.lax.psum(placed, axis_name)


def batch_mean(x: jax.Array, axis_name: Hashable | None, axis: int = 0) -> jax.Array:
  """Mean over the global batch along ``axis`` (shards must have equal sizes)."""
  mean = jnp.mean(x, axis=axis)
  return mean if axis_name is None else jax.lax.pmean(mean, axis_name)


def mean_across_devices(x: jax.Array, axis_name: Hashable | None) -> jax.Array:
  """``x`` averaged over ``axis_name`` (a no-op for global arrays): with equal shard sizes, the
  mean of the local batch means is the global batch mean."""
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def batch_sum(x: jax.Array, axis_name: Hashable | None, axis: int = 0) -> jax.Array:
  """Sum over the global batch along ``axis``."""
  total = jnp.sum(x, axis=axis)
  return total if axis_name is None else jax.lax.psum(total, axis_name)


def as_float32(*arrays: jax.Array) -> list[jax.Array]:
  """Casts inputs to float32: losses compute in float32 whatever the activations' dtype."""
  return [jnp.asarray(a, jnp.float32) for a in arrays]
