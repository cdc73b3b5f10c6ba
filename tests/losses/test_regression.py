"""Tests for sslx.losses.regression (negative_cosine, vi_simsiam, myow_mining, myow) against
closed forms, independent float64 references written from the papers, and the same loss on one
device versus sharded over the 8 fake CPU devices of conftest.py."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from sslx.losses.regression import myow, myow_mining, negative_cosine, vi_simsiam
from tests.losses.harness import check_against_reference, check_sharded_equivalence, make_mesh

NORM_EPS = 1e-6  # the clamp documented in the docstrings


# --- Independent references (float64, loops) ----------------------------------------------------


def _unit(v):
  return v / max(np.linalg.norm(v), NORM_EPS)


def reference_negative_cosine(p, z, form="simsiam"):
  """SimSiam's D(p, z) = -p/|p| . z/|z| and BYOL's |p/|p| - z/|z||^2, averaged row by row."""
  p = np.asarray(p, np.float64)
  z = np.asarray(z, np.float64)
  total = 0.0
  for pi, zi in zip(p, z):
    if form == "simsiam":
      total += -float(_unit(pi) @ _unit(zi))
    else:  # BYOL writes it as a squared distance between the normalised vectors
      total += float(np.sum((_unit(pi) - _unit(zi)) ** 2)) if np.any(pi) and np.any(zi) else 2.0
  return total / len(p)


def reference_vi_simsiam(p, z, kappa):
  """-log PowerSpherical(z/|z|; p/|p|, kappa), De Cao & Aziz's density, with math.lgamma."""
  p = np.asarray(p, np.float64)
  z = np.asarray(z, np.float64)
  kappa = np.asarray(kappa, np.float64)
  d = p.shape[1]
  total = 0.0
  for pi, zi, ki in zip(p, z, kappa):
    a = (d - 1) / 2 + ki
    b = (d - 1) / 2
    # N = 2^(a+b) pi^b Gamma(a) / Gamma(a+b); density = (1 + mu.x)^kappa / N.
    log_n = (a + b) * math.log(2) + b * math.log(math.pi) + math.lgamma(a) - math.lgamma(a + b)
    total += log_n - ki * math.log(1.0 + float(_unit(pi) @ _unit(zi)))
  return total / len(p)


def reference_myow_mining(queries, pool, k, exclude_self):
  """The k nearest pool rows of each query by 2 - 2 cos, brute force, stable on ties."""
  out = []
  for i, q in enumerate(np.asarray(queries, np.float64)):
    dist = [(2 - 2 * float(_unit(q) @ _unit(y)), j)
            for j, y in enumerate(np.asarray(pool, np.float64)) if not (exclude_self and j == i)]
    out.append([j for _, j in sorted(dist)[:k]])
  return out


def reference_myow(prediction, pool, indices):
  total = 0.0
  for q, j in zip(np.asarray(prediction, np.float64), indices):
    total += 2 - 2 * float(_unit(q) @ _unit(np.asarray(pool[j], np.float64)))
  return total / len(prediction)


def random_pair(seed, batch, dim, dtype=np.float32):
  rng = np.random.default_rng(seed)
  p = rng.normal(size=(batch, dim)).astype(dtype)
  z = (p + 0.7 * rng.normal(size=(batch, dim))).astype(dtype)
  return p, z


def random_kappa(seed, batch):
  return np.random.default_rng(seed).uniform(0.5, 20.0, size=(batch,)).astype(np.float32)


neg_cos = jax.jit(negative_cosine, static_argnames=("form",))
vi = jax.jit(vi_simsiam)


# --- negative_cosine ------------------------------------------------------------------------------


def test_negative_cosine_closed_form():
  p = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
  z = jnp.array([[5.0, 0.0], [3.0, 0.0], [-1.0, -1.0]])  # cosines 1, 0, -1
  np.testing.assert_allclose(neg_cos(p, z), 0.0, atol=1e-7)
  np.testing.assert_allclose(neg_cos(p, z, form="byol"), (0.0 + 2.0 + 4.0) / 3, rtol=1e-6)


