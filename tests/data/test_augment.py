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
from scipy import ndimage, stats

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
    got = A.ColorJitter(**strengths, p=1.0).random(u, img)[0]
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


# ----------------------------------------------------------------------------------
# Ops by name: spec strings, errors, params that replay the output.

BRIEF_SPEC = ("random_resized_crop(224, scale=(0.08, 1))|flip|color_jitter(0.4, 0.4, 0.2, 0.1, "
              "p=0.8)|grayscale(p=0.2)|blur(p=1.0)|solarize(p=0.0)")


def test_parse_pipeline_spec():
  pipe = A.parse_pipeline(BRIEF_SPEC)
  assert [type(op) for op in pipe.ops] == [
    A.RandomResizedCrop, A.Flip, A.ColorJitter, A.Grayscale, A.Blur, A.Solarize]
  crop, flip, jitter, gray, blur, sol = pipe.ops
  assert crop.size == (224, 224) and crop.scale == (0.08, 1.0) and crop.ratio == (0.75, 4 / 3)
  assert flip.p == 0.5 and jitter.strengths == (0.4, 0.4, 0.2, 0.1) and jitter.p == 0.8
  assert jitter.random_order and gray.p == 0.2 and blur.p == 1.0 and blur.sigma == (0.1, 2.0)
  assert sol.p == 0.0 and sol.threshold == 0.5
  assert pipe.out_hw((500, 375)) == (224, 224)
  # The canonical spec parses back to the same ops; lists count as tuples; aliases work.
  assert A.parse_pipeline(pipe.spec).spec == pipe.spec
  assert A.parse_pipeline("random_resized_crop([8, 6], scale=[0.5, 1])").ops[0].size == (8, 6)
  assert A.parse_pipeline(" gaussian_blur( 0.3 ) | random_flip ").spec == (
    "blur(p=0.3, sigma=(0.1, 2.0), kernel_size=None)|flip(p=0.5)")
  rot = A.parse_pipeline("rotate(30)").ops[0]
  assert rot.degrees == (-30.0, 30.0) and rot.p == 1.0
  assert A.parse_pipeline("rotate((0, 360), p=0.5)").ops[0].degrees == (0.0, 360.0)
  assert A.parse_pipeline("").ops == ()
  assert A.parse_pipeline("random_resized_crop").out_hw((5, 7)) == (5, 7)
  assert set(A.AUGMENTATIONS) >= {"random_resized_crop", "flip", "color_jitter", "grayscale",
                                  "blur", "solarize", "rotate"}
  # Param names: the op names, numbered when an op repeats.
  assert A.parse_pipeline("flip|blur|flip").param_names == ("flip", "blur", "flip_1")


@pytest.mark.parametrize("spec, words", [
  ("flp(p=0.5)", ["'flp'", "known ops", "random_resized_crop", "rotate"]),
  ("flip(q=0.5)", ["'flip'", "'q'", "known ops"]),
  ("flip(p=1.5)", ["'flip'", "p:", "1.5", "[0, 1]", "known ops"]),
  ("blur(0.5, (0.1, 2.0), 4)", ["'blur'", "kernel_size", "odd", "known ops"]),
  ("color_jitter(hue=0.7)", ["'color_jitter'", "hue", "0.7", "known ops"]),
  ("random_resized_crop(0)", ["'random_resized_crop'", "size", "known ops"]),
  ("random_resized_crop(8, scale=(0.5, 0.1))", ["'random_resized_crop'", "scale", "known ops"]),
  ("rotate", ["'rotate'", "degrees", "known ops"]),
  ("rotate((30, -30))", ["'rotate'", "degrees", "known ops"]),
  ("flip(p=__import__('os').getpid())", ["'flip'", "argument p", "literal", "known ops"]),
  ("flip(p=x)", ["'flip'", "argument p", "literal"]),
  ("flip(*a)", ["'flip'", "*args"]),
  ("flip(0.5", ["cannot parse", "known ops"]),
  ("flip||blur", ["cannot parse", "known ops"]),
  ("flip(0.5)(1)", ["'flip'", "cannot parse"]),
])
def test_bad_spec_raises(spec, words):
  with pytest.raises(ValueError) as e:
    A.parse_pipeline(spec)
  for w in words:
    assert w in str(e.value), (w, str(e.value))


