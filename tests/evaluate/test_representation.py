"""Label-free representation metrics against independent float64 NumPy references.

The references follow the papers' equations on a different code path from the jax code: RankMe
from an eigendecomposition of the Gram matrix (not an SVD), LiDAR from explicit scatter loops and
the generalised eigenproblem Sigma_b v = lambda Sigma_w v (not Sigma_w^{-1/2}), alpha-ReQ from
eigh of the covariance and np.polyfit (not an SVD and a closed-form slope), and the Wang & Isola
terms from explicit loops over rows and pairs.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from sklearn.datasets import load_digits

from sslx.evaluate import representation as rep
from sslx.losses import nt_xent


# ----------------------------------------------------------------------------------------------
# float64 references
# ----------------------------------------------------------------------------------------------


def entropy_rank_ref(values, eps):
  values = np.asarray(values, np.float64)
  p = values / np.sum(np.abs(values)) + eps
  return float(np.exp(-sum(pk * np.log(pk) for pk in p if pk > 0)))


def rankme_ref(z, eps=1e-7):
  z = np.asarray(z, np.float64)
  gram = z.T @ z if z.shape[1] <= z.shape[0] else z @ z.T  # min(n, d) square
  singular_values = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))
  return entropy_rank_ref(singular_values, eps)


def lidar_ref(z, delta=1e-4, eps=1e-8):
  z = np.asarray(z, np.float64)
  n, q, d = z.shape
  means = [sum(z[i, j] for j in range(q)) / q for i in range(n)]
  grand = sum(means) / n
  sigma_b = np.zeros((d, d))
  sigma_w = np.zeros((d, d))
  for i in range(n):
    sigma_b += np.outer(means[i] - grand, means[i] - grand)
    for j in range(q):
      sigma_w += np.outer(z[i, j] - means[i], z[i, j] - means[i])
  sigma_b /= n - 1
  sigma_w = sigma_w / (n * (q - 1)) + delta * np.eye(d)
  # Same spectrum as Sigma_w^{-1/2} Sigma_b Sigma_w^{-1/2}.
  eigenvalues = scipy.linalg.eigh(sigma_b, sigma_w, eigvals_only=True)
  return entropy_rank_ref(np.clip(eigenvalues, 0.0, None), eps)


def alpha_ref(z, first, last):
  z = np.asarray(z, np.float64)
  eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(z, rowvar=False)))[::-1]
  last = min(last, z.shape[0] - 1, z.shape[1])
  ranks = np.arange(first, last + 1)
  slope, _ = np.polyfit(np.log(ranks), np.log(eigenvalues[ranks - 1]), 1)
  return float(-slope)


def unit(row):
  return row / np.sqrt(np.sum(row * row))


def alignment_ref(z1, z2, alpha=2):
  z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
  return float(np.mean([np.linalg.norm(unit(a) - unit(b)) ** alpha for a, b in zip(z1, z2)]))


def uniformity_ref(z, t=2):
  z = np.asarray(z, np.float64)
  n = len(z)
  potentials = [np.exp(-t * np.sum((unit(z[i]) - unit(z[j])) ** 2))
                for i in range(n) for j in range(i + 1, n)]
  return float(np.log(np.mean(potentials)))


def std_ref(z):
  u = np.array([unit(row) for row in np.asarray(z, np.float64)])
  return np.sqrt(np.mean((u - u.mean(axis=0)) ** 2, axis=0))


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def spread_embeddings(seed, n, d):
  """Gaussian rows with a decaying but well-separated column spectrum, float32."""
  rng = np.random.default_rng(seed)
  scales = np.linspace(3.0, 0.3, d)
  rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
  return ((rng.standard_normal((n, d)) * scales) @ rotation + 0.5).astype(np.float32)


def views(seed, n, q, d, noise=0.4):
  """[n, q, d]: n well-separated class centres, each with q noisy views, float32."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((n, d)) * np.linspace(2.0, 0.5, d)
  return (centres[:, None, :] + noise * rng.standard_normal((n, q, d))).astype(np.float32)


