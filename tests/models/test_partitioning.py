"""Tests for logical-axis sharding rules: rule resolution, and FSDP / tensor-parallel ViTs on the 8
fake CPU devices giving the replicated model's loss and gradients while each device holds a slice.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from sslx import sharding
from sslx.models import resnet
from sslx.models.heads import MLP
from sslx.models.vit import vit


# Five small programs compiled once each: XLA's backend optimisations cost more than they save.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def mesh_config(axes, shape):
  return ml_collections.ConfigDict({"num_devices": -1, "axes": axes, "shape": shape})


def test_rules_resolve_to_partition_specs():
  mesh = sharding.make_mesh(mesh_config(("data", "fsdp", "model"), (2, -1, 2)))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "model": 2}
  rules = sharding.get_rules("fsdp_tensor")
  spec = sharding.logical_to_mesh
  assert spec(("embed", "mlp"), (32, 128), mesh, rules) == P("fsdp", "model")
  assert spec(("heads", "kv", "embed"), (4, 8, 32), mesh, rules) == P("model", None, "fsdp")
  assert spec(None, (5, 5), mesh, rules) == P()
  # Not divisible: replicated, or a clear error when strict.
  assert spec(("patch", "embed"), (48, 3), mesh, rules) == P(None, None)
  with pytest.raises(ValueError, match=r"dimension 1 \('embed', size 3\).*fsdp"):
    spec(("patch", "embed"), (48, 3), mesh, rules, strict=True)
  # A mesh axis serves one dimension only; the first rule that fits wins, later ones are
  # fallbacks; axes the mesh lacks are skipped, so FSDP rules replicate on a data-only mesh.
  two = (("embed", "fsdp"), ("mlp", "fsdp"), ("mlp", "model"))
  assert spec(("embed", "mlp"), (32, 64), mesh, two) == P("fsdp", "model")
  assert spec(("mlp",), (64,), mesh, (("mlp", ("fsdp", "model")),)) == P(("fsdp", "model"))
  data_only = sharding.make_mesh(mesh_config(("data",), (-1,)))
  assert spec(("embed", "mlp"), (32, 64), data_only, rules) == P(None, None)
  assert spec(("embed",), (32,), mesh, (("embed", None), ("embed", "fsdp"))) == P(None)
  with pytest.raises(ValueError, match="mesh.rules must be one of"):
    sharding.get_rules("zero3")
  with pytest.raises(ValueError, match="each sharding rule"):
    sharding.get_rules((("embed", 3),))
  with pytest.raises(ValueError, match="2 logical axis names"):
    spec(("embed", "mlp"), (4,), mesh, rules)
  assert sharding.get_rules(ml_collections.ConfigDict({"rules": "tensor"})) == (
      ("mlp", ("model",)), ("heads", ("model",)))
  assert sharding.get_rules(ml_collections.ConfigDict({})) == ()
  assert sharding.get_rules(ml_collections.ConfigDict(
      {"rules": "tensor", "custom_rules": (("embed", ("data", "fsdp")),)})) == (
          ("embed", ("data", "fsdp")),)

  # Batch: split over data and fsdp (FSDP devices are data-parallel too).
  assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))
  assert sharding.batch_sharding(data_only).spec == P("data")
  sharding.check_batch_divisible(8, mesh)
  with pytest.raises(ValueError, match="divisible by the 4 devices"):
    sharding.check_batch_divisible(6, mesh)
  with pytest.raises(ValueError, match="must contain 'data'"):
    sharding.make_mesh(mesh_config(("fsdp",), (-1,)))

  # A train state: parameters and the optimizer moments shaped like them are sharded, the rest
  # (step, RNG key, Adam's count) replicated.
  model = nnx.eval_shape(lambda: vit(patch_size=4, width=32, depth=1, num_heads=4,
                                     image_size=8, rngs=nnx.Rngs(0)))
  params_state = nnx.state(model, nnx.Param)
  params = params_state.to_pure_dict()
  train_state = jax.eval_shape(lambda p: {"params": p, "opt": optax.adamw(1e-3).init(p),
                                          "step": jnp.zeros((), jnp.int32)}, params)
  param_sharding = sharding.param_shardings(params_state, mesh, "fsdp")
  shardings = sharding.state_shardings(train_state, params, param_sharding, mesh)
  fc1 = P("fsdp", None)
  assert shardings["params"]["blocks"][0]["fc1"]["kernel"].spec == fc1
  assert shardings["opt"][0].mu["blocks"][0]["fc1"]["kernel"].spec == fc1
  assert shardings["opt"][0].nu["blocks"][0]["fc1"]["kernel"].spec == fc1
  assert shardings["opt"][0].count.spec == P()
  assert shardings["step"].spec == P()
  # An EMA teacher holding part of the parameters (BYOL's: the encoder, not the predictor)
  # is sharded like them; a leaf that only shares a name with a parameter is not.
  student = {"encoder": params, "predictor": {"kernel": jnp.zeros((32, 32))}}
  student_sharding = {"encoder": param_sharding, "predictor": {"kernel": NamedSharding(mesh, P())}}
  with_teacher = {"params": student, "teacher": {"encoder": params},
                  "stats": {"fc1": {"kernel": jnp.zeros((32, 128))}}}
  shardings = sharding.state_shardings(with_teacher, student, student_sharding, mesh)
  assert shardings["teacher"]["encoder"]["blocks"][0]["fc1"]["kernel"].spec == fc1
  assert shardings["params"]["encoder"]["blocks"][0]["fc1"]["kernel"].spec == fc1
  assert shardings["stats"]["fc1"]["kernel"].spec == P()

  # Heads carry names too: under FSDP a projector's kernels split along their input, under
  # tensor parallelism along their output; BatchNorm's statistics stay replicated.
  head = nnx.eval_shape(lambda: MLP(32, (64,), 16, rngs=nnx.Rngs(0)))
  head_fsdp = sharding.param_shardings(head, mesh, "fsdp")
  assert head_fsdp["hidden_linears"][0]["kernel"].spec == P("fsdp", None)
  assert head_fsdp["out"]["bias"].spec == P(None)
  head_tp = sharding.param_shardings(
      head, sharding.make_mesh(mesh_config(("data", "model"), (-1, 2))), "tensor")
  assert head_tp["out"]["kernel"].spec == P(None, "model")
  assert head_tp["out"]["bias"].spec == P("model")
  assert head_tp["hidden_norms"][0]["mean"].spec == P()

  # Variables without names (a ResNet's, BatchNorm statistics) stay replicated.
  net = nnx.eval_shape(lambda: resnet(1, depth=18, width=8, rngs=nnx.Rngs(0)))
  specs = jax.tree.leaves(sharding.param_shardings(net, mesh, rules))
  assert specs and all(s.spec == P() for s in specs)


def _loss(graphdef):
  def loss(params, images, indices):
    out = nnx.merge(graphdef, params)(images, patch_indices=indices)
    return jnp.mean(out["pooled"] ** 2) + jnp.mean(jnp.sin(out["patches"]))
  return loss


def test_fsdp_and_tensor_parallel_match_replicated():
  # Width 32, 8 heads of 4, MLP 128: every named dimension divides 8.
  abstract = nnx.eval_shape(lambda: vit(patch_size=4, width=32, depth=1, num_heads=8,
                                        image_size=16, num_registers=1, layer_scale_init=0.5,
                                        rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32),
                        state.to_pure_dict())
  images = rng.normal(size=(8, 16, 16, 3)).astype(np.float32)
  indices = np.stack([rng.permutation(16)[:10] for _ in range(8)]).astype(np.int32)
  grad_fn = jax.value_and_grad(_loss(graphdef))
  want_loss, want_grads = jax.jit(grad_fn, compiler_options=FAST_COMPILE)(params, images,
                                                                         indices)

  cases = [
      # (axes, shape, rules, fraction of each block weight matrix per device, same for the
      # patch embedding, which has only an "embed" dimension to split)
      (("data", "fsdp"), (1, 8), "fsdp", 1 / 8, 1 / 8),
      (("data", "model"), (2, 4), "tensor", 1 / 4, 1),
      (("data", "fsdp", "model"), (2, 2, 2), "fsdp_tensor", 1 / 4, 1 / 2),
  ]
  for axes, shape, rules, fraction, patch_fraction in cases:
    mesh = sharding.make_mesh(mesh_config(axes, shape))
    shardings = sharding.param_shardings(state, mesh, rules, strict=True)
    batch = sharding.batch_sharding(mesh)
    step = jax.jit(grad_fn, in_shardings=(shardings, batch, batch),
                   out_shardings=(sharding.replicated(mesh), shardings),
                   compiler_options=FAST_COMPILE)
    loss, grads = step(jax.device_put(params, shardings), images, indices)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5, err_msg=rules)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6,
                                                         err_msg=rules), grads, want_grads)

    # Every weight matrix (the large parameters) lives in slices: each device holds `fraction`
    # of it, and the slices of the devices together cover it exactly once per replica.
    block = grads["blocks"][0]
    large = [(block["fc1"]["kernel"], fraction), (block["fc2"]["kernel"], fraction),
             (block["attn"]["qkv_kernel"], fraction), (block["attn"]["out_kernel"], fraction),
             (grads["patch_embed"]["kernel"], patch_fraction)]
    for array, part in large:
      assert isinstance(array.sharding, NamedSharding)
      for shard in array.addressable_shards:
        assert math.prod(shard.data.shape) == array.size * part, (rules, array.shape)
    replicas = mesh.size * fraction
    covered = np.zeros(block["fc1"]["kernel"].shape)
    for shard in block["fc1"]["kernel"].addressable_shards:
      covered[shard.index] += 1
    assert np.all(covered == replicas)
