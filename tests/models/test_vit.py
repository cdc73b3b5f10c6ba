"""Tests for the ViT encoder, MAE decoder and I-JEPA predictor: a float64 NumPy re-implementation
of the forward passes, subset / ordering properties, drop-path, and published sizes and FLOPs.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from sslx.models import util
from sslx.models.vit import (IJEPAPredictor, MAEDecoder, VisionTransformer, drop_path,
                             sincos_pos_embed_2d, vit)

# These tests compile many small programs once each; XLA's backend optimisations cost more time
# than they save here (about half of each compile on a CPU).
FAST_COMPILE = {"xla_backend_optimization_level": 0}

# ----------------------------------------------------------------------------------------------
# Independent float64 reference, written from the papers' equations (ViT: Dosovitskiy et al.
# 2021 Eq. 1-4 with pre-norm blocks; sin-cos embedding: Vaswani et al. 2017 per axis, MAE).


def ref_pos_embed(dim, grid_h, grid_w):
  """Loop form: token r*grid_w + c gets [sin(c w_k), cos(c w_k), sin(r w_k), cos(r w_k)]."""
  quarter = dim // 4
  out = np.zeros((grid_h * grid_w, dim))
  for r in range(grid_h):
    for c in range(grid_w):
      for k in range(quarter):
        w = 10000.0 ** (-k / quarter)
        out[r * grid_w + c, [k, quarter + k, 2 * quarter + k, 3 * quarter + k]] = [
            math.sin(c * w), math.cos(c * w), math.sin(r * w), math.cos(r * w)]
  return out


def ref_patches(images, p):
  """[B, H, W, C] -> [B, N, p*p*C], row-major patches each flattened (row, col, channel)."""
  b, h, w, c = images.shape
  out = []
  for i in range(h // p):
    for j in range(w // p):
      out.append(images[:, i * p:(i + 1) * p, j * p:(j + 1) * p, :].reshape(b, -1))
  return np.stack(out, axis=1)


def ref_layer_norm(x, prm):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * prm["scale"] + prm["bias"]


def ref_block(x, prm):
  """Pre-norm block with PyTorch's fused qkv Linear(D, 3D) layout: columns (3, heads, dh)."""
  b, t, d = x.shape
  a = prm["attn"]
  heads, dh = a["qkv_kernel"].shape[2:]
  h = ref_layer_norm(x, prm["norm1"])
  qkv = h @ a["qkv_kernel"].reshape(d, 3 * d) + a["qkv_bias"].reshape(3 * d)
  qkv = qkv.reshape(b, t, 3, heads, dh)
  y = np.zeros((b, t, heads, dh))
  for i in range(heads):
    q, k, v = qkv[:, :, 0, i], qkv[:, :, 1, i], qkv[:, :, 2, i]
    logits = q @ k.transpose(0, 2, 1) / math.sqrt(dh)
    att = np.exp(logits - logits.max(-1, keepdims=True))
    y[:, :, i] = (att / att.sum(-1, keepdims=True)) @ v
  y = y.reshape(b, t, d) @ a["out_kernel"].reshape(d, d) + a["out_bias"]
  x = x + (y * prm["ls1"] if "ls1" in prm else y)
  h = ref_layer_norm(x, prm["norm2"]) @ prm["fc1"]["kernel"] + prm["fc1"]["bias"]
  h = 0.5 * h * (1 + erf(h / math.sqrt(2)))  # exact GELU
  y = h @ prm["fc2"]["kernel"] + prm["fc2"]["bias"]
  return x + (y * prm["ls2"] if "ls2" in prm else y)


def ref_blocks(x, blocks):
  for i in range(len(blocks)):
    x = ref_block(x, blocks[i])
  return x


