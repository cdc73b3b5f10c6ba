"""Fine-tuning: the loss falls, the encoder changes, and 8 devices give the 1-device result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from sklearn.datasets import load_digits

from sslx.data.sources import digits_to_uint8, label_fraction
from sslx.evaluate import finetune as finetune_lib
from sslx.method import Method
from sslx.sharding import make_mesh_from


def tiny_encoder():
  """A one-layer MLP encoder of 8x8 images with a frozen input scale (standing in for the
  BatchNorm statistics of a real method)."""

  def init(rng, batch):
    del batch
    return {"params": {"w": jax.random.normal(rng, (64, 32)) / 8.0, "b": jnp.zeros(32)},
            "input_scale": jnp.full((64,), 2.0)}

  def apply(variables, images):
    x = images.reshape(images.shape[0], -1) * variables["input_scale"]
    return jax.nn.relu(x @ variables["params"]["w"] + variables["params"]["b"])

  return Method(init=init, apply=apply, loss=None)


@pytest.fixture(scope="module")
def digits_sources():
  x, y = load_digits(return_X_y=True)
  images = digits_to_uint8(x).reshape(-1, 8, 8, 1)
  examples = [{"image": image, "label": int(label)} for image, label in zip(images, y)]
  return examples[:1400], examples[1400:]


def run(method, variables, train, test, mesh):
  return finetune_lib.finetune(
      method, variables, train, test, num_classes=10, mesh=mesh, steps=12, batch_size=64,
      eval_batch_size=200, optim_config=finetune_lib.default_optim_config(lr=1.0),
      fraction=0.5, seed=3)


def test_finetune_learns_and_eight_devices_equal_one(digits_sources):
  train, test = digits_sources
  method = tiny_encoder()
  variables = method.init(jax.random.PRNGKey(0), None)
  eight = run(method, variables, train, test, make_mesh_from(("data",), (8,)))
  one = run(method, variables, train, test, Mesh(np.asarray(jax.devices()[:1]), ("data",)))

  labels = np.asarray([e["label"] for e in train])
  assert eight["num_train_examples"] == label_fraction(labels, 0.5, 3).size
  losses = eight["losses"]
  assert len(losses) == 12 and np.log(10.0) - 0.2 < losses[0] < np.log(10.0) + 0.2
  assert np.mean(losses[-3:]) < 0.8 * losses[0], losses
  assert eight["top1"] > 0.5, eight["top1"]  # chance is 0.1
  # Every encoder parameter moved; the frozen entries did not; the caller's arrays are intact.
  for tuned, start in zip(jax.tree.leaves(eight["variables"]["params"]),
                          jax.tree.leaves(variables["params"])):
    assert float(jnp.abs(tuned - start).max()) > 1e-3
  np.testing.assert_array_equal(eight["variables"]["input_scale"], variables["input_scale"])
  assert "50% label fraction" in eight["protocol"]
  # The same global batches on 1 and 8 devices: the same run up to float reduction order.
  np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               eight["variables"]["params"], one["variables"]["params"])
  assert abs(eight["top1"] - one["top1"]) <= 1 / 397


def test_invalid_arguments(digits_sources):
  train, test = digits_sources
  method = tiny_encoder()
  variables = method.init(jax.random.PRNGKey(0), None)
  mesh = make_mesh_from(("data",), (8,))
  with pytest.raises(ValueError, match="steps"):
    finetune_lib.finetune(method, variables, train, test, num_classes=10, mesh=mesh, steps=0,
                          batch_size=64)
  with pytest.raises(ValueError, match="batch"):
    finetune_lib.finetune(method, variables, train, test, num_classes=10, mesh=mesh, steps=2,
                          batch_size=60)
