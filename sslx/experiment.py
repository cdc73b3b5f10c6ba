"""What every experiment module shares: the dataset's normalisation and view size, the functional
boundary around a Flax NNX model, two augmented views, EMA teachers and collapse metrics.

An experiment module (`experiments/<name>.py`) combines these with a loss from `sslx.losses` into
a `Method`; see `experiments/byol.py` for a method with an EMA teacher and `experiments/simclr.py`
for one without.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sslx import sharding
from sslx.data import augment, sources
from sslx.models.util import abstract_module, set_compute_dtype
from sslx.train import ema


class Images(NamedTuple):
  """How a method feeds images to its encoder: per-channel mean / std (pixels in [0, 1]) and the
  shape of the augmented views, which may differ from the dataset's (crop_size)."""

  mean: jax.Array
  std: jax.Array
  view_hw: tuple[int, int]
  view_shape: tuple[int, int, int]
  num_classes: int

  def normalize(self, images):
    """float images in [0, 1] -> (images - mean) / std."""
    return (images - self.mean) / self.std

  def resized(self, images):
    """Float images in [0, 1] resized to the training view size (a ViT needs it)."""
    if images.shape[1:3] != self.view_hw:
      images = jax.image.resize(images, (images.shape[0], *self.view_shape), "bilinear")
    return images

  def for_eval(self, images):
    """Evaluation images (float, [0, 1]) resized to the training view size, then normalised."""
    return self.normalize(self.resized(images))


def images_for(config, view_config=None) -> Images:
  """`Images` for `config.data.name`, with views of `view_config` (default `config.augment`)."""
  info = sources.get_dataset_info(config.data.name)
  view_config = config.augment if view_config is None else view_config
  view_hw = augment.make_pipeline(view_config).out_hw(info.image_shape[:2])
  return Images(mean=jnp.asarray(info.mean, jnp.float32), std=jnp.asarray(info.std, jnp.float32),
                view_hw=tuple(view_hw), view_shape=(*view_hw, info.image_shape[-1]),
                num_classes=info.num_classes)


def view_configs(config) -> list:
  """The two view configs of a two-view method: `config.augment`, updated per view by
  `config.augment_view1` / `config.augment_view2` where the config has them (BYOL's asymmetric
  blur and solarisation)."""
  base = config.augment.to_dict()
  return [{**base, **config.get(f"augment_view{i}", {})} for i in (1, 2)]


def two_views(rng, images, config, spec: Images):
  """Two normalised augmented views of a uint8 batch, and a key for the encoder (stochastic
  depth / drop-path) independent of the views' keys. ``images``: [B, H, W, C] cropped on device,
  or [B, 2, h, w, C] views already cropped from the full images on the host
  (``data.crop_on_host``), which get the rest of each view's augmentation."""
  configs = view_configs(config)
  views = augment.augment_views(rng, images, configs)  # view i: fold_in(rng, i)
  return [spec.normalize(v) for v in views], jax.random.fold_in(rng, len(configs))


class Network:
  """A Flax NNX model behind the functional boundary of the Method contract.

  ``build(rngs) -> nnx.Module`` makes the model; its parameters and BatchNorm statistics live in
  pure dicts (``{"params": ..., "batch_stats": ...}``) between steps, and `merge` rebuilds a
  module from them inside `apply` / `loss` (copied, so a traced forward pass never mutates the
  caller's arrays; `batch_stats` reads the statistics the forward pass updated). `dtype`, a
  `config.model.dtype` name, is the compute dtype of every layer of the merged module
  (`sslx.models.set_compute_dtype`: parameters stay float32, encoders and heads return float32).
  """

  def __init__(self, build: Callable[[nnx.Rngs], nnx.Module], dtype: str = "float32"):
    self._build = build
    self.abstract = set_compute_dtype(abstract_module(build), dtype)
    self.graphdef = nnx.split(self.abstract, nnx.Param, nnx.BatchStat)[0]

  def init(self, rng) -> dict:
    _, params, batch_stats = nnx.split(self._build(nnx.Rngs(rng)), nnx.Param, nnx.BatchStat)
    return {"params": params.to_pure_dict(), "batch_stats": batch_stats.to_pure_dict()}

  def merge(self, params, batch_stats):
    return nnx.merge(self.graphdef, params, batch_stats, copy=True)

  @staticmethod
  def batch_stats(module) -> dict:
    return nnx.state(module, nnx.BatchStat).to_pure_dict()

  @property
  def param_axes(self):
    """Logical axis names of the parameters (ViT), for `Method.param_axes`."""
    return sharding.logical_axes(nnx.state(self.abstract, nnx.Param))


def encoder_apply(net, images: Images, *, teacher: bool = False) -> Callable:
  """`Method.apply` evaluating the encoder (the ``.encoder`` module) of `net` (a `Network`, or
  anything with its ``merge``) on evaluation images: the online network's, or with
  ``teacher=True`` the EMA teacher's in ``variables["teacher"]`` (DINO, iBOT and MSN evaluate
  the teacher)."""

  def apply(variables, x):
    source = variables["teacher"] if teacher else variables
    model = net.merge(source["params"], source["batch_stats"])
    return model.encoder(images.for_eval(x), train=False)

  return apply


