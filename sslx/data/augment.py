"""Jittable image augmentation that runs on device inside the train step, on the globally
sharded uint8 batch: ops registered by name, pipelines from spec strings or dicts, with params.
"""

import ast
import inspect
import math
import re
from typing import Any, Mapping, Sequence

import jax
import jax.scipy.ndimage
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
  "random_rotate",
  "AUGMENTATIONS",
  "AugmentOp",
  "RandomResizedCrop",
  "Flip",
  "ColorJitter",
  "Grayscale",
  "Blur",
  "Solarize",
  "Rotate",
  "register_augmentation",
  "make_op",
  "Pipeline",
  "parse_pipeline",
  "make_pipeline",
  "augment_view",
  "augment_batch",
  "augment_views",
  "without_crop",
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


def check_image(image, name: str = "image"):
  """A ValueError naming `name` unless `image` is one [H, W, C] image (ops and their checks
  are shared with sslx.data.randaugment and views)."""
  _check_rank_and_channels(image, name, 3)


def check_batch(images, name: str = "images"):
  """A ValueError naming `name` unless `images` is a [B, H, W, C] batch."""
  if getattr(images, "ndim", None) == 5:
    raise ValueError(
      f"{name}: got views already cropped from the full images on the host, [B, V, h, w, C]"
      f" {tuple(images.shape)}, but this view function crops on device; set"
      " data.crop_on_host=False for this method")
  _check_rank_and_channels(images, name, 4)


def check_prob(name: str, value):
  """`value` as a float in [0, 1], or a ValueError naming `name`."""
  if not _is_static_number(value) or not 0.0 <= float(value) <= 1.0:
    raise ValueError(f"{name}: expected a probability (a number in [0, 1]), got {value!r}")
  return float(value)


def check_nonneg(name: str, value, upper=None):
  """`value` as a float >= 0 (and <= `upper`), or a ValueError naming `name`."""
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


def to_float(image):
  """uint8 or float image(s) -> float32 in [0, 1]."""
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


def _random_op(key, image, op):
  """The single-image functions below: `op` (an AugmentOp, defined further down) applied with
  its own draw of uniforms from ``key``."""
  return op.random(_uniforms(key, op.n_uniforms), image)[0]


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
  check_image(image)
  return _random_op(key, image, RandomResizedCrop(size=_check_size("size", size), scale=scale,
                                                  ratio=ratio))


# ----------------------------------------------------------------------------------
# Flip.


def random_flip(key, image, *, prob: float = 0.5):
  """Flips the image horizontally (``image[:, ::-1]``) with probability ``prob``."""
  check_image(image)
  return _random_op(key, image, Flip(p=check_prob("prob", prob)))


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


_NEUTRAL_FACTORS = (1.0, 1.0, 1.0, 0.0)  # brightness, contrast, saturation, hue: no change


def _jitter_active(channels: int, brightness, contrast, saturation, hue):
  """Static list of (code, lo, hi) for the adjustments that act on this image."""
  rgb = channels == 3
  active = []
  for code, strength, on in ((_BRIGHTNESS, brightness, True), (_CONTRAST, contrast, True),
                             (_SATURATION, saturation, rgb), (_HUE, hue, rgb)):
    if not on or strength <= 0:
      continue
    if code == _HUE:
      active.append((code, -strength, strength))
    else:
      active.append((code, max(0.0, 1.0 - strength), 1.0 + strength))
  return active


def _jitter_draw(u, active, random_order: bool):
  """Factors [4] (neutral for inactive adjustments) and the order [4] (a permutation of the
  codes: order[i] is the adjustment applied i-th; inactive ones are listed last)."""
  factors = [jnp.float32(f) for f in _NEUTRAL_FACTORS]
  keys = [jnp.float32(4.0 + code) for code in range(4)]  # > any active key: inactive go last
  for i, (code, lo, hi) in enumerate(active):
    factors[code] = lo + (hi - lo) * u[1 + code]
    keys[code] = u[5 + i] if random_order else jnp.float32(code)
  return jnp.stack(factors), jnp.argsort(jnp.stack(keys)).astype(jnp.int32)


