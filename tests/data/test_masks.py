"""Tests for sslx.data.masks: MAE, BEiT / iBOT and I-JEPA mask generators.

Statistics use many per-example keys through one jitted, vmapped call each (compiles dominate on
CPU). References are written here from the papers' algorithms and the authors' code in plain
Python / NumPy float64, independently of the implementation.
"""

import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sslx.data import masks as M
from sslx.losses import mae, patchify

GRID = 14  # 224-pixel images, 16-pixel patches
N = GRID * GRID


def _within(observed, expected, n, sigmas=5.0):
  """A frequency is within ``sigmas`` binomial standard errors of its probability."""
  se = math.sqrt(max(expected * (1 - expected), 1e-4) / n)
  return abs(observed - expected) <= sigmas * se


def _box_of(mask2d):
  """Bounding box (top, left, h, w) of a non-empty [H, W] bool mask."""
  rows = np.flatnonzero(mask2d.any(1))
  cols = np.flatnonzero(mask2d.any(0))
  return rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def _rounding_allows(h, w, area_range, aspect_range):
  """Whether ``h = round(sqrt(s a))``, ``w = round(sqrt(s / a))`` is possible for some area
  ``s`` and aspect ``a`` in the ranges: ``a = x / y`` and ``s = x y`` for ``x`` within 1/2 of
  ``h`` and ``y`` within 1/2 of ``w``."""
  lo_a, hi_a = (h - 0.5) / (w + 0.5), (h + 0.5) / (w - 0.5)
  lo_s, hi_s = (h - 0.5) * (w - 0.5), (h + 0.5) * (w + 0.5)
  return (lo_a <= aspect_range[1] and hi_a >= aspect_range[0]
          and lo_s <= area_range[1] and hi_s >= area_range[0])


# ------------------------------------------------------------------------------------------
# MAE random masking.


def test_random_masking_partition_frequencies_and_restore():
  n_keys, ratio = 4000, 0.75
  m = jax.jit(lambda k: M.random_masking_batch(k, n_keys, N, ratio))(jax.random.key(0))
  keep, masked, restore, mask = (np.asarray(x) for x in m)
  # MAE ViT at 224/16 keeps 49 of 196 patches (int(196 * 0.25)).
  assert keep.shape == (n_keys, 49) and masked.shape == (n_keys, 147)
  assert restore.shape == mask.shape == (n_keys, N) and mask.dtype == bool
  assert keep.dtype == masked.dtype == restore.dtype == np.int32
  # keep / masked partition 0..N-1, and the mask marks exactly the masked ones.
  both = np.sort(np.concatenate([keep, masked], axis=1), axis=1)
  np.testing.assert_array_equal(both, np.broadcast_to(np.arange(N), both.shape))
  rows = np.arange(n_keys)[:, None]
  assert mask[rows, masked].all() and not mask[rows, keep].any()
  # restore undoes the shuffle: concat(keep, masked)[restore] is the identity.
  shuffled = np.concatenate([keep, masked], axis=1)
  np.testing.assert_array_equal(np.take_along_axis(shuffled, restore, axis=1),
                                np.broadcast_to(np.arange(N), (n_keys, N)))
  # Uniform over subsets: every patch is masked with probability 0.75 ...
  freq = mask.mean(0)
  assert all(_within(f, ratio, n_keys) for f in freq), (freq.min(), freq.max())
  # ... neighbours are masked together with probability C(N-2, 145) / C(N, 147) (each example's
  # mean counted as one draw, a conservative error) ...
  pair = (mask[:, :-1] & mask[:, 1:]).mean()
  expected_pair = 147 * 146 / (196 * 195)
  assert _within(pair, expected_pair, n_keys), pair
  # ... and different examples get different masks.
  assert len({row.tobytes() for row in mask}) == n_keys


