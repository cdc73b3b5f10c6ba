"""Multi-crop views (SwAV, DINO): a few large global crops and many small local crops of each
image, one static-shape array per group, augmented on device by `sslx.data.augment` pipelines;
and PIRL's jigsaw views (`jigsaw`): an image cut into a grid of shuffled patches.
"""

from typing import Mapping

import jax
import jax.numpy as jnp

from sslx.data import augment

__all__ = ["SWAV_MULTICROP", "DINO_MULTICROP", "multi_crop", "multi_crop_pipelines", "jigsaw"]

# SwAV (Caron et al. 2020, Sec. 3.2 / 4.1 and facebookresearch/swav main_swav.py,
# src/multicropdataset.py): 2 crops of 224 px with area scale (0.14, 1) and 6 of 96 px with
# (0.05, 0.14); each crop is flipped (p 0.5), colour-distorted with strength s = 1
# (ColorJitter(0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale p 0.2) and blurred with p 0.5
# (sigma in (0.1, 2)).
_SWAV_VIEW = "flip(p=0.5)|color_jitter(0.8, 0.8, 0.8, 0.2, p=0.8)|grayscale(p=0.2)|blur(p=0.5)"
SWAV_MULTICROP = {
  "global": {"number": 2, "size": 224, "scale": (0.14, 1.0), "pipeline": _SWAV_VIEW},
  "local": {"number": 6, "size": 96, "scale": (0.05, 0.14), "pipeline": _SWAV_VIEW},
}

# DINO (Caron et al. 2021, appendix and facebookresearch/dino main_dino.py,
# DataAugmentationDINO): global crops of 224 px with scale (0.4, 1), the BYOL colour ops
# (flip, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2), blur p 1.0 on the first
# and blur p 0.1 + solarize p 0.2 on the second; 8 local crops of 96 px with scale
# (0.05, 0.4), blur p 0.5. The first global view carries solarize(p=0.0) so that both
# global views have the same ops and their params stack into one array per group.
_DINO_COLOUR = "flip(p=0.5)|color_jitter(0.4, 0.4, 0.2, 0.1, p=0.8)|grayscale(p=0.2)"
DINO_MULTICROP = {
  "global": {
    "number": 2, "size": 224, "scale": (0.4, 1.0),
    "pipeline": (_DINO_COLOUR + "|blur(p=1.0)|solarize(p=0.0)",
                 _DINO_COLOUR + "|blur(p=0.1)|solarize(p=0.2)"),
  },
  "local": {"number": 8, "size": 96, "scale": (0.05, 0.4),
            "pipeline": _DINO_COLOUR + "|blur(p=0.5)"},
}

_GROUP_KEYS = {"number", "size", "scale", "ratio", "pipeline"}


def _group_pipelines(name: str, group) -> list:
  """The `Pipeline` of each view of one group, the group's crop first."""
  if hasattr(group, "to_dict"):
    group = group.to_dict()
  if not isinstance(group, Mapping):
    raise ValueError(f"config[{name!r}]: expected a mapping with keys {sorted(_GROUP_KEYS)}, "
                     f"got {type(group).__name__}")
  unknown = sorted(set(group) - _GROUP_KEYS)
  missing = sorted({"number", "size", "scale"} - set(group))
  if unknown or missing:
    raise ValueError(f"config[{name!r}]: unknown keys {unknown}, missing keys {missing}; "
                     f"expected keys {sorted(_GROUP_KEYS)} (ratio and pipeline optional)")
  number = group["number"]
  if not (isinstance(number, int) and not isinstance(number, bool) and number >= 1):
    raise ValueError(f"config[{name!r}].number: expected an int >= 1, got {number!r}")
  try:
    crop = augment.RandomResizedCrop(
      group["size"], group["scale"], group.get("ratio", (3.0 / 4.0, 4.0 / 3.0)))
  except ValueError as e:
    raise ValueError(f"config[{name!r}].{e}") from None
  specs = group.get("pipeline", "")
  if isinstance(specs, (str, augment.Pipeline)):
    specs = [specs] * number
  specs = list(specs)
  if len(specs) != number:
    raise ValueError(f"config[{name!r}].pipeline: expected one spec or {number} (one per view), "
                     f"got {len(specs)}")
  pipelines = []
  for spec in specs:
    if not isinstance(spec, (str, augment.Pipeline)):
      raise ValueError(f"config[{name!r}].pipeline: expected a spec string or a Pipeline, "
                       f"got {type(spec).__name__}")
    ops = augment.make_pipeline(spec).ops
    if any(isinstance(op, augment.RandomResizedCrop) for op in ops):
      # The group's size / scale / ratio define the crop; a second one would be ambiguous.
      raise ValueError(f"config[{name!r}].pipeline: must not contain random_resized_crop "
                       f"(the group's size, scale and ratio set the crop), got {spec!r}")
    pipelines.append(augment.Pipeline((crop,) + ops))
  return pipelines


