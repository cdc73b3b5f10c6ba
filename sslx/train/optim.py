"""Optimizers and learning-rate schedules from config: LARS, SGD and AdamW with warmup + cosine,
weight decay (and LARS trust ratios) applied to weight matrices only, never to biases or norms;
for ViTs, layer-wise learning-rate decay and a cosine weight-decay schedule (DINO, DINOv2).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
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


WEIGHT_DECAY_SCHEDULES = ("constant", "cosine")


def weight_decay_schedule(config, total_steps: int) -> optax.Schedule:
  """`optim.weight_decay`, constant, or by a cosine to `optim.weight_decay_end` over the run
  (DINO / DINOv2 raise it 0.04 -> 0.4 or 0.2, with no warm-up)."""
  if config.get("weight_decay_schedule", "constant") == "constant":
    return optax.constant_schedule(config.weight_decay)
  return optax.cosine_decay_schedule(
      config.weight_decay, max(total_steps, 1),
      alpha=config.weight_decay_end / config.weight_decay if config.weight_decay else 0.0)


def add_scheduled_decayed_weights(schedule: optax.Schedule, mask) -> optax.GradientTransformation:
  """``updates + schedule(count) * params`` on the leaves `mask` selects: optax's
  `add_decayed_weights` with the weight decay a schedule of the step."""
  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params):
    decay = schedule(state.count)
    updates = jax.tree.map(lambda g, p: g + decay * p, updates, params)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.masked(optax.GradientTransformation(init, update), mask)


# The parameters a ViT puts before its first block (layer 0 of layer-wise decay): the patch
# embedding, position embedding and tokens (DINOv2's and BEiT's grouping).
EMBEDDING_NAMES = ("patch_embed", "pos_embed", "cls_token", "registers", "mask_token")


def _blocks_position(keys) -> int | None:
  """The index in `keys` of a ViT's "blocks" container, or None."""
  for i, key in enumerate(keys[:-1]):
    if key == "blocks" and (keys[i + 1] == "block" or isinstance(keys[i + 1], int)
                            or str(keys[i + 1]).isdigit()):
      return i
  return None


def layer_lr_multipliers(params, decay: float, patch_embed_multiplier: float = 1.0):
  """Per-parameter learning-rate multipliers of layer-wise decay (BEiT; MAE's fine-tuning;
  DINOv2's `get_vit_lr_decay_rate`), a tree shaped like `params`.

  With ``L`` ViT blocks, layer 0 is the embeddings and tokens (EMBEDDING_NAMES, wherever they
  sit in the tree, e.g. iBOT's top-level mask token), block ``i`` is layer ``i + 1`` and
  everything else (the final norm, heads) layer ``L + 1``; a parameter of layer ``l`` learns at
  ``decay ** (L + 1 - l)`` times the schedule's rate. A scanned ViT's stacked blocks
  (``blocks/block``, leading ``[L]`` axis) get an ``[L, 1, ...]`` array of multipliers. The patch
  embedding is further scaled by `patch_embed_multiplier` (DINOv2: 0.2). The tree must hold
  exactly one ViT (one "blocks" container); ValueError otherwise, naming what it found.
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  keys_of = [tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path) for path, _ in flat]
  containers = {keys[:i] for keys in keys_of if (i := _blocks_position(keys)) is not None}
  if len(containers) != 1:
    raise ValueError(f"optim.layer_decay needs parameters holding exactly one ViT (one 'blocks' "
                     f"container); found {len(containers)}: {sorted(map(str, containers))}")
  depth = 0
  for (path, leaf), keys in zip(flat, keys_of):
    i = _blocks_position(keys)
    if i is not None:
      depth = max(depth, leaf.shape[0] if keys[i + 1] == "block" else int(keys[i + 1]) + 1)

  def multiplier(path, leaf):
    keys = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path)
    i = _blocks_position(keys)
    scale = patch_embed_multiplier if "patch_embed" in keys else 1.0
    if any(name in keys for name in EMBEDDING_NAMES):
      return scale * decay ** (depth + 1)
    if i is None:
      return scale
    if keys[i + 1] == "block":  # stacked: one multiplier per layer along the leading axis
      layers = np.arange(1, depth + 1, dtype=np.float32)
      return (scale * decay ** (depth + 1 - layers)).reshape((depth,) + (1,) * (leaf.ndim - 1))
    return scale * decay ** (depth - int(keys[i + 1]))

  return jax.tree_util.tree_map_with_path(multiplier, params)


def scale_by_layer(decay: float, patch_embed_multiplier: float) -> optax.GradientTransformation:
  """Multiplies each update by its `layer_lr_multipliers` entry (after the learning rate, so
  AdamW's decoupled weight decay is scaled alike, as a PyTorch parameter group's lr is)."""
  def update(updates, state, params=None):
    del params
    multipliers = layer_lr_multipliers(updates, decay, patch_embed_multiplier)
    return jax.tree.map(lambda u, m: (u * m).astype(u.dtype), updates, multipliers), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


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
  elif config.get("weight_decay_schedule", "constant") == "constant":
    tx = optax.adamw(schedule, b1=config.b1, b2=config.b2,
                     weight_decay=config.weight_decay, mask=weight_decay_mask)
  else:  # optax.adamw's own chain, its weight decay scheduled
    tx = optax.chain(
        optax.scale_by_adam(b1=config.b1, b2=config.b2),
        add_scheduled_decayed_weights(weight_decay_schedule(config, total_steps),
                                      weight_decay_mask),
        optax.scale_by_learning_rate(schedule))
  layer_decay = config.get("layer_decay", 1.0)
  patch_embed_multiplier = config.get("patch_embed_lr_multiplier", 1.0)
  if layer_decay != 1.0 or patch_embed_multiplier != 1.0:
    tx = optax.chain(tx, scale_by_layer(layer_decay, patch_embed_multiplier))
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
      ("layer_decay", 0 < config.get("layer_decay", 1.0) <= 1, "in (0, 1] (1: off)"),
      ("patch_embed_lr_multiplier", config.get("patch_embed_lr_multiplier", 1.0) > 0, "> 0"),
      ("weight_decay_schedule", config.get("weight_decay_schedule", "constant")
       in WEIGHT_DECAY_SCHEDULES, f"one of {WEIGHT_DECAY_SCHEDULES}"),
      ("weight_decay_end", config.get("weight_decay_end", 0.0) >= 0, ">= 0"),
  ]
  for field, ok, expected in checks:
    if not ok:
      raise ValueError(f"optim.{field} must be {expected}, got {config[field]!r}"
                       + (f" (total_steps={total_steps})" if field == "warmup_steps" else ""))
  if config.get("weight_decay_schedule", "constant") != "constant" and config.name != "adamw":
    raise ValueError(f"optim.weight_decay_schedule={config.weight_decay_schedule!r} needs "
                     f"optim.name='adamw', got {config.name!r}")
