"""MixMatch (Berthelot et al. 2019): the averaged prediction of two weak views of an unlabelled
image, sharpened, is its label; labelled and unlabelled images are mixed with each other (mixup,
one ratio lam' = max(lam, 1 - lam) per step so each mixed image stays closest to its own), the
labelled part trained with cross-entropy, the unlabelled part with the squared error of the
softmax, weighted by semi.unsup_weight ramped over semi.unsup_warmup (USB's classic setting: 75
over the first 40%, temperature 0.5, Beta(0.5, 0.5), uratio 1).

As USB, the guesses are made with BatchNorm in training mode without updating its running
statistics, and the unlabelled "second view" is a second weak view. Deviation: USB forwards the
mixed batch in uratio + 1 chunks interleaved so that the BatchNorm statistics of the first are
representative; here the whole mixed batch goes through the model in one pass (what USB's
`use_cat` does for the other methods), which gives every row the same statistics directly.
"""

import jax
import jax.numpy as jnp

from experiments import _semisup
from sslx import experiment
from sslx.data import augment
from sslx.method import Method


def sharpen(probs: jax.Array, temperature) -> jax.Array:
  """probs [B, C] (rows summing to 1) -> probs ** (1 / T), renormalised (MixMatch's eq. 7)."""
  sharpened = probs ** (1.0 / temperature)
  return sharpened / jnp.sum(sharpened, axis=-1, keepdims=True)


def get_method(config) -> Method:
  _semisup.check_config(config)
  temperature, alpha = config.loss.temperature, config.loss.mixup_alpha
  if not 0.0 < temperature <= 1.0:
    raise ValueError(f"loss.temperature must be in (0, 1] (1: no sharpening), got "
                     f"{temperature!r}")
  if not alpha > 0.0:
    raise ValueError(f"loss.mixup_alpha must be > 0 (the Beta distribution's parameter), got "
                     f"{alpha!r}")
  network, spec = _semisup.classifier(config)
  weak_views = config.semi.weak

  def loss(params, variables, batch, rng):
    keys = jax.random.split(rng, 5)
    labelled = augment.augment_batch(keys[0], batch["image"], weak_views)
    unlabelled = jnp.concatenate([
        augment.augment_batch(keys[1], batch["unlabelled_image"], weak_views),
        augment.augment_batch(keys[2], batch["unlabelled_image"], weak_views)])
    images = spec.normalize(jnp.concatenate([labelled, unlabelled]))
    num_labelled, num_unlabelled = labelled.shape[0], batch["unlabelled_image"].shape[0]

    # The label guess: BatchNorm normalises with this batch's statistics, but the running ones
    # are those of the training pass below (the guessing model's are dropped).
    guesser = network.merge(params, variables["batch_stats"])
    _, guess_logits = guesser(images[num_labelled:], train=True, rng=keys[3])
    probs = jax.nn.softmax(jax.lax.stop_gradient(guess_logits))
    guess = sharpen((probs[:num_unlabelled] + probs[num_unlabelled:]) / 2, temperature)
    targets = jnp.concatenate([jax.nn.one_hot(batch["label"], spec.num_classes),
                               guess, guess])

    mixed, perm, ratio = _semisup.mixup(keys[4], images, alpha, own_majority=True)
    mixed_targets = ratio * targets + (1.0 - ratio) * targets[perm]
    model = network.merge(params, variables["batch_stats"])
    _, logits = model(mixed, train=True, rng=jax.random.fold_in(keys[3], 1))
    sup_loss = _semisup.cross_entropy(logits[:num_labelled], mixed_targets[:num_labelled])
    unsup_loss = jnp.mean((jax.nn.softmax(logits[num_labelled:])
                           - mixed_targets[num_labelled:]) ** 2)
    weight = _semisup.unsup_ramp(config, variables["step"])
    metrics = {"train/sup_loss": sup_loss, "train/unsup_loss": unsup_loss,
               "train/unsup_weight": weight, "train/mix_ratio": ratio,
               "train/guess_max": jnp.mean(jnp.max(guess, axis=-1))}
    state = {"batch_stats": experiment.Network.batch_stats(model), "ema": variables["ema"]}
    return sup_loss + weight * unsup_loss, {"metrics": metrics, "state": state}

  return _semisup.ema_classifier_method(config, network, spec, loss)