def random_rotation(seed, d):
  q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
  return q.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# RankMe
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,n,d", [(0, 60, 16), (1, 12, 40), (2, 64, 64)])
def test_rankme_matches_reference(seed, n, d):
  z = spread_embeddings(seed, n, d)
  got = rep.rankme(z)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(float(got), rankme_ref(z), rtol=1e-4)


def test_rankme_hand_checkable():
  # Orthogonal columns with equal singular values: every p_k = 1/d (+ eps), so RankMe = d.
  d = 8
  orthogonal, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((50, d)))
  np.testing.assert_allclose(float(rep.rankme(3.0 * orthogonal)), d, rtol=1e-5)
  # Rank 1: one p_k = 1, the others eps, so RankMe = 1 up to ~d * eps * log(1/eps).
  rank_one = np.outer(np.arange(1.0, 31.0), np.linspace(-1.0, 2.0, 12))
  np.testing.assert_allclose(float(rep.rankme(rank_one)), 1.0, atol=1e-4)
  # All-zero embeddings: finite, ~1.
  np.testing.assert_allclose(float(rep.rankme(np.zeros((5, 4)))), 1.0, atol=1e-5)


def test_rankme_invariances():
  z = spread_embeddings(3, 40, 12)
  base = float(rep.rankme(z))
  perm = np.random.default_rng(0).permutation(40)
  for transformed in (z[perm], 1e-3 * z, 1e3 * z, z @ random_rotation(1, 12)):
    np.testing.assert_allclose(float(rep.rankme(transformed)), base, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# LiDAR
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,n,q,d,delta", [
    (0, 30, 5, 8, 1e-4), (1, 6, 4, 10, 1e-4), (2, 40, 3, 16, 1e-2),
])
def test_lidar_matches_reference(seed, n, q, d, delta):
  z = views(seed, n, q, d)
  got = rep.lidar(z, delta=delta)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(float(got), lidar_ref(z, delta=delta), rtol=2e-4)


def isotropic_classes(d, c, sigma):
  """2d classes with means +-c e_k, each with 2d views mu +- sigma e_k: Sigma_b and Sigma_w are
  both exact multiples of the identity."""
  eye = np.eye(d)
  means = np.concatenate([c * eye, -c * eye])  # [2d, d], mean zero
  offsets = np.concatenate([sigma * eye, -sigma * eye])  # [2d, d]
  return (means[:, None, :] + offsets[None, :, :]).astype(np.float32)


def test_lidar_hand_checkable():
  d, eps = 4, 1e-8
  # Perfectly separated, well-conditioned classes: Sigma_lidar is a multiple of I, so every
  # eigenvalue is equal and LiDAR = d (up to eps).
  p = 1.0 / d + eps
  expected = np.exp(-d * p * np.log(p))
  np.testing.assert_allclose(float(rep.lidar(isotropic_classes(d, 3.0, 0.5))), expected,
                             rtol=1e-5)
  # Complete collapse: every view of every sample is the same point, Sigma_b = 0, LiDAR ~ 1.
  collapsed = np.broadcast_to(np.float32([1.0, -2.0, 0.5, 3.0]), (8, 8, d))
  np.testing.assert_allclose(float(rep.lidar(collapsed)), 1.0, atol=1e-5)
  # Dimensional collapse: the classes differ along a single direction only, LiDAR ~ 1.
  rng = np.random.default_rng(0)
  line = rng.standard_normal((20, 1, 1)) * np.float32([1.0, 1.0, 0.0, 0.0])
  one_dim = (line + 0.1 * rng.standard_normal((20, 5, d))).astype(np.float32)
  assert float(rep.lidar(one_dim)) < 1.1
  assert float(rep.lidar(isotropic_classes(d, 3.0, 0.5))) > 3.99