def ref_vit(prm, images, p, grid, indices=None):
  """Returns (cls, registers, patches) of the ViT on the patches `indices` (all if None)."""
  x = ref_patches(images, p)
  b, d = len(x), prm["norm"]["scale"].shape[0]
  pos = np.stack([ref_pos_embed(d, *grid)] * b)
  if indices is not None:
    x = np.stack([x[i, indices[i]] for i in range(b)])
    pos = np.stack([pos[i, indices[i]] for i in range(b)])
  x = x @ prm["patch_embed"]["kernel"] + prm["patch_embed"]["bias"] + pos
  cls = np.broadcast_to(prm["cls_token"], (b, 1, d))
  reg = np.broadcast_to(prm["registers"], (b,) + prm["registers"].shape[1:])
  x = ref_layer_norm(ref_blocks(np.concatenate([cls, reg, x], 1), prm["blocks"]), prm["norm"])
  r = reg.shape[1]
  return x[:, 0], x[:, 1:1 + r], x[:, 1 + r:]


def random_model(make, seed):
  """The module `make()` builds, with every parameter drawn from N(0, 0.5^2) in NumPy (zero
  biases and unit LayerNorm scales would hide mistakes); returns it and a float64 copy of its
  parameters. Built abstractly: compiling the initialisers costs seconds on a CPU, and the
  initial values are checked separately in test_initialisation."""
  graphdef, state = nnx.split(nnx.eval_shape(make))
  pure = state.to_pure_dict()
  rng = np.random.default_rng(seed)
  pure = jax.tree.map(lambda x: rng.normal(0.0, 0.5, x.shape), pure)
  nnx.replace_by_pure_dict(state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), pure))
  return nnx.merge(graphdef, state), pure


# ----------------------------------------------------------------------------------------------


def test_sincos_pos_embed_matches_loop_formula():
  for dim, grid in ((16, (3, 5)), (1280, (16, 16))):
    np.testing.assert_allclose(sincos_pos_embed_2d(dim, grid), ref_pos_embed(dim, *grid),
                               atol=2e-6, rtol=0)
  with pytest.raises(ValueError, match="divisible by 4"):
    sincos_pos_embed_2d(18, (2, 2))


def test_vit_matches_reference_on_all_and_on_subset_of_patches():
  p, grid = 4, (4, 3)  # non-square 16 x 12 images: rows and columns cannot be confused
  model, prm = random_model(
      lambda: vit(patch_size=p, width=16, depth=2, num_heads=4, image_size=(16, 12),
                  in_channels=3, num_registers=2, layer_scale_init=0.5, rngs=nnx.Rngs(0)), 1)
  images = np.asarray(jax.random.normal(jax.random.key(2), (2, 16, 12, 3)))
  graphdef, state = nnx.split(model)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def forward(state, images, indices=None):
    return nnx.merge(graphdef, state)(images, patch_indices=indices)

  full = forward(state, images)
  cls, reg, patches = ref_vit(prm, images, p, grid)
  tol = dict(atol=2e-4, rtol=2e-4)
  np.testing.assert_allclose(full["cls"], cls, **tol)
  np.testing.assert_allclose(full["registers"], reg, **tol)
  np.testing.assert_allclose(full["patches"], patches, **tol)
  np.testing.assert_allclose(full["pooled"], cls, **tol)
  assert full["patches"].shape == (2, 12, 16)
  # LayerNorm epsilon (1e-6) only shows on nearly constant inputs.
  flat = np.asarray(np.random.default_rng(3).normal(0, 1e-3, (4, 16)), np.float32)
  np.testing.assert_allclose(model.norm(flat), ref_layer_norm(flat, prm["norm"]), rtol=1e-3,
                             atol=1e-3)

  # A subset in scrambled order, different per example: the encoder sees exactly those patches
  # with their own position embeddings, and returns them in the order asked for.
  indices = np.array([[7, 0, 11, 3, 5], [2, 10, 4, 9, 1]], np.int32)
  sub = forward(state, images, indices)
  cls, reg, patches = ref_vit(prm, images, p, grid, indices)
  np.testing.assert_allclose(sub["cls"], cls, **tol)
  np.testing.assert_allclose(sub["patches"], patches, **tol)
  assert not np.allclose(sub["patches"], np.take_along_axis(
      np.asarray(full["patches"]), indices[..., None], 1), atol=1e-2)  # attention saw fewer

  # Properties that need no reference: patches outside the subset do not matter at all, and
  # reordering the subset reorders the output tokens the same way (same program: K = 5).
  other = np.asarray(images).copy()
  keep = np.zeros((2, 12), bool)
  keep[np.arange(2)[:, None], indices] = True
  mask = np.repeat(np.repeat(keep.reshape(2, 4, 3), p, 1), p, 2)[..., None]
  other = np.where(mask, other, 100.0)
  np.testing.assert_allclose(forward(state, other, indices)["patches"], sub["patches"], atol=1e-5)
  perm = np.stack([np.random.default_rng(b).permutation(5) for b in range(2)])
  shuffled = forward(state, images, np.take_along_axis(indices, perm, 1))
  np.testing.assert_allclose(shuffled["cls"], sub["cls"], atol=1e-5)
  np.testing.assert_allclose(shuffled["patches"], np.take_along_axis(
      np.asarray(sub["patches"]), perm[..., None], 1), atol=1e-5)


