"""iBOT (Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer"): DINO plus
masked image modelling, the EMA teacher acting as the online tokenizer of the student's masks.

As bytedance/ibot main_ibot.py: multi-crop views; each global crop gets a block-wise mask
(`sslx.data.masks.ibot_block_masks`: half the images unmasked, the others 10-50% of their
patches in blocks) whose patch embeddings the student replaces by a learned mask token. One head
(`DINOHead`, shared by the [CLS] and the patch tokens) gives K-way logits. The loss is
``lambda1 * dino([CLS] of every student crop, teacher [CLS] of the other global crops) +
lambda2 * ibot_patch(student patches, teacher patches of the same unmasked crop, at the masked
patches)``, each term with its own teacher temperature and center (`sslx.losses`). The teacher
sees the global crops unmasked. `Method.apply` is the teacher backbone's [CLS] token, as iBOT
evaluates (kNN and linear probe on the teacher).

`save_pictures` (DINO's) draws the teacher's last-block [CLS] attention per head after a run.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from experiments import _multicrop
from experiments.dino import check_config as check_dino_config
from experiments.dino import DINOModel, teacher_temperature
from experiments.dino import save_pictures  # noqa: F401  the teacher's attention maps, as DINO's
from sslx import experiment
from sslx.data.masks import ibot_block_masks, ibot_pred_ratios
from sslx.losses import dino, dino_center_update, ibot_patch, ibot_patch_center_update
from sslx.method import Method

GLOBAL, LOCAL = _multicrop.GLOBAL, _multicrop.LOCAL


class IBOTModel(DINOModel):
  """DINO's backbone and head (one head for the [CLS] and the patch tokens) plus the mask token:
  the student, and (an EMA copy) the teacher, which never uses its mask token."""

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    super().__init__(config, image_shape, rngs=rngs)
    # iBOT's masked_embed starts at zero.
    self.mask_token = nnx.Param(jnp.zeros((self.encoder.num_features,)),
                                out_sharding=("embed",), eager_sharding=False)

  def token_logits(self, x, *, train: bool, rng=None, mask=None):
    """Global crops [n, H, W, C] (mask [n, N] or None) -> ([CLS] logits [n, K], patch logits
    [n, N, K], the backbone's [CLS] features [n, D]); the head sees the [CLS] and patch tokens
    in one pass, as iBOT's shared head."""
    out = self.encoder.net(x, mask=mask, mask_token=None if mask is None else self.mask_token[...],
                           train=train, rng=rng)
    tokens = jnp.concatenate([out["cls"][:, None], out["patches"]], axis=1)
    n, t, d = tokens.shape
    logits = self.head(tokens.reshape(n * t, d), train=train).reshape(n, t, -1)
    return logits[:, 0], logits[:, 1:], out["cls"]


def check_vit_and_masks(config, method: str = "iBOT") -> None:
  """A ViT with a class token, and valid mask ratios (`config.ibot`), named in the errors."""
  if config.model.name != "vit" or not config.model.vit.class_token:
    raise ValueError(f"{method} needs a ViT with a class token: config.model.name must be 'vit' "
                     f"and config.model.vit.class_token True, got {config.model.name!r} and "
                     f"{config.model.vit.class_token!r}")
  try:  # the ratios' own checks, at build time rather than inside the first traced step
    ibot_pred_ratios(jax.random.PRNGKey(0), 1, tuple(config.ibot.pred_ratio),
                     tuple(config.ibot.pred_ratio_var))
  except ValueError as e:
    raise ValueError(f"config.ibot.pred_ratio / pred_ratio_var: {e}") from None


def check_config(config) -> None:
  check_dino_config(config)
  check_vit_and_masks(config)
  c = config.loss
  for field in ("teacher_patch_temp", "warmup_teacher_patch_temp"):
    experiment.check_positive(f"config.loss.{field}", c[field])
  experiment.check_non_negative("config.loss.warmup_teacher_patch_temp_steps",
                                c.warmup_teacher_patch_temp_steps)
  if not 0 <= c.center_momentum2 <= 1:
    raise ValueError(f"config.loss.center_momentum2 must be in [0, 1], got {c.center_momentum2}")
  for field in ("lambda1", "lambda2"):
    experiment.check_non_negative(f"config.loss.{field}", c[field])


def patch_temperature(config, step):
  """The patch term's teacher temperature: DINO's linear warm-up with the patch fields."""
  c = config.loss
  patch = ml_collections.ConfigDict({"loss": {
      "teacher_temp": c.teacher_patch_temp, "warmup_teacher_temp": c.warmup_teacher_patch_temp,
      "warmup_teacher_temp_steps": c.warmup_teacher_patch_temp_steps}})
  return teacher_temperature(patch, step)


def draw_masks(config, rng, num_views: int, batch_size: int, grid_size):
  """[V, B, N] bool block-wise masks, one per global crop (iBOT draws one per image and crop)."""
  masks = ibot_block_masks(rng, num_views * batch_size, grid_size,
                           pred_ratio=tuple(config.ibot.pred_ratio),
                           pred_ratio_var=tuple(config.ibot.pred_ratio_var))
  return masks.reshape(num_views, batch_size, -1)


class EncodedViews(NamedTuple):
  """What iBOT's and DINOv2's losses read from one step's views (leading ``[V, B]``)."""
  student_cls: jax.Array  # [CLS] logits of every student crop, the global crops first
  student_patches: jax.Array  # patch logits of the masked global crops
  features: jax.Array  # the student backbone's [CLS] of the global crops
  teacher_cls: jax.Array  # the teacher's [CLS] logits of the unmasked global crops
  teacher_patches: jax.Array  # ... and its patch logits; no gradient flows into either
  batch_stats: dict
  teacher_batch_stats: dict


def encode_views(net, teacher_net, params, variables, views, masks, encoder_rng
                 ) -> EncodedViews:
  """The student on the global crops with their `masks` [V, B, N] (one pass: [CLS] and patch
  logits) and on the local crops ([CLS] only); the EMA teacher on the global crops unmasked."""
  flat_masks = _multicrop.flatten_views(masks)  # in the order encode gives the images
  (student_cls, student_patches, features), batch_stats = net.encode(
      lambda m, x, r: m.token_logits(x, train=True, rng=r, mask=flat_masks), params,
      variables.get("batch_stats", {}), views, encoder_rng, groups=(GLOBAL,))
  if LOCAL in views:
    local_cls, batch_stats = net.encode(
        lambda m, x, r: m.logits(x, train=True, rng=r), params, batch_stats, views,
        jax.random.fold_in(encoder_rng, 1), groups=(LOCAL,))
    student_cls = jnp.concatenate([student_cls, local_cls])  # global views first
  teacher = variables["teacher"]
  (teacher_cls, teacher_patches, _), teacher_stats = teacher_net.encode(
      lambda m, x, r: m.token_logits(x, train=True), teacher["params"],
      teacher.get("batch_stats", {}), views, groups=(GLOBAL,))
  teacher_cls, teacher_patches = jax.lax.stop_gradient((teacher_cls, teacher_patches))
  return EncodedViews(student_cls, student_patches, features, teacher_cls, teacher_patches,
                      batch_stats, teacher_stats)


def get_method(config) -> Method:
  check_config(config)
  loss_config = config.loss
  images = _multicrop.images_for(config)

  def build(c):
    return _multicrop.MultiCropNetwork(lambda rngs, shape: IBOTModel(c, shape, rngs=rngs), c,
                                       images)

  net = build(config)
  teacher_net = _multicrop.teacher_network(config, build, net)
  grid_size = net.global_network.abstract.encoder.net.grid_size

  def init(rng, batch):
    del batch
    variables = net.init(rng)
    # The teacher starts as a copy of the student; both centers at zero.
    k = config.head.out_features
    variables = {**variables, "teacher": _multicrop.teacher_copy(variables),
                 "center": jnp.zeros((k,), jnp.float32),
                 "patch_center": jnp.zeros((k,), jnp.float32)}
    if not variables["batch_stats"]:  # no BatchNorm in the head: no state entry that never moves
      del variables["batch_stats"]
    return variables

  apply = experiment.encoder_apply(net, images, teacher=True)  # as the paper evaluates

  def loss(params, variables, batch, rng):
    step = variables["step"]
    views, encoder_rng = _multicrop.crop_views(rng, batch["image"], config, images)
    num_global, batch_size = views[GLOBAL].shape[:2]
    masks = draw_masks(config, jax.random.fold_in(rng, 2), num_global, batch_size, grid_size)
    student = _multicrop.last_layers_frozen(params, step, loss_config.freeze_last_layer_steps)
    encoded = encode_views(net, teacher_net, student, variables, views, masks, encoder_rng)
    student_cls, student_patches, features = (encoded.student_cls, encoded.student_patches,
                                              encoded.features)
    teacher_cls, teacher_patches = encoded.teacher_cls, encoded.teacher_patches
    cls_temp, patch_temp = teacher_temperature(config, step), patch_temperature(config, step)
    center, patch_center = variables["center"], variables["patch_center"]
    cls_loss = dino(student_cls, teacher_cls, center, student_temp=loss_config.student_temp,
                    teacher_temp=cls_temp)
    patch_loss = ibot_patch(student_patches, teacher_patches, masks, patch_center,
                            student_temp=loss_config.student_temp, teacher_temp=patch_temp)
    value = loss_config.lambda1 * cls_loss + loss_config.lambda2 * patch_loss
    targets = jax.nn.softmax((teacher_cls - center) / cls_temp, axis=-1)
    metrics = {
        # On the backbone's [CLS] of the two masked global crops: the representation evaluated.
        **experiment.embedding_metrics(features[0], features[1]),
        "train/cls_loss": cls_loss,
        "train/patch_loss": patch_loss,
        "train/masked_fraction": jnp.mean(masks),
        "train/teacher_temperature": cls_temp,
        "train/teacher_entropy": jnp.mean(-jnp.sum(targets * jnp.log(targets + 1e-12), -1)),
    }
    state = {"teacher": {"params": variables["teacher"]["params"],
                         "batch_stats": encoded.teacher_batch_stats},
             "center": dino_center_update(center, teacher_cls,
                                          momentum=loss_config.center_momentum),
             "patch_center": ibot_patch_center_update(patch_center, teacher_patches,
                                                      momentum=loss_config.center_momentum2)}
    if "batch_stats" in variables:
      state["batch_stats"] = encoded.batch_stats
    return value, {"metrics": metrics, "state": state}

  return Method(init=init, apply=apply, loss=loss, param_axes=net.param_axes,
                after_update=experiment.ema_teacher_update(config))
