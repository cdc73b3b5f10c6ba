"""Tests for the contrastive family beyond nt_xent (sslx.losses.contrastive): MoCo's info_nce and
queue, DCL/DCLW, SupCon, NNCLR, iSogCLR and the memory-bank NCE of NPID / PIRL, against closed forms, independent float64 NumPy
references written from the papers' equations, and the same loss on one device versus sharded
over the 8 fake CPU devices of conftest.py."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from sslx.losses.contrastive import (
    dcl, info_nce, isogclr, memory_bank_nce, nearest_neighbor, negative_von_mises_fisher_weight,
    nnclr, supcon, update_queue, update_support_set)
from tests.losses.harness import (
    BATCH, REPLICATED, assert_close, check_against_reference, check_sharded_equivalence,
    finite_difference_grad, make_mesh)

NORM_EPS = 1e-6  # the clamp documented in the docstrings
T = 0.3


# --- Independent float64 references (loops over anchors, other layouts than the code) ---------


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), NORM_EPS)


def _cos(a, b):
  return float(_unit(a) @ _unit(b))


def reference_info_nce(query, key, queue, temperature):
  """MoCo eq. (1): softmax over [positive, negatives]; negatives are the queue's rows (v2) or,
  without a queue, the other keys of the batch (v3's cross-entropy over all keys)."""
  total = 0.0
  n = len(query)
  for i in range(n):
    positive = math.exp(_cos(query[i], key[i]) / temperature)
    if queue is None:
      negatives = sum(math.exp(_cos(query[i], key[j]) / temperature) for j in range(n) if j != i)
    else:
      negatives = sum(math.exp(_cos(query[i], row) / temperature) for row in queue)
    total += -math.log(positive / (positive + negatives))
  return total / n


def reference_dcl(z1, z2, temperature, sigma=None):
  """DCL eq. (6): one-way loss with the positive out of the denominator, summed over both
  directions as the authors' training code does; DCLW weights w = 2 - B softmax(s_ii/sigma)."""
  n = len(z1)
  positives = np.array([_cos(z1[i], z2[i]) for i in range(n)])
  if sigma is None:
    weights = np.ones(n)
  else:
    e = np.exp(positives / sigma)
    weights = 2.0 - n * e / e.sum()

  def one_way(a, b):
    total = 0.0
    for i in range(n):
      negatives = sum(math.exp(_cos(a[i], a[k]) / temperature) + math.exp(
          _cos(a[i], b[k]) / temperature) for k in range(n) if k != i)
      total += -weights[i] * positives[i] / temperature + math.log(negatives)
    return total / n

  return one_way(z1, z2) + one_way(z2, z1)


def reference_supcon(z, related, temperature):
  """SupCon L^sup_out, eq. (2), over the view-major stacking of the authors' code (embedding
  v*B + i is view v of example i). ``related[i][j]`` says example j is a positive of example i;
  anchors with no positive are left out of the mean."""
  z = np.asarray(z, np.float64)
  if z.ndim == 2:
    z = z[:, None, :]
  n, views, _ = z.shape
  flat = [(i, v) for v in range(views) for i in range(n)]
  losses = []
  for a, (i, v) in enumerate(flat):
    others = [c for c in range(len(flat)) if c != a]
    sims = {c: _cos(z[i, v], z[flat[c][0], flat[c][1]]) / temperature for c in others}
    log_denominator = math.log(sum(math.exp(s) for s in sims.values()))
    positives = [c for c in others if flat[c][0] == i or related[i][flat[c][0]]]
    if positives:
      losses.append(-sum(sims[c] - log_denominator for c in positives) / len(positives))
  return sum(losses) / len(losses) if losses else 0.0


def labels_relation(labels):
  return [[labels[i] == labels[j] for j in range(len(labels))] for i in range(len(labels))]


def reference_nearest(z, support):
  best = [max(range(len(support)), key=lambda k: (_cos(row, support[k]), -k)) for row in z]
  return np.asarray(support, np.float64)[best]


def reference_nnclr(z1, z2, support, temperature):
  """NNCLR eq. (2) plus the paper's symmetrising term (denominator over the neighbours)."""
  nn = reference_nearest(z1, support)
  n = len(z1)
  total = 0.0
  for i in range(n):
    positive = _cos(nn[i], z2[i]) / temperature
    row = sum(math.exp(_cos(nn[i], z2[k]) / temperature) for k in range(n))
    column = sum(math.exp(_cos(nn[k], z2[i]) / temperature) for k in range(n))
    total += -(positive - math.log(row)) - (positive - math.log(column))
  return total / n


def reference_isogclr(z1, z2, tau, rho):
  """iSogCLR's DRO objective, eq. (6), on a minibatch, with the paper's h_i(z) = s(a, z) -
  s(a, a+) (the code's E exp(s/tau) differs by a factor): 1/B sum over examples of both views'
  tau_i log mean_{z in S} exp(h/tau_i) + tau_i rho. It is what the surrogate's value and
  gradient equal on a first visit (u = 0)."""
  n = len(z1)
  total = 0.0
  for a_view, b_view in ((z1, z2), (z2, z1)):
    for i in range(n):
      positive = _cos(a_view[i], b_view[i])
      negatives = [a_view[k] for k in range(n) if k != i] + [b_view[k] for k in range(n) if k != i]
      mean = np.mean([math.exp((_cos(a_view[i], z) - positive) / tau[i]) for z in negatives])
      total += tau[i] * math.log(mean) + tau[i] * rho
  return total / n


def reference_memory_bank_nce(z, positives, negatives, num_data, temperature, normalizer):
  """NPID eqs. (5)-(7) with h(v, m) = P / (P + K P_n), P = exp(cos / t) / Z, P_n = 1 / n, one loop
  per image and per noise sample; Z estimated as n times the mean exp(cos / t) over the batch's
  positive and negative scores when `normalizer` is None."""
  k = len(negatives)
  if normalizer is None:
    scores = [math.exp(_cos(z[i], m) / temperature)
              for i in range(len(z)) for m in [positives[i], *negatives]]
    normalizer = num_data * np.mean(scores)
  noise = k / num_data
  total = 0.0
  for i in range(len(z)):
    p = math.exp(_cos(z[i], positives[i]) / temperature) / normalizer
    total -= math.log(p / (p + noise))
    for m in negatives:
      p = math.exp(_cos(z[i], m) / temperature) / normalizer
      total -= math.log(1 - p / (p + noise))
  return total / len(z)


def random_pair(seed, batch, dim, dtype=np.float32):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(batch, dim)).astype(dtype)
  z2 = (z1 + 0.5 * rng.normal(size=(batch, dim))).astype(dtype)
  return z1, z2


