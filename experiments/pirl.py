"""PIRL (Misra & van der Maaten 2020): an image's representation and its jigsaw-shuffled
patches' representation are both pulled towards the image's entry in a memory bank, by
noise-contrastive estimation against other entries (`sslx.losses.memory_bank_nce`).

The network: the encoder ``f`` (a ResNet), a linear ``image_head`` on an augmented view
(``f(v_I)``, 128-d), and for the jigsaw view the same encoder on each of the ``grid**2`` patches,
a linear ``patch_head`` per patch, the patch embeddings concatenated in their shuffled order and a
linear ``jigsaw_head`` (``g(v_It)``, 128-d).

State, indexed by the batch's ``"index"`` (each image's position in the training set) and saved
with the train state:

- ``memory``: float32 [images, 128], unit rows; the entry of image ``i`` becomes
  ``normalize(m m_i + (1 - m) f(v_I))`` after each step that sees it (``loss.memory_momentum``
  m = 0.5), replicated on every device (512 bytes an image: 656 MB for ImageNet, as VISSL keeps
  it);
- ``normalizer`` (``loss.objective="nce"`` only): NCE's partition function ``Z``, estimated from
  the first batch and then kept (NPID and VISSL), -1 until then.

The loss is ``lambda L_NCE(m_I, g(v_It)) + (1 - lambda) L_NCE(m_I, f(v_I))`` (PIRL eq. (6),
``loss.jigsaw_weight`` lambda = 0.5) with ``loss.num_negatives`` memory entries drawn uniformly
each step as the noise; ``loss.objective="info_nce"`` puts a softmax cross-entropy over the
positive and those negatives in place of L_NCE (VISSL's ``cross_entropy`` loss type).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from sslx import experiment
from sslx.data import augment, sources, views
from sslx.losses import info_nce, memory_bank_nce
from sslx.losses._common import l2_normalize
from sslx.method import Method
from sslx.models import Backbone


# "nce": the paper's noise-contrastive estimation (sslx.losses.memory_bank_nce); "info_nce": a
# softmax cross-entropy over the positive and the same memory-bank negatives (VISSL's
# loss_type: cross_entropy), whose gradient stays bounded when many negatives score high.
OBJECTIVES = ("nce", "info_nce")


class PIRLModel(nnx.Module):

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    features, out = self.encoder.num_features, config.head.out_features
    self.image_head = nnx.Linear(features, out, rngs=rngs)
    self.patch_head = nnx.Linear(features, out, rngs=rngs)
    self.jigsaw_head = nnx.Linear(config.jigsaw.grid ** 2 * out, out, rngs=rngs)

  def image_embedding(self, x, rng):
    return self.image_head(self.encoder(x, train=True, rng=rng))

  def jigsaw_embedding(self, patches, rng):
    """patches [B, n, p, p, C] (shuffled) -> [B, out]: the encoder on all B * n patches at
    once, each patch's embedding in the shuffled order, concatenated."""
    batch, n = patches.shape[:2]
    h = self.encoder(patches.reshape(batch * n, *patches.shape[2:]), train=True, rng=rng)
    return self.jigsaw_head(self.patch_head(h).reshape(batch, -1))


def check_config(config) -> None:
  """Bad values, named, before any compute."""
  if config.model.name != "resnet":
    raise ValueError(f"PIRL runs the encoder on its jigsaw patches, which needs a convolutional "
                     f"encoder: model.name must be 'resnet', got {config.model.name!r}")
  loss = config.loss
  if loss.objective not in OBJECTIVES:
    raise ValueError(f"loss.objective must be one of {OBJECTIVES}, got {loss.objective!r}")
  experiment.check_positive("loss.temperature", loss.temperature)
  experiment.check_int_at_least("loss.num_negatives", loss.num_negatives, 1)
  for name in ("memory_momentum", "jigsaw_weight"):
    if not 0 <= loss[name] <= 1:
      raise ValueError(f"loss.{name} must be in [0, 1], got {loss[name]!r}")
  experiment.check_int_at_least("jigsaw.grid", config.jigsaw.grid, 1)
  experiment.check_int_at_least("head.out_features", config.head.out_features, 1)


def init_memory(rng, num_examples: int, dim: int) -> jax.Array:
  """The memory bank at the start: random unit rows (VISSL: uniform in +-sqrt(3/dim), then
  normalised)."""
  bound = (3.0 / dim) ** 0.5
  return l2_normalize(jax.random.uniform(rng, (num_examples, dim), jnp.float32, -bound, bound))


