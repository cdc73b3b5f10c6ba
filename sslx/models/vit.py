"""Vision Transformers (Dosovitskiy et al. 2021) as Flax NNX modules, with the MAE decoder and the
I-JEPA predictor that sit on them; every parameter carries logical axis names for sharding.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sslx.losses.masked import patchify
from sslx.models.resnet import drop_path  # stochastic depth, shared with the ResNets
from sslx.models.util import check_remat, remat_call

# name -> (width, depth, heads). Ti/S: Touvron et al. 2021 (DeiT) Table 1; B/L/H: Dosovitskiy et
# al. 2021 Table 1. The MLP is 4x the width for all of them.
VARIANTS = {
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "H": (1280, 32, 16),
}
PATCH_SIZES = (16, 14, 8)
# config.model.vit.attention: "auto" lets jax.nn.dot_product_attention choose (cuDNN's fused
# flash attention on GPUs where it applies, XLA elsewhere); "xla" / "cudnn" force one.
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")

# LayerNorm epsilon of the reference ViTs (timm, facebookresearch/mae, ijepa, dino all pass
# partial(nn.LayerNorm, eps=1e-6)).
LAYER_NORM_EPS = 1e-6

# Logical axis names carried by the parameters; sslx.sharding maps them to mesh axes.
#   "patch": flattened patch pixels (p*p*C), "embed": the residual width, "mlp": the hidden
#   width of the MLPs, "heads": attention heads, "kv": the per-head width.

# Initialisers. Encoder and MAE decoder: xavier-uniform linears, normal(0.02) tokens
# (facebookresearch/mae models_mae.py `initialize_weights`, also MoCo v3's ViT). The I-JEPA
# predictor: truncated normal(0.02) (facebookresearch/ijepa vision_transformer.py `_init_weights`).
_TOKEN_INIT = nnx.initializers.normal(0.02)


def _kernel_init(kind, in_axis=-2, out_axis=-1):
  """kind "xavier" or "trunc_normal"; the axes give xavier the fan-in / fan-out of the
  equivalent PyTorch Linear when a kernel has more than two dimensions."""
  if kind == "xavier":
    return nnx.initializers.xavier_uniform(in_axis=in_axis, out_axis=out_axis)
  return nnx.initializers.truncated_normal(0.02)


class _Keys:
  """Fresh PRNG keys from one key, by fold_in with a Python counter.

  NNX's Rngs bumps a counter Variable per draw, and under tracing (nnx.eval_shape, jit) each
  bump costs time proportional to the program traced so far: quadratic over ViT-H's ~400
  parameters (9 s of CPU for an abstract ViT-H). One draw per model avoids that.
  """

  def __init__(self, rngs: nnx.Rngs):
    self.key, self.count = rngs.params(), 0

  def __call__(self):
    self.count += 1
    return jax.random.fold_in(self.key, self.count)


def _param(init, keys, shape, names):
  # eager_sharding=False: the logical names are metadata here; sslx.sharding turns them into
  # NamedShardings for jit, so modules can be built without a mesh in context.
  return nnx.Param(init(keys(), shape, jnp.float32), out_sharding=names, eager_sharding=False)


class Dense(nnx.Module):
  """x @ kernel + bias, kernel [in, out] with logical names (in_name, out_name), computed in
  `dtype` (set by sslx.models.set_compute_dtype; the parameters stay float32)."""

  def __init__(self, in_features, out_features, in_name, out_name, init, keys):
    self.kernel = _param(_kernel_init(init), keys, (in_features, out_features),
                         (in_name, out_name))
    self.bias = _param(nnx.initializers.zeros, keys, (out_features,), (out_name,))
    self.dtype = jnp.float32

  def __call__(self, x):
    return (x.astype(self.dtype) @ self.kernel[...].astype(self.dtype)
            + self.bias[...].astype(self.dtype))


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis (Ba et al. 2016), eps 1e-6, unit scale and zero bias at init.
  Statistics and normalisation in float32 whatever the input; the output in `dtype`."""

  def __init__(self, width, keys):
    self.scale = _param(nnx.initializers.ones, keys, (width,), ("embed",))
    self.bias = _param(nnx.initializers.zeros, keys, (width,), ("embed",))
    self.dtype = jnp.float32

  def __call__(self, x):
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS) * self.scale[...] + self.bias[...]
    return y.astype(self.dtype)