def random_rows(seed, rows, dim):
  return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


# Jitted once per static configuration: one compiled program per shape is cheaper than op by op.
info_nce_j = jax.jit(info_nce, static_argnames=("temperature", "axis_name"))
dcl_j = jax.jit(dcl, static_argnames=("temperature", "axis_name", "weight_fn"))
supcon_j = jax.jit(supcon, static_argnames=("temperature", "axis_name"))
nnclr_j = jax.jit(nnclr, static_argnames=("temperature", "axis_name"))
isogclr_j = jax.jit(isogclr, static_argnames=("rho", "gamma", "axis_name"))
DCLW = negative_von_mises_fisher_weight(0.5)  # one object, so jit sees the same static arg


# --- Docstring examples ------------------------------------------------------------------------


# --- info_nce / update_queue -------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.05, 0.2, 1.0])
def test_info_nce_closed_forms(temperature):
  q = jnp.eye(2)
  k = 2.0 * jnp.eye(2)
  # In-batch: cosine 1 with the positive, 0 with the one other key.
  expected = math.log(1 + math.exp(-1 / temperature))
  np.testing.assert_allclose(info_nce_j(q, k, temperature=temperature), expected, rtol=1e-6)
  # Queue only: the other key of the batch is NOT a negative; the queue gives cosines 0 and -1.
  queue = jnp.array([[1.0, -1.0], [-1.0, -1.0]])  # cosines with e1: s, -s; with e2: -s, -s
  s = 1 / math.sqrt(2)
  e1 = math.log(1 + math.exp((s - 1) / temperature) + math.exp((-s - 1) / temperature))
  e2 = math.log(1 + math.exp((-s - 1) / temperature) + math.exp((-s - 1) / temperature))
  np.testing.assert_allclose(
      info_nce_j(q, k, queue, temperature=temperature), (e1 + e2) / 2, rtol=1e-6)


@pytest.mark.parametrize("with_queue", [False, True])
def test_info_nce_matches_reference(with_queue):
  q, k = random_pair(1, 6, 4)
  args = [q, k] + ([random_rows(2, 5, 4)] if with_queue else [])
  check_against_reference(
      lambda *a: info_nce(*a, temperature=T),
      lambda *a: reference_info_nce(a[0], a[1], a[2] if with_queue else None, T),
      args, grad_argnums=tuple(range(len(args))))


def test_info_nce_invariances_and_pairing_guard():
  q, k = random_pair(3, 8, 5)
  queue = random_rows(4, 6, 5)
  perm = np.random.default_rng(0).permutation(8)
  for qu in (None, queue):
    base = info_nce_j(q, k, qu, temperature=T)
    np.testing.assert_allclose(info_nce_j(q[perm], k[perm], qu, temperature=T), base, rtol=1e-6)
    np.testing.assert_allclose(info_nce_j(7.0 * q, 0.1 * k, qu, temperature=T), base, rtol=1e-5)
    assert abs(float(info_nce_j(q, np.roll(k, 1, 0), qu, temperature=T)) - float(base)) > 1e-2
  # Queue order is irrelevant; the queue's scale too (it is normalised inside).
  np.testing.assert_allclose(info_nce_j(q, k, 3.0 * queue[::-1], temperature=T),
                             info_nce_j(q, k, queue, temperature=T), rtol=1e-5)


@pytest.mark.parametrize("global_batch", [16, 8])
def test_info_nce_sharded_in_batch_negatives(global_batch):
  # Local batch 2 and 1: a missing label offset on device r (the classic MoCo v3 bug) or a
  # missing gather would change the value.
  q, k = random_pair(10 + global_batch, global_batch, 5)
  check_sharded_equivalence(
      functools.partial(info_nce, temperature=T), [q, k], grad_argnums=(0, 1))


@pytest.mark.parametrize("global_batch", [8])  # the queue path's sharding; 16 above
def test_info_nce_sharded_with_replicated_queue(global_batch):
  q, k = random_pair(20 + global_batch, global_batch, 5)
  queue = random_rows(3, 12, 5)
  check_sharded_equivalence(
      lambda q, k, queue, axis_name=None: info_nce(
          q, k, queue, temperature=T, axis_name=axis_name),
      [q, k, queue], specs=[BATCH, BATCH, REPLICATED], grad_argnums=(0, 1, 2))


