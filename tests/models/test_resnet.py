"""ResNet: published parameter counts and FLOPs, the ResNet-RS options (ResNet-D, squeeze-excite,
stochastic depth) against NumPy references, and BatchNorm statistics global or per device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from sslx.models import (MLP, abstract_module, count_flops, count_params, drop_path,
                         per_device_batch_norm, resnet)
from sslx.models.resnet import BasicBlock, BottleneckBlock

_FC = 1000  # published counts include a 1000-way classifier, which the trunk has not

# Torchvision's model cards (num_params with the 1000-way fc); ResNet-200 from osmr/imgclsmob
# (pytorchcv resnet200, v1 post-activation like ours, its test asserts weight_count 64,673,832).
# ResNet-D (deep stem 32-32-64 + avg-pool shortcut): fast.ai xresnet / imgclsmob resneta{18,50}b.
# SE (ratio 1/16, Hu et al. 2018): imgclsmob seresnet50 28,088,024.
PUBLISHED_PARAMS = [
    (dict(depth=18), 11_689_512),
    (dict(depth=34), 21_797_672),
    (dict(depth=50), 25_557_032),
    (dict(depth=101), 44_549_160),
    (dict(depth=152), 60_192_808),
    (dict(depth=200), 64_673_832),
    (dict(depth=18, stem="resnet_d", resnet_d_shortcut=True), 11_708_744),
    (dict(depth=50, stem="resnet_d", resnet_d_shortcut=True), 25_576_264),
    (dict(depth=50, se_ratio=1 / 16), 28_088_024),
]


def test_published_parameter_counts():
  for kwargs, expected in PUBLISHED_PARAMS:
    kwargs = {"stem": "imagenet", **kwargs}
    model = abstract_module(lambda rngs: resnet(3, rngs=rngs, **kwargs))
    fc = model.num_features * _FC + _FC
    assert count_params(model) + fc == expected, kwargs


# --- FLOPs: an independent layer-by-layer count of multiply-adds (fvcore / torchvision
# convention: the MACs of convolutions and the classifier, padding taps included).
_STAGES = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
           101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}
# torchvision model cards, "GFLOPS" (which are GMACs) at 224x224.
PUBLISHED_GMACS = {18: 1.81, 34: 3.66, 50: 4.09, 101: 7.80, 152: 11.51}


def _taps_1d(size, kernel, stride, valid_only):
  """Output length and sum over output positions of the kernel taps that are counted."""
  out = -(-size // stride)
  if not valid_only:
    return out, out * kernel
  pad_lo = max((out - 1) * stride + kernel - size, 0) // 2  # XLA's SAME padding
  return out, sum(0 <= o * stride - pad_lo + k < size for o in range(out) for k in range(kernel))


def _reference_macs(depth, size=224, valid_only=False, classes=_FC):
  total = 0

  def conv(h, cin, cout, k, s):
    nonlocal total
    out, taps = _taps_1d(h, k, s, valid_only)
    total += taps * taps * cin * cout
    return out

  h = -(-conv(size, 3, 64, 7, 2) // 2)  # 7x7/2 conv, 3x3/2 max-pool
  sizes, bottleneck = _STAGES[depth]
  cin = 64
  for i, n in enumerate(sizes):
    w = 64 * 2**i
    for j in range(n):
      s = 2 if i > 0 and j == 0 else 1
      if bottleneck:
        conv(h, cin, w, 1, 1)
        h2 = conv(h, w, w, 3, s)
        conv(h2, w, 4 * w, 1, 1)
        cout = 4 * w
      else:
        h2 = conv(conv(h, cin, w, 3, s), w, w, 3, 1)
        cout = w
      if s != 1 or cin != cout:
        conv(h, cin, cout, 1, s)
      h, cin = h2, cout
  return total + cin * classes


def test_reference_macs_reproduce_torchvision_figures():
  for depth, gmacs in PUBLISHED_GMACS.items():
    np.testing.assert_allclose(_reference_macs(depth) / 1e9, gmacs, rtol=3e-3, err_msg=depth)


@pytest.mark.parametrize("depth", [18, 50])
def test_xla_flops_match_the_reference_count(depth):
  """XLA's cost analysis of the lowered trunk (no compile) against the reference count.

  XLA counts a multiply-add as 2 flops and skips kernel taps that fall on padding; with the
  same convention the reference agrees, and the element-wise ops (BN, ReLU, pooling) add <1%.
  Versus the published padding-included figure XLA is lower by 7% (ResNet-18) and 3% (-50).
  """
  model = abstract_module(lambda rngs: resnet(3, depth=depth, stem="imagenet", rngs=rngs))
  graphdef, state = nnx.split(model)
  flops = count_flops(lambda s, x: nnx.merge(graphdef, s)(x, train=False),
                      state, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  reference = _reference_macs(depth, valid_only=True, classes=0)
  assert reference <= flops / 2 <= 1.01 * reference, (flops / 2, reference)
  assert abs(flops / 2 / 1e9 - PUBLISHED_GMACS[depth]) / PUBLISHED_GMACS[depth] < 0.08


@pytest.mark.parametrize("stem, size, out_hw", [("cifar", 28, 28), ("imagenet", 64, 16),
                                                ("resnet_d", 64, 16)])
def test_output_shape_and_features(stem, size, out_hw):
  """Shapes only (jax.eval_shape): features [B, 4 * width] and the stem's output resolution."""
  model = abstract_module(lambda rngs: resnet(1, stage_sizes=(1, 1, 1), width=8, stem=stem,
                                              rngs=rngs))
  assert model.num_features == 32
  graphdef, state = nnx.split(model)
  x = jax.ShapeDtypeStruct((2, size, size, 1), jnp.float32)
  y = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=False), state, x)
  assert y.shape == (2, 32)

  def stem_only(s, x):
    m = nnx.merge(graphdef, s)
    for conv, bn in zip(m.stem_convs, m.stem_bns):
      x = bn(conv(x), use_running_average=True)
    return x if stem == "cifar" else nnx.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")

  assert jax.eval_shape(stem_only, state, x).shape == (2, out_hw, out_hw, 8)
  if stem == "resnet_d":  # three 3x3 convs of width/2, width/2, width (He et al. 2019)
    assert [c.kernel.shape for c in model.stem_convs] == [(3, 3, 1, 4), (3, 3, 4, 4),
                                                         (3, 3, 4, 8)]


