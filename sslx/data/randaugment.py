"""FixMatch / USB strong augmentation on device: RandAugment's 14 PIL operations, Cutout and the
weak "pad and crop" translation, jittable with static shapes and per-example randomness.

RandAugment (Cubuk et al. 2020) applies ``N`` operations drawn uniformly from a fixed list.
FixMatch (Sohn et al. 2020) uses the variant in which each operation's magnitude is drawn
uniformly from its range instead of being a fixed ``M``, followed by Cutout (DeVries & Taylor
2017); its weak augmentation is a flip and a translation by up to 12.5% (pad by reflection and
crop back). The reference implementation here is TorchSSL / USB
(``semilearn/datasets/augmentation/randaugment.py``: ``augment_list``, ``RandAugment``,
``CutoutAbs``), which runs PIL on uint8 images. The single-image functions below reproduce
those PIL operations on float32 [H, W, C] images in [0, 1] (C = 1 or 3) where a PIL image is
``x * 255``: the quantised ones (autocontrast, equalize, posterize, solarize) work on the levels
``round(x * 255)`` and return ``level / 255``; the colour ones (brightness, color, contrast,
sharpness) blend with PIL's degenerate image (itself quantised, as PIL makes it) but do not
truncate the blend to a level, so they are within one level of PIL; the geometric ones sample
the nearest input pixel exactly as PIL's AFFINE transform does.

Three ops are registered with `sslx.data.augment.register_augmentation` so that they can be
used in pipeline specs: ``translate`` (FixMatch's weak shift), ``randaugment`` and ``cutout``.
USB's weak view is ``"translate(0.125)|flip"`` and its strong view
``"translate(0.125)|flip|randaugment(3)|cutout(0.5)"`` (TorchSSL applies RandAugment and Cutout
before its flip and crop instead). They register when this module is imported.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from sslx.data import augment

__all__ = [
  "RANDAUGMENT_OPS",
  "RANDAUGMENT_RANGES",
  "autocontrast",
  "equalize",
  "posterize",
  "solarize",
  "brightness",
  "color",
  "contrast",
  "sharpness",
  "rotate",
  "shear_x",
  "shear_y",
  "translate_x",
  "translate_y",
  "cutout",
  "Translate",
  "RandAugment",
  "Cutout",
]


# ----------------------------------------------------------------------------------
# Levels: PIL works on uint8, so the quantised ops see round(x * 255).


def _levels(image):
  return jnp.clip(jnp.round(image * 255.0), 0.0, 255.0).astype(jnp.int32)


def _from_levels(levels):
  return levels.astype(jnp.float32) / 255.0


def _prepare(image):
  augment.check_image(image)
  return augment.to_float(image)


def _luma_levels(levels):
  """PIL's "L" conversion of RGB levels [H, W, 3] -> [H, W, 1] (levels [H, W, 1] unchanged).

  PIL computes ``(19595 R + 38470 G + 7471 B + 0x8000) >> 16``: the weights are 0.299, 0.587
  and 0.114 in 16-bit fixed point and the result is rounded, so this reproduces it exactly.
  """
  if levels.shape[-1] == 1:
    return levels
  r, g, b = levels[..., 0], levels[..., 1], levels[..., 2]
  return ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16)[..., None]


# ----------------------------------------------------------------------------------
# Quantised ops (PIL.ImageOps): a lookup table per channel.


def autocontrast(image):
  """``PIL.ImageOps.autocontrast``: each channel's levels are stretched linearly so that its
  darkest level becomes 0 and its brightest 255 (``floor((level - lo) * 255 / (hi - lo))``); a
  constant channel is left unchanged.
  """
  levels = _levels(_prepare(image))
  lo = jnp.min(levels, axis=(0, 1))
  hi = jnp.max(levels, axis=(0, 1))
  span = hi - lo
  # Integer floor division: PIL's int(level * scale + offset) in doubles, without its rare
  # rounding to one level below an exact integer.
  stretched = jnp.clip((levels - lo) * 255 // jnp.maximum(span, 1), 0, 255)
  return _from_levels(jnp.where(span > 0, stretched, levels))


def equalize(image):
  """``PIL.ImageOps.equalize``: per channel, the histogram-equalising lookup table PIL builds.

  With ``n`` pixels and ``h`` the channel's 256-bin histogram, ``step = (n - h[last non-empty
  bin]) // 255`` and ``lut[i] = (step // 2 + sum(h[:i])) // step`` (clipped to 255, as PIL
  clips lookup tables); the channel is unchanged when ``step`` is 0 or at most one bin is
  non-empty.
  """
  levels = _levels(_prepare(image))
  h, w, c = levels.shape
  flat = levels.reshape(h * w, c).T  # [C, n]
  lo, hi = jnp.min(flat, axis=1), jnp.max(flat, axis=1)
  # The last non-empty bin is the brightest level.
  step = (h * w - jnp.sum(flat == hi[:, None], axis=1)) // 255
  # sum(h[:i]) for every level i by comparison with every level: no scatter or cumsum, which
  # vmap and compile (on CPU) worse.
  below = jnp.sum(flat[:, :, None] < jnp.arange(256, dtype=jnp.int32), axis=1, dtype=jnp.int32)
  safe_step = jnp.maximum(step, 1)[:, None]
  lut = jnp.minimum((safe_step // 2 + below) // safe_step, 255)
  identity = (lo == hi) | (step == 0)
  out = jnp.where(identity[:, None], flat, jnp.take_along_axis(lut, flat, axis=1))
  return _from_levels(out.T.reshape(h, w, c))


def posterize(image, bits):
  """``PIL.ImageOps.posterize``: keeps the top ``bits`` bits of each level (``int(bits)``,
  clipped to [0, 8]; 8 is the identity, 0 makes the image black)."""
  levels = _levels(_prepare(image))
  bits = jnp.clip(jnp.floor(jnp.asarray(bits, jnp.float32)), 0, 8).astype(jnp.int32)
  mask = ~(jnp.left_shift(jnp.int32(1), 8 - bits) - 1)
  return _from_levels(levels & mask)


def solarize(image, threshold):
  """``PIL.ImageOps.solarize``: levels ``>= threshold`` (in levels, 0..256; 256 leaves the
  image alone) become ``255 - level``."""
  levels = _levels(_prepare(image))
  return _from_levels(jnp.where(levels >= threshold, 255 - levels, levels))


# ----------------------------------------------------------------------------------
# Colour ops (PIL.ImageEnhance): blend with a degenerate image.


def _blend(image, degenerate, factor):
  """PIL's ``Image.blend(degenerate, image, factor)`` without its truncation to a level."""
  return jnp.clip(degenerate + factor * (image - degenerate), 0.0, 1.0)


