"""Jittable image augmentation (SimCLR / BYOL views) that runs on device inside the train
step, on the globally sharded uint8 batch, with static shapes and per-example keys.
"""

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "DEFAULT_VIEW",
  "BYOL_VIEWS",
  "sample_crop_box",
  "default_blur_kernel_size",
  "random_resized_crop",
  "random_flip",
  "color_jitter",
  "random_grayscale",
  "gaussian_blur",
  "solarize",
  "augment_view",
  "augment_batch",
  "augment_views",
]

# SimCLR's augmentation (Chen et al. 2020, appendix A): random resized crop with area
# fraction in (0.08, 1) and aspect ratio in (3/4, 4/3), horizontal flip, colour jitter
# (0.4, 0.4, 0.4, 0.1) applied with probability 0.8, grayscale with probability 0.2,
# Gaussian blur (sigma in (0.1, 2), kernel 10% of the side) with probability 0.5, no
# solarization.
DEFAULT_VIEW = {
  # Output side length; None keeps the input's height and width.
  "crop_size": None,
  "crop_scale": (0.08, 1.0),
  "crop_ratio": (3.0 / 4.0, 4.0 / 3.0),
  "flip_prob": 0.5,
  "brightness": 0.4,
  "contrast": 0.4,
  "saturation": 0.4,
  "hue": 0.1,
  "jitter_prob": 0.8,
  "grayscale_prob": 0.2,
  "blur_prob": 0.5,
  "solarize_prob": 0.0,
}

# BYOL (Grill et al. 2020, table 6): as SimCLR but jitter (0.4, 0.4, 0.2, 0.1), and the
# two views are asymmetric in blur (1.0 / 0.1) and solarization (0.0 / 0.2).
BYOL_VIEWS = (
  {"saturation": 0.2, "blur_prob": 1.0, "solarize_prob": 0.0},
  {"saturation": 0.2, "blur_prob": 0.1, "solarize_prob": 0.2},
)

_LUMA = (0.299, 0.587, 0.114)


# ----------------------------------------------------------------------------------
# Validation helpers.


def _is_static_number(x) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check_rank_and_channels(x, name: str, rank: int):
  what = "a single image of rank 3 [H, W, C]" if rank == 3 else "a batch of rank 4 [B, H, W, C]"
  if x.ndim != rank:
    raise ValueError(
      f"{name}: expected {what}, got rank {x.ndim} with shape {tuple(x.shape)}")
  if x.shape[-1] not in (1, 3):
    raise ValueError(
      f"{name}: expected C (last axis) to be 1 or 3, got C={x.shape[-1]} "
      f"in shape {tuple(x.shape)}")


def _check_image(image, name: str = "image"):
  _check_rank_and_channels(image, name, 3)


def _check_batch(images, name: str = "images"):
  _check_rank_and_channels(images, name, 4)


def _check_prob(name: str, value):
  if not _is_static_number(value) or not 0.0 <= float(value) <= 1.0:
    raise ValueError(f"{name}: expected a probability (a number in [0, 1]), got {value!r}")
  return float(value)


def _check_nonneg(name: str, value, upper=None):
  ok = _is_static_number(value) and float(value) >= 0.0
  if ok and upper is not None:
    ok = float(value) <= upper
  if not ok:
    expected = "a number >= 0" if upper is None else f"a number in [0, {upper}]"
    raise ValueError(f"{name}: expected {expected}, got {value!r}")
  return float(value)


def _check_range(name: str, value, lower_exclusive: float = 0.0, upper=None):
  """A (lo, hi) pair with lower_exclusive < lo <= hi (<= upper)."""
  try:
    lo, hi = (float(v) for v in value)
    ok = lower_exclusive < lo <= hi and (upper is None or hi <= upper)
  except (TypeError, ValueError):
    ok = False
  if not ok:
    bound = f" <= {upper}" if upper is not None else ""
    raise ValueError(
      f"{name}: expected a pair (lo, hi) with {lower_exclusive} < lo <= hi{bound}, "
      f"got {value!r}"
    )
  return lo, hi


