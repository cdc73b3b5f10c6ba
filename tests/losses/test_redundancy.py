"""Tests for sslx.losses.redundancy (Barlow Twins, Mixed Barlow Twins, VICReg, W-MSE, SSL-EY,
PLS-EY) against closed forms, independent float64 references written from the papers / the
authors' code, and the same loss on one device versus sharded over the 8 fake CPU devices."""

import functools
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx.losses.redundancy import (
    barlow_twins, cca_ey, mixed_barlow_twins_regularizer, pls_ey, vicreg, w_mse)
from tests.losses.harness import (
    BATCH, REPLICATED, check_against_reference, check_sharded_equivalence)

BN_EPS = 1e-5  # BatchNorm1d's eps, documented in barlow_twins
MIX_EPS = 1e-5  # the variance eps documented in mixed_barlow_twins_regularizer
NORM_EPS = 1e-6  # the norm clamp of w_mse's cosine


# --- Independent float64 references ----------------------------------------------------------


def ref_barlow_twins(z1, z2, lambd=0.0051):
  """Zbontar et al. eq. (1) with BatchNorm1d(affine=False) standardisation, element by element."""
  z1 = np.asarray(z1, np.float64)
  z2 = np.asarray(z2, np.float64)
  n, d = z1.shape
  a = (z1 - z1.mean(0)) / np.sqrt(z1.var(0) + BN_EPS)
  b = (z2 - z2.mean(0)) / np.sqrt(z2.var(0) + BN_EPS)
  loss = 0.0
  for i in range(d):
    for j in range(d):
      c_ij = sum(a[k, i] * b[k, j] for k in range(n)) / n
      loss += (1.0 - c_ij) ** 2 if i == j else lambd * c_ij**2
  return loss


def ref_mixed(z1, z2, zm, mix_ratio, perm, lambd=0.0051):
  """The mix-bt CIFAR code's formulation: the four cross-correlation matrices built separately
  (the implementation forms one residual), times lambd / 2 as in its ImageNet code."""
  def std(z):
    z = np.asarray(z, np.float64)
    return (z - z.mean(0)) / np.sqrt(z.var(0, ddof=1) + MIX_EPS)
  a, b, m = std(z1), std(z2), std(zm)
  n = a.shape[0]
  s = b[np.asarray(perm)]
  c_ma = m.T @ a / n
  c_ma_gt = mix_ratio * (a.T @ a) / n + (1 - mix_ratio) * (s.T @ a) / n
  c_mb = m.T @ b / n
  c_mb_gt = mix_ratio * (a.T @ b) / n + (1 - mix_ratio) * (s.T @ b) / n
  return 0.5 * lambd * (np.sum((c_ma - c_ma_gt) ** 2) + np.sum((c_mb - c_mb_gt) ** 2))


def vicreg_terms(z1, z2):
  """The three unweighted VICReg terms, as facebookresearch/vicreg computes them."""
  z1 = np.asarray(z1, np.float64)
  z2 = np.asarray(z2, np.float64)
  n, d = z1.shape
  inv = np.mean((z1 - z2) ** 2)
  std1 = np.sqrt(z1.var(0, ddof=1) + 1e-4)
  std2 = np.sqrt(z2.var(0, ddof=1) + 1e-4)
  var = np.mean(np.maximum(1 - std1, 0)) / 2 + np.mean(np.maximum(1 - std2, 0)) / 2
  off = ~np.eye(d, dtype=bool)
  cov = 0.0
  for z in (z1, z2):
    c = np.cov(z, rowvar=False)  # ddof=1
    cov += np.sum(c[off] ** 2) / d
  return inv, var, cov


def ref_vicreg(z1, z2, sim=25.0, var=25.0, cov=1.0):
  t_inv, t_var, t_cov = vicreg_terms(z1, z2)
  return sim * t_inv + var * t_var + cov * t_cov