@pytest.mark.parametrize("form", ["simsiam", "byol"])
@pytest.mark.parametrize("batch,dim", [(1, 3), (6, 5)])
def test_negative_cosine_matches_reference(form, batch, dim):
  p, z = random_pair(batch + dim, batch, dim)
  check_against_reference(functools.partial(negative_cosine, form=form),
                          functools.partial(reference_negative_cosine, form=form), [p, z])


def test_negative_cosine_forms_are_affinely_related():
  p, z = random_pair(3, 7, 4)
  np.testing.assert_allclose(neg_cos(p, z, form="byol"), 2 + 2 * neg_cos(p, z), atol=1e-6)


@pytest.mark.parametrize("fn", [negative_cosine, functools.partial(negative_cosine, form="byol")])
def test_no_gradient_reaches_the_target(fn):
  p, z = random_pair(4, 5, 3)
  gp, gz = jax.jit(jax.grad(fn, argnums=(0, 1)))(p, z)
  assert np.any(np.asarray(gp) != 0)
  np.testing.assert_array_equal(gz, 0.0)


def test_negative_cosine_invariances_and_pairing_guard():
  p, z = random_pair(5, 8, 4)
  perm = np.random.default_rng(0).permutation(8)
  np.testing.assert_allclose(neg_cos(p[perm], z[perm]), neg_cos(p, z), rtol=1e-6)
  scale = np.random.default_rng(1).uniform(0.01, 100.0, size=(8, 1)).astype(np.float32)
  np.testing.assert_allclose(neg_cos(scale * p, z / scale), neg_cos(p, z), rtol=1e-5)
  assert abs(float(neg_cos(p, np.roll(z, 1, axis=0))) - float(neg_cos(p, z))) > 0.05


# Local batch 2 and 1; the forms differ by an affine map, so each batch size checks one.
@pytest.mark.parametrize("global_batch,form", [(16, "simsiam"), (8, "byol")])
def test_negative_cosine_sharded(global_batch, form):
  p, z = random_pair(global_batch, global_batch, 4)
  check_sharded_equivalence(functools.partial(negative_cosine, form=form), [p, z])


def test_negative_cosine_bfloat16_and_zero_vectors():
  p, z = random_pair(6, 8, 8)
  value = neg_cos(jnp.asarray(p, jnp.bfloat16), jnp.asarray(z, jnp.bfloat16))
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, neg_cos(p, z), atol=2e-2)
  zeros = jnp.zeros((3, 4))
  value, (gp, gz) = jax.jit(jax.value_and_grad(negative_cosine, argnums=(0, 1)))(zeros, zeros)
  assert float(value) == 0.0 and np.all(np.isfinite(gp)) and np.all(np.isfinite(gz))
  p[2] = 0.0
  np.testing.assert_allclose(neg_cos(p, z), reference_negative_cosine(p, z), rtol=1e-5)


def test_negative_cosine_errors():
  with pytest.raises(ValueError, match=r"p must have rank 2 with shape \[batch, dim\].*\(4,\)"):
    negative_cosine(jnp.ones(4), jnp.ones((4, 2)))
  with pytest.raises(ValueError, match=r"z must have rank 2.*\(4, 2, 1\) \(rank 3\)"):
    negative_cosine(jnp.ones((4, 2)), jnp.ones((4, 2, 1)))
  with pytest.raises(ValueError, match=r"z must have the same shape as p: expected \(4, 2\).*"
                                       r"z with shape \(3, 2\)"):
    negative_cosine(jnp.ones((4, 2)), jnp.ones((3, 2)))
  with pytest.raises(ValueError, match=r"form must be 'simsiam' or 'byol', but got 'l2'"):
    negative_cosine(jnp.ones((4, 2)), jnp.ones((4, 2)), form="l2")


# --- vi_simsiam -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kappa,cos", [(1.0, 0.0), (3.0, 0.5), (10.0, -0.25)])
def test_vi_simsiam_closed_form_on_the_2_sphere(kappa, cos):
  # D = 3: a = 1 + kappa, b = 1, so N = 2^(2+kappa) pi / (1 + kappa) (Gamma(a+1)/Gamma(a) = a).
  p = jnp.array([[1.0, 0.0, 0.0]])
  z = jnp.array([[cos, math.sqrt(1 - cos**2), 0.0]]) * 4.0
  expected = (2 + kappa) * math.log(2) + math.log(math.pi) - math.log(1 + kappa) \
      - kappa * math.log1p(cos)
  np.testing.assert_allclose(vi(p, z, jnp.array([kappa])), expected, rtol=1e-5)


