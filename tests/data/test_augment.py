"""Tests for sslx.data.augment: jittable, per-example-keyed image augmentation.

XLA on CPU compiles slowly, so the tests share a few jitted functions (module-scoped
fixtures) and keep images tiny; statistical tests vmap one op over many keys.
"""

import colorsys
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sslx.data import augment as A

N_KEYS = 4000  # keys for the statistical tests; 4 standard errors of a rate <= 0.032


def _keys(n, seed=0):
  return jax.random.split(jax.random.key(seed), n)


def _rand_image(shape, seed=0, lo=0.1, hi=0.9):
  return jnp.asarray(np.random.RandomState(seed).uniform(lo, hi, shape).astype(np.float32))


def _rate_ok(flags, p):
  rate = float(np.mean(np.asarray(flags)))
  tol = 4 * math.sqrt(max(p * (1 - p), 1e-4) / len(flags))
  assert abs(rate - p) <= tol, (rate, p, tol)


# ----------------------------------------------------------------------------------
# Identity at probability 0 / strength 0, and the op itself at probability 1.


def test_ops_with_prob_zero_are_identity():
  key = jax.random.key(1)
  img = _rand_image((8, 8, 3))
  np.testing.assert_array_equal(A.random_flip(key, img, prob=0.0), img)
  np.testing.assert_array_equal(A.random_grayscale(key, img, prob=0.0), img)
  np.testing.assert_array_equal(A.gaussian_blur(key, img, prob=0.0), img)
  np.testing.assert_array_equal(A.solarize(key, img, prob=0.0), img)
  np.testing.assert_array_equal(
    A.color_jitter(key, img, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, prob=0.0),
    img)
  np.testing.assert_array_equal(
    A.color_jitter(key, img, brightness=0, contrast=0, saturation=0, hue=0, prob=1.0), img)
  # Grayscale and the colour-only jitter ops do nothing to a 1-channel image.
  gray = _rand_image((8, 8, 1))
  np.testing.assert_array_equal(A.random_grayscale(key, gray, prob=1.0), gray)
  np.testing.assert_array_equal(
    A.color_jitter(key, gray, brightness=0, contrast=0, saturation=0.9, hue=0.5, prob=1.0),
    gray)


def test_pipeline_with_everything_off_is_identity():
  cfg = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0,
             grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
  img = np.random.RandomState(0).randint(0, 256, (8, 8, 3)).astype(np.uint8)
  out = jax.jit(lambda k, x: A.augment_view(k, x, cfg))(jax.random.key(0), jnp.asarray(img))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, img.astype(np.float32) / 255.0, atol=1e-5)


def test_prob_one_ops():
  key = jax.random.key(2)
  img = _rand_image((6, 7, 3), lo=0.0, hi=1.0)
  np.testing.assert_array_equal(A.random_flip(key, img, prob=1.0), img[:, ::-1])
  sol = A.solarize(key, img, prob=1.0, threshold=0.5)
  np.testing.assert_array_equal(sol, np.where(img >= 0.5, 1.0 - img, img))
  exact = jnp.asarray([[[0.25], [0.5], [0.75], [1.0]]], jnp.float32)
  np.testing.assert_array_equal(
    A.solarize(key, exact, prob=1.0), [[[0.25], [0.5], [0.25], [0.0]]])
  g = np.asarray(A.random_grayscale(key, img, prob=1.0))
  luma = 0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]
  for c in range(3):
    np.testing.assert_allclose(g[..., c], luma, atol=1e-6)
  blurred = A.gaussian_blur(key, img, prob=1.0, sigma=(1.0, 2.0))
  assert not np.allclose(blurred, img, atol=1e-3)


def test_color_jitter_semantics():
  img = _rand_image((6, 6, 3), lo=0.2, hi=0.6)
  for seed in range(3):
    key = jax.random.key(seed)
    # Brightness only: one factor in [0.6, 1.4] for every pixel (no clipping here).
    out = np.asarray(A.color_jitter(key, img, brightness=0.4, contrast=0, saturation=0,
                                    hue=0, prob=1.0))
    ratio = out / np.asarray(img)
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
    assert 0.6 - 1e-6 <= ratio.flat[0] <= 1.4 + 1e-6 and abs(ratio.flat[0] - 1) > 1e-4
    # Hue only: keeps V = max channel and max - min (HSV value and chroma).
    out = np.asarray(A.color_jitter(key, img, brightness=0, contrast=0, saturation=0,
                                    hue=0.5, prob=1.0))
    np.testing.assert_allclose(out.max(-1), np.asarray(img).max(-1), atol=1e-5)
    np.testing.assert_allclose(out.max(-1) - out.min(-1),
                               np.asarray(img).max(-1) - np.asarray(img).min(-1), atol=1e-5)
    # Contrast only: keeps the mean luma (no clipping in this range).
    out = A.color_jitter(key, img, brightness=0, contrast=0.4, saturation=0, hue=0, prob=1.0)
    np.testing.assert_allclose(jnp.mean(A._gray(out)), jnp.mean(A._gray(img)), atol=1e-5)
  # Saturation and hue leave a gray image alone.
  gray = jnp.broadcast_to(_rand_image((6, 6, 1)), (6, 6, 3))
  out = A.color_jitter(jax.random.key(0), gray, brightness=0, contrast=0, saturation=0.9,
                       hue=0.5, prob=1.0)
  np.testing.assert_allclose(out, gray, atol=1e-6)