def test_random_masking_sizes_and_errors():
  # K = int(N * (1 - ratio)) as MAE computes it, including float rounding (19.599... -> 19).
  # Shapes through eval_shape: nothing compiles.
  for num_patches, ratio, k in [(196, 0.75, 49), (196, 0.9, 19), (16, 0.6, 6), (64, 0.0, 64)]:
    m = jax.eval_shape(lambda key: M.random_masking(key, num_patches, ratio), jax.random.key(1))
    assert m.keep_indices.shape == (k,) and m.masked_indices.shape == (num_patches - k,)
    assert m.restore.shape == m.mask.shape == (num_patches,)
  for bad in [1.0, -0.1, 1.5, "0.5", None]:
    with pytest.raises(ValueError, match="mask_ratio"):
      M.random_masking(jax.random.key(0), 196, bad)
  with pytest.raises(ValueError, match="keeps"):
    M.random_masking(jax.random.key(0), 2, 0.75)
  with pytest.raises(ValueError, match="num_patches"):
    M.random_masking(jax.random.key(0), 0)
  with pytest.raises(ValueError, match="batch_size"):
    M.random_masking_batch(jax.random.key(0), 0, 196)


# ------------------------------------------------------------------------------------------
# BEiT / iBOT block masks.


def _beit_reference(rng, height, width, target, min_num=16, min_aspect=0.3, attempts=10):
  """BEiT's MaskingGenerator (Algorithm 1 of Bao et al. 2022), written from the paper and
  microsoft/unilm beit/masking_generator.py with Python's random module."""
  log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
  mask = np.zeros((height, width), bool)
  count, blocks = 0, []
  while count < target:
    budget = target - count
    delta = 0
    for _ in range(attempts):
      area = rng.uniform(min_num, budget)
      aspect = math.exp(rng.uniform(*log_aspect))
      h = int(round(math.sqrt(area * aspect)))
      w = int(round(math.sqrt(area / aspect)))
      if w < width and h < height:
        top = rng.randint(0, height - h)
        left = rng.randint(0, width - w)
        new = h * w - mask[top:top + h, left:left + w].sum()
        if 0 < new <= budget:
          mask[top:top + h, left:left + w] = True
          delta = new
          blocks.append((h, w))
          break
    if delta == 0:
      break
    count += delta
  return mask, blocks


def test_block_mask_matches_beit_reference_and_is_a_union_of_valid_blocks():
  n_keys, target = 2000, M.BEIT_NUM_MASKING_PATCHES
  keys = jax.random.split(jax.random.key(0), n_keys)
  masks, boxes, num_boxes = jax.jit(jax.vmap(lambda k: M._block_mask_and_boxes(
      k, GRID, GRID, target, 16, None, 0.3, 1 / 0.3, 10, record_boxes=True)))(keys)
  masks, boxes, num_boxes = np.asarray(masks), np.asarray(boxes), np.asarray(num_boxes)
  counts = masks.sum((1, 2))
  # A block adds at most the remaining budget, so the target is never exceeded.
  assert counts.max() <= target
  for mask, box, nb in zip(masks, boxes, num_boxes):
    union = np.zeros_like(mask)
    covered = 0
    for top, left, h, w in box[:nb]:
      # Inside the grid, h < H and w < W, and the rounding of some area / aspect draw in range.
      assert 0 <= top and top + h <= GRID and 0 <= left and left + w <= GRID
      assert 1 <= h < GRID and 1 <= w < GRID
      assert _rounding_allows(h, w, (min(16, target - covered), max(16, target - covered)),
                              (0.3, 1 / 0.3)), (h, w)
      new = np.zeros_like(mask)
      new[top:top + h, left:left + w] = True
      added = (new & ~union).sum()
      assert 0 < added <= target - covered
      union |= new
      covered += added
    np.testing.assert_array_equal(union, mask)  # the mask is exactly the union of its blocks

  # Same distribution as the reference: mean count, P(count = target), mean number of blocks.
  rng = random.Random(0)
  ref = [_beit_reference(rng, GRID, GRID, target) for _ in range(n_keys)]
  ref_counts = np.array([r.sum() for r, _ in ref])
  ref_blocks = np.array([len(b) for _, b in ref])
  se = math.sqrt(counts.var() / n_keys + ref_counts.var() / n_keys)
  assert abs(counts.mean() - ref_counts.mean()) <= 5 * se, (counts.mean(), ref_counts.mean())
  p, p_ref = (counts == target).mean(), (ref_counts == target).mean()
  assert abs(p - p_ref) <= 5 * math.sqrt(2 * p_ref * (1 - p_ref) / n_keys), (p, p_ref)
  se = math.sqrt(num_boxes.var() / n_keys + ref_blocks.var() / n_keys)
  assert abs(num_boxes.mean() - ref_blocks.mean()) <= 5 * se, (num_boxes.mean(), ref_blocks.mean())
  for q in (5, 25, 50):
    assert abs(np.percentile(counts, q) - np.percentile(ref_counts, q)) <= 2, q
  # Block shapes: the first block's area (drawn from U(16, 75)) and how often blocks are tall,
  # wide or square (the log-uniform aspect makes tall and wide equally likely).
  first = boxes[:, 0, 2] * boxes[:, 0, 3]
  ref_first = np.array([b[0][0] * b[0][1] for _, b in ref])
  se = math.sqrt(first.var() / n_keys + ref_first.var() / n_keys)
  assert abs(first.mean() - ref_first.mean()) <= 5 * se, (first.mean(), ref_first.mean())
  shapes = np.concatenate([box[:nb, 2:] for box, nb in zip(boxes, num_boxes)])
  ref_shapes = np.array([hw for _, b in ref for hw in b])
  for side in (np.greater, np.less):
    p, p_ref = side(*shapes.T).mean(), side(*ref_shapes.T).mean()
    assert abs(p - p_ref) <= 5 * math.sqrt(p_ref * (1 - p_ref) * 2 / len(ref_shapes)), (p, p_ref)
  # Masks are spread over the grid: every patch is masked sometimes.
  assert masks.any(0).all()


