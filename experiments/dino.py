"""DINO (Caron et al. 2021): a student sees every multi-crop view and matches the centred,
sharpened output of an EMA teacher that sees only the global views; no negatives, no labels.

With a ViT, `save_pictures` draws the teacher's last-block [CLS] attention per head (the paper's
Fig. 1) after a run; iBOT shares it.
"""

import jax
import jax.numpy as jnp
from etils import epath
from flax import nnx

from experiments import _multicrop
from sslx import experiment
from sslx.losses import dino, dino_center_update
from sslx.method import Method
from sslx.models import Backbone, DINOHead


class DINOModel(nnx.Module):
  """Backbone + DINO head: the student, and (an EMA copy) the teacher."""

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    h = config.head
    self.head = DINOHead(self.encoder.num_features, h.out_features, hidden=h.hidden,
                         bottleneck=h.bottleneck, num_layers=h.num_layers, norm=h.norm,
                         norm_last_layer=h.norm_last_layer, rngs=rngs)

  def logits(self, x, *, train: bool, rng=None):
    return self.head(self.encoder(x, train=train, rng=rng), train=train)


def teacher_temperature(config, step):
  """DINO's teacher temperature: linear from loss.warmup_teacher_temp to loss.teacher_temp over
  the first loss.warmup_teacher_temp_steps steps, then constant (the authors step it per epoch)."""
  c = config.loss
  if c.warmup_teacher_temp_steps == 0:
    return jnp.asarray(c.teacher_temp, jnp.float32)
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / c.warmup_teacher_temp_steps, 0.0, 1.0)
  return c.warmup_teacher_temp + progress * (c.teacher_temp - c.warmup_teacher_temp)


def check_config(config) -> None:
  c = config.loss
  for field in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
    if not c[field] > 0:
      raise ValueError(f"loss.{field} must be > 0, got {c[field]}")
  for field in ("warmup_teacher_temp_steps", "freeze_last_layer_steps"):
    if c[field] < 0:
      raise ValueError(f"loss.{field} must be >= 0, got {c[field]}")
  if not 0 <= c.center_momentum <= 1:
    raise ValueError(f"loss.center_momentum must be in [0, 1], got {c.center_momentum}")


def get_method(config) -> Method:
  check_config(config)
  loss_config = config.loss
  images = _multicrop.images_for(config)

  def build(c):
    return _multicrop.MultiCropNetwork(lambda rngs, shape: DINOModel(c, shape, rngs=rngs), c,
                                       images)

  net = build(config)
  teacher_net = _multicrop.teacher_network(config, build, net)

  def init(rng, batch):
    del batch
    variables = net.init(rng)
    # The teacher starts as a copy of the student (main_dino.py); the center at zero.
    return {**variables, "teacher": _multicrop.teacher_copy(variables),
            "center": jnp.zeros((config.head.out_features,), jnp.float32)}

  apply = experiment.encoder_apply(net, images, teacher=True)  # as the paper evaluates

  def loss(params, variables, batch, rng):
    step = variables["step"]
    views, encoder_rng = _multicrop.crop_views(rng, batch["image"], config, images)
    # The head's last layer gets no gradient during the first epoch (freeze_last_layer).
    student = _multicrop.last_layers_frozen(params, step, loss_config.freeze_last_layer_steps)
    student_logits, batch_stats = net.encode(
        lambda m, x, r: m.logits(x, train=True, rng=r), student,
        variables["batch_stats"], views, encoder_rng)  # [V_s, B, K], global views first
    teacher = variables["teacher"]
    # The teacher sees only the global crops (in train mode, as in main_dino.py).
    teacher_logits, teacher_stats = teacher_net.encode(
        lambda m, x, r: m.logits(x, train=True), teacher["params"], teacher["batch_stats"],
        views, groups=(_multicrop.GLOBAL,))
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    temperature = teacher_temperature(config, step)
    center = variables["center"]
    value = dino(student_logits, teacher_logits, center, student_temp=loss_config.student_temp,
                 teacher_temp=temperature)
    targets = jax.nn.softmax((teacher_logits - center) / temperature, axis=-1)
    metrics = {
        **experiment.embedding_metrics(student_logits[0], student_logits[1]),
        "train/teacher_temperature": temperature,
        # Collapse to one dimension drives this to 0, to the uniform to log K.
        "train/teacher_entropy": jnp.mean(-jnp.sum(targets * jnp.log(targets + 1e-12), -1)),
    }
    state = {"batch_stats": batch_stats,
             "teacher": {"params": teacher["params"], "batch_stats": teacher_stats},
             "center": dino_center_update(center, teacher_logits,
                                          momentum=loss_config.center_momentum)}
    return value, {"metrics": metrics, "state": state}

  return Method(init=init, apply=apply, loss=loss, param_axes=net.param_axes,
                after_update=experiment.ema_teacher_update(config))


# ------------------------------------------------------------------------------------------
# Attention maps (DINO and iBOT).


def cls_attention(config, encoder_params, images):
  """The last block's [CLS] attention [B, heads, N] of the ViT `config.model` with
  `encoder_params` (``variables["teacher"]["params"]["encoder"]`` of DINO or iBOT) on `images`
  (float [B, H, W, C] in [0, 1] at the global crop size)."""
  spec = _multicrop.images_for(config)
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4 or tuple(images.shape[1:]) != spec.view_shape:
    raise ValueError(f"images must be [B, {', '.join(map(str, spec.view_shape))}] floats in "
                     f"[0, 1] (the global crop size), got shape {images.shape}")
  if config.model.name != "vit":
    raise ValueError(f"attention maps need config.model.name 'vit', got {config.model.name!r}")
  encoder = experiment.Network(lambda rngs: Backbone(config.model, spec.view_shape, rngs=rngs),
                               dtype=config.model.dtype)
  vit = encoder.merge(encoder_params, {}).net
  return vit.cls_attention(spec.normalize(images)), vit.grid_size


def save_attention_maps(config, encoder_params, images, path: str) -> str:
  """A PNG of `cls_attention` per head over the patch grid (one row per image). Returns
  `path`."""
  from sslx.evaluate import plots  # matplotlib loads only when a picture is drawn
  attention, grid_size = cls_attention(config, encoder_params, images)
  return plots.plot_attention_maps(images, attention, grid_size, path,
                                   title=f"{config.experiment}: last block [CLS] attention")


def save_pictures(config, variables, images, directory: str) -> list[str]:
  """The method's pictures of a trained run (`sslx.train.loop` calls it after training with the
  monitor set's first images, uint8 [B, H, W, C]): the teacher's attention maps in
  `<directory>/<experiment>_attention.png`, or none for a convolutional backbone."""
  if config.model.name != "vit":
    return []
  x = _multicrop.images_for(config).resized(jnp.asarray(images, jnp.float32) / 255.0)
  path = str(epath.Path(directory) / f"{config.experiment}_attention.png")
  return [save_attention_maps(config, variables["teacher"]["params"]["encoder"], x, path)]
