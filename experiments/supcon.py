"""Supervised Contrastive Learning (Khosla et al., NeurIPS 2020): SimCLR's two views and projector,
but every view of every example WITH THE SAME LABEL is a positive. SUPERVISED: reads batch["label"].

Not self-supervised: it is the methods table's supervised reference point (what contrastive
learning reaches when the classes are known), not a competitor of the label-free methods.
"""

import jax.numpy as jnp

from experiments import _contrastive
from experiments.simclr import SimCLRModel
from sslx import experiment
from sslx.losses import supcon
from sslx.method import Method


def get_method(config) -> Method:
  temperature = config.loss.temperature
  experiment.check_positive("loss.temperature", temperature)

  def objective(model, z1, z2, batch, variables):
    del model, variables
    if "label" not in batch:
      raise ValueError("supcon is supervised: the batch must hold 'label' (int32 [B]), got keys "
                       f"{sorted(batch)}")
    labels = batch["label"]
    # L^sup_out over the 2B embeddings [B, 2 views, D]: the other view and every view of the
    # same-class examples are positives (the authors' SupConLoss, contrast_mode='all').
    value = supcon(jnp.stack([z1, z2], axis=1), labels, temperature=temperature)
    # Fraction of the other examples that share an anchor's class: with few classes per batch
    # most candidates are positives and the loss floor rises.
    same_class = labels[:, None] == labels[None, :]
    others = labels.shape[0] - 1
    positive_fraction = (jnp.sum(same_class) - labels.shape[0]) / (labels.shape[0] * others)
    return value, {"train/same_class_fraction": positive_fraction}, {}

  return _contrastive.two_view_method(config, SimCLRModel, objective)