def test_hue_matches_colorsys():
  rgb = np.random.RandomState(3).uniform(0, 1, (40, 3)).astype(np.float32)
  rgb[0] = [0.5, 0.5, 0.5]  # gray
  rgb[1] = [0.0, 0.0, 0.0]
  for shift in (0.3, -0.45):
    got = np.asarray(A._adjust_hue(jnp.asarray(rgb), shift))
    want = []
    for r, g, b in rgb:
      h, s, v = colorsys.rgb_to_hsv(r, g, b)
      want.append(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v))
    np.testing.assert_allclose(got, np.array(want), atol=1e-5)


def test_random_order_jitter_equals_explicit_order():
  """The two-pass random order equals applying the ops one by one in sorted order."""
  img = _rand_image((5, 5, 3), lo=0.0, hi=1.0)
  strengths = dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.4)
  for seed in range(6):
    u = jax.random.uniform(jax.random.key(seed), (A._N_JITTER,))
    got = A._color_jitter(u, img, *strengths.values(), 1.0, True)
    order = np.argsort(np.asarray(u[5:9]))
    factors = [1 - 0.8 + 1.6 * u[1 + i] for i in range(3)] + [-0.4 + 0.8 * u[4]]
    want = img
    for i in order:
      want = A._adjust(want, int(i), factors[i])
    np.testing.assert_allclose(got, want, atol=1e-5)


# ----------------------------------------------------------------------------------
# Statistics over many keys.


@pytest.fixture(scope="module")
def stat_keys():
  return _keys(N_KEYS, seed=7)


def test_flip_rate(stat_keys):
  img = jnp.arange(8, dtype=jnp.float32).reshape(2, 4, 1) / 8
  out = jax.jit(jax.vmap(lambda k: A.random_flip(k, img, prob=0.5)))(stat_keys)
  flipped = np.all(np.asarray(out) == np.asarray(img[:, ::-1]), axis=(1, 2, 3))
  same = np.all(np.asarray(out) == np.asarray(img), axis=(1, 2, 3))
  assert np.all(flipped ^ same)
  _rate_ok(flipped, 0.5)


def test_application_rates(stat_keys):
  img = _rand_image((4, 4, 3))

  def apply_all(k):
    k1, k2, k3 = jax.random.split(k, 3)
    jit = A.color_jitter(k1, img, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                         prob=0.8)
    gray = A.random_grayscale(k2, img, prob=0.2)
    blur = A.gaussian_blur(k3, img, prob=0.5, sigma=(1.0, 2.0), kernel_size=3)
    return jit, gray, blur

  jit, gray, blur = jax.jit(jax.vmap(apply_all))(stat_keys)
  changed = lambda out: np.any(np.abs(np.asarray(out) - np.asarray(img)) > 1e-6, axis=(1, 2, 3))
  _rate_ok(changed(jit), 0.8)
  gray = np.asarray(gray)
  is_gray = np.all(gray[..., 0] == gray[..., 1], axis=(1, 2)) & np.all(
    gray[..., 1] == gray[..., 2], axis=(1, 2))
  assert np.all(is_gray == changed(gray))
  _rate_ok(is_gray, 0.2)
  _rate_ok(changed(blur), 0.5)