def without_stochastic_depth(config):
  """A copy of `config` whose encoder never drops a residual branch (model.vit.drop_path_rate
  and model.resnet.stochastic_depth 0): for EMA teachers and momentum encoders, which the
  authors run without it (DINO's and iBOT's teacher, MoCo's key encoder, MoBY's target).
  Parameter shapes are unchanged, so the teacher's parameters fit the student's network."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.vit.drop_path_rate = 0.0
    config.model.resnet.stochastic_depth = 0.0
  return config


def teacher_momentum(config, step):
  """The EMA teacher's momentum at `step` from `config.ema` (see `sslx.train.ema`).

  With ``ema.scaling_rule`` the momentum tuned at ``ema.reference_batch_size`` is raised to the
  power kappa = batch_size / reference_batch_size ("How to Scale Your EMA", Busbridge et al.
  2023), alongside the optimizer's learning-rate scaling (``optim.lr_scaling``).
  """
  e = config.ema
  scale = (ema.ema_scale(config.batch_size, e.reference_batch_size) if e.scaling_rule else 1.0)
  return ema.ema_momentum(step, config.total_steps, base=e.base, final=e.final,
                          schedule=e.schedule, scale=scale)


def ema_teacher_update(config, student: Callable[[Any], Any] = lambda params: params,
                       key: str = "teacher") -> Callable:
  """`Method.after_update` for a method whose ``variables[key]["params"]`` is an EMA of
  ``student(params)`` (the whole student by default, or a sub-tree such as the encoder)."""

  def after_update(params, state, step):
    momentum = teacher_momentum(config, step)
    teacher = dict(state[key])
    teacher["params"] = ema.ema_update(teacher["params"], student(params), momentum)
    return {**state, key: teacher}, {"train/ema_momentum": momentum}

  return after_update


def _unit(z):
  return z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)


def embedding_std(z):
  """Mean per-dimension std of the l2-normalised embeddings [B, D]: about 1/sqrt(D) when they
  spread over the sphere, 0 at collapse (SimSiam Sec. 4.1). For one-view methods (MAE, the
  JEPAs, data2vec), where `embedding_metrics`' second view does not exist."""
  return jnp.mean(jnp.std(_unit(z), axis=0))


def embedding_metrics(z1, z2) -> dict:
  """Collapse detectors on the two views' embeddings [B, D].

  ``train/embedding_std``: `embedding_std` of both views' embeddings together.
  ``train/positive_cosine``: mean cosine between the two views of an image.
  """
  return {"train/embedding_std": embedding_std(jnp.concatenate([z1, z2])),
          "train/positive_cosine": jnp.mean(jnp.sum(_unit(z1) * _unit(z2), axis=-1))}


def check_positive(name: str, value) -> None:
  """A ValueError naming the config field unless `value` > 0."""
  if not value > 0:
    raise ValueError(f"{name} must be > 0, got {value!r}")


def check_int_at_least(name: str, value, minimum: int) -> None:
  """A ValueError naming the config field unless `value` is an int (not a bool) >= `minimum`."""
  if isinstance(value, bool) or not (isinstance(value, int) and value >= minimum):
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_non_negative(name: str, value) -> None:
  """A ValueError naming the config field unless `value` >= 0."""
  if not value >= 0:
    raise ValueError(f"{name} must be >= 0, got {value!r}")


def batch_index(batch, method: str) -> jax.Array:
  """``batch["index"]`` (each image's position in the training set), or a ValueError naming
  `method`, which keeps per-example state, when the batch has none."""
  if "index" not in batch:
    raise ValueError(f"{method} keeps per-example state and needs each image's position in the "
                     f"training set: the batch has no 'index' (keys {sorted(batch)}); "
                     "sslx.data.pipeline.train_iterator yields it")
  return batch["index"]


def set_rows(tables, index: jax.Array, rows):
  """``tables`` (an array or a pytree of arrays with one row per training image) with
  ``table[index[i]] = rows[i]`` for each table and its rows; where an index repeats in the batch
  (a batch that spans two epochs can hold an image twice), its last occurrence is written and
  the others are dropped, so the result is the same on every device and backend (XLA leaves the
  winner of duplicate scatter writes unspecified). For per-example state: iSogCLR's tables,
  PIRL's memory bank."""
  later_same = (index[:, None] == index[None, :]) & jnp.triu(
      jnp.ones((index.shape[0],) * 2, bool), k=1)  # [i, j]: j > i holds the same index
  dropped = later_same.any(axis=1)
  return jax.tree.map(  # an out-of-bounds row is dropped by the scatter
      lambda table, new: table.at[jnp.where(dropped, table.shape[0], index)].set(
          new, mode="drop"), tables, rows)