@functools.lru_cache(maxsize=32)
def sincos_pos_embed_2d(dim: int, grid_size: tuple[int, int]) -> np.ndarray:
  """Fixed 2-D sine-cosine position embeddings, [grid_h * grid_w, dim] float32 (NumPy).

  As MAE's `get_2d_sincos_pos_embed` (util/pos_embed.py) and MoCo v3's ViT: with omega_k =
  10000^(-k / (dim/4)), k < dim/4, the patch at grid row r, column c (row-major token index
  r * grid_w + c) gets [sin(c omega), cos(c omega), sin(r omega), cos(r omega)]. (MAE's code
  calls the first half "emb_h", but its meshgrid puts the column index there.) A class token, if
  any, gets no position embedding (MAE's zero row).
  """
  if dim % 4:
    raise ValueError(f"dim must be divisible by 4 for 2-D sin-cos embeddings, got {dim}")
  grid_h, grid_w = grid_size
  omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  angle_c = cols.reshape(-1, 1) * omega  # [N, dim/4]
  angle_r = rows.reshape(-1, 1) * omega
  emb = np.concatenate([np.sin(angle_c), np.cos(angle_c), np.sin(angle_r), np.cos(angle_r)], 1)
  return emb.astype(np.float32)


def _gather_tokens(x, indices):
  """x [B, N, D] (or [N, D], shared by the batch), indices [B, K] -> [B, K, D]."""
  if x.ndim == 2:
    return jnp.take(x, indices, axis=0)
  return jnp.take_along_axis(x, indices[..., None], axis=1)


def _check_indices(name, indices, batch, num_patches):
  if indices.ndim != 2 or indices.shape[0] != batch or not jnp.issubdtype(indices.dtype,
                                                                          jnp.integer):
    raise ValueError(f"{name} must be an integer array [batch={batch}, K], got shape "
                     f"{indices.shape} and dtype {indices.dtype}")
  if not 1 <= indices.shape[1] <= num_patches:
    raise ValueError(f"{name} must select 1 to {num_patches} patches (K), got K="
                     f"{indices.shape[1]}")


class Attention(nnx.Module):
  """Multi-head self-attention; q, k, v have bias (qkv_bias=True in MAE, I-JEPA, DINO).

  The fused qkv kernel is [width, 3, heads, head_dim] so "heads" can be split over a "model"
  axis (Megatron-style tensor parallelism: each device owns whole heads). The attention itself
  is `jax.nn.dot_product_attention` (`implementation`: one of ATTENTION_IMPLEMENTATIONS), so
  GPUs get cuDNN's fused flash attention and the [B, heads, T, T] logits are never stored;
  `weights` (attention maps) keeps the explicit softmax.
  """

  def __init__(self, width, num_heads, *, init, keys, implementation="auto"):
    check_attention(implementation)
    self.implementation = implementation
    self.dtype = jnp.float32
    head_dim = width // num_heads
    # Fan-in/fan-out as PyTorch's Linear(width, 3*width) and Linear(width, width), so xavier
    # bounds match the reference initialisation.
    self.qkv_kernel = _param(_kernel_init(init, 0, (1, 2, 3)), keys,
                             (width, 3, num_heads, head_dim), ("embed", None, "heads", "kv"))
    self.qkv_bias = _param(nnx.initializers.zeros, keys, (3, num_heads, head_dim),
                           (None, "heads", "kv"))
    self.out_kernel = _param(_kernel_init(init, (0, 1), 2), keys,
                             (num_heads, head_dim, width), ("heads", "kv", "embed"))
    self.out_bias = _param(nnx.initializers.zeros, keys, (width,), ("embed",))

  def _qkv(self, x):
    """x [B, T, width] -> q, k, v [B, T, heads, head_dim] in the compute dtype."""
    kernel, bias = self.qkv_kernel[...].astype(self.dtype), self.qkv_bias[...].astype(self.dtype)
    return jnp.einsum("btd,dshk->sbthk", x.astype(self.dtype), kernel) + bias[:, None, None]

  def weights(self, x):
    """x [B, T, width] -> the attention weights [B, heads, T (queries), T (keys)], float32."""
    q, k, _ = self._qkv(x)
    logits = jnp.einsum("bqhk,bthk->bhqt", q, k, preferred_element_type=jnp.float32)
    return jax.nn.softmax(logits / np.sqrt(q.shape[-1]), axis=-1)

  def __call__(self, x):
    """x [B, T, width] -> [B, T, width]."""
    q, k, v = self._qkv(x)
    implementation = None if self.implementation == "auto" else self.implementation
    y = jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    return (jnp.einsum("bqhk,hkd->bqd", y, self.out_kernel[...].astype(self.dtype))
            + self.out_bias[...].astype(self.dtype))


