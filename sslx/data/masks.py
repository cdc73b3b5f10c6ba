"""Patch mask generators for masked and predictive SSL: MAE random masking, BEiT / iBOT block
masks and I-JEPA multi-block masks, jittable with static shapes and per-example keys.

Patches are numbered in row-major order over the ``[h, w]`` patch grid, as ``sslx.losses.patchify``
lays them out: patch ``n`` sits at row ``n // w``, column ``n % w``. Every ``*_batch`` function
vmaps its single-example version over ``jax.random.split(key, batch_size)``.
"""

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "RandomMask",
  "random_masking",
  "random_masking_batch",
  "block_mask",
  "block_mask_batch",
  "ibot_pred_ratios",
  "ibot_block_masks",
  "MultiBlockMasks",
  "multiblock_block_sizes",
  "multiblock_num_patches",
  "multiblock_masks",
  "multiblock_masks_batch",
  "indices_to_mask",
  "mask_to_indices",
  "gather_patches",
  "scatter_patches",
]

# MAE: 75% of the patches are removed, Sec. 4 / Fig. 5 of He et al. 2022 (facebookresearch/mae
# main_pretrain.py, --mask_ratio 0.75).
MAE_MASK_RATIO = 0.75

# BEiT: blocks of at least 16 patches with aspect ratio in (0.3, 1/0.3), 75 of the 196 patches
# of a 224/16 image masked, up to 10 attempts per block: Algorithm 1 of Bao et al. 2022 and
# microsoft/unilm beit/masking_generator.py with run_beit_pretraining.py's defaults.
BEIT_MIN_NUM_PATCHES = 16
BEIT_MIN_ASPECT = 0.3
BEIT_NUM_MASKING_PATCHES = 75
BEIT_MAX_ATTEMPTS = 10

# iBOT "random MIM": per image the prediction ratio is 0 or uniform in (0.1, 0.5), each with
# probability 1/2: the pretraining commands of bytedance/ibot's README (--pred_ratio 0 0.3
# --pred_ratio_var 0 0.2; Zhou et al. 2022).
IBOT_PRED_RATIO = (0.0, 0.3)
IBOT_PRED_RATIO_VAR = (0.0, 0.2)

# I-JEPA: 4 target blocks of scale (0.15, 0.2) and aspect ratio (0.75, 1.5), one context block
# of scale (0.85, 1.0) and aspect ratio 1, targets removed from the context: Sec. 3 of Assran et
# al. 2023 and facebookresearch/ijepa configs/in1k_vith14_ep300.yaml (mask: ...).
IJEPA_NUM_TARGETS = 4
IJEPA_TARGET_SCALE = (0.15, 0.2)
IJEPA_TARGET_ASPECT = (0.75, 1.5)
IJEPA_CONTEXT_SCALE = (0.85, 1.0)
IJEPA_CONTEXT_ASPECT = (1.0, 1.0)
# The reference's MaskCollator tries 20 times (its `og_timeout`) before relaxing a constraint.
IJEPA_MAX_TRIES = 20


# ------------------------------------------------------------------------------------------
# Argument checks (static values only: traced arrays pass, their value is unknown at trace time).