def _jitter_apply(image, codes, factors, order, random_order: bool):
  """The adjustments ``codes`` (static) with ``factors`` [4], in ``order`` [4]."""
  if not codes:
    return image
  x = image
  if not random_order or len(codes) == 1:
    for code in codes:
      x = _adjust(x, code, factors[code])
    return x
  # A random order: rather than evaluating every op at every position (4x the costly HSV
  # round trip, and slow to compile), the blend ops run in their sorted order in two
  # passes, those before hue in the first pass and those after it in the second, with hue
  # once in between.
  rank = jnp.argsort(order)  # rank[code]: the position at which code is applied
  blend = [c for c in codes if c != _HUE]
  blend_rank = rank[jnp.asarray(blend)]
  slots = jnp.argsort(blend_rank)
  blend_codes = jnp.asarray(blend, dtype=jnp.int32)[slots]
  blend_factors = factors[jnp.asarray(blend)][slots]
  if _HUE not in codes:
    for s in range(len(blend)):
      x = _blend_dynamic(x, blend_codes[s], blend_factors[s])
    return x
  hue_pos = jnp.sum(blend_rank < rank[_HUE])  # how many blend ops precede hue
  for s in range(len(blend)):
    x = jnp.where(s < hue_pos, _blend_dynamic(x, blend_codes[s], blend_factors[s]), x)
  x = _adjust_hue(x, factors[_HUE])
  for s in range(len(blend)):
    x = jnp.where(s >= hue_pos, _blend_dynamic(x, blend_codes[s], blend_factors[s]), x)
  return x


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
  check_image(image)
  return _random_op(key, image, ColorJitter(brightness, contrast, saturation, hue,
                                            p=check_prob("prob", prob),
                                            random_order=bool(random_order)))


def random_grayscale(key, image, *, prob: float):
  """With probability ``prob``, replaces an RGB image by its luma (0.299 R + 0.587 G +
  0.114 B) replicated to 3 channels. Identity for C == 1."""
  check_image(image)
  return _random_op(key, image, Grayscale(p=check_prob("prob", prob)))


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


def _blur_sigma(image, sigma, kernel_size: int):
  """Separable Gaussian blur with standard deviation ``sigma`` (pixels), static kernel."""
  if kernel_size == 1:
    return image
  offsets = jnp.arange(kernel_size, dtype=jnp.float32) - kernel_size // 2
  weights = jnp.exp(-0.5 * jnp.square(offsets / sigma))
  weights = weights / jnp.sum(weights)
  pad = kernel_size // 2
  x = _blur_axis(image, weights, 0, "reflect" if pad < image.shape[0] else "edge")
  x = _blur_axis(x, weights, 1, "reflect" if pad < image.shape[1] else "edge")
  return jnp.clip(x, 0.0, 1.0)


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
  check_image(image)
  return _random_op(key, image, Blur(p=check_prob("prob", prob), sigma=sigma,
                                     kernel_size=kernel_size))


def solarize(key, image, *, prob: float, threshold: float = 0.5):
  """With probability ``prob``, pixels >= ``threshold`` become ``1 - pixel``."""
  check_image(image)
  return _random_op(key, image, Solarize(p=check_prob("prob", prob), threshold=threshold))


# ----------------------------------------------------------------------------------
# Rotation.

_N_ROTATE = 2  # apply, angle


