"""ResNet encoders as Flax NNX modules (CIFAR / ImageNet / ResNet-D stems, any depth and width,
ResNet-RS options: squeeze-excite, stochastic depth) and per-device BatchNorm for MoCo-style runs.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from sslx.models.util import check_remat, remat_call

# Stage sizes of the published depths (He et al. 2016, Table 1; 200 from He et al. 2016b,
# "Identity Mappings"); "basic" blocks up to 34, bottleneck above.
STAGE_SIZES = {
    18: ((2, 2, 2, 2), "basic"),
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
    101: ((3, 4, 23, 3), "bottleneck"),
    152: ((3, 8, 36, 3), "bottleneck"),
    200: ((3, 24, 36, 3), "bottleneck"),
}

STEMS = ("cifar", "imagenet", "resnet_d")

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


class SqueezeExcite(nnx.Module):
  """Channel gating of Hu et al. 2018: ``x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2)``.

  The bottleneck has ``max(1, int(features * ratio))`` units, as in ResNet-RS (Bello et al.
  2021, ratio 0.25 of the block's output channels; tensorflow/tpu resnet_layers.py). The two
  1x1 convolutions act on a 1x1 map, so they are written as Linear layers (same parameters).
  """

  def __init__(self, features: int, ratio: float, *, rngs: nnx.Rngs):
    reduced = max(1, int(features * ratio))
    self.reduce = nnx.Linear(features, reduced, rngs=rngs)
    self.expand = nnx.Linear(reduced, features, rngs=rngs)

  def __call__(self, x):
    """x: [B, H, W, C] -> [B, H, W, C]."""
    gate = self.expand(jax.nn.relu(self.reduce(jnp.mean(x, axis=(1, 2)))))
    return x * jax.nn.sigmoid(gate)[:, None, None, :]


def drop_path(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """Stochastic depth (Huang et al. 2016) on a residual branch ``x`` [B, ...].

  Each example's branch is zeroed with probability ``rate`` and otherwise scaled by
  ``1 / (1 - rate)``, so its expectation is unchanged and evaluation needs no rescaling (the
  "drop connect" of tensorflow/tpu resnet_layers.py, timm's DropPath).
  """
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  # The scale is cast to x's dtype: a rate traced as float32 (a scanned ViT's) must not promote
  # a bfloat16 residual stream to float32.
  return x * jnp.where(mask, 1.0 / keep, 0.0).astype(x.dtype)


class _Block(nnx.Module):
  """Shared tail of both block kinds: shortcut, squeeze-excite, stochastic depth, sum, ReLU."""

  def _init_tail(self, in_features, out, stride, se_ratio, resnet_d_shortcut, drop_rate, rngs):
    self.drop_rate = drop_rate
    self.avg_down = bool(resnet_d_shortcut and stride > 1)
    self.se = SqueezeExcite(out, se_ratio, rngs=rngs) if se_ratio > 0 else None
    if stride != 1 or in_features != out:  # projection shortcut when the shape changes
      # ResNet-D (He et al. 2019, "Bag of Tricks", Fig. 2c): a strided 1x1 conv ignores 3/4 of
      # the input; average-pool 2x2 first and convolve without stride instead.
      self.shortcut_conv = _conv(in_features, out, 1, 1 if self.avg_down else stride, rngs)
      self.shortcut_bn = _batch_norm(out, rngs)
    else:
      self.shortcut_conv = self.shortcut_bn = None

  def _tail(self, x, y, train, rng):
    if self.se is not None:
      y = self.se(y)
    if train and self.drop_rate > 0:
      y = drop_path(y, self.drop_rate, rng)
    if self.shortcut_conv is not None:
      if self.avg_down:
        x = nnx.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
      x = self.shortcut_bn(self.shortcut_conv(x), use_running_average=not train)
    return jax.nn.relu(x + y)


class BasicBlock(_Block):
  expansion = 1

  def __init__(self, in_features, features, stride, *, zero_init_residual, se_ratio=0.0,
               resnet_d_shortcut=False, drop_rate=0.0, rngs):
    self.conv1 = _conv(in_features, features, 3, stride, rngs)
    self.bn1 = _batch_norm(features, rngs)
    self.conv2 = _conv(features, features, 3, 1, rngs)
    self.bn2 = _batch_norm(features, rngs, zero_scale=zero_init_residual)
    self._init_tail(in_features, features, stride, se_ratio, resnet_d_shortcut, drop_rate, rngs)

  def __call__(self, x, train, rng=None):
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
    y = self.bn2(self.conv2(y), use_running_average=not train)
    return self._tail(x, y, train, rng)


class BottleneckBlock(_Block):
  expansion = 4

  def __init__(self, in_features, features, stride, *, zero_init_residual, se_ratio=0.0,
               resnet_d_shortcut=False, drop_rate=0.0, rngs):
    out = features * self.expansion
    self.conv1 = _conv(in_features, features, 1, 1, rngs)
    self.bn1 = _batch_norm(features, rngs)
    # Stride on the 3x3 conv, not the first 1x1 ("ResNet-B", torchvision's v1.5).
    self.conv2 = _conv(features, features, 3, stride, rngs)
    self.bn2 = _batch_norm(features, rngs)
    self.conv3 = _conv(features, out, 1, 1, rngs)
    self.bn3 = _batch_norm(out, rngs, zero_scale=zero_init_residual)
    self._init_tail(in_features, out, stride, se_ratio, resnet_d_shortcut, drop_rate, rngs)

  def __call__(self, x, train, rng=None):
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
    y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average=not train))
    y = self.bn3(self.conv3(y), use_running_average=not train)
    return self._tail(x, y, train, rng)


class ResNet(nnx.Module):
  """ResNet trunk returning globally pooled features [B, num_features].

  Args:
    in_channels: channels of the input images.
    stage_sizes: blocks per stage; the first stage keeps the resolution, each later one halves it.
    block: "basic" or "bottleneck".
    width: channels of the first stage (64 in the paper); stage i has width * 2**i.
    stem: "cifar" (3x3 conv, stride 1, no max-pool: for 28-64 pixel images), "imagenet"
      (7x7 conv stride 2 and 3x3 max-pool) or "resnet_d" (the ImageNet stem with the 7x7 conv
      replaced by three 3x3 convs of width/2, width/2 and width channels, the first strided:
      He et al. 2019 "Bag of Tricks" ResNet-C/D, used by ResNet-RS).
    zero_init_residual: start each residual branch at zero (last BN scale 0), Goyal et al. 2017.
    stem_stride: stride of the first stem convolution (default 1 for "cifar", 2 otherwise); 2 on
      a "cifar" stem quarters the cost of a small-image network, which matters on CPUs.
    resnet_d_shortcut: in downsampling blocks, 2x2 average pooling then an unstrided 1x1 conv on
      the shortcut instead of a strided 1x1 conv (ResNet-D; ResNet-RS, Bello et al. 2021).
    se_ratio: squeeze-and-excitation in every block with this bottleneck ratio of the block's
      output channels (ResNet-RS uses 0.25; Hu et al. 2018 use 1/16); 0 turns it off.
    stochastic_depth: drop rate of the last block; block i of N drops its residual branch with
      rate ``stochastic_depth * (i + 1) / N`` in training (the linear rule of Huang et al. 2016;
      ResNet-RS uses 0.0-0.25 depending on size). 0 turns it off. Needs ``rng`` in training.
    remat: rematerialisation of each block, one of sslx.models.util.REMAT_POLICIES.

  The compute dtype is the ``dtype`` attribute of its flax layers
  (sslx.models.set_compute_dtype); BatchNorm statistics stay float32 and the pooled features
  are float32 whatever it is.
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
      resnet_d_shortcut: bool = False,
      se_ratio: float = 0.0,
      stochastic_depth: float = 0.0,
      remat: str = "none",
      rngs: nnx.Rngs,
  ):
    if block not in ("basic", "bottleneck"):
      raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
    if stem not in STEMS:
      raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if width <= 0 or not stage_sizes or min(stage_sizes) <= 0:
      raise ValueError(
          f"width and every stage size must be positive, got width={width}, "
          f"stage_sizes={tuple(stage_sizes)}")
    if not 0.0 <= se_ratio <= 1.0:
      raise ValueError(f"se_ratio must be in [0, 1], got {se_ratio}")
    if not 0.0 <= stochastic_depth < 1.0:
      raise ValueError(f"stochastic_depth must be in [0, 1), got {stochastic_depth}")
    if stem == "resnet_d" and width < 2:
      raise ValueError(f"the resnet_d stem needs width >= 2, got width={width}")
    block_cls = BasicBlock if block == "basic" else BottleneckBlock
    self.remat = check_remat(remat)
    self.stem_kind = stem
    if stem_stride is None:
      stem_stride = 1 if stem == "cifar" else 2
    if stem == "resnet_d":
      half = width // 2
      sizes = [(in_channels, half, stem_stride), (half, half, 1), (half, width, 1)]
      self.stem_convs = nnx.List([_conv(i, o, 3, s, rngs) for i, o, s in sizes])
      self.stem_bns = nnx.List([_batch_norm(o, rngs) for _, o, _ in sizes])
    else:
      kernel = 3 if stem == "cifar" else 7
      self.stem_convs = nnx.List([_conv(in_channels, width, kernel, stem_stride, rngs)])
      self.stem_bns = nnx.List([_batch_norm(width, rngs)])
    num_blocks_total = sum(stage_sizes)
    self.stochastic_depth = stochastic_depth
    blocks = []
    features_in = width
    for i, num_blocks in enumerate(stage_sizes):
      for j in range(num_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        drop_rate = stochastic_depth * (len(blocks) + 1) / num_blocks_total
        blocks.append(block_cls(features_in, width * 2**i, stride,
                                zero_init_residual=zero_init_residual, se_ratio=se_ratio,
                                resnet_d_shortcut=resnet_d_shortcut, drop_rate=drop_rate,
                                rngs=rngs))
        features_in = width * 2**i * block_cls.expansion
    self.blocks = nnx.List(blocks)
    self.num_features = features_in

  def __call__(self, x, *, train: bool, rng: jax.Array | None = None):
    """Images [B, H, W, C] -> features [B, num_features].

    ``rng`` (a key) drives stochastic depth and is needed only when ``train`` and
    ``stochastic_depth > 0``; block i uses ``fold_in(rng, i)``, so a key gives one fixed set of
    dropped branches. Evaluation (``train=False``) never drops.
    """
    if train and self.stochastic_depth > 0 and rng is None:
      raise ValueError(
          f"rng must be a jax.random key in training when stochastic_depth > 0 "
          f"(got rng=None with stochastic_depth={self.stochastic_depth})")
    for conv, bn in zip(self.stem_convs, self.stem_bns):
      x = jax.nn.relu(bn(conv(x), use_running_average=not train))
    if self.stem_kind != "cifar":
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for i, block in enumerate(self.blocks):
      x = remat_call(lambda block, x, key: block(x, train, key), self.remat, block, x,
                     None if rng is None else jax.random.fold_in(rng, i))
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def resnet(in_channels: int, *, depth: int | None = None, stage_sizes=None, block=None,
           width: int = 64, stem: str = "cifar", zero_init_residual: bool = False,
           stem_stride: int | None = None, resnet_d_shortcut: bool = False,
           se_ratio: float = 0.0, stochastic_depth: float = 0.0, remat: str = "none",
           rngs: nnx.Rngs) -> ResNet:
  """A ResNet by published depth (18, 34, 50, ...) or by explicit stage sizes and block type.

  ``stem="resnet_d", resnet_d_shortcut=True, se_ratio=0.25`` plus a stochastic_depth rate chosen
  per model size gives the ResNet-RS blocks of Bello et al. 2021 (Sec. 4.1); ResNet-RS also
  replaces the stem's max-pool with a strided 3x3 conv, which is not implemented here.
  """
  if depth is not None:
    if depth not in STAGE_SIZES:
      raise ValueError(f"depth must be one of {sorted(STAGE_SIZES)}, got {depth}")
    stage_sizes, block = STAGE_SIZES[depth]
  if stage_sizes is None:
    raise ValueError("give either depth or stage_sizes")
  return ResNet(in_channels, stage_sizes=tuple(stage_sizes), block=block or "basic", width=width,
                stem=stem, zero_init_residual=zero_init_residual, stem_stride=stem_stride,
                resnet_d_shortcut=resnet_d_shortcut, se_ratio=se_ratio,
                stochastic_depth=stochastic_depth, remat=remat, rngs=rngs)


def per_device_batch_norm(forward: Callable, *, mesh: jax.sharding.Mesh,
                          axis_name: str | tuple[str, ...] | None = None) -> Callable:
  """Runs ``forward`` with BatchNorm statistics computed per device (MoCo's shuffle-BN setting).

  ``forward(params, batch_stats, x, *args) -> (y, new_batch_stats)`` is a pure function that
  merges an NNX module, calls it in training mode and splits the new statistics back out (see
  the example). Under plain ``jax.jit`` over a sharded batch every BatchNorm normalises with the
  global-batch statistics; the returned function instead runs ``forward`` inside
  ``jax.shard_map`` so that device d normalises its own shard with its own mean and variance,
  as a PyTorch DDP model without SyncBatchNorm does (He et al. 2020, MoCo Sec. 3.3: per-device
  BN lets the key encoder cheat through intra-batch statistics unless the batch is shuffled
  across devices, which the method does around this call).

  Running statistics: each device's update estimates the same population moments from a
  different sample, and the variables must stay one replicated array (a state that differed per
  device would be silently reduced to device 0's copy when read, like DDP's buffer broadcast).
  They are therefore averaged over ``axis_name`` after the update (``pmean``): the averaged
  running mean equals the single-device update with the global-batch mean; the averaged
  variance is the mean within-shard variance, the quantity that per-device BN normalises with.

  Args:
    forward: the pure forward function described above.
    mesh: mesh whose ``axis_name`` axes split the batch.
    axis_name: the batch axis (or axes) of ``mesh``; None: the axes the trainer splits the batch
      over (``sslx.sharding.batch_axes``: "data", and "fsdp" when the mesh has it).

  Returns:
    ``fn(params, batch_stats, x, *args) -> (y, new_batch_stats)`` with ``x`` [B, ...] and ``y``
    [B, ...] sharded along ``axis_name`` (B divisible by its size), params, batch statistics and
    ``args`` replicated. Use it under ``jax.jit`` or ``jax.grad`` as ``forward`` itself. A key
    in ``args`` reaches every device unchanged: fold in ``jax.lax.axis_index(axis_name)`` inside
    ``forward`` if the shards should draw independent stochastic-depth masks.

  Example (``model`` an NNX module, ``mesh`` a mesh with a "data" axis):
    >>> graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    >>> def forward(params, stats, x):
    ...   m = nnx.merge(graphdef, params, stats, copy=True)
    ...   return m(x, train=True), nnx.state(m, nnx.BatchStat)
    >>> y, stats = jax.jit(per_device_batch_norm(forward, mesh=mesh))(params, stats, x)
  """
  if axis_name is None:
    from sslx.sharding import batch_axes  # local: sslx.sharding imports flax's nnx only
    axis_name = batch_axes(mesh)
  axes = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
  if not axes or any(a not in mesh.axis_names for a in axes):
    raise ValueError(f"axis_name must name axes of mesh {mesh.axis_names}, got {axis_name!r}")
  axis_name = axes[0] if len(axes) == 1 else axes

  def local(params, batch_stats, x, *args):
    y, new_stats = forward(params, batch_stats, x, *args)
    return y, jax.lax.pmean(new_stats, axis_name)

  def wrapped(params, batch_stats, x, *args):
    shard_map = getattr(jax, "shard_map", None)
    if shard_map is None:  # jax < 0.6 has it only under experimental
      from jax.experimental.shard_map import shard_map
    fn = shard_map(local, mesh=mesh,
                   in_specs=(P(), P(), P(axis_name)) + (P(),) * len(args),
                   out_specs=(P(axis_name), P()))
    return fn(params, batch_stats, x, *args)

  return wrapped
