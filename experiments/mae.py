"""MAE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"): a random 75% of each
image's patches is removed, the ViT encoder sees only the visible ones, and a light transformer
decoder fills the removed positions with a shared mask token and predicts their pixels; the loss
is the mean squared error to each masked patch's own normalised pixels (norm_pix_loss).

One augmented view per image (random resized crop + flip, no colour augmentation: Sec. A.1).
The representation for kNN / linear probing (`Method.apply`) is the encoder on all patches, no
masking: its [CLS] token by default (`config.mae.eval_features`), the feature MAE's linear probe
reads (facebookresearch/mae main_linprobe.py defaults to the class token; fine-tuning pools the
patch tokens), or the mean patch token.

`save_reconstructions` draws original / masked / reconstructed images into a PNG; `save_pictures`
(called by the training loop after a run) draws them for the monitor set's first images.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from sslx import experiment
from sslx.data import augment
from sslx.data.masks import random_masking_batch
from sslx.losses import mae, patchify
from sslx.method import Method
from sslx.models import Backbone
from sslx.models.vit import MAEDecoder

EVAL_FEATURES = ("cls", "mean_patches")


class MAEModel(nnx.Module):
  """The ViT encoder (`Backbone`, so kNN / probes see the usual encoder) and the MAE decoder."""

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    vit = self.encoder.net
    d = config.decoder
    self.decoder = MAEDecoder(encoder_width=vit.width, grid_size=vit.grid_size,
                              patch_size=vit.patch_size, in_channels=vit.in_channels,
                              width=d.width, depth=d.depth, num_heads=d.num_heads,
                              remat=config.model.remat, attention=config.model.vit.attention,
                              rngs=rngs)

  def reconstruct(self, images, keep_indices, *, train: bool, rng=None):
    """images [B, H, W, C] (normalised), keep_indices [B, K] -> (decoder predictions [B, N, P]
    for every patch, the encoder's outputs on the visible patches)."""
    out = self.encoder.net(images, patch_indices=keep_indices, train=train, rng=rng)
    return self.decoder(out["patches"], keep_indices, out.get("cls")), out


def _check_config(config) -> None:
  if config.model.name != "vit":
    raise ValueError(f"config.model.name must be 'vit' for MAE (the encoder runs on the visible "
                     f"patches only), got {config.model.name!r}")
  if not 0.0 <= config.mae.mask_ratio < 1.0:
    raise ValueError(f"config.mae.mask_ratio must be in [0, 1), got {config.mae.mask_ratio!r}")
  if config.mae.eval_features not in EVAL_FEATURES:
    raise ValueError(f"config.mae.eval_features must be one of {EVAL_FEATURES}, got "
                     f"{config.mae.eval_features!r}")
  if config.mae.eval_features == "cls" and not config.model.vit.class_token:
    raise ValueError("config.mae.eval_features='cls' needs config.model.vit.class_token=True; "
                     "use 'mean_patches' for a ViT without a class token")


def _network(config):
  _check_config(config)
  images = experiment.images_for(config)
  return images, experiment.Network(lambda rngs: MAEModel(config, images.view_shape, rngs=rngs),
                                    dtype=config.model.dtype)


def _encoder_features(config, out):
  return out["cls"] if config.mae.eval_features == "cls" else jnp.mean(out["patches"], axis=1)



def get_method(config) -> Method:
  images, net = _network(config)
  # MAE's model holds no BatchNorm: its variables are the parameters alone, so every state
  # entry the trainer keeps really is updated.
  no_batch_stats = {}

  def init(rng, batch):
    del batch  # shapes come from the config and the dataset
    return {"params": net.init(rng)["params"]}

  def apply(variables, x):
    model = net.merge(variables["params"], no_batch_stats)
    return _encoder_features(config, model.encoder.net(images.for_eval(x), train=False))

  def loss(params, variables, batch, rng):
    del variables  # no state besides the parameters
    view_rng, mask_rng, encoder_rng = jax.random.split(rng, 3)
    (view,) = augment.augment_views(view_rng, batch["image"], [config.augment.to_dict()])
    view = images.normalize(view)
    model = net.merge(params, no_batch_stats)
    masks = random_masking_batch(mask_rng, view.shape[0], model.encoder.net.num_patches,
                                 config.mae.mask_ratio)
    pred, out = model.reconstruct(view, masks.keep_indices, train=True, rng=encoder_rng)
    # The target is the encoder's input image (dataset-normalised), patch by patch, as
    # facebookresearch/mae's forward_loss patchifies the normalised batch.
    target = patchify(view, model.encoder.net.patch_size)
    value = mae(pred, target, masks.mask, norm_pix_loss=config.loss.norm_pix_loss)
    metrics = {"train/embedding_std": experiment.embedding_std(_encoder_features(config, out))}
    return value, {"metrics": metrics, "state": {}}

  return Method(init=init, apply=apply, loss=loss, param_axes=net.param_axes)


# ------------------------------------------------------------------------------------------
# Reconstruction pictures.


class Reconstruction(NamedTuple):
  """Images in [0, 1], [B, H, W, C]: the inputs, the inputs with masked patches grey, and the
  decoder's prediction for every patch; mask [B, N] (True = masked); pred [B, N, P] raw."""
  original: np.ndarray
  masked: np.ndarray
  reconstruction: np.ndarray
  mask: np.ndarray
  pred: np.ndarray


def unpatchify(patches, patch_size: int, image_hw: tuple[int, int], channels: int):
  """The inverse of `sslx.losses.patchify`: [B, N, p*p*C] -> [B, H, W, C]."""
  batch = patches.shape[0]
  grid_h, grid_w = image_hw[0] // patch_size, image_hw[1] // patch_size
  if patches.shape[1:] != (grid_h * grid_w, patch_size * patch_size * channels):
    raise ValueError(f"patches must be [B, {grid_h * grid_w}, {patch_size ** 2 * channels}] for "
                     f"{image_hw} images of {channels} channels in {patch_size}-pixel patches, "
                     f"got shape {patches.shape}")
  x = jnp.reshape(patches, (batch, grid_h, grid_w, patch_size, patch_size, channels))
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return jnp.reshape(x, (batch, grid_h * patch_size, grid_w * patch_size, channels))


def reconstruct(config, variables, images, rng) -> Reconstruction:
  """Masks `images` (float in [0, 1], [B, H, W, C] at the view size) with `rng` and decodes them.

  With norm_pix_loss the decoder predicts each patch's normalised pixels; for display they are
  mapped back with that patch's true mean and std (the only way to show them as pixels), then
  from the dataset normalisation to [0, 1]. The reconstruction shows the decoder's output for
  every patch, visible ones included (not a copy of the input).
  """
  images_spec, net = _network(config)
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4 or tuple(images.shape[1:]) != images_spec.view_shape:
    raise ValueError(f"images must be [B, {', '.join(map(str, images_spec.view_shape))}] floats "
                     f"in [0, 1], got shape {images.shape}")
  model = net.merge(variables["params"], {})
  vit = model.encoder.net
  x = images_spec.normalize(images)
  masks = random_masking_batch(rng, x.shape[0], vit.num_patches, config.mae.mask_ratio)
  pred, _ = model.reconstruct(x, masks.keep_indices, train=False)
  target = patchify(x, vit.patch_size)
  pixels = pred
  if config.loss.norm_pix_loss:
    mean = jnp.mean(target, axis=-1, keepdims=True)
    std = jnp.sqrt(jnp.var(target, axis=-1, keepdims=True, ddof=1) + 1e-6)
    pixels = pred * std + mean
  hw, channels = images_spec.view_hw, images_spec.view_shape[-1]

  def to_unit(normalised_patches):
    out = unpatchify(normalised_patches, vit.patch_size, hw, channels)
    return np.asarray(jnp.clip(out * images_spec.std + images_spec.mean, 0.0, 1.0))

  grey = (0.5 - images_spec.mean) / images_spec.std  # mid-grey in normalised units
  masked = jnp.where(masks.mask[..., None], jnp.tile(grey, vit.patch_size ** 2), target)
  return Reconstruction(original=np.asarray(images), masked=to_unit(masked),
                        reconstruction=to_unit(pixels), mask=np.asarray(masks.mask),
                        pred=np.asarray(pred))


def save_reconstructions(config, variables, images, path: str, rng) -> str:
  """A PNG with one column per image and three rows: original, masked (removed patches grey),
  and the decoder's reconstruction. `images`: float [B, H, W, C] in [0, 1]. Returns `path`."""
  r = reconstruct(config, variables, images, rng)
  rows = (("original", r.original), ("masked", r.masked), ("reconstruction", r.reconstruction))
  n = r.original.shape[0]
  # Here, not at the top: matplotlib loads only when a picture is drawn. Figure, not pyplot:
  # no display and no global figure list.
  from matplotlib.figure import Figure

  from sslx.evaluate import plots
  fig = Figure(figsize=(1.2 * n + 1.2, 3.8))
  axes = fig.subplots(len(rows), n, squeeze=False)
  for i, (name, batch) in enumerate(rows):
    for j in range(n):
      ax = axes[i, j]
      image = batch[j]
      ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1,
                interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if j == 0:
        ax.set_ylabel(name, fontsize=8)
  fig.suptitle(f"MAE, mask ratio {config.mae.mask_ratio}", fontsize=9)
  fig.tight_layout()
  return plots.save_figure(fig, path)  # local or remote (gs://...) paths


def save_pictures(config, variables, images, directory: str) -> list[str]:
  """The method's pictures of a trained run (`sslx.train.loop` calls it after training with the
  monitor set's first images, uint8 [B, H, W, C]): `<directory>/mae_reconstructions.png`, masks
  drawn with the config's seed."""
  x = experiment.images_for(config).resized(jnp.asarray(images, jnp.float32) / 255.0)
  path = str(epath.Path(directory) / "mae_reconstructions.png")
  return [save_reconstructions(config, variables, x, path, jax.random.PRNGKey(config.seed))]
