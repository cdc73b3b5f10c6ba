"""Tests for sslx.losses.nt_xent against closed forms, an independent float64 reference, and the
same loss computed on one device versus sharded over the 8 fake CPU devices of conftest.py."""

import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from sslx.losses import nt_xent
from tests.losses.harness import (
    assert_close, check_sharded_equivalence, finite_difference_grad, make_mesh)

NORM_EPS = 1e-6  # the clamp documented in nt_xent's docstring


# --- Independent reference -------------------------------------------------------------------


def reference_nt_xent(z1, z2, temperature):
  """SimCLR eq. (1) in float64, written from the paper rather than from the code under test.

  The paper numbers the 2N augmented examples so that (2k-1, 2k) are the two views of example k
  and averages l(i, j) over all 2N ordered positive pairs; this interleaved layout deliberately
  differs from the [z1; z2] stacking the implementation uses.
  """
  z1 = np.asarray(z1, np.float64)
  z2 = np.asarray(z2, np.float64)
  n, d = z1.shape
  z = np.empty((2 * n, d))
  z[0::2] = z1
  z[1::2] = z2
  u = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), NORM_EPS)
  total = 0.0
  for i in range(2 * n):
    j = i + 1 if i % 2 == 0 else i - 1  # the other view of the same example
    sim = u @ u[i] / temperature
    denominator = np.sum(np.exp(np.delete(sim, i)))  # 1[k != i]
    total += -np.log(np.exp(sim[j]) / denominator)
  return total / (2 * n)


def random_pair(seed, batch, dim, dtype=np.float32):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(batch, dim)).astype(dtype)
  # Correlated views, as a trained projector gives, so positives are not just another negative.
  z2 = (z1 + 0.5 * rng.normal(size=(batch, dim))).astype(dtype)
  return z1, z2


# Jitted once per shape and temperature: one compiled program is much cheaper than running the
# loss op by op, and it is how the loss is used.
loss = jax.jit(nt_xent, static_argnames=("temperature",))
loss_and_grads = jax.jit(
    jax.value_and_grad(nt_xent, argnums=(0, 1)), static_argnames=("temperature",))


# --- Closed forms ------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
def test_identical_orthogonal_views_closed_form(temperature):
  # Each anchor: cosine 1 with its positive, 0 with its two negatives. At t = 0.05 the loss is
  # ~4e-9, so rtol=1e-6 also checks that easy anchors keep their precision in float32.
  z1 = jnp.eye(2)
  z2 = 3.0 * jnp.eye(2)
  expected = math.log(1.0 + 2.0 * math.exp(-1.0 / temperature))
  np.testing.assert_allclose(loss(z1, z2, temperature=temperature), expected, rtol=1e-6)


@pytest.mark.parametrize("temperature", [0.01, 0.2, 1.0])
def test_swapped_views_closed_form(temperature):
  # z2 rows are swapped: the positive is orthogonal (cosine 0) and one negative is identical
  # (cosine 1), the other negative orthogonal.
  z1 = jnp.eye(2)
  z2 = jnp.eye(2)[::-1]
  expected = math.log(2.0 + math.exp(1.0 / temperature))
  np.testing.assert_allclose(loss(z1, z2, temperature=temperature), expected, rtol=1e-6)


# --- Reference value and gradient --------------------------------------------------------------


@pytest.mark.parametrize("batch,dim,temperature", [(2, 3, 0.1), (5, 4, 0.5), (8, 16, 0.07)])
def test_matches_reference_value_and_finite_difference_gradient(batch, dim, temperature):
  z1, z2 = random_pair(batch * 100 + dim, batch, dim)
  value, (g1, g2) = loss_and_grads(jnp.asarray(z1), jnp.asarray(z2), temperature=temperature)
  assert value.dtype == jnp.float32 and value.shape == ()

  expected = reference_nt_xent(z1, z2, temperature)
  np.testing.assert_allclose(value, expected, rtol=1e-5)

  expected_g1 = finite_difference_grad(lambda x: reference_nt_xent(x, z2, temperature), z1)
  expected_g2 = finite_difference_grad(lambda x: reference_nt_xent(z1, x, temperature), z2)
  assert_close(g1, expected_g1, rtol=2e-5)
  assert_close(g2, expected_g2, rtol=2e-5)


def test_temperature_can_be_a_traced_array():
  z1, z2 = random_pair(1, 6, 5)
  value = jax.jit(nt_xent)(z1, z2, temperature=jnp.float32(0.3))
  np.testing.assert_allclose(value, reference_nt_xent(z1, z2, 0.3), rtol=1e-5)