def _is_number(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_int(name: str, value, minimum: int) -> int:
  if not _is_int(value) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, but got {value!r}.")
  return int(value)


def _check_grid(grid_size, minimum: int = 1) -> tuple[int, int]:
  """``grid_size`` is ``g`` or ``(h, w)``: the patch grid, e.g. 14 for 224-pixel images and
  16-pixel patches."""
  pair = (grid_size, grid_size) if _is_int(grid_size) else grid_size
  try:
    ok = len(pair) == 2 and all(_is_int(v) and v >= minimum for v in pair)
  except TypeError:
    ok = False
  if not ok:
    raise ValueError(
        f"grid_size must be an integer or a pair (height, width) of integers >= {minimum} "
        f"(patches per side), but got {grid_size!r}.")
  return int(pair[0]), int(pair[1])


def _check_pair(name: str, value, lower: float, upper: float | None, lower_open: bool = True):
  """A range ``(lo, hi)`` with ``lower < lo <= hi <= upper`` (``lower <= lo`` if not open)."""
  try:
    lo, hi = value
    ok = _is_number(lo) and _is_number(hi) and lo <= hi and (
        lo > lower if lower_open else lo >= lower) and (upper is None or hi <= upper)
  except (TypeError, ValueError):
    ok = False
  if not ok:
    low = f"{lower} <" if lower_open else f"{lower} <="
    up = "" if upper is None else f" <= {upper}"
    raise ValueError(
        f"{name} must be a pair (lo, hi) with {low} lo <= hi{up}, but got {value!r}.")
  return float(lo), float(hi)


def _check_batch_size(batch_size) -> int:
  return _check_int("batch_size", batch_size, 1)


# ------------------------------------------------------------------------------------------
# MAE random masking.


class RandomMask(NamedTuple):
  """One example's MAE mask over ``N`` patches, ``K`` of them kept (leading ``[B]`` if batched).

  Attributes:
    keep_indices: ``[K]`` int32, the visible patches in ascending order (the encoder's input,
      the ViT's ``patch_indices``).
    masked_indices: ``[N - K]`` int32, the removed patches in ascending order.
    restore: ``[N]`` int32, the inverse of ``concat([keep_indices, masked_indices])``:
      ``concat([visible_tokens, mask_tokens])[restore]`` puts every token back at its patch (MAE's
      ``ids_restore``).
    mask: ``[N]`` bool, True where the patch is removed (MAE's mask, 1 = masked, which
      ``sslx.losses.mae`` takes as is).
  """
  keep_indices: jax.Array
  masked_indices: jax.Array
  restore: jax.Array
  mask: jax.Array


def _num_keep(num_patches, mask_ratio) -> tuple[int, int]:
  num_patches = _check_int("num_patches", num_patches, 1)
  if not _is_number(mask_ratio) or not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be a number in [0, 1), but got {mask_ratio!r}.")
  # MAE's len_keep = int(L * (1 - mask_ratio)), so 196 patches at 0.75 keep 49.
  num_keep = int(num_patches * (1 - mask_ratio))
  if num_keep < 1:
    raise ValueError(
        f"mask_ratio={mask_ratio!r} keeps int({num_patches} * (1 - {mask_ratio})) = 0 of "
        f"num_patches={num_patches} patches; the encoder needs at least one.")
  return num_patches, num_keep


def random_masking(key: jax.Array, num_patches: int,
                   mask_ratio: float = MAE_MASK_RATIO) -> RandomMask:
  """MAE's per-example random masking: a uniformly random subset of patches is removed.

  He, Chen, Xie, Li, Dollar and Girshick, "Masked Autoencoders Are Scalable Vision Learners",
  CVPR 2022, Sec. 3; facebookresearch/mae models_mae.py ``random_masking``, which argsorts
  uniform noise. ``jax.random.permutation`` draws the same uniform random order exactly (no
  float ties). ``K = int(N * (1 - mask_ratio))`` patches are kept, as MAE computes it.

  Args:
    key: a PRNG key.
    num_patches: ``N``, the number of patches (196 for 224-pixel images, 16-pixel patches).
    mask_ratio: the fraction removed, in [0, 1) (0.75, He et al. 2022, Fig. 5).

  Returns:
    A ``RandomMask`` with static shapes ``[K]``, ``[N - K]``, ``[N]``, ``[N]``.

  Raises:
    ValueError: if ``num_patches`` < 1, ``mask_ratio`` is outside [0, 1) or keeps no patch.

  Example:
    >>> import jax
    >>> m = random_masking(jax.random.key(0), 196)
    >>> m.keep_indices.shape, m.masked_indices.shape, int(m.mask.sum())
    ((49,), (147,), 147)
  """
  num_patches, num_keep = _num_keep(num_patches, mask_ratio)
  order = jax.random.permutation(key, num_patches).astype(jnp.int32)
  # Sorted indices gather contiguous memory and make the layout independent of the key's order.
  keep = jnp.sort(order[:num_keep])
  masked = jnp.sort(order[num_keep:])
  shuffle = jnp.concatenate([keep, masked])
  restore = jnp.zeros(num_patches, jnp.int32).at[shuffle].set(
      jnp.arange(num_patches, dtype=jnp.int32))
  mask = jnp.zeros(num_patches, bool).at[masked].set(True)
  return RandomMask(keep, masked, restore, mask)


def random_masking_batch(key: jax.Array, batch_size: int, num_patches: int,
                         mask_ratio: float = MAE_MASK_RATIO) -> RandomMask:
  """``random_masking`` for ``batch_size`` examples, one key each: every field gets a leading
  ``[B]`` (``keep_indices`` ``[B, K]`` is the ViT's ``patch_indices``)."""
  batch_size = _check_batch_size(batch_size)
  _num_keep(num_patches, mask_ratio)  # raise here, not inside vmap's trace
  keys = jax.random.split(key, batch_size)
  return jax.vmap(lambda k: random_masking(k, num_patches, mask_ratio))(keys)


# ------------------------------------------------------------------------------------------
# BEiT / iBOT block-wise masking.


def _check_block_args(grid_size, min_num_patches, max_num_patches, min_aspect, max_aspect,
                      max_attempts):
  height, width = _check_grid(grid_size, minimum=2)
  if not _is_number(min_num_patches) or not min_num_patches > 0:
    raise ValueError(f"min_num_patches must be a number > 0, but got {min_num_patches!r}.")
  # BEiT only accepts blocks with h < grid height and w < grid width.
  largest = (height - 1) * (width - 1)
  if min_num_patches > largest:
    raise ValueError(
        f"min_num_patches={min_num_patches!r} is impossible on a {height} x {width} grid: blocks "
        f"are at most ({height} - 1) x ({width} - 1) = {largest} patches (BEiT requires h < "
        f"{height} and w < {width}).")
  if max_num_patches is not None and (not _is_number(max_num_patches) or max_num_patches < 1):
    raise ValueError(f"max_num_patches must be None or a number >= 1, but got "
                     f"{max_num_patches!r}.")
  if not _is_number(min_aspect) or not min_aspect > 0:
    raise ValueError(f"min_aspect must be a number > 0, but got {min_aspect!r}.")
  max_aspect = 1.0 / min_aspect if max_aspect is None else max_aspect
  if not _is_number(max_aspect) or not max_aspect >= min_aspect:
    raise ValueError(
        f"max_aspect must be None or a number >= min_aspect={min_aspect!r}, but got "
        f"{max_aspect!r}.")
  max_attempts = _check_int("max_attempts", max_attempts, 1)
  return height, width, float(max_aspect), max_attempts


def _check_num_masking(num_masking_patches, num_patches: int, batch_size: int | None = None):
  if _is_number(num_masking_patches):
    if not 0 <= num_masking_patches <= num_patches:
      raise ValueError(
          f"num_masking_patches must be in [0, {num_patches}] (the grid's patch count), but got "
          f"{num_masking_patches!r}.")
    return
  shape = tuple(np.shape(num_masking_patches))
  allowed = [()] if batch_size is None else [(), (batch_size,)]
  if shape not in allowed:
    expected = "a scalar" if batch_size is None else f"a scalar or shape ({batch_size},)"
    raise ValueError(
        f"num_masking_patches must be {expected}, but got shape {shape}.")


def _uniform_int(u, n):
  """``floor(u n)``: uniform on {0, ..., n - 1} for ``u ~ U[0, 1)`` (up to float32 resolution,
  a bias below n / 2^23); clipped so that rounding never reaches ``n``. 0 where ``n <= 0``."""
  return jnp.clip(jnp.floor(u * n).astype(jnp.int32), 0, jnp.maximum(n - 1, 0))


def _block_mask_and_boxes(key, height, width, num_masking_patches, min_num_patches,
                          max_num_patches, min_aspect, max_aspect, max_attempts,
                          record_boxes=False):
  """BEiT's generator. With ``record_boxes`` it also returns the accepted blocks ``[N, 4]``
  (top, left, h, w; the first ``num_boxes`` rows are used), which the tests check the mask
  against; otherwise ``[0, 4]`` (kept out of the loop, which XLA would not prune)."""
  num_patches = height * width
  target = jnp.asarray(num_masking_patches, jnp.float32)
  cap = target if max_num_patches is None else jnp.minimum(target, max_num_patches)
  log_lo, log_hi = math.log(min_aspect), math.log(max_aspect)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]

  def body(state):
    key, mask, count, _, boxes, num_boxes = state
    key, sub = jax.random.split(key)
    # One draw of uniforms per step: each random op inlines a hash that XLA compiles slowly.
    u_area, u_aspect, u_top, u_left = jax.random.uniform(sub, (4, max_attempts))
    budget = jnp.minimum(target - count, cap)  # BEiT's max_mask_patches
    # BEiT's attempts run one after another until one adds a patch, but a failed attempt leaves
    # the mask unchanged, so drawing all of them at once and taking the first success is the
    # same distribution. random.uniform(a, b) = a + (b - a) u also when b < a.
    area = min_num_patches + (budget - min_num_patches) * u_area
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u_aspect)
    # round() halves to even in both Python and jnp.
    h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (h < height) & (w < width)
    # random.randint(0, height - h) includes height - h.
    top = _uniform_int(u_top, height - h + 1)
    left = _uniform_int(u_left, width - w + 1)
    rect = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
            & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None]))
    new = jnp.sum(rect & ~mask, axis=(1, 2))
    ok = fits & (new > 0) & (new <= budget)
    first = jnp.argmax(ok)
    found = ok[first]
    mask = jnp.where(found, mask | rect[first], mask)
    count = count + jnp.where(found, new[first], 0)
    if record_boxes:
      box = jnp.stack([top[first], left[first], h[first], w[first]]).astype(jnp.int32)
      boxes = jnp.where(found, boxes.at[num_boxes].set(box), boxes)
    return key, mask, count, ~found, boxes, num_boxes + found.astype(jnp.int32)

  def cond(state):
    _, _, count, stopped, _, _ = state
    return (count < target) & ~stopped

  # Every accepted block adds at least one patch, so there are at most N of them.
  num_rows = num_patches if record_boxes else 0
  state = (key, jnp.zeros((height, width), bool), jnp.zeros((), jnp.int32),
           jnp.zeros((), bool), jnp.zeros((num_rows, 4), jnp.int32), jnp.zeros((), jnp.int32))
  _, mask, _, _, boxes, num_boxes = jax.lax.while_loop(cond, body, state)
  return mask, boxes, num_boxes


