"""T-JEPA (Thimonier, De Melo Costa et al. 2024, "T-JEPA: Augmentation-Free Self-Supervised
Learning for Tabular Data", arXiv:2410.05016): I-JEPA's latent prediction on the columns of a table.

Every feature becomes a token (its standardised value times a learned per-feature vector, plus a
learned per-feature embedding, the FT-Transformer tokenizer the authors use). A transformer
context encoder sees a random subset of the feature tokens; a narrow predictor, given mask tokens
at the positions of other features, predicts what an EMA target encoder, which sees every
feature, outputs there. The loss is the mean squared error between the two (jose-melo/t-jepa
src/train.py's `MSELoss`; `sslx.losses.data2vec` with a single teacher layer, no target norm and
scale 1/D is exactly that mean). Learned regularisation tokens ([REG]) are prepended to every
encoder input and passed to the predictor; they are never predicted, and the paper finds them
necessary to keep the target encoder from collapsing on tables.

The batch is {"features": float32 [B, F] (standardised, `sslx.data.tabular`), "label": int32 [B]};
`Method.apply(variables, features)` gives the representation the paper probes: the target
encoder's output tokens, [REG] included, flattened (config.tjepa.pooling "mean" averages them).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.ijepa import predict_blocks
from sslx import experiment
from sslx.data import tabular
from sslx.data.masks import gather_patches
from sslx.losses import data2vec
from sslx.method import Method
from sslx.models.vit import (
    Dense, LayerNorm, _blocks, _gather_tokens, _init_mask_token_transformer, _kernel_init, _Keys,
    _param, _run_blocks, sincos_pos_embed_2d)

POOLINGS = ("flatten", "mean")
EVAL_ENCODERS = ("target", "context")


def _fan_in_uniform(width):
  """U(-1/sqrt(width), 1/sqrt(width)): PyTorch's kaiming_uniform(a=sqrt(5)) on a [n, width]
  table, how the reference tokenizer initialises its value vectors and feature embeddings."""
  bound = 1.0 / np.sqrt(width)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class TabularEncoder(nnx.Module):
  """Feature tokenizer + [REG] tokens + pre-norm transformer blocks + final LayerNorm.

  Call with features [B, F] and optionally feature_indices [B, K] (the features this encoder may
  see; the context encoder's subset). Returns the output tokens [B, R + K, width]: the R
  registers first, then the features in feature_indices order (all F in column order when None).
  """

  def __init__(self, *, num_features: int, width: int, depth: int, num_heads: int,
               mlp_ratio: float, num_registers: int, rngs: nnx.Rngs):
    keys = _Keys(rngs)
    init = _fan_in_uniform(width)
    self.num_features, self.num_registers, self.width = num_features, num_registers, width
    self.value_embed = _param(init, keys, (num_features, width), (None, "embed"))
    self.feature_embed = _param(init, keys, (num_features, width), (None, "embed"))
    # "registers" is in sslx.train.optim.NO_DECAY_NAMES: tokens are not weight-decayed.
    self.registers = _param(init, keys, (num_registers, width), (None, "embed"))
    self.blocks = _blocks(width, depth, num_heads, mlp_ratio, 0.0, None, "xavier", keys)
    self.norm = LayerNorm(width, keys)

  def tokens(self, features):
    """features [B, F] -> feature tokens [B, F, width]: x_j * value_embed_j + feature_embed_j."""
    return features[..., None] * self.value_embed[...] + self.feature_embed[...]

  def __call__(self, features, feature_indices=None):
    if features.ndim != 2 or features.shape[1] != self.num_features:
      raise ValueError(f"features must be [batch, {self.num_features}], got shape "
                       f"{features.shape}")
    tokens = self.tokens(features)
    if feature_indices is not None:
      tokens = _gather_tokens(tokens, feature_indices)
    registers = jnp.broadcast_to(self.registers[...],
                                 (features.shape[0], self.num_registers, self.width))
    tokens = self.norm(_run_blocks(self.blocks, jnp.concatenate([registers, tokens], 1), None))
    return tokens.astype(jnp.float32)  # float32 out whatever the compute dtype


class TabularPredictor(nnx.Module):
  """The narrow transformer predictor: the context encoder's tokens ([REG] first) embedded to
  `width`, one mask token per target feature, fixed sin-cos codes of the feature index added to
  feature tokens (not to the registers, which have no column), outputs at the mask tokens
  projected back to the encoder width. Same call as `sslx.models.vit.IJEPAPredictor`, so
  `experiments.ijepa.predict_blocks` runs it once per target set."""

  def __init__(self, *, encoder_width: int, num_features: int, num_registers: int, width: int,
               depth: int, num_heads: int, mlp_ratio: float, rngs: nnx.Rngs):
    keys = _Keys(rngs)
    # A 1 x F grid: the column index is the feature index (half the code is then constant).
    _init_mask_token_transformer(self, encoder_width, (1, num_features), width, depth, num_heads,
                                 mlp_ratio, "trunc_normal", _kernel_init("trunc_normal"), keys)
    self.num_registers = num_registers
    self.proj = Dense(width, encoder_width, "embed", "embed", "trunc_normal", keys)

  def __call__(self, context, context_indices, target_indices):
    """context [B, R + Kc, encoder_width], context_indices [B, Kc], target_indices [B, Kt]
    -> predictions [B, Kt, encoder_width]."""
    batch, length, _ = context.shape
    if context_indices.shape != (batch, length - self.num_registers):
      raise ValueError(f"context_indices must be [{batch}, {length - self.num_registers}] (the "
                       f"context tokens after {self.num_registers} registers), got "
                       f"{context_indices.shape}")
    pos = jnp.asarray(sincos_pos_embed_2d(self.width, self.grid_size))
    register_pos = jnp.zeros((batch, self.num_registers, self.width))
    ctx = self.embed(context) + jnp.concatenate(
        [register_pos, _gather_tokens(pos, context_indices)], axis=1)
    tgt = self.mask_token[...] + _gather_tokens(pos, target_indices)
    x = self.norm(_run_blocks(self.blocks, jnp.concatenate([ctx, tgt], axis=1), None))
    return self.proj(x[:, length:]).astype(jnp.float32)


class TJEPAModel(nnx.Module):
  """The context encoder and the predictor; the target encoder is an EMA copy of `encoder`'s
  parameters kept in the variables' state."""

  def __init__(self, config, num_features: int, *, rngs: nnx.Rngs):
    m, p = config.model, config.predictor
    self.encoder = TabularEncoder(num_features=num_features, width=m.width, depth=m.depth,
                                  num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                                  num_registers=m.num_registers, rngs=rngs)
    self.predictor = TabularPredictor(encoder_width=m.width, num_features=num_features,
                                      num_registers=m.num_registers, width=p.width,
                                      depth=p.depth, num_heads=p.num_heads,
                                      mlp_ratio=p.mlp_ratio, rngs=rngs)


class FeatureMasks(NamedTuple):
  context_indices: jax.Array  # int32 [B, Kc]: the features the context encoder sees
  target_indices: jax.Array  # int32 [B, M, Kt]: M target sets, none of them in the context


def feature_masks(rng, batch_size: int, num_features: int, num_context: int, num_target: int,
                  num_targets: int) -> FeatureMasks:
  """Per row: a random context subset of `num_context` features, then `num_targets` random
  subsets of `num_target` features drawn from the remaining ones (they may overlap each other,
  never the context), as jose-melo/t-jepa src/mask.py draws them with one context set."""
  if num_context + num_target > num_features:
    raise ValueError(f"num_context + num_target must be <= num_features={num_features}, got "
                     f"{num_context} + {num_target}")
  context_rng, target_rng = jax.random.split(rng)
  order = jnp.argsort(jax.random.uniform(context_rng, (batch_size, num_features)), axis=1)
  context = order[:, :num_context]
  in_context = jnp.zeros((batch_size, num_features), bool).at[
      jnp.arange(batch_size)[:, None], context].set(True)
  # Context features sort last: the first num_target of every draw are outside the context.
  noise = jax.random.uniform(target_rng, (batch_size, num_targets, num_features))
  noise = jnp.where(in_context[:, None], jnp.inf, noise)
  targets = jnp.argsort(noise, axis=-1)[..., :num_target]
  return FeatureMasks(context.astype(jnp.int32), targets.astype(jnp.int32))


def mask_sizes(config, num_features: int) -> tuple[int, int]:
  """(features in the context, features per target set) from the config's shares."""
  t = config.tjepa
  num_context = max(1, round(t.context_share * num_features))
  num_target = max(1, round(t.target_share * num_features))
  if num_context + num_target > num_features:
    raise ValueError(
        f"config.tjepa.context_share + target_share must leave the targets outside the context: "
        f"got {t.context_share} and {t.target_share}, {num_context} + {num_target} features > "
        f"the {num_features} of {config.data.name!r}")
  return num_context, num_target


def _check_config(config) -> None:
  tabular.check_name(config.data.name)
  t = config.tjepa
  for name in ("context_share", "target_share"):
    if not 0.0 < t[name] < 1.0:
      raise ValueError(f"config.tjepa.{name} must be in (0, 1), got {t[name]!r}")
  experiment.check_positive("config.tjepa.num_targets", t.num_targets)
  experiment.check_non_negative("config.model.num_registers", config.model.num_registers)
  if t.pooling not in POOLINGS:
    raise ValueError(f"config.tjepa.pooling must be one of {POOLINGS}, got {t.pooling!r}")
  if t.eval_encoder not in EVAL_ENCODERS:
    raise ValueError(f"config.tjepa.eval_encoder must be one of {EVAL_ENCODERS}, got "
                     f"{t.eval_encoder!r}")
  for section in ("model", "predictor"):
    width, heads = config[section].width, config[section].num_heads
    if width <= 0 or heads <= 0 or width % heads or width % 4:
      raise ValueError(f"config.{section}.width must be a positive multiple of num_heads and of "
                       f"4, got width={width}, num_heads={heads}")


def _network(config):
  _check_config(config)
  num_features = tabular.num_features(config.data.name)
  return num_features, experiment.Network(lambda rngs: TJEPAModel(config, num_features,
                                                                  rngs=rngs),
                                          dtype=config.model.dtype)


def mse(predictions, targets):
  """Mean over rows, target sets, features and channels of (prediction - sg(target))^2: the
  reference's MSELoss, as `sslx.losses.data2vec` with one teacher layer, no target norm and scale
  1/D (every position counted)."""
  b, m, k, d = predictions.shape
  flat = lambda x: jnp.reshape(x, (b, m * k, d))  # noqa: E731
  return data2vec(flat(predictions), flat(targets)[None], jnp.ones((b, m * k)),
                  per_layer_norm=None, final_norm=None, beta=0.0, scale=1.0 / d)


def get_method(config) -> Method:
  num_features, net = _network(config)
  num_context, num_target = mask_sizes(config, num_features)
  registers = config.model.num_registers
  t = config.tjepa
  no_batch_stats = {}  # no BatchNorm: the variables are the parameters and the target encoder

  def init(rng, batch):
    del batch  # shapes come from the config and the table
    params = net.init(rng)["params"]
    return {"params": params, "teacher": {"params": jax.tree.map(jnp.copy, params["encoder"])}}

  def apply(variables, features):
    encoder_params = (variables["teacher"]["params"] if t.eval_encoder == "target"
                      else variables["params"]["encoder"])
    model = net.merge({**variables["params"], "encoder": encoder_params}, no_batch_stats)
    tokens = model.encoder(features)  # [B, R + F, D]
    if t.pooling == "mean":
      return jnp.mean(tokens, axis=1)
    return jnp.reshape(tokens, (tokens.shape[0], -1))

  def loss(params, variables, batch, rng):
    features = batch["features"]
    masks = feature_masks(rng, features.shape[0], num_features, num_context, num_target,
                          t.num_targets)
    model = net.merge(params, no_batch_stats)
    teacher = net.merge({**params, "encoder": variables["teacher"]["params"]}, no_batch_stats)
    # Targets: the EMA encoder on every feature, no gradient; the [REG] outputs are never targets.
    target_tokens = jax.lax.stop_gradient(teacher.encoder(features))
    targets = gather_patches(target_tokens[:, registers:], masks.target_indices)  # [B, M, Kt, D]
    context = model.encoder(features, masks.context_indices)  # [B, R + Kc, D]
    pred = predict_blocks(model.predictor, context, masks.context_indices, masks.target_indices)
    std = lambda tokens: experiment.embedding_std(jnp.mean(tokens, axis=1))  # noqa: E731
    metrics = {"train/embedding_std": std(context),
               "train/target_embedding_std": std(target_tokens)}
    return mse(pred, targets), {"metrics": metrics, "state": {"teacher": variables["teacher"]}}

  return Method(init=init, apply=apply, loss=loss,
                after_update=experiment.ema_teacher_update(config, lambda p: p["encoder"]))