# --- Invariances -------------------------------------------------------------------------------


def test_joint_batch_permutation_invariance():
  z1, z2 = random_pair(2, 10, 6)
  perm = np.random.default_rng(0).permutation(10)
  assert not np.array_equal(perm, np.arange(10))
  np.testing.assert_allclose(
      loss(z1[perm], z2[perm]), loss(z1, z2), rtol=1e-6)


def test_permuting_one_view_only_changes_the_loss():
  # Guards the permutation test above against a loss that ignores which rows are positives.
  z1, z2 = random_pair(2, 10, 6)
  perm = np.roll(np.arange(10), 1)
  assert abs(float(loss(z1, z2[perm])) - float(loss(z1, z2))) > 1e-2


@pytest.mark.parametrize("scale", [1e-3, 0.5, 7.0, 1e3])
def test_positive_scaling_invariance(scale):
  z1, z2 = random_pair(3, 6, 4)
  np.testing.assert_allclose(loss(scale * z1, scale * z2), loss(z1, z2), rtol=1e-5)


def test_per_row_positive_scaling_invariance():
  # Cosine similarity ignores each embedding's norm, not just a global one.
  z1, z2 = random_pair(4, 6, 4)
  rng = np.random.default_rng(1)
  s1 = rng.uniform(0.1, 10.0, size=(6, 1)).astype(np.float32)
  s2 = rng.uniform(0.1, 10.0, size=(6, 1)).astype(np.float32)
  np.testing.assert_allclose(loss(s1 * z1, s2 * z2), loss(z1, z2), rtol=1e-5)


def test_swapping_views_invariance():
  z1, z2 = random_pair(5, 7, 3)
  np.testing.assert_allclose(loss(z2, z1), loss(z1, z2), rtol=1e-6)


# --- Dtypes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_compute_in_float32(dtype):
  z1, z2 = random_pair(6, 8, 16)
  low1, low2 = jnp.asarray(z1, dtype), jnp.asarray(z2, dtype)
  value, (g1, g2) = loss_and_grads(low1, low2, temperature=0.1)
  assert value.dtype == jnp.float32
  assert g1.dtype == dtype and g2.dtype == dtype
  assert np.all(np.isfinite(np.asarray(g1, np.float32)))
  # The rounded inputs are the only difference: the arithmetic is float32 throughout.
  same_inputs_f32 = loss(low1.astype(jnp.float32), low2.astype(jnp.float32), temperature=0.1)
  np.testing.assert_allclose(value, same_inputs_f32, rtol=1e-6)
  np.testing.assert_allclose(value, loss(z1, z2, temperature=0.1), rtol=2e-2)


# --- Degenerate inputs and errors --------------------------------------------------------------


def test_all_zero_embeddings_give_uniform_loss_and_finite_gradient():
  batch = 4
  zeros = jnp.zeros((batch, 3))
  value, (g1, g2) = loss_and_grads(zeros, zeros, temperature=0.1)
  # Every similarity is 0, so each anchor's softmax is uniform over its 2B - 1 candidates.
  np.testing.assert_allclose(value, math.log(2 * batch - 1), rtol=1e-6)
  assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))


def test_some_zero_embeddings_match_reference_with_finite_gradient():
  z1, z2 = random_pair(7, 5, 4)
  z1[1] = 0.0
  z2[3] = 0.0
  value, (g1, g2) = loss_and_grads(jnp.asarray(z1), jnp.asarray(z2), temperature=0.2)
  np.testing.assert_allclose(value, reference_nt_xent(z1, z2, 0.2), rtol=1e-5)
  assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))


def test_batch_of_one_has_no_negatives():
  pattern = r"global batch size \(z1.shape\[0\], z1 of shape \(1, 4\)\) must be at least 2.*got 1"
  with pytest.raises(ValueError, match=pattern):
    nt_xent(jnp.ones((1, 4)), jnp.ones((1, 4)))


def test_global_batch_of_one_over_a_named_axis_has_no_negatives():
  # The check is on the global batch: local batch 1 is fine on 8 devices (tested below), but not
  # on an axis of size 1.
  per_instance = functools.partial(nt_xent, axis_name="i")
  with pytest.raises(ValueError, match=r"z1.shape\[0\] = 1 times the size 1 of axis 'i'"):
    jax.vmap(per_instance, axis_name="i")(jnp.ones((1, 1, 4)), jnp.ones((1, 1, 4)))