def block_mask(
    key: jax.Array,
    grid_size: int | tuple[int, int],
    num_masking_patches: float | jax.Array = BEIT_NUM_MASKING_PATCHES,
    *,
    min_num_patches: float = BEIT_MIN_NUM_PATCHES,
    max_num_patches: float | None = None,
    min_aspect: float = BEIT_MIN_ASPECT,
    max_aspect: float | None = None,
    max_attempts: int = BEIT_MAX_ATTEMPTS,
) -> jax.Array:
  """BEiT's block-wise mask: random rectangles are added until about ``num_masking_patches``
  patches are masked.

  Bao, Dong, Piao and Wei, "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022,
  Algorithm 1; microsoft/unilm beit/masking_generator.py ``MaskingGenerator``, followed step by
  step: while fewer than ``T = num_masking_patches`` patches are masked, with budget ``r = min(T
  - count, max_num_patches)``, up to ``max_attempts`` times draw an area ``s ~ U(min_num_patches,
  r)`` and an aspect ratio ``a`` log-uniform in ``(min_aspect, max_aspect)``, take ``h =
  round(sqrt(s a))``, ``w = round(sqrt(s / a))`` and, if ``h < H`` and ``w < W``, a uniformly
  placed ``h x w`` block; it is accepted if it adds between 1 and ``r`` new patches. Generation
  stops when ``T`` is reached or no attempt succeeds.

  So the masked count never exceeds ``T`` (a block adds at most the remaining budget) and
  falls short only when ``max_attempts`` blocks in a row fail; on a 14 x 14 grid with ``T = 75``
  the count is 75 in most draws (see the tests for the measured distribution).

  Args:
    key: a PRNG key.
    grid_size: ``g`` or ``(H, W)`` patches per side, each >= 2 (14 for 224 / 16).
    num_masking_patches: ``T``, a number in [0, H W] or a traced scalar (iBOT draws one per
      image, ``ratio * H * W``, and passes it as a float). 75 of 196 in BEiT.
    min_num_patches: smallest block area drawn (16 in BEiT; iBOT uses ``(min(H, W) // 3) ** 2``,
      also 16 on 14 x 14).
    max_num_patches: largest block area, None for ``T`` (BEiT's default).
    min_aspect, max_aspect: aspect-ratio (h / w) range; ``max_aspect`` None means
      ``1 / min_aspect`` (0.3 to 3.33 in BEiT and iBOT).
    max_attempts: blocks tried before giving up (10 in BEiT).

  Returns:
    ``[H, W]`` bool, True where masked; ``.reshape(-1)`` gives the ``[N]`` mask in patch order.

  Raises:
    ValueError: for a grid side < 2, ``num_masking_patches`` outside [0, H W], a non-positive
      ``min_num_patches`` or one larger than any block BEiT allows (``(H - 1)(W - 1)``),
      ``max_num_patches`` < 1, an aspect range not within (0, inf) or reversed, or
      ``max_attempts`` < 1.

  Example:
    >>> import jax
    >>> m = block_mask(jax.random.key(0), 14, 75)
    >>> m.shape, int(m.sum()) <= 75
    ((14, 14), True)
  """
  height, width, max_aspect, max_attempts = _check_block_args(
      grid_size, min_num_patches, max_num_patches, min_aspect, max_aspect, max_attempts)
  _check_num_masking(num_masking_patches, height * width)
  mask, _, _ = _block_mask_and_boxes(
      key, height, width, num_masking_patches, min_num_patches, max_num_patches, min_aspect,
      max_aspect, max_attempts)
  return mask


