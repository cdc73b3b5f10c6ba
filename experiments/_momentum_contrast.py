"""What MoCo v2, MoCo v3 and MoBY share: a query network, its EMA key network, FIFO key queues and
MoCo's shuffle-BN (He et al. 2020, "Momentum Contrast", Sec. 3.3; Chen et al. 2020 and 2021).

Each method module builds a `MomentumContrast` from its config and writes only its loss; the
config carries `projector` (hidden, out_features, norm, norm_last), optionally `predictor`
(hidden, norm_last), `queue_size` (0: no queue) and `shuffle_bn_groups` (0: off).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from sslx import experiment
from sslx.losses import info_nce, update_queue
from sslx.losses._common import l2_normalize
from sslx.models import MLP, Backbone


class KeyNetwork(nnx.Module):
  """Encoder + projector: the key (momentum) network, and the part of the query network that
  it averages."""

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    p = config.projector
    self.projector = MLP(self.encoder.num_features, tuple(p.hidden), p.out_features, norm=p.norm,
                         norm_last=p.norm_last, rngs=rngs)

  def __call__(self, x, *, train: bool, rng=None):
    return self.projector(self.encoder(x, train=train, rng=rng), train=train)


class QueryNetwork(KeyNetwork):
  """Encoder + projector (+ predictor, when the config has one: MoCo v3, MoBY)."""

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    super().__init__(config, image_shape, rngs=rngs)
    q = config.get("predictor")
    dim = config.projector.out_features
    self.predictor = (None if q is None else
                      MLP(dim, tuple(q.hidden), dim, norm="batch", norm_last=q.norm_last,
                          rngs=rngs))

  def __call__(self, x, *, train: bool, rng=None):
    """-> (projection, query): the query is the prediction when there is a predictor."""
    z = super().__call__(x, train=train, rng=rng)
    return z, (z if self.predictor is None else self.predictor(z, train=train))


def followed(params):
  """The part of the query network's variables that the key network averages (a part without
  such variables, e.g. a projector without BatchNorm in batch_stats, is absent)."""
  return {name: params[name] for name in ("encoder", "projector") if name in params}


def validate(config) -> None:
  """ValueErrors naming the field for settings that would train silently wrong."""
  queue_size = config.get("queue_size", 0)
  if not isinstance(queue_size, int) or queue_size < 0:
    raise ValueError(f"queue_size must be an int >= 0 (0: no queue), got {queue_size!r}")
  if 0 < queue_size < config.batch_size:
    # update_queue keeps only the first queue_size keys of a larger batch: keys would be lost.
    raise ValueError(f"queue_size must be >= batch_size ({config.batch_size}), got {queue_size}")
  groups = config.get("shuffle_bn_groups", 0)
  if not isinstance(groups, int) or groups < 0:
    raise ValueError(f"shuffle_bn_groups must be an int >= 0 (0: off), got {groups!r}")
  if groups and (config.batch_size % groups or config.batch_size // groups < 2):
    raise ValueError(f"shuffle_bn_groups must divide batch_size ({config.batch_size}) into "
                     f"groups of at least 2, got {groups}")
  if config.loss.temperature <= 0:
    raise ValueError(f"loss.temperature must be > 0, got {config.loss.temperature!r}")


def grouped_forward(forward: Callable, params, batch_stats, x, rng, groups: int,
                    permutation=None):
  """``forward(params, batch_stats, x, rng) -> (y, new_batch_stats)`` with BatchNorm statistics
  computed per group of ``B / groups`` examples instead of over the global batch.

  This is MoCo's per-GPU BatchNorm with ``groups`` simulated devices, on any number of real ones:
  the batch is reshaped to ``[groups, B / groups, ...]`` and ``forward`` is vmapped over the
  groups (each BatchNorm then reduces over its own group only). With ``permutation`` the groups
  are formed from ``x[permutation]`` and the outputs put back in the original order: MoCo's
  shuffle-BN of the key encoder, so that a query and its key are normalised with statistics of
  different sets of images. The running statistics are averaged over the groups, as
  `sslx.models.per_device_batch_norm` averages them over devices. Group g's stochastic-depth key
  is ``split(rng, groups)[g]``.
  """
  if x.shape[0] % groups:
    raise ValueError(f"shuffle_bn_groups ({groups}) must divide the batch ({x.shape[0]})")
  if permutation is not None:
    x = x[permutation]
  xs = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
  ys, new_stats = jax.vmap(forward, in_axes=(None, None, 0, 0))(
      params, batch_stats, xs, jax.random.split(rng, groups))
  ys = jax.tree.map(lambda y: y.reshape(-1, *y.shape[2:]), ys)
  if permutation is not None:
    ys = jax.tree.map(lambda y: y[jnp.argsort(permutation)], ys)
  return ys, jax.tree.map(lambda s: jnp.mean(s, axis=0), new_stats)


def queue_losses(queries, keys, queue, temperature):
  """InfoNCE of ``queries[i]`` against ``keys[i]`` with the rows of ``queue[i]`` as negatives,
  and the queue with each ``keys[i]`` enqueued into ``queue[i]`` after the loss (FIFO, newest
  first; MoCo's dequeue-and-enqueue, so a key is never its own negative).

  queries, keys: lists of ``[B, D]``; queue: ``[len(keys), K, D]`` of unit rows. Returns the
  list of losses and the new queue.
  """
  keys = [l2_normalize(jax.lax.stop_gradient(k)) for k in keys]
  losses = [info_nce(q, k, queue[i], temperature=temperature)
            for i, (q, k) in enumerate(zip(queries, keys))]
  new_queue = jnp.stack([update_queue(queue[i], k) for i, k in enumerate(keys)])
  return losses, new_queue


class MomentumContrast:
  """A query network, its EMA key network and the variables they live in, for one config.

  Variables: ``params`` / ``batch_stats`` of the query network, ``teacher`` (the key network's
  params and batch_stats) and, with a queue, ``queue`` ``[num_queues, queue_size, D]``.
  """

  def __init__(self, config, num_queues: int = 0):
    validate(config)
    self.config = config
    self.images = experiment.images_for(config)
    shape = self.images.view_shape
    key_config = experiment.without_stochastic_depth(config)
    self.online = experiment.Network(lambda rngs: QueryNetwork(config, shape, rngs=rngs),
                                     dtype=config.model.dtype)
    self.target = experiment.Network(lambda rngs: KeyNetwork(key_config, shape, rngs=rngs),
                                     dtype=config.model.dtype)
    self.num_queues = num_queues if config.get("queue_size", 0) else 0
    self.groups = config.get("shuffle_bn_groups", 0)
    self.after_update = experiment.ema_teacher_update(config, followed)

  def init(self, rng, batch):
    del batch  # the shapes come from the config and the dataset
    params_rng, queue_rng = jax.random.split(rng)
    variables = self.online.init(params_rng)
    # The key network starts as a copy of the query encoder + projector (MoCo Sec. 3.2).
    teacher = {"params": followed(variables["params"]),
               "batch_stats": followed(variables["batch_stats"])}
    variables = {**variables, "teacher": jax.tree.map(jnp.copy, teacher)}
    if self.num_queues:
      # MoCo's queue starts as random unit vectors (builder.py: normalize(randn)).
      shape = (self.num_queues, self.config.queue_size, self.config.projector.out_features)
      variables["queue"] = l2_normalize(jax.random.normal(queue_rng, shape))
    return variables

  def apply(self, variables, x):  # evaluation uses the query encoder
    model = self.online.merge(variables["params"], variables["batch_stats"])
    return model.encoder(self.images.for_eval(x), train=False)

  def _forward(self, network: experiment.Network) -> Callable:
    def forward(params, batch_stats, x, rng):
      model = network.merge(params, batch_stats)
      return model(x, train=True, rng=rng), network.batch_stats(model)
    return forward

  def _run(self, network, params, batch_stats, views, rng, shuffle_rng=None):
    """Each view in its own forward pass (its own BatchNorm statistics, as MoCo's code calls the
    encoders once per view); per-group BN when shuffle_bn_groups > 0, over a random
    permutation of the batch when ``shuffle_rng`` is given."""
    forward, outputs = self._forward(network), []
    for i, x in enumerate(views):
      view_rng = jax.random.fold_in(rng, i)
      if self.groups:
        permutation = (None if shuffle_rng is None else
                       jax.random.permutation(jax.random.fold_in(shuffle_rng, i), x.shape[0]))
        y, batch_stats = grouped_forward(forward, params, batch_stats, x, view_rng, self.groups,
                                         permutation)
      else:
        y, batch_stats = forward(params, batch_stats, x, view_rng)
      outputs.append(y)
    return outputs, batch_stats

  def queries(self, params, variables, views, rng):
    """-> ([projection per view], [query per view], new batch_stats) of the query network."""
    outputs, batch_stats = self._run(self.online, params, variables["batch_stats"], views, rng)
    return [z for z, _ in outputs], [q for _, q in outputs], batch_stats

  def keys(self, variables, views, rng):
    """-> ([key per view], new teacher batch_stats), without gradient. With shuffle-BN the key
    network's groups come from a permutation of the batch drawn from ``rng``."""
    teacher = variables["teacher"]
    keys, batch_stats = self._run(self.target, teacher["params"], teacher["batch_stats"], views,
                                  jax.random.fold_in(rng, 0), jax.random.fold_in(rng, 1))
    return [jax.lax.stop_gradient(k) for k in keys], batch_stats

  def state(self, variables, batch_stats, teacher_batch_stats, queue=None) -> dict:
    """The new non-trainable variables, for ``aux["state"]``."""
    state = {"batch_stats": batch_stats,
             "teacher": {"params": variables["teacher"]["params"],
                         "batch_stats": teacher_batch_stats}}
    if queue is not None:
      state["queue"] = queue
    return state
