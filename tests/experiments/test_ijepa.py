"""I-JEPA's experiment module: the multi-block masks it draws, the target encoder outside the
gradient, the loss rebuilt independently, and the representation it evaluates. (Learning on a
fixed batch is checked with every other method in test_methods.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ijepa as ijepa_config
from experiments import ijepa as ijepa_experiment
from sslx.data import augment
from sslx.data.masks import multiblock_masks_batch
from sslx.losses import ijepa as ijepa_loss
from tests.experiments.test_methods import fixed_batch
from tests.train import helpers

BATCH = 8


def draw_masks(config, key, batch_size):
  """The method's masks for this config on the 7 x 7 grid (jitted: the eager loop is slow)."""
  kwargs = ijepa_experiment._mask_kwargs(config)
  return jax.jit(lambda k: multiblock_masks_batch(k, batch_size, 7, **kwargs))(key)


def smoke_config(**overrides):
  config = ijepa_config.get_config("smoke")
  with config.unlocked():
    for key, value in overrides.items():  # "model.vit.class_token" -> config.model.vit
      *sections, field = key.split(".")
      target = config
      for part in sections:
        target = target[part]
      target[field] = value
  return config


@pytest.fixture(scope="module")
def setup():
  config = smoke_config()
  method = ijepa_experiment.get_method(config)
  batch = fixed_batch(BATCH)
  variables = jax.jit(method.init)(jax.random.PRNGKey(0), batch)  # jitted: eager init is slow
  # A target encoder that is not the context encoder, so using the wrong one shows.
  variables = helpers.with_teacher_moved(variables)
  images, net = ijepa_experiment._network(config)
  return config, method, batch, variables, images, net


def test_four_target_blocks_and_a_context_without_any_target_patch(setup):
  config, *_ = setup
  masks = draw_masks(config, jax.random.PRNGKey(3), 64)
  assert masks.target_indices.shape[:2] == (64, 4)
  assert masks.target_masks.shape == (64, 4, 49)
  targets = np.asarray(masks.target_masks).any(axis=1)  # [B, N]: any target block's patch
  context = np.asarray(masks.context_indices)
  assert not np.take_along_axis(targets, context, axis=1).any()
  assert not (np.asarray(masks.context_mask) & targets).any()
  # Every listed target patch lies in its own block.
  blocks = np.asarray(masks.target_masks)
  index = np.asarray(masks.target_indices)
  assert np.take_along_axis(blocks, index, axis=2).all()


LOSS_RNG = jax.random.PRNGKey(11)


@pytest.fixture(scope="module")
def loss_and_grads(setup):
  """The method's loss, aux and gradients wrt the parameters and the target encoder, from one
  compile (the tests' time goes into XLA compiles on a CPU)."""
  _, method, batch, variables, _, _ = setup

  def value(params, teacher):
    return method.loss(params, {**variables, "teacher": teacher}, batch, LOSS_RNG)

  (loss, aux), (param_grads, teacher_grads) = jax.jit(
      jax.value_and_grad(value, argnums=(0, 1), has_aux=True))(
          variables["params"], variables["teacher"])
  return loss, aux, param_grads, teacher_grads


def test_the_target_encoder_gets_no_gradient(setup, loss_and_grads):
  _, _, _, variables, _, _ = setup
  assert set(variables) == {"params", "teacher"}
  assert set(variables["params"]) == {"encoder", "predictor"}
  assert (jax.tree.structure(variables["teacher"]["params"])
          == jax.tree.structure(variables["params"]["encoder"]))
  _, _, param_grads, teacher_grads = loss_and_grads
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(teacher_grads))
  # ... while the context encoder and the predictor do get one.
  for part in ("encoder", "predictor"):
    assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(param_grads[part]))