def test_ibot_ratios_and_masks():
  n_keys = 2000
  ratios = np.asarray(jax.jit(lambda k: M.ibot_pred_ratios(k, n_keys))(jax.random.key(2)))
  zero = ratios == 0
  assert _within(zero.mean(), 0.5, n_keys)
  nonzero = ratios[~zero]
  assert nonzero.min() >= 0.1 and nonzero.max() <= 0.5
  # Uniform on (0.1, 0.5): mean 0.3, standard deviation 0.4 / sqrt(12).
  assert abs(nonzero.mean() - 0.3) <= 5 * 0.4 / math.sqrt(12 * len(nonzero))
  assert abs(nonzero.std() - 0.4 / math.sqrt(12)) <= 0.01

  @jax.jit
  def ibot(key):
    # ibot_block_masks draws its ratios from the first half of the key, as here.
    return M.ibot_pred_ratios(jax.random.split(key)[0], n_keys), M.ibot_block_masks(
        key, n_keys, GRID)

  def ibot_by_hand(key):  # iBOT's block size on 14 x 14 is (14 // 3)^2 = 16
    k_ratio, k_mask = jax.random.split(key)
    targets = M.ibot_pred_ratios(k_ratio, 8) * N
    return M.block_mask_batch(k_mask, 8, GRID, targets, min_num_patches=16)

  # Same computation (compared as jaxprs, which costs no compile).
  key = jax.random.key(3)
  assert str(jax.make_jaxpr(ibot_by_hand)(key)) == str(
      jax.make_jaxpr(lambda k: M.ibot_block_masks(k, 8, GRID))(key))
  ratios, masks = (np.asarray(x) for x in ibot(key))
  assert masks.shape == (n_keys, GRID, GRID) and masks.dtype == bool
  counts = masks.sum((1, 2))
  # Each image's target is its own ratio * N (never exceeded); ratio 0 leaves it unmasked; any
  # other ratio gives at least one block: an area >= 16 rounded, so (h + 1/2)(w + 1/2) >= 16.
  assert (counts <= ratios * N + 1e-4).all()
  np.testing.assert_array_equal(counts == 0, ratios == 0)
  assert counts[counts > 0].min() >= 12
  # The masked fraction follows the ratio: 0.3 on average, a little under (BEiT stops early).
  shortfall = (ratios * N - counts)[ratios > 0]
  assert 0 <= shortfall.mean() <= 2, shortfall.mean()