def test_zero_init_residual_makes_blocks_identity_on_the_residual_branch():
  # Only the BN scales leave the jitted init, so the random kernels are never compiled.
  @jax.jit
  def scales():
    model = resnet(1, stage_sizes=(1, 1), width=4, zero_init_residual=True, rngs=nnx.Rngs(0))
    return [(b.bn1.scale[...], b.bn2.scale[...]) for b in model.blocks]

  for bn1_scale, bn2_scale in scales():
    np.testing.assert_array_equal(bn2_scale, 0.0)  # the last BN of each residual branch
    np.testing.assert_array_equal(bn1_scale, 1.0)  # and only that one


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="depth"):
    resnet(3, depth=19, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="block"):
    resnet(3, stage_sizes=(1,), block="fancy", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="stem"):
    resnet(3, stage_sizes=(1,), stem="tpu", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="se_ratio"):
    resnet(3, stage_sizes=(1,), se_ratio=2.0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="stochastic_depth"):
    resnet(3, stage_sizes=(1,), stochastic_depth=1.0, rngs=nnx.Rngs(0))
  model = abstract_module(lambda rngs: resnet(1, stage_sizes=(1,), width=4,
                                              stochastic_depth=0.1, rngs=rngs))
  with pytest.raises(ValueError, match="rng"):
    model(jnp.ones((2, 8, 8, 1)), train=True)
  with pytest.raises(ValueError, match="axis_name"):
    per_device_batch_norm(lambda *a: a, mesh=jax.make_mesh((8,), ("data",)), axis_name="batch")


def _materialize(build, seed=0):
  """``build(rngs)`` with NumPy-drawn values instead of its initialisers: kernels N(0, 1/fan_in),
  norm scales U(0.5, 1.5), biases N(0, 0.1^2), running means N(0, 0.1^2), variances U(0.5, 1.5).

  The forward-pass tests need some values, not the initialisers' ones, and XLA:CPU takes seconds
  to compile jax.random for each small kernel shape; this keeps those tests compile-light.
  """
  rng = np.random.default_rng(seed)
  graphdef, state = nnx.split(abstract_module(build))
  seen = set()

  def fill(path, leaf):
    name = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
    seen.add(name)
    if len(leaf.shape) >= 2:
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:
      value = rng.normal(size=leaf.shape) * 0.1
    return jnp.asarray(value, leaf.dtype)

  model = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))
  assert {"kernel", "scale", "var"} <= seen, seen  # the names were recognised
  return model