@pytest.mark.parametrize("bad_shape", [(8,), (2, 4, 3)])
@pytest.mark.parametrize("which", ["z1", "z2"])
def test_wrong_rank_names_argument_and_shapes(bad_shape, which):
  good = jnp.ones((2, 4))
  bad = jnp.ones(bad_shape)
  args = (bad, good) if which == "z1" else (good, bad)
  pattern = (rf"{which} must have rank 2 with shape \[batch, dim\].*"
             rf"{re.escape(str(bad_shape))} \(rank {len(bad_shape)}\)")
  with pytest.raises(ValueError, match=pattern):
    nt_xent(*args)


@pytest.mark.parametrize("shape2", [(4, 5), (3, 4)])
def test_mismatched_shapes_name_argument_and_shapes(shape2):
  pattern = r"z2 must have the same shape as z1: expected \(4, 4\).*z2 with shape " + re.escape(
      str(shape2))
  with pytest.raises(ValueError, match=pattern):
    nt_xent(jnp.ones((4, 4)), jnp.ones(shape2))


@pytest.mark.parametrize("temperature", [0, 0.0, -0.5, float("nan")])
def test_non_positive_temperature(temperature):
  with pytest.raises(ValueError, match=r"temperature must be > 0, but got"):
    nt_xent(jnp.ones((2, 4)), jnp.ones((2, 4)), temperature=temperature)


# --- Tracing -----------------------------------------------------------------------------------


def test_jit_does_not_retrace_for_same_shapes():
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(z1, z2, temperature):
    return jax.value_and_grad(nt_xent)(z1, z2, temperature=temperature)

  for seed in range(4):
    z1, z2 = random_pair(seed, 6, 8)
    value, _ = step(z1, z2, jnp.float32(0.1 + 0.1 * seed))
    np.testing.assert_allclose(value, reference_nt_xent(z1, z2, 0.1 + 0.1 * seed), rtol=1e-5)


# --- Sharded over 8 devices --------------------------------------------------------------------

TEMPERATURE = 0.2


def shard(mesh, *arrays):
  return [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in arrays]


def single_device(z1, z2):
  device = jax.devices()[0]
  z1, z2 = jax.device_put(z1, device), jax.device_put(z2, device)
  value, (g1, g2) = loss_and_grads(z1, z2, temperature=TEMPERATURE)
  return float(value), np.asarray(g1), np.asarray(g2)


local_loss = functools.partial(nt_xent, temperature=TEMPERATURE, axis_name="data")

@pytest.mark.parametrize("global_batch", [16, 8])  # local batch 2, and 1 (the smallest)
def test_same_value_and_gradient_on_one_and_eight_devices(global_batch):
  z1, z2 = random_pair(10 + global_batch, global_batch, 6)
  check_sharded_equivalence(
      functools.partial(nt_xent, temperature=TEMPERATURE), [z1, z2], grad_argnums=(0, 1))


def test_shard_map_grad_of_replicated_params_inside_body():
  # The gradient of a replicated projector comes back summed over devices and equal to the
  # single-device gradient (no world-size factor, nothing missing).
  z1, z2 = random_pair(40, 16, 6)
  w = np.random.default_rng(2).normal(size=(6, 5)).astype(np.float32)

  def projected(w, a, b, **kwargs):
    return nt_xent(a @ w, b @ w, temperature=TEMPERATURE, **kwargs)

  expected = jax.jit(jax.grad(projected))(w, z1, z2)
  mesh = make_mesh(AxisType.Explicit)
  step = jax.shard_map(
      lambda w, a, b: jax.grad(functools.partial(projected, axis_name="data"))(w, a, b),
      mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P())
  with jax.set_mesh(mesh):
    grad_w = jax.jit(step)(w, *shard(mesh, z1, z2))
  assert_close(grad_w, expected)


def test_check_vma_false_grad_inside_body_is_scaled_by_axis_size():
  # Pins the caveat in nt_xent's docstring: without varying/invariant types psum transposes to
  # psum, so the in-body gradient is 8x the true one, while the value is still right.
  z1, z2 = random_pair(50, 16, 6)
  expected_value, expected_g1, _ = single_device(z1, z2)
  mesh = make_mesh(AxisType.Explicit)
  step = jax.shard_map(
      lambda a, b: jax.value_and_grad(local_loss)(a, b), mesh=mesh,
      in_specs=(P("data"), P("data")), out_specs=(P(), P("data")), check_vma=False)
  with jax.set_mesh(mesh):
    value, g1 = jax.jit(step)(*shard(mesh, z1, z2))
  assert_close(value, expected_value)
  assert_close(g1, 8 * expected_g1)