def test_update_queue_is_fifo_newest_first():
  queue = np.arange(10, dtype=np.float32).reshape(5, 2)
  keys = -np.arange(1, 5, dtype=np.float32).reshape(2, 2)
  new = update_queue(queue, keys)
  np.testing.assert_array_equal(new, np.concatenate([keys, queue])[:5])
  # More keys than queue rows: only the first K keys survive.
  many = -np.arange(1, 15, dtype=np.float32).reshape(7, 2)
  np.testing.assert_array_equal(update_queue(queue, many), many[:5])
  # State, not a gradient path; dtype follows the queue.
  grad = jax.grad(lambda k: jnp.sum(update_queue(queue, k)))(jnp.asarray(keys))
  np.testing.assert_array_equal(grad, 0.0)
  assert update_queue(queue.astype(jnp.bfloat16), keys).dtype == jnp.bfloat16


def test_update_queue_and_support_set_under_shard_map_match_global():
  queue = random_rows(5, 20, 3)
  keys = random_rows(6, 16, 3)
  expected = update_queue(queue, keys)
  mesh = make_mesh(AxisType.Explicit)
  for fn in (update_queue, update_support_set):
    step = jax.shard_map(functools.partial(fn, axis_name="data"), mesh=mesh,
                         in_specs=(P(), P("data")), out_specs=P())  # typed invariant
    with jax.set_mesh(mesh):
      new = jax.jit(step)(jax.device_put(queue, NamedSharding(mesh, P())),
                          jax.device_put(keys, NamedSharding(mesh, P("data"))))
    np.testing.assert_array_equal(new, expected)
  with jax.set_mesh(mesh):  # jit on an Explicit mesh with sharded keys
    new = jax.jit(update_queue)(jax.device_put(queue, NamedSharding(mesh, P())),
                                jax.device_put(keys, NamedSharding(mesh, P("data"))))
  np.testing.assert_array_equal(new, expected)


# --- DCL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_dcl_closed_form(temperature):
  # Positive cosine 1, both negatives orthogonal: each anchor -1/t + log 2; two directions.
  value = dcl_j(jnp.eye(2), 3.0 * jnp.eye(2), temperature=temperature)
  np.testing.assert_allclose(value, 2 * (-1 / temperature + math.log(2)), rtol=1e-6)


def test_dclw_weights_closed_form_and_mean_one():
  s = jnp.array([0.2, -0.4, 0.9, 0.1])
  w = DCLW(s, None)
  e = np.exp(np.asarray(s, np.float64) / 0.5)
  assert_close(w, 2 - 4 * e / e.sum(), rtol=1e-6)
  np.testing.assert_allclose(np.mean(w), 1.0, rtol=1e-6)


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_dcl_matches_reference(sigma):
  z1, z2 = random_pair(7, 6, 4)
  weight_fn = None if sigma is None else negative_von_mises_fisher_weight(sigma)
  check_against_reference(
      lambda a, b: dcl(a, b, temperature=T, weight_fn=weight_fn),
      lambda a, b: reference_dcl(a, b, T, sigma), [z1, z2], grad_argnums=(0, 1))


def test_dcl_invariances_and_pairing_guard():
  z1, z2 = random_pair(8, 8, 5)
  perm = np.random.default_rng(1).permutation(8)
  # DCL's value is a difference of O(1) terms (here about -0.03): float32 rounding of those
  # terms, about 1e-7 each, is the absolute floor of the comparisons.
  close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
  for weight_fn in (None, DCLW):
    base = dcl_j(z1, z2, temperature=T, weight_fn=weight_fn)
    close(dcl_j(z1[perm], z2[perm], temperature=T, weight_fn=weight_fn), base)
    close(dcl_j(z2, z1, temperature=T, weight_fn=weight_fn), base)
    close(dcl_j(5.0 * z1, 0.2 * z2, temperature=T, weight_fn=weight_fn), base)
    assert abs(float(dcl_j(z1, np.roll(z2, 1, 0), temperature=T, weight_fn=weight_fn))
               - float(base)) > 1e-2


@pytest.mark.parametrize("global_batch", [16, 8])
def test_dcl_sharded(global_batch):
  # DCLW: the weights' softmax over the global batch is the only cross-device part DCL lacks.
  z1, z2 = random_pair(30 + global_batch, global_batch, 5)
  check_sharded_equivalence(
      functools.partial(dcl, temperature=T, weight_fn=DCLW), [z1, z2], grad_argnums=(0, 1))


# --- SupCon ------------------------------------------------------------------------------------


def test_supcon_closed_form_with_views():
  # Two examples of one class, two views each, all four embeddings identical up to scale:
  # every anchor has 3 positives, 3 candidates, all cosine 1: l = log 3.
  z = jnp.ones((2, 2, 3)) * jnp.array([1.0, 2.0])[:, None, None]
  np.testing.assert_allclose(supcon_j(z, jnp.array([4, 4]), temperature=0.1), math.log(3),
                             rtol=1e-6)


def test_supcon_anchors_without_positive_are_excluded():
  # One view; example 2 has a class of its own, so it is not an anchor but stays a candidate.
  z = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  t = 0.5
  expected = math.log(1 + math.exp(-1 / t))  # anchors 0 and 1: positive cosine 1, negative 0
  np.testing.assert_allclose(supcon_j(z, jnp.array([0, 0, 1]), temperature=t), expected,
                             rtol=1e-6)
  # No positives at all: 0, with a finite (zero) gradient.
  value, grad = jax.jit(jax.value_and_grad(supcon), static_argnames="temperature")(
      z, jnp.array([0, 1, 2]), temperature=t)
  assert float(value) == 0.0 and np.all(grad == 0.0)


