"""SwAV and DINO behaviour the generic method test cannot see: frozen prototypes, the SwAV queue,
DINO's teacher temperature warm-up, its global-only teacher and its center, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dino as dino_config
from configs import swav as swav_config
from experiments import dino, swav

BATCH = 8


def _batch():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(BATCH, 28, 28, 1), dtype=np.uint8)
  return {"image": jnp.asarray(images), "label": jnp.zeros((BATCH,), jnp.int32)}


def _config(module, local_crops=2, **loss):
  config = module.get_config("smoke")
  with config.unlocked():
    config.loss.update(loss)
    config.multicrop["local"]["number"] = local_crops
  return config


def test_swav_prototypes_frozen_then_trained_and_queue_fills_then_joins():
  # Two crops only: a gradient through one encoder pass compiles in half the time.
  config = _config(swav_config, local_crops=0, freeze_prototypes_steps=3, queue_length=2 * 32,
                   queue_start_step=2)
  method = swav.get_method(config)
  batch = _batch()
  variables = method.init(jax.random.PRNGKey(0), batch)
  grad_fn = jax.jit(jax.value_and_grad(method.loss, has_aux=True))

  def run(step, queue):
    state = {**variables, "queue": queue, "step": jnp.int32(step)}
    return grad_fn(variables["params"], state, batch, jax.random.PRNGKey(1))

  empty = variables["queue"]
  (_, aux), grads = run(2, empty)
  # Frozen before freeze_prototypes_steps: no gradient to the prototypes, some to the encoder.
  assert float(jnp.abs(grads["prototypes"]["prototypes"]).max()) == 0.0
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["encoder"]))
  assert float(aux["metrics"]["train/prototypes_frozen"]) == 1.0
  # From queue_start_step the global views' unit embeddings enter at the front (FIFO) ...
  queue = aux["state"]["queue"]
  np.testing.assert_allclose(np.linalg.norm(queue[:, :BATCH], axis=-1), 1.0, rtol=1e-5)
  assert float(jnp.abs(queue[:, BATCH:]).max()) == 0.0
  # ... but an unfull queue does not join Sinkhorn.
  assert float(aux["metrics"]["train/queue_in_use"]) == 0.0

  (_, aux), grads = run(3, jnp.ones_like(empty) / 4.0)  # a full queue (unit rows in 16 dims)
  assert float(jnp.abs(grads["prototypes"]["prototypes"]).max()) > 0
  assert float(aux["metrics"]["train/queue_in_use"]) == 1.0
  np.testing.assert_allclose(aux["state"]["queue"][:, BATCH:], 0.25)  # the rest shifted back

  (_, aux), _ = run(1, empty)  # before queue_start_step the queue stays as it is
  assert float(jnp.abs(aux["state"]["queue"]).max()) == 0.0


def test_dino_teacher_global_crops_temperature_warmup_and_center(monkeypatch):
  config = _config(dino_config, warmup_teacher_temp=0.04, teacher_temp=0.07,
                   warmup_teacher_temp_steps=4, center_momentum=0.9)
  shapes = {}

  def spy(student_logits, teacher_logits, center, **kwargs):
    shapes.update(student=student_logits.shape, teacher=teacher_logits.shape)
    return real_dino(student_logits, teacher_logits, center, **kwargs)

  real_dino = dino.dino
  monkeypatch.setattr(dino, "dino", spy)
  method = dino.get_method(config)
  batch = _batch()
  variables = method.init(jax.random.PRNGKey(0), batch)
  loss = jax.jit(method.loss)

  def run(step, center):
    state = {**variables, "center": center, "step": jnp.int32(step)}
    return loss(variables["params"], state, batch, jax.random.PRNGKey(1))[1]

  zero = variables["center"]
  temperatures = [float(run(s, zero)["metrics"]["train/teacher_temperature"])
                  for s in (0, 2, 4, 9)]
  np.testing.assert_allclose(temperatures, [0.04, 0.055, 0.07, 0.07], rtol=1e-6)
  # The student sees the 2 global + 2 local crops, the teacher only the 2 global ones.
  local = config.multicrop["local"]["number"]
  k = config.head.out_features
  assert shapes == {"student": (2 + local, BATCH, k), "teacher": (2, BATCH, k)}

  # center <- 0.9 center + 0.1 mean(teacher logits): linear in the old center.
  from_zero = run(0, zero)["state"]["center"]
  offset = jnp.linspace(-1.0, 1.0, k)
  from_offset = run(0, offset)["state"]["center"]
  np.testing.assert_allclose(from_offset - from_zero, 0.9 * offset, atol=1e-5)
  assert float(jnp.abs(from_zero).max()) > 0
  # DINO evaluates the teacher: apply reads variables["teacher"], not the student.
  x = batch["image"].astype(jnp.float32) / 255
  moved = {**variables, "params": jax.tree.map(lambda p: p + 1.0, variables["params"])}
  np.testing.assert_allclose(method.apply(moved, x), method.apply(variables, x))


def test_config_errors_name_the_field():
  config = _config(swav_config, queue_length=33)
  with pytest.raises(ValueError, match="queue_length must be 0 .* multiple of batch_size"):
    swav.get_method(config)
  config = dino_config.get_config("smoke")
  with config.unlocked():
    config.multicrop["global"]["number"] = 1
  with pytest.raises(ValueError, match="multicrop.global.number"):
    dino.get_method(config)
  # A ViT's learned position embedding exists only at the global crop size.
  config = dino_config.get_config("smoke")
  with config.unlocked():
    config.model.name = "vit"
    config.model.vit.pos_embed = "learned"
  with pytest.raises(ValueError, match="pos_embed='sincos'"):
    dino.get_method(config)
  with config.unlocked():  # fixed sine-cosine embeddings exist at every grid: fine
    config.model.vit.pos_embed = "sincos"
  dino.get_method(config)


def test_dino_teacher_runs_without_drop_path_while_the_student_drops():
  """The DINO ViT presets set drop_path_rate 0.1 for the student; the teacher never drops
  (main_dino.py builds it without drop path), so its forward needs no key."""
  config = _config(dino_config, local_crops=0)
  with config.unlocked():
    config.model.name = "vit"
    config.model.vit.drop_path_rate = 0.5
  method = dino.get_method(config)
  batch = _batch()
  variables = method.init(jax.random.PRNGKey(0), batch)
  value = jax.jit(method.loss)(variables["params"], {**variables, "step": jnp.int32(0)}, batch,
                               jax.random.PRNGKey(1))[0]
  assert np.isfinite(float(value))  # before: "rng ... is required" from the teacher's ViT
