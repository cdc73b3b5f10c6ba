"""Tests for sslx.losses.clustering (Sinkhorn-Knopp codes and SwAV) against closed forms, an
independent float64 reference, and the same computation on one device versus 8 fake devices."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from sslx.losses.clustering import normalize_prototypes, sinkhorn_knopp, swav, swav_update_queue
from tests.losses.harness import (
    REPLICATED, assert_close, check_against_reference, check_sharded_equivalence, make_mesh)

VIEW_BATCH = P(None, "data")  # scores_per_view / embeddings_per_view carry the batch on axis 1


# --- Independent references --------------------------------------------------------------------


def reference_sinkhorn(scores, epsilon=0.05, num_iters=3, queue=None):
  """SwAV's Algorithm (paper Sec. 3.1 / distributed_sinkhorn) in float64, in the paper's
  [K, N] layout with explicit loops over prototypes and samples; the queue's samples come first
  and only the batch's codes are returned."""
  scores = np.asarray(scores, np.float64)
  batch = scores.shape[0]
  if queue is not None:
    scores = np.concatenate([np.asarray(queue, np.float64), scores])
  q = np.exp(scores.T / epsilon)  # [K, N]
  k, n = q.shape
  q = q / q.sum()
  for _ in range(num_iters):
    for row in range(k):
      q[row] = q[row] / (k * q[row].sum())
    for col in range(n):
      q[:, col] = q[:, col] / (n * q[:, col].sum())
  return (n * q).T[n - batch:]


def reference_swav(scores_per_view, code_scores, temperature=0.1, epsilon=0.05, num_iters=3,
                   crops_for_assign=(0, 1), queue=None):
  """main_swav.py's loop in float64. Codes come from ``code_scores`` (held fixed under finite
  differences, which is what the stop-gradient means); predictions from ``scores_per_view``."""
  s = np.asarray(scores_per_view, np.float64)
  num_views, batch, _ = s.shape
  total = 0.0
  for i, crop in enumerate(crops_for_assign):
    q = reference_sinkhorn(code_scores[crop], epsilon, num_iters,
                           None if queue is None else queue[i])
    subloss = 0.0
    for v in range(num_views):
      if v == crop:
        continue
      for row in range(batch):
        x = s[v, row] / temperature
        log_p = x - (np.max(x) + np.log(np.sum(np.exp(x - np.max(x)))))
        subloss -= np.dot(q[row], log_p) / batch
    total += subloss / (num_views - 1)
  return total / len(crops_for_assign)