def _check_size(name: str, size):
  if _is_static_number(size) and int(size) == size:
    size = (int(size), int(size))
  try:
    h, w = size
    ok = all(_is_static_number(v) and int(v) == v and v > 0 for v in (h, w))
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(
      f"{name}: expected a positive int or a pair of positive ints (height, width), "
      f"got {size!r}"
    )
  return int(h), int(w)


def _to_float(image):
  if image.dtype == jnp.uint8:
    return image.astype(jnp.float32) / 255.0
  if not jnp.issubdtype(image.dtype, jnp.floating):
    raise ValueError(
      f"image: expected dtype uint8 (0..255) or floating (0..1), got dtype {image.dtype}"
    )
  return image.astype(jnp.float32)


def _maybe_apply(u, prob: float, image, fn):
  """fn(image) if the uniform u < prob (static shortcuts for prob 0 and 1)."""
  if prob <= 0.0:
    return image
  out = fn(image)
  if prob >= 1.0:
    return out
  return jnp.where(u < prob, out, image)


# Every op draws all of its randomness as one vector of uniforms in [0, 1): on CPU each
# separate jax.random call costs about a second of XLA compile time, so `augment_view`
# makes a single draw for the whole pipeline and hands each op its slice. The public
# single-image ops draw their own vector from their key.
_CROP_TRIALS = 10
_N_CROP = 2 * _CROP_TRIALS + 2  # areas, log-ratios, y offset, x offset
_N_FLIP = 1
_N_JITTER = 1 + 4 + 4  # apply, four factors, four sort keys for the random order
_N_GRAY = 1
_N_BLUR = 2  # apply, sigma
_N_SOLARIZE = 1


def _uniforms(key, n: int):
  return jax.random.uniform(key, (n,), dtype=jnp.float32)


# ----------------------------------------------------------------------------------
# Random resized crop.


def _crop_box(u, height: int, width: int, scale, ratio):
  s_lo, s_hi = scale
  r_lo, r_hi = ratio
  t = _CROP_TRIALS
  area = height * width * (s_lo + (s_hi - s_lo) * u[:t])
  log_lo, log_hi = math.log(r_lo), math.log(r_hi)
  r = jnp.exp(log_lo + (log_hi - log_lo) * u[t:2 * t])
  ws = jnp.sqrt(area * r)
  hs = jnp.sqrt(area / r)
  fits = (ws <= width) & (hs <= height)
  first = jnp.argmax(fits)
  any_fits = jnp.any(fits)

  # Fallback: whole image, aspect ratio clamped into [r_lo, r_hi], centred.
  in_ratio = width / height
  if in_ratio < r_lo:
    fb_w, fb_h = float(width), width / r_lo
  elif in_ratio > r_hi:
    fb_w, fb_h = height * r_hi, float(height)
  else:
    fb_w, fb_h = float(width), float(height)

  h = jnp.clip(jnp.where(any_fits, hs[first], fb_h), 1e-3, height)
  w = jnp.clip(jnp.where(any_fits, ws[first], fb_w), 1e-3, width)
  y0 = jnp.where(any_fits, u[2 * t] * (height - h), (height - h) / 2)
  x0 = jnp.where(any_fits, u[2 * t + 1] * (width - w), (width - w) / 2)
  return jnp.stack([y0, x0, h, w]).astype(jnp.float32)