@pytest.mark.parametrize("views", [1, 2, 3])
def test_supcon_matches_reference_with_labels(views):
  rng = np.random.default_rng(views)
  z = rng.normal(size=(6, views, 4)).astype(np.float32)
  labels = np.array([0, 1, 0, 2, 1, 3])  # class 2 and 3 appear once
  check_against_reference(
      lambda z: supcon(z, labels, temperature=T),
      lambda z: reference_supcon(z, labels_relation(labels), T), [z])


def test_supcon_rank2_and_known_positive_mask():
  rng = np.random.default_rng(5)
  z = rng.normal(size=(6, 4)).astype(np.float32)
  mask = rng.uniform(size=(6, 6)) < 0.3  # asymmetric, arbitrary diagonal
  check_against_reference(
      lambda z: supcon(z, mask, temperature=T),
      lambda z: reference_supcon(z, mask.tolist(), T), [z])
  # labels == the equivalent mask
  labels = np.array([0, 1, 0, 2, 1, 1])
  np.testing.assert_allclose(
      supcon_j(z, labels, temperature=T),
      supcon_j(z, labels[:, None] == labels[None, :], temperature=T), rtol=1e-6)
  # rank-2 z is the one-view case of rank 3
  np.testing.assert_allclose(supcon_j(z, labels, temperature=T),
                             supcon_j(z[:, None], labels, temperature=T), rtol=1e-6)


def test_supcon_mask_diagonal_is_forced_with_views():
  z = np.random.default_rng(6).normal(size=(4, 2, 3)).astype(np.float32)
  no_relations = np.zeros((4, 4), bool)
  # The views of each example are positives even with an all-False mask: this is SimCLR.
  np.testing.assert_allclose(
      supcon_j(z, no_relations, temperature=T), supcon_j(z, np.eye(4, dtype=bool),
                                                         temperature=T), rtol=1e-6)
  np.testing.assert_allclose(supcon_j(z, np.arange(4), temperature=T),
                             reference_supcon(z, np.eye(4, dtype=bool).tolist(), T), rtol=1e-5)


def test_supcon_invariances_and_label_guard():
  rng = np.random.default_rng(7)
  z = rng.normal(size=(8, 2, 4)).astype(np.float32)
  labels = np.array([0, 1, 2, 0, 1, 2, 3, 3])
  perm = rng.permutation(8)
  base = supcon_j(z, labels, temperature=T)
  np.testing.assert_allclose(supcon_j(z[perm], labels[perm], temperature=T), base, rtol=1e-5)
  np.testing.assert_allclose(supcon_j(z[:, ::-1], labels, temperature=T), base, rtol=1e-5)
  np.testing.assert_allclose(supcon_j(4.0 * z, labels, temperature=T), base, rtol=1e-5)
  assert abs(float(supcon_j(z, np.roll(labels, 1), temperature=T)) - float(base)) > 1e-2