def _rotate(image, angle):
  """Rotates ``image`` [H, W, C] counter-clockwise by ``angle`` degrees about its centre.

  Bilinear sampling; the source of a pixel that falls outside the image reads 0 (and
  pixels within one pixel of the border blend with 0), as torchvision's ``rotate`` with
  bilinear interpolation and ``fill=0``.
  """
  h, w = image.shape[0], image.shape[1]
  theta = angle * (math.pi / 180.0)
  c, s = jnp.cos(theta), jnp.sin(theta)
  # Output pixel centres relative to the image centre (y points down, x right).
  dy = (jnp.arange(h, dtype=jnp.float32) + 0.5 - h / 2)[:, None]
  dx = (jnp.arange(w, dtype=jnp.float32) + 0.5 - w / 2)[None, :]
  # The forward map is counter-clockwise on screen, (dx, dy) -> (c dx + s dy, -s dx + c dy)
  # with y down; each output pixel reads its source through the inverse (rotation by -angle).
  # Sample indices put pixel centres at integers, hence the -0.5.
  src_x = c * dx - s * dy + (w / 2 - 0.5)
  src_y = s * dx + c * dy + (h / 2 - 0.5)
  channels = [
    jax.scipy.ndimage.map_coordinates(
      image[..., k], [src_y, src_x], order=1, mode="constant", cval=0.0)
    for k in range(image.shape[-1])
  ]
  return jnp.clip(jnp.stack(channels, axis=-1), 0.0, 1.0)


def _check_degrees(degrees):
  """``d`` -> (-d, d); a pair (lo, hi) with lo <= hi stays as it is."""
  if _is_static_number(degrees):
    if degrees < 0:
      raise ValueError(f"degrees: expected a number >= 0 or a pair (lo, hi), got {degrees!r}")
    return -float(degrees), float(degrees)
  try:
    lo, hi = (float(v) for v in degrees)
    ok = lo <= hi
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(
      f"degrees: expected a number >= 0 or a pair (lo, hi) with lo <= hi, got {degrees!r}")
  return lo, hi


def random_rotate(key, image, *, degrees, prob: float = 1.0):
  """With probability ``prob``, rotates the image counter-clockwise by an angle (degrees)
  uniform in ``degrees`` (a number d means (-d, d)), about its centre, bilinear, fill 0.

  As torchvision's ``RandomRotation(degrees)``; used for rotation-equivariant methods (SIE,
  Garrido et al. 2023) and rotation prediction (RotNet, Gidaris et al. 2018). The output
  keeps the input's shape.
  """
  check_image(image)
  return _random_op(key, image, Rotate(degrees, p=check_prob("prob", prob)))


# ----------------------------------------------------------------------------------
# Ops by name: each draws its randomness from a static number of uniforms, can report
# what it drew (a fixed-shape dict of arrays), and can replay those parameters.


class AugmentOp:
  """An augmentation op configured by static arguments, registered by name.

  Subclasses set ``n_uniforms`` (how many uniforms in [0, 1) one call consumes) and define
  ``sample(u, shape) -> params`` (a dict of fixed-shape arrays describing the transformation
  in effect) and ``apply(image, params) -> image`` (deterministic; replays ``params``).
  ``random(u, image)`` returns ``(apply(image, sample(u, image.shape)), params)``; ops
  with a probability override it to skip the work statically when ``p`` is 0 or 1.
  Images are float32 [H, W, C] in [0, 1].
  """

  name = ""
  n_uniforms = 0

  def __init__(self, **args):
    self.args = args  # the validated arguments, for `spec`

  def out_hw(self, hw):
    """The output's (height, width) for an input of (height, width) ``hw``."""
    return hw

  def sample(self, u, shape):
    raise NotImplementedError

  def apply(self, image, params):
    raise NotImplementedError

  def random(self, u, image):
    params = self.sample(u, image.shape)
    return self.apply(image, params), params

  def spec(self) -> str:
    """The op as a pipeline-spec element (parses back to an equal op)."""
    return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.args.items())})"

  def __repr__(self):
    return self.spec()


class _GatedOp(AugmentOp):
  """An op applied with probability ``p``: ``params["applied"] = u[0] < p``."""

  def transform(self, image, params):
    raise NotImplementedError

  def apply(self, image, params):
    return jnp.where(params["applied"], self.transform(image, params), image)

  def random(self, u, image):
    params = self.sample(u, image.shape)
    out = _maybe_apply(u[0], self.p, image, lambda x: self.transform(x, params))
    return out, params