def sample_crop_box(key, height: int, width: int, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
  """Samples a crop box as torchvision's ``RandomResizedCrop.get_params`` does.

  10 candidates are drawn at once, each with area fraction uniform in ``scale`` and
  log aspect ratio (width / height) uniform in ``log(ratio)``; the first that fits
  inside the image is used, with its top-left corner uniform over the positions where
  it fits. If none fits, the central crop of the whole image with its aspect ratio
  clamped into ``ratio`` is used. Unlike torchvision the box is not rounded to whole
  pixels (the resize samples at sub-pixel positions); it is clipped to the image as a
  last safeguard. Because candidates that do not fit are rejected, the area fraction
  is exactly uniform in ``scale`` only when every candidate fits (e.g. ``scale[1] *
  max(ratio[1], 1 / ratio[0]) <= 1`` on a square image); otherwise large areas with
  extreme aspect ratios are slightly under-represented, as in torchvision.

  Returns a float32 array ``[y0, x0, h, w]`` in pixels (continuous coordinates, pixel
  edges at integers, so the whole image is ``[0, 0, height, width]``).
  """
  height, width = _check_size("(height, width)", (height, width))
  scale = _check_range("scale", scale, 0.0, 1.0)
  ratio = _check_range("ratio", ratio, 0.0)
  return _crop_box(_uniforms(key, _N_CROP), height, width, scale, ratio)


def _interp_matrix(start, length, out_n: int, in_n: int):
  """[out_n, in_n] weights that resample [start, start + length) to out_n pixels.

  Triangle (bilinear) kernel, widened by the downscaling factor when shrinking
  (antialiasing), rows normalised to sum 1 -- the same weights as
  ``jax.image.scale_and_translate(..., method="linear", antialias=True)``.
  """
  scale = out_n / length
  src = start + (jnp.arange(out_n, dtype=jnp.float32) + 0.5) / scale - 0.5
  width = jnp.maximum(1.0, 1.0 / scale)
  j = jnp.arange(in_n, dtype=jnp.float32)
  w = jnp.maximum(0.0, 1.0 - jnp.abs(src[:, None] - j[None, :]) / width)
  return w / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1e-12)


def _resize_box(image, box, out_h: int, out_w: int):
  """Bilinearly resamples the region box = [y0, x0, h, w] of image to out_h x out_w."""
  wy = _interp_matrix(box[0], box[2], out_h, image.shape[0])
  wx = _interp_matrix(box[1], box[3], out_w, image.shape[1])
  out = jnp.einsum("oh,hwc,pw->opc", wy, image, wx, precision=jax.lax.Precision.HIGHEST)
  return jnp.clip(out, 0.0, 1.0)


def _random_resized_crop(u, image, out_hw, scale, ratio):
  box = _crop_box(u, image.shape[0], image.shape[1], scale, ratio)
  return _resize_box(image, box, *out_hw)


def random_resized_crop(key, image, *, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
  """Crops a random box (see `sample_crop_box`) and resizes it bilinearly.

  Args:
    key: PRNG key.
    image: float32 [H, W, C] in [0, 1].
    size: output side (int) or (height, width); the output shape is static.
    scale: range of the crop's area as a fraction of the image's area.
    ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.

  Returns:
    float32 [size, size, C] in [0, 1]. The resize is bilinear with antialiasing when
    shrinking (weights as ``jax.image.scale_and_translate`` with ``method="linear"``).
  """
  _check_image(image)
  out_hw = _check_size("size", size)
  scale = _check_range("scale", scale, 0.0, 1.0)
  ratio = _check_range("ratio", ratio, 0.0)
  return _random_resized_crop(_uniforms(key, _N_CROP), image, out_hw, scale, ratio)


# ----------------------------------------------------------------------------------
# Flip.


def _random_flip(u, image, prob):
  return _maybe_apply(u[0], prob, image, lambda x: x[:, ::-1])


def random_flip(key, image, *, prob: float = 0.5):
  """Flips the image horizontally (``image[:, ::-1]``) with probability ``prob``."""
  _check_image(image)
  prob = _check_prob("prob", prob)
  return _random_flip(_uniforms(key, _N_FLIP), image, prob)


# ----------------------------------------------------------------------------------
# Colour.


def _gray(image):
  """Luma [H, W, 1] of an [H, W, 3] image; the image itself when C == 1."""
  if image.shape[-1] == 1:
    return image
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b)[..., None]