def test_spec_string_and_dict_configs():
  """A spec string gives the same computation as the equivalent dict; ConfigDicts and
  `augment_views` take either form; params come back per op with a leading batch axis."""
  ml_collections = pytest.importorskip("ml_collections")
  spec = ("random_resized_crop(8)|flip(0.5)|color_jitter(0.4, 0.4, 0.4, 0.1, p=0.8)"
          "|grayscale(0.2)|blur(0.5)|solarize(0.0)")
  cfg = ml_collections.ConfigDict({"augment": spec, "dict_form": {"crop_size": 8}})
  img = jnp.zeros((2, 10, 10, 3), jnp.uint8)
  key = jax.random.key(0)
  f = lambda c: str(jax.make_jaxpr(lambda k, x: A.augment_batch(k, x, c))(key, img))
  assert f(cfg.augment) == f(cfg.dict_form)
  assert A.make_pipeline(cfg.dict_form).spec == A.parse_pipeline(spec).spec
  views = jax.eval_shape(
    lambda k, x: A.augment_views(k, x, [cfg.augment, "rotate(10)"], return_params=True),
    key, img)
  (v0, p0), (v2, p2) = views
  assert v0.shape == (2, 8, 8, 3) and v2.shape == (2, 10, 10, 3)
  assert p0["color_jitter"]["factors"].shape == (2, 4)
  assert p0["random_resized_crop"]["box"].shape == (2, 4)
  assert p2["rotate"]["angle"].shape == (2,) and p2["rotate"]["applied"].dtype == jnp.bool_
  for bad in (spec, A.make_pipeline(spec)):
    with pytest.raises(ValueError, match="configs"):
      A.augment_views(key, img, bad)
  with pytest.raises(ValueError, match="config"):
    A.augment_batch(key, img, 3)
  pipe = A.make_pipeline("flip")
  with pytest.raises(ValueError, match="params"):
    pipe.apply(img[0], {"blur": {}})


def test_register_augmentation():
  @A.register_augmentation("invert_for_test")
  class Invert(A._GatedOp):
    n_uniforms = 1

    def __init__(self, p=1.0):
      self.p = A.check_prob("p", p)
      super().__init__(p=self.p)

    def sample(self, u, shape):
      return {"applied": u[0] < self.p}

    def transform(self, image, params):
      return 1.0 - image

  try:
    img = _rand_image((3, 3, 1))
    out = A.augment_view(jax.random.key(0), img, "flip(p=0)|invert_for_test")
    np.testing.assert_allclose(out, 1.0 - img, atol=1e-6)
    with pytest.raises(ValueError, match="invert_for_test"):
      A.parse_pipeline("invert_for_test(p=2)")
  finally:
    del A.AUGMENTATIONS["invert_for_test"]
  with pytest.raises(ValueError, match="AugmentOp"):
    A.register_augmentation("bad")(dict)