def test_crop_box_statistics(stat_keys):
  h = w = 32

  def boxes(scale, ratio):
    return np.asarray(jax.jit(jax.vmap(
      lambda k: A.sample_crop_box(k, h, w, scale, ratio)))(stat_keys))

  def check(b, scale, ratio):
    y0, x0, bh, bw = b.T
    frac = bh * bw / (h * w)
    assert np.all(y0 >= 0) and np.all(x0 >= 0)
    assert np.all(y0 + bh <= h + 1e-4) and np.all(x0 + bw <= w + 1e-4)
    assert np.all(frac >= scale[0] - 1e-5) and np.all(frac <= scale[1] + 1e-5)
    log_r = np.log(bw / bh)
    assert np.all(log_r >= math.log(ratio[0]) - 1e-5)
    assert np.all(log_r <= math.log(ratio[1]) + 1e-5)
    return frac, log_r

  # Square crops: every candidate fits, so the area fraction is uniform in scale.
  scale = (0.08, 1.0)
  frac, _ = check(boxes(scale, (1.0, 1.0)), scale, (1.0, 1.0))
  se = (scale[1] - scale[0]) / math.sqrt(12 * N_KEYS)
  assert abs(frac.mean() - sum(scale) / 2) < 4 * se, frac.mean()
  assert frac.min() < 0.1 and frac.max() > 0.98  # covers the range
  # Default aspect ratios with areas that always fit: area uniform, log-ratio uniform.
  scale, ratio = (0.08, 0.5), (3 / 4, 4 / 3)
  frac, log_r = check(boxes(scale, ratio), scale, ratio)
  assert abs(frac.mean() - sum(scale) / 2) < 4 * (scale[1] - scale[0]) / math.sqrt(12 * N_KEYS)
  half = math.log(4 / 3)
  assert abs(log_r.mean()) < 4 * 2 * half / math.sqrt(12 * N_KEYS)
  assert abs(log_r.std() - 2 * half / math.sqrt(12)) < 0.01
  # The default (SimCLR) setting: everything stays in range.
  check(boxes((0.08, 1.0), ratio), (0.08, 1.0), ratio)


def test_crop_box_fallback_for_extreme_aspect():
  # A 4x40 image cannot hold a crop with aspect ratio <= 4/3 and area >= 90%: the
  # fallback is the centred crop with the ratio clamped to 4/3.
  b = np.asarray(A.sample_crop_box(jax.random.key(0), 4, 40, (0.9, 1.0), (3 / 4, 4 / 3)))
  np.testing.assert_allclose(b, [0.0, (40 - 16 / 3) / 2, 4.0, 16 / 3], rtol=1e-5)


# ----------------------------------------------------------------------------------
# Crop and blur.


def test_full_crop_is_identity():
  img = _rand_image((12, 12, 3), lo=0.0, hi=1.0)
  out = A.random_resized_crop(jax.random.key(0), img, size=12, scale=(1, 1), ratio=(1, 1))
  np.testing.assert_allclose(out, img, atol=1e-5)


def test_crop_matches_scale_and_translate():
  """The resize uses jax.image.scale_and_translate's bilinear (antialiased) weights."""
  img = _rand_image((20, 16, 3), lo=0.0, hi=1.0)

  def both(key, size):
    out = A.random_resized_crop(key, img, size=size)
    oh, ow = size
    y0, x0, h, w = A.sample_crop_box(key, 20, 16)
    ref = jax.image.scale_and_translate(
      img, (oh, ow, 3), (0, 1), jnp.stack([oh / h, ow / w]),
      jnp.stack([-y0 * oh / h, -x0 * ow / w]), method="linear", antialias=True)
    return out, jnp.clip(ref, 0, 1)

  # Shrinking (antialiased) and enlarging, non-square output.
  cases = jax.jit(lambda: [both(jax.random.key(0), (6, 5)), both(jax.random.key(1), (24, 30))])()
  for out, ref in cases:
    np.testing.assert_allclose(out, ref, atol=1e-5)
  assert cases[0][0].shape == (6, 5, 3) and cases[1][0].shape == (24, 30, 3)


def test_blur_keeps_constant_and_mean():
  key = jax.random.key(3)
  const = jnp.full((16, 16, 3), 0.37, jnp.float32)
  small = jnp.full((4, 4, 1), 0.8, jnp.float32)
  img = _rand_image((16, 16, 3), lo=0.0, hi=1.0)
  blur_const, blur_small, blur_img = jax.jit(lambda: (
    A.gaussian_blur(key, const, prob=1.0),
    # A kernel wider than the image falls back to edge padding.
    A.gaussian_blur(key, small, prob=1.0, kernel_size=9),
    A.gaussian_blur(key, img, prob=1.0, sigma=(2.0, 2.0)),
  ))()
  np.testing.assert_allclose(blur_const, const, atol=1e-6)
  np.testing.assert_allclose(blur_small, small, atol=1e-6)
  assert abs(float(blur_img.mean() - img.mean())) < 0.01
  assert float(blur_img.std()) < 0.7 * float(img.std())  # it did smooth
  assert A.default_blur_kernel_size(224, 224) == 23
  assert A.default_blur_kernel_size(28, 28) == 3
  assert A.default_blur_kernel_size(96, 96) % 2 == 1