def test_lidar_invariances():
  z = views(4, 25, 4, 6)
  base = float(rep.lidar(z))
  rng = np.random.default_rng(0)
  for transformed in (z[rng.permutation(25)], z[:, rng.permutation(4)],
                      z @ random_rotation(2, 6)):
    np.testing.assert_allclose(float(rep.lidar(transformed)), base, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# alpha-ReQ
# ----------------------------------------------------------------------------------------------


def power_law_embeddings(alpha, n=200, d=64, seed=0):
  """Centred orthonormal columns scaled so the covariance eigenvalues are exactly k^-alpha/(n-1)."""
  rng = np.random.default_rng(seed)
  basis, _ = np.linalg.qr(np.concatenate([np.ones((n, 1)), rng.standard_normal((n, d))], 1))
  columns = basis[:, 1:]  # orthonormal and orthogonal to ones, hence centred
  return (columns * np.arange(1, d + 1) ** (-alpha / 2)).astype(np.float32)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_alpha_req_recovers_exact_power_law(alpha):
  z = power_law_embeddings(alpha)
  # Default range (6, 100), clipped to d = 64.
  np.testing.assert_allclose(float(rep.alpha_req(z)), alpha, rtol=1e-3)
  np.testing.assert_allclose(float(rep.alpha_req(z, fit_range=(1, 20))), alpha, rtol=1e-3)


@pytest.mark.parametrize("seed,n,d,fit_range", [
    (0, 300, 48, (6, 100)), (1, 30, 64, (6, 100)), (2, 200, 32, (2, 10)),
])
def test_alpha_req_matches_reference(seed, n, d, fit_range):
  z = spread_embeddings(seed, n, d)
  got = rep.alpha_req(z, fit_range=fit_range)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(float(got), alpha_ref(z, *fit_range), rtol=1e-3)


def test_alpha_req_invariances():
  z = spread_embeddings(5, 150, 24)
  base = float(rep.alpha_req(z))
  perm = np.random.default_rng(0).permutation(150)
  for transformed in (z[perm], 1e-3 * z, 1e3 * z, z @ random_rotation(3, 24)):
    np.testing.assert_allclose(float(rep.alpha_req(transformed)), base, rtol=1e-3)


# ----------------------------------------------------------------------------------------------
# Alignment, uniformity, embedding std
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [2, 1, 0.5])
def test_alignment_matches_reference(alpha):
  rng = np.random.default_rng(0)
  z1 = rng.standard_normal((50, 8)).astype(np.float32)
  z2 = (z1 + 0.7 * rng.standard_normal((50, 8))).astype(np.float32)
  np.testing.assert_allclose(float(rep.alignment(z1, z2, alpha=alpha)),
                             alignment_ref(z1, z2, alpha), rtol=1e-5)


def test_alignment_hand_checkable_and_invariant():
  z = np.random.default_rng(1).standard_normal((20, 6)).astype(np.float32)
  assert float(rep.alignment(z, z)) == pytest.approx(0.0, abs=1e-6)
  assert float(rep.alignment(z, 5.0 * z)) == pytest.approx(0.0, abs=1e-6)  # normalised first
  assert float(rep.alignment(z, -z)) == pytest.approx(4.0, rel=1e-6)  # ||2u||^2
  assert float(rep.alignment(z, -z, alpha=1)) == pytest.approx(2.0, rel=1e-6)
  z2 = z + 0.3
  rotation = random_rotation(4, 6)
  np.testing.assert_allclose(float(rep.alignment(z @ rotation, z2 @ rotation)),
                             float(rep.alignment(z, z2)), rtol=1e-5)


@pytest.mark.parametrize("t", [2, 0.5, 10])
def test_uniformity_matches_reference(t):
  z = spread_embeddings(6, 40, 5)
  np.testing.assert_allclose(float(rep.uniformity(z, t=t)), uniformity_ref(z, t), rtol=1e-5)