def random_scores(seed, views, batch, prototypes, dim=5):
  """Cosine scores of correlated views against normalised prototypes, as SwAV computes them."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(batch, dim))
  z = base[None] + 0.5 * rng.normal(size=(views, batch, dim))
  z /= np.linalg.norm(z, axis=-1, keepdims=True)
  c = rng.normal(size=(prototypes, dim))
  c /= np.linalg.norm(c, axis=-1, keepdims=True)
  return (z @ c.T).astype(np.float32)


def random_queue(seed, assigned, length, prototypes):
  return np.random.default_rng(seed).uniform(-1, 1, size=(assigned, length, prototypes)).astype(
      np.float32)


sinkhorn = jax.jit(sinkhorn_knopp, static_argnames=("epsilon", "num_iters"))
loss = jax.jit(swav, static_argnames=("temperature", "epsilon", "num_iters", "crops_for_assign"))


# --- Sinkhorn-Knopp ----------------------------------------------------------------------------


def test_sinkhorn_closed_forms():
  # Both samples prefer prototype 0: equal cluster sizes force an even split.
  np.testing.assert_allclose(sinkhorn(jnp.array([[1.0, 0.0], [1.0, 0.0]]), epsilon=1.0),
                             np.full((2, 2), 0.5), rtol=1e-6)
  # Symmetric preferences are already balanced: codes are softmax(scores / epsilon).
  a = math.e / (1 + math.e)
  np.testing.assert_allclose(sinkhorn(jnp.eye(2), epsilon=1.0), [[a, 1 - a], [1 - a, a]],
                             rtol=1e-6)


@pytest.mark.parametrize("num_iters,epsilon", [(0, 0.5), (1, 0.1), (3, 0.05)])
def test_sinkhorn_matches_reference(num_iters, epsilon):
  scores = random_scores(num_iters, 1, 12, 5)[0]
  codes = sinkhorn(scores, epsilon=epsilon, num_iters=num_iters)
  assert codes.dtype == jnp.float32 and codes.shape == (12, 5)
  assert_close(codes, reference_sinkhorn(scores, epsilon, num_iters), rtol=1e-5)
  if num_iters:
    np.testing.assert_allclose(np.sum(codes, axis=1), 1.0, rtol=1e-6)


def test_sinkhorn_with_queue_matches_reference_and_equalises_clusters():
  scores = random_scores(3, 1, 6, 4)[0]
  queue = random_queue(4, 1, 10, 4)[0]
  codes = sinkhorn(scores, queue_scores=queue, num_iters=30)
  assert codes.shape == (6, 4)
  assert_close(codes, reference_sinkhorn(scores, 0.05, 30, queue), rtol=1e-5)
  # Without iterations the codes are N * P, N counting the queue's samples too.
  assert_close(sinkhorn(scores, queue_scores=queue, epsilon=0.5, num_iters=0),
               reference_sinkhorn(scores, 0.5, 0, queue), rtol=1e-5)
  # After many iterations each prototype holds 1/K of all samples, queue included.
  full = reference_sinkhorn(np.concatenate([queue, scores]), 0.05, 300)
  np.testing.assert_allclose(full.sum(axis=0), 16 / 4, rtol=1e-3)


def test_sinkhorn_large_scores_do_not_overflow():
  # exp(10 / 0.05) overflows float32; the log-space iterations do not.
  scores = 10.0 * random_scores(5, 1, 8, 3)[0]
  codes = sinkhorn(scores)
  assert np.all(np.isfinite(codes))
  assert_close(codes, reference_sinkhorn(scores), rtol=1e-4)


def test_sinkhorn_is_permutation_equivariant_and_gradient_free():
  scores = random_scores(6, 1, 10, 4)[0]
  perm = np.random.default_rng(0).permutation(10)
  np.testing.assert_allclose(sinkhorn(scores[perm]), np.asarray(sinkhorn(scores))[perm],
                             rtol=1e-5, atol=1e-7)
  weights = np.random.default_rng(1).normal(size=(10, 4))
  grad = jax.jit(jax.grad(lambda s: jnp.sum(sinkhorn_knopp(s) * weights)))(scores)
  np.testing.assert_array_equal(grad, 0.0)


def test_sinkhorn_zero_scores_give_uniform_codes():
  np.testing.assert_allclose(sinkhorn(jnp.zeros((4, 5))), np.full((4, 5), 0.2), rtol=1e-6)


def test_sinkhorn_bfloat16_input_gives_float32():
  scores = random_scores(7, 1, 8, 4)[0]
  codes = sinkhorn(jnp.asarray(scores, jnp.bfloat16))
  assert codes.dtype == jnp.float32
  np.testing.assert_allclose(codes, sinkhorn(scores), atol=3e-2)


@pytest.mark.parametrize("global_batch,with_queue", [(16, False), (8, True)])
def test_sinkhorn_codes_on_eight_shards_equal_single_device(global_batch, with_queue):
  scores = random_scores(global_batch, 1, global_batch, 5)[0]
  queue = random_queue(1, 1, 8, 5)[0] if with_queue else None
  expected = sinkhorn(scores, queue_scores=queue)
  mesh = make_mesh(AxisType.Explicit)
  local = functools.partial(sinkhorn_knopp, axis_name="data")
  if with_queue:
    fn = jax.shard_map(lambda s, q: local(s, queue_scores=q), mesh=mesh,
                       in_specs=(P("data"), P()), out_specs=P("data"))
    args = (jax.device_put(scores, NamedSharding(mesh, P("data"))),
            jax.device_put(queue, NamedSharding(mesh, P())))
  else:
    fn = jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=P("data"))
    args = (jax.device_put(scores, NamedSharding(mesh, P("data"))),)
  with jax.set_mesh(mesh):
    gathered = jax.jit(fn)(*args)
    jit_codes = jax.jit(functools.partial(sinkhorn_knopp, queue_scores=queue))(args[0])
  assert_close(gathered, expected, rtol=1e-5)
  assert_close(jit_codes, expected, rtol=1e-5)


def test_sinkhorn_bad_inputs():
  with pytest.raises(ValueError, match=r"scores must have rank 2 .*\(4,\) \(rank 1\)"):
    sinkhorn_knopp(jnp.ones((4,)))
  with pytest.raises(ValueError, match=r"queue_scores must have shape .*num_prototypes = 3.*"
                     r"\(5, 4\)"):
    sinkhorn_knopp(jnp.ones((2, 3)), queue_scores=jnp.ones((5, 4)))
  with pytest.raises(ValueError, match=r"epsilon must be > 0, but got 0.0"):
    sinkhorn_knopp(jnp.ones((2, 3)), epsilon=0.0)
  with pytest.raises(ValueError, match=r"num_iters must be an integer >= 0, but got -1"):
    sinkhorn_knopp(jnp.ones((2, 3)), num_iters=-1)
  with pytest.raises(ValueError, match=r"number of samples \(global batch plus queue\) must be "
                     r"at least 2.*got 1"):
    sinkhorn_knopp(jnp.ones((1, 3)))
  # The queue makes a batch of one fine.
  np.testing.assert_allclose(sinkhorn(jnp.ones((1, 3)), queue_scores=jnp.ones((4, 3))),
                             np.full((1, 3), 1 / 3), rtol=1e-6)


# --- SwAV --------------------------------------------------------------------------------------


def test_swav_closed_forms():
  # Identical views with scores eye(2), epsilon = t = 1: codes = predictions = (a, 1 - a).
  a = math.e / (1 + math.e)
  entropy = -(a * math.log(a) + (1 - a) * math.log(1 - a))
  s = jnp.stack([jnp.eye(2), jnp.eye(2)])
  np.testing.assert_allclose(loss(s, temperature=1.0, epsilon=1.0), entropy, rtol=1e-6)
  # Zero scores (e.g. all-zero embeddings): uniform codes and predictions, L = log K.
  value, grad = jax.jit(jax.value_and_grad(swav))(jnp.zeros((3, 4, 5)))
  np.testing.assert_allclose(value, math.log(5), rtol=1e-6)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("views,crops,temperature", [
    (2, (0, 1), 0.1), (4, (0, 1), 0.5), (3, (2, 0), 0.2)])
def test_swav_matches_reference_value_and_gradient(views, crops, temperature):
  scores = random_scores(views * 10, views, 4, 3)
  fn = lambda s, _: swav(s, temperature=temperature, crops_for_assign=crops)
  ref = lambda s, s_codes: reference_swav(s, s_codes, temperature, crops_for_assign=crops)
  check_against_reference(fn, ref, [scores, scores.copy()], rtol=1e-5, grad_rtol=1e-4)


def test_swav_with_queue_matches_reference_value_and_gradient():
  scores = random_scores(11, 3, 4, 3)
  queue = random_queue(12, 2, 6, 3)
  fn = lambda s, _, q: swav(s, queue_scores=q)
  ref = lambda s, s_codes, q: reference_swav(s, s_codes, queue=q)
  check_against_reference(fn, ref, [scores, scores.copy(), queue], rtol=1e-5, grad_rtol=1e-4)
  # The queue changes the codes, so it must change the loss.
  assert abs(float(loss(scores, queue_scores=queue)) - float(loss(scores))) > 1e-3


def test_swav_invariances_and_wrong_pairing():
  scores = random_scores(13, 4, 8, 5)
  base = float(loss(scores))
  perm = np.random.default_rng(3).permutation(8)
  np.testing.assert_allclose(loss(scores[:, perm]), base, rtol=1e-5)
  # Swapping the two assigned views (or two local views) is a relabelling of the sum.
  np.testing.assert_allclose(loss(scores[[1, 0, 2, 3]]), base, rtol=1e-5)
  np.testing.assert_allclose(loss(scores[[0, 1, 3, 2]]), base, rtol=1e-5)
  # Shifting one view's rows pairs codes with other images' predictions.
  shifted = scores.copy()
  shifted[2] = np.roll(scores[2], 1, axis=0)
  assert abs(float(loss(shifted)) - base) > 1e-2


def test_swav_bfloat16_input_gives_float32():
  scores = random_scores(14, 2, 8, 4)
  low = jnp.asarray(scores, jnp.bfloat16)
  value, grad = jax.jit(jax.value_and_grad(swav))(low)
  assert value.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
  np.testing.assert_allclose(value, loss(low.astype(jnp.float32)), rtol=1e-6)
  np.testing.assert_allclose(value, loss(scores), rtol=2e-2)


def test_swav_through_normalized_zero_embeddings_and_prototypes():
  # The documented pipeline: l2-normalised embeddings and prototypes, zeros included.
  rng = np.random.default_rng(15)
  z = rng.normal(size=(2, 4, 3)).astype(np.float32)
  z[0, 1] = 0.0
  protos = rng.normal(size=(5, 3)).astype(np.float32)
  protos[2] = 0.0
  c = normalize_prototypes(protos)
  np.testing.assert_allclose(np.linalg.norm(c, axis=1), [1, 1, 0, 1, 1], rtol=1e-6)

  def from_embeddings(z):
    zn = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, -1, keepdims=True), 1e-12))
    return swav(zn @ c.T)

  value, grad = jax.jit(jax.value_and_grad(from_embeddings))(z)
  assert np.isfinite(value) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("global_batch,with_queue", [(16, False), (8, True)])  # local 2 and 1
def test_swav_same_value_and_gradient_on_one_and_eight_devices(global_batch, with_queue):
  scores = random_scores(20 + global_batch, 3, global_batch, 4)
  if not with_queue:
    check_sharded_equivalence(
        functools.partial(swav, temperature=0.2, crops_for_assign=(0, 2)), [scores],
        specs=[VIEW_BATCH])
  else:
    # The queue is replicated: every device holds all of it, and it is counted once.
    queue = random_queue(31, 2, 8, 4)
    fn = lambda s, q, axis_name=None: swav(s, queue_scores=q, axis_name=axis_name)
    check_sharded_equivalence(fn, [scores, queue], specs=[VIEW_BATCH, REPLICATED])


def test_swav_bad_inputs():
  good = jnp.ones((2, 4, 3))
  with pytest.raises(ValueError, match=r"scores_per_view must have rank 3 .*\(4, 3\) \(rank 2\)"):
    swav(jnp.ones((4, 3)))
  with pytest.raises(ValueError, match=r"number of views .* must be at least 2.*got 1"):
    swav(jnp.ones((1, 4, 3)), crops_for_assign=(0,))
  for crops in [(), (0, 0), (0, 2), (-1,)]:
    with pytest.raises(ValueError, match=r"crops_for_assign must be distinct view indices in "
                       r"\[0, 2\).*" + re.escape(repr(crops))):
      swav(good, crops_for_assign=crops)
  with pytest.raises(ValueError, match=r"queue_scores must have shape .*\[2, queue_length, 3\], "
                     r"but got shape \(1, 5, 3\)"):
    swav(good, queue_scores=jnp.ones((1, 5, 3)))
  with pytest.raises(ValueError, match=r"queue_scores must have rank 3"):
    swav(good, queue_scores=jnp.ones((5, 3)))
  with pytest.raises(ValueError, match=r"temperature must be > 0, but got -1.0"):
    swav(good, temperature=-1.0)
  with pytest.raises(ValueError, match=r"epsilon must be > 0"):
    swav(good, epsilon=0.0)
  with pytest.raises(ValueError, match=r"global batch plus queue\) must be at least 2"):
    swav(jnp.ones((2, 1, 3)))


# --- Queue update ------------------------------------------------------------------------------


def test_update_queue_order_and_truncation():
  emb = np.arange(2 * 3 * 2, dtype=np.float32).reshape(3, 2, 2)  # 3 views, batch 2, dim 2
  queue = -np.ones((2, 5, 2), np.float32)
  new = swav_update_queue(queue, emb, crops_for_assign=(2, 0))
  np.testing.assert_array_equal(new[0, :2], emb[2])
  np.testing.assert_array_equal(new[1, :2], emb[0])
  np.testing.assert_array_equal(new[:, 2:], queue[:, :3])
  short = swav_update_queue(queue[:, :1], emb, crops_for_assign=(2, 0))  # Q < B: newest first
  np.testing.assert_array_equal(short[:, 0], emb[[2, 0], 0])
  with pytest.raises(ValueError, match=r"queue must have shape .*\[2, queue_length, 2\], but got "
                     r"shape \(2, 5, 3\)"):
    swav_update_queue(jnp.ones((2, 5, 3)), emb, crops_for_assign=(2, 0))


def test_update_queue_sharded_equals_single_device():
  rng = np.random.default_rng(40)
  emb = rng.normal(size=(3, 16, 2)).astype(np.float32)
  queue = rng.normal(size=(2, 24, 2)).astype(np.float32)
  expected = swav_update_queue(queue, emb)
  mesh = make_mesh(AxisType.Explicit)
  fn = jax.shard_map(functools.partial(swav_update_queue, axis_name="data"), mesh=mesh,
                     in_specs=(P(), VIEW_BATCH), out_specs=P())
  args = (jax.device_put(queue, NamedSharding(mesh, P())),
          jax.device_put(emb, NamedSharding(mesh, VIEW_BATCH)))
  with jax.set_mesh(mesh):
    np.testing.assert_array_equal(jax.jit(fn)(*args), expected)
    np.testing.assert_array_equal(jax.jit(swav_update_queue)(*args), expected)
