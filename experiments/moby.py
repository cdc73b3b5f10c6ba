"""MoBY (Xie et al. 2021, "Self-Supervised Learning with Swin Transformers"): MoCo v2's queues and
InfoNCE on BYOL's architecture (online predictor against an EMA target), symmetric over views.

Follows SwinTransformer/Transformer-SSL ``models/moby.py``: the prediction of view 1 contrasts
the target projection of view 2 with the queue of past view-2 keys, and vice versa; the two
losses are summed. The target has no drop-path (asymmetric drop-path rates).
"""

import jax

from experiments import _momentum_contrast
from sslx import experiment
from sslx.method import Method


def get_method(config) -> Method:
  moby = _momentum_contrast.MomentumContrast(config, num_queues=2)

  def loss(params, variables, batch, rng):
    views, encoder_rng = experiment.two_views(rng, batch["image"], config, moby.images)
    query_rng, key_rng = jax.random.split(encoder_rng)
    z, (p1, p2), batch_stats = moby.queries(params, variables, views, query_rng)
    (k1, k2), teacher_stats = moby.keys(variables, views, key_rng)
    # queue[0] holds past view-2 keys, queue[1] past view-1 keys (moby.py's queue2 / queue1).
    losses, queue = _momentum_contrast.queue_losses([p1, p2], [k2, k1], variables["queue"],
                                                    config.loss.temperature)
    return sum(losses), {"metrics": experiment.embedding_metrics(*z),
                         "state": moby.state(variables, batch_stats, teacher_stats, queue)}

  return Method(init=moby.init, apply=moby.apply, loss=loss, param_axes=moby.online.param_axes,
                after_update=moby.after_update)