def ref_w_mse(z1, z2, whitening_size=None, eps=0.0):
  """htdt/self-supervised: whiten each view of each sub-batch with the inverse Cholesky factor
  of its (shrunk, unbiased) covariance, then 2 - 2 cos averaged over pairs; explicit loops and
  np.linalg.inv instead of batched triangular solves."""
  z1 = np.asarray(z1, np.float64)
  z2 = np.asarray(z2, np.float64)
  n, d = z1.shape
  w = n if whitening_size is None else whitening_size
  out = {}
  for view, z in ((1, z1), (2, z2)):
    whitened = np.empty_like(z)
    for start in range(0, n, w):
      x = z[start:start + w]
      xc = x - x.mean(0)
      cov = xc.T @ xc / (w - 1)
      chol = np.linalg.cholesky((1 - eps) * cov + eps * np.eye(d))
      whitened[start:start + w] = (np.linalg.inv(chol) @ xc.T).T
    out[view] = whitened
  total = 0.0
  for k in range(n):
    u1 = out[1][k] / max(np.linalg.norm(out[1][k]), NORM_EPS)
    u2 = out[2][k] / max(np.linalg.norm(out[2][k]), NORM_EPS)
    total += 2 - 2 * np.dot(u1, u2)
  return total / n


def block_covariances(z1, z2):
  """Cov(z1, z2), Var(z1), Var(z2) from np.cov of the stacked [z1 | z2] features."""
  z1 = np.asarray(z1, np.float64)
  z2 = np.asarray(z2, np.float64)
  d = z1.shape[1]
  full = np.cov(np.concatenate([z1, z2], axis=1), rowvar=False)
  return full[:d, d:], full[:d, :d], full[d:, d:]


def ref_cca_ey(z1, z2):
  """SSL-EY (Chapman et al.): A = Cov(z1, z2) + Cov(z2, z1), V = Var(z1) + Var(z2)."""
  s12, s11, s22 = block_covariances(z1, z2)
  a = s12 + s12.T
  v = s11 + s22
  return -2 * np.trace(a) + np.trace(v @ v)


def ref_pls_ey(z1, z2, w1, w2):
  s12, _, _ = block_covariances(z1, z2)
  w1 = np.asarray(w1, np.float64)
  w2 = np.asarray(w2, np.float64)
  v = w1.T @ w1 + w2.T @ w2
  return -2 * np.trace(s12 + s12.T) + np.trace(v @ v)


# --- Inputs ------------------------------------------------------------------------------------


def random_pair(seed, batch, dim, dtype=np.float32):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(batch, dim)).astype(dtype)
  z2 = (z1 + 0.5 * rng.normal(size=(batch, dim))).astype(dtype)  # correlated views
  return z1, z2


def mixed_inputs(seed, batch, dim):
  rng = np.random.default_rng(seed)
  z1, z2 = random_pair(seed, batch, dim)
  perm = rng.permutation(batch).astype(np.int32)
  # Roughly, but not exactly, the linear prediction: a non-trivial regulariser.
  zm = (0.3 * z1 + 0.7 * z2[perm] + 0.3 * rng.normal(size=(batch, dim))).astype(np.float32)
  return z1, z2, zm, perm


def weights(seed, in_features, dim):
  return (np.random.default_rng(seed).normal(size=(in_features, dim)) / 2).astype(np.float32)


# Scalar-valued, positional-array forms of every loss, as the harness wants them.
def mixed_fn(z1, z2, zm, perm, axis_name=None):
  return mixed_barlow_twins_regularizer(z1, z2, zm, 0.3, perm, lambd=1.0, axis_name=axis_name)


def w_mse8(z1, z2, axis_name=None):
  # Sub-batches of 8 rows with dim 3: smaller ones make the float32 whitening ill-conditioned.
  return w_mse(z1, z2, whitening_size=8, axis_name=axis_name)


# name -> (loss fn, reference, make args(seed, batch, dim), grad_argnums, specs)
CASES = {
    "barlow_twins": (barlow_twins, ref_barlow_twins, random_pair, (0, 1), None),
    "mixed": (mixed_fn, lambda *a: ref_mixed(*a[:3], 0.3, a[3], lambd=1.0), mixed_inputs,
              (0, 1, 2), [BATCH, BATCH, BATCH, REPLICATED]),
    "vicreg": (vicreg, ref_vicreg, random_pair, (0, 1), None),
    "w_mse": (w_mse8, functools.partial(ref_w_mse, whitening_size=8), random_pair, (0, 1), None),
    "cca_ey": (cca_ey, ref_cca_ey, random_pair, (0, 1), None),
    "pls_ey": (pls_ey, ref_pls_ey,
               lambda s, b, d: (*random_pair(s, b, d), weights(s + 1, 5, d), weights(s + 2, 4, d)),
               (0, 1, 2, 3), [BATCH, BATCH, REPLICATED, REPLICATED]),
}

