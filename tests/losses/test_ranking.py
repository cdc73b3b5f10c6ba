"""Tests for sslx.losses.ranking (GroCo, HaLP): closed forms, independent float64 references,
invariances, errors, and equivalence on one device versus sharded over 8 fake CPU devices."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx.losses import ranking
from sslx.losses.ranking import groco, halp, halp_positives
from tests.losses.harness import (
    BATCH, REPLICATED, assert_close, check_against_reference, check_sharded_equivalence,
    finite_difference_grad)

NORM_EPS = 1e-6


def random_pair(seed, batch, dim, noise=0.5):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(batch, dim)).astype(np.float32)
  z2 = (z1 + noise * rng.normal(size=(batch, dim))).astype(np.float32)
  return z1, z2


def normalize(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), NORM_EPS)


# --- GroCo reference: diffsort's matrix form, one anchor at a time -------------------------------


def odd_even_matrices(n):
  """diffsort.networks.odd_even_network written as (split_a, split_b, combine_min, combine_max)
  0/1 matrices per layer, with 1/2-weighted identity comparators on unpaired wires."""
  layers = []
  for layer in range(n):
    pairs = [(i, i + 1) for i in range(layer % 2, n - 1, 2)]
    paired = {w for p in pairs for w in p}
    pairs += [(w, w) for w in range(n) if w not in paired]
    split_a, split_b = np.zeros((len(pairs), n)), np.zeros((len(pairs), n))
    c_min, c_max = np.zeros((n, len(pairs))), np.zeros((n, len(pairs)))
    for c, (a, b) in enumerate(pairs):
      split_a[c, a] = split_b[c, b] = 1.0
      weight = 0.5 if a == b else 1.0
      c_min[a, c] += weight
      c_max[b, c] += weight
    layers.append((split_a, split_b, c_min, c_max))
  return layers


def reference_sort(x, steepness, relaxation):
  x = np.asarray(x, np.float64)
  perm = np.eye(len(x))
  for split_a, split_b, c_min, c_max in odd_even_matrices(len(x)):
    a, b = split_a @ x, split_b @ x
    v = steepness * (b - a)
    alpha = np.arctan(v) / np.pi + 0.5 if relaxation == "cauchy" else 1 / (1 + np.exp(-v))
    w_min = alpha * (perm @ split_a.T) + (1 - alpha) * (perm @ split_b.T)
    w_max = (1 - alpha) * (perm @ split_a.T) + alpha * (perm @ split_b.T)
    perm = w_max @ c_max.T + w_min @ c_min.T
    x = c_min @ (alpha * a + (1 - alpha) * b) + c_max @ ((1 - alpha) * a + alpha * b)
  return perm


def reference_groco(a1, a2, c1, c2, k=3, steepness=1.0, relaxation="cauchy"):
  """Anchors ``a_v`` against constants ``c_v`` (pass ``a_v`` again for the full gradient)."""
  total = 0.0
  for anchors, same_view, other_view in ((a1, c1, c2), (a2, c2, c1)):
    anchors, same_view, other_view = map(normalize, (anchors, same_view, other_view))
    view_loss = 0.0
    for i in range(len(anchors)):
      negs = sorted(anchors[i] @ same_view[j] for j in range(len(anchors)) if j != i)[-k:]
      scores = np.array(negs + [anchors[i] @ other_view[i]])
      perm = reference_sort(scores, steepness, relaxation)
      bce = 0.0
      for r in range(k + 1):
        top = perm[r, k:].sum()  # probability of landing in the positive group
        bce += -np.log(top) if r == k else -np.log(1 - top)
      view_loss += bce / (k + 1)  # the two BCE terms of the code are equal in exact arithmetic
    total += view_loss / len(anchors)
  return total / 2


# --- GroCo: closed forms ------------------------------------------------------------------------


@pytest.mark.parametrize("relaxation", ["cauchy", "logistic"])
def test_groco_one_negative_closed_form(relaxation):
  # Positive score 1 and negative score 0 for every anchor: one comparator with
  # alpha = f(steepness * 1), and every BCE term is -log(alpha). (rtol 1e-5: like the authors'
  # code, the negative's BCE takes log(1 - (1 - alpha)).) A traced steepness also works.
  z = jnp.eye(3)[:2]
  fn = jax.jit(functools.partial(groco, num_negatives=1, relaxation=relaxation))
  for steepness in (0.5, 1.0, 4.0):
    value = fn(z, 3.0 * z, steepness=jnp.float32(steepness))
    alpha = (0.5 + math.atan(steepness) / math.pi if relaxation == "cauchy"
             else 1 / (1 + math.exp(-steepness)))
    np.testing.assert_allclose(value, -math.log(alpha), rtol=1e-5)


def test_sorting_network_sorts_and_is_doubly_stochastic():
  x = np.random.default_rng(0).normal(size=(4, 7)).astype(np.float32)
  soft = ranking._diff_sort(jnp.asarray(x), 1.0, "cauchy")
  np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(soft.sum(axis=2), 1.0, rtol=1e-5)
  hard = ranking._diff_sort(jnp.asarray(x), 1e5, "logistic")
  np.testing.assert_allclose(jnp.einsum("bn,bnm->bm", x, hard), np.sort(x, axis=1), atol=1e-4)
  np.testing.assert_allclose(soft[1], reference_sort(x[1], 1.0, "cauchy"), rtol=1e-5, atol=1e-6)


# --- GroCo: reference value and gradient --------------------------------------------------------


@pytest.mark.parametrize("batch,dim,k,steepness,relaxation", [
    (5, 3, 2, 1.0, "cauchy"), (8, 4, 5, 3.0, "logistic")])
def test_groco_matches_reference_full_gradient(batch, dim, k, steepness, relaxation):
  z1, z2 = random_pair(batch * 10 + k, batch, dim)
  fn = functools.partial(groco, num_negatives=k, steepness=steepness, relaxation=relaxation,
                         stop_gradient=False)
  ref = lambda a, b: reference_groco(a, b, a, b, k, steepness, relaxation)  # noqa: E731
  check_against_reference(fn, ref, [z1, z2], grad_argnums=(0, 1), rtol=1e-5, grad_rtol=1e-4)


def test_groco_stop_gradient_only_differentiates_anchors():
  z1, z2 = random_pair(3, 6, 4)
  grads = jax.jit(jax.grad(functools.partial(groco, num_negatives=3), argnums=(0, 1)))(z1, z2)
  np.testing.assert_allclose(
      groco(z1, z2, num_negatives=3), reference_groco(z1, z2, z1, z2), rtol=1e-5)
  for argnum, grad in enumerate(grads):
    def anchors_only(x, argnum=argnum):
      a = (x, z2) if argnum == 0 else (z1, x)
      return reference_groco(*a, z1.astype(np.float64), z2.astype(np.float64))
    assert_close(grad, finite_difference_grad(anchors_only, (z1, z2)[argnum]), rtol=1e-4)


# --- GroCo: invariances -------------------------------------------------------------------------

groco_jit = jax.jit(groco, static_argnames=("num_negatives",))


def test_groco_invariances_and_pairing_guard():
  z1, z2 = random_pair(4, 10, 5)
  base = groco_jit(z1, z2, num_negatives=4)
  perm = np.random.default_rng(1).permutation(10)
  np.testing.assert_allclose(groco_jit(z1[perm], z2[perm], num_negatives=4), base, rtol=1e-6)
  np.testing.assert_allclose(groco_jit(z2, z1, num_negatives=4), base, rtol=1e-6)
  scales = np.random.default_rng(2).uniform(0.1, 10.0, size=(10, 1)).astype(np.float32)
  np.testing.assert_allclose(groco_jit(scales * z1, 7.0 * z2, num_negatives=4), base, rtol=1e-5)
  wrong = groco_jit(z1, np.roll(z2, 1, axis=0), num_negatives=4)
  assert float(wrong) - float(base) > 1e-2


# --- GroCo: dtypes, degenerate inputs, errors ---------------------------------------------------


def test_groco_bfloat16_input_gives_float32():
  z1, z2 = random_pair(5, 8, 6)
  value = groco_jit(jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16), num_negatives=4)
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, groco_jit(z1, z2, num_negatives=4), rtol=2e-2)


def test_groco_zero_vectors_are_finite():
  zeros = jnp.zeros((4, 3))
  value, grads = jax.value_and_grad(
      functools.partial(groco, num_negatives=2, stop_gradient=False), argnums=(0, 1))(zeros, zeros)
  # All scores 0: every comparator is a coin flip, so the loss is that of a fixed doubly
  # stochastic matrix; it is finite with a finite gradient.
  assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
  z1, z2 = random_pair(6, 5, 3)
  z1[2] = 0.0
  np.testing.assert_allclose(
      groco(z1, z2, num_negatives=2), reference_groco(z1, z2, z1, z2, 2), rtol=1e-5)


def test_groco_errors():
  good = jnp.ones((4, 3))
  with pytest.raises(ValueError, match=r"z1 must have rank 2 with shape \[batch, dim\].*\(4,\)"):
    groco(jnp.ones(4), good)
  with pytest.raises(ValueError, match=r"z2 must have the same shape as z1: expected \(4, 3\)"
                     r".*\(4, 2\)"):
    groco(good, jnp.ones((4, 2)))
  with pytest.raises(ValueError, match=r"global batch size .*must be at least 11.*got 4"):
    groco(good, good)  # default num_negatives=10
  with pytest.raises(ValueError, match=r"z1.shape\[0\] = 1 times the size 1 of axis 'i'"):
    jax.vmap(functools.partial(groco, num_negatives=1, axis_name="i"), axis_name="i")(
        jnp.ones((1, 1, 3)), jnp.ones((1, 1, 3)))
  with pytest.raises(ValueError, match=r"steepness must be > 0, but got 0"):
    groco(good, good, num_negatives=2, steepness=0)
  with pytest.raises(ValueError, match=r"num_negatives must be an integer >= 1, but got 0"):
    groco(good, good, num_negatives=0)
  with pytest.raises(ValueError, match=r"relaxation must be one of .*'gauss'"):
    groco(good, good, num_negatives=2, relaxation="gauss")


# --- GroCo: sharded -----------------------------------------------------------------------------


@pytest.mark.parametrize("global_batch,stop_gradient", [(16, True), (8, False)])
def test_groco_same_value_and_gradient_on_one_and_eight_devices(global_batch, stop_gradient):
  # Local batch 2 and 1; the 3 hardest negatives come from other devices for most anchors.
  z1, z2 = random_pair(20 + global_batch, global_batch, 5)
  check_sharded_equivalence(
      functools.partial(groco, num_negatives=3, stop_gradient=stop_gradient), [z1, z2],
      grad_argnums=(0, 1))


# --- HaLP: positives ----------------------------------------------------------------------------


def circle(deg):
  return np.array([math.cos(math.radians(deg)), math.sin(math.radians(deg)), 0.0], np.float32)


@pytest.mark.parametrize("a,b", [(30.0, 90.0), (10.0, 120.0), (40.0, 50.0)])
def test_halp_hardest_positive_is_the_bisector_closed_form(a, b):
  # Anchor at angle 0, closest prototype p0 at +a, target at -b (b > a): on the arc towards the
  # target, the last point as close to p0 as to the target is the bisector, at angle (a - b)/2.
  anchors = circle(0.0)[None]
  protos = np.stack([circle(a), circle(-b)])
  positives, _ = halp_positives(anchors, protos, jax.random.key(0), num_positives=3,
                                lambda_pos=0.0)
  for m in range(3):
    np.testing.assert_allclose(positives[0, m], circle((a - b) / 2), atol=1e-5)


def reference_positives(anchors, protos, choice, u, num_candidates, skip):
  """HaLP's step from the boundary condition g(t).(p0 - p) = 0, solved as
  t omega = atan2(A sin(omega), C + A cos(omega)), A = k.(p0 - p), C = 1 - p.p0."""
  k, protos = normalize(anchors), normalize(protos)
  out = np.zeros(choice.shape + (k.shape[1],))
  for i in range(len(k)):
    order = list(np.argsort(k[i] @ protos.T))
    p0 = protos[order[-1]]
    candidates = order[max(len(order) - num_candidates - skip, 0):len(order) - skip]
    for m in range(choice.shape[1]):
      p = protos[candidates[choice[i, m]]]
      omega = np.arccos(np.clip(k[i] @ p, -1, 1))
      big_a, big_c = k[i] @ (p0 - p), 1 - p @ p0
      t = (1 - u[i, m]) * np.arctan2(big_a * np.sin(omega), big_c + big_a * np.cos(omega)) / omega
      g = (np.sin((1 - t) * omega) * k[i] + np.sin(t * omega) * p) / np.sin(omega)
      out[i, m] = g / np.linalg.norm(g)
  return out


def test_halp_positives_match_reference_and_stay_on_the_anchor_side():
  rng = np.random.default_rng(7)
  protos = normalize(rng.normal(size=(6, 4))).astype(np.float32)
  # Anchors near a prototype, as after clustering, so that every step is well defined.
  anchors = (protos[rng.integers(0, 6, size=8)] + 0.3 * rng.normal(size=(8, 4))).astype(np.float32)
  key = jax.random.key(3)
  positives, valid = jax.jit(functools.partial(
      halp_positives, num_positives=5, lambda_pos=0.8, num_candidates=3))(anchors, protos, key)
  # The documented draws: per example, fold_in(key, global index), split into (choice, step).
  choice, u = [], []
  for i in range(8):
    choice_key, step_key = jax.random.split(jax.random.fold_in(key, i))
    choice.append(jax.random.randint(choice_key, (5,), 0, 3))
    u.append(jax.random.uniform(step_key, (5,), maxval=0.8))
  expected = reference_positives(anchors, protos, np.array(choice), np.array(u), 3, 1)
  assert_close(positives, expected, rtol=1e-4)
  k = normalize(anchors)
  closest = np.argmax(k @ protos.T.astype(np.float64), axis=1)
  expected_valid = np.argmax(expected @ protos.T.astype(np.float64), axis=-1) == closest[:, None]
  np.testing.assert_array_equal(valid, expected_valid)
  assert np.all(np.asarray(u) <= 0.8)


def test_halp_positives_are_sharding_invariant():
  rng = np.random.default_rng(8)
  anchors = rng.normal(size=(16, 4)).astype(np.float32)
  protos = rng.normal(size=(5, 4)).astype(np.float32)
  fn = functools.partial(halp_positives, key=jax.random.key(1), num_positives=3)
  expected = jax.jit(fn)(anchors, protos)
  mesh = jax.make_mesh((8,), ("data",))
  sharded = jax.shard_map(functools.partial(fn, axis_name="data"), mesh=mesh,
                          in_specs=(BATCH, REPLICATED), out_specs=(BATCH, BATCH))
  with jax.set_mesh(mesh):
    got = jax.jit(sharded)(
        jax.device_put(anchors, jax.NamedSharding(mesh, BATCH)),
        jax.device_put(protos, jax.NamedSharding(mesh, REPLICATED)))
  assert_close(got[0], expected[0])
  np.testing.assert_array_equal(got[1], expected[1])


# --- HaLP: loss ---------------------------------------------------------------------------------


def reference_halp(query, keys, positives, valid, queue, temperature, weight):
  q, k = normalize(query), normalize(keys)
  negatives_all = normalize(queue) if queue is not None else None
  nce = 0.0
  for i in range(len(q)):
    negs = negatives_all if negatives_all is not None else np.delete(k, i, axis=0)
    logits = np.concatenate([[q[i] @ k[i]], negs @ q[i]]) / temperature
    nce += -logits[0] + np.log(np.sum(np.exp(logits)))
  nce /= len(q)
  pulled = sum(q[i] @ positives[i, m] / temperature
               for i in range(len(q)) for m in range(positives.shape[1]) if valid[i, m])
  return nce - weight * pulled / (valid.sum() + 1e-8)


@pytest.mark.parametrize("use_queue", [False, True])
def test_halp_matches_reference(use_queue):
  rng = np.random.default_rng(9)
  q, k = random_pair(11, 6, 4)
  protos = rng.normal(size=(5, 4)).astype(np.float32)
  queue = rng.normal(size=(7, 4)).astype(np.float32) if use_queue else None
  key = jax.random.key(5)
  kwargs = dict(queue=queue, temperature=0.2, weight=2.0, num_positives=4)
  positives, valid = halp_positives(k, protos, key, num_positives=4)
  positives, valid = np.asarray(positives, np.float64), np.asarray(valid)
  assert valid.any()
  check_against_reference(
      lambda x: halp(x, k, protos, key, **kwargs)[0],
      lambda x: reference_halp(x, k, positives, valid, queue, 0.2, 2.0), [q], grad_rtol=5e-5)
  _, aux = halp(q, k, protos, key, **kwargs)
  np.testing.assert_allclose(aux["valid_fraction"], valid.mean(), rtol=1e-6)
  # Keys are constants: no gradient reaches them.
  grad_k = jax.grad(lambda y: halp(q, y, protos, key, **kwargs)[0])(k)
  np.testing.assert_array_equal(grad_k, 0.0)


def test_halp_pairing_guard_bfloat16_and_zero_vectors():
  q, k = random_pair(12, 8, 5)
  protos = np.random.default_rng(3).normal(size=(4, 5)).astype(np.float32)
  fn = jax.jit(lambda a, b: halp(a, b, protos, jax.random.key(0), num_positives=4)[0])
  base = fn(q, k)
  assert abs(float(fn(q, np.roll(k, 1, axis=0))) - float(base)) > 1e-2
  low = fn(jnp.asarray(q, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16))
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(low, base, rtol=3e-2)
  zeros = np.zeros((4, 5), np.float32)
  value, grad = jax.value_and_grad(fn)(zeros, zeros)
  assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_halp_errors():
  good, protos, key = jnp.ones((4, 3)), jnp.ones((5, 3)), jax.random.key(0)
  with pytest.raises(ValueError, match=r"query must have rank 2 with shape \[batch, dim\]"):
    halp(jnp.ones(3), good, protos, key)
  with pytest.raises(ValueError, match=r"keys must have the same shape as query.*\(4, 2\)"):
    halp(good, jnp.ones((4, 2)), protos, key)
  with pytest.raises(ValueError, match=re.escape(
      "prototypes must have shape [num_prototypes, 3] (the anchors' dim), but got shape (5, 2)")):
    halp(good, good, jnp.ones((5, 2)), key)
  with pytest.raises(ValueError, match=r"prototypes must have more than skip_closest=1 rows"):
    halp(good, good, jnp.ones((1, 3)), key)
  with pytest.raises(ValueError, match=r"queue must have shape \[queue_size, 3\].*\(7, 2\)"):
    halp(good, good, protos, key, queue=jnp.ones((7, 2)))
  with pytest.raises(ValueError, match=r"temperature must be > 0, but got -1"):
    halp(good, good, protos, key, temperature=-1)
  with pytest.raises(ValueError, match=r"weight must be >= 0, but got -0.5"):
    halp(good, good, protos, key, weight=-0.5)
  with pytest.raises(ValueError, match=r"lambda_pos must be in \[0, 1\], but got 1.5"):
    halp(good, good, protos, key, lambda_pos=1.5)
  with pytest.raises(ValueError, match=r"num_positives must be an integer >= 1, but got 0"):
    halp(good, good, protos, key, num_positives=0)
  with pytest.raises(ValueError, match=r"global batch size .*must be at least 2.*got 1"):
    halp(jnp.ones((1, 3)), jnp.ones((1, 3)), protos, key)


@pytest.mark.parametrize("global_batch,use_queue", [(16, False), (8, True)])
def test_halp_same_value_and_gradient_on_one_and_eight_devices(global_batch, use_queue):
  q, k = random_pair(30 + global_batch, global_batch, 4)
  rng = np.random.default_rng(global_batch)
  protos = rng.normal(size=(5, 4)).astype(np.float32)
  key = jax.random.key(2)
  if use_queue:
    queue = rng.normal(size=(8, 4)).astype(np.float32)

    def fn(a, b, p, c, axis_name=None):
      return halp(a, b, p, key, queue=c, num_positives=4, weight=2.0, axis_name=axis_name)[0]
    args, specs = [q, k, protos, queue], [BATCH, BATCH, REPLICATED, REPLICATED]
  else:
    def fn(a, b, p, axis_name=None):
      return halp(a, b, p, key, num_positives=4, weight=2.0, axis_name=axis_name)[0]
    args, specs = [q, k, protos], [BATCH, BATCH, REPLICATED]
  check_sharded_equivalence(fn, args, specs=specs, grad_argnums=(0,))