def _frac(x):
  # x mod 1 via floor: `%` lowers to fmod, which XLA on CPU does not vectorise.
  return x - jnp.floor(x)


def _rgb_to_hsv(image):
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  # The sector is chosen by comparing the channels with each other, never by testing
  # equality with a separately computed max: XLA may recompute r, g, b inside a fusion
  # with different rounding (e.g. FMA contraction), and `r == max(r, g, b)` could then
  # be false for every channel. Near ties the sector formulas agree, so this is stable.
  r_max = (r >= g) & (r >= b)
  g_max = ~r_max & (g >= b)
  maxc = jnp.where(r_max, r, jnp.where(g_max, g, b))
  minc = jnp.minimum(jnp.minimum(r, g), b)
  delta = jnp.maximum(maxc - minc, 0.0)
  safe_delta = jnp.where(delta > 0, delta, 1.0)
  safe_max = jnp.where(maxc > 0, maxc, 1.0)
  s = jnp.where(maxc > 0, delta / safe_max, 0.0)
  h = jnp.where(
    r_max, (g - b) / safe_delta,
    jnp.where(g_max, 2.0 + (b - r) / safe_delta, 4.0 + (r - g) / safe_delta))
  h = jnp.where(delta > 0, _frac(h / 6.0), 0.0)
  return h, s, maxc


def _hsv_to_rgb(h, s, v):
  def channel(n):
    k = 6.0 * _frac((n + 6.0 * h) / 6.0)
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)

  return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def _adjust_hue(image, shift):
  h, s, v = _rgb_to_hsv(image)
  return jnp.clip(_hsv_to_rgb(_frac(h + shift), s, v), 0.0, 1.0)


_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)


def _adjust(image, code: int, factor):
  """One colour adjustment (static code), clipped to [0, 1]."""
  if code == _HUE:
    return _adjust_hue(image, factor)
  if code == _BRIGHTNESS:
    ref = 0.0
  elif code == _CONTRAST:
    ref = jnp.mean(_gray(image))
  else:
    ref = _gray(image)
  return jnp.clip(factor * image + (1.0 - factor) * ref, 0.0, 1.0)


def _blend_dynamic(image, code, factor):
  """`_adjust` for brightness, contrast or saturation with a traced code: the three
  are all ``clip(f * x + (1 - f) * ref)`` and differ only in ``ref``."""
  g = _gray(image)
  ref = jnp.where(code == _BRIGHTNESS, 0.0, jnp.where(code == _CONTRAST, jnp.mean(g), g))
  return jnp.clip(factor * image + (1.0 - factor) * ref, 0.0, 1.0)


def _color_jitter(u, image, brightness, contrast, saturation, hue, prob, random_order):
  rgb = image.shape[-1] == 3
  codes, factors = [], []
  for i, (code, strength, active) in enumerate((
    (_BRIGHTNESS, brightness, True),
    (_CONTRAST, contrast, True),
    (_SATURATION, saturation, rgb),
    (_HUE, hue, rgb),
  )):
    if not active or strength <= 0:
      continue
    if code == _HUE:
      lo, hi = -strength, strength
    else:
      lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    codes.append(code)
    factors.append(lo + (hi - lo) * u[1 + i])
  if not codes or prob <= 0:
    return image
  n = len(codes)

  def jitter(x):
    if not random_order or n == 1:
      for code, f in zip(codes, factors):
        x = _adjust(x, code, f)
      return x
    # A uniformly random order: sort the ops by uniform keys. Rather than evaluating
    # every op at every position (4x the costly HSV round trip, and slow to compile),
    # the blend ops run in their sorted order in two passes, those sorted before hue
    # in the first pass and those after it in the second, with hue once in between.
    sort_keys = [u[5 + i] for i in range(n)]
    blend = [i for i, c in enumerate(codes) if c != _HUE]
    blend_keys = jnp.stack([sort_keys[i] for i in blend])
    slots = jnp.argsort(blend_keys)
    blend_codes = jnp.asarray([codes[i] for i in blend], dtype=jnp.int32)[slots]
    blend_factors = jnp.stack([factors[i] for i in blend])[slots]
    if _HUE not in codes:
      for s in range(len(blend)):
        x = _blend_dynamic(x, blend_codes[s], blend_factors[s])
      return x
    h = codes.index(_HUE)
    hue_pos = jnp.sum(blend_keys < sort_keys[h])  # how many blend ops precede hue
    for s in range(len(blend)):
      x = jnp.where(s < hue_pos, _blend_dynamic(x, blend_codes[s], blend_factors[s]), x)
    x = _adjust_hue(x, factors[h])
    for s in range(len(blend)):
      x = jnp.where(s >= hue_pos, _blend_dynamic(x, blend_codes[s], blend_factors[s]), x)
    return x

  return _maybe_apply(u[0], prob, image, jitter)