def test_uniformity_hand_checkable_and_invariant():
  antipodal = np.float32([[1.0, 0.0, 0.0], [-2.0, 0.0, 0.0]])  # ||u_i - u_j||^2 = 4
  assert float(rep.uniformity(antipodal)) == pytest.approx(-8.0, rel=1e-6)  # -4t, t = 2
  assert float(rep.uniformity(antipodal, t=0.5)) == pytest.approx(-2.0, rel=1e-6)
  collapsed = np.tile(np.float32([[0.3, -1.0, 2.0]]), (10, 1))
  assert float(rep.uniformity(collapsed)) == pytest.approx(0.0, abs=1e-5)
  # Large t * distance would underflow exp in float32; the logsumexp keeps the value exact.
  assert float(rep.uniformity(antipodal, t=100.0)) == pytest.approx(-400.0, rel=1e-6)
  z = spread_embeddings(7, 30, 6)
  base = float(rep.uniformity(z))
  scales = np.random.default_rng(0).uniform(0.1, 10.0, (30, 1)).astype(np.float32)
  perm = np.random.default_rng(1).permutation(30)
  for transformed in (z[perm], z * scales, z @ random_rotation(5, 6)):
    np.testing.assert_allclose(float(rep.uniformity(transformed)), base, rtol=1e-5)


def test_embedding_std():
  z = spread_embeddings(8, 100, 12)
  per_dim = rep.embedding_std_per_dim(z)
  assert per_dim.shape == (12,) and per_dim.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(per_dim), std_ref(z), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(rep.embedding_std(z)), std_ref(z).mean(), rtol=1e-5)
  # Collapse (every row the same direction, any norm) gives 0; isotropic Gaussians ~ 1/sqrt(d).
  collapsed = np.arange(1.0, 21.0)[:, None] * np.float32([[1.0, -2.0, 0.5, 0.0]])
  assert float(rep.embedding_std(collapsed)) == pytest.approx(0.0, abs=1e-6)
  gaussian = np.random.default_rng(0).standard_normal((4000, 64)).astype(np.float32)
  assert float(rep.embedding_std(gaussian)) == pytest.approx(1 / 8, rel=0.02)


# ----------------------------------------------------------------------------------------------
# jit, float32, the convenience function
# ----------------------------------------------------------------------------------------------


def all_metric_calls():
  # Shapes already used above, so the eager calls reuse compiled kernels.
  z = spread_embeddings(0, 60, 16)
  return [
      (lambda a: rep.rankme(a, eps=1e-6), (z,)),
      (lambda a: rep.lidar(a, delta=1e-3), (views(0, 30, 5, 8),)),
      (lambda a: rep.alpha_req(a, fit_range=(2, 8)), (z,)),
      (lambda a, b: rep.alignment(a, b, alpha=1.5), (z, z[::-1])),
      (lambda a: rep.uniformity(a, t=3), (z,)),
      (rep.embedding_std, (z,)),
      (rep.embedding_std_per_dim, (z,)),
  ]


def test_metrics_under_jit():
  calls = all_metric_calls()
  # One jit around every metric: a single compilation.
  jitted = jax.jit(lambda args: [fn(*a) for (fn, _), a in zip(calls, args)])
  got = jitted([args for _, args in calls])
  for (fn, args), value in zip(calls, got):
    np.testing.assert_allclose(np.asarray(value), np.asarray(fn(*args)), rtol=1e-5)


def test_no_float64_even_with_x64_enabled():
  with jax.enable_x64(True):
    for fn, args in all_metric_calls():
      closed = jax.make_jaxpr(fn)(*[np.asarray(a, np.float64) for a in args])
      assert all(aval.dtype == jnp.float32 for aval in closed.out_avals)
      jaxpr = str(closed)
      # The only float64 values are the inputs themselves, each cast to float32 at once.
      assert jaxpr.count("f64") == len(args) and "float64" not in jaxpr, jaxpr


def test_representation_metrics_combines_the_metrics():
  z = views(10, 30, 3, 12)
  got = rep.representation_metrics(z, alpha_fit_range=(2, 10))
  assert set(got) == {"rankme", "lidar", "alpha_req", "alignment", "uniformity", "embedding_std"}
  assert all(isinstance(v, float) for v in got.values())
  expected = {
      "rankme": rep.rankme(z[:, 0]),
      "lidar": rep.lidar(z),
      "alpha_req": rep.alpha_req(z[:, 0], fit_range=(2, 10)),
      "alignment": rep.alignment(z[:, 0], z[:, 1]),
      "uniformity": rep.uniformity(z[:, 0]),
      "embedding_std": rep.embedding_std(z[:, 0]),
  }
  for key, value in expected.items():
    assert got[key] == pytest.approx(float(value), rel=1e-5), key


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def _bad(shape, value=1.0):
  return np.full(shape, value, np.float32)


