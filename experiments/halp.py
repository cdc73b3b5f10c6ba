"""HaLP (Shah et al., CVPR 2023, "Hallucinating Latent Positives for Skeleton-based
Self-Supervised Learning of Actions") on images: MoCo v2 plus positives hallucinated in the
key's latent space (`sslx.losses.halp`), each moved along the sphere from the key towards a
nearby prototype while staying closest to the key's own prototype.

HaLP was proposed for skeleton sequences (a bidirectional GRU or graph network over joints, on
NTU RGB+D / PKU-MMD). What it adds to MoCo acts on the projections only: the prototypes (a
spherical k-means of the newest queued keys, refreshed every `halp.refresh_every` steps), the
closed-form hardest positive and the pull of the query towards the valid ones. That part is
kept whole here; the skeleton encoder and skeleton augmentations are replaced by the image
backbone and views of the other methods, as in MoCo v2. As in the authors' scripts, the HaLP
term starts part-way through the run (they resume a MoCo checkpoint at epoch 200 of 451:
`halp.start_fraction`); before that this is MoCo v2.

Deviation: the authors' prototypes are geomstats' Riemannian k-means (k-means++ start,
tolerance 1e-3); here `spherical_kmeans` (random distinct start, a fixed number of Lloyd steps
with normalised means) runs inside the jitted step.
"""

import jax
import jax.numpy as jnp

from experiments import _momentum_contrast
from sslx import experiment
from sslx.losses import halp, update_queue
from sslx.losses._common import l2_normalize
from sslx.method import Method


def spherical_kmeans(points, rng, num_clusters: int, iterations: int):
  """[num_clusters, D] unit centroids of the unit rows of `points` [N, D]: start from distinct
  random rows, then `iterations` Lloyd steps (assign by cosine, centroid = normalised sum); an
  empty cluster keeps its centroid."""
  points = l2_normalize(points)
  centroids = points[jax.random.choice(rng, points.shape[0], (num_clusters,), replace=False)]

  def lloyd(centroids, _):
    members = jax.nn.one_hot(jnp.argmax(points @ centroids.T, axis=1), num_clusters)
    sums = members.T @ points
    return jnp.where(members.sum(0)[:, None] > 0, l2_normalize(sums), centroids), None

  return jax.lax.scan(lloyd, centroids, None, length=iterations)[0]


def prototype_keys(rng):
  """The step's keys for the k-means start and the hallucinated positives: apart from the views'
  and encoders' keys (`experiment.two_views` folds in 0 to 2)."""
  return jax.random.split(jax.random.fold_in(rng, 3))


def check_config(config) -> None:
  h = config.halp
  for field in ("num_prototypes", "prototype_examples", "refresh_every", "kmeans_iterations",
                "num_positives", "num_candidates", "skip_closest"):
    experiment.check_int_at_least(f"halp.{field}", h[field], 1)
  if not h.num_prototypes <= h.prototype_examples <= config.queue_size:
    raise ValueError(f"halp.prototype_examples must be in [halp.num_prototypes, queue_size] = "
                     f"[{h.num_prototypes}, {config.queue_size}], got {h.prototype_examples}")
  if h.num_prototypes <= h.skip_closest:
    raise ValueError(f"halp.num_prototypes ({h.num_prototypes}) must exceed halp.skip_closest "
                     f"({h.skip_closest})")
  if not 0 <= h.start_fraction <= 1:
    raise ValueError(f"halp.start_fraction must be in [0, 1], got {h.start_fraction!r}")
  if not 0 <= h.lambda_pos <= 1:
    raise ValueError(f"halp.lambda_pos must be in [0, 1], got {h.lambda_pos!r}")
  experiment.check_non_negative("halp.weight", h.weight)
  experiment.check_positive("loss.temperature", config.loss.temperature)


def get_method(config) -> Method:
  if not config.get("queue_size", 0):
    raise ValueError(f"HaLP needs MoCo's queue: queue_size must be > 0, got "
                     f"{config.get('queue_size')!r}")
  check_config(config)
  h = config.halp
  moco = _momentum_contrast.MomentumContrast(config, num_queues=1)
  start_step = int(h.start_fraction * config.total_steps)

  def init(rng, batch):
    variables = moco.init(rng, batch)
    # Drawn from the queue at the first HaLP step; unit rows until then.
    prototypes = jnp.zeros((h.num_prototypes, config.projector.out_features)).at[:, 0].set(1.0)
    return {**variables, "prototypes": prototypes}

  def loss(params, variables, batch, rng):
    (v1, v2), encoder_rng = experiment.two_views(rng, batch["image"], config, moco.images)
    query_rng, key_rng = jax.random.split(encoder_rng)
    (z,), (query,), batch_stats = moco.queries(params, variables, [v1], query_rng)
    (key,), teacher_stats = moco.keys(variables, [v2], key_rng)
    key = l2_normalize(key)
    queue = variables["queue"][0]
    step = variables["step"]
    # Refreshed from the newest queued keys (the queue is newest first) before this step's
    # keys are enqueued, on the first HaLP step and every refresh_every steps after.
    refresh = (step >= start_step) & ((step - start_step) % h.refresh_every == 0)
    kmeans_rng, positives_rng = prototype_keys(rng)
    prototypes = jax.lax.cond(
        refresh,
        lambda: spherical_kmeans(queue[:h.prototype_examples], kmeans_rng, h.num_prototypes,
                                 h.kmeans_iterations),
        lambda: variables["prototypes"])
    _, terms = halp(query, key, prototypes, positives_rng, queue=queue,
                    temperature=config.loss.temperature, num_positives=h.num_positives,
                    lambda_pos=h.lambda_pos, num_candidates=h.num_candidates,
                    skip_closest=h.skip_closest)
    active = (step >= start_step).astype(jnp.float32)
    value = terms["infonce"] + active * h.weight * terms["halp"]
    metrics = {**experiment.embedding_metrics(z, key),
               "train/infonce": terms["infonce"], "train/halp": terms["halp"],
               "train/halp_active": active, "train/valid_positives": terms["valid_fraction"]}
    state = moco.state(variables, batch_stats, teacher_stats,
                       update_queue(queue, key)[None])
    return value, {"metrics": metrics, "state": {**state, "prototypes": prototypes}}

  return Method(init=init, apply=moco.apply, loss=loss, param_axes=moco.online.param_axes,
                after_update=moco.after_update)