def multi_crop_pipelines(config=None) -> dict:
  """``{group: [Pipeline per view]}`` for a multi-crop config (see `multi_crop`)."""
  config = DINO_MULTICROP if config is None else config
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  if not isinstance(config, Mapping) or not config:
    raise ValueError("config: expected a non-empty mapping {group name: group config}, "
                     f"got {config!r}")
  return {name: _group_pipelines(name, group) for name, group in config.items()}


def multi_crop(key, images, config=None, *, return_params: bool = False):
  """Multi-crop views of a batch (Caron et al. 2020, SwAV; used by DINO, iBOT ...).

  Args:
    key: PRNG key.
    images: [B, H, W, C] uint8 (or float in [0, 1]).
    config: ``{group: {"number": n, "size": s, "scale": (lo, hi), "ratio": (lo, hi),
      "pipeline": spec}}`` (dict or ConfigDict; default `DINO_MULTICROP`, also
      `SWAV_MULTICROP`). Each view of a group is a random resized crop to ``size``
      with area fraction in ``scale`` (aspect ratio in ``ratio``, default (3/4, 4/3)),
      then ``pipeline``: a spec string (ops after the crop, see
      `sslx.data.augment.parse_pipeline`) for all views or a list of one per view.
    return_params: also return what each op drew (see `sslx.data.augment.Pipeline`); the
      views of a group must then have the same ops.

  Returns:
    ``{group: float32 [n, B, s, s, C]}`` in config order (and ``{group: params with leading
    [n, B]}``). All randomness is one draw ``u = jax.random.uniform(key, (V, B, N))`` (V
    views in all, N the most uniforms a view's pipeline takes): view j of the whole config
    (counting through the groups in order) of example i is
    ``pipeline_j.from_uniforms(u[j, i, :pipeline_j.n_uniforms], images[i])``. The draw
    does not depend on how the batch is sharded, so a sharded batch gives the same views.
  """
  augment.check_batch(images)
  config = DINO_MULTICROP if config is None else config
  groups = multi_crop_pipelines(config)
  batch = images.shape[0]
  total = sum(len(pipelines) for pipelines in groups.values())
  width = max(p.n_uniforms for pipelines in groups.values() for p in pipelines)
  # All the randomness in one draw: each separate jax.random call adds about a second of
  # XLA compile time on CPU.
  u_all = jax.random.uniform(key, (total, batch, width), dtype=jnp.float32)
  views, params = {}, {}
  first = 0
  for name, pipelines in groups.items():
    n = len(pipelines)
    u = u_all[first:first + n]
    first += n
    if len({p.spec for p in pipelines}) == 1:
      # One pipeline for the whole group: a single vmap over views and examples.
      pipe = pipelines[0]
      per_example = jax.vmap(
        lambda u, x: pipe.from_uniforms(u[:pipe.n_uniforms], x, return_params=True))
      out, drawn = jax.vmap(per_example, in_axes=(0, None))(u, images)
    else:
      results = [
        jax.vmap(lambda u, x, p=p: p.from_uniforms(u[:p.n_uniforms], x, return_params=True))(
          u[j], images)
        for j, p in enumerate(pipelines)]
      out = jnp.stack([r[0] for r in results])
      drawn = None
      if return_params:
        structures = {str(jax.tree.structure(r[1])) for r in results}
        if len(structures) != 1:
          raise ValueError(
            f"config[{name!r}].pipeline: with return_params the views of a group must have "
            f"the same ops (their params are stacked), got {[p.spec for p in pipelines]}; "
            "add the missing ops with p=0.0")
        drawn = jax.tree.map(lambda *a: jnp.stack(a), *[r[1] for r in results])
    views[name] = out
    params[name] = drawn
  return (views, params) if return_params else views