class Block(nnx.Module):
  """Pre-norm transformer block: x + DropPath(LS(Attn(LN(x)))), then the same with the MLP."""

  def __init__(self, width, num_heads, mlp_ratio, *, drop_path=0.0, layer_scale_init=None,
               init="xavier", attention="auto", keys):
    hidden = int(width * mlp_ratio)
    self.norm1 = LayerNorm(width, keys)
    self.attn = Attention(width, num_heads, init=init, keys=keys, implementation=attention)
    self.norm2 = LayerNorm(width, keys)
    self.fc1 = Dense(width, hidden, "embed", "mlp", init, keys)
    self.fc2 = Dense(hidden, width, "mlp", "embed", init, keys)
    self.drop_path = drop_path
    if layer_scale_init is None:
      self.ls1 = self.ls2 = None
    else:  # CaiT (Touvron et al. 2021b) / DINOv2: a learned per-channel residual gain
      init = nnx.initializers.constant(layer_scale_init)
      self.ls1 = _param(init, keys, (width,), ("embed",))
      self.ls2 = _param(init, keys, (width,), ("embed",))

  def _residual(self, x, y, gamma, rng, drop_rate):
    if gamma is not None:
      y = y * gamma[...].astype(y.dtype)
    if rng is not None and (drop_rate is not None or self.drop_path > 0):
      y = drop_path(y, self.drop_path if drop_rate is None else drop_rate, rng)
    return x + y

  def forward(self, x, rng=None, drop_rate=None):
    """x [B, T, width] -> (the block's output, its MLP's output before the residual sum and
    LayerScale: data2vec 2.0's per-layer targets, fairseq's AltBlock with ffn_targets).
    `drop_rate` (a scalar, possibly traced) overrides the block's drop-path rate: a scanned
    stack of blocks passes each block's rate as data."""
    r1, r2 = jax.random.split(rng) if rng is not None else (None, None)
    x = self._residual(x, self.attn(self.norm1(x)), self.ls1, r1, drop_rate)
    # Exact (erf) GELU, PyTorch's nn.GELU default used by the reference ViTs.
    y = self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))
    return self._residual(x, y, self.ls2, r2, drop_rate), y

  def __call__(self, x, rng=None):
    """x [B, T, width]; `rng` (a key) switches drop-path on, None is eval mode."""
    return self.forward(x, rng)[0]


def check_attention(implementation: str, field: str = "model.vit.attention") -> str:
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"{field} must be one of {ATTENTION_IMPLEMENTATIONS}, got "
                     f"{implementation!r}")
  return implementation


def _blocks(width, depth, num_heads, mlp_ratio, drop_path_rate, layer_scale_init, init, keys,
            attention="auto"):
  # Drop-path rate grows linearly with depth, 0 for the first block (timm, DeiT, DINO, MAE).
  rates = np.linspace(0.0, drop_path_rate, depth) if depth else []
  return nnx.List([Block(width, num_heads, mlp_ratio, drop_path=float(r),
                         layer_scale_init=layer_scale_init, init=init, attention=attention,
                         keys=keys)
                   for r in rates])


def _block_forward(block, x, rng, drop_rate=None):
  return block.forward(x, rng, drop_rate)


def _run_blocks(blocks, x, rng, remat="none"):
  for i, block in enumerate(blocks):
    x = remat_call(_block_forward, remat, block, x,
                   None if rng is None else jax.random.fold_in(rng, i))[0]
  return x