def test_drop_path_is_random_per_key_and_off_at_eval():
  model, _ = random_model(lambda: vit(patch_size=4, width=16, depth=2, num_heads=4,
                                      image_size=8, class_token=False, drop_path_rate=0.5,
                                      rngs=nnx.Rngs(0)), 0)
  forward = jax.jit(lambda x, key, train: model(x, train=train, rng=key), static_argnums=2,
                    compiler_options=FAST_COMPILE)
  images = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype(np.float32)
  evaluated = forward(images, jax.random.key(1), False)
  eval_out = evaluated["patches"]
  a = forward(images, jax.random.key(1), True)["patches"]
  b = forward(images, jax.random.key(1), True)["patches"]
  c = forward(images, jax.random.key(2), True)["patches"]
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert not np.allclose(a, eval_out)
  np.testing.assert_array_equal(forward(images, jax.random.key(2), False)["patches"], eval_out)
  # No class token: pooled features are the mean patch token.
  np.testing.assert_allclose(evaluated["pooled"], eval_out.mean(1), atol=1e-6)
  with pytest.raises(ValueError, match="rng"):
    model(images, train=True)
  # Per example, a branch survives with probability 1 - rate and is scaled by 1 / (1 - rate).
  x = drop_path(jnp.ones((20000, 2, 3)), 0.3, jax.random.key(3))
  kept = np.asarray(x[:, 0, 0] != 0)
  assert np.all(np.asarray(x)[kept] == pytest.approx(1 / 0.7))
  assert np.all(np.asarray(x)[~kept] == 0)
  assert abs(kept.mean() - 0.7) < 0.015  # 4.6 binomial standard deviations