def brightness(image, factor):
  """``PIL.ImageEnhance.Brightness``: blends with black, i.e. scales by ``factor``."""
  return _blend(_prepare(image), 0.0, factor)


def color(image, factor):
  """``PIL.ImageEnhance.Color``: blends with the image's PIL "L" grayscale (0.299 R + 0.587 G +
  0.114 B, rounded to a level); a 1-channel image is its own grayscale, so it is unchanged."""
  image = _prepare(image)
  if image.shape[-1] == 1:
    return image
  return _blend(image, _from_levels(_luma_levels(_levels(image))), factor)


def contrast(image, factor):
  """``PIL.ImageEnhance.Contrast``: blends with a constant image at the mean of the PIL "L"
  grayscale, rounded to a level (``int(mean + 0.5)``), in every channel."""
  image = _prepare(image)
  gray = _luma_levels(_levels(image))
  n = gray.shape[0] * gray.shape[1]
  # floor(sum / n + 0.5) in integers, as PIL's double arithmetic gives it.
  mean = (2 * jnp.sum(gray) + n) // (2 * n)
  return _blend(image, _from_levels(mean), factor)


def sharpness(image, factor):
  """``PIL.ImageEnhance.Sharpness``: blends with PIL's SMOOTH filter, the 3x3 kernel [[1, 1, 1],
  [1, 5, 1], [1, 1, 1]] / 13 rounded to a level, applied to the interior; the one-pixel border
  of the degenerate image is the image itself (so factor changes nothing there)."""
  image = _prepare(image)
  h, w = image.shape[0], image.shape[1]
  if h < 3 or w < 3:  # no interior
    return image
  levels = _levels(image)
  total = 4 * levels[1:-1, 1:-1]  # the centre weighs 5: once more in the 3x3 sum below
  for dy in range(3):
    for dx in range(3):
      total = total + levels[dy:dy + h - 2, dx:dx + w - 2]
  # Rounded, as PIL's filter adds 0.5 before truncating; 13 is odd, so no ties.
  smooth = _from_levels((2 * total + 13) // 26)
  degenerate = image.at[1:-1, 1:-1].set(smooth)
  return _blend(image, degenerate, factor)


# ----------------------------------------------------------------------------------
# Geometric ops (PIL Image.transform AFFINE / Image.rotate), nearest neighbour, fill 0.


_FIX_ONE = 65536  # PIL's affine transform works in 16.16 fixed point


def _fix(v):
  """PIL's ``FIX(v) = floor(v * 65536 + 0.5)`` (int32)."""
  return jnp.floor(jnp.asarray(v, jnp.float32) * _FIX_ONE + 0.5).astype(jnp.int32)


def _affine(image, matrix):
  """PIL's ``Image.transform(size, AFFINE, (a, b, c, d, e, f), NEAREST)``, fill 0.

  ``matrix`` is float32 [8]: (a, b, c, d, e, f, ox, oy). The output pixel at column x, row y
  reads the input at ``(floor(a x' + b y' + c + ox), floor(d x' + e y' + f + oy))``, ``(x', y')
  = (x + 0.5, y + 0.5)`` its centre; sources outside the image read 0. As PIL (``affine_fixed``
  in libImaging/Geometry.c), the coefficients and the first pixel centre's source are rounded
  to 16.16 fixed point and the rest is exact integer arithmetic, so the nearest-neighbour ties
  fall as PIL's do. The origin (ox, oy), multiples of 1/2 such as a rotation's centre, is kept
  out of the float32 sums: it is exact in fixed point, while adding it to the rest in float32
  would lose about 0.1 of the 1/65536 unit. int32 holds the coordinates of images up to 32767
  pixels a side, PIL's own limit for this path.
  """
  h, w, ch = image.shape
  a, b, c, d, e, f, ox, oy = (matrix[i] for i in range(8))
  a0, a1, a3, a4 = _fix(a), _fix(b), _fix(d), _fix(e)
  a2 = _fix(ox) + _fix(c + 0.5 * a + 0.5 * b)
  a5 = _fix(oy) + _fix(f + 0.5 * d + 0.5 * e)
  xs = jnp.arange(w, dtype=jnp.int32)[None, :]
  ys = jnp.arange(h, dtype=jnp.int32)[:, None]
  src_x = jnp.right_shift(a2 + xs * a0 + ys * a1, 16)  # arithmetic shift: floor
  src_y = jnp.right_shift(a5 + xs * a3 + ys * a4, 16)
  inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
  index = jnp.clip(src_y, 0, h - 1) * w + jnp.clip(src_x, 0, w - 1)
  out = jnp.take(image.reshape(h * w, ch), index, axis=0, mode="clip")
  return jnp.where(inside[..., None], out, 0.0)


def _matrix(*values):
  return jnp.stack([jnp.asarray(v, jnp.float32) for v in values])


def _rotate_matrix(shape, degrees):
  h, w = shape[0], shape[1]
  theta = jnp.asarray(degrees, jnp.float32) * (math.pi / 180.0)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  cx, cy = w / 2.0, h / 2.0
  # PIL's matrix for an angle t maps the output's offset from the centre through
  # [[cos t, -sin t], [sin t, cos t]] (x right, y down) back to the input: c = cx - cos cx +
  # sin cy, f = cy - sin cx - cos cy, the centre itself as the exact origin.
  return _matrix(cos, -sin, sin * cy - cos * cx, sin, cos, -sin * cx - cos * cy, cx, cy)


def _shear_x_matrix(shape, v):
  return _matrix(1.0, v, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)


def _shear_y_matrix(shape, v):
  return _matrix(1.0, 0.0, 0.0, v, 1.0, 0.0, 0.0, 0.0)


def _translate_x_matrix(shape, v):
  return _matrix(1.0, 0.0, v * shape[1], 0.0, 1.0, 0.0, 0.0, 0.0)


def _translate_y_matrix(shape, v):
  return _matrix(1.0, 0.0, 0.0, 0.0, 1.0, v * shape[0], 0.0, 0.0)


def rotate(image, degrees):
  """``PIL.Image.rotate(degrees)``: counter-clockwise about the image centre (W / 2, H / 2),
  nearest neighbour, corners filled with 0, same size."""
  image = _prepare(image)
  return _affine(image, _rotate_matrix(image.shape, degrees))


def shear_x(image, v):
  """``Image.transform(size, AFFINE, (1, v, 0, 0, 1, 0))``: the row at height y' reads from
  x' + v y' (about the top-left corner, as TorchSSL's ShearX); fill 0."""
  image = _prepare(image)
  return _affine(image, _shear_x_matrix(image.shape, v))


def shear_y(image, v):
  """``Image.transform(size, AFFINE, (1, 0, 0, v, 1, 0))``: the column at x' reads from
  y' + v x'; fill 0."""
  image = _prepare(image)
  return _affine(image, _shear_y_matrix(image.shape, v))


def translate_x(image, v):
  """``Image.transform(size, AFFINE, (1, 0, v * W, 0, 1, 0))``: the output reads ``v * W``
  pixels to the right, so a positive ``v`` moves the content left; fill 0."""
  image = _prepare(image)
  return _affine(image, _translate_x_matrix(image.shape, v))


def translate_y(image, v):
  """``Image.transform(size, AFFINE, (1, 0, 0, 0, 1, v * H))``: a positive ``v`` moves the
  content up; fill 0."""
  image = _prepare(image)
  return _affine(image, _translate_y_matrix(image.shape, v))


# ----------------------------------------------------------------------------------
# Cutout.


def cutout(image, center_y, center_x, size, fill=0.5):
  """TorchSSL's ``CutoutAbs`` (DeVries & Taylor 2017): a square of side ``size`` pixels about
  (center_y, center_x) (continuous coordinates, pixel edges at integers) set to ``fill``.

  As TorchSSL: ``x0 = int(max(0, center_x - size / 2))``, ``x1 = int(min(W, x0 + size))`` (and
  the same for y), and PIL's ``ImageDraw.rectangle((x0, y0, x1, y1))`` includes both corners,
  so the square covers columns x0..x1 and rows y0..y1, clipped to the image: ``int(size) + 1``
  pixels wide away from the border. ``size <= 0`` leaves the image unchanged (TorchSSL's Cutout
  returns early). TorchSSL fills with (125, 123, 114) / 255; ``fill`` is one value for all
  channels.
  """
  image = _prepare(image)
  h, w = image.shape[0], image.shape[1]
  size = jnp.asarray(size, jnp.float32)
  y0 = jnp.floor(jnp.maximum(0.0, center_y - size / 2))
  x0 = jnp.floor(jnp.maximum(0.0, center_x - size / 2))
  y1 = jnp.floor(jnp.minimum(float(h), y0 + size))
  x1 = jnp.floor(jnp.minimum(float(w), x0 + size))
  ys = jnp.arange(h, dtype=jnp.float32)[:, None]
  xs = jnp.arange(w, dtype=jnp.float32)[None, :]
  inside = (ys >= y0) & (ys <= y1) & (xs >= x0) & (xs <= x1) & (size > 0)
  return jnp.where(inside[..., None], jnp.asarray(fill, jnp.float32), image)


# ----------------------------------------------------------------------------------
# RandAugment's operation list.

# TorchSSL / USB ``augment_list``, in its order, with each operation's magnitude range (None:
# the operation takes no magnitude).
RANDAUGMENT_OPS = ("autocontrast", "brightness", "color", "contrast", "equalize", "identity",
                   "posterize", "rotate", "sharpness", "shear_x", "shear_y", "solarize",
                   "translate_x", "translate_y")
RANDAUGMENT_RANGES = {
  "autocontrast": None,
  "brightness": (0.05, 0.95),
  "color": (0.05, 0.95),
  "contrast": (0.05, 0.95),
  "equalize": None,
  "identity": None,
  "posterize": (4.0, 8.0),  # bits: int(uniform), so 4..7
  "rotate": (-30.0, 30.0),  # degrees
  "sharpness": (0.05, 0.95),
  "shear_x": (-0.3, 0.3),
  "shear_y": (-0.3, 0.3),
  "solarize": (0.0, 256.0),  # threshold in levels
  "translate_x": (-0.3, 0.3),  # fraction of the width
  "translate_y": (-0.3, 0.3),  # fraction of the height
}
_POSTERIZE = RANDAUGMENT_OPS.index("posterize")

# The operations as (image, magnitude) -> image; the geometric ones as (shape, magnitude) ->
# affine matrix, so that `_apply_ops` samples the image once for all of them.
_APPLY = {
  "autocontrast": lambda x, m: autocontrast(x),
  "brightness": brightness,
  "color": color,
  "contrast": contrast,
  "equalize": lambda x, m: equalize(x),
  "identity": lambda x, m: x,
  # USB: max(1, int(v)); v >= 4 in its range, the clip only matters for replayed params.
  "posterize": lambda x, m: posterize(x, jnp.maximum(m, 1.0)),
  "sharpness": sharpness,
  "solarize": solarize,
}
_MATRICES = {
  "rotate": _rotate_matrix,
  "shear_x": _shear_x_matrix,
  "shear_y": _shear_y_matrix,
  "translate_x": _translate_x_matrix,
  "translate_y": _translate_y_matrix,
}


def _apply_ops(image, op, magnitude, names=RANDAUGMENT_OPS):
  """``image`` after the operations ``op`` [N] (indices into `RANDAUGMENT_OPS`, each one of
  ``names``) with ``magnitude`` [N], in order.

  One ``lax.switch`` over the operations in ``names`` inside a scan, so the branches are traced
  and compiled once whatever N is; under vmap the switch becomes a select over every branch
  (each operation runs on every image), cheap on small images. The geometric operations share
  one branch, which samples the image through the chosen operation's affine matrix: one
  gather instead of five, and a quicker compile.
  """
  colour = [name for name in names if name in _APPLY]
  geometric = [name for name in names if name in _MATRICES]
  branches = [lambda x, m, matrix, fn=_APPLY[name]: fn(x, m) for name in colour]
  if geometric:
    branches.append(lambda x, m, matrix: _affine(x, matrix))
  # Index into RANDAUGMENT_OPS -> branch, and -> row of the geometric matrices.
  branch = np.zeros(len(RANDAUGMENT_OPS), np.int32)
  row = np.zeros(len(RANDAUGMENT_OPS), np.int32)
  for name in names:
    i = RANDAUGMENT_OPS.index(name)
    branch[i] = colour.index(name) if name in _APPLY else len(colour)
    row[i] = geometric.index(name) if name in _MATRICES else 0
  branch, row = jnp.asarray(branch), jnp.asarray(row)

  def step(x, op_and_magnitude):
    o, m = op_and_magnitude
    matrix = None
    if geometric:
      matrix = jnp.stack([_MATRICES[name](x.shape, m) for name in geometric])[row[o]]
    return jax.lax.switch(branch[o], branches, x, m, matrix), None

  return jax.lax.scan(step, image, (op, magnitude))[0]


# ----------------------------------------------------------------------------------
# Registered ops.


def _check_fraction(name, value):
  return augment.check_nonneg(name, value, upper=1.0)


def _reflect_index(i, n: int):
  """numpy's "reflect" padding (the edge is not repeated) for any integer offset."""
  if n == 1:
    return jnp.zeros_like(i)
  period = 2 * (n - 1)
  i = jnp.mod(i, period)
  return jnp.where(i < n, i, period - i)


@augment.register_augmentation("translate")
class Translate(augment.AugmentOp):
  """FixMatch's weak translation (Sohn et al. 2020): torchvision's ``RandomCrop(H, padding=pad,
  padding_mode="reflect")`` as in TorchSSL / USB, with ``pad = round(fraction * H)`` (4 on
  32x32 for the default 0.125) and ``round(fraction * W)`` across, rounded half up. (USB pads
  by ``int(size * (1 - crop_ratio))``: the same on 32x32 and 96x96, 3 instead of 4 on 28x28.)

  The image is padded by reflection and cropped back to its size at a uniform position, i.e.
  shifted by an integer uniform in [-pad, pad] in each axis; applied with probability ``p``.
  Params: ``{"shift": int32[2]}`` (dy, dx): the output's pixel (y, x) is the input's
  (y + dy, x + dx), reflected at the borders; (0, 0) when not applied.
  """

  n_uniforms = 3  # apply, dy, dx

  def __init__(self, fraction=0.125, p=1.0):
    self.fraction = _check_fraction("fraction", fraction)
    self.p = augment.check_prob("p", p)
    super().__init__(fraction=self.fraction, p=self.p)

  def pads(self, shape):
    """(pad_y, pad_x): the largest shift in each axis, for an image of ``shape``."""
    # Half up (not Python's round-half-even): 28 * 0.125 = 3.5 pads by 4.
    return tuple(int(math.floor(self.fraction * n + 0.5)) for n in shape[:2])

  def sample(self, u, shape):
    shift = []
    for pad, v in zip(self.pads(shape), (u[1], u[2])):
      shift.append(jnp.clip(jnp.floor(v * (2 * pad + 1)), 0, 2 * pad).astype(jnp.int32) - pad)
    applied = u[0] < self.p
    return {"shift": jnp.where(applied, jnp.stack(shift), 0).astype(jnp.int32)}

  def apply(self, image, params):
    h, w = image.shape[0], image.shape[1]
    dy, dx = params["shift"][0], params["shift"][1]
    rows = _reflect_index(jnp.arange(h, dtype=jnp.int32) + dy, h)
    cols = _reflect_index(jnp.arange(w, dtype=jnp.int32) + dx, w)
    return jnp.take(jnp.take(image, rows, axis=0, mode="clip"), cols, axis=1, mode="clip")


@augment.register_augmentation("randaugment")
class RandAugment(augment.AugmentOp):
  """RandAugment (Cubuk et al. 2020) with random magnitudes, as FixMatch (Sohn et al. 2020)
  and TorchSSL / USB's ``RandAugment``: ``num_ops`` operations drawn uniformly with replacement
  from ``ops`` (by default all 14 of `RANDAUGMENT_OPS`), each with a magnitude uniform in its
  range (`RANDAUGMENT_RANGES`; posterize's bits are ``int`` of a uniform in [4, 8]), applied
  in order.

  The FixMatch paper applies 2 operations; TorchSSL and USB's strong augmentation is
  ``RandAugment(3, 5)``: 3 operations (their 5, a fixed magnitude, is unused because every
  magnitude is drawn). Both follow it with Cutout: the ``cutout`` op. PIL's operations are
  reproduced as described in this module's docstring.

  Params: ``{"op": int32[num_ops], "magnitude": float32[num_ops]}``: ``op`` indexes
  `RANDAUGMENT_OPS` (whatever ``ops`` is; ``apply`` replays only operations among ``ops``),
  ``magnitude`` is in the operation's own units (factor, bits, degrees, shear, threshold
  level, fraction of the side; 0 for the operations without one).
  """

  def __init__(self, num_ops=2, ops=RANDAUGMENT_OPS):
    if not (isinstance(num_ops, (int, np.integer)) and not isinstance(num_ops, bool)
            and num_ops >= 1):
      raise ValueError(f"num_ops: expected an int >= 1, got {num_ops!r}")
    self.num_ops = int(num_ops)
    known = ", ".join(RANDAUGMENT_OPS)
    if isinstance(ops, str) or not isinstance(ops, (tuple, list)) or not ops:
      raise ValueError(f"ops: expected a non-empty tuple of operation names (from {known}), "
                       f"got {ops!r}")
    for name in ops:
      if name not in RANDAUGMENT_OPS:
        raise ValueError(f"ops: unknown operation {name!r}; known operations: {known}")
    if len(set(ops)) != len(ops):
      raise ValueError(f"ops: expected each operation once, got {ops!r}")
    self.ops = tuple(ops)
    self.n_uniforms = 2 * self.num_ops  # per operation: which one, its magnitude
    super().__init__(num_ops=self.num_ops, ops=self.ops)

  def sample(self, u, shape):
    n, k = self.num_ops, len(self.ops)
    pick = jnp.clip(jnp.floor(u[:n] * k), 0, k - 1).astype(jnp.int32)
    ranges = [RANDAUGMENT_RANGES[name] or (0.0, 0.0) for name in self.ops]
    lo = jnp.asarray([r[0] for r in ranges], jnp.float32)[pick]
    hi = jnp.asarray([r[1] for r in ranges], jnp.float32)[pick]
    op = jnp.asarray([RANDAUGMENT_OPS.index(name) for name in self.ops], jnp.int32)[pick]
    magnitude = lo + (hi - lo) * u[n:]
    magnitude = jnp.where(op == _POSTERIZE, jnp.floor(magnitude), magnitude)
    return {"op": op, "magnitude": magnitude}

  def apply(self, image, params):
    return _apply_ops(image, params["op"], params["magnitude"], self.ops)


@augment.register_augmentation("cutout")
class Cutout(augment.AugmentOp):
  """Cutout (DeVries & Taylor 2017) as TorchSSL / USB apply it after RandAugment (FixMatch,
  Sohn et al. 2020): a square of side ``uniform(0, max_fraction) * W`` pixels centred at a
  uniform point of the image, filled with ``fill`` (see `cutout`).

  Params: ``{"center": float32[2] (y, x) in pixels, "size": float32}`` (pixels).
  """

  n_uniforms = 3  # size, centre y, centre x

  def __init__(self, max_fraction=0.5, fill=0.5):
    self.max_fraction = _check_fraction("max_fraction", max_fraction)
    self.fill = _check_fraction("fill", fill)
    super().__init__(max_fraction=self.max_fraction, fill=self.fill)

  def sample(self, u, shape):
    h, w = shape[0], shape[1]
    return {"center": jnp.stack([u[1] * h, u[2] * w]).astype(jnp.float32),
            "size": (u[0] * (self.max_fraction * w)).astype(jnp.float32)}

  def apply(self, image, params):
    center = params["center"]
    return cutout(image, center[0], center[1], params["size"], self.fill)
