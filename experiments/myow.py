"""MYOW (Azabou et al. 2021, "Mine Your Own vieW: Self-Supervised Learning Through Across-Sample
Prediction"): BYOL plus a second head that predicts the target of a mined nearest neighbour.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from experiments import byol
from sslx import experiment
from sslx.data import augment
from sslx.losses import myow, myow_mining, negative_cosine
from sslx.method import Method
from sslx.models import MLP


def _mining_projector(config, rngs):
  """The second projector, cascaded on the first projection (nerdslab/myow layout='cascaded')."""
  m = config.mining_projector
  return MLP(config.projector.out_features, tuple(m.hidden), m.out_features, rngs=rngs)


class Target(byol.Target):
  """BYOL's target (encoder + projector) and the second projector: all EMA of the online ones."""

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    super().__init__(config, image_shape, rngs=rngs)
    self.mining_projector = _mining_projector(config, rngs)


class Online(byol.Online):
  """BYOL's online network with the second projector and its predictor."""

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    super().__init__(config, image_shape, rngs=rngs)
    self.mining_projector = _mining_projector(config, rngs)
    m = config.mining_projector
    self.mining_predictor = MLP(m.out_features, tuple(config.mining_predictor.hidden),
                                m.out_features, rngs=rngs)


def mining_weight(config, step):
  """The MYOW loss weight w: 0 until mining.start of the run, then linear up to
  mining.max_weight at mining.full (fractions of total_steps; MYOWTrainer's schedule)."""
  m = config.mining
  start, full = m.start * config.total_steps, m.full * config.total_steps
  ramp = jnp.clip((step - start) / max(full - start, 1.0), 0.0, 1.0)
  return jnp.where(step < start, 0.0, m.max_weight * ramp)


def validate(config):
  m = config.mining
  if not 0 <= m.start <= m.full <= 1:
    raise ValueError(f"mining.start and mining.full must satisfy 0 <= start <= full <= 1 "
                     f"(fractions of total_steps), got start={m.start}, full={m.full}")
  if not 1 <= m.k < config.batch_size:
    raise ValueError(f"mining.k must be in [1, batch_size) (the pool is the rest of the batch), "
                     f"got k={m.k} with batch_size={config.batch_size}")
  if m.max_weight < 0:
    raise ValueError(f"mining.max_weight must be >= 0, got {m.max_weight}")


def get_method(config) -> Method:
  validate(config)
  images = experiment.images_for(config)
  online = experiment.Network(lambda rngs: Online(config, images.view_shape, rngs=rngs),
                              dtype=config.model.dtype)
  target = experiment.Network(lambda rngs: Target(config, images.view_shape, rngs=rngs),
                              dtype=config.model.dtype)
  # The mining views: the authors' transform_m (near-full crops and flips only).
  mining_view = {**config.augment.to_dict(), **config.augment_mining}

  def followed(params):  # the online parameters (or BN statistics, if any) the target averages
    return {k: v for k, v in params.items() if k in ("encoder", "projector", "mining_projector")}

  def init(rng, batch):
    del batch
    variables = online.init(rng)
    teacher = {"params": followed(variables["params"]),
               "batch_stats": followed(variables["batch_stats"])}
    return {**variables, "teacher": jax.tree.map(jnp.copy, teacher)}

  apply = experiment.encoder_apply(online, images)  # the online encoder, as BYOL

  def loss(params, variables, batch, rng):
    (v1, v2), encoder_rng = experiment.two_views(rng, batch["image"], config, images)
    views = jnp.concatenate([v1, v2])
    model = online.merge(params, variables["batch_stats"])
    teacher = target.merge(variables["teacher"]["params"], variables["teacher"]["batch_stats"])
    z = model(views, train=True, rng=encoder_rng)
    p1, p2 = jnp.split(model.predictor(z, train=True), 2)
    t1, t2 = jnp.split(jax.lax.stop_gradient(teacher(views, train=True)), 2)
    # BYOL's term, averaged over the two directions as MYOWTrainer(symmetric_loss=True) does.
    byol_value = (negative_cosine(p1, t2, form="byol") + negative_cosine(p2, t1, form="byol")) / 2

    # Mining: each query's nearest neighbour by the target encoder among the other images of
    # the batch (the authors mine in a second batch of the same size; here the pool is the rest
    # of this one), on two independent weak views.
    query_view, pool_view = (images.normalize(v) for v in augment.augment_views(
        jax.random.fold_in(rng, 100), batch["image"], [mining_view, mining_view]))
    mining_rng = jax.random.fold_in(rng, 101)
    y_query = model.encoder(query_view, train=True, rng=mining_rng)
    y_pool = jax.lax.stop_gradient(teacher.encoder(pool_view, train=True))
    indices, y_mined = myow_mining(y_query, y_pool, k=config.mining.k,
                                   key=jax.random.fold_in(rng, 102), exclude_self=True)
    # Online: second projector and predictor cascaded on the first projection; target: the mined
    # view's second projection (nerdslab/myow DoubleBYOL, get_embedding="predictor_m").
    q_mined = model.mining_predictor(
        model.mining_projector(model.projector(y_query, train=True), train=True), train=True)
    v_mined = jax.lax.stop_gradient(teacher.mining_projector(
        teacher.projector(y_mined, train=True), train=True))
    myow_value = myow(q_mined, v_mined)

    weight = mining_weight(config, variables["step"])
    value = byol_value / (1 + weight) + weight / (1 + weight) * myow_value
    z1, z2 = jnp.split(z, 2)
    metrics = {**experiment.embedding_metrics(z1, z2), "train/byol_loss": byol_value,
               "train/myow_loss": myow_value, "train/myow_weight": weight,
               # How often the mined view shares the query's class (labels only for logging).
               "train/mined_same_label": jnp.mean(
                   (batch["label"][indices] == batch["label"]).astype(jnp.float32))}
    state = {"batch_stats": online.batch_stats(model),
             "teacher": {"params": variables["teacher"]["params"],
                         "batch_stats": target.batch_stats(teacher)}}
    return value, {"metrics": metrics, "state": state}

  return Method(init=init, apply=apply, loss=loss, param_axes=online.param_axes,
                after_update=experiment.ema_teacher_update(config, followed))
