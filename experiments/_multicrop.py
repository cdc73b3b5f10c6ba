"""Multi-crop training shared by SwAV (Caron et al. 2020) and DINO (Caron et al. 2021): crop
groups from `config.multicrop`, one encoder pass per crop resolution, layers frozen for a while.

`config.multicrop` maps group names to `sslx.data.views.multi_crop` groups::

  {"global": {"number": 2, "size": 224, "scale": (0.14, 1.0), "pipeline": spec},
   "local": {"number": 6, "size": 96, "scale": (0.05, 0.14), "pipeline": spec}}

"global" comes first and holds at least two views (the ones SwAV assigns codes to and DINO's
teacher sees); "local" is optional and a group with ``number = 0`` is left out (two-crop runs).
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sslx import experiment
from sslx.data import augment
from sslx.data import views as views_lib

GLOBAL, LOCAL = "global", "local"


def crop_config(config) -> dict:
  """`config.multicrop` as a dict for `multi_crop`, groups with ``number = 0`` left out;
  ValueError (naming the field) when the global group is missing, second or smaller than 2."""
  groups = config.multicrop.to_dict()
  unknown = sorted(set(groups) - {GLOBAL, LOCAL})
  if unknown or list(groups)[:1] != [GLOBAL]:
    raise ValueError(f"multicrop must have the groups ['global', 'local'] (global first, local "
                     f"optional), got {list(groups)}")
  for name, group in groups.items():
    number = group.get("number")
    if not (isinstance(number, int) and number >= (2 if name == GLOBAL else 0)):
      raise ValueError(f"multicrop.{name}.number must be an int >= "
                       f"{2 if name == GLOBAL else 0}, got {number!r}")
  return {name: group for name, group in groups.items() if group["number"] > 0}


def crop_sizes(config) -> dict[str, int]:
  """``{group: side length}`` of the groups in use."""
  return {name: group["size"] for name, group in crop_config(config).items()}


def images_for(config) -> experiment.Images:
  """`experiment.Images` with the global crops' size as the view size (evaluation images are
  resized to it, as for the views of a two-view method)."""
  spec = experiment.images_for(config)
  size = crop_config(config)[GLOBAL]["size"]
  return spec._replace(view_hw=(size, size), view_shape=(size, size, spec.view_shape[-1]))


def crop_views(rng, images, config, spec: experiment.Images):
  """``{group: normalised float32 [n, B, s, s, C]}`` multi-crop views of a uint8 batch, and a key
  for the encoder (drop-path) independent of the views' key.

  ``images``: uint8 [B, H, W, C], cropped on device, or ``{group: uint8 [B, n, s, s, C]}``, the
  crops already taken from the full images on the host (``data.crop_on_host``), which then get
  the rest of their group's augmentation (each view with ``fold_in(key, j)``, j counting the
  views through the groups).
  """
  key = jax.random.fold_in(rng, 0)
  groups = crop_config(config)
  if not isinstance(images, Mapping):
    views = views_lib.multi_crop(key, images, groups)
    return {name: spec.normalize(v) for name, v in views.items()}, jax.random.fold_in(rng, 1)
  if list(images) != list(groups):
    raise ValueError(f"images: host crops of the groups {list(images)}, but multicrop has the"
                     f" groups {list(groups)} (data.crop_on_host crops them from the config)")
  views, first = {}, 0
  for name, pipelines in views_lib.multi_crop_pipelines(groups).items():
    crops = images[name]
    if crops.shape[1] != len(pipelines):
      raise ValueError(f"images[{name!r}]: {crops.shape[1]} host crops per image, multicrop."
                       f"{name}.number is {len(pipelines)}")
    views[name] = spec.normalize(jnp.stack([
        augment.augment_batch(jax.random.fold_in(key, first + j), crops[:, j],
                              augment.without_crop(pipeline, crops.shape[2:4]))
        for j, pipeline in enumerate(pipelines)]))
    first += len(pipelines)
  return views, jax.random.fold_in(rng, 1)


def frozen_until(tree, step, until_step: int):
  """`tree` as is in the forward pass, with zero gradient while ``step < until_step`` (SwAV's
  frozen prototypes and DINO's frozen last layer during the first epoch: the authors drop those
  gradients, ``p.grad = None``)."""
  frozen = jnp.asarray(step) < until_step
  return jax.tree.map(lambda p: jnp.where(frozen, jax.lax.stop_gradient(p), p), tree)


def last_layers_frozen(params: dict, step, until_step: int, heads=("head",)) -> dict:
  """`params` with the weight-normalised last layer (``last_v``, ``last_g``) of each DINOHead
  in `heads` (top-level names; absent ones skipped) frozen while ``step < until_step``: DINO's,
  iBOT's and DINOv2's freeze_last_layer."""
  params = dict(params)
  for head_name in heads:
    if head_name in params:
      head = dict(params[head_name])
      for name in ("last_v", "last_g"):
        if name in head:
          head[name] = frozen_until(head[name], step, until_step)
      params[head_name] = head
  return params


def flatten_views(tree):
  """``[V, B, ...]`` -> ``[B * V, ...]``, image-major: each image's views side by side, so a
  batch sharded along ``B`` stays in one contiguous block per device. (View-major ``[V * B]``
  interleaves the devices' rows, a layout XLA can only compute replicated: every device then
  ran the encoder on the whole global batch.)"""
  return jax.tree.map(lambda y: y.swapaxes(0, 1).reshape(-1, *y.shape[2:]), tree)


def unflatten_views(tree, num_views: int):
  """`flatten_views`' inverse: ``[B * V, ...]`` -> ``[V, B, ...]``."""
  return jax.tree.map(lambda y: y.reshape(-1, num_views, *y.shape[1:]).swapaxes(0, 1), tree)


