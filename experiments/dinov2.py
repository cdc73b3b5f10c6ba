"""DINOv2 (Oquab et al. 2024, "DINOv2: Learning Robust Visual Features without Supervision"):
DINO's image-level self-distillation and iBOT's masked-patch distillation, each with its own
head, the teacher's targets balanced by Sinkhorn-Knopp, and the KoLeo regulariser on the
student's [CLS] features.

As facebookresearch/dinov2 ssl_meta_arch.py: multi-crop views; block-wise masks on the student's
global crops (iBOT's: half the images unmasked, the others 10-50% of their patches); the EMA
teacher sees the global crops unmasked. The loss is::

    lambda1 * dino([CLS] logits of every student crop, teacher targets of the other global
                       crops)
  + koleo_weight * sum over the global crops of koleo(student backbone [CLS] of that crop)
  + lambda2 * ibot_patch(student patch logits, teacher patch targets, at the masked patches)

The teacher's targets are ``softmax((logits - center) / T)`` with a running center
(``loss.centering="centering"``, DINO's and iBOT's) or Sinkhorn-Knopp's balanced assignment at
temperature ``T`` over the global batch (``"sinkhorn_knopp"``: 3 iterations, over both global
crops' [CLS] tokens together and over the masked patches only), as DINOv2's
``sinkhorn_knopp_teacher``. ``ibot.separate_head`` gives the patch tokens their own head
(DINOv2's ViT-L/14 and g/14 recipes); otherwise the [CLS] head serves both (its default).
`Method.apply` is the teacher backbone's [CLS] token, as DINOv2 evaluates.

Deviations: the patch head runs on every patch token of the global crops and the loss weighs the
masked ones (DINOv2 first gathers the masked tokens into a buffer: the same loss, less memory);
drop-path rates rise linearly over the blocks (DINOv2: the same rate in every block).
`save_pictures` (DINO's) draws the teacher's last-block [CLS] attention per head after a run.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from experiments import _multicrop
from experiments.dino import check_config as check_dino_config
from experiments.dino import save_pictures  # noqa: F401  the teacher's attention maps, as DINO's
from experiments.dino import teacher_temperature
from experiments.ibot import IBOTModel, check_vit_and_masks, draw_masks, encode_views
from sslx import experiment
from sslx.losses import (
    dino,
    dino_center_update,
    ibot_patch,
    ibot_patch_center_update,
    koleo,
    sinkhorn_knopp,
)
from sslx.method import Method
from sslx.models import DINOHead

GLOBAL = _multicrop.GLOBAL
CENTERINGS = ("centering", "sinkhorn_knopp")
SINKHORN_ITERATIONS = 3  # DINOv2's sinkhorn_knopp_teacher


class DINOv2Model(IBOTModel):
  """iBOT's backbone, [CLS] head and mask token, plus the patch tokens' own head when
  `config.ibot.separate_head`."""

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    super().__init__(config, image_shape, rngs=rngs)
    h = config.ibot.head
    # nnx.data: the attribute holds a module or None (a static None would fix its kind).
    self.patch_head = nnx.data(
        DINOHead(self.encoder.num_features, h.out_features, hidden=h.hidden,
                 bottleneck=h.bottleneck, num_layers=h.num_layers, norm=h.norm,
                 norm_last_layer=h.norm_last_layer, rngs=rngs)
        if config.ibot.separate_head else None)

  def token_logits(self, x, *, train: bool, rng=None, mask=None):
    """Global crops [n, H, W, C] (mask [n, N] or None) -> ([CLS] logits [n, K], patch logits
    [n, N, K2], the backbone's [CLS] features [n, D])."""
    if self.patch_head is None:
      return super().token_logits(x, train=train, rng=rng, mask=mask)
    out = self.encoder.net(x, mask=mask, mask_token=None if mask is None else self.mask_token[...],
                           train=train, rng=rng)
    n, num_patches, d = out["patches"].shape
    patch_logits = self.patch_head(out["patches"].reshape(n * num_patches, d), train=train)
    return (self.head(out["cls"], train=train), patch_logits.reshape(n, num_patches, -1),
            out["cls"])


def masked_sinkhorn_knopp(logits, valid, temperature, num_iters: int = SINKHORN_ITERATIONS):
  """Sinkhorn-Knopp's balanced assignment over the samples where `valid` (DINOv2's
  ``sinkhorn_knopp_teacher`` over the masked patches of the batch): logits ``[M, K]``, valid
  ``[M]`` bool -> ``[M, K]`` probabilities, each valid row summing to 1, each prototype getting
  an equal share of the valid samples; invalid rows are uniform (they carry no weight).
  Computed in the log domain; a number of valid samples fixed by the data, traced."""
  logits = jax.lax.stop_gradient(logits.astype(jnp.float32)) / temperature
  num_prototypes = logits.shape[1]
  count = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
  log_q = jnp.where(valid[:, None], logits, -jnp.inf)
  log_q = log_q - jax.nn.logsumexp(log_q)  # total mass 1
  for _ in range(num_iters):
    log_q = log_q - jax.nn.logsumexp(log_q, axis=0, keepdims=True) - jnp.log(num_prototypes)
    row = jax.nn.logsumexp(log_q, axis=1, keepdims=True)
    log_q = log_q - jnp.where(valid[:, None], row, 0.0) - jnp.log(count)
  probs = jnp.exp(log_q + jnp.log(count))
  return jnp.where(valid[:, None], probs, 1.0 / num_prototypes)


def as_teacher_logits(probs, temperature):
  """Target probabilities written as teacher logits: ``softmax(T log p / T) = p``, so
  `sslx.losses.dino` and `ibot_patch` (which sharpen ``(logits - center) / T``) take
  Sinkhorn-Knopp's targets with a zero center."""
  return temperature * jnp.log(jnp.maximum(probs, jnp.finfo(jnp.float32).tiny))


def check_config(config) -> None:
  check_dino_config(config)
  check_vit_and_masks(config, "DINOv2")
  c = config.loss
  if c.centering not in CENTERINGS:
    raise ValueError(f"config.loss.centering must be one of {CENTERINGS}, got {c.centering!r}")
  if not 0 <= c.center_momentum2 <= 1:
    raise ValueError(f"config.loss.center_momentum2 must be in [0, 1], got {c.center_momentum2}")
  for field in ("lambda1", "lambda2", "koleo_weight"):
    experiment.check_non_negative(f"config.loss.{field}", c[field])


def get_method(config) -> Method:
  check_config(config)
  loss_config = config.loss
  images = _multicrop.images_for(config)

  def build(c):
    return _multicrop.MultiCropNetwork(lambda rngs, shape: DINOv2Model(c, shape, rngs=rngs), c,
                                       images)

  net = build(config)
  teacher_net = _multicrop.teacher_network(config, build, net)
  grid_size = net.global_network.abstract.encoder.net.grid_size
  patch_dim = (config.ibot.head.out_features if config.ibot.separate_head
               else config.head.out_features)
  sinkhorn = loss_config.centering == "sinkhorn_knopp"

  def init(rng, batch):
    del batch
    variables = net.init(rng)
    variables = {**variables, "teacher": _multicrop.teacher_copy(variables)}
    if not sinkhorn:  # the running centers of DINO / iBOT's centering
      variables["center"] = jnp.zeros((config.head.out_features,), jnp.float32)
      variables["patch_center"] = jnp.zeros((patch_dim,), jnp.float32)
    if not variables["batch_stats"]:  # no BatchNorm in the heads: no state entry that never moves
      del variables["batch_stats"]
    return variables

  apply = experiment.encoder_apply(net, images, teacher=True)  # as the paper evaluates

  def loss(params, variables, batch, rng):
    step = variables["step"]
    views, encoder_rng = _multicrop.crop_views(rng, batch["image"], config, images)
    num_global, batch_size = views[GLOBAL].shape[:2]
    masks = draw_masks(config, jax.random.fold_in(rng, 2), num_global, batch_size, grid_size)
    student = _multicrop.last_layers_frozen(params, step, loss_config.freeze_last_layer_steps,
                                            heads=("head", "patch_head"))
    encoded = encode_views(net, teacher_net, student, variables, views, masks, encoder_rng)
    student_cls, student_patches, features = (encoded.student_cls, encoded.student_patches,
                                              encoded.features)
    teacher_cls, teacher_patches = encoded.teacher_cls, encoded.teacher_patches
    temperature = teacher_temperature(config, step)
    state = {}
    if sinkhorn:
      cls_targets = sinkhorn_knopp(teacher_cls.reshape(-1, teacher_cls.shape[-1]),
                                   epsilon=temperature, num_iters=SINKHORN_ITERATIONS)
      patch_targets = masked_sinkhorn_knopp(
          teacher_patches.reshape(-1, patch_dim), masks.reshape(-1), temperature)
      teacher_cls = as_teacher_logits(cls_targets.reshape(teacher_cls.shape), temperature)
      teacher_patches = as_teacher_logits(patch_targets.reshape(teacher_patches.shape),
                                          temperature)
      center = jnp.zeros((config.head.out_features,), jnp.float32)
      patch_center = jnp.zeros((patch_dim,), jnp.float32)
    else:
      center, patch_center = variables["center"], variables["patch_center"]
      state["center"] = dino_center_update(center, teacher_cls,
                                           momentum=loss_config.center_momentum)
      state["patch_center"] = ibot_patch_center_update(patch_center, teacher_patches,
                                                       momentum=loss_config.center_momentum2)
    # DINOv2 uses one teacher temperature for the [CLS] and the patch targets.
    cls_loss = dino(student_cls, teacher_cls, center, student_temp=loss_config.student_temp,
                    teacher_temp=temperature)
    patch_loss = ibot_patch(student_patches, teacher_patches, masks, patch_center,
                            student_temp=loss_config.student_temp, teacher_temp=temperature)
    # Per global crop, so that two crops of one image are never each other's neighbours.
    koleo_loss = sum(koleo(features[v]) for v in range(num_global))
    value = (loss_config.lambda1 * cls_loss + loss_config.koleo_weight * koleo_loss
             + loss_config.lambda2 * patch_loss)
    targets = jax.nn.softmax((teacher_cls - center) / temperature, axis=-1)
    metrics = {
        # On the backbone's [CLS] of the two masked global crops: the representation evaluated.
        **experiment.embedding_metrics(features[0], features[1]),
        "train/cls_loss": cls_loss,
        "train/patch_loss": patch_loss,
        "train/koleo_loss": koleo_loss,
        "train/masked_fraction": jnp.mean(masks),
        "train/teacher_temperature": temperature,
        "train/teacher_entropy": jnp.mean(-jnp.sum(targets * jnp.log(targets + 1e-12), -1)),
    }
    state["teacher"] = {"params": variables["teacher"]["params"],
                        "batch_stats": encoded.teacher_batch_stats}
    if "batch_stats" in variables:
      state["batch_stats"] = encoded.batch_stats
    return value, {"metrics": metrics, "state": state}

  return Method(init=init, apply=apply, loss=loss, param_axes=net.param_axes,
                after_update=experiment.ema_teacher_update(config))