def jigsaw(key, images, *, grid: int = 3, patch: int, view=None, patch_view=None):
  """PIRL's jigsaw views (Misra and van der Maaten 2020, Sec. 4.1): each image cut into a grid of
  cells, a random patch of every cell, the patches augmented one by one and shuffled.

  Args:
    key: PRNG key.
    images: [B, H, W, C] uint8 (or float in [0, 1]).
    grid: cells per side (PIRL: 3, so 9 patches).
    patch: side of the square patch taken at a random place in each cell, at most the cell's
      side (the cell's side: the whole cell, for ``patch_view`` to crop, as sslx's PIRL does).
    view: an `sslx.data.augment` pipeline applied to the whole image first (PIRL: a random
      crop of 255 px), or None for the image as it is.
    patch_view: a pipeline applied to each patch independently (PIRL: colour jitter and
      grayscale per patch), or None.

  Returns:
    ``(patches, order)``: ``patches`` float32 [B, grid**2, p, p, C] in [0, 1] (p: ``patch``,
    or the size ``patch_view`` crops the patches to) and
    ``order`` int32 [B, grid**2], a random permutation per image: ``patches[b, j]`` is the
    patch of cell ``order[b, j]`` (cells numbered row-major). Every draw is made for the whole
    batch from ``key``, so a batch sharded over devices gets the same views as on one.
  """
  augment.check_batch(images)
  if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
    raise ValueError(f"jigsaw: grid must be an int >= 1, got {grid!r}")
  view_key, offset_key, patch_key, order_key = jax.random.split(key, 4)
  x = (augment.augment_batch(view_key, images, view) if view is not None
       else augment.to_float(images))
  batch, height, width, channels = x.shape
  cell_h, cell_w = height // grid, width // grid
  if isinstance(patch, bool) or not isinstance(patch, int) or not 1 <= patch <= min(cell_h,
                                                                                     cell_w):
    raise ValueError(f"jigsaw: patch must be an int in [1, {min(cell_h, cell_w)}] (the cells of "
                     f"a {grid}x{grid} grid over {height}x{width} views), got {patch!r}")
  cells = grid * grid
  rows, cols = jnp.divmod(jnp.arange(cells), grid)
  offsets = jax.random.randint(offset_key, (batch, cells, 2), 0,
                               jnp.array([cell_h - patch + 1, cell_w - patch + 1]))
  tops, lefts = rows * cell_h + offsets[..., 0], cols * cell_w + offsets[..., 1]  # [B, cells]

  def cut(image, top, left):
    return jax.lax.dynamic_slice(image, (top, left, 0), (patch, patch, channels))

  patches = jax.vmap(jax.vmap(cut, in_axes=(None, 0, 0)))(x, tops, lefts)
  if patch_view is not None:
    flat = patches.reshape(batch * cells, patch, patch, channels)
    flat = augment.augment_batch(patch_key, flat, patch_view)  # may crop them smaller
    patches = flat.reshape(batch, cells, *flat.shape[1:])
  order = jax.vmap(lambda k: jax.random.permutation(k, cells))(
      jax.random.split(order_key, batch)).astype(jnp.int32)
  patches = jnp.take_along_axis(patches, order[:, :, None, None, None], axis=1)
  return patches, order
