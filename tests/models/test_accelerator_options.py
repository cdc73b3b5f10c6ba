"""The accelerator options of the encoders: bfloat16 compute (set_compute_dtype), fused attention
(jax.nn.dot_product_attention), rematerialisation and scanned ViT blocks each give what the plain
float32 model gives, and bad settings are refused with the field named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sslx.models import (Backbone, backbone_config, resnet, set_compute_dtype,
                         stack_block_params, unstack_block_params, vit)
from sslx.models.vit import Attention, _Keys

IMAGES = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))


def _vit(**kwargs):
  return vit(image_size=16, patch_size=4, width=32, depth=3, num_heads=4, drop_path_rate=0.2,
             layer_scale_init=0.1, rngs=nnx.Rngs(0), **kwargs)


def _resnet(**kwargs):
  return resnet(3, stage_sizes=(1, 1), width=8, stochastic_depth=0.2, rngs=nnx.Rngs(0), **kwargs)


@nnx.jit
def _features(model, x):
  out = model(x, train=False)
  return out["pooled"] if isinstance(out, dict) else out


def _pure(model):
  """(forward(params, rest, x, rng) -> (features, new rest)), params, rest) of an NNX model."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def forward(params, rest, x, rng):
    m = nnx.merge(graphdef, params, rest, copy=True)
    out = m(x, train=True, rng=rng)
    out = out["pooled"] if isinstance(out, dict) else out
    return out, nnx.state(m, nnx.BatchStat)

  return forward, params, rest