def block_mask_batch(
    key: jax.Array,
    batch_size: int,
    grid_size: int | tuple[int, int],
    num_masking_patches: float | jax.Array = BEIT_NUM_MASKING_PATCHES,
    **kwargs,
) -> jax.Array:
  """``block_mask`` for ``batch_size`` examples, one key each. ``num_masking_patches`` is a
  scalar or one value per example ``[B]``; ``kwargs`` go to ``block_mask``. Returns
  ``[B, H, W]`` bool."""
  known = {"min_num_patches", "max_num_patches", "min_aspect", "max_aspect", "max_attempts"}
  if set(kwargs) - known:
    raise ValueError(f"block_mask_batch: unknown keyword arguments {sorted(set(kwargs) - known)};"
                     f" expected some of {sorted(known)}")
  batch_size = _check_batch_size(batch_size)
  height, width, max_aspect, max_attempts = _check_block_args(
      grid_size, kwargs.get("min_num_patches", BEIT_MIN_NUM_PATCHES),
      kwargs.get("max_num_patches"), kwargs.get("min_aspect", BEIT_MIN_ASPECT),
      kwargs.get("max_aspect"), kwargs.get("max_attempts", BEIT_MAX_ATTEMPTS))
  _check_num_masking(num_masking_patches, height * width, batch_size)
  kwargs = dict(kwargs, max_aspect=max_aspect)
  targets = jnp.broadcast_to(jnp.asarray(num_masking_patches, jnp.float32), (batch_size,))
  keys = jax.random.split(key, batch_size)
  return jax.vmap(lambda k, t: block_mask(k, (height, width), t, **kwargs))(keys, targets)


