"""data2vec 2.0 (Baevski et al. 2023): the student ViT encodes only the visible 20% of the patches
of several differently masked copies of each image; a convolutional decoder predicts, at every
patch, the EMA teacher's contextualised target, the average of its top-k blocks' outputs on the
whole image (`sslx.losses.data2vec`, instance norm per block, layer norm of the average).

As fairseq examples/data2vec/models/data2vec2.py for images: one augmented view per image, the
teacher run once on it (every block's MLP output kept, `VisionTransformer(return_layers=True)`),
the student on `num_masks` inverse-block masks of that view ("clone_batch"), the squared error
summed over features / sqrt(D) and averaged over masked patches, plus `cls_loss` times the same
error between the student's [CLS] token and the mean of the targets over the patches.

The representation for kNN / linear probing (`Method.apply`) is the student encoder on all
patches, its mean patch token: the paper reports no linear probe, and fairseq's image
fine-tuning (MaeImageClassificationModel, prediction_mode mean_pooling) pools the patch tokens.
"""

import jax
import jax.numpy as jnp
from flax import nnx

# The collapse metric MAE and I-JEPA log (mean std of the l2-normalised features), not a copy.
from sslx import experiment
from sslx.data import augment
from sslx.data.masks import block_mask_batch, indices_to_mask
from sslx.losses import data2vec, data2vec_targets
from sslx.method import Method
from sslx.models import Backbone
from sslx.models.vit import sincos_pos_embed_2d


class GroupedConv(nnx.Module):
  """A k x k 'SAME' convolution with `groups` channel groups, as k * k shifted copies and one
  einsum: XLA's CPU grouped convolution (feature_group_count) and its gradient took minutes
  per step at batch 256 on the 2-core CPU. Kernel init as PyTorch's Conv2d fan-in (lecun)."""

  def __init__(self, width: int, kernel: int, groups: int, *, rngs: nnx.Rngs):
    self.kernel_size, self.groups = kernel, groups
    per_group = width // groups
    init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=(0, 2),
                                             out_axis=3)
    self.kernel = nnx.Param(init(rngs.params(), (kernel * kernel, groups, per_group, per_group)))
    self.bias = nnx.Param(jnp.zeros((width,)))
    self.dtype = jnp.float32  # compute dtype, set by sslx.models.set_compute_dtype

  def __call__(self, x):
    """x [B, H, W, C] -> [B, H, W, C]."""
    batch, height, width, channels = x.shape
    k, pad = self.kernel_size, self.kernel_size // 2
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    shifts = jnp.stack([padded[:, i:i + height, j:j + width] for i in range(k) for j in range(k)],
                       axis=3)  # [B, H, W, k*k, C]
    shifts = shifts.reshape(batch, height, width, k * k, self.groups, channels // self.groups)
    y = jnp.einsum("bhwkgc,kgcd->bhwgd", shifts.astype(self.dtype),
                   self.kernel[...].astype(self.dtype))
    return y.reshape(batch, height, width, channels) + self.bias[...].astype(self.dtype)


class ConvDecoder(nnx.Module):
  """data2vec 2.0's image decoder (fairseq Decoder2d): the encoder tokens projected to `width`,
  then `depth` residual blocks of [grouped conv k x k, LayerNorm over channels, GELU] on the
  patch grid, and a linear projection back to the encoder width."""

  def __init__(self, *, encoder_width: int, grid_size, width: int, depth: int, kernel: int,
               groups: int, rngs: nnx.Rngs):
    if width % groups or width % 4:
      raise ValueError(f"decoder.width must be a multiple of decoder.groups and of 4, got width="
                       f"{width}, groups={groups}")
    self.grid_size, self.width = tuple(grid_size), width
    self.embed = nnx.Linear(encoder_width, width, rngs=rngs)
    self.convs = nnx.List([GroupedConv(width, kernel, groups, rngs=rngs) for _ in range(depth)])
    self.norms = nnx.List([nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs) for _ in range(depth)])
    self.proj = nnx.Linear(width, encoder_width, rngs=rngs)

  def __call__(self, tokens, visible_indices, noise):
    """tokens [B, K, encoder_width] at visible_indices [B, K]; noise [B, N, width] fills the
    masked positions. Returns predictions [B, N, encoder_width] in grid order."""
    batch = tokens.shape[0]
    embedded = self.embed(tokens)  # in the compute dtype, which the whole decoder keeps
    x = noise.astype(embedded.dtype).at[jnp.arange(batch)[:, None], visible_indices].set(embedded)
    x = x + jnp.asarray(sincos_pos_embed_2d(self.width, self.grid_size), x.dtype)
    x = x.reshape(batch, *self.grid_size, self.width)
    for conv, norm in zip(self.convs, self.norms):
      x = x + jax.nn.gelu(norm(conv(x)), approximate=False)
    return self.proj(x.reshape(batch, -1, self.width)).astype(jnp.float32)


class Data2VecModel(nnx.Module):
  """The student encoder (`Backbone`) and the decoder; the teacher is an EMA copy of `encoder`
  kept in the variables' state."""

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    vit = self.encoder.net
    d = config.decoder
    self.decoder = ConvDecoder(encoder_width=vit.width, grid_size=vit.grid_size, width=d.width,
                               depth=d.depth, kernel=d.kernel, groups=d.groups, rngs=rngs)


