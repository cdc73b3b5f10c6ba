"""Fine-tuning: the whole encoder and a linear head trained with labels, on the mesh.

The fine-tuning protocol of SimCLR / SimCLRv2 (Chen et al. 2020a, 2020b), usually run on a
label fraction (1% or 10% of the train labels, `sslx.data.sources.label_fraction`):
``logits = method.apply(variables, images) @ W + b`` (the evaluation features, before any
projector), cross-entropy on the labels, every parameter of the encoder and the head updated by
SGD (momentum, Nesterov) or AdamW with the trainer's schedule (`sslx.train.optim`: warmup +
cosine, weight decay on weight matrices only), optionally on lightly augmented views (e.g. random
crop + flip), for a fixed number of steps; then top-1 on the whole test split.

Deviation from SimCLRv2: the encoder runs through ``method.apply``, the evaluation forward pass
of the Method contract, so its BatchNorm statistics stay those of pre-training (SimCLRv2 updates
them); the contract has no training-mode forward pass that returns encoder features.

The step is one jitted function over the mesh: the global batch is split over the "data" axes
and parameters are replicated, so the result is the same on 1 or 8 devices (up to float
reduction order), and on several hosts.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sslx import sharding
from sslx.data import augment, pipeline, sources
from sslx.evaluate import features as features_lib
from sslx.method import Method
from sslx.train import optim

PROTOCOL = "fine-tuning (whole encoder + linear head, labels{fraction}, test-split top-1)"


def default_optim_config(**overrides) -> ml_collections.ConfigDict:
  """`sslx.train.optim` settings for fine-tuning: SGD with Nesterov momentum 0.9, lr 0.05 per
  256 examples scaled linearly, no weight decay (SimCLRv2 fine-tunes without it), 10% warmup
  unless ``warmup_steps`` is given. ``overrides`` replace any field (name="adamw" ...)."""
  c = ml_collections.ConfigDict({
      "name": "sgd", "lr": 0.05, "lr_scaling": "linear", "weight_decay": 0.0, "momentum": 0.9,
      "nesterov": True, "trust_coefficient": 0.001, "b1": 0.9, "b2": 0.999, "warmup_steps": -1,
      "end_lr_fraction": 0.0, "grad_clip_norm": 0.0})
  c.update(overrides)
  return c


def labels_of(source) -> np.ndarray:
  """Every label of ``source`` (reads the examples once)."""
  return np.asarray([e["label"] for e in pipeline.read_examples(source, range(len(source)))],
                    np.int64)


def _logits(apply_fn, params, frozen, images):
  features = apply_fn({**frozen, "params": params["encoder"]}, images)
  head = params["head"]
  return jnp.dot(features.astype(jnp.float32), head["w"],
                 precision=jax.lax.Precision.HIGHEST) + head["b"]


def _train_step(apply_fn, tx, mesh, view):
  """One jitted optimizer step on a global batch sharded over the mesh's batch axes."""
  rep, batch_sharding = sharding.replicated(mesh), sharding.batch_sharding(mesh)

  def step(params, opt_state, frozen, batch, rng):
    if view is None:
      images = batch["image"].astype(jnp.float32) / 255.0
    else:
      images = augment.augment_views(rng, batch["image"], [view])[0]

    def loss_fn(p):
      ce = optax.softmax_cross_entropy_with_integer_labels(
          _logits(apply_fn, p, frozen, images), batch["label"])
      return jnp.mean(ce)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, in_shardings=(rep, rep, rep, batch_sharding, rep),
                 out_shardings=(rep, rep, rep), donate_argnums=(0, 1))


