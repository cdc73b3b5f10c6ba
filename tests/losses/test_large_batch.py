"""Tests for sslx.losses.large_batch.nt_xent_blockwise: the same value and gradient as nt_xent
(and the float64 reference) for any block size, on one and eight devices, with compiled memory
that grows linearly rather than quadratically in the global batch."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from sslx.losses import nt_xent
from sslx.losses.large_batch import nt_xent_blockwise
from tests.losses.harness import (
    assert_close, check_against_reference, check_sharded_equivalence, make_mesh)
from tests.losses.test_contrastive import random_pair, reference_nt_xent

# Compiled once per shape and block size: the temperature is passed as a traced array, so that
# tests at several temperatures share one program (the CPU is small and shared).
_blockwise = jax.jit(nt_xent_blockwise, static_argnames=("block_size",))
_blockwise_and_grads = jax.jit(
    jax.value_and_grad(nt_xent_blockwise, argnums=(0, 1)), static_argnames=("block_size",))
_plain_and_grads = jax.jit(jax.value_and_grad(nt_xent, argnums=(0, 1)))


def blockwise(z1, z2, *, temperature, block_size):
  return _blockwise(z1, z2, temperature=jnp.float32(temperature), block_size=block_size)


def blockwise_and_grads(z1, z2, *, temperature, block_size):
  return _blockwise_and_grads(z1, z2, temperature=jnp.float32(temperature),
                              block_size=block_size)


def plain_and_grads(z1, z2, *, temperature):
  return _plain_and_grads(z1, z2, temperature=jnp.float32(temperature))


def assert_same_as_nt_xent(z1, z2, temperature, block_size, rtol=1e-5):
  value, (g1, g2) = blockwise_and_grads(z1, z2, temperature=temperature, block_size=block_size)
  expected, (e1, e2) = plain_and_grads(z1, z2, temperature=temperature)
  assert value.dtype == jnp.float32 and value.shape == ()
  assert_close(value, expected, rtol=rtol)
  assert_close(g1, e1, rtol=rtol)
  assert_close(g2, e2, rtol=rtol)


# --- Closed forms ------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 3])
@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_identical_orthogonal_views_closed_form(temperature, block_size):
  # Cosine 1 with the positive, 0 with the two negatives. At t = 0.05 the loss is ~4e-9:
  # rtol=1e-6 checks that the blockwise sum keeps nt_xent's log1p precision for easy anchors.
  expected = math.log(1.0 + 2.0 * math.exp(-1.0 / temperature))
  value = blockwise(jnp.eye(2), 3.0 * jnp.eye(2), temperature=temperature, block_size=block_size)
  np.testing.assert_allclose(value, expected, rtol=1e-6)


@pytest.mark.parametrize("block_size", [1, 3])
def test_swapped_views_closed_form_at_tiny_temperature(block_size):
  # A negative beats the positive by 1/t = 100: the running maximum must shift (exp(100)
  # overflows float32), and with block_size 1 it does so midway through the keys.
  expected = math.log(2.0 + math.exp(100.0))
  value = blockwise(jnp.eye(2), jnp.eye(2)[::-1], temperature=0.01, block_size=block_size)
  np.testing.assert_allclose(value, expected, rtol=1e-6)


# --- Equal to nt_xent and to the float64 reference ---------------------------------------------


# Most tests below share the shape (5, 4) and block size 3, and pass the temperature traced, so
# they reuse one compiled program.
@pytest.mark.parametrize("batch,dim,temperature,block_size", [
    (2, 3, 0.1, 1),     # one key per block
    (5, 4, 0.5, 3),     # 10 keys: blocks 3+3+3+1, the last padded
    (8, 8, 0.07, 16),   # one block, exactly the keys
    (8, 8, 0.07, 100),  # block larger than the keys: cut to them
])
def test_same_value_and_gradient_as_nt_xent(batch, dim, temperature, block_size):
  z1, z2 = random_pair(batch * 10 + dim, batch, dim)
  assert_same_as_nt_xent(z1, z2, temperature, block_size)


def test_same_as_nt_xent_when_negatives_beat_positives_at_small_temperature():
  # Unrelated views at t = 0.02: many margins are large and positive, so the running maximum
  # moves from block to block and earlier sums get rescaled.
  rng = np.random.default_rng(3)
  z1, z2 = rng.normal(size=(2, 5, 4)).astype(np.float32)
  assert_same_as_nt_xent(z1, z2, 0.02, 3)


def test_matches_float64_reference_and_finite_differences():
  batch, dim, temperature, block_size = 6, 3, 0.5, 5  # 12 keys: padded to 15
  z1, z2 = random_pair(batch + 100 * dim, batch, dim)
  check_against_reference(
      functools.partial(nt_xent_blockwise, temperature=temperature, block_size=block_size),
      functools.partial(reference_nt_xent, temperature=temperature), [z1, z2],
      grad_argnums=(0, 1))


def test_gradient_with_respect_to_a_traced_temperature():
  # The temperature stays outside the custom_vjp, so a learned one gets autodiff's gradient.
  z1, z2 = random_pair(4, 5, 4)
  t = jnp.float32(0.3)
  value, grad_t = jax.jit(jax.value_and_grad(
      lambda t: nt_xent_blockwise(z1, z2, temperature=t, block_size=3)))(t)
  expected, expected_t = jax.jit(jax.value_and_grad(
      lambda t: nt_xent(z1, z2, temperature=t)))(t)
  assert_close(value, expected)
  assert_close(grad_t, expected_t)


# --- Invariances -------------------------------------------------------------------------------


def test_joint_batch_permutation_invariance_and_wrong_pairing():
  z1, z2 = random_pair(2, 5, 4)
  perm = np.random.default_rng(0).permutation(5)
  assert not np.array_equal(perm, np.arange(5))
  base = float(blockwise(z1, z2, temperature=0.1, block_size=3))
  np.testing.assert_allclose(
      blockwise(z1[perm], z2[perm], temperature=0.1, block_size=3), base, rtol=1e-6)
  # The guard: pairing each z1 row with another example's z2 must change the loss.
  shifted = np.roll(np.arange(5), 1)
  assert abs(float(blockwise(z1, z2[shifted], temperature=0.1, block_size=3)) - base) > 1e-2


def test_per_row_scaling_and_view_swap_invariance():
  z1, z2 = random_pair(4, 5, 4)
  rng = np.random.default_rng(1)
  s1, s2 = rng.uniform(0.1, 10.0, size=(2, 5, 1)).astype(np.float32)
  base = blockwise(z1, z2, temperature=0.1, block_size=3)
  np.testing.assert_allclose(
      blockwise(s1 * z1, s2 * z2, temperature=0.1, block_size=3), base, rtol=1e-5)
  np.testing.assert_allclose(
      blockwise(z2, z1, temperature=0.1, block_size=3), base, rtol=1e-6)


# --- Dtypes and degenerate inputs --------------------------------------------------------------


def test_bfloat16_inputs_compute_in_float32():
  z1, z2 = random_pair(6, 5, 4)
  low1, low2 = jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16)
  value, (g1, g2) = blockwise_and_grads(low1, low2, temperature=0.1, block_size=3)
  assert value.dtype == jnp.float32
  assert g1.dtype == jnp.bfloat16 and g2.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(g1, np.float32)))
  # The rounded inputs are the only difference: the arithmetic is float32 throughout.
  same_inputs = blockwise(low1.astype(jnp.float32), low2.astype(jnp.float32), temperature=0.1,
                          block_size=3)
  np.testing.assert_allclose(value, same_inputs, rtol=1e-6)
  np.testing.assert_allclose(value, blockwise(z1, z2, temperature=0.1, block_size=3), rtol=2e-2)


def test_all_zero_embeddings_give_uniform_loss_and_finite_gradient():
  zeros = jnp.zeros((5, 4))
  value, (g1, g2) = blockwise_and_grads(zeros, zeros, temperature=0.1, block_size=3)
  # Every similarity is 0: each anchor's softmax is uniform over its 2B - 1 candidates.
  np.testing.assert_allclose(value, math.log(9), rtol=1e-6)
  assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))


def test_some_zero_embeddings_match_nt_xent():
  z1, z2 = random_pair(7, 5, 4)
  z1[1] = 0.0
  z2[3] = 0.0
  assert_same_as_nt_xent(z1, z2, 0.2, 3)
  np.testing.assert_allclose(blockwise(z1, z2, temperature=0.2, block_size=3),
                             reference_nt_xent(z1, z2, 0.2), rtol=1e-5)


@pytest.mark.parametrize("block_size", [0, -3])
def test_non_positive_block_size(block_size):
  with pytest.raises(ValueError, match=rf"block_size must be > 0, but got {block_size}"):
    nt_xent_blockwise(jnp.ones((2, 4)), jnp.ones((2, 4)), block_size=block_size)


@pytest.mark.parametrize("block_size", [2.0, True, None, np.float32(4)])
def test_non_integer_block_size(block_size):
  with pytest.raises(ValueError, match=r"block_size must be a Python int > 0, but got"):
    nt_xent_blockwise(jnp.ones((2, 4)), jnp.ones((2, 4)), block_size=block_size)


def test_numpy_integer_block_size_is_accepted():
  z1, z2 = random_pair(8, 5, 4)
  np.testing.assert_allclose(blockwise(z1, z2, temperature=0.1, block_size=np.int64(3)),
                             blockwise(z1, z2, temperature=0.1, block_size=3), rtol=1e-6)


@pytest.mark.parametrize("temperature", [0, -0.5, float("nan")])
def test_non_positive_temperature(temperature):
  with pytest.raises(ValueError, match=r"temperature must be > 0, but got"):
    nt_xent_blockwise(jnp.ones((2, 4)), jnp.ones((2, 4)), temperature=temperature)


@pytest.mark.parametrize("bad_shape", [(8,), (2, 4, 3)])
@pytest.mark.parametrize("which", ["z1", "z2"])
def test_wrong_rank_names_argument_and_shapes(bad_shape, which):
  good, bad = jnp.ones((2, 4)), jnp.ones(bad_shape)
  args = (bad, good) if which == "z1" else (good, bad)
  pattern = (rf"{which} must have rank 2 with shape \[batch, dim\].*"
             rf"{re.escape(str(bad_shape))} \(rank {len(bad_shape)}\)")
  with pytest.raises(ValueError, match=pattern):
    nt_xent_blockwise(*args)


def test_mismatched_shapes_name_argument_and_shapes():
  pattern = r"z2 must have the same shape as z1: expected \(4, 4\).*z2 with shape \(3, 4\)"
  with pytest.raises(ValueError, match=pattern):
    nt_xent_blockwise(jnp.ones((4, 4)), jnp.ones((3, 4)))


def test_batch_of_one_has_no_negatives():
  pattern = r"global batch size \(z1.shape\[0\], z1 of shape \(1, 4\)\) must be at least 2.*got 1"
  with pytest.raises(ValueError, match=pattern):
    nt_xent_blockwise(jnp.ones((1, 4)), jnp.ones((1, 4)))


# --- Sharded over 8 devices --------------------------------------------------------------------


@pytest.mark.parametrize("global_batch,block_size", [(16, 3), (8, 64)])
def test_same_value_and_gradient_on_one_and_eight_devices(global_batch, block_size):
  # Local batch 2 (4 keys per shard, blocks of 3: padded) and 1 (block cut to the 2 keys). The
  # shard_map settings run the ppermute ring; the jit settings the global path.
  z1, z2 = random_pair(10 + global_batch, global_batch, 6)
  fn = functools.partial(nt_xent_blockwise, temperature=0.2, block_size=block_size)
  check_sharded_equivalence(fn, [z1, z2], grad_argnums=(0, 1))
  # ... and the single-device value the harness compares against is nt_xent's.
  assert_same_as_nt_xent(z1, z2, 0.2, block_size)


# --- Memory ------------------------------------------------------------------------------------

MEMORY_BATCHES = (512, 1024, 2048)


def temp_bytes(fn, batch, dim=32, sharding=None):
  """Compiled scratch memory of value_and_grad(fn); compiles only, runs nothing."""
  x = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=sharding)
  compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(x, x).compile()
  stats = compiled.memory_analysis()
  # XLA's CPU backend (what the tests run on) reports it; failing beats silently skipping.
  assert stats is not None and hasattr(stats, "temp_size_in_bytes"), (
      f"memory_analysis() gives no temp_size_in_bytes on {jax.default_backend()}")
  return stats.temp_size_in_bytes


def growth(sizes):
  return [b / a for a, b in zip(sizes, sizes[1:])]


def test_memory_grows_linearly_not_quadratically_on_one_device():
  # On jax 0.10 CPU: nt_xent ~3.9x per doubling (the [2B, 2B] logits and their gradient),
  # blockwise 2.0x (embeddings and [2B, 128] blocks).
  plain = growth([temp_bytes(nt_xent, b) for b in MEMORY_BATCHES])
  block = growth([temp_bytes(functools.partial(nt_xent_blockwise, block_size=128), b)
                  for b in MEMORY_BATCHES])
  assert all(r > 3 for r in plain), plain
  assert all(r < 2.6 for r in block), block


def test_memory_per_device_grows_linearly_in_the_shard_map_ring():
  # Per device, nt_xent gathers all 2B keys and forms [2b, 2B] logits (3.5x from 512 to 1024
  # on 8 devices); the ring holds one visiting shard and one block (2.0x).
  mesh = make_mesh(AxisType.Explicit)
  sharding = NamedSharding(mesh, P("data"))

  def per_device(loss_fn, batch):
    wrapped = jax.shard_map(functools.partial(loss_fn, axis_name="data"), mesh=mesh,
                            in_specs=(P("data"), P("data")), out_specs=P())
    with jax.set_mesh(mesh):
      return temp_bytes(wrapped, batch, sharding=sharding)

  batches = MEMORY_BATCHES[:2]  # one doubling: shard_map programs are slower to compile
  plain = growth([per_device(nt_xent, b) for b in batches])
  block = growth([per_device(functools.partial(nt_xent_blockwise, block_size=64), b)
                  for b in batches])
  assert all(r > 3 for r in plain), plain
  assert all(r < 2.6 for r in block), block