def test_the_loss_is_sslx_ijepa_on_predictions_and_targets_rebuilt_here(setup, loss_and_grads):
  config, _, batch, variables, images, net = setup
  value, aux, _, _ = loss_and_grads
  # The method's draws: one view, the masks, the encoder's key (no drop-path here).
  view_rng, mask_rng, _ = jax.random.split(LOSS_RNG, 3)
  masks = draw_masks(config, mask_rng, BATCH)
  tgt_index = np.asarray(masks.target_indices)  # [B, 4, Kt]
  ctx_index = masks.context_indices

  @jax.jit
  def rebuild(variables):
    (view,) = augment.augment_views(view_rng, batch["image"], [config.augment.to_dict()])
    view = images.normalize(view)
    student = net.merge(variables["params"], {})
    teacher = net.merge({**variables["params"], "encoder": variables["teacher"]["params"]}, {})
    tokens = teacher.encoder.net(view, train=False)["patches"]  # [B, 49, D]
    context = student.encoder.net(view, patch_indices=ctx_index, train=True)["patches"]
    # One predictor call per target block, each from the context alone.
    pred = jnp.stack([student.predictor(context, ctx_index, tgt_index[:, m]) for m in range(4)],
                     axis=1)
    return tokens, pred

  tokens, pred = map(np.asarray, rebuild(variables))
  normed = (tokens - tokens.mean(-1, keepdims=True)) / np.sqrt(tokens.var(-1, keepdims=True)
                                                               + 1e-5)
  targets = np.stack([normed[b][tgt_index[b]] for b in range(BATCH)])  # [B, 4, Kt, D]
  expected = ijepa_loss(jnp.asarray(pred), jnp.asarray(targets), normalize_targets=False)
  np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
  # The state returned is the target encoder, untouched (the EMA runs in after_update).
  for a, b in zip(jax.tree.leaves(aux["state"]["teacher"]),
                  jax.tree.leaves(variables["teacher"])):
    np.testing.assert_array_equal(a, b)
  assert np.isfinite(float(aux["metrics"]["train/embedding_std"]))


def test_after_update_moves_the_target_encoder_towards_the_context_encoder(setup):
  config, method, _, variables, _, _ = setup
  helpers.assert_teacher_follows_the_encoder(method, variables, config.ema.base)


@pytest.mark.parametrize("eval_encoder", ["target", "context"])
def test_apply_is_the_chosen_encoders_mean_patch_token_on_all_patches(setup, eval_encoder):
  *_, batch, variables, images, net = setup
  method = ijepa_experiment.get_method(smoke_config(**{"ijepa.eval_encoder": eval_encoder}))
  # The fixture's target encoder differs from the context encoder, so reading the wrong one shows.
  encoder = (variables["teacher"]["params"] if eval_encoder == "target"
             else variables["params"]["encoder"])
  x = batch["image"].astype(jnp.float32) / 255
  model = net.merge({**variables["params"], "encoder": encoder}, {})
  out = model.encoder.net(images.normalize(x), train=False)
  assert out["patches"].shape[1] == 49 and "cls" not in out
  np.testing.assert_allclose(method.apply(variables, x), jnp.mean(out["patches"], axis=1),
                             atol=1e-5)


@pytest.mark.parametrize("key, value, message", [
    ("model.name", "resnet", "model.name"),
    ("model.vit.class_token", True, "class_token"),
    ("ijepa.num_targets", 0, "num_targets"),
    ("ijepa.eval_encoder", "student", "eval_encoder"),
])
def test_bad_config_is_refused_by_name(key, value, message):
  with pytest.raises(ValueError, match=message):
    ijepa_experiment.get_method(smoke_config(**{key: value}))


def test_imagenet_preset_is_the_papers_vit_h14():
  c = ijepa_config.get_config("imagenet")
  assert c.model.vit.variant == "H/14" and c.augment.crop_size == 224
  assert c.batch_size == 2048 and c.predictor.width == 384 and c.predictor.depth == 12
  assert c.optim.lr * c.batch_size / 256 == pytest.approx(1e-3)
  assert c.ema.base == 0.996 and c.ema.final == 1.0
  assert tuple(c.augment.crop_scale) == (0.3, 1.0) and c.augment.flip_prob == 0.0
  with pytest.raises(ValueError, match="cifar10"):
    ijepa_config.get_config("cifar10")