# Jitted once per shape: one compiled program is much cheaper than running op by op.
bt = jax.jit(barlow_twins, static_argnames=("lambd",))
vic = jax.jit(vicreg, static_argnames=("sim_weight", "var_weight", "cov_weight"))
wm = jax.jit(w_mse, static_argnames=("whitening_size", "eps"))
ssl_ey = jax.jit(cca_ey)
pls = jax.jit(pls_ey)
mixed = jax.jit(mixed_barlow_twins_regularizer, static_argnames=("lambd",))


# --- Closed forms ------------------------------------------------------------------------------


def test_barlow_twins_uncorrelated_identical_views_closed_form():
  # Columns of z have mean 0, biased variance 1 and zero correlation, so c = I / (1 + eps).
  z = jnp.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
  # z2 = 5 z - 2 has variance 25, so its eps shrinks it less: c_ii = 1/sqrt((1+eps)(1+eps/25)).
  # 1 - c_ii ~ 5e-6 keeps only ~2 digits in float32, hence the loose tolerance.
  expected = 2 * (1 - 1 / math.sqrt((1 + BN_EPS) * (1 + BN_EPS / 25))) ** 2
  np.testing.assert_allclose(bt(z, 5.0 * z - 2.0), expected, rtol=5e-2)


def test_barlow_twins_anticorrelated_views_closed_form():
  # z2 = -z1: c = -I / (1 + eps), each diagonal term (1 + 1/(1 + eps))^2.
  z = jnp.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
  np.testing.assert_allclose(bt(z, -z), 2 * (1 + 1 / (1 + BN_EPS)) ** 2, rtol=1e-6)


def test_vicreg_closed_form_each_term():
  # z1 = [[a, 0], [-a, 0]]: dim 0 has unbiased variance 2a^2, dim 1 variance 0, no covariance.
  a = 0.25
  z1 = jnp.array([[a, 0.0], [-a, 0.0]])
  z2 = jnp.zeros((2, 2))
  inv = a**2 / 2
  var = (1 - math.sqrt(2 * a**2 + 1e-4) + 2 * (1 - 0.01) + (1 - 0.01)) / 4  # hinges / 2 / D
  np.testing.assert_allclose(vic(z1, z2, sim_weight=1.0, var_weight=0.0, cov_weight=0.0), inv,
                             rtol=1e-6)
  np.testing.assert_allclose(vic(z1, z2, sim_weight=0.0, var_weight=1.0, cov_weight=0.0), var,
                             rtol=1e-6)
  # Perfectly correlated dimensions: cov = [[v, v], [v, v]] with v = 2 a^2 -> 2 v^2 / D.
  z = jnp.array([[a, a], [-a, -a]])
  np.testing.assert_allclose(vic(z, z, sim_weight=0.0, var_weight=0.0, cov_weight=1.0),
                             2 * (2 * (2 * a**2) ** 2 / 2), rtol=1e-6)


def test_w_mse_whitening_removes_any_lower_triangular_map():
  # Cholesky whitening of M x (M lower triangular, positive diagonal) equals that of x: the
  # views become identical, and the loss is 0, whatever M and a translation do to each view.
  z, _ = random_pair(0, 8, 3)
  m = np.array([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [-1.0, 3.0, 0.3]], np.float32)
  np.testing.assert_allclose(wm(z, z @ m.T + 4.0), 0.0, atol=1e-5)
  np.testing.assert_allclose(wm(z, -z), 4.0, rtol=1e-6)


def test_cca_and_pls_ey_closed_form():
  z = jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # covariance 2/3 I
  # z2 = 2 z: S12 = 4/3 I, V = (2/3 + 8/3) I = 10/3 I.
  np.testing.assert_allclose(ssl_ey(z, 2 * z), -4 * 8 / 3 + 2 * (10 / 3) ** 2, rtol=1e-6)
  w = jnp.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])  # w^T w = diag(1, 4)
  np.testing.assert_allclose(pls(z, 2 * z, w, w), -4 * 8 / 3 + 2**2 + 8**2, rtol=1e-6)