def test_initialisation():
  """MAE's initialisation: xavier-uniform linears with the fan-in / fan-out of PyTorch's fused
  Linear(D, 3D) for qkv, zero biases, unit LayerNorm scales, normal(0.02) class token;
  LayerScale at its init value; DINOv2's normal(1e-6) registers."""
  d, heads = 64, 4
  # The "rbg" generator compiles about 3x faster than threefry on a CPU.
  key = jax.random.key(0, impl="rbg")
  make = lambda: vit(patch_size=4, width=d, depth=1, num_heads=heads, image_size=8,  # noqa: E731
                     num_registers=4, layer_scale_init=1e-5, rngs=nnx.Rngs(key))
  graphdef, _ = nnx.split(nnx.eval_shape(make))
  model = nnx.merge(graphdef, jax.jit(lambda: nnx.state(make()),
                                      compiler_options=FAST_COMPILE)())
  block = model.blocks[0]
  qkv = np.asarray(block.attn.qkv_kernel[...])
  assert qkv.shape == (d, 3, heads, d // heads)
  bound = math.sqrt(6 / (d + 3 * d))
  assert np.abs(qkv).max() <= bound and np.abs(qkv).max() > 0.95 * bound
  assert np.std(qkv) == pytest.approx(bound / math.sqrt(3), rel=0.05)
  fc1 = np.asarray(block.fc1.kernel[...])
  assert np.std(fc1) == pytest.approx(math.sqrt(6 / (d + 4 * d)) / math.sqrt(3), rel=0.05)
  assert np.all(np.asarray(block.fc1.bias[...]) == 0)
  assert np.all(np.asarray(block.norm1.scale[...]) == 1)
  np.testing.assert_array_equal(block.ls1[...], np.full(d, 1e-5, np.float32))
  assert np.std(model.cls_token[...]) == pytest.approx(0.02, rel=0.3)
  assert 0 < np.abs(model.registers[...]).max() < 1e-5


def test_mae_decoder_and_ijepa_predictor_match_reference():
  p, grid, enc = 4, (3, 4), 16
  n = grid[0] * grid[1]
  rng = np.random.default_rng(0)
  visible = np.stack([rng.permutation(n)[:5] for _ in range(2)]).astype(np.int32)
  tokens = rng.normal(size=(2, 5, enc)).astype(np.float32)
  cls_tok = rng.normal(size=(2, enc)).astype(np.float32)
  tol = dict(atol=2e-4, rtol=2e-4)

  dec, d = random_model(lambda: MAEDecoder(encoder_width=enc, grid_size=grid, patch_size=p,
                                           in_channels=2, width=8, depth=2, num_heads=2,
                                           rngs=nnx.Rngs(0)), 3)
  decode = jax.jit(lambda t, i, c: dec(t, i, c), compiler_options=FAST_COMPILE)
  out = decode(tokens, visible, cls_tok)
  x = np.broadcast_to(d["mask_token"], (2, n, 8)).copy()
  for b in range(2):
    for j, idx in enumerate(visible[b]):
      x[b, idx] = tokens[b, j] @ d["embed"]["kernel"] + d["embed"]["bias"]
  x = x + ref_pos_embed(8, *grid)
  c = cls_tok @ d["embed"]["kernel"] + d["embed"]["bias"]
  x = ref_layer_norm(ref_blocks(np.concatenate([c[:, None], x], 1), d["blocks"]), d["norm"])
  want = x[:, 1:] @ d["pred"]["kernel"] + d["pred"]["bias"]
  assert out.shape == (2, n, p * p * 2)
  np.testing.assert_allclose(out, want, **tol)
  # Visible tokens are placed by index: shuffling tokens and indices together changes nothing.
  order = np.array([3, 0, 4, 1, 2])
  np.testing.assert_allclose(decode(tokens[:, order], visible[:, order], cls_tok), out,
                             atol=1e-5)

  pred, q = random_model(lambda: IJEPAPredictor(encoder_width=enc, grid_size=grid, width=8,
                                                 depth=2, num_heads=2, rngs=nnx.Rngs(1)), 4)
  targets = np.array([[11, 2, 6], [0, 7, 3]], np.int32)
  out = jax.jit(lambda t, i, j: pred(t, i, j), compiler_options=FAST_COMPILE)(
      tokens, visible, targets)
  pos = ref_pos_embed(8, *grid)
  ctx = tokens @ q["embed"]["kernel"] + q["embed"]["bias"] + pos[visible]
  tgt = q["mask_token"] + pos[targets]
  x = ref_layer_norm(ref_blocks(np.concatenate([ctx, tgt], 1), q["blocks"]), q["norm"])
  want = x[:, 5:] @ q["proj"]["kernel"] + q["proj"]["bias"]
  assert out.shape == (2, 3, enc)
  np.testing.assert_allclose(out, want, **tol)


# Published parameter counts and their sources. All include a 1000-class linear head, a learned
# position embedding for the N patches plus the class token, and the class token itself (timm
# `vit_*_224` and the reference PyTorch ViTs). Ours has a fixed sin-cos embedding and no head,
# so we add those before comparing. Ti/S/B: DeiT (Touvron et al. 2021) Table 1 and text ("5.7M"
# for Ti in its Table 1 of DeiT III / timm); B/L/H: MAE (He et al. 2022) Sec. 4 / Table 3 (86M,
# 304M, 632M) and ViT (Dosovitskiy et al. 2021) Table 1 (86M, 307M, 632M; its L figure counts
# differently, so we use MAE's 304M).
PUBLISHED_PARAMS = {"Ti/16": 5.7e6, "S/16": 22e6, "B/16": 86e6, "L/16": 304e6, "H/14": 632e6}


def closed_form_params(width, depth, patch, channels=3):
  """Per block: 2 LayerNorms 4D, qkv 3D^2+3D, proj D^2+D, MLP 8D^2+5D -> 12D^2+13D."""
  return (depth * (12 * width ** 2 + 13 * width) + patch * patch * channels * width + width
          + width + 2 * width)  # patch embed (+bias), class token, final LayerNorm


def test_published_parameter_counts_and_flops():
  models = {name: nnx.eval_shape(lambda: vit(name, image_size=224, rngs=nnx.Rngs(0)))
            for name in PUBLISHED_PARAMS}
  for name, published in PUBLISHED_PARAMS.items():
    model = models[name]
    width, patch = model.width, model.patch_size
    ours = util.count_params(model)
    assert ours == closed_form_params(width, len(model.blocks), patch), name
    with_head = ours + (model.num_patches + 1) * width + (width * 1000 + 1000)
    # 1%: the published figures are rounded to 2-3 significant digits.
    assert abs(with_head - published) / published < 0.01, (name, with_head, published)
  assert util.count_params(models["B/16"]) == 85_647_360  # 86,567,656 with head + pos
  learned = nnx.eval_shape(lambda: vit("B/16", pos_embed="learned", rngs=nnx.Rngs(0)))
  assert util.count_params(learned) == 85_647_360 + 196 * 768  # no row for the class token

  # ViT-B/16 at 224: 17.6 GFLOPs as multiply-adds (DeiT Table 1, fvcore). XLA counts a
  # multiply-add as 2 flops and adds softmax / LayerNorm / GELU element-wise work, so flops / 2
  # sits a little above the matmul-only count computed here from the architecture.
  graphdef, state = nnx.split(models["B/16"])
  flops = util.count_flops(lambda s, x: nnx.merge(graphdef, s)(x)["pooled"], state,
                           jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  n, d = 197, 768
  matmul_macs = 12 * (12 * n * d * d + 2 * n * n * d) + 196 * 768 * 768
  assert matmul_macs <= flops / 2 <= 1.03 * matmul_macs, (flops / 2, matmul_macs)
  assert abs(flops / 2 - 17.6e9) / 17.6e9 < 0.03, flops / 2


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="variant"):
    vit("X/16", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="variant"):
    vit("B/15", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="needs patch_size"):
    vit(width=16, depth=1, num_heads=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="multiple of num_heads"):
    VisionTransformer(image_size=8, patch_size=4, width=18, depth=1, num_heads=4,
                      rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="divide image_size"):
    vit(patch_size=5, width=16, depth=1, num_heads=4, image_size=16, rngs=nnx.Rngs(0))
  model = nnx.eval_shape(lambda: vit(patch_size=4, width=16, depth=0, num_heads=4,
                                     image_size=8, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"images must be \[B, 8, 8, 3\]"):
    model(jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match="patch_indices must be an integer"):
    model(jnp.zeros((2, 8, 8, 3)), patch_indices=jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match="patch_indices must select 1 to 4"):
    model(jnp.zeros((2, 8, 8, 3)), patch_indices=jnp.zeros((2, 5), jnp.int32))
