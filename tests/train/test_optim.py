"""Optimizers and schedules: learning-rate scaling, warmup + cosine values, weight-decay masks,
and named errors for invalid settings."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from sslx.train import optim


def _config(**overrides):
  c = common.base_config().optim
  c.update(overrides)
  return c


def test_schedule_warmup_then_cosine():
  c = _config(lr=0.4, lr_scaling="linear", warmup_steps=10, end_lr_fraction=0.0)
  schedule = optim.make_schedule(c, global_batch_size=512, total_steps=110)
  peak = 0.4 * 512 / 256
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(5)), peak * 5 / 10, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), peak, rtol=1e-6)
  # Cosine from the peak at step 10 to 0 at step 110: half-way is peak / 2.
  np.testing.assert_allclose(float(schedule(60)), peak / 2, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(85)), peak * (1 + math.cos(math.pi * 0.75)) / 2,
                             rtol=1e-5)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("scaling, expected", [("linear", 0.3 * 4), ("sqrt", 0.3 * 2),
                                               ("none", 0.3)])
def test_learning_rate_scaling(scaling, expected):
  assert optim.scaled_learning_rate(_config(lr=0.3, lr_scaling=scaling), 1024) == pytest.approx(
      expected)


def _params():
  return {"conv": {"kernel": jnp.ones((3, 3, 1, 4))}, "bn": {"scale": jnp.ones(4),
                                                            "bias": jnp.ones(4)},
          "dense": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)},
          # ViT parameters of rank > 1 that are not weights
          "attn": {"qkv_bias": jnp.ones((3, 2, 2))}, "cls_token": jnp.ones((1, 1, 4)),
          "pos_embed": jnp.ones((5, 4))}


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_weight_decay_skips_biases_and_norm_parameters(name):
  """With a zero gradient only weight decay moves parameters: kernels shrink, the rest stays."""
  c = _config(name=name, lr=0.1, weight_decay=0.5, warmup_steps=0, lr_scaling="none")
  tx, _ = optim.make_optimizer(c, 256, total_steps=10)
  params = _params()
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert float(new["conv"]["kernel"].max()) < 1.0
  assert float(new["dense"]["kernel"].max()) < 1.0
  for leaf in (new["bn"]["scale"], new["bn"]["bias"], new["dense"]["bias"],
               new["attn"]["qkv_bias"], new["cls_token"], new["pos_embed"]):
    np.testing.assert_array_equal(leaf, 1.0)


def test_decay_mask_on_a_vit_decays_exactly_the_weight_matrices():
  from flax import nnx

  from sslx.models import vit
  model = nnx.eval_shape(lambda: vit(patch_size=4, width=8, depth=1, num_heads=2, image_size=8,
                                     pos_embed="learned", num_registers=1, rngs=nnx.Rngs(0)))
  mask = optim.decay_mask(nnx.state(model, nnx.Param).to_pure_dict())
  decayed = {jax.tree_util.keystr(path) for path, m in
             jax.tree_util.tree_leaves_with_path(mask) if m}
  assert decayed == {"['patch_embed']['kernel']", "['blocks'][0]['attn']['qkv_kernel']",
                     "['blocks'][0]['attn']['out_kernel']", "['blocks'][0]['fc1']['kernel']",
                     "['blocks'][0]['fc2']['kernel']"}


def test_decay_mask_of_scanned_blocks_is_the_unrolled_mask_stacked():
  """A scanned ViT's block parameters carry a leading [depth] axis: biases, norm scales and
  LayerScale gains ([depth, width]) must still not be decayed."""
  from flax import nnx

  from sslx.models import vit

  def params(scan):
    model = nnx.eval_shape(lambda: vit(patch_size=4, width=8, depth=2, num_heads=2, image_size=8,
                                       layer_scale_init=0.1, scan=scan, rngs=nnx.Rngs(0)))
    return nnx.state(model, nnx.Param).to_pure_dict()

  unrolled = optim.decay_mask(params(False))
  stacked = jax.tree.map(lambda a, b: a and b, *(unrolled["blocks"][i] for i in range(2)))
  assert optim.decay_mask(params(True)) == {**unrolled, "blocks": {"block": stacked}}
  assert stacked["fc1"] == {"kernel": True, "bias": False} and stacked["ls1"] is False


def test_gradient_clipping():
  c = _config(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, warmup_steps=0,
              lr_scaling="none", grad_clip_norm=1.0)
  tx, _ = optim.make_optimizer(c, 256, total_steps=10)
  params = {"w": jnp.zeros((2, 2))}
  updates, _ = tx.update({"w": jnp.full((2, 2), 10.0)}, tx.init(params), params)
  np.testing.assert_allclose(float(optax.global_norm(updates)), 1.0, rtol=1e-5)


def test_lars_trust_ratio_exclude_updates_those_parameters_by_plain_momentum_sgd():
  """SimCLRv2's classifier head (optim.trust_ratio_exclude): lr * g, not lr * eta |w|/|g| * g;
  every other weight matrix keeps LARS's trust ratio. A name that is no parameter is refused."""
  c = _config(name="lars", lr=0.5, lr_scaling="none", weight_decay=0.0, momentum=0.0,
              warmup_steps=0, trust_ratio_exclude=("head",))
  tx, _ = optim.make_optimizer(c, 256, total_steps=10)
  params = {"head": {"w": jnp.full((2, 3), 2.0)}, "encoder": {"w": jnp.full((2, 3), 2.0)}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["head"]["w"], -0.5 * 0.1, rtol=1e-6)
  trust = c.trust_coefficient * np.linalg.norm(np.full((2, 3), 2.0)) / np.linalg.norm(
      np.full((2, 3), 0.1))
  np.testing.assert_allclose(updates["encoder"]["w"], -0.5 * trust * 0.1, rtol=1e-5)
  typo = _config(name="lars", warmup_steps=0, trust_ratio_exclude=("heads",))
  tx, _ = optim.make_optimizer(typo, 256, total_steps=10)
  with pytest.raises(ValueError, match=r"optim.trust_ratio_exclude names \['heads'\]"):
    tx.init(params)


