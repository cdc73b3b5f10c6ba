"""EMA teachers (BYOL, MoCo, DINO, I-JEPA ...): the momentum schedule, the update applied after the
optimizer step, and the EMA scaling rule for changing the batch size.
"""

import math

import jax
import jax.numpy as jnp

SCHEDULES = ("cosine", "constant")


def ema_scale(batch_size: int, reference_batch_size: int) -> float:
  """kappa = batch_size / reference_batch_size, the factor of the EMA scaling rule.

  "How to Scale Your EMA" (Busbridge et al. 2023): a momentum rho tuned at the reference batch
  size becomes rho ** kappa at kappa times that batch, alongside the optimizer's learning-rate
  scaling rule (linear for SGD / LARS, square root for Adam), so that training follows the same
  trajectory per epoch.
  """
  for name, value in (("batch_size", batch_size), ("reference_batch_size", reference_batch_size)):
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
      raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
  return batch_size / reference_batch_size


def ema_momentum(step, total_steps: int, *, base: float, final: float = 1.0,
                 schedule: str = "cosine", scale: float = 1.0):
  """The teacher momentum at `step` (an int or a traced int32 scalar).

  "cosine" (BYOL, Grill et al. 2020, Sec. 3.2; DINO): rises from `base` at step 0 to `final` at
  `total_steps` as ``final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``.
  "constant": `base` throughout (MoCo's 0.999). The schedule follows the fraction of training
  done, so at a larger batch (fewer steps per epoch) it is the same function of the epoch; `scale`
  (kappa from `ema_scale`) then raises the momentum to the power kappa, the EMA scaling rule.
  """
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
  if not 0.0 <= base <= final <= 1.0:
    raise ValueError(f"base and final: expected 0 <= base <= final <= 1, got base={base}, "
                     f"final={final}")
  if not (isinstance(total_steps, int) and total_steps >= 1):
    raise ValueError(f"total_steps: expected an int >= 1, got {total_steps!r}")
  if not scale > 0:
    raise ValueError(f"scale: expected a positive number, got {scale!r}")
  if schedule == "constant":
    momentum = jnp.asarray(base, jnp.float32)
  else:
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
    momentum = final - (final - base) * (jnp.cos(math.pi * progress) + 1.0) / 2.0
  return momentum ** scale


def ema_update(teacher, student, momentum):
  """``momentum * teacher + (1 - momentum) * student`` leaf by leaf, for pytrees of the same
  structure (call it after the optimizer step, on the new student parameters). Sharded leaves
  keep their sharding: the update is elementwise."""
  if jax.tree.structure(teacher) != jax.tree.structure(student):
    raise ValueError("teacher and student: expected pytrees of the same structure, got "
                     f"{jax.tree.structure(teacher)} and {jax.tree.structure(student)}")
  return jax.tree.map(lambda t, s: momentum * t + (1.0 - momentum) * s, teacher, student)