def update_memory(memory, index, embeddings, momentum: float):
  """The memory bank after a step: row ``index[i]`` becomes ``normalize(momentum * row + (1 -
  momentum) * normalize(embeddings[i]))`` (no gradient); the other rows are kept."""
  rows = momentum * memory[index] + (1 - momentum) * l2_normalize(
      jax.lax.stop_gradient(embeddings))
  return experiment.set_rows(memory, index, l2_normalize(rows))


def get_method(config) -> Method:
  check_config(config)
  loss_config, jigsaw_config = config.loss, config.jigsaw
  num_examples = sources.num_train_examples(config.data)
  if loss_config.num_negatives > num_examples:
    raise ValueError(f"loss.num_negatives={loss_config.num_negatives} is more than the "
                     f"{num_examples} images in the memory bank")
  images = experiment.images_for(config)
  info = sources.get_dataset_info(config.data.name)
  jigsaw_hw = augment.make_pipeline(jigsaw_config.view).out_hw(info.image_shape[:2])
  cell = min(jigsaw_hw) // jigsaw_config.grid
  if cell < 1:
    raise ValueError(f"jigsaw.grid={jigsaw_config.grid} cuts the {tuple(jigsaw_hw)} views of "
                     f"jigsaw.view={jigsaw_config.view!r} into empty cells; use a smaller grid "
                     "or a larger view")
  net = experiment.Network(lambda rngs: PIRLModel(config, images.view_shape, rngs=rngs),
                           dtype=config.model.dtype)
  nce = lambda z, positives, negatives, normalizer: memory_bank_nce(  # noqa: E731
      z, positives, negatives, num_data=num_examples, temperature=loss_config.temperature,
      normalizer=normalizer)

  def init(rng, batch):
    del batch
    net_rng, memory_rng = jax.random.split(rng)
    variables = {**net.init(net_rng),
                 "memory": init_memory(memory_rng, num_examples, config.head.out_features)}
    if loss_config.objective == "nce":
      variables["normalizer"] = jnp.full((), -1.0, jnp.float32)
    return variables

  def loss(params, variables, batch, rng):
    index = experiment.batch_index(batch, "PIRL")
    view_rng, jigsaw_rng, negative_rng, image_rng, patch_rng = jax.random.split(rng, 5)
    view = images.normalize(augment.augment_batch(view_rng, batch["image"], config.augment))
    # Whole cells: jigsaw.patch_view crops each (PIRL: a random resized crop of the cell).
    patches, _ = views.jigsaw(jigsaw_rng, batch["image"], grid=jigsaw_config.grid, patch=cell,
                              view=jigsaw_config.view, patch_view=jigsaw_config.patch_view)
    model = net.merge(params, variables["batch_stats"])
    image_z = model.image_embedding(view, image_rng)
    jigsaw_z = model.jigsaw_embedding(images.normalize(patches), patch_rng)

    memory = variables["memory"]
    positives = memory[index]
    negatives = memory[jax.random.randint(negative_rng, (loss_config.num_negatives,), 0,
                                          num_examples)]
    state = {}
    if loss_config.objective == "nce":
      # Z estimated from the first batch's image scores, then kept (VISSL: one Z for both).
      previous = variables["normalizer"]
      normalizer = state["normalizer"] = jax.lax.cond(
          previous > 0, lambda: previous,
          lambda: nce(jax.lax.stop_gradient(image_z), positives, negatives,
                      None)[1]["normalizer"])
      image_loss, _ = nce(image_z, positives, negatives, normalizer)
      jigsaw_loss, _ = nce(jigsaw_z, positives, negatives, normalizer)
    else:  # "info_nce": a softmax over the positive and the same negatives (no Z)
      image_loss, jigsaw_loss = (
          info_nce(z, positives, negatives, temperature=loss_config.temperature)
          for z in (image_z, jigsaw_z))
    w = loss_config.jigsaw_weight
    value = w * jigsaw_loss + (1 - w) * image_loss

    metrics = {"train/image_nce": image_loss, "train/jigsaw_nce": jigsaw_loss,
               # train/positive_cosine: between an image's view and its jigsaw embedding
               **experiment.embedding_metrics(image_z, jigsaw_z),
               **{f"train/nce_{k}": v for k, v in state.items()}}
    return value, {"metrics": metrics,
                   "state": {"batch_stats": net.batch_stats(model),
                             "memory": update_memory(memory, index, image_z,
                                                     loss_config.memory_momentum),
                             **state}}

  return Method(init=init, apply=experiment.encoder_apply(net, images), loss=loss,
                param_axes=net.param_axes)