def test_block_mask_errors():
  key = jax.random.key(0)
  cases = [
      (dict(grid_size=1), "grid_size"),
      (dict(grid_size=(14, 0)), "grid_size"),
      (dict(grid_size="14"), "grid_size"),
      (dict(num_masking_patches=197), "num_masking_patches"),
      (dict(num_masking_patches=-1), "num_masking_patches"),
      (dict(min_num_patches=0), "min_num_patches"),
      (dict(grid_size=4, min_num_patches=10), "impossible"),  # blocks are at most 3 x 3
      (dict(min_aspect=0.0), "min_aspect"),
      (dict(min_aspect=2.0, max_aspect=1.0), "max_aspect"),
      (dict(max_num_patches=0), "max_num_patches"),
      (dict(max_attempts=0), "max_attempts"),
  ]
  for kwargs, match in cases:
    kwargs = {"grid_size": GRID, "num_masking_patches": 16, **kwargs}
    if kwargs["grid_size"] == 4:
      kwargs["num_masking_patches"] = 8
    with pytest.raises(ValueError, match=match):
      M.block_mask(key, **kwargs)
  with pytest.raises(ValueError, match="num_masking_patches"):
    M.block_mask_batch(key, 4, GRID, jnp.zeros((3,)))
  with pytest.raises(ValueError, match="pred_ratio"):
    M.ibot_pred_ratios(key, 4, (0.1,), (0.2,))  # iBOT asserts ratio >= var
  with pytest.raises(ValueError, match="pred_ratio"):
    M.ibot_pred_ratios(key, 4, (0.0, 0.3), (0.0,))


# ------------------------------------------------------------------------------------------
# I-JEPA multi-block masks.


def _ijepa_block_size(u, height, width, scale, aspect):
  """facebookresearch/ijepa MaskCollator._sample_block_size for one torch.rand draw ``u``."""
  max_keep = int(height * width * (scale[0] + u * (scale[1] - scale[0])))
  ratio = aspect[0] + u * (aspect[1] - aspect[0])
  h = int(round(math.sqrt(max_keep * ratio)))
  w = int(round(math.sqrt(max_keep / ratio)))
  while h >= height:
    h -= 1
  while w >= width:
    w -= 1
  return h, w


def _reference_size_probabilities(height, width, scale, aspect, n_grid=200_000):
  sizes = {}
  for u in (np.arange(n_grid) + 0.5) / n_grid:
    size = _ijepa_block_size(u, height, width, scale, aspect)
    sizes[size] = sizes.get(size, 0) + 1 / n_grid
  return sizes


def test_multiblock_masks_blocks_disjointness_and_size_statistics():
  n_keys = 3000
  traces = []

  @jax.jit
  def sample(key):
    traces.append(1)
    return M.multiblock_masks_batch(key, n_keys, GRID)

  m = sample(jax.random.key(0))
  ctx_idx, tgt_idx, ctx_mask, tgt_masks = (np.asarray(x) for x in m)
  assert ctx_idx.shape == (n_keys, 49) and tgt_idx.shape == (n_keys, 4, 30)
  assert ctx_mask.shape == (n_keys, N) and tgt_masks.shape == (n_keys, 4, N)
  assert (ctx_idx.dtype, tgt_idx.dtype) == (np.int32, np.int32)
  assert M.multiblock_num_patches(GRID) == (49, 30)

  # Targets never overlap the context.
  assert not (ctx_mask[:, None, :] & tgt_masks).any()
  # The reference's context block on 14 x 14 is always the top-left 13 x 13 (13 = round(sqrt(
  # int(196 s))) clipped below 14, top ~ randint(0, 1) = 0); the context is it minus targets.
  block = np.zeros((GRID, GRID), bool)
  block[:13, :13] = True
  np.testing.assert_array_equal(ctx_mask, block.reshape(-1) & ~tgt_masks.any(1))
  # Every context has at least K_ctx patches (no fallback padding needed in these draws), and
  # the indices are its first K_ctx patches in patch order (the reference's truncation).
  assert ctx_mask.sum(1).min() >= 49
  for i in range(0, n_keys, 97):
    np.testing.assert_array_equal(ctx_idx[i], np.flatnonzero(ctx_mask[i])[:49])
    for j in range(4):
      np.testing.assert_array_equal(tgt_idx[i, j], np.flatnonzero(tgt_masks[i, j])[:30])

  # Each target is a filled rectangle; all of an example's targets share one size; no block
  # touches the last row or column (torch.randint excludes H - h).
  sizes, tops = [], []
  for i in range(n_keys):
    shapes = set()
    for j in range(4):
      grid = tgt_masks[i, j].reshape(GRID, GRID)
      top, left, h, w = _box_of(grid)
      assert grid.sum() == h * w
      assert top + h <= GRID - 1 and left + w <= GRID - 1
      shapes.add((h, w))
      tops.append((h, top))
    assert len(shapes) == 1
    sizes.append(shapes.pop())
  # Scale in (0.15, 0.2) and aspect in (0.75, 1.5) up to the reference's rounding.
  for h, w in set(sizes):
    assert _rounding_allows(h, w, (int(N * 0.15), int(N * 0.2)), (0.75, 1.5)), (h, w)
  # The size distribution is the reference's (one uniform draw sets scale and aspect).
  expected = _reference_size_probabilities(GRID, GRID, (0.15, 0.2), (0.75, 1.5))
  assert set(sizes) <= set(expected)
  for size, p in expected.items():
    assert _within(sizes.count(size) / n_keys, p, n_keys), (size, p)
  exact = M.multiblock_block_sizes(GRID, (0.15, 0.2), (0.75, 1.5))
  assert set(exact) == set(expected)
  assert all(abs(exact[s] - expected[s]) < 1e-4 for s in expected)
  # Block scale statistics: mean area fraction as the reference gives it.
  mean_scale = np.mean([h * w for h, w in sizes]) / N
  ref_scale = sum(p * h * w for (h, w), p in expected.items()) / N
  assert abs(mean_scale - ref_scale) <= 5 * np.std([h * w for h, w in sizes]) / N / math.sqrt(
      n_keys)
  # Placement covers every allowed top row (0 .. H - h - 1) for the commonest size.
  tops_75 = {top for h, top in tops if h == 7}
  assert tops_75 == set(range(GRID - 7))

  # Static shapes under jit: a new key reuses the compiled function.
  again = sample(jax.random.key(1))
  assert len(traces) == 1
  assert again.context_indices.shape == (n_keys, 49)
  assert not np.array_equal(np.asarray(again.target_masks), tgt_masks)