# One single-op pipeline per op, 8 keys each, on one 16x16 RGB image: the jitted outputs, the
# params and the replay of the params; then NumPy references read the params.
REPLAY_OPS = {
  "flip": "flip(p=0.5)",
  "grayscale": "grayscale(p=0.5)",
  "solarize": "solarize(p=0.5, threshold=0.4)",
  "blur": "blur(p=0.5, sigma=(0.5, 2.0))",
  "rotate": "rotate((-60, 60), p=0.7)",
  "color_jitter": "color_jitter(0.5, 0.5, 0.5, 0.2, p=0.7)",
  "random_resized_crop": "random_resized_crop((10, 7), scale=(0.2, 1.0))",
}
REPLAY_IMAGE = np.random.RandomState(9).uniform(0, 1, (16, 16, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def replayed():
  pipes = {name: A.parse_pipeline(spec) for name, spec in REPLAY_OPS.items()}
  img = jnp.asarray(REPLAY_IMAGE)

  def fn(keys):
    res = {}
    for name, pipe in pipes.items():
      out, params = jax.vmap(lambda k: pipe(k, img, return_params=True))(keys)
      # Colour jitter's apply is the shared _GatedOp.apply around the same transform; its
      # replay would add a second of compile time, and the NumPy reference below already
      # shows that its params reproduce the output.
      replay = out if name == "color_jitter" else jax.vmap(lambda p: pipe.apply(img, p))(params)
      res[name] = (out, params[name], replay)
    # The crop's reference resize, inside the same jit (eager it would cost seconds).
    boxes = res["random_resized_crop"][1]["box"]
    res["crop_reference"] = jax.vmap(lambda b: jax.image.scale_and_translate(
      img, (10, 7, 3), (0, 1), jnp.stack([10 / b[2], 7 / b[3]]),
      jnp.stack([-b[0] * 10 / b[2], -b[1] * 7 / b[3]]), method="linear", antialias=True))(boxes)
    return res

  keys = _keys(8, seed=4)
  res = jax.tree.map(np.asarray, jax.jit(fn)(keys))
  return pipes, keys, res


def _np_rotate(img, angle_deg):
  """Counter-clockwise rotation about the centre via scipy (pixel centres at integers)."""
  t = math.radians(angle_deg)
  # On screen (y down) a counter-clockwise turn sends (x, y) to (x cos + y sin, -x sin + y cos);
  # the output reads its source through the inverse, written for (row, col) indices.
  inv = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
  centre = (np.array(img.shape[:2]) - 1) / 2
  return np.stack([ndimage.affine_transform(
    img[..., k].astype(np.float64), inv, centre - inv @ centre, order=1, mode="grid-constant",
    cval=0.0) for k in range(img.shape[-1])], -1)


def _np_blur(img, sigma, k):
  off = np.arange(k) - k // 2
  w = np.exp(-0.5 * (off / sigma) ** 2)
  w /= w.sum()
  p = k // 2
  x = np.pad(img.astype(np.float64), ((p, p), (0, 0), (0, 0)), mode="reflect")
  x = sum(w[i] * x[i:i + img.shape[0]] for i in range(k))
  x = np.pad(x, ((0, 0), (p, p), (0, 0)), mode="reflect")
  x = sum(w[i] * x[:, i:i + img.shape[1]] for i in range(k))
  return np.clip(x, 0, 1)


def _np_jitter(img, factors, order):
  """torchvision's adjust_brightness / contrast / saturation / hue, in ``order``."""
  x = img.astype(np.float64)
  luma = lambda y: (0.299 * y[..., 0] + 0.587 * y[..., 1] + 0.114 * y[..., 2])[..., None]
  for code in order:
    f = factors[code]
    if code == 0:
      x = np.clip(f * x, 0, 1)
    elif code == 1:
      x = np.clip(f * x + (1 - f) * luma(x).mean(), 0, 1)
    elif code == 2:
      x = np.clip(f * x + (1 - f) * luma(x), 0, 1)
    else:
      hsv = [colorsys.rgb_to_hsv(*px) for px in x.reshape(-1, 3)]
      x = np.array([colorsys.hsv_to_rgb((h + f) % 1.0, s, v) for h, s, v in hsv]).reshape(x.shape)
  return x


def test_params_replay_and_match_numpy_references(replayed):
  pipes, keys, res = replayed
  img = REPLAY_IMAGE
  for name in REPLAY_OPS:
    out, params, replay = res[name]
    # Replaying the params gives the op's output.
    np.testing.assert_allclose(replay, out, atol=1e-5, err_msg=name)
    if "applied" in params:  # both outcomes occur among the 8 keys
      assert 0 < params["applied"].sum() < 8, (name, params["applied"])
  # Eager equals jit. (Eager compiles every primitive on first use, seconds per op on CPU,
  # so only the new ops here; the others run eagerly through the dict pipeline in
  # test_batch_shape_range_and_eager_equals_jit.)
  for name in ("rotate", "flip"):
    eager_out, eager_params = pipes[name](keys[1], img, return_params=True)
    np.testing.assert_allclose(eager_out, res[name][0][1], atol=1e-5, err_msg=name)
    for k, v in eager_params[name].items():
      np.testing.assert_allclose(v, res[name][1][k][1], atol=1e-5, err_msg=f"{name}/{k}")
  # What each parameter means, from references written without the library.
  out, p, _ = res["flip"]
  for o, a in zip(out, p["applied"]):
    np.testing.assert_array_equal(o, img[:, ::-1] if a else img)
  out, p, _ = res["grayscale"]
  luma = 0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]
  for o, a in zip(out, p["applied"]):
    np.testing.assert_allclose(o, np.stack([luma] * 3, -1) if a else img, atol=1e-6)
  out, p, _ = res["solarize"]
  for o, a in zip(out, p["applied"]):
    np.testing.assert_array_equal(o, np.where(img >= 0.4, 1 - img, img) if a else img)
  out, p, _ = res["blur"]
  for o, a, s in zip(out, p["applied"], p["sigma"]):
    assert (0.5 <= s <= 2.0) if a else s == 0
    np.testing.assert_allclose(o, _np_blur(img, s, 3) if a else img, atol=1e-5)
  out, p, _ = res["rotate"]
  for o, a, angle in zip(out, p["applied"], p["angle"]):
    assert (-60 <= angle <= 60) if a else angle == 0
    np.testing.assert_allclose(o, np.clip(_np_rotate(img, angle), 0, 1) if a else img, atol=1e-5)
  out, p, _ = res["color_jitter"]
  for o, a, f, order in zip(out, p["applied"], p["factors"], p["order"]):
    assert sorted(order) == [0, 1, 2, 3]
    if a:
      assert np.all((0.5 <= f[:3]) & (f[:3] <= 1.5)) and -0.2 <= f[3] <= 0.2
      np.testing.assert_allclose(o, _np_jitter(img, f, order), atol=2e-5)
    else:
      np.testing.assert_array_equal(f, [1, 1, 1, 0])
      np.testing.assert_array_equal(o, img)
  out, p, _ = res["random_resized_crop"]
  assert out.shape == (8, 10, 7, 3)
  y0, x0, h, w = p["box"].T
  assert np.all((y0 >= 0) & (x0 >= 0) & (y0 + h <= 16 + 1e-4) & (x0 + w <= 16 + 1e-4))
  assert np.all((h * w >= 0.2 * 256 - 1e-3) & (h * w <= 256 + 1e-3))
  np.testing.assert_allclose(out, np.clip(res["crop_reference"], 0, 1), atol=1e-5)


def test_rotate_quarter_turn_and_identity():
  img = _rand_image((6, 6, 3), lo=0.0, hi=1.0)
  key = jax.random.key(0)
  quarter, half, off, zero = jax.jit(lambda: (
    A._rotate(img, 90.0), A._rotate(img, -180.0),
    A.random_rotate(key, img, degrees=30, prob=0.0), A.random_rotate(key, img, degrees=(0, 0))))()
  np.testing.assert_allclose(quarter, np.rot90(img), atol=1e-5)  # counter-clockwise
  np.testing.assert_allclose(half, img[::-1, ::-1], atol=1e-5)
  np.testing.assert_array_equal(off, img)
  np.testing.assert_allclose(zero, img, atol=1e-6)


# ----------------------------------------------------------------------------------
# Statistics of the drawn params over many keys (params only: XLA drops the image work).

# Crop 1 samples on a 32x32 image (default scale and ratio: large crops with extreme aspect
# ratios are rejected); crop 2 on its 16x32 output, where most candidates do not fit and a
# few examples fall back to the centre crop.
STATS_SPEC = ("random_resized_crop((16, 32))|random_resized_crop(8)|flip(p=0.3)"
              "|color_jitter(0.4, 0.4, 0.4, 0.1, p=0.8)|grayscale(p=0.2)|blur(p=0.5)"
              "|solarize(p=0.2)|rotate(45, p=0.6)")


def _torchvision_crops(rng, n, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision's RandomResizedCrop.get_params in float64 without rounding to pixels:
  10 trials of (uniform area fraction, log-uniform aspect ratio), the first that fits at a
  uniform position, else the whole image with the ratio clamped, centred. Rows: y0, x0, h, w."""
  boxes = []
  for _ in range(n):
    for _ in range(10):
      area = height * width * rng.uniform(*scale)
      r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
      w, h = math.sqrt(area * r), math.sqrt(area / r)
      if 0 < w <= width and 0 < h <= height:
        boxes.append((rng.uniform(0, height - h), rng.uniform(0, width - w), h, w))
        break
    else:
      if width / height < ratio[0]:
        w, h = width, width / ratio[0]
      elif width / height > ratio[1]:
        w, h = height * ratio[1], height
      else:
        w, h = width, height
      boxes.append(((height - h) / 2, (width - w) / 2, h, w))
  return np.array(boxes)


@pytest.fixture(scope="module")
def drawn_params(stat_keys):
  pipe = A.parse_pipeline(STATS_SPEC)
  img = jnp.zeros((32, 32, 3), jnp.float32)
  fn = jax.jit(jax.vmap(lambda k: pipe(k, img, return_params=True)[1]))
  return jax.tree.map(np.asarray, fn(stat_keys))


def test_crop_distribution_matches_torchvision_reference(drawn_params):
  rng = np.random.default_rng(0)
  for name, h_in, w_in in (("random_resized_crop", 32, 32), ("random_resized_crop_1", 16, 32)):
    box = drawn_params[name]["box"]
    ref = _torchvision_crops(rng, N_KEYS, h_in, w_in)
    frac, ref_frac = box[:, 2] * box[:, 3] / (h_in * w_in), ref[:, 2] * ref[:, 3] / (h_in * w_in)
    assert np.all((frac >= 0.08 - 1e-5) & (frac <= 1 + 1e-5)), name
    log_r, ref_log_r = np.log(box[:, 3] / box[:, 2]), np.log(ref[:, 3] / ref[:, 2])
    assert np.all(np.abs(log_r) <= math.log(4 / 3) + 1e-5), name
    # Two-sample Kolmogorov-Smirnov tests against the reference (fixed seeds).
    assert stats.ks_2samp(frac, ref_frac).pvalue > 1e-3, name
    assert stats.ks_2samp(log_r, ref_log_r).pvalue > 1e-3, name
    # The offset is uniform over the positions where the box fits.
    slack = h_in - box[:, 2]
    rel_y = box[slack > 1e-3, 0] / slack[slack > 1e-3]
    assert stats.kstest(rel_y, "uniform").pvalue > 1e-3, name
  # Rejection really happens: on 16x32 large crops are rare, unlike on 32x32.
  frac_1 = np.prod(drawn_params["random_resized_crop_1"]["box"][:, 2:], -1) / 512
  assert np.mean(frac_1 > 0.7) < 0.02 and frac_1.max() <= 2 / 3 + 1e-4


def test_application_rates_and_param_ranges(drawn_params):
  p = drawn_params
  for name, prob in (("flip", 0.3), ("color_jitter", 0.8), ("grayscale", 0.2), ("blur", 0.5),
                     ("solarize", 0.2), ("rotate", 0.6)):
    _rate_ok(p[name]["applied"], prob)
  # Rotation angles: uniform in (-45, 45) when applied, 0 otherwise.
  on = p["rotate"]["applied"]
  assert np.all(p["rotate"]["angle"][~on] == 0)
  assert stats.kstest(p["rotate"]["angle"][on], "uniform", args=(-45, 90)).pvalue > 1e-3
  # Blur sigma: uniform in (0.1, 2.0) when applied.
  on = p["blur"]["applied"]
  assert np.all(p["blur"]["sigma"][~on] == 0)
  assert stats.kstest(p["blur"]["sigma"][on], "uniform", args=(0.1, 1.9)).pvalue > 1e-3
  # Jitter: factors uniform in their ranges, neutral when not applied; a uniform order.
  on = p["color_jitter"]["applied"]
  f = p["color_jitter"]["factors"]
  np.testing.assert_array_equal(f[~on], np.broadcast_to([1, 1, 1, 0], f[~on].shape))
  for i, (lo, width) in enumerate(((0.6, 0.8), (0.6, 0.8), (0.6, 0.8), (-0.1, 0.2))):
    assert stats.kstest(f[on, i], "uniform", args=(lo, width)).pvalue > 1e-3, i
  # ... and independent of each other (|correlation| < 0.1, ~5 standard errors).
  corr = np.corrcoef(f[on].T)
  assert np.all(np.abs(corr[~np.eye(4, dtype=bool)]) < 0.1), corr
  order = p["color_jitter"]["order"]
  assert np.all(np.sort(order, -1) == np.arange(4))
  for code in range(4):
    _rate_ok(order[:, 0] == code, 0.25)
    _rate_ok(order[:, 3] == code, 0.25)
