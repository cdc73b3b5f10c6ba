"""Mixed Barlow Twins (Bandara et al. 2023, "Guarding Barlow Twins Against Overfitting with Mixed
Samples"): Barlow Twins plus a regulariser asking the cross-correlations of MixUp-ed images to be
the mix of the unmixed ones, as if the embedding were linear in the input.
"""

import jax
import jax.numpy as jnp

from experiments import _redundancy
from sslx import experiment
from sslx.losses import barlow_twins, mixed_barlow_twins_regularizer
from sslx.method import Method


def regularizer_weight(step, reg_weight: float, warmup_steps: int):
  """``reg_weight``, ramped up linearly from 0 over ``warmup_steps`` (mix-bt's ImageNet code
  ramps it over the 10 warm-up epochs; its CIFAR code keeps it constant: ``warmup_steps=0``)."""
  if not warmup_steps:
    return jnp.asarray(reg_weight, jnp.float32)
  return reg_weight * jnp.minimum(1.0, step / warmup_steps)


def get_method(config) -> Method:
  loss = config.loss
  experiment.check_non_negative("loss.lambd", loss.lambd)
  experiment.check_positive("loss.scale", loss.scale)
  experiment.check_non_negative("loss.reg_weight", loss.reg_weight)
  experiment.check_positive("loss.mixup_alpha", loss.mixup_alpha)
  if not (isinstance(loss.reg_warmup_steps, int) and loss.reg_warmup_steps >= 0):
    raise ValueError(f"loss.reg_warmup_steps must be an integer >= 0, got "
                     f"{loss.reg_warmup_steps!r}")

  def objective(context):
    z1, z2 = context.projections
    v1, v2 = context.views
    ratio_rng, perm_rng = jax.random.split(context.rng)
    # One MixUp ratio and one permutation per step (mix-bt: np.random.beta(1, 1), randperm):
    # image k of view 1 is mixed with image permutation[k] of view 2. Mixing the normalised
    # views is mixing the raw ones: the normalisation is affine and the weights sum to 1.
    ratio = jax.random.beta(ratio_rng, loss.mixup_alpha, loss.mixup_alpha)
    permutation = jax.random.permutation(perm_rng, v1.shape[0])
    z_mixed = context.embed(ratio * v1 + (1.0 - ratio) * v2[permutation])
    invariance = barlow_twins(z1, z2, lambd=loss.lambd)
    regularizer = mixed_barlow_twins_regularizer(z1, z2, z_mixed, ratio, permutation,
                                                 lambd=loss.lambd)
    weight = regularizer_weight(context.step, loss.reg_weight, loss.reg_warmup_steps)
    value = loss.scale * (invariance + weight * regularizer)
    return value, {"train/barlow_twins": invariance, "train/mix_regularizer": regularizer,
                   "train/mix_regularizer_weight": weight}

  return _redundancy.redundancy_method(config, objective)
