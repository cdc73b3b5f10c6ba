"""Soft pseudo-labels with mixup (Arazo et al. 2020, "Pseudo-Labeling and Confirmation Bias in
Deep Semi-Supervised Learning"): every unlabelled image carries a soft label, the network's
softmax the last time it was seen; labelled and unlabelled images are mixed (mixup, lam ~
Beta(alpha, alpha)) and trained with the cross-entropy to the mixed soft labels plus the
paper's two regularisers (`sslx.losses.soft_pseudo_label_mixup`: a uniform class prior on the
batch-mean prediction, 0.8, and the entropy of each prediction, 0.4). Mixup and a minimum share
of labelled images in every batch are what the paper shows keep pseudo-labels from confirming
their own mistakes; here every step holds batch_size labelled and uratio x batch_size unlabelled
images (uratio 5: 16 of every 96, the paper's at least 16 of 100).

The soft labels are state: float32 [number of unlabelled images, classes], replicated and
checkpointed, a row of zeros until the image is first seen (that step's prediction is then its
label). As in the authors' code, a prediction is made on the un-mixed view with the model in
training mode and no gradient, and becomes the label the next time the image is drawn (their
code relabels at the end of each epoch: the same thing when each image is drawn once an epoch).
The first loss.labelled_only_fraction of the run trains on the labelled images alone (the
paper's warm-up, 10 of 400 epochs) and records no soft label, so that the first ones come from
the warmed-up network, as in the paper. An unlabelled batch that straddles an epoch boundary
(when uratio x batch_size does not divide the unlabelled set) may hold an image twice; which of
its two predictions is kept is then unspecified on GPU / TPU (as for FlexMatch's state).
"""

import jax
import jax.numpy as jnp

from experiments import _semisup
from sslx import experiment
from sslx.data import augment
from sslx.losses import soft_pseudo_label_mixup
from sslx.method import Method


def get_method(config) -> Method:
  _semisup.check_config(config)
  alpha, warmup = config.loss.mixup_alpha, config.loss.labelled_only_fraction
  if not alpha > 0.0:
    raise ValueError(f"loss.mixup_alpha must be > 0 (the Beta distribution's parameter), got "
                     f"{alpha!r}")
  if not 0.0 <= warmup < 1.0:
    raise ValueError(f"loss.labelled_only_fraction must be in [0, 1), got {warmup!r}")
  network, spec = _semisup.classifier(config)
  num_unlabelled = _semisup.num_unlabelled(config)
  regularisers = {"reg_prior_weight": config.loss.reg_prior_weight,
                  "reg_entropy_weight": config.loss.reg_entropy_weight}
  warmup_steps = int(warmup * config.total_steps)

  def init_state():
    return {"soft_labels": jnp.zeros((num_unlabelled, spec.num_classes), jnp.float32)}

  def loss(params, variables, batch, rng):
    keys = jax.random.split(rng, 4)
    labelled = augment.augment_batch(keys[0], batch["image"], config.semi.weak)
    unlabelled = augment.augment_batch(keys[1], batch["unlabelled_image"], config.semi.weak)
    num_labelled = labelled.shape[0]
    images = spec.normalize(jnp.concatenate([labelled, unlabelled]))

    # This step's predictions of the unlabelled images: their labels the next time they are drawn
    # (and, of the labelled ones, the un-mixed cross-entropy, a metric).
    predictor = network.merge(params, variables["batch_stats"])
    _, logits = predictor(images, train=True, rng=keys[2])
    logits = jax.lax.stop_gradient(logits)
    predicted = jax.nn.softmax(logits[num_labelled:])
    index = batch["unlabelled_index"]
    recorded = variables["soft_labels"][index]
    seen = jnp.sum(recorded, axis=-1, keepdims=True) > 0
    soft_labels = jnp.where(seen, recorded, predicted)
    targets = jnp.concatenate([jax.nn.one_hot(batch["label"], spec.num_classes), soft_labels])

    def mixed_loss(inputs, labels):
      mixed, perm, ratio = _semisup.mixup(keys[3], inputs, alpha, own_majority=False)
      model = network.merge(params, variables["batch_stats"])
      _, out = model(mixed, train=True, rng=jax.random.fold_in(keys[2], 1))
      value = soft_pseudo_label_mixup(out, labels, labels[perm], ratio, **regularisers)
      return value, experiment.Network.batch_stats(model)

    # Warm-up on the labelled images alone, then on all; one branch runs a step.
    value, batch_stats = jax.lax.cond(
        variables["step"] < warmup_steps,  # (its gradient keeps both branches' residuals)
        lambda: mixed_loss(images[:num_labelled], targets[:num_labelled]),
        lambda: mixed_loss(images, targets))
    metrics = {"train/mixup_loss": value,
               "train/sup_loss": _semisup.cross_entropy(logits[:num_labelled], batch["label"]),
               "train/soft_label_max": jnp.mean(jnp.max(soft_labels, axis=-1)),
               "train/soft_label_top1": jnp.mean(
                   jnp.argmax(predicted, -1) == jnp.argmax(soft_labels, -1)),
               "train/soft_labels_seen": jnp.mean(seen)}
    # Nothing is recorded during the warm-up: as in the paper, the first labels come from the
    # network at its end (an image first drawn after it is labelled by that step's prediction).
    in_warmup = variables["step"] < warmup_steps
    state = {"batch_stats": batch_stats, "ema": variables["ema"],
             "soft_labels": variables["soft_labels"].at[index].set(
                 jnp.where(in_warmup, recorded, predicted))}
    return value, {"metrics": metrics, "state": state}

  return _semisup.ema_classifier_method(config, network, spec, loss, init_state=init_state)
