"""iBOT's experiment module: its block-wise masks, the mask token in the student's ViT, the loss
rebuilt from its parts (DINO [CLS] term + masked patch term, separate centers), the teacher
outside the gradient, and the attention-map picture. (Learning on a fixed batch is checked with
every other method in test_methods.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from matplotlib import image as mpimg

from configs import dino as dino_config
from configs import ibot as ibot_config
from experiments import _multicrop
from experiments import dino as dino_experiment
from experiments import ibot as ibot_experiment
from sslx.evaluate import plots
from sslx.losses import dino, dino_center_update, ibot_patch, ibot_patch_center_update
from sslx.losses import patchify
from sslx.models.vit import vit as make_vit
from sslx.train import loop
from tests.experiments.test_methods import fixed_batch
from tests.train import helpers

BATCH = 8
LOSS_RNG = jax.random.PRNGKey(11)


def smoke_config(**overrides):
  return helpers.smoke_config("", "ibot", **overrides)  # "" keeps the default data_dir


@pytest.fixture(scope="module")
def setup():
  config = smoke_config()
  method = ibot_experiment.get_method(config)
  batch = fixed_batch(BATCH)
  variables = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  # A teacher that is not the student, a mask token that is not zero, and centers that are not
  # zero, so that using the wrong one shows.
  params = {**variables["params"], "mask_token": jnp.linspace(-1.0, 1.0, 16)}
  variables = {**helpers.with_teacher_moved(variables), "params": params, "step": jnp.asarray(1),
               "center": 0.1 * jnp.sin(jnp.arange(64.0)),
               "patch_center": 0.1 * jnp.cos(jnp.arange(64.0))}
  return config, method, batch, variables


@pytest.fixture(scope="module")
def loss_and_grads(setup):
  """The loss, aux and gradients wrt the parameters and the teacher, from one compile."""
  _, method, batch, variables = setup

  def value(params, teacher):
    return method.loss(params, {**variables, "teacher": teacher}, batch, LOSS_RNG)

  (loss, aux), grads = jax.jit(jax.value_and_grad(value, argnums=(0, 1), has_aux=True))(
      variables["params"], variables["teacher"])
  return loss, aux, grads


def test_block_masks_leave_half_the_images_unmasked_and_mask_at_most_half():
  config = smoke_config()
  masks = np.asarray(jax.jit(lambda k: ibot_experiment.draw_masks(config, k, 2, 64, (7, 7)))(
      jax.random.PRNGKey(3)))
  assert masks.shape == (2, 64, 49) and masks.dtype == bool
  counts = masks.sum(-1)
  unmasked = (counts == 0).mean()
  assert 0.3 < unmasked < 0.7  # ratio 0 with probability 1/2
  assert counts.max() <= 0.5 * 49 and counts[counts > 0].min() >= 1


def test_the_mask_token_replaces_the_masked_patch_embeddings():
  vit = make_vit(None, image_size=28, in_channels=1, patch_size=4, width=16, depth=1,
                 num_heads=2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 28, 28, 1))
  mask = jnp.zeros((2, 49), bool).at[0, 3].set(True).at[1, 40].set(True)
  token = jnp.arange(16.0)
  encode = jax.jit(lambda x, **kw: vit(x, **kw)["patches"])  # jitted: eager dispatch is slow
  got = encode(x, mask=mask, mask_token=token)
  # The same input built by hand: patch 3 of image 0 and patch 40 of image 1 are given pixels
  # whose embedding is the token (solve patch_embed for them), the rest unchanged.
  kernel, bias = np.asarray(vit.patch_embed.kernel[...]), np.asarray(vit.patch_embed.bias[...])
  pixels = np.asarray(patchify(x, 4)).copy()
  for b, n in ((0, 3), (1, 40)):
    pixels[b, n] = np.linalg.lstsq(kernel.T, np.asarray(token) - bias, rcond=None)[0]
  assert np.allclose(pixels[0, 3] @ kernel + bias, token, atol=1e-4)
  rebuilt = encode(jnp.asarray(_unpatchify(pixels)))
  np.testing.assert_allclose(got, rebuilt, atol=1e-4)
  assert not np.allclose(got, encode(x), atol=1e-3)
  with pytest.raises(ValueError, match="mask_token"):
    vit(x, mask=mask)
  with pytest.raises(ValueError, match="mask must be"):
    vit(x, mask=mask[:, :10], mask_token=token)


def _unpatchify(patches):
  """[B, 49, 16] -> [B, 28, 28, 1] (4-pixel patches, row-major)."""
  x = patches.reshape(patches.shape[0], 7, 7, 4, 4, 1).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(patches.shape[0], 28, 28, 1)


def test_the_loss_is_dino_plus_ibot_patch_on_logits_rebuilt_here(setup, loss_and_grads):
  config, _, batch, variables = setup
  value, aux, _ = loss_and_grads
  spec = _multicrop.images_for(config)
  net = _multicrop.MultiCropNetwork(
      lambda rngs, shape: ibot_experiment.IBOTModel(config, shape, rngs=rngs), config, spec)
  views, _ = _multicrop.crop_views(LOSS_RNG, batch["image"], config, spec)
  masks = ibot_experiment.draw_masks(config, jax.random.fold_in(LOSS_RNG, 2), 2, BATCH, (7, 7))

  @jax.jit
  def logits(variables):
    params, teacher = variables["params"], variables["teacher"]
    student = net.merge(params, variables["batch_stats"])
    glob = views["global"].reshape(2 * BATCH, 28, 28, 1)
    out = student.encoder.net(glob, mask=masks.reshape(2 * BATCH, 49),
                              mask_token=params["mask_token"], train=True)
    tokens = jnp.concatenate([out["cls"][:, None], out["patches"]], 1).reshape(-1, 16)
    s = student.head(tokens, train=True).reshape(2, BATCH, 50, -1)
    local = net.merge(params, variables["batch_stats"], "local")
    s_local = local.head(local.encoder(views["local"].reshape(-1, 12, 12, 1), train=True),
                         train=True).reshape(-1, BATCH, 64)
    t_model = net.merge(teacher["params"], teacher["batch_stats"])
    t_out = t_model.encoder.net(glob, train=True)
    t_tokens = jnp.concatenate([t_out["cls"][:, None], t_out["patches"]], 1).reshape(-1, 16)
    t = t_model.head(t_tokens, train=True).reshape(2, BATCH, 50, -1)
    return s, s_local, t

  s, s_local, t = logits(variables)
  cls_temp = ibot_experiment.teacher_temperature(config, 1)
  patch_temp = ibot_experiment.patch_temperature(config, 1)
  expected_cls = dino(jnp.concatenate([s[:, :, 0], s_local]), t[:, :, 0], variables["center"],
                      student_temp=0.1, teacher_temp=cls_temp)
  expected_patch = ibot_patch(s[:, :, 1:], t[:, :, 1:], masks, variables["patch_center"],
                              student_temp=0.1, teacher_temp=patch_temp)
  np.testing.assert_allclose(aux["metrics"]["train/cls_loss"], expected_cls, rtol=1e-4)
  np.testing.assert_allclose(aux["metrics"]["train/patch_loss"], expected_patch, rtol=1e-4)
  np.testing.assert_allclose(value, expected_cls + expected_patch, rtol=1e-4)
  assert float(expected_patch) > 0  # some image was masked
  # The two centers move towards their own teacher outputs ([CLS] / every patch).
  state = aux["state"]
  np.testing.assert_allclose(state["center"], dino_center_update(
      variables["center"], t[:, :, 0], momentum=0.9), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(state["patch_center"], ibot_patch_center_update(
      variables["patch_center"], t[:, :, 1:], momentum=0.9), rtol=1e-4, atol=1e-6)


def test_the_teacher_gets_no_gradient_and_the_mask_token_does(setup, loss_and_grads):
  _, _, _, variables = setup
  _, aux, (param_grads, teacher_grads) = loss_and_grads
  assert set(variables["params"]) == {"encoder", "head", "mask_token"}
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(teacher_grads))
  for part in ("encoder", "head", "mask_token"):
    assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(param_grads[part])), part
  # The loss returns the teacher's parameters untouched (the EMA runs in after_update).
  for a, b in zip(jax.tree.leaves(aux["state"]["teacher"]["params"]),
                  jax.tree.leaves(variables["teacher"]["params"])):
    np.testing.assert_array_equal(a, b)


def test_apply_is_the_teacher_backbone_cls_token(setup):
  config, method, batch, variables = setup
  spec = _multicrop.images_for(config)
  net = _multicrop.MultiCropNetwork(
      lambda rngs, shape: ibot_experiment.IBOTModel(config, shape, rngs=rngs), config, spec)
  x = batch["image"].astype(jnp.float32) / 255
  teacher = net.merge(variables["teacher"]["params"], variables["teacher"]["batch_stats"])
  expected = teacher.encoder.net(spec.normalize(x), train=False)["cls"]
  np.testing.assert_allclose(method.apply(variables, x), expected, atol=1e-5)


def test_attention_maps_are_the_cls_row_and_the_png_depends_on_them(setup, tmp_path):
  config, _, batch, variables = setup
  x = batch["image"][:2].astype(jnp.float32) / 255
  encoder = variables["teacher"]["params"]["encoder"]
  attention, grid = dino_experiment.cls_attention(config, encoder, x)
  assert attention.shape == (2, 2, 49) and grid == (7, 7)
  # Softmax rows over [CLS] + 49 patches: the patches' share is positive and below 1.
  share = np.asarray(attention).sum(-1)
  assert np.all(share > 0) and np.all(share < 1)
  path = dino_experiment.save_attention_maps(config, encoder, x, str(tmp_path / "attn.png"))
  first = mpimg.imread(path)
  assert first.shape[0] > 100 and first.shape[1] > 200
  # Another attention gives another picture; the same one the same picture.
  other = np.asarray(attention)[:, :, ::-1]
  title = "ibot: last block [CLS] attention"  # save_attention_maps' title
  plots.plot_attention_maps(x, other, grid, str(tmp_path / "other.png"), title=title)
  plots.plot_attention_maps(x, attention, grid, str(tmp_path / "same.png"), title=title)
  assert not np.array_equal(mpimg.imread(str(tmp_path / "other.png")), first)
  np.testing.assert_array_equal(mpimg.imread(str(tmp_path / "same.png")), first)
  with pytest.raises(ValueError, match="attention must be"):
    plots.plot_attention_maps(x, attention[:, :, :40], grid, str(tmp_path / "bad.png"))
  with pytest.raises(ValueError, match="images must be"):
    dino_experiment.cls_attention(config, encoder, x[:, :20])


def test_the_training_loop_draws_the_teachers_attention_maps(setup, tmp_path):
  config, _, batch, variables = setup
  monitor_images = np.asarray(batch["image"])  # uint8, as the monitor set holds them
  paths = loop.save_method_pictures(config, variables, monitor_images, str(tmp_path))
  assert paths == [str(tmp_path / "ibot_attention.png")]
  x = monitor_images[:loop.PICTURE_IMAGES].astype(np.float32) / 255
  expected = dino_experiment.save_attention_maps(
      config, variables["teacher"]["params"]["encoder"], x, str(tmp_path / "e.png"))
  np.testing.assert_array_equal(mpimg.imread(paths[0]), mpimg.imread(expected))
  # DINO on the ResNet has no attention to draw.
  assert dino_experiment.save_pictures(dino_config.get_config("smoke"), {}, monitor_images,
                                       str(tmp_path)) == []


@pytest.mark.parametrize("key, value, message", [
    ("model.name", "resnet", "model.name"),
    ("model.vit.class_token", False, "class_token"),
    ("loss.center_momentum2", 1.5, "center_momentum2"),
    ("loss.teacher_patch_temp", 0.0, "teacher_patch_temp"),
    ("ibot.pred_ratio", (0.6,), "config.ibot.pred_ratio"),
])
def test_bad_config_is_refused_by_name(key, value, message):
  overrides = {key: value}
  if key == "ibot.pred_ratio":
    overrides["ibot.pred_ratio_var"] = (0.5,)
  with pytest.raises(ValueError, match=message):
    ibot_experiment.get_method(smoke_config(**overrides))


def test_imagenet_preset_is_the_papers_vit_b16():
  c = ibot_config.get_config("imagenet")
  assert c.model.vit.variant == "B/16" and c.batch_size == 1024
  assert c.head.out_features == 8192 and c.head.norm == "none"
  assert c.multicrop["local"]["number"] == 10
  assert tuple(c.multicrop["global"]["scale"]) == (0.32, 1.0)
  assert tuple(c.multicrop["local"]["scale"]) == (0.05, 0.32)
  assert tuple(c.ibot.pred_ratio) == (0.0, 0.3) and tuple(c.ibot.pred_ratio_var) == (0.0, 0.2)
  assert c.optim.lr * c.batch_size / 256 == pytest.approx(5e-4 * 4)
  assert c.ema.base == 0.996 and c.loss.teacher_temp == 0.07
  with pytest.raises(ValueError, match="cifar10"):
    ibot_config.get_config("cifar10")
