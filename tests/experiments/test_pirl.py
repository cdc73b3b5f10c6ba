"""PIRL's state: the memory bank moves only the batch's rows, towards their new image embeddings
and back onto the unit sphere, and NCE's partition function is estimated once, then kept; a
repeated image in a batch is written once, the same way everywhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import pirl
from sslx import experiment
from sslx.train import loop
from tests.experiments.test_methods import fixed_batch
from tests.train import helpers


def test_memory_rows_and_normalizer(fashion_mnist_dir):
  # The paper's NCE (the smoke preset, as the fashion_mnist one, uses the softmax form).
  config = helpers.smoke_config(fashion_mnist_dir, "pirl", **{"loss.objective": "nce"})
  method = loop.get_method(config)
  batch = fixed_batch(config.batch_size)
  batch["index"] = jnp.arange(config.batch_size, dtype=jnp.int32) * 7 + 3  # spread out
  variables = method.init(jax.random.PRNGKey(0), batch)
  params = variables.pop("params")
  step = jax.jit(lambda v, rng: method.loss(params, {**v, "step": jnp.zeros((), jnp.int32)},
                                            batch, rng)[1])
  aux = step(variables, jax.random.PRNGKey(1))
  memory, new = np.asarray(variables["memory"]), np.asarray(aux["state"]["memory"])
  index = np.asarray(batch["index"])
  others = np.setdiff1d(np.arange(len(memory)), index)
  np.testing.assert_array_equal(new[others], memory[others])
  np.testing.assert_allclose(np.linalg.norm(new[index], axis=1), 1.0, rtol=1e-5)
  assert not np.allclose(new[index], memory[index])

  z = float(aux["state"]["normalizer"])
  assert float(variables["normalizer"]) == -1.0 and z > 0
  kept = step({**variables, **aux["state"]}, jax.random.PRNGKey(2))["state"]["normalizer"]
  assert float(kept) == z


def test_bad_settings_are_named(fashion_mnist_dir):
  for overrides, match in (({"loss.memory_momentum": 1.5}, r"loss.memory_momentum must be in"),
                           ({"loss.num_negatives": 10**6}, r"loss.num_negatives=1000000 is more"),
                           ({"model.name": "vit"}, r"model.name must be 'resnet'"),
                           ({"loss.objective": "ce"}, r"loss.objective must be one of")):
    with pytest.raises(ValueError, match=match):
      loop.get_method(helpers.smoke_config(fashion_mnist_dir, "pirl", **overrides))


def test_memory_update_is_the_momentum_average():
  rng = np.random.default_rng(0)
  memory = rng.normal(size=(6, 3))
  memory /= np.linalg.norm(memory, axis=1, keepdims=True)
  z = rng.normal(size=(2, 3))
  new = np.asarray(pirl.update_memory(jnp.asarray(memory, jnp.float32), jnp.array([4, 1]),
                                      jnp.asarray(z, jnp.float32), 0.3))
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  expected = unit(0.3 * memory[[4, 1]] + 0.7 * unit(z))
  np.testing.assert_allclose(new[[4, 1]], expected, rtol=1e-5)
  np.testing.assert_allclose(new[[0, 2, 3, 5]], memory[[0, 2, 3, 5]], rtol=1e-6)


def test_a_repeated_index_writes_its_last_row():
  table = jnp.zeros((5, 2))
  rows = jnp.arange(8.0).reshape(4, 2)
  new = np.asarray(experiment.set_rows(table, jnp.array([3, 1, 3, 0]), rows))
  np.testing.assert_array_equal(new, [[6, 7], [2, 3], [0, 0], [4, 5], [0, 0]])