def ibot_pred_ratios(
    key: jax.Array,
    batch_size: int,
    pred_ratio: tuple[float, ...] = IBOT_PRED_RATIO,
    pred_ratio_var: tuple[float, ...] = IBOT_PRED_RATIO_VAR,
) -> jax.Array:
  """iBOT's per-image prediction ratio: pick ``i`` uniformly, then ``U(pred_ratio[i] -
  pred_ratio_var[i], pred_ratio[i] + pred_ratio_var[i])`` (``pred_ratio[i]`` if the variation
  is 0), as bytedance/ibot loader.py ``get_pred_ratio`` does. The defaults give 0 (no masking)
  or ``U(0.1, 0.5)``, each with probability 1/2.

  Returns:
    ``[B]`` float32 ratios in [0, 1].

  Raises:
    ValueError: if the two tuples differ in length, are empty, or some entry has ``var < 0``,
      ``ratio < var`` or ``ratio + var > 1``.
  """
  batch_size = _check_batch_size(batch_size)
  pred_ratio = tuple(np.atleast_1d(pred_ratio).tolist())
  pred_ratio_var = tuple(np.atleast_1d(pred_ratio_var).tolist())
  if not pred_ratio or len(pred_ratio) != len(pred_ratio_var):
    raise ValueError(
        f"pred_ratio and pred_ratio_var must be non-empty and of equal length, but got "
        f"{pred_ratio!r} and {pred_ratio_var!r}.")
  for mean, var in zip(pred_ratio, pred_ratio_var):
    if not (0 <= var <= mean and mean + var <= 1):
      raise ValueError(
          f"each (pred_ratio, pred_ratio_var) pair needs 0 <= var <= ratio and ratio + var <= 1 "
          f"(iBOT asserts ratio >= var), but got ({mean!r}, {var!r}).")
  k_choice, k_ratio = jax.random.split(key)
  choice = jax.random.randint(k_choice, (batch_size,), 0, len(pred_ratio))
  mean = jnp.asarray(pred_ratio, jnp.float32)[choice]
  var = jnp.asarray(pred_ratio_var, jnp.float32)[choice]
  u = jax.random.uniform(k_ratio, (batch_size,), minval=-1.0, maxval=1.0)
  return mean + var * u


