"""MoCo v3 (Chen, Xie and He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers"): symmetric InfoNCE of predictions against in-batch EMA keys, no queue.

The query network is encoder + projector + predictor; the momentum encoder (encoder + projector)
follows it with a cosine-scheduled momentum (facebookresearch/moco-v3 ``moco/builder.py``).
"""

import jax

from experiments import _momentum_contrast
from sslx import experiment
from sslx.losses import info_nce
from sslx.method import Method


def get_method(config) -> Method:
  moco = _momentum_contrast.MomentumContrast(config)
  t = config.loss.temperature

  def loss(params, variables, batch, rng):
    views, encoder_rng = experiment.two_views(rng, batch["image"], config, moco.images)
    query_rng, key_rng = jax.random.split(encoder_rng)
    z, (q1, q2), batch_stats = moco.queries(params, variables, views, query_rng)
    (k1, k2), teacher_stats = moco.keys(variables, views, key_rng)
    # moco-v3's ctr_loss scales each direction by 2t (keeps the gradient scale independent of
    # the temperature) and sums the two.
    value = 2 * t * (info_nce(q1, k2, temperature=t) + info_nce(q2, k1, temperature=t))
    return value, {"metrics": experiment.embedding_metrics(*z),
                   "state": moco.state(variables, batch_stats, teacher_stats)}

  return Method(init=moco.init, apply=moco.apply, loss=loss, param_axes=moco.online.param_axes,
                after_update=moco.after_update)
