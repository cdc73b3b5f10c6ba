"""SwAV (Caron et al. 2020): multi-crop views are scored against learnt prototypes; each global
view's Sinkhorn-Knopp code (equal-size clusters) is predicted from every other view's scores.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from experiments import _multicrop
from sslx import experiment
from sslx.losses import normalize_prototypes, swav, swav_update_queue
from sslx.losses._common import l2_normalize
from sslx.method import Method
from sslx.models import MLP, Backbone, Prototypes

# SwAV assigns codes to the two global crops, which come first among the views.
CROPS_FOR_ASSIGN = (0, 1)


class SwAVModel(nnx.Module):

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    p = config.projector
    self.projector = MLP(self.encoder.num_features, tuple(p.hidden), p.out_features, rngs=rngs)
    self.prototypes = Prototypes(p.out_features, config.loss.num_prototypes, rngs=rngs)

  def embed(self, x, *, train: bool, rng=None):
    """Images -> l2-normalised projections, the vectors SwAV scores and queues."""
    return l2_normalize(self.projector(self.encoder(x, train=train, rng=rng), train=train))


def check_config(config) -> None:
  q = config.loss.queue_length
  if q < 0 or q % config.batch_size:
    # The queue takes whole batches (the authors trim it to a multiple of the global batch).
    raise ValueError(f"loss.queue_length must be 0 (no queue) or a multiple of batch_size "
                     f"({config.batch_size}), got {q}")
  for field in ("freeze_prototypes_steps", "queue_start_step"):
    if config.loss[field] < 0:
      raise ValueError(f"loss.{field} must be >= 0, got {config.loss[field]}")


def get_method(config) -> Method:
  check_config(config)
  loss_config = config.loss
  images = _multicrop.images_for(config)
  net = _multicrop.MultiCropNetwork(
      lambda rngs, shape: SwAVModel(config, shape, rngs=rngs), config, images)
  use_queue = loss_config.queue_length > 0

  def init(rng, batch):
    del batch
    variables = net.init(rng)
    if use_queue:  # zeros = empty; [crops assigned, queue_length, D]
      variables["queue"] = jnp.zeros(
          (len(CROPS_FOR_ASSIGN), loss_config.queue_length, config.projector.out_features))
    return variables

  apply = experiment.encoder_apply(net, images)

  def loss(params, variables, batch, rng):
    step = variables["step"]
    views, encoder_rng = _multicrop.crop_views(rng, batch["image"], config, images)
    z, batch_stats = net.encode(lambda m, x, r: m.embed(x, train=True, rng=r), params,
                                variables["batch_stats"], views, encoder_rng)  # [V, B, D]
    # SwAV renormalises the prototypes before every step, outside the gradient. Params cannot be
    # rewritten outside the optimizer here (Method.after_update only returns state), so the
    # rows are normalised in the forward pass instead: at unit norm the gradient through the
    # normalisation is the tangential part of SwAV's, the part its renormalisation keeps.
    prototypes = normalize_prototypes(params["prototypes"]["prototypes"])
    # The prototypes get no gradient during the first steps (freeze_prototypes_niters).
    prototypes = _multicrop.frozen_until(prototypes, step, loss_config.freeze_prototypes_steps)
    scores = jnp.einsum("vbd,kd->vbk", z, prototypes)
    swav_loss = lambda queue_scores: swav(
        scores, temperature=loss_config.temperature, epsilon=loss_config.epsilon,
        num_iters=loss_config.sinkhorn_iterations, crops_for_assign=CROPS_FOR_ASSIGN,
        queue_scores=queue_scores)
    state = {"batch_stats": batch_stats}
    metrics = experiment.embedding_metrics(z[0], z[1])
    if use_queue:
      queue = variables["queue"]
      # As the authors: the queue fills from queue_start_step on and joins Sinkhorn once full
      # (its last row non-zero: queued embeddings have unit norm).
      in_use = jnp.any(queue[:, -1] != 0)
      queue_scores = jnp.einsum("aqd,kd->aqk", queue, jax.lax.stop_gradient(prototypes))
      value = jax.lax.cond(in_use, lambda: swav_loss(queue_scores), lambda: swav_loss(None))
      filling = step >= loss_config.queue_start_step
      state["queue"] = jnp.where(
          filling, swav_update_queue(queue, z, crops_for_assign=CROPS_FOR_ASSIGN), queue)
      metrics["train/queue_in_use"] = in_use.astype(jnp.float32)
    else:
      value = swav_loss(None)
    metrics["train/prototypes_frozen"] = (
        step < loss_config.freeze_prototypes_steps).astype(jnp.float32)
    return value, {"metrics": metrics, "state": state}

  return Method(init=init, apply=apply, loss=loss, param_axes=net.param_axes)