def color_jitter(
  key,
  image,
  *,
  brightness: float,
  contrast: float,
  saturation: float,
  hue: float,
  prob: float,
  random_order: bool = True,
):
  """torchvision/SimCLR colour jitter, applied as a whole with probability ``prob``.

  Brightness, contrast and saturation factors are uniform in ``[max(0, 1 - s), 1 + s]``
  and the hue shift is uniform in ``[-hue, hue]`` (a fraction of the hue circle,
  ``hue <= 0.5``). Brightness scales the pixels; contrast blends with the image's mean
  luma; saturation blends with the per-pixel luma; hue rotates the HSV hue. The result
  is clipped to [0, 1] after every adjustment. Saturation and hue act only when
  C == 3; an adjustment with strength 0 is skipped. With ``random_order`` (the
  default, as torchvision's ColorJitter and SimCLR) the adjustments run in a random
  order drawn per call (per example under vmap); otherwise in the fixed order
  brightness, contrast, saturation, hue.
  """
  _check_image(image)
  prob = _check_prob("prob", prob)
  brightness = _check_nonneg("brightness", brightness)
  contrast = _check_nonneg("contrast", contrast)
  saturation = _check_nonneg("saturation", saturation)
  hue = _check_nonneg("hue", hue, upper=0.5)
  return _color_jitter(
    _uniforms(key, _N_JITTER), image, brightness, contrast, saturation, hue, prob,
    bool(random_order))


def _random_grayscale(u, image, prob):
  if image.shape[-1] == 1:
    return image
  return _maybe_apply(u[0], prob, image, lambda x: jnp.broadcast_to(_gray(x), x.shape))


def random_grayscale(key, image, *, prob: float):
  """With probability ``prob``, replaces an RGB image by its luma (0.299 R + 0.587 G +
  0.114 B) replicated to 3 channels. Identity for C == 1."""
  _check_image(image)
  prob = _check_prob("prob", prob)
  return _random_grayscale(_uniforms(key, _N_GRAY), image, prob)


# ----------------------------------------------------------------------------------
# Blur and solarize.


def default_blur_kernel_size(height: int, width: int) -> int:
  """SimCLR's kernel size: about 10% of the image side, made odd, at least 3."""
  k = max(3, int(round(0.1 * max(height, width))))
  return k if k % 2 == 1 else k + 1


def _blur_axis(image, weights, axis: int, mode: str):
  k = weights.shape[0]
  pad = k // 2
  pad_width = [(0, 0)] * image.ndim
  pad_width[axis] = (pad, pad)
  padded = jnp.pad(image, pad_width, mode=mode)
  n = image.shape[axis]
  out = weights[0] * jax.lax.slice_in_dim(padded, 0, n, axis=axis)
  for i in range(1, k):  # k is small and static: shifted sums beat conv on CPU.
    out = out + weights[i] * jax.lax.slice_in_dim(padded, i, i + n, axis=axis)
  return out


