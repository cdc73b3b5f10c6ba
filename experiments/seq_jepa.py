"""seq-JEPA (Ghaemi, Muller and Bakhtiari 2025): each image gives a sequence of ``M + 1`` views.
The encoder embeds the first ``M``; each embedding is concatenated with the embedded action
(transformation) from its view to the next (zeros for the last observed view), a learned [AGG]
token is prepended, and a transformer aggregates the sequence. A predictor, given the [AGG]
output and the action from view ``M`` to view ``M + 1``, predicts the representation an EMA
target encoder gives view ``M + 1``; the loss is ``1 - cosine`` (`sslx.losses.negative_cosine`,
stop-gradient on the target).

As the authors' SeqJEPA_Transforms (hafezgh/seq-jepa src/models.py): actions are embedded by a
bias-free Linear and an affine-free BatchNorm; the predictor is Linear -> BatchNorm -> ReLU ->
Linear onto the encoder's width. The paper's two representations: the encoder's per-view output
is the equivariant one, the [AGG] output the invariant aggregate (`SeqJEPAModel.aggregate`), which
the paper reads for classification. `Method.apply` (what kNN and the probes read) gives either,
by `config.seq_jepa.eval_features`: "encoder", or "aggregate": the aggregator over `seq_len`
copies of the one un-augmented image, each followed by the identity action (an evaluation image
comes alone, not as a sequence of views).

Actions are what the augmentation ops report: each view is the config's augmentation followed by
a rotation, and the action between two views is `sslx.evaluate.equivariance.relative_parameters`
(relative rotation as sin / cos, log brightness and contrast ratios).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from sslx import experiment
from sslx.evaluate import equivariance
from sslx.losses import negative_cosine
from sslx.method import Method
from sslx.models import MLP, Backbone
from sslx.models.vit import Block, LayerNorm, _Keys

ACTION_DIM = len(equivariance.PARAMETER_NAMES)
EVAL_FEATURES = ("encoder", "aggregate")
# The transformation from a view to itself in `equivariance.relative_parameters`' columns:
# rotation by 0 (sin 0, cos 1), brightness and contrast ratios 1 (log 0).
IDENTITY_ACTION = (0.0, 1.0, 0.0, 0.0)


class ActionEmbedding(nnx.Module):
  """Bias-free Linear then BatchNorm without scale or shift (the reference's action_proj)."""

  def __init__(self, out_features: int, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(ACTION_DIM, out_features, use_bias=False, rngs=rngs)
    self.norm = nnx.BatchNorm(out_features, use_scale=False, use_bias=False, rngs=rngs)

  def __call__(self, action, *, train: bool):
    return self.norm(self.linear(action), use_running_average=not train)


class SeqJEPAModel(nnx.Module):
  """Encoder, action embedding, [AGG] token + transformer aggregator, and predictor."""

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    s = config.seq_jepa
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    dim = self.encoder.num_features
    width = dim + s.action_dim
    self.action_dim = s.action_dim
    self.action_embedding = ActionEmbedding(s.action_dim, rngs=rngs)
    self.agg_token = nnx.Param(jnp.zeros((1, 1, width)))  # zeros, as the reference
    keys = _Keys(rngs)  # the ViT's key source, which its Block takes
    self.blocks = nnx.List([Block(width, s.num_heads, s.mlp_ratio, keys=keys)
                            for _ in range(s.depth)])
    self.norm = LayerNorm(width, keys)
    self.predictor = MLP(width + s.action_dim, (s.predictor_hidden,), dim, rngs=rngs)

  def aggregate(self, embeddings, actions, *, train: bool):
    """embeddings [B, M, D], actions [B, M - 1, 4] (view i -> i + 1) -> [AGG] output [B, W]."""
    batch, length, _ = embeddings.shape
    moves = [] if length == 1 else [jnp.reshape(
        self.action_embedding(jnp.reshape(actions, (-1, ACTION_DIM)), train=train),
        (batch, length - 1, self.action_dim))]
    # The last observed view has no next action within the sequence: a zero action token.
    moves = jnp.concatenate([*moves, jnp.zeros((batch, 1, self.action_dim))], axis=1)
    tokens = jnp.concatenate([embeddings, moves], axis=-1)
    x = jnp.concatenate([jnp.broadcast_to(self.agg_token[...], (batch, 1, tokens.shape[-1])),
                         tokens], axis=1)
    for block in self.blocks:
      x = block(x)
    return self.norm(x)[:, 0].astype(jnp.float32)

  def predict(self, agg, next_action, *, train: bool):
    conditioned = jnp.concatenate([agg, self.action_embedding(next_action, train=train)], -1)
    return self.predictor(conditioned, train=train)


def check_config(config) -> None:
  """ValueErrors naming the field for a config seq-JEPA cannot train."""
  if config.data.name == "3diebench":
    raise ValueError("config.data.name '3diebench': sslx has no 3DIEBench loader (its views and "
                     "rotation latents come from the dataset); the preset documents the paper's "
                     "settings. Train on fashion_mnist.")
  s = config.seq_jepa
  for name in ("seq_len", "action_dim", "num_heads", "depth", "predictor_hidden"):
    if not (isinstance(s[name], int) and s[name] >= 1):
      raise ValueError(f"config.seq_jepa.{name} must be an integer >= 1, got {s[name]!r}")
  experiment.check_positive("config.seq_jepa.mlp_ratio", s.mlp_ratio)
  if s.eval_features not in EVAL_FEATURES:
    raise ValueError(f"config.seq_jepa.eval_features must be one of {EVAL_FEATURES}, got "
                     f"{s.eval_features!r}")
  experiment.check_non_negative("config.seq_jepa.rotation_degrees", s.rotation_degrees)


def network(config):
  check_config(config)
  images = experiment.images_for(config)
  net = experiment.Network(lambda rngs: SeqJEPAModel(config, images.view_shape, rngs=rngs),
                           dtype=config.model.dtype)
  width = net.abstract.encoder.num_features + config.seq_jepa.action_dim
  if width % config.seq_jepa.num_heads:
    raise ValueError(f"config.seq_jepa.num_heads must divide the token width (representation "
                     f"{net.abstract.encoder.num_features} + action_dim "
                     f"{config.seq_jepa.action_dim} = {width}), got {config.seq_jepa.num_heads}")
  return images, net


def sequence_views(rng, images_uint8, config, images):
  """``seq_len + 1`` normalised views [B, H, W, C] and the actions between consecutive views,
  [B, seq_len, 4] (action i: view i -> view i + 1)."""
  pipeline = equivariance.transformation_pipeline(
      config.augment, degrees=config.seq_jepa.rotation_degrees)
  drawn = [equivariance.view_with_parameters(jax.random.fold_in(rng, i), images_uint8, pipeline)
           for i in range(config.seq_jepa.seq_len + 1)]
  actions = jnp.stack([equivariance.relative_parameters(a[1], b[1])
                       for a, b in zip(drawn[:-1], drawn[1:])], axis=1)
  return [images.normalize(view) for view, _ in drawn], actions


def get_method(config) -> Method:
  images, net = network(config)
  length = config.seq_jepa.seq_len

  def followed(tree):  # what the target encoder averages: the encoder only
    return {"encoder": tree["encoder"]}

  def init(rng, batch):
    del batch  # shapes come from the config and the dataset
    variables = net.init(rng)
    teacher = {"params": followed(variables["params"]),
               "batch_stats": followed(variables["batch_stats"])}
    return {**variables, "teacher": jax.tree.map(jnp.copy, teacher)}

  def apply(variables, x):
    model = net.merge(variables["params"], variables["batch_stats"])
    embedding = model.encoder(images.for_eval(x), train=False)
    if config.seq_jepa.eval_features == "encoder":
      return embedding
    batch = embedding.shape[0]
    views = jnp.broadcast_to(embedding[:, None], (batch, length, embedding.shape[-1]))
    identity = jnp.broadcast_to(jnp.asarray(IDENTITY_ACTION), (batch, length - 1, ACTION_DIM))
    return model.aggregate(views, identity, train=False)

  def loss(params, variables, batch, rng):
    view_rng, encoder_rng = jax.random.split(rng)
    views, actions = sequence_views(view_rng, batch["image"], config, images)
    model = net.merge(params, variables["batch_stats"])
    # One encoder pass per view: BatchNorm statistics per view, as the two-view methods.
    embeddings = jnp.stack([model.encoder(v, train=True, rng=jax.random.fold_in(encoder_rng, i))
                            for i, v in enumerate(views[:length])], axis=1)
    agg = model.aggregate(embeddings, actions[:, :length - 1], train=True)
    prediction = model.predict(agg, actions[:, length - 1], train=True)
    # The target: the EMA encoder on the next view, in training mode (batch statistics) as the
    # reference's target network; negative_cosine stops its gradient.
    teacher = net.merge({**params, **variables["teacher"]["params"]},
                        {**variables["batch_stats"], **variables["teacher"]["batch_stats"]})
    target = teacher.encoder(views[length], train=True)
    value = 1.0 + negative_cosine(prediction, target)
    metrics = {**experiment.embedding_metrics(embeddings[:, 0], embeddings[:, -1]),
               "train/target_embedding_std": experiment.embedding_metrics(target, target)[
                   "train/embedding_std"]}
    state = {"batch_stats": net.batch_stats(model),
             "teacher": {"params": variables["teacher"]["params"],
                         "batch_stats": followed(net.batch_stats(teacher))}}
    return value, {"metrics": metrics, "state": state}

  return Method(init=init, apply=apply, loss=loss, param_axes=net.param_axes,
                after_update=experiment.ema_teacher_update(config, followed))