class ScannedBlocks(nnx.Module):
  """Identical transformer blocks run by `jax.lax.scan`: one block's program, compiled once
  instead of `depth` times (MaxText's scanned layers). Built from the unscanned blocks, so a
  model initialises to the same values either way; every parameter gains a leading [depth] axis
  (logical name None: layers are never sharded). Each block's drop-path rate is scanned as data.
  `stack_block_params` / `unstack_block_params` convert parameter trees between the layouts.
  """

  def __init__(self, blocks: nnx.List):
    blocks = list(blocks)
    if not blocks:
      raise ValueError("model.vit.scan needs at least one block (depth >= 1)")
    graphdef, first = nnx.split(blocks[0])
    shapes = jax.tree.map(jnp.shape, first)
    for i, block in enumerate(blocks[1:], 1):
      if jax.tree.map(jnp.shape, nnx.state(block)) != shapes:
        raise ValueError(f"model.vit.scan needs identical blocks, but block {i}'s parameters "
                         f"differ from block 0's; set model.vit.scan=False")
    self.depth = len(blocks)
    self.drop_rates = tuple(float(b.drop_path) for b in blocks)

    def stacked(*variables):
      names = variables[0].get_metadata().get("out_sharding") or (None,) * variables[0].ndim
      return nnx.Param(jnp.stack([v[...] for v in variables]), out_sharding=(None, *names),
                       eager_sharding=False)

    states = [nnx.state(b) for b in blocks]
    is_param = lambda v: isinstance(v, nnx.Variable)  # noqa: E731
    self.block = nnx.merge(graphdef, jax.tree.map(stacked, *states, is_leaf=is_param))

  def __call__(self, x, rng, remat="none", *, stop=None):
    """Blocks [0, stop) (all by default) over x [B, T, width] -> (x, each block's MLP output
    stacked [n, B, T, width]); `rng` None is eval mode."""
    stop = self.depth if stop is None else stop
    graphdef, params = nnx.split(self.block)
    params = jax.tree.map(lambda p: p[:stop], params)
    rates = jnp.asarray(self.drop_rates[:stop], jnp.float32)

    def body(x, layer):
      params_i, i, rate = layer
      block = nnx.merge(graphdef, params_i)
      key = None if rng is None else jax.random.fold_in(rng, i)
      return remat_call(_block_forward, remat, block, x, key, rate)

    return jax.lax.scan(body, x, (params, jnp.arange(stop), rates))

  def layer(self, i: int) -> Block:
    """Block `i` as a module of its own (sharing no arrays with the stack)."""
    graphdef, params = nnx.split(self.block)
    return nnx.merge(graphdef, jax.tree.map(lambda p: p[i], params))


def stack_block_params(params: dict) -> dict:
  """A ViT's parameter tree (pure dict, e.g. a checkpoint's) from the unscanned layout
  (``blocks: {0: ..., 1: ...}``) to the scanned one (``blocks: {"block": stacked}``), for
  every ViT in the tree; other entries are unchanged."""
  if not isinstance(params, dict):
    return params
  out = {}
  for key, value in params.items():
    # Layer keys are ints, or digit strings in a checkpoint restored without a target.
    if key == "blocks" and isinstance(value, dict) and value and all(
        str(k).isdigit() for k in value):
      layers = [value[k] for k in sorted(value, key=int)]
      out[key] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
    else:
      out[key] = stack_block_params(value)
  return out


def unstack_block_params(params: dict) -> dict:
  """The inverse of `stack_block_params`."""
  if not isinstance(params, dict):
    return params
  out = {}
  for key, value in params.items():
    if key == "blocks" and isinstance(value, dict) and set(value) == {"block"}:
      depth = jax.tree.leaves(value["block"])[0].shape[0]
      out[key] = {i: jax.tree.map(lambda x, i=i: x[i], value["block"]) for i in range(depth)}
    else:
      out[key] = unstack_block_params(value)
  return out


def _check_width(name, width, num_heads):
  if width <= 0 or num_heads <= 0 or width % num_heads:
    raise ValueError(f"{name}: width must be a positive multiple of num_heads, got width={width}"
                     f", num_heads={num_heads}")
  if width % 4:
    raise ValueError(f"{name}: width must be divisible by 4 (2-D sin-cos position embeddings), "
                     f"got {width}")


def _pair(image_size):
  return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


