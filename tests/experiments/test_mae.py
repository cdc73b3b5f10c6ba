"""MAE's experiment module: the masking, the encoder on visible patches only, the loss it reports,
the representation it evaluates, and the reconstruction picture. (Learning on a fixed batch
is checked with every other method in test_methods.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib import image as mpimg

from configs import mae as mae_config
from configs import simclr as simclr_config
from experiments import mae as mae_experiment
from sslx.data import augment
from sslx.data.masks import random_masking_batch
from sslx.losses import mae as mae_loss
from sslx.losses import patchify
from sslx.train import loop
from tests.experiments.test_methods import fixed_batch


def smoke_config(**overrides):
  config = mae_config.get_config("smoke")
  with config.unlocked():
    # 7-pixel patches: a 4 x 4 grid, so 75% is exactly 12 of 16 patches (49 patches of 4 pixels
    # would keep int(49 * 0.25) = 12 and mask 37, 75.5%).
    config.model.vit.patch_size = 7
    for key, value in overrides.items():
      config[key.split(".")[0]][key.split(".")[1]] = value
  return config


@pytest.fixture(scope="module")
def setup():
  config = smoke_config()
  method = mae_experiment.get_method(config)
  batch = fixed_batch(8)
  variables = method.init(jax.random.PRNGKey(0), batch)
  images, net = mae_experiment._network(config)
  return config, method, batch, variables, images, net.merge(variables["params"], {})


def test_exactly_75_percent_masked_and_the_encoder_sees_only_visible_patches(setup):
  config, _, batch, _, images, model = setup
  vit = model.encoder.net
  assert vit.num_patches == 16
  masks = random_masking_batch(jax.random.PRNGKey(3), 8, vit.num_patches, config.mae.mask_ratio)
  np.testing.assert_array_equal(np.asarray(masks.mask).sum(axis=1), 12)
  keep = np.asarray(masks.keep_indices)
  assert keep.shape == (8, 4)
  assert not np.asarray(masks.mask)[np.arange(8)[:, None], keep].any()

  x = images.normalize(batch["image"].astype(jnp.float32) / 255)
  pred, out = model.reconstruct(x, masks.keep_indices, train=False)
  assert out["patches"].shape == (8, 4, vit.width)
  assert pred.shape == (8, 16, 7 * 7 * 1)
  # Changing the masked patches' pixels changes nothing the encoder computes.
  noise = jax.random.normal(jax.random.PRNGKey(4), x.shape)
  hidden = mae_experiment.unpatchify(
      jnp.where(masks.mask[..., None], 1.0, 0.0) * jnp.ones((8, 16, 49)), 7, (28, 28), 1)
  _, out_noisy = model.reconstruct(x + hidden * noise, masks.keep_indices, train=False)
  np.testing.assert_allclose(out_noisy["patches"], out["patches"], atol=1e-5)
  np.testing.assert_allclose(out_noisy["cls"], out["cls"], atol=1e-5)


def test_the_loss_is_sslx_mae_on_the_decoded_masked_patches(setup):
  config, method, batch, variables, images, model = setup
  rng = jax.random.PRNGKey(7)
  value, aux = method.loss(variables["params"], variables, batch, rng)
  # The same draws as the method: one view, one mask per image, the encoder's key.
  view_rng, mask_rng, _ = jax.random.split(rng, 3)
  (view,) = augment.augment_views(view_rng, batch["image"], [config.augment.to_dict()])
  view = images.normalize(view)
  masks = random_masking_batch(mask_rng, 8, 16, 0.75)
  pred, _ = model.reconstruct(view, masks.keep_indices, train=True)
  expected = mae_loss(pred, patchify(view, 7), masks.mask, norm_pix_loss=True)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  assert aux["state"] == {} and "params" in variables and len(variables) == 1
  assert np.isfinite(float(aux["metrics"]["train/embedding_std"]))


def test_apply_is_the_unmasked_encoder_cls_token_or_mean_patch(setup):
  config, method, batch, variables, images, model = setup
  x = batch["image"].astype(jnp.float32) / 255
  out = model.encoder.net(images.normalize(x), train=False)
  assert out["patches"].shape[1] == 16  # every patch, no masking
  np.testing.assert_allclose(method.apply(variables, x), out["cls"], atol=1e-5)
  mean_config = smoke_config(**{"mae.eval_features": "mean_patches"})
  features = mae_experiment.get_method(mean_config).apply(variables, x)
  np.testing.assert_allclose(features, jnp.mean(out["patches"], axis=1), atol=1e-5)


@pytest.mark.parametrize("key, value, message", [
    ("model.name", "resnet", "model.name"),
    ("mae.mask_ratio", 1.0, "mask_ratio"),
    ("mae.eval_features", "pooled", "eval_features"),
])
def test_bad_config_is_refused_by_name(key, value, message):
  with pytest.raises(ValueError, match=message):
    mae_experiment.get_method(smoke_config(**{key: value}))


def test_reconstruction_png_shows_decoder_output_not_the_input(setup, tmp_path):
  config, _, batch, variables, images, model = setup
  x = batch["image"][:4].astype(jnp.float32) / 255
  rng = jax.random.PRNGKey(5)
  r = mae_experiment.reconstruct(config, variables, x, rng)
  assert r.original.shape == r.masked.shape == r.reconstruction.shape == (4, 28, 28, 1)
  # Every patch of the reconstruction, visible ones included, is the decoder's prediction
  # mapped back to pixels with the patch's own mean / std (norm_pix_loss).
  target = patchify(images.normalize(x), 7)
  std = jnp.sqrt(jnp.var(target, axis=-1, keepdims=True, ddof=1) + 1e-6)
  pixels = (r.pred * std + jnp.mean(target, axis=-1, keepdims=True)) * images.std + images.mean
  expected = np.clip(mae_experiment.unpatchify(pixels, 7, (28, 28), 1), 0, 1)
  np.testing.assert_allclose(r.reconstruction, expected, atol=1e-5)
  visible = ~r.mask
  assert visible.sum() == 4 * 4
  recon_patches, input_patches = patchify(r.reconstruction, 7), patchify(r.original, 7)
  assert not np.allclose(np.asarray(recon_patches)[visible], np.asarray(input_patches)[visible])
  # The masked row keeps visible patches and greys out the masked ones.
  masked_patches = np.asarray(patchify(r.masked, 7))
  np.testing.assert_allclose(masked_patches[visible], np.asarray(input_patches)[visible],
                             atol=1e-5)
  np.testing.assert_allclose(masked_patches[r.mask], 0.5, atol=1e-5)

  path = mae_experiment.save_reconstructions(config, variables, x, str(tmp_path / "r.png"), rng)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  picture = mpimg.imread(path)
  assert picture.ndim == 3 and picture.shape[0] > 100 and picture.shape[1] > 100
  with pytest.raises(ValueError, match="images must be"):
    mae_experiment.reconstruct(config, variables, x[:, :20], rng)


def test_the_training_loop_draws_the_reconstructions_of_the_first_monitor_images(setup, tmp_path):
  config, _, batch, variables, images, _ = setup
  monitor_images = np.asarray(batch["image"])  # uint8, as the monitor set holds them
  paths = loop.save_method_pictures(config, variables, monitor_images, str(tmp_path))
  assert paths == [str(tmp_path / "mae_reconstructions.png")]
  # The same picture as save_reconstructions on the first PICTURE_IMAGES images in [0, 1] with
  # the config's seed, drawn independently here.
  x = monitor_images[:loop.PICTURE_IMAGES].astype(np.float32) / 255
  expected = mae_experiment.save_reconstructions(config, variables, x, str(tmp_path / "e.png"),
                                                 jax.random.PRNGKey(config.seed))
  np.testing.assert_array_equal(mpimg.imread(paths[0]), mpimg.imread(expected))
  # A method without pictures draws none.
  assert loop.save_method_pictures(simclr_config.get_config("smoke"), {}, monitor_images,
                                   str(tmp_path)) == []