def test_multiblock_other_grids_and_errors():
  # ViT-H/14 at 224: a 16 x 16 grid, checked through shapes only.
  shapes = jax.eval_shape(lambda k: M.multiblock_masks_batch(k, 8, 16), jax.random.key(0))
  assert shapes.context_indices.shape == (8, 64) and shapes.target_indices.shape == (8, 4, 35)
  # A small non-square grid with explicit num_context and fewer targets, generated with the
  # batch sharded over the 8 devices as inside a train step.
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  sample = jax.jit(
      lambda k: M.multiblock_masks_batch(k, 16, (6, 8), num_targets=2, num_context=4),
      out_shardings=NamedSharding(mesh, P("data")))
  m = sample(jax.random.key(3))
  assert m.context_indices.sharding.spec == P("data")
  ctx_idx, tgt_idx, ctx_mask, tgt_masks = (np.asarray(x) for x in m)
  expected = M.multiblock_block_sizes((6, 8), (0.15, 0.2), (0.75, 1.5))
  num_target = min(h * w for h, w in expected)
  assert ctx_idx.shape == (16, 4) and tgt_idx.shape == (16, 2, num_target)
  assert not (ctx_mask[:, None] & tgt_masks).any()
  for i in range(16):
    np.testing.assert_array_equal(ctx_idx[i], np.flatnonzero(ctx_mask[i])[:4])
    for j in range(2):
      grid = tgt_masks[i, j].reshape(6, 8)  # rows of 8 patches
      top, left, h, w = _box_of(grid)
      assert (h, w) in expected and grid.sum() == h * w and top + h <= 5 and left + w <= 7
  key = jax.random.key(0)
  cases = [
      (dict(grid_size=1), "grid_size"),
      (dict(num_targets=0), "num_targets"),
      (dict(target_scale=(0.2, 0.1)), "target_scale"),
      (dict(target_scale=(0.0, 0.2)), "target_scale"),
      (dict(context_scale=(0.85, 1.1)), "context_scale"),
      (dict(target_aspect=(0.0, 1.5)), "target_aspect"),
      (dict(context_aspect=(1.0,)), "context_aspect"),
      (dict(num_context=170), "num_context"),  # the context block is 13 x 13 = 169
      (dict(num_context=0), "num_context"),
      (dict(max_tries=0), "max_tries"),
      (dict(grid_size=2), "empty target"),  # int(4 * 0.2) = 0 patches
  ]
  for kwargs, match in cases:
    kwargs = {"grid_size": GRID, **kwargs}
    with pytest.raises(ValueError, match=match):
      M.multiblock_masks(key, **kwargs)