@pytest.mark.parametrize("call,message", [
    (lambda: rep.rankme(_bad((5,))), "z must have rank 2 with shape [n, d], but got shape (5,)"),
    (lambda: rep.rankme(_bad((1, 4))), "z must have shape [n, d] with n >= 2 rows, but got "
                                       "shape (1, 4)"),
    (lambda: rep.rankme(_bad((4, 0))), "d >= 1 dimensions, but got shape (4, 0)"),
    (lambda: rep.rankme(_bad((3, 4), np.nan)), "z (shape (3, 4)) contains NaN or infinite"),
    (lambda: rep.rankme(jnp.asarray(_bad((3, 4), np.inf))), "z (shape (3, 4)) contains NaN"),
    (lambda: rep.rankme(np.ones((3, 2), np.complex64)), "z must hold real numbers"),
    (lambda: rep.rankme(_bad((3, 4)), eps=-1.0), "eps must be a finite number >= 0.0"),
    (lambda: rep.lidar(_bad((6, 4))), "z must have rank 3 with shape [n, q, d], but got shape "
                                      "(6, 4)"),
    (lambda: rep.lidar(_bad((6, 1, 4))), "z must have shape [n, q, d] with q >= 2 views per "
                                         "sample"),
    (lambda: rep.lidar(_bad((1, 3, 4))), "with n >= 2 rows, but got shape (1, 3, 4)"),
    (lambda: rep.lidar(_bad((2, 3, 4), np.nan)), "z (shape (2, 3, 4)) contains NaN"),
    (lambda: rep.lidar(_bad((2, 3, 4)), delta=0.0), "delta must be a finite number > 0.0"),
    (lambda: rep.alpha_req(_bad((2, 3, 4))), "z must have rank 2 with shape [n, d]"),
    (lambda: rep.alpha_req(_bad((50, 6))), "fit_range (6, 100) leaves fewer than 2 eigenvalues "
                                           "for z of shape [n, d] = (50, 6)"),
    (lambda: rep.alpha_req(_bad((50, 6)), fit_range=(3, 3)), "1 <= first < last"),
    (lambda: rep.alpha_req(_bad((50, 6)), fit_range=5), "fit_range must be a pair of ints"),
    (lambda: rep.alignment(_bad((4, 3)), _bad((5, 3))),
     "z2 must have the same shape as z1: expected (4, 3), but got z2 with shape (5, 3)"),
    (lambda: rep.alignment(_bad((4, 3)), _bad((4,))), "z2 must have rank 2 with shape [n, d]"),
    (lambda: rep.alignment(_bad((4, 3)), _bad((4, 3)), alpha=0), "alpha must be a finite"),
    (lambda: rep.uniformity(_bad((1, 3))), "with n >= 2 rows, but got shape (1, 3)"),
    (lambda: rep.uniformity(_bad((4, 3)), t=-2.0), "t must be a finite number > 0.0"),
    (lambda: rep.embedding_std(_bad((4, 3, 2))), "z must have rank 2"),
    (lambda: rep.representation_metrics(_bad((8, 1, 4))),
     "z_views must have shape [n, q, d] with q >= 2 views per sample, but got shape (8, 1, 4)"),
    (lambda: rep.representation_metrics(_bad((8, 4))), "z_views must have rank 3"),
    (lambda: rep.representation_metrics(_bad((8, 2, 5))),
     "alpha_fit_range (6, 100) leaves fewer than 2 eigenvalues for z_views[:, 0] of shape"),
])
def test_bad_input_raises(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


def test_shape_checks_also_run_under_jit():
  with pytest.raises(ValueError, match=re.escape("q >= 2 views per sample")):
    jax.jit(rep.lidar)(jnp.ones((4, 1, 3)))


# ----------------------------------------------------------------------------------------------
# A trained encoder ranks above a collapsed one
# ----------------------------------------------------------------------------------------------


def _encode(params, x):
  return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def _augment(x, keep, noise):
  """Jittable augmentation: pixel dropout (``keep`` is a 0/1 mask) plus Gaussian noise.

  The random draws come from NumPy: jax.random's threefry inside the training scan would add
  seconds of compile time on CPU for no benefit here.
  """
  return x * keep + 0.1 * noise


def _draw_augmentations(rng, shape):
  keep = (rng.random(shape) < 0.8).astype(np.float32)  # drop 20% of the pixels
  return keep, rng.standard_normal(shape).astype(np.float32)


@jax.jit
def _train_simclr(params, batches, keeps, noises):
  """One Adam step of NT-Xent (SimCLR) per batch; keeps/noises are [steps, 2, batch, 64]."""
  lr, beta1, beta2 = 3e-3, 0.9, 0.999

  def loss_fn(p, batch, keep, noise):
    return nt_xent(_encode(p, _augment(batch, keep[0], noise[0])),
                   _encode(p, _augment(batch, keep[1], noise[1])), temperature=0.2)

  def step(carry, inputs):
    p, m, v, t = carry
    loss, grads = jax.value_and_grad(loss_fn)(p, *inputs)
    t = t + 1
    m = jax.tree.map(lambda m, g: beta1 * m + (1 - beta1) * g, m, grads)
    v = jax.tree.map(lambda v, g: beta2 * v + (1 - beta2) * g * g, v, grads)
    p = jax.tree.map(
        lambda p, m, v: p - lr * (m / (1 - beta1**t)) / (jnp.sqrt(v / (1 - beta2**t)) + 1e-8),
        p, m, v)
    return (p, m, v, t), loss

  zeros = jax.tree.map(jnp.zeros_like, params)
  (params, _, _, _), losses = jax.lax.scan(step, (params, zeros, zeros, jnp.float32(0)),
                                           (batches, keeps, noises))
  return params, losses


def test_rankme_and_lidar_rank_trained_encoder_above_collapsed():
  digits = (load_digits().data / 16.0).astype(np.float32)  # [1797, 64]
  train, held_out = digits[:1500], digits[1500:]
  rng = np.random.default_rng(0)
  init = {"w1": rng.standard_normal((64, 128)) * np.sqrt(2 / 64), "b1": np.zeros(128),
          "w2": rng.standard_normal((128, 32)) * np.sqrt(1 / 128), "b2": np.zeros(32)}
  init = {k: jnp.asarray(v, jnp.float32) for k, v in init.items()}
  steps, batch = 100, 128
  batches = train[rng.integers(0, len(train), (steps, batch))]
  trained, losses = _train_simclr(init, batches,
                                  *_draw_augmentations(rng, (steps, 2, batch, 64)))
  losses = np.asarray(losses)
  assert losses[-10:].mean() < losses[:10].mean() - 0.5  # it learned something

  # The same encoder with a rank-1 last layer: every embedding lies on one line.
  u, s, vt = np.linalg.svd(np.asarray(trained["w2"]))
  collapsed = dict(trained, w2=jnp.asarray(s[0] * np.outer(u[:, 0], vt[0]), jnp.float32))

  # 8 augmented views of each of the 297 held-out digits: [n, q, d] = [297, 8, 32].
  held_views = _augment(held_out[:, None, :], *_draw_augmentations(rng, (len(held_out), 8, 64)))
  encode = jax.jit(_encode)
  good, bad = encode(trained, held_views), encode(collapsed, held_views)
  rankme_good, rankme_bad = float(rep.rankme(good[:, 0])), float(rep.rankme(bad[:, 0]))
  lidar_good, lidar_bad = float(rep.lidar(good)), float(rep.lidar(bad))
  # Typical values: RankMe ~21 vs ~1.3, LiDAR ~17 vs ~1.0 (d = 32).
  assert rankme_good > 5.0 * rankme_bad, (rankme_good, rankme_bad)
  assert lidar_good > 5.0 * lidar_bad, (lidar_good, lidar_bad)
  assert lidar_bad < 1.5 and rankme_bad < 2.5
