"""Optimizers and learning-rate schedules from config: LARS, SGD and AdamW with warmup + cosine,
weight decay (and LARS trust ratios) applied to weight matrices only, never to biases or norms.
"""

from collections.abc import Callable

import jax
import optax

OPTIMIZERS = ("lars", "sgd", "adamw")


def scaled_learning_rate(config, global_batch_size: int) -> float:
  """Peak learning rate from `config.lr`, given per 256 examples (Goyal et al. 2017).

  lr_scaling "linear": lr * B / 256 (SimCLR with LARS, BYOL); "sqrt": lr * sqrt(B / 256);
  "none": lr as written.
  """
  if config.lr_scaling == "linear":
    return config.lr * global_batch_size / 256
  if config.lr_scaling == "sqrt":
    return config.lr * (global_batch_size / 256) ** 0.5
  if config.lr_scaling == "none":
    return config.lr
  raise ValueError(
      f"optim.lr_scaling must be 'linear', 'sqrt' or 'none', got {config.lr_scaling!r}")


def make_schedule(config, global_batch_size: int, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to the peak learning rate, then cosine decay to `end_lr_fraction`."""
  validate(config, total_steps)
  peak = scaled_learning_rate(config, global_batch_size)
  warmup = config.warmup_steps
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=peak * config.end_lr_fraction)


# Parameters with more than one dimension that are not weights: the ViT's per-head qkv bias
# [3, heads, head_dim], its class / register / mask tokens and learned position embedding,
# which MAE, DINO and timm leave out of weight decay.
NO_DECAY_NAMES = ("qkv_bias", "cls_token", "registers", "mask_token", "pos_embed")


def decay_mask(params):
  """True for weight matrices and conv kernels (ndim > 1, not in NO_DECAY_NAMES); biases, norm
  scales and tokens are excluded, as in SimCLR / BYOL (decaying BN scales fights the
  normalisation) and the ViT methods. A scanned ViT's stacked block parameters
  (``blocks/block/...``, sslx.models.vit.ScannedBlocks) are judged per layer, without their
  leading [depth] axis."""
  def decays(path, p):
    keys = [getattr(k, "key", None) for k in path]
    stacked = any(a == "blocks" and b == "block" for a, b in zip(keys, keys[1:]))
    return p.ndim - stacked > 1 and (keys[-1] if keys else None) not in NO_DECAY_NAMES
  return jax.tree_util.tree_map_with_path(decays, params)


def decay_mask_excluding(field: str, excluded) -> Callable:
  """`decay_mask` with the top-level parameters named in `excluded` (the config field `field`)
  set False; a name that is no top-level parameter is refused (at ``tx.init``), naming the
  field."""
  excluded = tuple(excluded)

  def mask(params):
    unknown = sorted(set(excluded) - set(params))
    if unknown:
      raise ValueError(f"{field} names {unknown}, which are not top-level parameters; they are "
                       f"{sorted(params)}")

    def kept(path, decays):
      return decays and getattr(path[0], "key", None) not in excluded
    return jax.tree_util.tree_map_with_path(kept, decay_mask(params))

  return mask


def make_optimizer(config, global_batch_size: int, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = make_schedule(config, global_batch_size, total_steps)
  weight_decay_mask = decay_mask_excluding("optim.weight_decay_exclude",
                                           config.get("weight_decay_exclude", ()))
  if config.name == "lars":
    trust_ratio_mask = decay_mask_excluding("optim.trust_ratio_exclude",
                                            config.get("trust_ratio_exclude", ()))
    tx = optax.lars(schedule, weight_decay=config.weight_decay,
                    weight_decay_mask=weight_decay_mask,
                    trust_coefficient=config.trust_coefficient,
                    trust_ratio_mask=trust_ratio_mask, momentum=config.momentum)
  elif config.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask),
                     optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))
  else:
    tx = optax.adamw(schedule, b1=config.b1, b2=config.b2,
                     weight_decay=config.weight_decay, mask=weight_decay_mask)
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx, schedule


def validate(config, total_steps: int) -> None:
  """Rejects optimizer settings that would train silently wrong, naming the field."""
  if config.name not in OPTIMIZERS:
    raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {config.name!r}")
  checks = [
      ("lr", config.lr > 0, "> 0"),
      ("weight_decay", config.weight_decay >= 0, ">= 0"),
      ("momentum", 0 <= config.momentum < 1, "in [0, 1)"),
      ("warmup_steps", 0 <= config.warmup_steps < max(total_steps, 1), "in [0, total_steps)"),
      ("end_lr_fraction", 0 <= config.end_lr_fraction <= 1, "in [0, 1]"),
      ("grad_clip_norm", config.grad_clip_norm >= 0, ">= 0 (0 disables clipping)"),
  ]
  for field, ok, expected in checks:
    if not ok:
      raise ValueError(f"optim.{field} must be {expected}, got {config[field]!r}"
                       + (f" (total_steps={total_steps})" if field == "warmup_steps" else ""))
