"""ResNet encoders as Flax NNX modules: CIFAR-style stem for small images, ImageNet stem for
large ones, basic or bottleneck blocks, configurable width and depth.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# Stage sizes of the published depths (He et al. 2016); "basic" blocks up to 34, bottleneck above.
STAGE_SIZES = {
    18: ((2, 2, 2, 2), "basic"),
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
    101: ((3, 4, 23, 3), "bottleneck"),
    152: ((3, 8, 36, 3), "bottleneck"),
    200: ((3, 24, 36, 3), "bottleneck"),
}

_BN_MOMENTUM = 0.9  # PyTorch's 0.1 update rate, as in the reference SSL code bases.


def _batch_norm(features, rngs, zero_scale=False):
  return nnx.BatchNorm(
      features,
      momentum=_BN_MOMENTUM,
      epsilon=1e-5,
      scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones,
      rngs=rngs,
  )


def _conv(in_features, out_features, kernel, stride, rngs):
  return nnx.Conv(
      in_features,
      out_features,
      (kernel, kernel),
      strides=stride,
      padding="SAME",
      use_bias=False,  # followed by BatchNorm, whose bias makes this one redundant
      kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
      rngs=rngs,
  )


class BasicBlock(nnx.Module):
  expansion = 1

  def __init__(self, in_features, features, stride, *, zero_init_residual, rngs):
    self.conv1 = _conv(in_features, features, 3, stride, rngs)
    self.bn1 = _batch_norm(features, rngs)
    self.conv2 = _conv(features, features, 3, 1, rngs)
    self.bn2 = _batch_norm(features, rngs, zero_scale=zero_init_residual)
    if stride != 1 or in_features != features:  # projection shortcut when the shape changes
      self.shortcut_conv = _conv(in_features, features, 1, stride, rngs)
      self.shortcut_bn = _batch_norm(features, rngs)
    else:
      self.shortcut_conv = self.shortcut_bn = None

  def __call__(self, x, train):
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
    y = self.bn2(self.conv2(y), use_running_average=not train)
    if self.shortcut_conv is not None:
      x = self.shortcut_bn(self.shortcut_conv(x), use_running_average=not train)
    return jax.nn.relu(x + y)


class BottleneckBlock(nnx.Module):
  expansion = 4

  def __init__(self, in_features, features, stride, *, zero_init_residual, rngs):
    out = features * self.expansion
    self.conv1 = _conv(in_features, features, 1, 1, rngs)
    self.bn1 = _batch_norm(features, rngs)
    self.conv2 = _conv(features, features, 3, stride, rngs)
    self.bn2 = _batch_norm(features, rngs)
    self.conv3 = _conv(features, out, 1, 1, rngs)
    self.bn3 = _batch_norm(out, rngs, zero_scale=zero_init_residual)
    if stride != 1 or in_features != out:  # projection shortcut when the shape changes
      self.shortcut_conv = _conv(in_features, out, 1, stride, rngs)
      self.shortcut_bn = _batch_norm(out, rngs)
    else:
      self.shortcut_conv = self.shortcut_bn = None

  def __call__(self, x, train):
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
    y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average=not train))
    y = self.bn3(self.conv3(y), use_running_average=not train)
    if self.shortcut_conv is not None:
      x = self.shortcut_bn(self.shortcut_conv(x), use_running_average=not train)
    return jax.nn.relu(x + y)


class ResNet(nnx.Module):
  """ResNet trunk returning globally pooled features [B, num_features].

  Args:
    in_channels: channels of the input images.
    stage_sizes: blocks per stage; the first stage keeps the resolution, each later one halves it.
    block: "basic" or "bottleneck".
    width: channels of the first stage (64 in the paper); stage i has width * 2**i.
    stem: "cifar" (3x3 conv, stride 1, no max-pool: for 28-64 pixel images) or "imagenet"
      (7x7 conv stride 2 and 3x3 max-pool).
    zero_init_residual: start each residual branch at zero (last BN scale 0), Goyal et al. 2017.
    stem_stride: stride of the stem convolution (default 1 for "cifar", 2 for "imagenet"); 2 on a
      "cifar" stem quarters the cost of a small-image network, which matters on CPUs.
  """

  def __init__(
      self,
      in_channels: int,
      *,
      stage_sizes: Sequence[int] = (2, 2, 2, 2),
      block: str = "basic",
      width: int = 64,
      stem: str = "cifar",
      zero_init_residual: bool = False,
      stem_stride: int | None = None,
      rngs: nnx.Rngs,
  ):
    if block not in ("basic", "bottleneck"):
      raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
    if stem not in ("cifar", "imagenet"):
      raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
    if width <= 0 or not stage_sizes or min(stage_sizes) <= 0:
      raise ValueError(
          f"width and every stage size must be positive, got width={width}, "
          f"stage_sizes={tuple(stage_sizes)}")
    block_cls = BasicBlock if block == "basic" else BottleneckBlock
    self.stem_kind = stem
    if stem_stride is None:
      stem_stride = 1 if stem == "cifar" else 2
    self.stem_conv = _conv(in_channels, width, 3 if stem == "cifar" else 7, stem_stride, rngs)
    self.stem_bn = _batch_norm(width, rngs)
    blocks = []
    features_in = width
    for i, num_blocks in enumerate(stage_sizes):
      for j in range(num_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(block_cls(features_in, width * 2**i, stride,
                                zero_init_residual=zero_init_residual, rngs=rngs))
        features_in = width * 2**i * block_cls.expansion
    self.blocks = nnx.List(blocks)
    self.num_features = features_in

  def __call__(self, x, *, train: bool):
    x = jax.nn.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    if self.stem_kind == "imagenet":
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for block in self.blocks:
      x = block(x, train)
    return jnp.mean(x, axis=(1, 2))


def resnet(in_channels: int, *, depth: int | None = None, stage_sizes=None, block=None,
           width: int = 64, stem: str = "cifar", zero_init_residual: bool = False,
           stem_stride: int | None = None, rngs: nnx.Rngs) -> ResNet:
  """A ResNet by published depth (18, 34, 50, ...) or by explicit stage sizes and block type."""
  if depth is not None:
    if depth not in STAGE_SIZES:
      raise ValueError(f"depth must be one of {sorted(STAGE_SIZES)}, got {depth}")
    stage_sizes, block = STAGE_SIZES[depth]
  if stage_sizes is None:
    raise ValueError("give either depth or stage_sizes")
  return ResNet(in_channels, stage_sizes=tuple(stage_sizes), block=block or "basic", width=width,
                stem=stem, zero_init_residual=zero_init_residual, stem_stride=stem_stride,
                rngs=rngs)
