"""Online linear probe: no gradient reaches the encoder, and the probe itself learns."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from sslx.evaluate import online_probe
from sslx.method import Method
from sslx.sharding import make_mesh_from
from sslx.train.state import TrainState
from sslx.train.step import make_train_step


def toy_config():
  config = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict({"name": "fashion_mnist"})  # 10 classes
  # The identity view: a full-image crop, no flip, no colour changes.
  config.augment = ml_collections.ConfigDict({
      "crop_size": None, "crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "flip_prob": 0.0,
      "jitter_prob": 0.0, "grayscale_prob": 0.0, "blur_prob": 0.0, "solarize_prob": 0.0})
  return config


def toy_method(dim=16):
  """A random linear encoder of 6x6 images with a non-trainable running mean of its features
  and an EMA copy of its weights (after_update), like the real methods' state; its loss uses
  the rng and ignores the labels."""

  def init(rng, batch):
    del batch
    w = jax.random.normal(rng, (36, dim)) / 6.0
    return {"params": {"w": w}, "running_mean": jnp.zeros(dim), "teacher": jnp.array(w)}

  def apply(variables, images):
    return images.reshape(images.shape[0], -1) @ variables["params"]["w"]

  def loss(params, variables, batch, rng):
    images = batch["image"].astype(jnp.float32) / 255.0
    noisy = images + 0.1 * jax.random.normal(rng, images.shape)
    z = apply({"params": params}, noisy)
    value = jnp.mean((z - apply({"params": {"w": variables["teacher"]}}, images)) ** 2 + z ** 2)
    running_mean = 0.9 * variables["running_mean"] + 0.1 * jnp.mean(z, axis=0)
    return value, {"metrics": {"train/z_mean": jnp.mean(z)},
                   "state": {"running_mean": running_mean, "teacher": variables["teacher"]}}

  def after_update(params, state, step):
    del step
    return {**state, "teacher": 0.5 * state["teacher"] + 0.5 * params["w"]}, {"train/ema": 0.5}

  return Method(init=init, apply=apply, loss=loss, after_update=after_update)


def separable_batch(rng, batch_size=64):
  """Class c lights pixel c of a 6x6 image (plus noise): linearly separable."""
  labels = rng.integers(0, 10, batch_size)
  images = rng.integers(0, 40, (batch_size, 36))
  images[np.arange(batch_size), labels] = 255
  return {"image": jnp.asarray(images.reshape(batch_size, 6, 6, 1), jnp.uint8),
          "label": jnp.asarray(labels, jnp.int32)}


def test_probe_learns_in_the_train_step_on_eight_devices():
  probed = online_probe.with_online_probe(toy_method(), toy_config(), learning_rate=0.05)
  rng = np.random.default_rng(0)
  variables = probed.init(jax.random.PRNGKey(0), separable_batch(rng))
  params = variables.pop("params")
  tx = optax.sgd(1e-3)
  mesh = make_mesh_from(("data",), (8,))
  replicated = NamedSharding(mesh, P())
  state = jax.device_put(TrainState(
      step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
      opt_state=tx.init(params), rng=jax.random.PRNGKey(1),
      nonfinite_steps=jnp.zeros((), jnp.int32)), replicated)
  train_step = make_train_step(probed, tx, lambda step: 1e-3, state_sharding=replicated,
                               batch_sharding=NamedSharding(mesh, P("data")),
                               metric_sharding=replicated)
  top1 = []
  for _ in range(60):
    state, metrics = train_step(state, separable_batch(rng))
    top1.append(float(metrics["train/online_probe_top1"]))
  assert top1[0] < 0.3  # zero-initialised probe: one class for everything
  assert np.mean(top1[-10:]) > 0.9, top1
  assert int(state.model_state["online_probe"]["opt_state"][0].count) == 60


def test_encoder_gradient_and_state_are_unchanged_by_the_probe():
  method = toy_method()
  probed = online_probe.with_online_probe(method, toy_config())
  batch = separable_batch(np.random.default_rng(1), batch_size=16)
  variables = probed.init(jax.random.PRNGKey(0), batch)
  inner = method.init(jax.random.PRNGKey(0), batch)
  assert set(variables) == set(inner) | {"online_probe"}
  params = variables.pop("params")
  variables["step"] = inner["step"] = jnp.zeros((), jnp.int32)
  del inner["params"]
  rng = jax.random.PRNGKey(1)

  grads, aux = jax.jit(jax.grad(method.loss, has_aux=True))(params, inner, batch, rng)
  probed_grads, probed_aux = jax.jit(jax.grad(probed.loss, has_aux=True))(params, variables,
                                                                          batch, rng)
  jax.tree.map(np.testing.assert_array_equal, probed_grads, grads)
  assert float(jnp.abs(grads["w"]).max()) > 0
  np.testing.assert_array_equal(probed_aux["state"]["running_mean"], aux["state"]["running_mean"])
  # The probe took one step (zero init -> non-zero); its metrics join the method's.
  probe_state = probed_aux["state"]["online_probe"]
  assert float(jnp.abs(probe_state["params"]["w"]).max()) > 0
  metrics = probed_aux["metrics"]
  assert set(metrics) == set(aux["metrics"]) | {"train/online_probe_loss",
                                                 "train/online_probe_top1"}
  np.testing.assert_allclose(metrics["train/online_probe_loss"], np.log(10.0), rtol=1e-6)
  # after_update runs the method's on the method's state and carries the probe through.
  new_params = {"w": params["w"] + 1.0}
  state, update_metrics = probed.after_update(new_params, probed_aux["state"], 0)
  expected, expected_metrics = method.after_update(new_params, aux["state"], 0)
  assert update_metrics == expected_metrics
  np.testing.assert_array_equal(state["teacher"], expected["teacher"])
  assert state["online_probe"] is probe_state
  # Evaluation features are the method's own.
  images = batch["image"].astype(jnp.float32) / 255.0
  np.testing.assert_array_equal(probed.apply({**variables, "params": params}, images),
                                method.apply({**inner, "params": params}, images))