def _bn_eval(x, bn):
  """Reference BatchNorm with running statistics, float64."""
  f = lambda v: np.asarray(v[...], np.float64)
  return (x - f(bn.mean)) / np.sqrt(f(bn.var) + bn.epsilon) * f(bn.scale) + f(bn.bias)


def test_resnet_d_shortcut_average_pools_before_an_unstrided_conv():
  """Downsampling bottleneck block, eval mode, with random BN statistics: NumPy reference of
  relu(residual + BN(conv1x1(avgpool2x2(x)))) (He et al. 2019, Fig. 2c)."""
  rng = np.random.default_rng(0)
  block = _materialize(lambda rngs: BottleneckBlock(6, 4, 2, zero_init_residual=False,
                                                     resnet_d_shortcut=True, rngs=rngs))
  x = rng.normal(size=(2, 6, 6, 6))
  y = np.asarray(nnx.jit(lambda b, x: b(x, train=False))(block, jnp.asarray(x, jnp.float32)),
                 np.float64)

  def conv(v, c, stride=1):  # SAME conv in float64 by explicit loops over taps
    k = np.asarray(c.kernel[...], np.float64)
    kh = k.shape[0]
    pad_total = max((-(-v.shape[1] // stride) - 1) * stride + kh - v.shape[1], 0)
    lo = pad_total // 2
    vp = np.pad(v, ((0, 0), (lo, pad_total - lo), (lo, pad_total - lo), (0, 0)))
    out_hw = -(-v.shape[1] // stride)
    out = np.zeros((v.shape[0], out_hw, out_hw, k.shape[-1]))
    for a in range(kh):
      for b in range(kh):
        patch = vp[:, a:a + stride * out_hw:stride, b:b + stride * out_hw:stride, :]
        out += patch @ k[a, b]
    return out

  relu = lambda v: np.maximum(v, 0)
  r = relu(_bn_eval(conv(x, block.conv1), block.bn1))
  r = relu(_bn_eval(conv(r, block.conv2, 2), block.bn2))
  r = _bn_eval(conv(r, block.conv3), block.bn3)
  pooled = x.reshape(2, 3, 2, 3, 2, 6).mean(axis=(2, 4))
  shortcut = _bn_eval(conv(pooled, block.shortcut_conv), block.shortcut_bn)
  assert np.isfinite(y).all() and y.std() > 0.1
  np.testing.assert_allclose(y, relu(r + shortcut), rtol=1e-4, atol=1e-5)


def test_squeeze_excite_matches_numpy_and_sits_before_the_sum():
  block = _materialize(lambda rngs: BasicBlock(8, 8, 1, zero_init_residual=False, se_ratio=0.25,
                                               rngs=rngs))
  se = block.se
  assert se.reduce.kernel.shape == (8, 2)  # ratio of the block's output channels (ResNet-RS)

  @nnx.jit
  def run(b, x):
    # In a block, SE scales the residual branch only: relu(x + se(branch)).
    branch = b.bn2(b.conv2(jax.nn.relu(b.bn1(b.conv1(x), use_running_average=True))),
                   use_running_average=True)
    return b.se(x), b(x, train=False), jax.nn.relu(x + b.se(branch))

  x = np.random.default_rng(1).normal(size=(3, 4, 4, 8))
  y_se, y_block, y_reference = run(block, jnp.asarray(x, jnp.float32))
  f = lambda v: np.asarray(v[...], np.float64)
  s = np.maximum(x.mean(axis=(1, 2)) @ f(se.reduce.kernel) + f(se.reduce.bias), 0)
  gate = 1 / (1 + np.exp(-(s @ f(se.expand.kernel) + f(se.expand.bias))))
  np.testing.assert_allclose(y_se, x * gate[:, None, None, :], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y_block, y_reference, rtol=1e-5, atol=1e-6)


def test_stochastic_depth_rates_randomness_and_eval():
  """Linear rule (Huang et al. 2016): block i of N drops with rate p * (i+1) / N. A key fixes the
  dropped branches; each example's branch is either dropped or scaled by 1/keep; evaluation
  never drops, whatever key it is given. One compile for all of it."""
  model = _materialize(lambda rngs: resnet(1, stage_sizes=(1, 1), width=4, stochastic_depth=0.4,
                                           rngs=rngs))
  np.testing.assert_allclose([b.drop_rate for b in model.blocks], [0.2, 0.4])
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(16, 8, 8, 1)), jnp.float32)
  xb = jnp.asarray(rng.normal(size=(32, 5, 5, 4)), jnp.float32)

  @nnx.jit
  def run(m, k0, k1):
    outs = dict(eval0=m(x, train=False, rng=k0), eval1=m(x, train=False, rng=k1),
                train0=m(x, train=True, rng=k0), train1=m(x, train=True, rng=k1))
    # The downsampling block (rate 0.4): branch and shortcut as the block computes them.
    b = m.blocks[1]
    branch = b.bn2(b.conv2(jax.nn.relu(b.bn1(b.conv1(xb), use_running_average=False))),
                   use_running_average=False)
    shortcut = b.shortcut_bn(b.shortcut_conv(xb), use_running_average=False)
    return outs, b(xb, True, k0), branch, shortcut

  k0, k1 = jax.random.key(0), jax.random.key(1)
  outs, y, branch, shortcut = run(model, k0, k1)
  np.testing.assert_array_equal(outs["eval0"], outs["eval1"])
  assert not np.allclose(outs["train0"], outs["train1"])
  np.testing.assert_array_equal(run(model, k0, k1)[0]["train0"], outs["train0"])
  kept = np.asarray(jax.nn.relu(shortcut + branch / 0.6))
  dropped = np.asarray(jax.nn.relu(shortcut))
  is_kept = np.all(np.isclose(y, kept, atol=1e-5), axis=(1, 2, 3))
  is_dropped = np.all(np.isclose(y, dropped, atol=1e-5), axis=(1, 2, 3))
  assert np.all(is_kept | is_dropped) and is_kept.any() and is_dropped.any()


def test_drop_path_is_unbiased():
  x = jnp.ones((20000, 3))
  y = np.asarray(drop_path(x, 0.3, jax.random.key(0)))
  np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.7], rtol=1e-6)
  assert np.all(y == y[:, :1])  # the whole example is dropped, not single units
  # Mean 1, standard error sqrt(0.3 / 0.7 / 20000) = 0.0046: 4 sigma.
  assert abs(y.mean() - 1.0) < 0.02