def _value_and_grad(model, x=IMAGES, rng=jax.random.PRNGKey(3)):
  forward, params, rest = _pure(model)
  loss = lambda p: (jnp.sum(jnp.sin(forward(p, rest, x, rng)[0])), forward(p, rest, x, rng)[1])
  (value, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return value, grads.to_pure_dict(), stats


def _assert_trees_close(a, b, rtol, atol):
  """Leaf by leaf; `atol` is relative to each leaf's largest magnitude (gradient leaves span
  orders of magnitude, and float reassociation errors scale with them)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    y = np.asarray(y)
    scale = max(1.0, float(np.max(np.abs(y)))) if y.size else 1.0
    np.testing.assert_allclose(np.asarray(x), y, rtol=rtol, atol=atol * scale)


def test_attention_matches_the_explicit_softmax_in_value_and_gradient():
  attn = Attention(32, 4, init="xavier", keys=_Keys(nnx.Rngs(0)), implementation="xla")
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 32))

  def reference(module, x):  # the einsum + softmax path the fused call replaced
    weights = module.weights(x)
    _, _, v = module._qkv(x)
    y = jnp.einsum("bhqt,bthk->bqhk", weights, v)
    return jnp.einsum("bqhk,hkd->bqd", y, module.out_kernel[...]) + module.out_bias[...]

  def grads(fn):
    return nnx.jit(nnx.grad(lambda m, x: jnp.sum(jnp.sin(fn(m, x))), argnums=(0, 1)))(attn, x)

  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(attn, x),
                             nnx.jit(reference)(attn, x), rtol=1e-5, atol=1e-6)
  fused, ref = grads(lambda m, x: m(x)), grads(reference)
  _assert_trees_close(nnx.state(fused[0]), nnx.state(ref[0]), 1e-4, 1e-6)
  np.testing.assert_allclose(fused[1], ref[1], rtol=1e-4, atol=1e-6)


def test_auto_attention_is_xla_on_cpu_and_cls_attention_still_works():
  auto, xla = _vit(), _vit(attention="xla")
  np.testing.assert_array_equal(_features(auto, IMAGES), _features(xla, IMAGES))
  maps = nnx.jit(lambda m, x: m.cls_attention(x))(auto, IMAGES)
  assert maps.shape == (4, 4, 16) and maps.dtype == jnp.float32
  assert np.all(np.asarray(maps.sum(-1)) < 1 + 1e-5)


@pytest.mark.parametrize("build", [_vit, _resnet], ids=["vit", "resnet"])
def test_bfloat16_forward_is_close_to_float32_and_parameters_stay_float32(build):
  f32 = build()
  bf16 = set_compute_dtype(build(), "bfloat16")
  out32, out16 = [_features(m, IMAGES) for m in (f32, bf16)]
  assert out16.dtype == jnp.float32  # encoders return float32 whatever the compute dtype
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
  # bfloat16 rounds at 2^-9 relative; a few layers give ~1e-2 of the features' scale.
  scale = float(jnp.std(out32))
  np.testing.assert_allclose(out16, out32, atol=0.05 * scale, rtol=0)
  assert float(jnp.max(jnp.abs(out16 - out32))) > 0  # bfloat16 really ran


# One policy per model keeps the compiles few: "block" saves nothing, the named policy saves
# the weight matmuls (the ResNet's BatchNorm statistics are checked under it).
@pytest.mark.parametrize("build, remat", [(_vit, "block"),
                                          (_resnet, "dots_with_no_batch_dims_saveable")],
                         ids=["vit-block", "resnet-dots_with_no_batch_dims_saveable"])
def test_remat_gives_the_plain_values_gradients_and_batch_statistics(build, remat):
  plain, rematted = _value_and_grad(build()), _value_and_grad(build(remat=remat))
  np.testing.assert_allclose(rematted[0], plain[0], rtol=1e-6)
  _assert_trees_close(rematted[1], plain[1], 1e-5, 1e-6)  # float reassociation only
  _assert_trees_close(rematted[2], plain[2], 1e-6, 1e-7)  # BatchNorm statistics (ResNet)


def test_scanned_blocks_equal_the_unrolled_ones_and_checkpoints_convert():
  plain, scanned = _vit(), _vit(scan=True)
  plain_params = nnx.state(plain, nnx.Param).to_pure_dict()
  scanned_params = nnx.state(scanned, nnx.Param).to_pure_dict()
  # Same initial values, stacked: the layouts convert both ways.
  _assert_trees_close(stack_block_params(plain_params), scanned_params, 0, 0)
  _assert_trees_close(unstack_block_params(scanned_params), plain_params, 0, 0)
  # Forward with drop-path, gradients, per-layer outputs and attention maps agree.
  value_p, grads_p, _ = _value_and_grad(plain)
  value_s, grads_s, _ = _value_and_grad(scanned)
  np.testing.assert_allclose(value_s, value_p, rtol=1e-5)
  _assert_trees_close(grads_s, stack_block_params(grads_p), 1e-4, 1e-6)
  layers = nnx.jit(lambda m, x: m(x, return_layers=True)["layers"])
  np.testing.assert_allclose(layers(scanned, IMAGES), layers(plain, IMAGES), rtol=1e-5,
                             atol=1e-6)
  maps = nnx.jit(lambda m, x: m.cls_attention(x))
  np.testing.assert_allclose(maps(scanned, IMAGES), maps(plain, IMAGES), rtol=1e-5, atol=1e-7)
  # Stacked parameters shard like their layers, with an unsharded leading layer axis.
  names = scanned.blocks.block.fc1.kernel.get_metadata()["out_sharding"]
  assert tuple(names) == (None, "embed", "mlp")


def _backbone_config(**fields):
  c = backbone_config("vit")
  c.vit.update(variant="", patch_size=4, width=16, depth=1, num_heads=2)
  for key, value in fields.items():
    target = c
    *parents, last = key.split(".")
    for p in parents:
      target = target[p]
    target[last] = value
  return c


@pytest.mark.parametrize("field, value, message", [
    ("dtype", "float16", "model.dtype must be one of ('float32', 'bfloat16'), got 'float16'"),
    ("remat", "dots", "model.remat must be one of"),
    ("vit.attention", "flash", "model.vit.attention must be one of ('auto', 'xla', 'cudnn')"),
])
def test_bad_settings_name_the_field_and_the_accepted_values(field, value, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    Backbone(_backbone_config(**{field: value}), (16, 16, 3), rngs=nnx.Rngs(0))


def test_scan_needs_a_block_and_dtype_a_known_name():
  with pytest.raises(ValueError, match="model.vit.scan needs at least one block"):
    Backbone(_backbone_config(**{"vit.scan": True, "vit.depth": 0}), (16, 16, 3),
             rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="dtype must be one of"):
    set_compute_dtype(_vit(), jnp.float16)


def test_scanned_bfloat16_vit_with_drop_path_follows_the_unrolled_one():
  """Scanned drop-path rates are traced float32: they must not promote the bfloat16 residual
  stream (lax.scan refuses a carry whose dtype changes)."""
  plain = set_compute_dtype(_vit(), "bfloat16")
  scanned = set_compute_dtype(_vit(scan=True), "bfloat16")
  value_p, grads_p, _ = _value_and_grad(plain)
  value_s, grads_s, _ = _value_and_grad(scanned)
  np.testing.assert_allclose(value_s, value_p, rtol=1e-2)
  _assert_trees_close(grads_s, stack_block_params(grads_p), 5e-2, 5e-2)


def test_checkpoint_layer_keys_as_strings_stack_in_numeric_order():
  """A checkpoint restored without a target has string layer keys ("0", "1", ..., "10")."""
  layers = {str(i): {"w": jnp.full((2,), float(i))} for i in range(11)}
  stacked = stack_block_params({"encoder": {"blocks": layers}})["encoder"]["blocks"]["block"]
  np.testing.assert_array_equal(stacked["w"][:, 0], np.arange(11))
  assert set(unstack_block_params({"blocks": {"block": stacked}})["blocks"]) == set(range(11))