def teacher_copy(variables: dict) -> dict:
  """The EMA teacher's first variables: a copy of the student's params and batch_stats (DINO,
  iBOT and MSN start their teacher as the student, the authors' deepcopy)."""
  return jax.tree.map(jnp.copy, {"params": variables["params"],
                                 "batch_stats": variables["batch_stats"]})


def teacher_network(config, build: Callable[[Any], "MultiCropNetwork"],
                    student: "MultiCropNetwork") -> "MultiCropNetwork":
  """The network an EMA teacher runs: ``build(config)`` without stochastic depth (DINO's and
  iBOT's teacher never drops a branch; `experiment.without_stochastic_depth`), or the student's
  own network when it has none. The parameters are the same either way."""
  if not (config.model.vit.drop_path_rate or config.model.resnet.stochastic_depth):
    return student
  return build(experiment.without_stochastic_depth(config))


class MultiCropNetwork:
  """An NNX model applied to crops of several resolutions with one set of parameters.

  ``build(rngs, image_shape)`` makes the model for crops of ``image_shape``; one
  `experiment.Network` is kept per crop size. A ResNet has the same parameters at every size; a
  ViT too with fixed sine-cosine position embeddings (computed for each crop's patch grid, where
  DINO interpolates its learned ones). A model whose parameters depend on the input size (a ViT
  with ``pos_embed="learned"``) raises a ValueError unless every group has the global size.
  """

  def __init__(self, build: Callable[[nnx.Rngs, tuple], nnx.Module], config,
               spec: experiment.Images):
    channels = spec.view_shape[-1]
    self.sizes = crop_sizes(config)
    self.networks = {}
    for size in dict.fromkeys(self.sizes.values()):
      try:
        self.networks[size] = experiment.Network(
            lambda rngs, s=size: build(rngs, (s, s, channels)), dtype=config.model.dtype)
      except ValueError as e:  # e.g. a ViT patch size that does not divide the crop size
        raise ValueError(f"multicrop crops of size {size}: {e}") from None
    shapes = {size: jax.tree.map(lambda a: a.shape, nnx.state(net.abstract, nnx.Param))
              for size, net in self.networks.items()}
    reference = shapes[self.sizes[GLOBAL]]
    for size, tree in shapes.items():
      if tree != reference:
        raise ValueError(
            f"multicrop: the model's parameters at crop size {size} differ from those at the "
            f"global size {self.sizes[GLOBAL]} (a ViT with model.vit.pos_embed='learned' has "
            f"one position embedding per patch of the global crop); use "
            f"model.vit.pos_embed='sincos', a ResNet, or local crops of the global size")
    self.global_network = self.networks[self.sizes[GLOBAL]]

  def init(self, rng) -> dict:
    return self.global_network.init(rng)

  def merge(self, params, batch_stats, group: str = GLOBAL):
    return self.networks[self.sizes[group]].merge(params, batch_stats)

  @property
  def param_axes(self):
    return self.global_network.param_axes

  def encode(self, fn: Callable[[nnx.Module, jax.Array, Any], Any], params, batch_stats,
             views: dict, rng=None, groups=None):
    """Runs ``fn(module, images [B * n, s, s, C], rng)`` once per group (one forward pass per
    resolution, as the authors' MultiCropWrapper; the images in `flatten_views` order, which
    per-image inputs of `fn` such as masks must follow) and returns its outputs with leading
    ``[V, B]``, the groups' views concatenated in order, and the updated batch statistics (each
    pass updates them in turn, as consecutive PyTorch forward passes do)."""
    outputs = []
    for i, group in enumerate(groups or self.sizes):
      x = views[group]
      module = self.merge(params, batch_stats, group)
      out = fn(module, flatten_views(x), None if rng is None else jax.random.fold_in(rng, i))
      batch_stats = experiment.Network.batch_stats(module)
      outputs.append(unflatten_views(out, x.shape[0]))
    return jax.tree.map(lambda *ys: jnp.concatenate(ys), *outputs), batch_stats