def ibot_block_masks(
    key: jax.Array,
    batch_size: int,
    grid_size: int | tuple[int, int],
    *,
    pred_ratio: tuple[float, ...] = IBOT_PRED_RATIO,
    pred_ratio_var: tuple[float, ...] = IBOT_PRED_RATIO_VAR,
    min_num_patches: float | None = None,
    min_aspect: float = BEIT_MIN_ASPECT,
    max_aspect: float | None = None,
) -> jax.Array:
  """iBOT's masks for one global crop per example: a ratio from ``ibot_pred_ratios``, then
  BEiT's block mask with ``T = ratio * H * W`` (bytedance/ibot loader.py ``ImageFolderMask``,
  ``pred_shape='block'``).

  Zhou, Wei, Wang, Shen, Xie, Yuille and Kong, "iBOT: Image BERT Pre-Training with Online
  Tokenizer", ICLR 2022. ``min_num_patches`` None is iBOT's ``(min(H, W) // 3) ** 2`` (16 on
  14 x 14), at least 1. Returns ``[B, H, W]`` bool; images drawn with ratio 0 get an empty mask
  (they train only the [CLS] loss).
  """
  height, width = _check_grid(grid_size, minimum=2)
  if min_num_patches is None:
    min_num_patches = max(1, (min(height, width) // 3) ** 2)
  k_ratio, k_mask = jax.random.split(key)
  ratios = ibot_pred_ratios(k_ratio, batch_size, pred_ratio, pred_ratio_var)
  return block_mask_batch(
      k_mask, batch_size, (height, width), ratios * (height * width),
      min_num_patches=min_num_patches, min_aspect=min_aspect, max_aspect=max_aspect)


# ------------------------------------------------------------------------------------------
# I-JEPA multi-block masking.


class MultiBlockMasks(NamedTuple):
  """One example's I-JEPA masks over ``N`` patches (leading ``[B]`` if batched).

  Attributes:
    context_indices: ``[K_ctx]`` int32, the context encoder's patches (ascending; the first
      ``K_ctx`` of ``context_mask`` in patch order, the reference's truncation).
    target_indices: ``[M, K_tgt]`` int32, each target block's first ``K_tgt`` patches in patch
      order (ascending).
    context_mask: ``[N]`` bool, the whole context: the context block minus every target block.
    target_masks: ``[M, N]`` bool, the whole target blocks (rectangles).
  """
  context_indices: jax.Array
  target_indices: jax.Array
  context_mask: jax.Array
  target_masks: jax.Array


def _block_size(height, width, u, scale, aspect) -> tuple[int, int]:
  """The reference's ``_sample_block_size`` for the uniform draw ``u``: ONE draw sets both the
  scale and the aspect ratio, sizes are rounded, then clipped below the grid size."""
  num = int(height * width * (scale[0] + u * (scale[1] - scale[0])))
  ratio = aspect[0] + u * (aspect[1] - aspect[0])
  h = int(round(math.sqrt(num * ratio)))
  w = int(round(math.sqrt(num / ratio)))
  return min(h, height - 1), min(w, width - 1)


def _block_size_table(height, width, scale, aspect):
  """Exact map ``u -> (h, w)`` of ``_block_size`` on [0, 1) as a step function.

  Returns ``(starts, sizes)``: ``sizes[i]`` is the size for ``u`` in ``[starts[i],
  starts[i + 1])``. The steps are where ``int(N s(u))`` changes or ``sqrt(num a(u))`` or
  ``sqrt(num / a(u))`` crosses a half-integer, all computed in float64 once at trace time, so
  the device samples the reference's sizes with their exact probabilities.
  """
  n = height * width
  cuts = {0.0, 1.0}
  lo_num, hi_num = int(n * scale[0]), int(n * scale[1])
  if scale[1] > scale[0]:
    cuts.update((m / n - scale[0]) / (scale[1] - scale[0]) for m in range(lo_num, hi_num + 2))
  if aspect[1] > aspect[0]:
    for num in range(max(lo_num, 1), hi_num + 1):
      for k in range(max(height, width) + 1):
        for ratio in ((k + 0.5) ** 2 / num, num / (k + 0.5) ** 2):
          cuts.add((ratio - aspect[0]) / (aspect[1] - aspect[0]))
  cuts = sorted(c for c in cuts if 0.0 <= c <= 1.0)
  starts, sizes = [], []
  for a, b in zip(cuts[:-1], cuts[1:]):
    if b <= a:
      continue
    size = _block_size(height, width, (a + b) / 2, scale, aspect)
    if not sizes or sizes[-1] != size:
      starts.append(a)
      sizes.append(size)
  return np.asarray(starts, np.float64), np.asarray(sizes, np.int32)


def multiblock_block_sizes(grid_size, scale, aspect_ratio) -> dict[tuple[int, int], float]:
  """The block sizes ``(h, w)`` the I-JEPA reference can draw for ``scale`` and
  ``aspect_ratio`` on this grid, with their probabilities (e.g. 14 x 14 targets: 5x6, 6x5, 6x6,
  7x5 and 8x5; the context block is always 13 x 13)."""
  height, width = _check_grid(grid_size, minimum=2)
  scale = _check_pair("scale", scale, 0.0, 1.0)
  aspect_ratio = _check_pair("aspect_ratio", aspect_ratio, 0.0, None)
  starts, sizes = _block_size_table(height, width, scale, aspect_ratio)
  ends = list(starts[1:].tolist()) + [1.0]
  out: dict[tuple[int, int], float] = {}
  for a, b, (h, w) in zip(starts.tolist(), ends, sizes.tolist()):
    out[(h, w)] = out.get((h, w), 0.0) + (b - a)
  return out


def _multiblock_config(grid_size, num_targets, target_scale, target_aspect, context_scale,
                       context_aspect, num_context, max_tries):
  height, width = _check_grid(grid_size, minimum=2)
  num_targets = _check_int("num_targets", num_targets, 1)
  target_scale = _check_pair("target_scale", target_scale, 0.0, 1.0)
  target_aspect = _check_pair("target_aspect", target_aspect, 0.0, None)
  context_scale = _check_pair("context_scale", context_scale, 0.0, 1.0)
  context_aspect = _check_pair("context_aspect", context_aspect, 0.0, None)
  max_tries = _check_int("max_tries", max_tries, 1)
  target_table = _block_size_table(height, width, target_scale, target_aspect)
  context_table = _block_size_table(height, width, context_scale, context_aspect)
  num_target = int(np.min(np.prod(target_table[1], axis=1)))
  if num_target < 1:
    raise ValueError(
        f"target_scale={target_scale} and target_aspect={target_aspect} can give empty target "
        f"blocks on a {height} x {width} grid (sizes {target_table[1].tolist()}); use a larger "
        f"grid or scale.")
  context_area = int(np.min(np.prod(context_table[1], axis=1)))
  if num_context is None:
    num_context = (height * width) // 4
  if not _is_int(num_context) or not 1 <= num_context <= context_area:
    raise ValueError(
        f"num_context must be an integer in [1, {context_area}] (the smallest context block "
        f"context_scale={context_scale} gives on a {height} x {width} grid), but got "
        f"{num_context!r}.")
  return (height, width, num_targets, target_table, context_table, num_target,
          int(num_context), max_tries)


def multiblock_num_patches(
    grid_size,
    *,
    target_scale=IJEPA_TARGET_SCALE,
    target_aspect=IJEPA_TARGET_ASPECT,
    context_scale=IJEPA_CONTEXT_SCALE,
    context_aspect=IJEPA_CONTEXT_ASPECT,
    num_context: int | None = None,
) -> tuple[int, int]:
  """The static counts ``(K_ctx, K_tgt)`` that ``multiblock_masks`` returns for this config:
  ``(49, 30)`` for I-JEPA's defaults on 14 x 14, ``(64, 35)`` on 16 x 16."""
  config = _multiblock_config(grid_size, 1, target_scale, target_aspect, context_scale,
                              context_aspect, num_context, 1)
  return config[6], config[5]


def _sample_size(u, table):
  """The block size for the uniform draw ``u``, looked up in ``_block_size_table``."""
  starts, sizes = table
  index = jnp.searchsorted(jnp.asarray(starts, jnp.float32), u, side="right") - 1
  size = jnp.asarray(sizes)[jnp.clip(index, 0, len(starts) - 1)]
  return size[0], size[1]


def _random_block(u_top, u_left, height, width, h, w):
  """An ``h x w`` block at ``top ~ randint(0, H - h)``, ``left ~ randint(0, W - w)`` with the
  upper bound excluded, as torch.randint in the reference (so a block never touches the last row
  or column, and the 13 x 13 context block on a 14 x 14 grid always sits at the top left)."""
  top = _uniform_int(u_top, height - h)
  left = _uniform_int(u_left, width - w)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  block = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
  return block.reshape(-1)


def multiblock_masks(
    key: jax.Array,
    grid_size: int | tuple[int, int],
    *,
    num_targets: int = IJEPA_NUM_TARGETS,
    target_scale: tuple[float, float] = IJEPA_TARGET_SCALE,
    target_aspect: tuple[float, float] = IJEPA_TARGET_ASPECT,
    context_scale: tuple[float, float] = IJEPA_CONTEXT_SCALE,
    context_aspect: tuple[float, float] = IJEPA_CONTEXT_ASPECT,
    num_context: int | None = None,
    max_tries: int = IJEPA_MAX_TRIES,
) -> MultiBlockMasks:
  """I-JEPA's multi-block masks: ``M`` target blocks and one context block without them.

  Assran, Duval, Misra, Bojanowski, Vincent, Rabbat, LeCun and Ballas, "Self-Supervised Learning
  from Images with a Joint-Embedding Predictive Architecture", CVPR 2023, Sec. 3;
  facebookresearch/ijepa src/masks/multiblock.py ``MaskCollator``. As there: a block size comes
  from one uniform draw ``u`` that sets both the scale ``s`` and the aspect ratio ``a`` (linearly
  in their ranges), ``h = round(sqrt(int(N s) a))``, ``w = round(sqrt(int(N s) / a))``, clipped
  to ``H - 1`` and ``W - 1``; all ``M`` targets share one size, the context block another;
  blocks are placed with ``torch.randint``'s exclusive upper bound; the context is the context
  block minus every target block (``allow_overlap=False``); index lists keep the first patches
  in patch order.

  Static shapes, where the reference differs (it draws the two sizes once per batch and cuts
  every list to the shortest in the batch):

  - Sizes are drawn per example, so target blocks differ in area; ``K_tgt`` is the smallest
    area the config can draw (computed exactly from the config: 30 of the 5x6, 6x5, 6x6, 7x5,
    8x5 blocks on 14 x 14), and larger blocks are cut to their first ``K_tgt`` patches.
  - ``K_ctx = num_context``, by default ``N // 4`` (49 on 14 x 14, 64 on 16 x 16): about the
    shortest context in a reference batch of 128 images per GPU, whose mean we measured by
    simulating the collator at 51 (14 x 14) and 70 (16 x 16). Where the context has fewer
    patches (0.6% of draws on 14 x 14, 0.4% on 16 x 16), the target and context positions are
    drawn again (at most ``max_tries`` times, as the reference redraws a context with <=
    min_keep patches), which slightly favours overlapping targets in those draws; if all tries
    fail (not seen in 10^4 draws with the defaults) the indices repeat the first context
    patch.

  Args:
    key: a PRNG key.
    grid_size: ``g`` or ``(H, W)``, each >= 2 (14 for 224 / 16, 16 for 224 / 14).
    num_targets: ``M`` (4, the reference's npred).
    target_scale, target_aspect: range of a target block's area fraction (0.15, 0.2) and h / w
      (0.75, 1.5).
    context_scale, context_aspect: the same for the context block, (0.85, 1.0) and 1.
    num_context: ``K_ctx``, in [1, smallest context block area]; None for ``N // 4``.
    max_tries: redraws allowed for a short context (20, the reference's timeout).

  Returns:
    A ``MultiBlockMasks`` with static shapes ``[K_ctx]``, ``[M, K_tgt]``, ``[N]``, ``[M, N]``
    (``multiblock_num_patches`` gives ``(K_ctx, K_tgt)``).

  Raises:
    ValueError: for a grid side < 2, ``num_targets`` < 1, a scale range not within (0, 1], an
      aspect range not within (0, inf), reversed ranges, a config whose target blocks can be
      empty, or ``num_context`` outside [1, smallest context block area].

  Example:
    >>> import jax
    >>> m = multiblock_masks(jax.random.key(0), 14)
    >>> m.context_indices.shape, m.target_indices.shape
    ((49,), (4, 30))
  """
  (height, width, num_targets, target_table, context_table, num_target, num_context,
   max_tries) = _multiblock_config(grid_size, num_targets, target_scale, target_aspect,
                                   context_scale, context_aspect, num_context, max_tries)
  k_size, k_place = jax.random.split(key)
  u_target, u_context = jax.random.uniform(k_size, (2,))
  th, tw = _sample_size(u_target, target_table)
  ch, cw = _sample_size(u_context, context_table)

  def place(k):
    u = jax.random.uniform(k, (num_targets + 1, 2))  # (top, left) of every block
    targets = jax.vmap(lambda ut: _random_block(ut[0], ut[1], height, width, th, tw))(u[:-1])
    context = _random_block(u[-1, 0], u[-1, 1], height, width, ch, cw)
    return targets, context & ~jnp.any(targets, axis=0)

  def cond(state):
    _, tries, _, context = state
    return (jnp.sum(context) < num_context) & (tries < max_tries)

  def body(state):
    k, tries, _, _ = state
    k, sub = jax.random.split(k)
    return (k, tries + 1, *place(sub))

  k_first, k_rest = jax.random.split(k_place)
  state = (k_rest, jnp.ones((), jnp.int32), *place(k_first))
  _, _, targets, context = jax.lax.while_loop(cond, body, state)
  return MultiBlockMasks(
      context_indices=mask_to_indices(context, num_context),
      target_indices=mask_to_indices(targets, num_target),
      context_mask=context,
      target_masks=targets)


def multiblock_masks_batch(key: jax.Array, batch_size: int, grid_size, **kwargs
                           ) -> MultiBlockMasks:
  """``multiblock_masks`` for ``batch_size`` examples, one key each: context indices ``[B,
  K_ctx]`` (the context encoder's ``patch_indices``), target indices ``[B, M, K_tgt]``."""
  batch_size = _check_batch_size(batch_size)
  keys = jax.random.split(key, batch_size)
  return jax.vmap(lambda k: multiblock_masks(k, grid_size, **kwargs))(keys)


# ------------------------------------------------------------------------------------------
# Converting between index lists, boolean masks and token arrays.


def indices_to_mask(indices: jax.Array, num_patches: int) -> jax.Array:
  """``[..., K]`` patch indices -> ``[..., N]`` bool mask, True at the listed patches.

  Raises:
    ValueError: if ``indices`` has rank 0 or ``num_patches`` < 1.
  """
  num_patches = _check_int("num_patches", num_patches, 1)
  if np.ndim(indices) < 1:
    raise ValueError(f"indices must have shape [..., K], but got shape {np.shape(indices)}.")
  hits = jnp.asarray(indices)[..., :, None] == jnp.arange(num_patches)
  return jnp.any(hits, axis=-2)


def mask_to_indices(mask: jax.Array, size: int) -> jax.Array:
  """``[..., N]`` bool mask -> ``[..., size]`` int32, the first ``size`` True positions in
  ascending order (static shape for jit).

  A row with fewer than ``size`` True entries is padded by repeating its first one (0 if it
  has none), so every index stays a valid patch; pick a ``size`` every row reaches.

  Raises:
    ValueError: if ``mask`` has rank 0 or ``size`` is not in [1, N].
  """
  if np.ndim(mask) < 1:
    raise ValueError(f"mask must have shape [..., N], but got shape {np.shape(mask)}.")
  num_patches = np.shape(mask)[-1]
  if not _is_int(size) or not 1 <= size <= num_patches:
    raise ValueError(f"size must be an integer in [1, {num_patches}] (mask.shape[-1]), but got "
                     f"{size!r}.")
  mask = jnp.asarray(mask, bool)
  flat = mask.reshape(-1, num_patches)

  def one(row):
    (index,) = jnp.nonzero(row, size=size, fill_value=-1)
    return jnp.where(index < 0, jnp.maximum(index[0], 0), index).astype(jnp.int32)

  return jax.vmap(one)(flat).reshape(mask.shape[:-1] + (size,))


def gather_patches(tokens: jax.Array, indices: jax.Array) -> jax.Array:
  """Selects patch tokens per example: ``tokens[b, indices[b, ...]]``.

  Args:
    tokens: ``[B, N, D]`` (e.g. the target encoder's output for all patches).
    indices: ``[B, ...]`` int patch indices (``[B, K]`` or I-JEPA's ``[B, M, K_tgt]``).

  Returns:
    ``[B, ..., D]``, e.g. ``[B, M, K_tgt, D]`` as ``sslx.losses.ijepa`` takes its targets.

  Raises:
    ValueError: if ``tokens`` is not rank 3 or ``indices`` has another batch size.
  """
  if np.ndim(tokens) != 3:
    raise ValueError(
        f"tokens must have rank 3 with shape [batch, num_patches, dim], but got shape "
        f"{np.shape(tokens)}.")
  if np.ndim(indices) < 1 or np.shape(indices)[0] != np.shape(tokens)[0]:
    raise ValueError(
        f"indices must have shape [batch, ...] with batch = {np.shape(tokens)[0]} "
        f"(tokens.shape[0]), but got shape {np.shape(indices)}.")
  batch, index_shape = np.shape(indices)[0], np.shape(indices)[1:]
  flat = jnp.reshape(indices, (batch, -1, 1))
  out = jnp.take_along_axis(tokens, flat, axis=1)
  return out.reshape((batch, *index_shape, np.shape(tokens)[-1]))


def scatter_patches(values: jax.Array, indices: jax.Array, num_patches: int,
                    fill: jax.Array | float = 0.0) -> jax.Array:
  """Puts ``[B, K, D]`` tokens back at their patches of a ``[B, N, D]`` sequence, ``fill`` (a
  scalar or a ``[D]`` mask token) elsewhere: MAE's decoder input, equal to
  ``concat([values, mask_tokens])[restore]`` for a ``RandomMask``.

  Raises:
    ValueError: if ``values`` is not ``[B, K, D]`` or ``indices`` is not ``[B, K]``.
  """
  num_patches = _check_int("num_patches", num_patches, 1)
  if np.ndim(values) != 3:
    raise ValueError(f"values must have rank 3 with shape [batch, K, dim], but got shape "
                     f"{np.shape(values)}.")
  if tuple(np.shape(indices)) != tuple(np.shape(values)[:2]):
    raise ValueError(
        f"indices must have shape [batch, K] = {tuple(np.shape(values)[:2])} "
        f"(values.shape[:2]), but got shape {np.shape(indices)}.")
  batch, _, dim = np.shape(values)
  fill = jnp.asarray(fill, values.dtype)
  base = jnp.broadcast_to(fill, (batch, num_patches, dim))
  return jax.vmap(lambda b, i, v: b.at[i].set(v))(base, indices, values)