def _check_config(config) -> None:
  if config.model.name != "vit":
    raise ValueError(f"config.model.name must be 'vit' for data2vec (the student encodes the "
                     f"visible patches only), got {config.model.name!r}")
  m = config.data2vec
  if not 0.0 < m.mask_ratio < 1.0:
    raise ValueError(f"config.data2vec.mask_ratio must be in (0, 1), got {m.mask_ratio!r}")
  for field in ("num_masks", "min_block_patches", "top_k"):
    experiment.check_positive(f"config.data2vec.{field}", m[field])
  experiment.check_non_negative("config.data2vec.cls_loss", m.cls_loss)
  experiment.check_non_negative("config.data2vec.mask_noise_std", m.mask_noise_std)
  if m.cls_loss > 0 and not config.model.vit.class_token:
    raise ValueError(f"config.data2vec.cls_loss={m.cls_loss} needs config.model.vit.class_token="
                     f"True (the [CLS] token regresses the mean target); set cls_loss=0 without "
                     f"one")


def _network(config):
  _check_config(config)
  images = experiment.images_for(config)
  net = experiment.Network(lambda rngs: Data2VecModel(config, images.view_shape, rngs=rngs),
                           dtype=config.model.dtype)
  vit = net.abstract.encoder.net
  depth, top_k = vit.depth, config.data2vec.top_k
  if top_k > depth:
    raise ValueError(f"config.data2vec.top_k must be at most the encoder's depth {depth}, got "
                     f"{top_k}")
  return images, net


def num_visible(config, num_patches: int) -> int:
  """Patches each mask leaves visible: round((1 - mask_ratio) N), at least 1."""
  return max(1, round((1.0 - config.data2vec.mask_ratio) * num_patches))


def draw_masks(config, rng, batch_size: int, grid_size):
  """Inverse block masks: the visible patches form blocks (BEiT's block sampler run for the
  visible count), topped up or cut at random to exactly `num_visible` so shapes stay static.

  Returns (visible_indices [B, K] ascending, mask [B, N] bool, True where masked)."""
  height, width = grid_size
  num_patches = height * width
  k = num_visible(config, num_patches)
  block_rng, fill_rng = jax.random.split(rng)
  blocks = block_mask_batch(
      block_rng, batch_size, grid_size, k,
      min_num_patches=min(config.data2vec.min_block_patches, k, (height - 1) * (width - 1)))
  # Block patches first (score >= 1), then random others; a block area above k is cut at random.
  score = blocks.reshape(batch_size, num_patches) + jax.random.uniform(
      fill_rng, (batch_size, num_patches))
  visible = jnp.sort(jax.lax.top_k(score, k)[1], axis=-1).astype(jnp.int32)
  return visible, ~indices_to_mask(visible, num_patches)


def get_method(config) -> Method:
  images, net = _network(config)
  m = config.data2vec
  # No BatchNorm anywhere: the variables are the parameters and the teacher encoder.
  no_batch_stats = {}

  def init(rng, batch):
    del batch
    params = net.init(rng)["params"]
    # The teacher starts as a copy of the student encoder.
    return {"params": params, "teacher": {"params": jax.tree.map(jnp.copy, params["encoder"])}}

  def apply(variables, x):
    model = net.merge(variables["params"], no_batch_stats)
    out = model.encoder.net(images.for_eval(x), train=False)
    return jnp.mean(out["patches"], axis=1)

  def loss(params, variables, batch, rng):
    view_rng, mask_rng, noise_rng, encoder_rng = jax.random.split(rng, 4)
    (view,) = augment.augment_views(view_rng, batch["image"], [config.augment.to_dict()])
    view = images.normalize(view)
    model = net.merge(params, no_batch_stats)
    vit = model.encoder.net
    # The teacher: every block's output on the whole view, once per image, no gradient.
    teacher = net.merge({**params, "encoder": variables["teacher"]["params"]}, no_batch_stats)
    layers = jax.lax.stop_gradient(
        teacher.encoder.net(view, return_layers=True, train=False)["layers"])  # [L, B, N, D]
    # The student: num_masks masked copies of each image, image-major ("clone_batch").
    clones = jnp.repeat(view, m.num_masks, axis=0)
    visible, mask = draw_masks(config, mask_rng, clones.shape[0], vit.grid_size)
    out = vit(clones, patch_indices=visible, train=True, rng=encoder_rng)
    noise = m.mask_noise_std * jax.random.normal(
        noise_rng, (clones.shape[0], vit.num_patches, model.decoder.width))
    pred = model.decoder(out["patches"], visible, noise)  # [B * M, N, D]
    targets_per_clone = jnp.repeat(layers, m.num_masks, axis=1)
    value = patch_loss = data2vec(pred, targets_per_clone, mask, top_k=m.top_k)
    metrics = {"train/patch_loss": patch_loss,
               "train/embedding_std": experiment.embedding_std(jnp.mean(out["patches"], axis=1))}
    if m.cls_loss > 0:
      # The [CLS] token regresses the mean over patches of the (normalised) targets, through
      # the same squared error (the targets given as one layer, no further normalisation).
      mean_target = jnp.mean(data2vec_targets(layers, m.top_k), axis=1)  # [B, D]
      mean_target = jnp.repeat(mean_target, m.num_masks, axis=0)
      cls_loss = data2vec(out["cls"][:, None], mean_target[None, :, None],
                          jnp.ones((clones.shape[0], 1), bool), per_layer_norm=None,
                          final_norm=None)
      value = value + m.cls_loss * cls_loss
      metrics["train/cls_loss"] = cls_loss
    return value, {"metrics": metrics, "state": {"teacher": variables["teacher"]}}

  return Method(init=init, apply=apply, loss=loss, param_axes=net.param_axes,
                after_update=experiment.ema_teacher_update(config, lambda p: p["encoder"]))