AUGMENTATIONS: dict = {}
# The single-op function names also work in specs.
_ALIASES = {"random_flip": "flip", "random_grayscale": "grayscale", "gaussian_blur": "blur",
            "random_rotate": "rotate"}


def register_augmentation(name: str):
  """Class decorator adding an `AugmentOp` subclass to `AUGMENTATIONS` under ``name``."""
  if not (isinstance(name, str) and name.isidentifier()):
    raise ValueError(f"name: expected a Python identifier, got {name!r}")

  def register(cls):
    if not (isinstance(cls, type) and issubclass(cls, AugmentOp)):
      raise ValueError(f"register_augmentation({name!r}): expected an AugmentOp subclass, "
                       f"got {cls!r}")
    cls.name = name
    AUGMENTATIONS[name] = cls
    return cls

  return register


@register_augmentation("random_resized_crop")
class RandomResizedCrop(AugmentOp):
  """`random_resized_crop`; params ``{"box": [4] float32 (y0, x0, h, w)}`` in input pixels
  (continuous coordinates, the whole image is (0, 0, H, W)). ``size=None`` keeps H, W."""

  n_uniforms = _N_CROP

  def __init__(self, size=None, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
    self.size = None if size is None else _check_size("size", size)
    self.scale = _check_range("scale", scale, 0.0, 1.0)
    self.ratio = _check_range("ratio", ratio, 0.0)
    super().__init__(size=size, scale=self.scale, ratio=self.ratio)

  def out_hw(self, hw):
    return hw if self.size is None else self.size

  def sample(self, u, shape):
    return {"box": _crop_box(u, shape[0], shape[1], self.scale, self.ratio)}

  def apply(self, image, params):
    return _resize_box(image, params["box"], *self.out_hw(image.shape[:2]))


@register_augmentation("flip")
class Flip(_GatedOp):
  """Horizontal flip with probability ``p``; params ``{"applied": bool}``."""

  n_uniforms = _N_FLIP

  def __init__(self, p=0.5):
    self.p = check_prob("p", p)
    super().__init__(p=self.p)

  def sample(self, u, shape):
    return {"applied": u[0] < self.p}

  def transform(self, image, params):
    return image[:, ::-1]


@register_augmentation("color_jitter")
class ColorJitter(_GatedOp):
  """`color_jitter` with probability ``p``.

  Params: ``applied`` (bool); ``factors`` [4] float32: brightness, contrast, saturation
  factors and the hue shift in effect (neutral 1, 1, 1, 0 when not applied, for an
  adjustment of strength 0, and for saturation / hue on 1-channel images); ``order`` [4]
  int32: ``order[i]`` is the adjustment (0 brightness, 1 contrast, 2 saturation, 3 hue)
  applied i-th, inactive adjustments listed last.
  """

  n_uniforms = _N_JITTER

  def __init__(self, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8,
               random_order=True):
    self.strengths = (check_nonneg("brightness", brightness),
                      check_nonneg("contrast", contrast),
                      check_nonneg("saturation", saturation),
                      check_nonneg("hue", hue, upper=0.5))
    self.p = check_prob("p", p)
    if not isinstance(random_order, (bool, np.bool_)):
      raise ValueError(f"random_order: expected True or False, got {random_order!r}")
    self.random_order = bool(random_order)
    super().__init__(brightness=self.strengths[0], contrast=self.strengths[1],
                     saturation=self.strengths[2], hue=self.strengths[3], p=self.p,
                     random_order=self.random_order)

  def _active(self, channels):
    return _jitter_active(channels, *self.strengths) if self.p > 0 else []

  def sample(self, u, shape):
    factors, order = _jitter_draw(u, self._active(shape[-1]), self.random_order)
    applied = u[0] < self.p
    factors = jnp.where(applied, factors, jnp.asarray(_NEUTRAL_FACTORS, jnp.float32))
    return {"applied": applied, "factors": factors, "order": order}

  def transform(self, image, params):
    codes = [code for code, _, _ in self._active(image.shape[-1])]
    return _jitter_apply(image, codes, params["factors"], params["order"], self.random_order)


@register_augmentation("grayscale")
class Grayscale(_GatedOp):
  """Luma replicated to 3 channels with probability ``p``; params ``{"applied": bool}``
  (always False on 1-channel images, which it leaves alone)."""

  n_uniforms = _N_GRAY

  def __init__(self, p=0.2):
    self.p = check_prob("p", p)
    super().__init__(p=self.p)

  def sample(self, u, shape):
    return {"applied": (u[0] < self.p) & (shape[-1] == 3)}

  def transform(self, image, params):
    return jnp.broadcast_to(_gray(image), image.shape)

  def random(self, u, image):
    if image.shape[-1] == 1:
      return image, self.sample(u, image.shape)
    return super().random(u, image)


@register_augmentation("blur")
class Blur(_GatedOp):
  """`gaussian_blur` with probability ``p``; params ``{"applied": bool, "sigma": float32}``
  (sigma in pixels, 0 when not applied). ``kernel_size=None``: ~10% of the side."""

  n_uniforms = _N_BLUR

  def __init__(self, p=0.5, sigma=(0.1, 2.0), kernel_size=None):
    self.p = check_prob("p", p)
    self.sigma = _check_range("sigma", sigma, 0.0)
    if kernel_size is not None:
      kernel_size = _check_kernel_size(kernel_size, 1, 1)
    self.kernel_size = kernel_size
    super().__init__(p=self.p, sigma=self.sigma, kernel_size=kernel_size)

  def sample(self, u, shape):
    applied = u[0] < self.p
    sigma = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * u[1]
    return {"applied": applied, "sigma": jnp.where(applied, sigma, 0.0)}

  def transform(self, image, params):
    k = self.kernel_size or default_blur_kernel_size(image.shape[0], image.shape[1])
    sigma = params["sigma"]
    return _blur_sigma(image, jnp.where(sigma > 0, sigma, 1.0), k)  # 0: not applied


@register_augmentation("solarize")
class Solarize(_GatedOp):
  """`solarize` with probability ``p`` (pixels >= threshold -> 1 - pixel); params
  ``{"applied": bool}``."""

  n_uniforms = _N_SOLARIZE

  def __init__(self, p=0.2, threshold=0.5):
    self.p = check_prob("p", p)
    self.threshold = check_nonneg("threshold", threshold, upper=1.0)
    super().__init__(p=self.p, threshold=self.threshold)

  def sample(self, u, shape):
    return {"applied": u[0] < self.p}

  def transform(self, image, params):
    return jnp.where(image >= self.threshold, 1.0 - image, image)


@register_augmentation("rotate")
class Rotate(_GatedOp):
  """`random_rotate` with probability ``p``; params ``{"applied": bool, "angle": float32}``
  (degrees counter-clockwise, 0 when not applied)."""

  n_uniforms = _N_ROTATE

  def __init__(self, degrees, p=1.0):
    self.degrees = _check_degrees(degrees)
    self.p = check_prob("p", p)
    super().__init__(degrees=self.degrees, p=self.p)

  def sample(self, u, shape):
    applied = u[0] < self.p
    lo, hi = self.degrees
    return {"applied": applied, "angle": jnp.where(applied, lo + (hi - lo) * u[1], 0.0)}

  def transform(self, image, params):
    return _rotate(image, params["angle"])


def _known_ops() -> str:
  return ", ".join(sorted(AUGMENTATIONS))


def make_op(name: str, *args, **kwargs) -> AugmentOp:
  """The registered op ``name`` built from ``args`` / ``kwargs``; ValueError (naming the op,
  the argument and the known ops) for an unknown name or a bad argument."""
  cls = AUGMENTATIONS.get(_ALIASES.get(name, name))
  if cls is None:
    raise ValueError(f"unknown augmentation op {name!r}; known ops: {_known_ops()}")
  signature = inspect.signature(cls)
  try:
    signature.bind(*args, **kwargs)
  except TypeError as e:
    raise ValueError(
      f"augmentation op {name!r}: {e}; it takes ({', '.join(signature.parameters)}); "
      f"known ops: {_known_ops()}") from None
  try:
    return cls(*args, **kwargs)
  except ValueError as e:
    raise ValueError(f"augmentation op {name!r}: {e}; known ops: {_known_ops()}") from None


_OP_PATTERN = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*", re.DOTALL)


def _parse_op(text: str) -> AugmentOp:
  match = _OP_PATTERN.fullmatch(text)
  if match is None:
    raise ValueError(
      f"augmentation spec: cannot parse {text.strip()!r}; expected name or name(args), "
      f"e.g. 'flip(p=0.5)'; known ops: {_known_ops()}")
  name, arg_text = match.groups()
  if name not in AUGMENTATIONS and name not in _ALIASES:
    raise ValueError(f"unknown augmentation op {name!r}; known ops: {_known_ops()}")
  try:
    call = ast.parse(f"_({arg_text or ''})", mode="eval").body
  except SyntaxError:
    call = None
  if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
    raise ValueError(
      f"augmentation op {name!r}: cannot parse the arguments ({arg_text}); expected "
      f"Python literals, e.g. {name}(0.5, scale=(0.08, 1.0)); known ops: {_known_ops()}")

  def literal(node, what):
    # literal_eval accepts numbers, tuples, lists, strings, True/False/None: never code.
    try:
      value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
      raise ValueError(
        f"augmentation op {name!r}: argument {what}: expected a literal (number, tuple, "
        f"True/False/None), got {ast.unparse(node)!r}; known ops: {_known_ops()}") from None
    return tuple(value) if isinstance(value, list) else value

  args = []
  for i, node in enumerate(call.args):
    if isinstance(node, ast.Starred):
      raise ValueError(f"augmentation op {name!r}: *args are not allowed")
    args.append(literal(node, f"#{i + 1}"))
  kwargs = {}
  for kw in call.keywords:
    if kw.arg is None:
      raise ValueError(f"augmentation op {name!r}: **kwargs are not allowed")
    kwargs[kw.arg] = literal(kw.value, kw.arg)
  return make_op(name, *args, **kwargs)


class Pipeline:
  """A sequence of `AugmentOp`, applied to one image with one key.

  ``pipeline(key, image)`` converts uint8 to [0, 1] (floating input is assumed in [0, 1])
  and runs the ops in order. All randomness is one ``jax.random.uniform(key, ...)`` draw
  (on CPU each separate jax.random call costs about a second of compile time) of which
  each op gets its slice. With ``return_params=True`` it also returns a dict: one entry per
  op (its name, ``name_1``, ``name_2`` ... for repeats) holding that op's params.
  ``pipeline.apply(image, params)`` replays them deterministically. Shapes are static.
  """

  def __init__(self, ops: Sequence[AugmentOp]):
    self.ops = tuple(ops)
    for op in self.ops:
      if not isinstance(op, AugmentOp):
        raise ValueError(f"ops: expected AugmentOp instances, got {op!r}")
    names, counts = [], {}
    for op in self.ops:
      n = counts.get(op.name, 0)
      counts[op.name] = n + 1
      names.append(op.name if n == 0 else f"{op.name}_{n}")
    self.param_names = tuple(names)
    self.n_uniforms = sum(op.n_uniforms for op in self.ops)

  @property
  def spec(self) -> str:
    return "|".join(op.spec() for op in self.ops)

  def __repr__(self):
    return f"Pipeline({self.spec!r})"

  def out_hw(self, hw):
    """Output (height, width) for input (height, width) ``hw``."""
    for op in self.ops:
      hw = op.out_hw(tuple(hw))
    return tuple(hw)

  def __call__(self, key, image, *, return_params: bool = False):
    """image [H, W, C] (uint8 or float in [0, 1]) -> float32 [h, w, C] (and params)."""
    u = _uniforms(key, self.n_uniforms) if self.n_uniforms else None
    return self.from_uniforms(u, image, return_params=return_params)

  def from_uniforms(self, u, image, *, return_params: bool = False):
    """As ``__call__`` with the uniforms drawn by the caller: ``u`` [n_uniforms] in [0, 1)."""
    check_image(image)
    if self.n_uniforms and (u is None or u.shape != (self.n_uniforms,)):
      raise ValueError(f"u: expected shape ({self.n_uniforms},), got "
                       f"{None if u is None else u.shape}")
    x = to_float(image)
    params, start = {}, 0
    for name, op in zip(self.param_names, self.ops):
      x, params[name] = op.random(u[start:start + op.n_uniforms] if op.n_uniforms else u, x)
      start += op.n_uniforms
    return (x, params) if return_params else x

  def apply(self, image, params):
    """Replays ``params`` (as returned by ``__call__``) on one image, deterministically."""
    check_image(image)
    if not isinstance(params, Mapping) or set(params) != set(self.param_names):
      got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
      raise ValueError(f"params: expected a dict with keys {list(self.param_names)}, got {got}")
    x = to_float(image)
    for name, op in zip(self.param_names, self.ops):
      x = op.apply(x, params[name])
    return x


def parse_pipeline(spec: str) -> Pipeline:
  """Parses ``"op(args)|op(args)|..."`` into a `Pipeline`.

  Each element is a registered op name (see `AUGMENTATIONS`) with optional arguments,
  positional and keyword, as Python literals (read with ``ast.literal_eval``, never
  evaluated), e.g.::

    "random_resized_crop(224, scale=(0.08, 1))|flip|color_jitter(0.4, 0.4, 0.2, 0.1, p=0.8)"
    "|grayscale(p=0.2)|blur(p=1.0)|solarize(p=0.0)"

  An empty or blank spec is the empty pipeline (only the uint8 -> [0, 1] conversion).
  """
  if not isinstance(spec, str):
    raise ValueError(f"spec: expected a string, got {type(spec).__name__}")
  if not spec.strip():
    return Pipeline([])
  return Pipeline([_parse_op(part) for part in spec.split("|")])


# ----------------------------------------------------------------------------------
# Pipelines from configs.


def _resolve_config(config: Mapping[str, Any] | None) -> dict:
  if config is None:
    config = {}
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
    config = config.to_dict()
  elif not isinstance(config, Mapping):
    raise ValueError(
      f"config: expected a pipeline spec string, a mapping (dict or "
      f"ml_collections.ConfigDict) or a Pipeline, got {type(config).__name__}"
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
    cfg[name] = check_prob(name, cfg[name])
  for name in ("brightness", "contrast", "saturation"):
    cfg[name] = check_nonneg(name, cfg[name])
  cfg["hue"] = check_nonneg("hue", cfg["hue"], upper=0.5)
  return cfg


def make_pipeline(config=None) -> Pipeline:
  """A `Pipeline` from a spec string (`parse_pipeline`), a dict / ConfigDict with keys of
  `DEFAULT_VIEW` (missing keys take those defaults), None (= `DEFAULT_VIEW`), or a Pipeline.

  The dict form is random_resized_crop -> flip -> color_jitter (random order) -> grayscale
  -> blur (sigma in (0.1, 2), kernel ~10% of the side) -> solarize (threshold 0.5).
  """
  if isinstance(config, Pipeline):
    return config
  if isinstance(config, str):
    return parse_pipeline(config)
  cfg = _resolve_config(config)
  return Pipeline([
    RandomResizedCrop(cfg["crop_size"], cfg["crop_scale"], cfg["crop_ratio"]),
    Flip(cfg["flip_prob"]),
    ColorJitter(cfg["brightness"], cfg["contrast"], cfg["saturation"], cfg["hue"],
                p=cfg["jitter_prob"]),
    Grayscale(cfg["grayscale_prob"]),
    Blur(cfg["blur_prob"]),
    Solarize(cfg["solarize_prob"]),
  ])


def augment_view(key, image, config=None, *, return_params: bool = False):
  """One augmented view of one image.

  ``config``: a pipeline spec string, a dict / ConfigDict of `DEFAULT_VIEW` keys, or a
  `Pipeline` (see `make_pipeline`). uint8 input is scaled to [0, 1]; floating input is
  assumed to be in [0, 1]. All randomness comes from one ``jax.random.uniform(key, ...)``
  draw.

  Returns float32 [h, w, C] (h, w from the crop size; the input's when it is None), and with
  ``return_params`` also the params dict (see `Pipeline`).
  """
  check_image(image)
  return make_pipeline(config)(key, image, return_params=return_params)


def augment_batch(key, images, config=None, *, return_params: bool = False):
  """`augment_view` on every image of ``images`` [B, H, W, C] with keys
  ``jax.random.split(key, B)``; params (if returned) get a leading [B] axis.

  The per-example keys come from the one key, never from device ids, so under jit with
  ``images`` sharded along a mesh axis the result equals the unsharded one.
  """
  check_batch(images)
  pipeline = make_pipeline(config)
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda k, x: pipeline(k, x, return_params=return_params))(keys, images)


def without_crop(config, view_hw) -> Pipeline:
  """`make_pipeline(config)` without its random resized crops, for views already cropped (on
  the host, from the full image: `sslx.data.decode.HostCrops`) to ``view_hw``; ValueError when
  the pipeline's crop would give another size."""
  pipeline = make_pipeline(config)
  crops = [op for op in pipeline.ops if isinstance(op, RandomResizedCrop)]
  for op in crops:
    if tuple(op.out_hw(tuple(view_hw))) != tuple(view_hw):
      raise ValueError(f"views cropped on the host are {tuple(view_hw)}, but the augmentation's"
                       f" crop gives {tuple(op.out_hw(tuple(view_hw)))} ({op.spec()}); make the"
                       " crop size and the host views' size agree")
  return Pipeline([op for op in pipeline.ops if not isinstance(op, RandomResizedCrop)])


def augment_views(key, images, configs, *, return_params: bool = False):
  """One batch of views per config; view i uses ``jax.random.fold_in(key, i)``.

  Each config is anything `make_pipeline` takes. SimCLR: ``[DEFAULT_VIEW, DEFAULT_VIEW]``;
  BYOL: ``BYOL_VIEWS``. Inside the train step::

    rng = jax.random.fold_in(base_rng, step)
    view1, view2 = augment_views(rng, images_uint8, [DEFAULT_VIEW, DEFAULT_VIEW])

  ``images`` [B, H, W, C], or [B, V, h, w, C]: V views per image already cropped from the full
  image on the host (``data.crop_on_host``); view i is then config i without its crop
  (`without_crop`) applied to ``images[:, i]``, so V must be at least the number of configs.
  """
  if getattr(images, "ndim", None) == 5:
    configs = list(configs)
    if not 1 <= len(configs) <= images.shape[1]:
      raise ValueError(f"images: {images.shape[1]} views per image were cropped on the host"
                       f" (data.crop_on_host), but {len(configs)} view configs ask for views")
    return [augment_batch(jax.random.fold_in(key, i), images[:, i],
                          without_crop(c, images.shape[2:4]), return_params=return_params)
            for i, c in enumerate(configs)]
  check_batch(images)
  if isinstance(configs, (str, Pipeline, Mapping)) or hasattr(configs, "to_dict"):
    raise ValueError(
      "configs: expected a sequence of view configs (one per view), got a single "
      f"{type(configs).__name__}; wrap it in a list"
    )
  configs = list(configs)
  if not configs:
    raise ValueError("configs: expected at least one view config, got an empty sequence")
  return [augment_batch(jax.random.fold_in(key, i), images, c, return_params=return_params)
          for i, c in enumerate(configs)]
