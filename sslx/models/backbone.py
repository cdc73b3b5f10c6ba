"""The encoder a method trains, built from `config.model`, so any method can use any backbone
(ResNet or ViT) on any dataset: images [B, H, W, C] -> features [B, num_features].
"""

from typing import Any

import ml_collections
from flax import nnx

from sslx.models.resnet import resnet
from sslx.models.util import check_remat, compute_dtype
from sslx.models.vit import check_attention, vit

BACKBONES = ("resnet", "vit")


def backbone_config(name: str = "resnet") -> ml_collections.ConfigDict:
  """Every field `Backbone` reads, with defaults; `name` picks which sub-config is used.

  Both sub-configs are always present so the command line can switch backbone:
  ``--config.model.name=vit --config.model.vit.variant=S/16``.
  """
  c = ml_collections.ConfigDict()
  c.name = name
  # Compute dtype of convolutions, matmuls and attention (float32 | bfloat16). Parameters,
  # optimizer state, EMA teachers, normalisation statistics, softmax and losses stay float32.
  c.dtype = "float32"
  # Rematerialisation per ResNet / ViT block: none | block (recompute the whole block in the
  # backward pass) | a jax.checkpoint_policies name (e.g. dots_with_no_batch_dims_saveable).
  c.remat = "none"
  r = c.resnet = ml_collections.ConfigDict()
  r.depth = 0  # 0: stage_sizes / block below; 18, 34, 50, 101, 152, 200: the published ResNets
  r.stage_sizes = (2, 2, 2, 2)
  r.block = "basic"  # basic | bottleneck
  r.width = 64  # channels of the first stage (x2 per stage; x4 more in bottleneck blocks)
  r.stem = "cifar"  # cifar (3x3, no pool) | imagenet (7x7 stride 2, max-pool) | resnet_d
  r.stem_stride = 0  # 0: the stem's default (1 for cifar, 2 otherwise)
  r.zero_init_residual = False
  # ResNet-RS options (Bello et al. 2021): resnet_d stem and shortcut, SE 0.25, stochastic depth.
  r.resnet_d_shortcut = False
  r.se_ratio = 0.0
  r.stochastic_depth = 0.0
  v = c.vit = ml_collections.ConfigDict()
  v.variant = "S/16"  # Ti|S|B|L|H / 16|14|8; "" for the explicit sizes below
  v.patch_size = 0  # 0: the variant's
  v.width = 0
  v.depth = -1  # -1: the variant's (0 is a valid depth for tests)
  v.num_heads = 0
  v.class_token = True
  v.num_registers = 0
  v.pos_embed = "sincos"  # sincos | learned
  v.drop_path_rate = 0.0
  v.layer_scale_init = 0.0  # 0: no LayerScale
  # auto (jax.nn.dot_product_attention picks: cuDNN flash attention on GPU when it applies) |
  # xla | cudnn (forced; fails where cuDNN cannot run it).
  v.attention = "auto"
  # Run the identical blocks through one scanned block (compiled once, not depth times); the
  # parameters are then stacked [depth, ...] under "blocks" (see sslx.models.vit).
  v.scan = False
  return c


class Backbone(nnx.Module):
  """A ResNet or a ViT chosen by `config.name`, returning pooled features.

  The ViT's pooled feature is its [CLS] token (the mean patch token without one), the
  representation kNN / linear evaluation and SimCLR-style projectors use. Methods that need the
  tokens (MAE, I-JEPA, iBOT) call `self.net` directly.
  """

  def __init__(self, config: Any, image_shape: tuple[int, int, int], *, rngs: nnx.Rngs):
    name = config.name
    if name not in BACKBONES:
      raise ValueError(f"model.name must be one of {BACKBONES}, got {name!r}")
    compute_dtype(config.dtype)  # a bad name fails here, before any compute
    check_remat(config.remat)
    check_attention(config.vit.attention)
    if config.vit.attention == "cudnn" and config.dtype != "bfloat16":
      raise ValueError("model.vit.attention='cudnn' needs model.dtype='bfloat16' (cuDNN's fused "
                       f"attention runs in 16-bit), got model.dtype={config.dtype!r}")
    height, width, channels = image_shape
    self.kind = name
    if name == "resnet":
      r = config.resnet
      self.net = resnet(channels, depth=r.depth or None, stage_sizes=r.stage_sizes,
                        block=r.block, width=r.width, stem=r.stem,
                        zero_init_residual=r.zero_init_residual,
                        stem_stride=r.stem_stride or None, resnet_d_shortcut=r.resnet_d_shortcut,
                        se_ratio=r.se_ratio, stochastic_depth=r.stochastic_depth,
                        remat=config.remat, rngs=rngs)
    else:
      v = config.vit
      self.net = vit(v.variant or None, image_size=(height, width), in_channels=channels,
                     patch_size=v.patch_size or None, width=v.width or None,
                     depth=None if v.depth < 0 else v.depth, num_heads=v.num_heads or None,
                     class_token=v.class_token, num_registers=v.num_registers,
                     pos_embed=v.pos_embed, drop_path_rate=v.drop_path_rate,
                     layer_scale_init=v.layer_scale_init or None, remat=config.remat,
                     attention=v.attention, scan=v.scan, rngs=rngs)
    self.num_features = self.net.num_features

  def __call__(self, images, *, train: bool, rng=None):
    """images [B, H, W, C] (normalised floats) -> [B, num_features]. `rng` drives stochastic
    depth / drop-path in training (needed only when those are on)."""
    out = self.net(images, train=train, rng=rng)
    return out["pooled"] if self.kind == "vit" else out
