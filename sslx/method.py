"""The Method contract: every self-supervised method is an init / apply / loss triple of pure
functions over pytrees, so the trainer, the evaluator and a user's own loop can drive any method.
"""

from typing import Any, Callable, NamedTuple

import jax

# {"image": uint8 [B, H, W, C], "label": int32 [B], "index": int32 [B] (each image's position in
# the training set: rows of a per-example state)}; semi-supervised batches have no "index" and
# add
# "unlabelled_image" uint8 [uratio*B, H, W, C] and "unlabelled_index" int32 [uratio*B].
Batch = dict[str, jax.Array]
Variables = dict[str, Any]  # {"params": trainable pytree, **non-trainable state}
Aux = dict[str, Any]  # {"metrics": {name: scalar}, "state": new non-trainable state}


class Method(NamedTuple):
  """A self-supervised method as three pure functions.

  init(rng, batch) -> Variables
      Builds the variables from an example batch. ``variables["params"]`` is what the optimizer
      trains; every other entry (batch statistics, EMA teachers, queues, centers) is state that
      ``loss`` returns updated in ``aux["state"]``.
  apply(variables, images) -> features
      The frozen forward pass used for evaluation: float images in [0, 1], [B, H, W, C] ->
      representation [B, D] (before any projector).
  loss(params, variables, batch, rng) -> (loss, aux)
      The training objective. ``batch["image"]`` holds raw uint8 images; augmentation happens
      here, on device. ``aux["metrics"]`` maps names to scalars; ``aux["state"]`` holds the new
      values of the non-trainable entries of ``variables``. The trainer also passes
      ``variables["step"]`` (int32 scalar, optimizer steps taken so far) for schedules inside
      the loss (DINO's teacher temperature, SwAV's frozen prototypes); it is read, never
      returned.
  after_update(params, state, step) -> (state, metrics)   [optional]
      Runs after the optimizer step on the new params and the state the loss returned: EMA
      teachers (BYOL, MoCo, DINO) follow the student here. ``metrics`` maps names to scalars.
  grad_cache_chunks   [optional, default 1]
      How many micro-batches ``loss`` computes its gradient in by gradient caching
      (sslx.train.grad_cache; ``config.optim.grad_cache_chunks``): the same value and gradient
      as the full batch, one micro-batch's activations in memory. 1: the method does not cache;
      the trainer refuses a config asking a method for chunks it does not do.
  predict(variables, images) -> logits   [optional]
      A classifier's class logits [B, num_classes] for float images in [0, 1], as `apply`
      takes them: the semi-supervised methods' EMA model (experiments/_semisup.py). Where it
      exists, the offline evaluation adds the classifier's own top-1 on the test split.
  warm_start(variables, mesh) -> variables   [optional]
      A run that starts from another run (SimCLRv2's fine-tuning from a pre-trained encoder,
      its distillation from a fine-tuned teacher): given a fresh run's variables on ``mesh``,
      returns them with the other run's parts copied in (same structure, shapes and dtypes).
      The trainer calls it once, before the first step; a resumed run restores its own
      checkpoint instead.
  """

  init: Callable[[jax.Array, Batch], Variables]
  apply: Callable[[Variables, jax.Array], jax.Array]
  loss: Callable[[Any, Variables, Batch, jax.Array], tuple[jax.Array, Aux]]
  # Logical axis names of the parameters (a pytree shaped like variables["params"] with a tuple
  # of names or None per leaf, e.g. sslx.sharding.logical_axes of a ViT); None replicates them.
  # config.mesh.rules maps the names to mesh axes (FSDP, tensor parallelism).
  param_axes: Any = None
  after_update: Callable[[Any, dict, jax.Array], tuple[dict, dict]] | None = None
  grad_cache_chunks: int = 1
  predict: Callable[[Variables, jax.Array], jax.Array] | None = None
  warm_start: Callable[[Variables, jax.sharding.Mesh], Variables] | None = None