def test_weight_decay_exclude_keeps_those_parameters_out_of_weight_decay():
  """MSN's prototypes (optim.weight_decay_exclude): with a zero gradient AdamW moves only the
  decayed matrices, by lr * wd * w. A name that is no parameter is refused."""
  c = _config(name="adamw", lr=0.5, lr_scaling="none", weight_decay=0.1, warmup_steps=0,
              weight_decay_exclude=("prototypes",))
  tx, _ = optim.make_optimizer(c, 256, total_steps=10)
  params = {"prototypes": jnp.full((4, 3), 2.0), "encoder": {"w": jnp.full((2, 3), 2.0)}}
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates["prototypes"], 0.0)
  np.testing.assert_allclose(updates["encoder"]["w"], -0.5 * 0.1 * 2.0, rtol=1e-6)
  typo = _config(name="adamw", warmup_steps=0, weight_decay_exclude=("prototype",))
  tx, _ = optim.make_optimizer(typo, 256, total_steps=10)
  with pytest.raises(ValueError, match=r"optim.weight_decay_exclude names \['prototype'\]"):
    tx.init(params)


@pytest.mark.parametrize("field, value, match", [
    ("name", "adam9", "optim.name"),
    ("lr", 0.0, "optim.lr"),
    ("lr", -1.0, "optim.lr"),
    ("weight_decay", -1e-4, "optim.weight_decay"),
    ("momentum", 1.0, "optim.momentum"),
    ("warmup_steps", 1000, "optim.warmup_steps"),
    ("end_lr_fraction", 2.0, "optim.end_lr_fraction"),
    ("lr_scaling", "cubic", "optim.lr_scaling"),
    ("layer_decay", 0.0, "optim.layer_decay"),
    ("layer_decay", 1.5, "optim.layer_decay"),
    ("patch_embed_lr_multiplier", 0.0, "optim.patch_embed_lr_multiplier"),
    ("weight_decay_schedule", "linear", "optim.weight_decay_schedule"),
    ("weight_decay_end", -0.1, "optim.weight_decay_end"),
])
def test_invalid_settings_raise_named_errors(field, value, match):
  with pytest.raises(ValueError, match=match):
    optim.make_optimizer(_config(**{field: value}), 256, total_steps=1000)