def test_vi_simsiam_density_integrates_to_one_on_the_circle():
  # D = 2: integrate exp(-loss) over the angle; checks the normaliser independently of lgamma.
  theta = np.linspace(-np.pi, np.pi, 4001)[:-1]
  z = np.stack([np.cos(theta), np.sin(theta)], axis=1).astype(np.float32)
  p = np.tile(np.array([[1.0, 0.3]], np.float32), (len(theta), 1))
  for kappa in (0.5, 4.0):
    per_point = jax.vmap(lambda a, b: vi_simsiam(a[None], b[None], jnp.array([kappa])))(p, z)
    integral = np.sum(np.exp(-np.asarray(per_point, np.float64))) * (2 * np.pi / len(theta))
    np.testing.assert_allclose(integral, 1.0, rtol=1e-4)


@pytest.mark.parametrize("batch,dim", [(1, 2), (5, 6)])
def test_vi_simsiam_matches_reference(batch, dim):
  p, z = random_pair(10 + batch, batch, dim)
  kappa = random_kappa(batch, batch)
  check_against_reference(vi_simsiam, reference_vi_simsiam, [p, z, kappa], grad_argnums=(0, 2),
                          rtol=2e-5, grad_rtol=5e-4, h=1e-5)


def test_vi_simsiam_is_simsiam_at_fixed_kappa_and_kappa_gets_gradient():
  p, z = random_pair(11, 6, 4)
  kappa = jnp.full((6,), 5.0)
  # Better alignment lowers the loss at fixed kappa.
  assert float(vi(p, p + 0.01 * z, kappa)) < float(vi(p, z, kappa))
  gp, gz, gk = jax.jit(jax.grad(vi_simsiam, argnums=(0, 1, 2)))(p, z, kappa)
  np.testing.assert_array_equal(gz, 0.0)
  assert np.all(np.asarray(gk) != 0) and np.any(np.asarray(gp) != 0)


def test_vi_simsiam_invariances_and_pairing_guard():
  p, z = random_pair(12, 8, 4)
  kappa = random_kappa(2, 8)
  perm = np.random.default_rng(0).permutation(8)
  np.testing.assert_allclose(vi(p[perm], z[perm], kappa[perm]), vi(p, z, kappa), rtol=1e-6)
  np.testing.assert_allclose(vi(3.0 * p, 0.2 * z, kappa), vi(p, z, kappa), rtol=1e-5)
  assert abs(float(vi(p, z, np.roll(kappa, 1))) - float(vi(p, z, kappa))) > 0.05


@pytest.mark.parametrize("global_batch", [16, 8])
def test_vi_simsiam_sharded(global_batch):
  p, z = random_pair(20 + global_batch, global_batch, 4)
  check_sharded_equivalence(vi_simsiam, [p, z, random_kappa(3, global_batch)],
                            grad_argnums=(0, 2))


def test_vi_simsiam_bfloat16_and_zero_vectors():
  p, z = random_pair(13, 8, 8)
  kappa = random_kappa(4, 8)
  value = vi(jnp.asarray(p, jnp.bfloat16), jnp.asarray(z, jnp.bfloat16),
             jnp.asarray(kappa, jnp.bfloat16))
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, vi(p, z, jnp.asarray(kappa, jnp.bfloat16)), rtol=5e-2)
  zeros = jnp.zeros((2, 3))
  value, grads = jax.jit(jax.value_and_grad(vi_simsiam, argnums=(0, 1, 2)))(
      zeros, zeros, jnp.ones(2))
  np.testing.assert_allclose(value, math.log(4 * math.pi), rtol=1e-6)  # -log C(1) on S^2
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_vi_simsiam_errors():
  with pytest.raises(ValueError, match=r"kappa must have shape \[batch\] = \(4,\).*\(4, 2\).*"
                                       r"kappa with shape \(4, 1\)"):
    vi_simsiam(jnp.ones((4, 2)), jnp.ones((4, 2)), jnp.ones((4, 1)))
  with pytest.raises(ValueError, match=r"dimension of p \(p of shape \(4, 1\)\) must be at least "
                                       r"2.*got 1"):
    vi_simsiam(jnp.ones((4, 1)), jnp.ones((4, 1)), jnp.ones(4))
  with pytest.raises(ValueError, match=r"z must have the same shape as p"):
    vi_simsiam(jnp.ones((4, 2)), jnp.ones((4, 3)), jnp.ones(4))
  with pytest.raises(ValueError, match=r"p must have rank 2"):
    vi_simsiam(jnp.ones((2, 4, 2)), jnp.ones((4, 2)), jnp.ones(4))