# ----------------------------------------------------------------------------------
# Pipelines: shapes, determinism, jit, sharding.

BATCH_CFG = {"crop_size": 12}


@pytest.fixture(scope="module")
def batch_images():
  return jnp.asarray(np.random.RandomState(5).randint(0, 256, (16, 16, 16, 3)).astype(np.uint8))


_TRACES = []


@pytest.fixture(scope="module")
def jit_batch():
  def fn(k, x):
    _TRACES.append(1)
    return A.augment_batch(k, x, BATCH_CFG)

  return jax.jit(fn)


@pytest.fixture(scope="module")
def jit_result(jit_batch, batch_images):
  return np.asarray(jit_batch(jax.random.key(11), batch_images))


def test_batch_shape_range_and_eager_equals_jit(jit_result, batch_images):
  assert jit_result.shape == (16, 12, 12, 3) and jit_result.dtype == np.float32
  assert np.all(np.isfinite(jit_result))
  assert jit_result.min() >= 0.0 and jit_result.max() <= 1.0
  eager = np.asarray(A.augment_batch(jax.random.key(11), batch_images, BATCH_CFG))
  np.testing.assert_allclose(eager, jit_result, atol=1e-5)


def test_same_key_same_output_and_new_key_differs(jit_batch, jit_result, batch_images):
  traces = len(_TRACES)
  np.testing.assert_array_equal(jit_batch(jax.random.key(11), batch_images), jit_result)
  other = np.asarray(jit_batch(jax.random.key(12), batch_images))
  assert len(_TRACES) == traces  # a new key does not retrace
  assert not np.allclose(other, jit_result, atol=1e-3)


def test_sharded_batch_equals_single_device(jit_batch, jit_result, batch_images):
  assert jax.device_count() == 8
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharded = jax.device_put(batch_images, NamedSharding(mesh, P("data")))
  out = jit_batch(jax.random.key(11), sharded)
  np.testing.assert_allclose(np.asarray(out), jit_result, atol=1e-6)


def test_examples_get_different_crops_and_views_fold_in():
  img = jnp.asarray(np.random.RandomState(0).randint(0, 256, (1, 10, 10, 1)).astype(np.uint8))
  images = jnp.tile(img, (8, 1, 1, 1))
  cfg = dict(flip_prob=0.0, jitter_prob=0.0, blur_prob=0.0)
  cfg2 = dict(cfg, crop_size=6)

  def fn(k, x):
    views = A.augment_views(k, x, [cfg, cfg2])
    return views, A.augment_batch(jax.random.fold_in(k, 1), x, cfg2)

  (v0, v1), ref1 = jax.jit(fn)(jax.random.key(0), images)
  assert v0.shape == (8, 10, 10, 1) and v1.shape == (8, 6, 6, 1)
  # View i uses fold_in(key, i).
  np.testing.assert_allclose(v1, ref1, atol=1e-6)
  flat = np.asarray(v0).reshape(8, -1)
  dist = np.abs(flat[:, None] - flat[None]).max(-1)
  assert np.all(dist[~np.eye(8, dtype=bool)] > 1e-3)


def test_config_dict_and_defaults():
  ml_collections = pytest.importorskip("ml_collections")
  cfg = ml_collections.ConfigDict({"crop_size": 8, "blur_prob": 1.0})
  img = jnp.zeros((2, 10, 10, 3), jnp.uint8)
  key = jax.random.key(0)
  f = lambda c: str(jax.make_jaxpr(lambda k, x: A.augment_batch(k, x, c))(key, img))
  assert f(cfg) == f(cfg.to_dict())
  assert f({}) == f(dict(A.DEFAULT_VIEW))
  assert f(None) == f({})
  assert jax.eval_shape(lambda k, x: A.augment_batch(k, x, cfg), key, img).shape == (2, 8, 8, 3)
  assert A.DEFAULT_VIEW["crop_scale"] == (0.08, 1.0)
  assert (A.DEFAULT_VIEW["brightness"], A.DEFAULT_VIEW["contrast"],
          A.DEFAULT_VIEW["saturation"], A.DEFAULT_VIEW["hue"]) == (0.4, 0.4, 0.4, 0.1)
  assert (A.DEFAULT_VIEW["jitter_prob"], A.DEFAULT_VIEW["grayscale_prob"],
          A.DEFAULT_VIEW["blur_prob"], A.DEFAULT_VIEW["solarize_prob"]) == (0.8, 0.2, 0.5, 0.0)