def test_mixed_regularizer_vanishes_for_identical_batches():
  z, _ = random_pair(1, 6, 3)
  np.testing.assert_allclose(mixed(z, z, z, 0.4, np.arange(6)), 0.0, atol=1e-9)


# --- Reference value and gradient --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference_value_and_finite_difference_gradient(name):
  fn, ref, make, argnums, _ = CASES[name]
  args = [a.copy() for a in make(7, 8, 3)]
  # A zero row in each view: an all-zero embedding is an ordinary example for these losses
  # (they standardise or whiten over the batch), with a finite gradient.
  args[0][2] = 0.0
  args[1][5] = 0.0
  check_against_reference(fn, ref, args, grad_argnums=argnums, rtol=1e-5, grad_rtol=5e-5)


def test_references_with_other_hyperparameters():
  z1, z2 = random_pair(3, 9, 4)
  check_against_reference(functools.partial(barlow_twins, lambd=0.3),
                          functools.partial(ref_barlow_twins, lambd=0.3), [z1, z2])
  check_against_reference(
      functools.partial(vicreg, sim_weight=2.0, var_weight=3.0, cov_weight=0.5),
      functools.partial(ref_vicreg, sim=2.0, var=3.0, cov=0.5), [0.3 * z1, 0.3 * z2])
  # One sub-batch spanning the whole batch, with shrinkage.
  check_against_reference(functools.partial(w_mse, eps=0.1),
                          functools.partial(ref_w_mse, eps=0.1), [z1, z2], grad_rtol=1e-4)


def test_vicreg_variance_hinge_active_and_inactive():
  # Small embeddings: every std hinge is active; large: none is (the reference above runs at
  # scale 0.3, where some are). Both must match.
  z1, z2 = random_pair(4, 8, 3)
  for scale in (0.05, 5.0):
    np.testing.assert_allclose(vic(scale * z1, scale * z2),
                               ref_vicreg(scale * z1, scale * z2), rtol=1e-5)


# --- Invariances -------------------------------------------------------------------------------


LOSSES_OF_TWO_VIEWS = {
    "barlow_twins": bt, "vicreg": vic, "w_mse": wm, "cca_ey": ssl_ey,
}


@pytest.mark.parametrize("name", sorted(LOSSES_OF_TWO_VIEWS))
def test_joint_batch_permutation_invariance_and_wrong_pairing(name):
  loss = LOSSES_OF_TWO_VIEWS[name]
  z1, z2 = random_pair(5, 10, 3)
  perm = np.random.default_rng(0).permutation(10)
  np.testing.assert_allclose(loss(z1[perm], z2[perm]), loss(z1, z2), rtol=1e-5)
  # Guards the test above: a loss that ignores which rows are pairs would pass it.
  assert abs(float(loss(z1, np.roll(z2, 1, axis=0))) - float(loss(z1, z2))) > 1e-2


@pytest.mark.parametrize("name", sorted(LOSSES_OF_TWO_VIEWS))
def test_swapping_views_invariance(name):
  loss = LOSSES_OF_TWO_VIEWS[name]
  z1, z2 = random_pair(6, 8, 3)
  np.testing.assert_allclose(loss(z2, z1), loss(z1, z2), rtol=1e-5)


def test_pls_ey_permutation_swap_and_pairing():
  z1, z2 = random_pair(7, 10, 3)
  w1, w2 = weights(1, 5, 3), weights(2, 4, 3)
  perm = np.random.default_rng(1).permutation(10)
  value = float(pls(z1, z2, w1, w2))
  np.testing.assert_allclose(pls(z1[perm], z2[perm], w1, w2), value, rtol=1e-5)
  np.testing.assert_allclose(pls(z2, z1, w2, w1), value, rtol=1e-5)
  assert abs(float(pls(z1, np.roll(z2, 1, axis=0), w1, w2)) - value) > 1e-2


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg", "cca_ey"])
def test_translation_invariance(name):
  # Barlow Twins standardises, VICReg's variance/covariance and the CCA covariances centre; the
  # invariance term of VICReg sees only the difference of the views, so translate both alike.
  loss = LOSSES_OF_TWO_VIEWS[name]
  z1, z2 = random_pair(8, 8, 3)
  shift = np.array([3.0, -1.0, 0.5], np.float32)
  np.testing.assert_allclose(loss(z1 + shift, z2 + shift), loss(z1, z2), rtol=1e-4)