# ------------------------------------------------------------------------------------------
# Conversions and the losses.


def test_conversions_and_mae_loss_round_trip():
  rng = np.random.RandomState(0)
  idx = rng.randint(0, 16, size=(3, 2, 5))  # I-JEPA's [B, M, K] layout
  tokens = rng.randn(3, 16, 4).astype(np.float32)
  mask_token = rng.randn(4).astype(np.float32)
  images = rng.rand(3, 8, 8, 1).astype(np.float32)
  pred = rng.randn(3, 16, 4).astype(np.float32)

  @jax.jit
  def run(key):  # one compile for everything (eager ops compile one by one)
    m = M.random_masking_batch(key, 3, 16, 0.75)
    visible = M.gather_patches(tokens, m.keep_indices)
    target = patchify(images, 2)
    return dict(
        m=m, visible=visible, target=target,
        from_indices=M.indices_to_mask(m.masked_indices, 16),
        masked=M.mask_to_indices(m.mask, 12), keep=M.mask_to_indices(~m.mask, 4),
        padded=M.mask_to_indices(jnp.array([[False, True, False, True], [False] * 4]), 3),
        idx_mask=M.indices_to_mask(idx, 16), gathered=M.gather_patches(tokens, idx),
        full=M.scatter_patches(visible, m.keep_indices, 16, mask_token),
        loss=mae(pred, target, m.mask, norm_pix_loss=False))

  out = jax.tree.map(np.asarray, run(jax.random.key(5)))
  keep, masked, restore, mask = out["m"]
  np.testing.assert_array_equal(out["from_indices"], mask)
  np.testing.assert_array_equal(out["masked"], masked)
  np.testing.assert_array_equal(out["keep"], keep)
  # Padding repeats the first index; an empty row gives 0.
  np.testing.assert_array_equal(out["padded"], [[1, 3, 1], [0, 0, 0]])
  ref = np.zeros((3, 2, 16), bool)
  for b in range(3):
    for j in range(2):
      ref[b, j, idx[b, j]] = True
  np.testing.assert_array_equal(out["idx_mask"], ref)
  assert out["gathered"].shape == (3, 2, 5, 4)
  for b in range(3):
    np.testing.assert_array_equal(out["gathered"][b], tokens[b][idx[b]])
  # MAE's decoder input: scatter == concat(visible, mask tokens)[restore].
  shuffled = np.concatenate([out["visible"], np.broadcast_to(mask_token, (3, 12, 4))], 1)
  full = out["full"]
  np.testing.assert_array_equal(full, np.take_along_axis(shuffled, restore[..., None], axis=1))
  np.testing.assert_array_equal(full[~mask], tokens[~mask])
  np.testing.assert_array_equal(full[mask], np.broadcast_to(mask_token, (36, 4)))
  # The mask feeds sslx.losses.mae directly: the mean error over masked patches only.
  err = ((pred - out["target"]) ** 2).mean(-1)
  np.testing.assert_allclose(out["loss"], err[mask].mean(), rtol=1e-5)

  m = M.RandomMask(*(jnp.asarray(x) for x in out["m"]))
  visible = out["visible"]
  for call, match in [
      (lambda: M.indices_to_mask(jnp.zeros(()), 16), "indices"),
      (lambda: M.indices_to_mask(jnp.zeros((3,)), 0), "num_patches"),
      (lambda: M.mask_to_indices(m.mask, 17), "size"),
      (lambda: M.mask_to_indices(m.mask, 0), "size"),
      (lambda: M.gather_patches(tokens[0], idx), "tokens"),
      (lambda: M.gather_patches(tokens, idx[:2]), "indices"),
      (lambda: M.scatter_patches(visible, m.keep_indices[:, :2], 16), "indices"),
      (lambda: M.scatter_patches(visible[0], m.keep_indices, 16), "values"),
  ]:
    with pytest.raises(ValueError, match=match):
      call()