def test_cosine_weight_decay_schedule_moves_adamw_decay_from_start_to_end():
  """DINO / DINOv2's weight decay: lr * wd(t) * w with wd(t) by a cosine from weight_decay to
  weight_decay_end over the run (zero gradients, so AdamW's update is the decay alone)."""
  c = _config(name="adamw", lr=0.5, lr_scaling="none", weight_decay=0.04, warmup_steps=0,
              end_lr_fraction=1.0, weight_decay_schedule="cosine", weight_decay_end=0.4)
  tx, _ = optim.make_optimizer(c, 256, total_steps=10)
  params = {"w": jnp.full((2, 3), 2.0), "b": jnp.full((3,), 2.0)}
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for step in range(11):
    updates, state = tx.update(zeros, state, params)
    decay = 0.4 + (0.04 - 0.4) * (1 + math.cos(math.pi * min(step, 10) / 10)) / 2
    np.testing.assert_allclose(updates["w"], -0.5 * decay * 2.0, rtol=1e-5)
    np.testing.assert_allclose(updates["b"], 0.0)  # biases never decay
  with pytest.raises(ValueError, match="optim.weight_decay_schedule='cosine' needs"):
    optim.make_optimizer(_config(name="lars", weight_decay_schedule="cosine"), 256, 1000)


@pytest.mark.parametrize("scan", [False, True])
def test_layer_decay_scales_each_vit_layer_and_the_heads_by_their_depth(scan):
  """Layer-wise lr decay (DINOv2's get_vit_lr_decay_rate): with L = 3 blocks, the embeddings
  and tokens learn at d^4, block i at d^(3 - i), the final norm and a head at 1; the patch
  embedding also by its multiplier. Checked on SGD's update, -lr * multiplier * g."""
  from flax import nnx

  from sslx.models.vit import vit
  model = vit(patch_size=4, width=16, depth=3, num_heads=2, image_size=8, num_registers=1,
              scan=scan, rngs=nnx.Rngs(0))
  params = {"encoder": {"net": nnx.state(model, nnx.Param).to_pure_dict()},
            "head": {"kernel": jnp.ones((16, 4))}, "mask_token": jnp.ones((16,))}
  d = 0.5
  c = _config(name="sgd", lr=1.0, lr_scaling="none", momentum=0.0, weight_decay=0.0,
              warmup_steps=0, end_lr_fraction=1.0, layer_decay=d, patch_embed_lr_multiplier=0.2)
  tx, _ = optim.make_optimizer(c, 256, total_steps=10)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  net = updates["encoder"]["net"]
  np.testing.assert_allclose(net["patch_embed"]["kernel"], -0.2 * d**4)
  for name in ("cls_token", "registers"):
    np.testing.assert_allclose(net[name], -(d**4))
  np.testing.assert_allclose(updates["mask_token"], -(d**4))
  np.testing.assert_allclose(net["norm"]["scale"], -1.0)
  np.testing.assert_allclose(updates["head"]["kernel"], -1.0)
  for i in range(3):
    fc1 = net["blocks"]["block"]["fc1"]["kernel"][i] if scan else net["blocks"][i]["fc1"]["kernel"]
    np.testing.assert_allclose(fc1, -(d ** (3 - i)))
  resnet_like = {"conv": jnp.ones((3, 3))}
  with pytest.raises(ValueError, match="exactly one ViT"):
    tx.update(resnet_like, tx.init(resnet_like), resnet_like)