def test_barlow_twins_per_dimension_scale_invariance():
  z1, z2 = random_pair(9, 8, 3)
  # Exact up to BatchNorm's eps (1e-5 against variances ~1, a ~1e-5 change in c whose effect
  # on this small loss is ~3e-4 relative); a missing standardisation changes it by far more.
  s1 = np.array([1.5, 3.0, 10.0], np.float32)
  s2 = np.array([7.0, 2.0, 1.0], np.float32)
  np.testing.assert_allclose(bt(s1 * z1, s2 * z2), bt(z1, z2), rtol=1e-3)


def test_mixed_regularizer_batch_permutation_and_wrong_permutation():
  z1, z2, zm, perm = mixed_inputs(10, 10, 3)
  value = float(mixed(z1, z2, zm, 0.3, perm, lambd=1.0))
  # Relabel the batch by q: new row k is old row q[k], mixed with old row perm[q[k]], which is
  # new row q^-1[perm[q[k]]].
  q = np.random.default_rng(2).permutation(10)
  q_inv = np.argsort(q)
  new_perm = q_inv[perm[q]]
  np.testing.assert_allclose(mixed(z1[q], z2[q], zm[q], 0.3, new_perm, lambd=1.0), value,
                             rtol=1e-5)
  assert abs(float(mixed(z1, z2, zm, 0.3, np.roll(perm, 1), lambd=1.0)) - value) > 1e-3
  assert abs(float(mixed(z1, z2, zm, 0.6, perm, lambd=1.0)) - value) > 1e-3


def test_w_mse_sub_batches_are_whitened_separately():
  # Scaling the second half of both views changes nothing with sub-batches of half the batch
  # (each half is whitened on its own), but does with one whitening over the whole batch.
  z1, z2 = random_pair(11, 16, 3)
  s1, s2 = z1.copy(), z2.copy()
  s1[8:] *= 5.0
  s2[8:] *= 5.0
  np.testing.assert_allclose(wm(s1, s2, whitening_size=8), wm(z1, z2, whitening_size=8),
                             rtol=1e-5)
  assert abs(float(wm(s1, s2)) - float(wm(z1, z2))) > 1e-2
  np.testing.assert_allclose(wm(z1, z2, whitening_size=8), ref_w_mse(z1, z2, 8), rtol=1e-5)


# --- Dtypes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_bfloat16_inputs_compute_in_float32(name):
  fn, _, make, _, _ = CASES[name]
  args = make(12, 8, 3)
  low = [jnp.asarray(a, jnp.bfloat16) if a.dtype == np.float32 else a for a in args]
  value = jax.jit(fn)(*low)
  assert value.dtype == jnp.float32
  rounded = [a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a for a in low]
  np.testing.assert_allclose(value, jax.jit(fn)(*rounded), rtol=1e-6)
  np.testing.assert_allclose(value, jax.jit(fn)(*args), rtol=0.1, atol=0.05)


# --- Degenerate inputs -------------------------------------------------------------------------


def finite_grads(fn, *args, argnums=(0, 1)):
  value, grads = jax.jit(jax.value_and_grad(fn, argnums=argnums))(*args)
  assert all(np.all(np.isfinite(g)) for g in grads)
  return float(value)


def test_all_zero_embeddings_are_finite():
  zeros = jnp.zeros((4, 3))
  assert finite_grads(barlow_twins, zeros, zeros) == pytest.approx(3.0)  # c = 0: sum of 1s
  assert finite_grads(vicreg, zeros, zeros) == pytest.approx(25 * 0.99, rel=1e-6)
  assert finite_grads(cca_ey, zeros, zeros) == 0.0
  assert finite_grads(functools.partial(pls_ey, w1=jnp.zeros((2, 3)), w2=jnp.zeros((2, 3))),
                      zeros, zeros) == 0.0
  assert finite_grads(lambda a, b, m: mixed_barlow_twins_regularizer(a, b, m, 0.5, jnp.arange(4)),
                      zeros, zeros, zeros, argnums=(0, 1, 2)) == 0.0
  # W-MSE needs shrinkage for a singular covariance (documented): whitened zeros have cosine 0.
  assert finite_grads(functools.partial(w_mse, eps=0.1), zeros, zeros) == pytest.approx(2.0)
  assert np.isnan(float(wm(zeros, zeros)))