def _gaussian_blur(u, image, prob, sigma, kernel_size):
  if kernel_size == 1:
    return image
  s_lo, s_hi = sigma
  height, width = image.shape[0], image.shape[1]

  def blur(x):
    s = s_lo + (s_hi - s_lo) * u[1]
    offsets = jnp.arange(kernel_size, dtype=jnp.float32) - kernel_size // 2
    weights = jnp.exp(-0.5 * jnp.square(offsets / s))
    weights = weights / jnp.sum(weights)
    pad = kernel_size // 2
    x = _blur_axis(x, weights, 0, "reflect" if pad < height else "edge")
    x = _blur_axis(x, weights, 1, "reflect" if pad < width else "edge")
    return jnp.clip(x, 0.0, 1.0)

  return _maybe_apply(u[0], prob, image, blur)


def _check_kernel_size(kernel_size, height: int, width: int) -> int:
  if kernel_size is None:
    return default_blur_kernel_size(height, width)
  if not (_is_static_number(kernel_size) and int(kernel_size) == kernel_size
          and kernel_size > 0 and int(kernel_size) % 2 == 1):
    raise ValueError(f"kernel_size: expected a positive odd int or None, got {kernel_size!r}")
  return int(kernel_size)


def gaussian_blur(key, image, *, prob: float, sigma=(0.1, 2.0), kernel_size=None):
  """Separable Gaussian blur with probability ``prob``.

  sigma is uniform in the ``sigma`` range per call (so per example under vmap); the
  kernel size is static: ``kernel_size`` (odd) or, by default, about 10% of the image
  side made odd, at least 3 (`default_blur_kernel_size`). Borders are reflect-padded
  (edge-padded if the kernel is wider than the image) and the kernel sums to 1, so a
  constant image stays constant.
  """
  _check_image(image)
  prob = _check_prob("prob", prob)
  sigma = _check_range("sigma", sigma, 0.0)
  kernel_size = _check_kernel_size(kernel_size, image.shape[0], image.shape[1])
  return _gaussian_blur(_uniforms(key, _N_BLUR), image, prob, sigma, kernel_size)


def _solarize(u, image, prob, threshold):
  return _maybe_apply(u[0], prob, image, lambda x: jnp.where(x >= threshold, 1.0 - x, x))


def solarize(key, image, *, prob: float, threshold: float = 0.5):
  """With probability ``prob``, pixels >= ``threshold`` become ``1 - pixel``."""
  _check_image(image)
  prob = _check_prob("prob", prob)
  threshold = _check_nonneg("threshold", threshold, upper=1.0)
  return _solarize(_uniforms(key, _N_SOLARIZE), image, prob, threshold)


# ----------------------------------------------------------------------------------
# Pipelines.


def _resolve_config(config: Mapping[str, Any] | None) -> dict:
  if config is None:
    config = {}
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
    config = config.to_dict()
  elif not isinstance(config, Mapping):
    raise ValueError(
      f"config: expected a mapping (dict or ml_collections.ConfigDict), "
      f"got {type(config).__name__}"
    )
  unknown = sorted(set(config) - set(DEFAULT_VIEW))
  if unknown:
    raise ValueError(
      f"config: unknown keys {unknown}; expected a subset of {sorted(DEFAULT_VIEW)}"
    )
  cfg = dict(DEFAULT_VIEW)
  cfg.update(config)
  if cfg["crop_size"] is not None:
    size = cfg["crop_size"]
    if not (_is_static_number(size) and int(size) == size and size > 0):
      raise ValueError(f"crop_size: expected a positive int or None, got {size!r}")
    cfg["crop_size"] = int(size)
  cfg["crop_scale"] = _check_range("crop_scale", cfg["crop_scale"], 0.0, 1.0)
  cfg["crop_ratio"] = _check_range("crop_ratio", cfg["crop_ratio"], 0.0)
  for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
    cfg[name] = _check_prob(name, cfg[name])
  for name in ("brightness", "contrast", "saturation"):
    cfg[name] = _check_nonneg(name, cfg[name])
  cfg["hue"] = _check_nonneg("hue", cfg["hue"], upper=0.5)
  return cfg