def _assert_trees_close(a, b, **tol):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(u, v, **tol)


def test_batch_norm_global_under_jit_and_per_device_under_shard_map():
  """Encoder + projector in training mode, batch of 16 split over 8 devices.

  1. ``jax.jit`` over the sharded batch: BatchNorm normalises with the statistics of the whole
     batch (synchronised BN by construction): output and running statistics equal those of the
     unsharded computation, stochastic depth included (same key, same drops).
  2. ``per_device_batch_norm``: equals running each device's 2-example shard alone, outputs
     concatenated and per-shard running statistics averaged; and differs from 1.
  """
  encoder, head = _materialize(lambda rngs: (
      resnet(1, stage_sizes=(1, 1), width=4, stochastic_depth=0.2, rngs=rngs),
      MLP(8, (8,), 4, rngs=rngs)))
  graphdef, params, stats = nnx.split((encoder, head), nnx.Param, nnx.BatchStat)

  def forward(params, stats, x, rng):
    enc, hd = nnx.merge(graphdef, params, stats, copy=True)
    y = hd(enc(x, train=True, rng=rng), train=True)
    return y, nnx.state((enc, hd), nnx.BatchStat)

  # Each device's shard gets a very different distribution: per-device BN differs a lot.
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 12, 12, 1)), jnp.float32)
  x = x * jnp.repeat(jnp.arange(1.0, 9.0), 2)[:, None, None, None]
  key = jax.random.key(5)
  mesh = jax.make_mesh((8,), ("data",))
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  one = jax.jit(forward)

  y1, s1 = one(params, stats, x, key)
  y8, s8 = one(params, stats, xs, key)
  np.testing.assert_allclose(y8, y1, rtol=2e-4, atol=2e-5)
  _assert_trees_close(s8, s1, rtol=2e-4, atol=2e-6)
  # And the statistics really moved away from their initial values.
  assert not np.allclose(jax.tree.leaves(s1)[0], jax.tree.leaves(stats)[0])

  yd, sd = jax.jit(per_device_batch_norm(forward, mesh=mesh))(params, stats, xs, key)
  outs = [one(params, stats, x[2 * d:2 * d + 2], key) for d in range(8)]
  np.testing.assert_allclose(yd, np.concatenate([np.asarray(o[0]) for o in outs]),
                             rtol=2e-4, atol=2e-5)
  mean_stats = jax.tree.map(lambda *s: np.mean(np.stack(s), axis=0), *[o[1] for o in outs])
  _assert_trees_close(sd, mean_stats, rtol=2e-4, atol=2e-6)
  assert not np.allclose(yd, y1, rtol=1e-2, atol=1e-2)