def test_augment_views_fold_in_and_throughput():
  """Two SimCLR views of 256 28x28x1 uint8 images; prints the time per call."""
  images = jnp.asarray(
    np.random.RandomState(0).randint(0, 256, (256, 28, 28, 1)).astype(np.uint8))
  configs = [A.DEFAULT_VIEW, A.DEFAULT_VIEW]
  fn = jax.jit(lambda k, x: A.augment_views(k, x, configs))
  key = jax.random.fold_in(jax.random.key(0), 3)
  t0 = time.perf_counter()
  v1, v2 = jax.block_until_ready(fn(key, images))
  compile_s = time.perf_counter() - t0
  for v in (v1, v2):
    assert v.shape == (256, 28, 28, 1) and v.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(v))) and float(v.min()) >= 0 and float(v.max()) <= 1
  assert not np.allclose(v1, v2, atol=1e-3)  # the views use different keys
  times = []
  for step in range(5):
    k = jax.random.fold_in(jax.random.key(0), step)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(k, images))
    times.append(time.perf_counter() - t0)
  print(f"\naugment_views (2 views, 256x28x28x1 uint8, CPU): median {np.median(times) * 1e3:.1f} ms"
        f" per call (min {min(times) * 1e3:.1f} ms; first call incl. compile {compile_s:.1f} s)")


# ----------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("call, name", [
  (lambda: A.random_flip(jax.random.key(0), jnp.zeros((4, 4))), "image"),
  (lambda: A.random_flip(jax.random.key(0), jnp.zeros((4, 4, 2))), "image"),
  (lambda: A.random_flip(jax.random.key(0), jnp.zeros((4, 4, 1)), prob=1.5), "prob"),
  (lambda: A.solarize(jax.random.key(0), jnp.zeros((4, 4, 1)), prob=-0.1), "prob"),
  (lambda: A.gaussian_blur(jax.random.key(0), jnp.zeros((4, 4, 1)), prob=1, kernel_size=4),
   "kernel_size"),
  (lambda: A.color_jitter(jax.random.key(0), jnp.zeros((4, 4, 3)), brightness=0.4,
                          contrast=0.4, saturation=0.4, hue=0.7, prob=0.8), "hue"),
  (lambda: A.random_resized_crop(jax.random.key(0), jnp.zeros((4, 4, 3)), size=0), "size"),
  (lambda: A.random_resized_crop(jax.random.key(0), jnp.zeros((4, 4, 3)), size=4,
                                 scale=(0.5, 0.1)), "scale"),
  (lambda: A.augment_batch(jax.random.key(0), jnp.zeros((4, 4, 3)), {}), "images"),
  (lambda: A.augment_batch(jax.random.key(0), jnp.zeros((2, 4, 4, 4)), {}), "images"),
  (lambda: A.augment_view(jax.random.key(0), jnp.zeros((2, 4, 4, 3)), {}), "image"),
  (lambda: A.augment_batch(jax.random.key(0), jnp.zeros((2, 4, 4, 3)), {"crop_size": 0}),
   "crop_size"),
  (lambda: A.augment_batch(jax.random.key(0), jnp.zeros((2, 4, 4, 3)), {"flip_prob": 2}),
   "flip_prob"),
  (lambda: A.augment_batch(jax.random.key(0), jnp.zeros((2, 4, 4, 3)), {"blur_prob": -1}),
   "blur_prob"),
  (lambda: A.augment_batch(jax.random.key(0), jnp.zeros((2, 4, 4, 3)),
                           {"crop_scale": (0.0, 1.0)}), "crop_scale"),
  (lambda: A.augment_batch(jax.random.key(0), jnp.zeros((2, 4, 4, 3)),
                           {"colour": 1, "blurr_prob": 0.5}), "blurr_prob"),
  (lambda: A.augment_batch(jax.random.key(0), jnp.zeros((2, 4, 4, 3), jnp.int32), {}),
   "dtype"),
  (lambda: A.augment_views(jax.random.key(0), jnp.zeros((2, 4, 4, 3)), {}), "configs"),
])
def test_bad_input_raises(call, name):
  with pytest.raises(ValueError, match=name):
    call()


def test_bad_input_message_has_value_and_expectation():
  with pytest.raises(ValueError) as e:
    A.augment_batch(jax.random.key(0), jnp.zeros((2, 4, 4, 3)), {"jitter_prob": 1.5})
  assert "jitter_prob" in str(e.value) and "1.5" in str(e.value) and "[0, 1]" in str(e.value)
  with pytest.raises(ValueError) as e:
    A.random_flip(jax.random.key(0), jnp.zeros((4, 4, 5)))
  assert "C=5" in str(e.value) and "1 or 3" in str(e.value)