def finetune(
    method: Method,
    variables,
    train_source,
    test_source,
    *,
    num_classes: int,
    mesh,
    steps: int,
    batch_size: int,
    eval_batch_size: int = 1000,
    optim_config=None,
    view_config=None,
    fraction: float | None = None,
    seed: int = 0,
) -> dict:
  """Fine-tunes ``method``'s encoder (``variables``, e.g. ``state.variables`` of a checkpoint)
  with a new linear head, then scores it on ``test_source``.

  Args:
    method: the Method whose ``apply`` gives the encoder features.
    variables: its variables; ``variables["params"]`` are fine-tuned, the rest stays frozen.
    train_source / test_source: random-access sources of {"image": uint8, "label"}.
    num_classes: number of classes of the head.
    mesh: the device mesh; batches are split over its "data" (and "fsdp") axes.
    steps: optimizer steps; batch_size: global batch (divisible by the batch devices).
    optim_config: `sslx.train.optim` settings (default `default_optim_config()`).
    view_config: an augmentation view config (`sslx.data.augment.make_pipeline` keys) for the
      training images, or None for none.
    fraction: train on ``label_fraction(labels, fraction, seed)`` of ``train_source`` only.
    seed: seeds the head, the batch order, the augmentation and the label fraction.

  Returns ``{"top1", "losses": per-step training losses, "variables": the fine-tuned
  variables, "head": {"w", "b"}, "num_train_examples", "protocol"}``.
  """
  for name, value in (("steps", steps), ("batch_size", batch_size),
                      ("eval_batch_size", eval_batch_size), ("num_classes", num_classes)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be a positive int, got {value!r}")
  sharding.check_batch_divisible(batch_size, mesh)
  if fraction is not None:
    kept = sources.label_fraction(labels_of(train_source), fraction, seed)
    train_source = pipeline.Subset(train_source, kept)
  optim_config = default_optim_config() if optim_config is None else optim_config
  if optim_config.warmup_steps < 0:
    optim_config = default_optim_config(**{**optim_config.to_dict(),
                                           "warmup_steps": steps // 10})
  tx, _ = optim.make_optimizer(optim_config, batch_size, steps)

  variables = dict(variables)
  frozen = {k: v for k, v in variables.items() if k != "params"}
  example = jnp.asarray(np.stack([np.asarray(train_source[0]["image"], np.uint8)]),
                        jnp.float32) / 255.0
  dim = jax.eval_shape(method.apply, variables, example).shape[-1]
  head_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = {"encoder": variables["params"],
            "head": {"w": 0.01 * jax.random.normal(head_rng, (dim, num_classes), jnp.float32),
                     "b": jnp.zeros((num_classes,), jnp.float32)}}
  rep = sharding.replicated(mesh)
  # Copies placed on the mesh: the step donates its inputs, the caller keeps its variables.
  params = jax.device_put(jax.tree.map(jnp.array, params), rep)
  frozen = jax.device_put(frozen, rep)
  opt_state = jax.jit(tx.init, out_shardings=rep)(params)

  view = None if view_config is None else dict(view_config)
  step_fn = _train_step(method.apply, tx, mesh, view)
  batch_sharding = sharding.batch_sharding(mesh)
  data = pipeline.train_iterator(train_source, global_batch_size=batch_size, seed=seed)
  losses = []
  try:
    for i in range(steps):
      batch = pipeline.to_global_batch(next(data), batch_sharding)
      params, opt_state, loss = step_fn(params, opt_state, frozen, batch,
                                        jax.random.fold_in(train_rng, i))
      losses.append(loss)
  finally:
    if hasattr(data, "close"):
      data.close()

  tuned = {**frozen, "params": params["encoder"]}
  logits, labels = features_lib.extract_features(
      _logits_fn(method.apply), {"params": params, "frozen": frozen}, test_source, mesh=mesh,
      batch_size=eval_batch_size)
  top1 = float(np.mean(np.argmax(logits, axis=-1) == labels))
  fraction_text = "" if fraction is None else f" of a {100 * fraction:g}% label fraction"
  return {"top1": top1, "losses": [float(x) for x in jax.device_get(losses)],
          "variables": tuned, "head": params["head"], "num_train_examples": len(train_source),
          "protocol": PROTOCOL.format(fraction=fraction_text)}


@functools.lru_cache(maxsize=8)
def _logits_fn(apply_fn):
  """``apply``-style logits function, one per method so `extract_features` compiles once."""
  return lambda v, images: _logits(apply_fn, v["params"], v["frozen"], images)