@pytest.mark.parametrize("global_batch", [16])
def test_supcon_sharded_with_labels_and_views(global_batch):
  rng = np.random.default_rng(40 + global_batch)
  z = rng.normal(size=(global_batch, 2, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=global_batch).astype(np.int32)
  check_sharded_equivalence(functools.partial(supcon, temperature=T), [z, labels])


@pytest.mark.parametrize("global_batch", [8])
def test_supcon_sharded_with_mask_one_view(global_batch):
  # One view, so anchors without positives occur and the psum-ed count matters.
  rng = np.random.default_rng(50 + global_batch)
  z = rng.normal(size=(global_batch, 4)).astype(np.float32)
  mask = rng.uniform(size=(global_batch, global_batch)) < 0.2
  assert 0 < np.sum(~mask.any(axis=1)) < global_batch
  check_sharded_equivalence(functools.partial(supcon, temperature=T), [z, mask])


# --- NNCLR -------------------------------------------------------------------------------------


def test_nearest_neighbor_uses_cosine_and_matches_reference():
  support = np.array([[10.0, 1.0], [0.0, 1.0], [1.0, 0.05]], np.float32)
  z = np.array([[1.0, 0.0], [0.1, 1.0], [-1.0, 0.0], [0.0, 0.0]], np.float32)
  got = nearest_neighbor(z, support)
  # Row 0: largest dot product is support[0], but the cosine-nearest is support[2].
  # Row 3 is a zero vector: cosine 0 with every row, the tie goes to the first.
  np.testing.assert_array_equal(got, support[[2, 1, 1, 0]])
  np.testing.assert_array_equal(got, reference_nearest(z, support))
  grads = jax.grad(lambda z, s: jnp.sum(nearest_neighbor(z, s)), argnums=(0, 1))(z, support)
  assert all(np.all(g == 0) for g in grads)


def test_nnclr_matches_reference_and_gradient_only_reaches_z2():
  z1, z2 = random_pair(9, 6, 4)
  support = random_rows(10, 9, 4)
  check_against_reference(
      lambda b, a, s: nnclr(a, b, s, temperature=T),
      lambda b, a, s: reference_nnclr(a, b, s, T), [z2, z1, support])
  g1, gs = jax.jit(jax.grad(lambda a, s: nnclr(a, z2, s, temperature=T), argnums=(0, 1)))(
      z1, support)
  assert np.all(g1 == 0) and np.all(gs == 0)


def test_nnclr_equals_symmetric_info_nce_when_neighbours_are_exact():
  # With z1 inside the support set, NN(z1) = z1 and the row term is MoCo v3's InfoNCE.
  z1, z2 = random_pair(11, 6, 4)
  support = np.concatenate([random_rows(12, 3, 4), z1])
  row = info_nce_j(z1, z2, temperature=T)
  column = info_nce_j(z2, z1, temperature=T)
  np.testing.assert_allclose(nnclr_j(z1, z2, support, temperature=T), row + column, rtol=1e-5)


def test_nnclr_invariances_and_pairing_guard():
  z1, z2 = random_pair(13, 8, 5)
  support = random_rows(14, 12, 5)
  perm = np.random.default_rng(2).permutation(8)
  base = nnclr_j(z1, z2, support, temperature=T)
  np.testing.assert_allclose(nnclr_j(z1[perm], z2[perm], support, temperature=T), base,
                             rtol=1e-5)
  np.testing.assert_allclose(nnclr_j(3.0 * z1, 0.5 * z2, 2.0 * support[::-1], temperature=T),
                             base, rtol=1e-5)
  assert abs(float(nnclr_j(z1, np.roll(z2, 1, 0), support, temperature=T)) - float(base)) > 1e-2


@pytest.mark.parametrize("global_batch", [16, 8])
def test_nnclr_sharded(global_batch):
  z1, z2 = random_pair(60 + global_batch, global_batch, 5)
  support = random_rows(15, 12, 5)
  check_sharded_equivalence(
      lambda a, b, s, axis_name=None: nnclr(a, b, s, temperature=T, axis_name=axis_name),
      [z1, z2, support], specs=[BATCH, BATCH, REPLICATED], grad_argnums=(1,))


# --- iSogCLR -----------------------------------------------------------------------------------


def isogclr_loss(z1, z2, tau, u, rho=0.3, gamma=0.9, axis_name=None):
  return isogclr(z1, z2, tau, u, rho=rho, gamma=gamma, axis_name=axis_name)[0]


def test_isogclr_first_visit_is_the_dro_objective_value_and_gradient():
  # u = 0: the moving average starts at the minibatch estimate, so the surrogate's value and its
  # gradient in z1, z2 and tau are those of the paper's objective (eq. (6)) on the minibatch.
  z1, z2 = random_pair(16, 5, 4)
  tau = np.random.default_rng(3).uniform(0.1, 0.6, size=5).astype(np.float32)
  u = np.zeros(5, np.float32)
  check_against_reference(
      lambda a, b, t: isogclr_loss(a, b, t, u, rho=0.2),
      lambda a, b, t: reference_isogclr(a, b, t, 0.2), [z1, z2, tau], grad_argnums=(0, 1, 2))


def test_isogclr_moving_average_state_and_libauc_temperature_gradient():
  # LibAUC's GCLoss_v1 (enable_isogclr): u_a = (1-gamma) u + gamma g_a per view, stored as the
  # views' mean; grad_tau = mean over views of log u_a + rho - mean_neg(exp(s/tau)/u_a s/tau).
  batch, rho, gamma = 4, 0.3, 0.9
  z1, z2 = random_pair(17, batch, 3)
  tau = np.array([0.1, 0.2, 0.3, 0.5], np.float32)
  u_prev = np.array([2.0, 0.5, 3.0, 1.5], np.float32)
  (_, aux), (g1, g2, g_tau) = jax.jit(jax.value_and_grad(
      lambda a, b, t: isogclr(a, b, t, u_prev, rho=rho, gamma=gamma), argnums=(0, 1, 2),
      has_aux=True))(z1, z2, tau)

  a = _unit(np.concatenate([z1, z2]))
  sims = a @ a.T
  u_views, grad_tau, g_views = np.zeros((2, batch)), np.zeros(batch), np.zeros((2, batch))
  for view in range(2):
    for i in range(batch):
      row = view * batch + i
      neg = [k for k in range(2 * batch) if k not in (row, (row + batch) % (2 * batch))]
      s = sims[row, neg]
      g = np.mean(np.exp(s / tau[i]))
      u_new = (1 - gamma) * u_prev[i] + gamma * g
      g_views[view, i], u_views[view, i] = g, u_new
      grad_tau[i] += 0.5 * (np.log(u_new) + rho - np.mean(np.exp(s / tau[i]) / u_new * s / tau[i]))
  assert_close(aux["u"], u_views.mean(axis=0), rtol=1e-5)
  assert_close(g_tau * batch / 2, grad_tau, rtol=1e-4)  # the documented B/2 factor

  # Network gradient: (tau/u) dg - ds_pos with u frozen, i.e. finite differences of this
  # function of the embeddings alone.
  def frozen(x1, x2):
    b = _unit(np.concatenate([x1, x2]))
    m = b @ b.T
    total = 0.0
    for view in range(2):
      for i in range(batch):
        row = view * batch + i
        neg = [k for k in range(2 * batch) if k not in (row, (row + batch) % (2 * batch))]
        total += tau[i] * np.mean(np.exp(m[row, neg] / tau[i])) / u_views[view, i]
        total -= m[row, (row + batch) % (2 * batch)]
    return total / batch
  assert_close(g1, finite_difference_grad(lambda x: frozen(x, z2), z1), rtol=2e-4)
  assert_close(g2, finite_difference_grad(lambda x: frozen(z1, x), z2), rtol=2e-4)


def test_isogclr_closed_form_orthogonal():
  # B = 2, orthonormal views equal: every negative has cosine 0, so g = 1 and u = 1 on a first
  # visit; value = 1/B sum over 2B anchors of (tau rho - 1); d/dtau_i = (2/B)(log 1 + rho - 0).
  z = jnp.eye(2)
  tau = jnp.array([0.2, 0.7])
  (value, aux), g_tau = jax.jit(jax.value_and_grad(
      lambda t: isogclr(z, z, t, jnp.zeros(2), rho=0.4), has_aux=True))(tau)
  np.testing.assert_allclose(value, (2 * (0.2 * 0.4 - 1) + 2 * (0.7 * 0.4 - 1)) / 2, rtol=1e-6)
  np.testing.assert_allclose(aux["u"], [1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(g_tau, [0.4, 0.4], rtol=1e-5)


def test_isogclr_invariances_and_pairing_guard():
  z1, z2 = random_pair(18, 8, 5)
  rng = np.random.default_rng(4)
  tau = rng.uniform(0.1, 0.5, size=8).astype(np.float32)
  u = rng.uniform(0.5, 3.0, size=8).astype(np.float32)
  perm = rng.permutation(8)
  base, aux = isogclr_j(z1, z2, tau, u)
  value_p, aux_p = isogclr_j(z1[perm], z2[perm], tau[perm], u[perm])
  np.testing.assert_allclose(value_p, base, rtol=1e-5)
  np.testing.assert_allclose(aux_p["u"], aux["u"][perm], rtol=1e-5)
  np.testing.assert_allclose(isogclr_j(z2, z1, tau, u)[0], base, rtol=1e-5)
  np.testing.assert_allclose(isogclr_j(3.0 * z1, 0.5 * z2, tau, u)[0], base, rtol=1e-5)
  assert abs(float(isogclr_j(z1, np.roll(z2, 1, 0), tau, u)[0]) - float(base)) > 1e-2


@pytest.mark.parametrize("global_batch", [16, 8])
def test_isogclr_sharded(global_batch):
  z1, z2 = random_pair(70 + global_batch, global_batch, 5)
  rng = np.random.default_rng(global_batch)
  tau = rng.uniform(0.1, 0.5, size=global_batch).astype(np.float32)
  u = rng.uniform(0.0, 3.0, size=global_batch).astype(np.float32)
  u[::3] = 0.0  # some first visits
  check_sharded_equivalence(isogclr_loss, [z1, z2, tau, u], grad_argnums=(0, 1, 2))


def test_isogclr_aux_u_sharded_matches_global():
  z1, z2 = random_pair(19, 16, 5)
  tau = np.full(16, 0.2, np.float32)
  u = np.linspace(0.0, 2.0, 16).astype(np.float32)
  expected = isogclr_j(z1, z2, tau, u)[1]["u"]
  mesh = make_mesh(AxisType.Explicit)
  step = jax.shard_map(lambda *a: isogclr(*a, axis_name="data")[1]["u"], mesh=mesh,
                       in_specs=(P("data"),) * 4, out_specs=P("data"))
  with jax.set_mesh(mesh):
    got = jax.jit(step)(*[jax.device_put(x, NamedSharding(mesh, P("data")))
                          for x in (z1, z2, tau, u)])
  assert_close(got, expected)


# --- memory_bank_nce ---------------------------------------------------------------------------


def memory_bank_nce_loss(z, positives, negatives, normalizer=2.5, axis_name=None):
  return memory_bank_nce(z, positives, negatives, num_data=50, temperature=T,
                         normalizer=normalizer, axis_name=axis_name)[0]


def test_memory_bank_nce_against_reference():
  z, positives = random_pair(31, 6, 5)
  negatives = random_rows(32, 7, 5)
  check_against_reference(
      memory_bank_nce_loss,
      lambda a, b, c: reference_memory_bank_nce(a, b, c, 50, T, 2.5),
      [z, positives, negatives], grad_argnums=(0, 1, 2))
  # The estimated partition function (no gradient through it: the value only).
  loss, aux = jax.jit(functools.partial(memory_bank_nce, num_data=50, temperature=T))(
      z, positives, negatives)
  assert_close(loss, reference_memory_bank_nce(z, positives, negatives, 50, T, None))
  scores = [math.exp(_cos(z[i], m) / T) for i in range(6) for m in [positives[i], *negatives]]
  assert_close(aux["normalizer"], 50 * np.mean(scores))


@pytest.mark.parametrize("normalizer", [2.5, None])
def test_memory_bank_nce_sharded(normalizer):
  z, positives = random_pair(33, 16, 5)
  negatives = random_rows(34, 9, 5)
  check_sharded_equivalence(functools.partial(memory_bank_nce_loss, normalizer=normalizer),
                            [z, positives, negatives], specs=[BATCH, BATCH, REPLICATED],
                            grad_argnums=(0, 1, 2))


def test_memory_bank_nce_bad_input_is_named():
  z = jnp.ones((4, 3))
  for kwargs, match in (({"num_data": 0}, "num_data must be an int >= 1"),
                        ({"num_data": 8, "temperature": 0.0}, "temperature"),
                        ({"num_data": 8, "normalizer": -1.0}, "normalizer")):
    with pytest.raises(ValueError, match=match):
      memory_bank_nce(z, z, jnp.ones((5, 3)), **kwargs)
  with pytest.raises(ValueError, match=r"negatives must have shape \[K, dim\] with z's dim 3"):
    memory_bank_nce(z, z, jnp.ones((5, 4)), num_data=8)


# --- Dtypes and zero vectors, for every loss ---------------------------------------------------

SUPPORT = random_rows(21, 6, 8)
LOSSES = {
    "info_nce": lambda a, b: info_nce(a, b, temperature=T),
    "info_nce_queue": lambda a, b: info_nce(a, b, SUPPORT, temperature=T),
    "dcl": lambda a, b: dcl(a, b, temperature=T),
    "dclw": lambda a, b: dcl(a, b, temperature=T, weight_fn=DCLW),
    "supcon": lambda a, b: supcon(jnp.stack([a, b], axis=1), jnp.arange(a.shape[0]) % 3,
                                  temperature=T),
    "nnclr": lambda a, b: nnclr(a, b, SUPPORT, temperature=T),
    "isogclr": lambda a, b: isogclr_loss(a, b, jnp.full(a.shape[0], 0.2), jnp.zeros(a.shape[0])),
    "memory_bank_nce": lambda a, b: memory_bank_nce_loss(a, b, SUPPORT, normalizer=50.0),
}


ZERO_CLOSED_FORMS = {  # batch B = 8, all-zero embeddings: every cosine is 0
    "info_nce": math.log(8),  # 1 positive + 7 in-batch negatives, all equal
    "info_nce_queue": math.log(1 + 6),  # 1 positive + 6 queue rows
    "dcl": 2 * math.log(2 * 8 - 2),  # positive 0, 2B - 2 equal negatives, two directions
    "dclw": 2 * math.log(2 * 8 - 2),
    "supcon": math.log(2 * 8 - 1),  # N - 1 candidates, all equal
    "nnclr": 2 * math.log(8),
    "isogclr": 2 * 0.2 * 0.3,  # g = 1 = u: tau (log 1 + rho) - 0 per anchor, two views
    # P = e^0 / 50 for all 1 + 6 rows, K / n = 6 / 50: -log(1/7) - 6 log(6/7)
    "memory_bank_nce": math.log(7) - 6 * math.log(6 / 7),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bfloat16_inputs_and_zero_vectors(name):
  # One compiled float32 program per loss serves the zero-vector and bfloat16 comparisons.
  fn = jax.jit(jax.value_and_grad(LOSSES[name], argnums=(0, 1)))

  zeros = jnp.zeros((8, 8))
  value, grads = fn(zeros, zeros)
  np.testing.assert_allclose(value, ZERO_CLOSED_FORMS[name], rtol=1e-6)
  assert all(np.all(np.isfinite(g)) for g in grads)

  z1, z2 = random_pair(22, 8, 8)
  z1[1] = 0.0
  z2[2] = 0.0  # a few zero rows among ordinary ones stay finite too
  value32, grads = fn(z1, z2)
  assert np.isfinite(value32) and all(np.all(np.isfinite(g)) for g in grads)

  low1, low2 = jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16)
  value, grads = fn(low1, low2)
  assert value.dtype == jnp.float32 and value.shape == ()
  assert all(g.dtype == jnp.bfloat16 for g in grads)
  same_inputs_f32, _ = fn(low1.astype(jnp.float32), low2.astype(jnp.float32))
  # atol: DCL's value can be near 0.
  np.testing.assert_allclose(value, same_inputs_f32, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(value, value32, rtol=2e-2, atol=1e-2)


# --- Bad inputs --------------------------------------------------------------------------------

GOOD = np.ones((4, 3), np.float32)


def test_info_nce_errors():
  with pytest.raises(ValueError, match=r"query must have rank 2 with shape \[batch, dim\].*"
                     r"\(4,\) \(rank 1\)"):
    info_nce(np.ones(4), GOOD, temperature=T)
  with pytest.raises(ValueError, match=r"key must have the same shape as query: expected "
                     r"\(4, 3\).*key with shape \(4, 2\)"):
    info_nce(GOOD, np.ones((4, 2)), temperature=T)
  with pytest.raises(ValueError, match=r"queue must have shape \[size, dim\] with dim = 3.*"
                     r"got shape \(5, 2\)"):
    info_nce(GOOD, GOOD, np.ones((5, 2)), temperature=T)
  with pytest.raises(ValueError, match=r"queue must have rank 2.*\(5,\)"):
    info_nce(GOOD, GOOD, np.ones(5), temperature=T)
  with pytest.raises(ValueError, match=r"queue.shape\[0\].*must be at least 1.*got 0"):
    info_nce(GOOD, GOOD, np.ones((0, 3)), temperature=T)
  with pytest.raises(ValueError, match=r"global batch size \(query.shape\[0\], query of shape "
                     r"\(1, 3\)\) must be at least 2"):
    info_nce(np.ones((1, 3)), np.ones((1, 3)), temperature=T)
  # With a queue a batch of one is fine: the negatives come from the queue.
  assert np.isfinite(info_nce_j(np.ones((1, 3)), np.ones((1, 3)), GOOD, temperature=T))
  for bad in (0.0, -1.0, float("nan")):
    with pytest.raises(ValueError, match=r"temperature must be > 0, but got"):
      info_nce(GOOD, GOOD, temperature=bad)


def test_update_queue_errors():
  with pytest.raises(ValueError, match=r"queue must have shape \[size, dim\] with dim = 2 "
                     r"\(the dim of keys\), but got shape \(5, 3\)"):
    update_queue(np.ones((5, 3)), np.ones((2, 2)))
  with pytest.raises(ValueError, match=r"keys must have rank 2.*\(2,\)"):
    update_queue(np.ones((5, 3)), np.ones(2))
  with pytest.raises(ValueError, match=r"support must have shape \[size, dim\] with dim = 2"):
    update_support_set(np.ones((5, 3)), np.ones((2, 2)))


def test_dcl_errors():
  with pytest.raises(ValueError, match=r"z2 must have rank 2 with shape \[batch, dim\].*"
                     r"\(4, 3, 1\) \(rank 3\)"):
    dcl(GOOD, np.ones((4, 3, 1)), temperature=T)
  with pytest.raises(ValueError, match=r"z2 must have the same shape as z1"):
    dcl(GOOD, np.ones((3, 3)), temperature=T)
  with pytest.raises(ValueError, match=r"global batch size \(z1.shape\[0\].*must be at least 2"):
    dcl(np.ones((1, 3)), np.ones((1, 3)), temperature=T)
  with pytest.raises(ValueError, match=r"temperature must be > 0, but got -0.1"):
    dcl(GOOD, GOOD, temperature=-0.1)
  with pytest.raises(ValueError, match=r"sigma must be > 0, but got 0"):
    negative_von_mises_fisher_weight(0)


def test_supcon_errors():
  labels = np.arange(4)
  with pytest.raises(ValueError, match=r"z must have rank 2 with shape \[batch, dim\] or rank 3 "
                     r"with shape \[batch, views, dim\], but got shape \(4,\) \(rank 1\)"):
    supcon(np.ones(4), labels, temperature=T)
  with pytest.raises(ValueError, match=r"labels \(labels_or_positive_mask of rank 1\) must be "
                     r"integers, but got dtype float32"):
    supcon(GOOD, labels.astype(np.float32), temperature=T)
  with pytest.raises(ValueError, match=r"positive mask .* must be boolean, but got dtype int"):
    supcon(GOOD, np.eye(4, dtype=np.int32), temperature=T)
  with pytest.raises(ValueError, match=re.escape(
      "labels_or_positive_mask must have shape (4,) (z of shape (4, 3)), but got shape (3,)")):
    supcon(GOOD, np.arange(3), temperature=T)
  with pytest.raises(ValueError, match=re.escape(
      "labels_or_positive_mask must have shape (4, 4) (z of shape (4, 2, 3)), but got shape "
      "(4, 3)")):
    supcon(np.ones((4, 2, 3)), np.ones((4, 3), bool), temperature=T)
  with pytest.raises(ValueError, match=r"labels_or_positive_mask must be labels of shape "
                     r"\[batch\] = \(4,\) or a mask.*got shape \(4, 4, 1\)"):
    supcon(GOOD, np.ones((4, 4, 1), bool), temperature=T)
  with pytest.raises(ValueError, match=r"global batch size \(z.shape\[0\], z of shape \(1, 3\)\)"
                     r" must be at least 2"):
    supcon(np.ones((1, 3)), np.arange(1), temperature=T)
  # One example with two views is fine: its views are each other's positives.
  np.testing.assert_allclose(supcon_j(np.ones((1, 2, 3)), np.arange(1), temperature=T), 0.0,
                             atol=1e-6)
  with pytest.raises(ValueError, match=r"temperature must be > 0, but got 0"):
    supcon(GOOD, labels, temperature=0)


def test_supcon_mask_shape_is_checked_against_the_global_batch_under_shard_map():
  mesh = make_mesh(AxisType.Explicit)
  z = np.ones((16, 3), np.float32)
  local_square_mask = np.ones((16, 2), bool)  # [b, b] per device instead of [b, B]
  step = jax.shard_map(functools.partial(supcon, temperature=T, axis_name="data"), mesh=mesh,
                       in_specs=(P("data"), P("data")), out_specs=P())
  with pytest.raises(ValueError, match=r"must have shape \(2, 16\).*axis 'data' of size 8"):
    with jax.set_mesh(mesh):
      jax.jit(step)(*[jax.device_put(x, NamedSharding(mesh, P("data")))
                      for x in (z, local_square_mask)])


def test_nnclr_errors():
  with pytest.raises(ValueError, match=r"support must have shape \[size, dim\] with dim = 3 "
                     r"\(the dim of z1\), but got shape \(6, 4\)"):
    nnclr(GOOD, GOOD, np.ones((6, 4)), temperature=T)
  with pytest.raises(ValueError, match=r"z2 must have the same shape as z1"):
    nnclr(GOOD, np.ones((4, 4)), GOOD, temperature=T)
  with pytest.raises(ValueError, match=r"global batch size.*must be at least 2"):
    nnclr(np.ones((1, 3)), np.ones((1, 3)), GOOD, temperature=T)
  with pytest.raises(ValueError, match=r"temperature must be > 0"):
    nnclr(GOOD, GOOD, GOOD, temperature=0.0)
  with pytest.raises(ValueError, match=r"z must have rank 2 with shape \[batch, dim\]"):
    nearest_neighbor(np.ones(3), GOOD)
  with pytest.raises(ValueError, match=r"support must have shape \[size, dim\] with dim = 3 "
                     r"\(the dim of z\)"):
    nearest_neighbor(GOOD, np.ones((2, 2)))


def test_isogclr_errors():
  tau, u = np.full(4, 0.1, np.float32), np.zeros(4, np.float32)
  with pytest.raises(ValueError, match=r"tau must have shape \[batch\] = \(4,\) like z1's first "
                     r"dimension, but got shape \(3,\)"):
    isogclr(GOOD, GOOD, tau[:3], u)
  with pytest.raises(ValueError, match=r"u must have rank 1 with shape \[batch\].*\(4, 1\)"):
    isogclr(GOOD, GOOD, tau, u[:, None])
  with pytest.raises(ValueError, match=r"z2 must have the same shape as z1"):
    isogclr(GOOD, np.ones((4, 2)), tau, u)
  with pytest.raises(ValueError, match=r"rho must be >= 0, but got -0.1"):
    isogclr(GOOD, GOOD, tau, u, rho=-0.1)
  for gamma in (0.0, 1.5, float("nan")):
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\], but got"):
      isogclr(GOOD, GOOD, tau, u, gamma=gamma)
  with pytest.raises(ValueError, match=r"global batch size.*must be at least 2"):
    isogclr(np.ones((1, 3)), np.ones((1, 3)), tau[:1], u[:1])