# --- Errors ------------------------------------------------------------------------------------


TWO_VIEW_FNS = {"barlow_twins": barlow_twins, "vicreg": vicreg, "w_mse": w_mse, "cca_ey": cca_ey,
                "pls_ey": lambda a, b, **kw: pls_ey(a, b, jnp.ones((2, 4)), jnp.ones((2, 4)), **kw),
                "mixed": lambda a, b, **kw: mixed_barlow_twins_regularizer(
                    a, b, a, 0.5, jnp.arange(a.shape[0] if a.ndim else 1), **kw)}


@pytest.mark.parametrize("name", sorted(TWO_VIEW_FNS))
@pytest.mark.parametrize("bad_shape", [(8,), (2, 4, 3)])
@pytest.mark.parametrize("which", ["z1", "z2"])
def test_wrong_rank_names_argument_and_shapes(name, bad_shape, which):
  good, bad = jnp.ones((8, 4)), jnp.ones(bad_shape)
  args = (bad, good) if which == "z1" else (good, bad)
  pattern = (rf"{which} must have rank 2 with shape \[batch, dim\].*"
             rf"{re.escape(str(bad_shape))} \(rank {len(bad_shape)}\)")
  with pytest.raises(ValueError, match=pattern):
    TWO_VIEW_FNS[name](*args)


@pytest.mark.parametrize("name", sorted(TWO_VIEW_FNS))
def test_mismatched_shapes_name_argument_and_shapes(name):
  pattern = r"z2 must have the same shape as z1: expected \(8, 4\).*z2 with shape \(8, 5\)"
  with pytest.raises(ValueError, match=pattern):
    TWO_VIEW_FNS[name](jnp.ones((8, 4)), jnp.ones((8, 5)))


@pytest.mark.parametrize("name", sorted(TWO_VIEW_FNS))
def test_batch_of_one_raises(name):
  pattern = r"global batch size \(z1.shape\[0\], z1 of shape \(1, 4\)\) must be at least 2"
  with pytest.raises(ValueError, match=pattern):
    TWO_VIEW_FNS[name](jnp.ones((1, 4)), jnp.ones((1, 4)))


def test_global_batch_of_one_over_a_named_axis_raises():
  per_instance = functools.partial(vicreg, axis_name="i")
  with pytest.raises(ValueError, match=r"z1.shape\[0\] = 1 times the size 1 of axis 'i'"):
    jax.vmap(per_instance, axis_name="i")(jnp.ones((1, 1, 4)), jnp.ones((1, 1, 4)))