# --- MYOW -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("exclude_self", [True, False])
def test_myow_mining_matches_brute_force(exclude_self):
  rng = np.random.default_rng(30)
  y = rng.normal(size=(12, 5)).astype(np.float32)
  pool = y if exclude_self else rng.normal(size=(12, 5)).astype(np.float32)
  indices, mined = jax.jit(functools.partial(myow_mining, exclude_self=exclude_self))(y, pool)
  expected = [n[0] for n in reference_myow_mining(y, pool, 1, exclude_self)]
  assert indices.dtype == jnp.int32 and indices.tolist() == expected
  np.testing.assert_array_equal(mined, pool[expected])
  if exclude_self:
    assert all(i != j for i, j in enumerate(indices.tolist()))


def test_myow_mining_without_exclusion_finds_self():
  # Guards the exclusion test: with the batch as its own pool each query is its own nearest.
  y = np.random.default_rng(31).normal(size=(6, 3)).astype(np.float32)
  indices, _ = myow_mining(y, y, exclude_self=False)
  assert indices.tolist() == list(range(6))


def test_myow_mining_zero_vectors_tie_to_the_lowest_index():
  y = np.random.default_rng(34).normal(size=(5, 3)).astype(np.float32)
  y[0] = 0.0  # cosine 0 with everything: the first candidate that is not itself
  pool = y.copy()
  pool[3] = 0.0
  indices, mined = jax.jit(myow_mining)(y, pool)
  assert indices[0] == 1 and np.all(np.isfinite(mined))
  indices, _ = jax.jit(functools.partial(myow_mining, exclude_self=False))(y, np.zeros_like(y))
  assert indices.tolist() == [0] * 5


def test_myow_mining_draws_among_the_k_nearest():
  rng = np.random.default_rng(32)
  y = rng.normal(size=(16, 4)).astype(np.float32)
  top3 = reference_myow_mining(y, y, 3, True)
  draws = set()
  for seed in range(4):
    indices, _ = myow_mining(y, y, k=3, key=jax.random.key(seed))
    assert all(j in n for j, n in zip(indices.tolist(), top3))
    draws.update((i, j) for i, j in enumerate(indices.tolist()))
  assert len(draws) > 16  # different keys pick different neighbours


@pytest.mark.parametrize("k,exclude_self", [(1, False), (3, True)])
def test_myow_mining_same_on_one_and_eight_devices(k, exclude_self):
  rng = np.random.default_rng(33)
  y = rng.normal(size=(16, 4)).astype(np.float32)
  pool = y if exclude_self else rng.normal(size=(16, 4)).astype(np.float32)
  mine = functools.partial(myow_mining, k=k, key=jax.random.key(7), exclude_self=exclude_self)
  expected_idx, expected_mined = jax.jit(mine)(y, pool)

  def check(idx, mined):
    np.testing.assert_array_equal(idx, expected_idx)
    np.testing.assert_array_equal(mined, expected_mined)

  for axis_type in (AxisType.Explicit, AxisType.Auto):
    mesh = make_mesh(axis_type)
    with jax.set_mesh(mesh):
      check(*jax.jit(mine)(*[jax.device_put(a, NamedSharding(mesh, P("data")))
                             for a in (y, pool)]))
  mesh = make_mesh(AxisType.Explicit)
  mapped = jax.shard_map(functools.partial(mine, axis_name="data"), mesh=mesh,
                         in_specs=(P("data"), P("data")), out_specs=(P("data"), P("data")))
  with jax.set_mesh(mesh):
    check(*jax.jit(mapped)(*[jax.device_put(a, NamedSharding(mesh, P("data")))
                             for a in (y, pool)]))