class VisionTransformer(nnx.Module):
  """ViT encoder returning the final-LayerNorm tokens as a dict.

  Args:
    image_size: int or (height, width); both divisible by `patch_size`.
    patch_size: side of the square patches (16, 14 or 8 in the published models).
    width, depth, num_heads: residual width, number of blocks, attention heads.
    in_channels: image channels.
    mlp_ratio: MLP hidden width / width (4 in every ViT paper).
    class_token: prepend a learned [CLS] token (ViT, DINO, MAE); False as in I-JEPA.
    num_registers: extra learned tokens without position embedding (Darcet et al. 2024, 4 in
      their main results) that take up the high-norm "artifact" role; dropped from the features.
    pos_embed: "sincos" (fixed 2-D sine-cosine, MAE / MoCo v3 / I-JEPA) or "learned" (ViT,
      DINO; normal(0.02) initialised).
    drop_path_rate: stochastic-depth rate of the last block (linear from 0); 0.1 in DINO ViT-S
      / DeiT-S, 0 in MAE pre-training.
    layer_scale_init: None (off) or the initial LayerScale value (1e-5 in DINOv2; CaiT uses
      1e-5 to 1e-6 depending on depth).
    remat: rematerialisation of each block, one of sslx.models.util.REMAT_POLICIES.
    attention: jax.nn.dot_product_attention's implementation, one of ATTENTION_IMPLEMENTATIONS.
    scan: run the blocks as one `ScannedBlocks` (compiled once; parameters stacked).

  The compute dtype is the `dtype` attribute of its layers (sslx.models.set_compute_dtype);
  whatever it is, the outputs are float32.

  Call with images [B, H, W, C] (channels last) and optionally `patch_indices` [B, K] int: only
  those patches (row-major grid index) enter the encoder, with their own position embeddings,
  as MAE's visible patches or I-JEPA's context. Returns
    {"patches": [B, K, width] (K = N without patch_indices, in the order of patch_indices),
     "cls": [B, width] (if class_token), "registers": [B, R, width] (if num_registers),
     "pooled": [B, width] (cls if class_token, else the mean of the patch tokens),
     "layers": [depth, B, K, width] (with return_layers)}.
  `mask` [B, K] with `mask_token` [width] replaces masked patch embeddings (iBOT's student);
  `cls_attention` gives the last block's [CLS] attention maps. Indices are not range-checked
  under jit (out-of-range gathers clamp).
  """

  def __init__(self, *, image_size, patch_size: int, width: int, depth: int, num_heads: int,
               in_channels: int = 3, mlp_ratio: float = 4.0, class_token: bool = True,
               num_registers: int = 0, pos_embed: str = "sincos", drop_path_rate: float = 0.0,
               layer_scale_init: float | None = None, remat: str = "none",
               attention: str = "auto", scan: bool = False, rngs: nnx.Rngs):
    image_size = _pair(image_size)
    if patch_size <= 0 or image_size[0] % patch_size or image_size[1] % patch_size:
      raise ValueError(f"patch_size must be positive and divide image_size; got patch_size="
                       f"{patch_size}, image_size={image_size}")
    _check_width("VisionTransformer", width, num_heads)
    if depth < 0 or num_registers < 0:
      raise ValueError(f"depth and num_registers must be >= 0, got depth={depth}, "
                       f"num_registers={num_registers}")
    if pos_embed not in ("sincos", "learned"):
      raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
    if not 0.0 <= drop_path_rate < 1.0:
      raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    self.remat = check_remat(remat)
    keys = _Keys(rngs)
    self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
    self.grid_size = (image_size[0] // patch_size, image_size[1] // patch_size)
    self.num_patches = self.grid_size[0] * self.grid_size[1]
    self.width = self.num_features = width
    self.drop_path_rate = drop_path_rate
    # A stride-p convolution is a linear map of each flattened patch; as a Linear it lets
    # patch_indices select patches before any compute.
    self.patch_embed = Dense(patch_size * patch_size * in_channels, width, "patch", "embed",
                             "xavier", keys)
    self.cls_token = (_param(_TOKEN_INIT, keys, (1, 1, width), (None, None, "embed"))
                      if class_token else None)
    # DINOv2 initialises registers with normal(1e-6) (dinov2/models/vision_transformer.py).
    self.registers = (_param(nnx.initializers.normal(1e-6), keys, (1, num_registers, width),
                             (None, None, "embed")) if num_registers else None)
    self.pos_embed = (_param(_TOKEN_INIT, keys, (self.num_patches, width), (None, "embed"))
                      if pos_embed == "learned" else None)
    self.blocks = _blocks(width, depth, num_heads, mlp_ratio, drop_path_rate, layer_scale_init,
                          "xavier", keys, attention)
    if scan:
      self.blocks = ScannedBlocks(self.blocks)
    self.depth = depth
    self.norm = LayerNorm(width, keys)

  def position_embeddings(self):
    """[N, width], one row per patch in row-major grid order."""
    if self.pos_embed is not None:
      return self.pos_embed[...]
    return jnp.asarray(sincos_pos_embed_2d(self.width, self.grid_size))

  def _tokens(self, images, patch_indices, mask, mask_token):
    """The transformer's input: [prefix tokens, patch embeddings + positions], and the number
    of prefix ([CLS], register) tokens."""
    expected = self.image_size + (self.in_channels,)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
      raise ValueError(f"images must be [B, {expected[0]}, {expected[1]}, {expected[2]}], got "
                       f"shape {images.shape}")
    batch = images.shape[0]
    x = patchify(images, self.patch_size)  # [B, N, p*p*C]
    pos = self.position_embeddings()
    if patch_indices is not None:
      patch_indices = jnp.asarray(patch_indices)
      _check_indices("patch_indices", patch_indices, batch, self.num_patches)
      x = _gather_tokens(x, patch_indices)
      pos = _gather_tokens(pos, patch_indices)
    x = self.patch_embed(x)
    if (mask is None) != (mask_token is None):
      raise ValueError("mask and mask_token must be given together (got only "
                       f"{'mask' if mask is not None else 'mask_token'})")
    if mask is not None:
      mask, mask_token = jnp.asarray(mask), jnp.asarray(mask_token)
      if mask.shape != x.shape[:2]:
        raise ValueError(f"mask must be [B, K] = {x.shape[:2]} (one entry per patch entering "
                         f"the encoder), got shape {mask.shape}")
      if mask_token.shape != (self.width,):
        raise ValueError(f"mask_token must be [width] = ({self.width},), got shape "
                         f"{mask_token.shape}")
      # iBOT's masked image modelling (prepare_tokens / mask_model): the masked patches'
      # embeddings become the mask token before the position embeddings are added.
      x = jnp.where(mask[..., None], mask_token.astype(x.dtype), x)
    x = x + pos.astype(x.dtype)
    prefix = []
    if self.cls_token is not None:
      prefix.append(jnp.broadcast_to(self.cls_token[...], (batch, 1, self.width)))
    if self.registers is not None:
      prefix.append(jnp.broadcast_to(self.registers[...], (batch,) + self.registers.shape[1:]))
    prefix = [p.astype(x.dtype) for p in prefix]
    return jnp.concatenate(prefix + [x], axis=1), sum(p.shape[1] for p in prefix)

  def __call__(self, images, *, patch_indices=None, mask=None, mask_token=None,
               return_layers: bool = False, train: bool = False, rng=None):
    """See the class docstring. `mask` [B, K] bool with `mask_token` [width]: the embeddings of
    the masked patches are replaced by the token (iBOT's student). `return_layers` adds
    "layers": [depth, B, K, width], each block's MLP output at the patch tokens (data2vec
    2.0's targets)."""
    if train and self.drop_path_rate > 0 and rng is None:
      raise ValueError("rng (a PRNG key) is required when train=True and drop_path_rate > 0")
    x, num_prefix = self._tokens(images, patch_indices, mask, mask_token)
    rng = rng if train and self.drop_path_rate > 0 else None
    if isinstance(self.blocks, ScannedBlocks):
      x, layers = self.blocks(x, rng, self.remat)  # layers: [depth, B, T, width]
    else:
      layers = []
      for i, block in enumerate(self.blocks):
        x, ffn = remat_call(_block_forward, self.remat, block, x,
                            None if rng is None else jax.random.fold_in(rng, i))
        layers.append(ffn)
    # Float32 out whatever the compute dtype: heads, targets and losses read these.
    x = self.norm(x).astype(jnp.float32)
    out = {"patches": x[:, num_prefix:]}
    if self.cls_token is not None:
      out["cls"] = x[:, 0]
    if self.registers is not None:
      out["registers"] = x[:, num_prefix - self.registers.shape[1]:num_prefix]
    out["pooled"] = out["cls"] if "cls" in out else jnp.mean(out["patches"], axis=1)
    if return_layers:  # unused MLP outputs are dropped by the compiler
      out["layers"] = jnp.stack(layers)[:, :, num_prefix:].astype(jnp.float32)
    return out

  def cls_attention(self, images):
    """The last block's attention from the [CLS] token to every patch, per head: images
    [B, H, W, C] (normalised) -> [B, heads, N] (each row sums to 1 with the prefix tokens'
    share). DINO's attention maps (Caron et al. 2021, Fig. 1 / visualize_attention.py)."""
    if self.cls_token is None or not self.depth:
      raise ValueError("cls_attention needs a ViT with a class token and at least one block")
    x, num_prefix = self._tokens(images, None, None, None)
    if isinstance(self.blocks, ScannedBlocks):
      x = self.blocks(x, None, stop=self.depth - 1)[0]
      last = self.blocks.layer(self.depth - 1)
    else:
      for i in range(self.depth - 1):
        x = self.blocks[i](x)
      last = self.blocks[self.depth - 1]
    return last.attn.weights(last.norm1(x))[:, :, 0, num_prefix:]


def vit(variant: str | None = None, *, image_size=224, in_channels: int = 3,
        patch_size: int | None = None, width: int | None = None, depth: int | None = None,
        num_heads: int | None = None, rngs: nnx.Rngs, **kwargs) -> VisionTransformer:
  """A named ViT ("Ti/16", "S/16", "B/16", "L/16", "H/14", any of Ti/S/B/L/H with 16/14/8), or
  an explicit one (variant=None with patch_size, width, depth, num_heads). Explicit arguments
  override the variant's. Other keyword arguments go to VisionTransformer.

  >>> from flax import nnx
  >>> model = vit("Ti/16", image_size=32, rngs=nnx.Rngs(0))
  >>> (model.width, model.depth, model.num_patches)
  (192, 12, 4)
  """
  if variant is not None:
    match = re.fullmatch(r"(Ti|S|B|L|H)/(\d+)", variant)
    if not match or int(match.group(2)) not in PATCH_SIZES:
      raise ValueError(f"variant must be '<{'|'.join(VARIANTS)}>/<{'|'.join(map(str, PATCH_SIZES))}"
                       f">' (e.g. 'B/16'), got {variant!r}")
    w, d, h = VARIANTS[match.group(1)]
    width, depth, num_heads = width or w, depth if depth is not None else d, num_heads or h
    patch_size = patch_size or int(match.group(2))
  missing = [n for n, v in (("patch_size", patch_size), ("width", width), ("depth", depth),
                            ("num_heads", num_heads)) if v is None]
  if missing:
    raise ValueError(f"vit() without a variant needs {', '.join(missing)}")
  return VisionTransformer(image_size=image_size, patch_size=patch_size, width=width,
                           depth=depth, num_heads=num_heads, in_channels=in_channels, rngs=rngs,
                           **kwargs)


def _init_mask_token_transformer(module, encoder_width, grid_size, width, depth, num_heads,
                                 mlp_ratio, init, mask_token_init, keys, remat="none",
                                 attention="auto"):
  """The parts the MAE decoder and the I-JEPA predictor share: encoder tokens embedded to a
  narrower width, a learned mask token for the positions to predict, and pre-norm blocks."""
  module.grid_size = _pair(grid_size)
  module.num_patches = module.grid_size[0] * module.grid_size[1]
  module.width = width
  module.embed = Dense(encoder_width, width, "embed", "embed", init, keys)
  module.mask_token = _param(mask_token_init, keys, (width,), ("embed",))
  module.blocks = _blocks(width, depth, num_heads, mlp_ratio, 0.0, None, init, keys, attention)
  module.remat = check_remat(remat)
  module.norm = LayerNorm(width, keys)


class MAEDecoder(nnx.Module):
  """The masked autoencoder's decoder (He et al. 2022, facebookresearch/mae models_mae.py).

  Visible encoder tokens are embedded to the decoder width, a shared learned mask token fills
  every masked position, fixed sin-cos position embeddings are added, and a light transformer
  predicts each patch's p*p*C pixels. Defaults: width 512, 8 blocks (He et al. 2022 Table 1(a),
  1(b)), 16 heads (models_mae.py `mae_vit_*_dec512d8b`). `remat` and `attention` as the
  encoder's (VisionTransformer); the predictions are float32.

  Call with patches [B, K, encoder_width] (the encoder's "patches"), visible_indices [B, K] (the
  grid positions they came from, distinct) and cls [B, encoder_width] or None. Returns
  predictions [B, N, p*p*C] for all N patches in grid order (the layout of
  sslx.losses.patchify), the target of sslx.losses.mae.
  """

  def __init__(self, *, encoder_width: int, grid_size, patch_size: int, in_channels: int = 3,
               width: int = 512, depth: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0,
               remat: str = "none", attention: str = "auto", rngs: nnx.Rngs):
    _check_width("MAEDecoder", width, num_heads)
    keys = _Keys(rngs)
    _init_mask_token_transformer(self, encoder_width, grid_size, width, depth, num_heads,
                                 mlp_ratio, "xavier", _TOKEN_INIT, keys, remat, attention)
    self.pred = Dense(width, patch_size * patch_size * in_channels, "embed", "patch", "xavier",
                      keys)

  def __call__(self, patches, visible_indices, cls=None):
    batch, k, _ = patches.shape
    visible_indices = jnp.asarray(visible_indices)
    _check_indices("visible_indices", visible_indices, batch, self.num_patches)
    if visible_indices.shape[1] != k:
      raise ValueError(f"visible_indices must be [B, {k}] like patches, got "
                       f"{visible_indices.shape}")
    # MAE's "unshuffle": mask tokens everywhere, then each visible token back at its position.
    embedded = self.embed(patches)
    full = jnp.broadcast_to(self.mask_token[...].astype(embedded.dtype),
                            (batch, self.num_patches, self.width))
    full = full.at[jnp.arange(batch)[:, None], visible_indices].set(embedded)
    x = full + jnp.asarray(sincos_pos_embed_2d(self.width, self.grid_size), embedded.dtype)
    if cls is not None:  # the class token takes part (no position embedding) but is not decoded
      x = jnp.concatenate([self.embed(cls)[:, None], x], axis=1)
    x = self.norm(_run_blocks(self.blocks, x, None, self.remat))
    return self.pred(x[:, 1:] if cls is not None else x).astype(jnp.float32)


class IJEPAPredictor(nnx.Module):
  """I-JEPA's predictor (Assran et al. 2023; facebookresearch/ijepa `VisionTransformerPredictor`).

  A narrow ViT over the embedded context tokens plus one mask token per target position, each
  with the fixed sin-cos position embedding of its grid position; the outputs at the target
  tokens are projected back to the encoder width. Defaults follow the ViT-H/14 config
  (configs/in1k_vith14_ep300.yaml: pred_emb_dim 384, pred_depth 12) with the encoder's 16 heads
  (src/helper.py passes num_heads=encoder.num_heads).

  Call with context [B, Kc, encoder_width] (encoder "patches"), context_indices [B, Kc] and
  target_indices [B, Kt]; returns predictions [B, Kt, encoder_width] in target_indices order.
  For several target blocks per image, repeat the context along the batch (as I-JEPA does).
  `remat` and `attention` as the encoder's; the predictions are float32.
  """

  def __init__(self, *, encoder_width: int, grid_size, width: int = 384, depth: int = 12,
               num_heads: int = 16, mlp_ratio: float = 4.0, remat: str = "none",
               attention: str = "auto", rngs: nnx.Rngs):
    _check_width("IJEPAPredictor", width, num_heads)
    keys = _Keys(rngs)
    _init_mask_token_transformer(self, encoder_width, grid_size, width, depth, num_heads,
                                 mlp_ratio, "trunc_normal", _kernel_init("trunc_normal"), keys,
                                 remat, attention)
    self.proj = Dense(width, encoder_width, "embed", "embed", "trunc_normal", keys)

  def __call__(self, context, context_indices, target_indices):
    batch, kc, _ = context.shape
    context_indices, target_indices = jnp.asarray(context_indices), jnp.asarray(target_indices)
    _check_indices("context_indices", context_indices, batch, self.num_patches)
    _check_indices("target_indices", target_indices, batch, self.num_patches)
    if context_indices.shape[1] != kc:
      raise ValueError(f"context_indices must be [B, {kc}] like context, got "
                       f"{context_indices.shape}")
    ctx = self.embed(context)
    pos = jnp.asarray(sincos_pos_embed_2d(self.width, self.grid_size), ctx.dtype)
    ctx = ctx + _gather_tokens(pos, context_indices)
    tgt = self.mask_token[...].astype(ctx.dtype) + _gather_tokens(pos, target_indices)
    x = self.norm(_run_blocks(self.blocks, jnp.concatenate([ctx, tgt], axis=1), None,
                              self.remat))
    return self.proj(x[:, kc:]).astype(jnp.float32)