_N_VIEW = _N_CROP + _N_FLIP + _N_JITTER + _N_GRAY + _N_BLUR + _N_SOLARIZE


def _augment_view(key, image, cfg: dict):
  image = _to_float(image)
  size = cfg["crop_size"]
  out_hw = (image.shape[0], image.shape[1]) if size is None else (size, size)
  u = _uniforms(key, _N_VIEW)  # one draw for the whole pipeline (see _uniforms)
  parts = []
  start = 0
  for n in (_N_CROP, _N_FLIP, _N_JITTER, _N_GRAY, _N_BLUR, _N_SOLARIZE):
    parts.append(u[start:start + n])
    start += n
  u_crop, u_flip, u_jitter, u_gray, u_blur, u_sol = parts
  x = _random_resized_crop(u_crop, image, out_hw, cfg["crop_scale"], cfg["crop_ratio"])
  x = _random_flip(u_flip, x, cfg["flip_prob"])
  x = _color_jitter(
    u_jitter, x, cfg["brightness"], cfg["contrast"], cfg["saturation"], cfg["hue"],
    cfg["jitter_prob"], True)
  x = _random_grayscale(u_gray, x, cfg["grayscale_prob"])
  kernel_size = default_blur_kernel_size(out_hw[0], out_hw[1])
  x = _gaussian_blur(u_blur, x, cfg["blur_prob"], (0.1, 2.0), kernel_size)
  x = _solarize(u_sol, x, cfg["solarize_prob"], 0.5)
  return x


def augment_view(key, image, config: Mapping[str, Any] | None = None):
  """One augmented view of one image.

  uint8 input is scaled to [0, 1]; floating input is assumed to be in [0, 1]. Then
  random resized crop -> horizontal flip -> colour jitter (random order) -> grayscale
  -> Gaussian blur (sigma in (0.1, 2), kernel ~10% of the output side) -> solarize
  (threshold 0.5), with settings from ``config`` (keys of `DEFAULT_VIEW`; missing keys
  take those defaults, unknown keys raise ValueError). All randomness comes from one
  ``jax.random.uniform(key, ...)`` draw.

  Returns float32 [crop_size, crop_size, C] (or [H, W, C] when crop_size is None).
  """
  _check_image(image)
  return _augment_view(key, image, _resolve_config(config))


def augment_batch(key, images, config: Mapping[str, Any] | None = None):
  """`augment_view` on every image of ``images`` [B, H, W, C] with keys
  ``jax.random.split(key, B)``.

  The per-example keys come from the one key, never from device ids, so under jit with
  ``images`` sharded along a mesh axis the result equals the unsharded one.
  """
  _check_batch(images)
  cfg = _resolve_config(config)
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda k, x: _augment_view(k, x, cfg))(keys, images)


def augment_views(key, images, configs: Sequence[Mapping[str, Any]]):
  """One batch of views per config; view i uses ``jax.random.fold_in(key, i)``.

  SimCLR: ``[DEFAULT_VIEW, DEFAULT_VIEW]``; BYOL: ``BYOL_VIEWS``. Inside the train step::

    rng = jax.random.fold_in(base_rng, step)
    view1, view2 = augment_views(rng, images_uint8, [DEFAULT_VIEW, DEFAULT_VIEW])
  """
  _check_batch(images)
  if isinstance(configs, Mapping) or hasattr(configs, "to_dict"):
    raise ValueError(
      "configs: expected a sequence of view configs (one mapping per view), got a single "
      "mapping; wrap it in a list"
    )
  configs = list(configs)
  if not configs:
    raise ValueError("configs: expected at least one view config, got an empty sequence")
  return [augment_batch(jax.random.fold_in(key, i), images, c) for i, c in enumerate(configs)]