def test_myow_mining_errors():
  y = jnp.ones((4, 3))
  with pytest.raises(ValueError, match=r"with exclude_self=True the pool must be the batch itself"
                                       r": expected pool of shape \(4, 3\).*\(6, 3\)"):
    myow_mining(y, jnp.ones((6, 3)))
  with pytest.raises(ValueError, match=r"pool must have the same dimension as queries: expected "
                                       r"\[pool, 3\].*\(4, 2\)"):
    myow_mining(y, jnp.ones((4, 2)))
  with pytest.raises(ValueError, match=r"number of candidates per query \(global pool of 4 minus "
                                       r"the query itself\) must be at least 4"):
    myow_mining(y, y, k=4, key=jax.random.key(0))
  with pytest.raises(ValueError, match=r"key must be a jax.random key when k > 1"):
    myow_mining(y, y, k=2)
  with pytest.raises(ValueError, match=r"k must be a positive int, but got 0"):
    myow_mining(y, y, k=0)
  with pytest.raises(ValueError, match=r"queries must have rank 2"):
    myow_mining(jnp.ones(4), y)


def random_myow(seed, batch, pool_size, dim):
  rng = np.random.default_rng(seed)
  prediction = rng.normal(size=(batch, dim)).astype(np.float32)
  pool = rng.normal(size=(pool_size, dim)).astype(np.float32)
  indices = rng.integers(0, pool_size, size=(batch,)).astype(np.int32)
  return prediction, pool, indices


def test_myow_closed_form_and_zero_vectors():
  q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  pool = jnp.array([[0.0, 5.0], [-2.0, 0.0]])
  np.testing.assert_allclose(myow(q, pool, indices=jnp.array([1, 1])), (4.0 + 2.0) / 2)
  value, grad = jax.jit(jax.value_and_grad(myow))(jnp.zeros((2, 2)), pool[jnp.array([0, 1])])
  np.testing.assert_allclose(value, 2.0)
  assert np.all(np.isfinite(grad))


def test_myow_matches_reference_and_aligned_form():
  prediction, pool, indices = random_myow(40, 6, 9, 4)
  check_against_reference(lambda q, t: myow(q, t, indices=indices),
                          lambda q, t: reference_myow(q, t, indices), [prediction, pool])
  np.testing.assert_allclose(myow(prediction, pool[indices]),
                             myow(prediction, pool, indices=indices), rtol=1e-6)
  # Wrong pairing guard and no gradient into the pool.
  assert abs(float(myow(prediction, pool, indices=(indices + 1) % 9))
             - float(myow(prediction, pool, indices=indices))) > 0.05
  np.testing.assert_array_equal(
      jax.jit(jax.grad(lambda t: myow(prediction, t, indices=indices)))(pool), 0.0)


@pytest.mark.parametrize("global_batch", [16, 8])
def test_myow_sharded(global_batch):
  prediction, pool, indices = random_myow(41 + global_batch, global_batch, global_batch, 3)
  check_sharded_equivalence(lambda q, t, i, axis_name=None: myow(q, t, indices=i,
                                                                 axis_name=axis_name),
                            [prediction, pool, indices])
  if global_batch == 16:  # the row-aligned form, without indices
    check_sharded_equivalence(myow, [prediction, pool[indices]])


def test_myow_bfloat16():
  prediction, pool, indices = random_myow(42, 8, 8, 8)
  value = myow(jnp.asarray(prediction, jnp.bfloat16), jnp.asarray(pool, jnp.bfloat16),
               indices=indices)
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, myow(prediction, pool, indices=indices), atol=3e-2)


def test_myow_errors():
  q = jnp.ones((4, 3))
  with pytest.raises(ValueError, match=r"indices must have shape \[batch\] = \(4,\).*"
                                       r"indices with shape \(3,\)"):
    myow(q, jnp.ones((6, 3)), indices=jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match=r"target must have the same dimension as prediction: "
                                       r"expected \[pool, 3\].*\(6, 2\)"):
    myow(q, jnp.ones((6, 2)), indices=jnp.zeros(4, jnp.int32))
  with pytest.raises(ValueError, match=re.escape("target must have the same shape as prediction: "
                                                 "expected (4, 3)")):
    myow(q, jnp.ones((6, 3)))