@pytest.mark.parametrize("kwargs,pattern", [
    ({"lambd": -0.1}, r"lambd must be >= 0, but got -0.1"),
    ({"lambd": float("nan")}, r"lambd must be >= 0, but got nan"),
])
def test_barlow_twins_bad_lambda(kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    barlow_twins(jnp.ones((4, 3)), jnp.ones((4, 3)), **kwargs)


@pytest.mark.parametrize("weight", ["sim_weight", "var_weight", "cov_weight"])
def test_vicreg_negative_weight(weight):
  with pytest.raises(ValueError, match=rf"{weight} must be >= 0, but got -1.0"):
    vicreg(jnp.ones((4, 3)), jnp.ones((4, 3)), **{weight: -1.0})


def test_mixed_regularizer_bad_arguments():
  z = jnp.ones((4, 3))
  perm = jnp.arange(4)
  with pytest.raises(ValueError, match=r"mix_ratio must be in \[0, 1\], but got 1.5"):
    mixed_barlow_twins_regularizer(z, z, z, 1.5, perm)
  with pytest.raises(ValueError, match=r"lambd must be >= 0"):
    mixed_barlow_twins_regularizer(z, z, z, 0.5, perm, lambd=-1.0)
  with pytest.raises(ValueError, match=r"z_mixed must have the same shape as z1: expected "
                     r"\(4, 3\).*z_mixed with shape \(4, 2\)"):
    mixed_barlow_twins_regularizer(z, z, jnp.ones((4, 2)), 0.5, perm)
  with pytest.raises(ValueError, match=r"z_mixed must have rank 2"):
    mixed_barlow_twins_regularizer(z, z, jnp.ones(4), 0.5, perm)
  with pytest.raises(ValueError, match=r"permutation must have shape \[global_batch\] = \(4,\).*"
                     r"got shape \(3,\)"):
    mixed_barlow_twins_regularizer(z, z, z, 0.5, jnp.arange(3))
  with pytest.raises(ValueError, match=r"permutation must have rank 1 with shape "
                     r"\[global_batch\] = \[4\].*\(4, 1\)"):
    mixed_barlow_twins_regularizer(z, z, z, 0.5, jnp.zeros((4, 1), jnp.int32))
  with pytest.raises(ValueError, match=r"permutation must be an integer array.*float32"):
    mixed_barlow_twins_regularizer(z, z, z, 0.5, jnp.arange(4.0))


@pytest.mark.parametrize("whitening_size", [3, 4, 5, 2.5])
def test_w_mse_bad_whitening_size(whitening_size):
  # Batch 12, dim 4: 3 and 4 are not larger than dim, 5 does not divide 12, 2.5 is no integer.
  pattern = (r"whitening_size must be an integer that divides the global batch size 12 and is "
             r"larger than the embedding dimension 4 \(z1 of shape \(12, 4\)\), but got "
             + re.escape(repr(whitening_size)))
  with pytest.raises(ValueError, match=pattern):
    w_mse(jnp.ones((12, 4)), jnp.ones((12, 4)), whitening_size=whitening_size)


def test_w_mse_batch_not_larger_than_dim():
  with pytest.raises(ValueError, match=r"larger than the embedding dimension 4 .*got None"):
    w_mse(jnp.ones((4, 4)), jnp.ones((4, 4)))


@pytest.mark.parametrize("eps", [-0.1, 1.0, float("nan")])
def test_w_mse_bad_eps(eps):
  with pytest.raises(ValueError, match=r"eps must be a number in \[0, 1\), but got"):
    w_mse(jnp.ones((8, 3)), jnp.ones((8, 3)), eps=eps)


@pytest.mark.parametrize("which", ["w1", "w2"])
def test_pls_ey_bad_weights(which):
  z = jnp.ones((4, 3))
  good = jnp.ones((5, 3))
  for bad, pattern in ((jnp.ones((5, 2)),
                        r"must have shape \[in_features, dim\] = \[in_features, 3\].*"
                        r"got shape \(5, 2\)"),
                       (jnp.ones(3), r"must have rank 2 with shape \[in_features, dim\]")):
    args = (bad, good) if which == "w1" else (good, bad)
    with pytest.raises(ValueError, match=which + " " + pattern):
      pls_ey(z, z, *args)


# --- Sharded over 8 devices --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("global_batch", [16, 8])  # local batch 2, and 1
def test_same_value_and_gradient_on_one_and_eight_devices(name, global_batch):
  fn, _, make, argnums, specs = CASES[name]
  # W-MSE: two sub-batches of 8, each spread over 4 devices (global batch 16), or one over 8.
  check_sharded_equivalence(fn, make(20 + global_batch, global_batch, 3), specs=specs,
                            grad_argnums=argnums, rtol=2e-5)


REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
W_MSE_REPEATED = """
import jax, numpy as np
from sslx.losses import w_mse
z1 = np.random.default_rng(0).standard_normal((256, 64), dtype=np.float32)
step = jax.jit(jax.value_and_grad(lambda a, b: w_mse(a, b, whitening_size=128), argnums=(0, 1)))
for _ in range(20):
  jax.block_until_ready(step(z1, z1 + 0.5))
print("done")
"""


def test_w_mse_gradient_does_not_deadlock_the_cpu_thread_pool():
  # Batched LAPACK triangular solves in the forward and backward pass used to deadlock XLA's
  # CPU thread pool on 2 cores about every other run; w_mse now solves one matrix at a time.
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
  result = subprocess.run([sys.executable, "-c", W_MSE_REPEATED], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
  assert result.returncode == 0 and "done" in result.stdout, result.stderr[-2000:]
