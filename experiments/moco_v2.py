"""MoCo v2 (Chen, Fan, Girshick and He 2020, "Improved Baselines with Momentum Contrastive
Learning"): a query encoder + MLP head contrasts its key, from an EMA key encoder, with a queue.

The negatives are a FIFO queue of past keys (MoCo v1, He et al. 2020); the key encoder's
BatchNorm can be shuffled across groups (`shuffle_bn_groups`, MoCo Sec. 3.3). With
`loss.symmetric` both views are queries, each with its own queue (solo-learn's "MoCo v2+").
"""

import jax

from experiments import _momentum_contrast
from sslx import experiment
from sslx.method import Method


def get_method(config) -> Method:
  symmetric = config.loss.symmetric
  moco = _momentum_contrast.MomentumContrast(config, num_queues=2 if symmetric else 1)
  images = moco.images

  def loss(params, variables, batch, rng):
    (v1, v2), encoder_rng = experiment.two_views(rng, batch["image"], config, images)
    # MoCo v2's code: the query is view 1 and its key view 2; symmetric adds the mirrored pair.
    query_views = [v1, v2] if symmetric else [v1]
    key_views = [v2, v1] if symmetric else [v2]
    query_rng, key_rng = jax.random.split(encoder_rng)
    z, queries, batch_stats = moco.queries(params, variables, query_views, query_rng)
    keys, teacher_stats = moco.keys(variables, key_views, key_rng)
    losses, queue = _momentum_contrast.queue_losses(queries, keys, variables["queue"],
                                                    config.loss.temperature)
    value = sum(losses) / len(losses)
    # Collapse metrics on the two views' embeddings: both online projections when symmetric,
    # else the query of view 1 and the key of view 2 (view 2 never goes through the query net).
    metrics = experiment.embedding_metrics(*(z if symmetric else (z[0], keys[0])))
    return value, {"metrics": metrics,
                   "state": moco.state(variables, batch_stats, teacher_stats, queue)}

  return Method(init=moco.init, apply=moco.apply, loss=loss, param_axes=moco.online.param_axes,
                after_update=moco.after_update)
