"""GroCo's and HaLP's experiment modules (the methods around sslx.losses.groco / halp): HaLP's
prototypes are a spherical k-means of the newest queued keys, refreshed on the first HaLP step
and every `halp.refresh_every` steps after, and its term is off before `halp.start_fraction`;
bad settings are named. (Learning on a fixed batch is checked with every other method in
test_methods.py; the losses against their float64 references in tests/losses/test_ranking.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import groco as groco_experiment
from experiments import halp as halp_experiment
from tests.experiments.test_methods import fixed_batch
from tests.train import helpers


def test_spherical_kmeans_finds_separated_clusters():
  centres = np.eye(4, 8, dtype=np.float32)  # four orthogonal directions
  noise = 0.05 * np.random.default_rng(0).normal(size=(4, 30, 8)).astype(np.float32)
  points = (centres[:, None] + noise).reshape(120, 8)
  # Several starts: a start with two points of one cluster must still end at the four centres.
  for seed in range(3):
    found = jax.jit(halp_experiment.spherical_kmeans, static_argnums=(2, 3))(
        points, jax.random.PRNGKey(seed), 4, 10)
    np.testing.assert_allclose(np.linalg.norm(found, axis=1), 1.0, rtol=1e-5)
    assert sorted(np.argmax(found @ centres.T, axis=1).tolist()) == [0, 1, 2, 3]


def test_halp_prototypes_refresh_from_the_queue_and_the_term_starts_late():
  config = helpers.smoke_config("", "halp", **{"total_steps": 10, "halp.start_fraction": 0.5,
                                               "halp.refresh_every": 3})
  method = halp_experiment.get_method(config)
  batch = fixed_batch(32)
  variables = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  loss = jax.jit(method.loss)

  def run(step, variables):
    variables = {**variables, "step": jnp.asarray(step, jnp.int32)}
    _, aux = loss(variables["params"], variables, batch, jax.random.PRNGKey(step))
    return aux["metrics"], aux["state"]

  metrics, state = run(4, variables)  # start step 5: plain MoCo v2
  assert float(metrics["train/halp_active"]) == 0.0
  np.testing.assert_array_equal(state["prototypes"], variables["prototypes"])
  metrics, state = run(5, variables)  # the first HaLP step draws the prototypes
  assert float(metrics["train/halp_active"]) == 1.0
  expected = halp_experiment.spherical_kmeans(
      variables["queue"][0][:config.halp.prototype_examples],
      halp_experiment.prototype_keys(jax.random.PRNGKey(5))[0], config.halp.num_prototypes,
      config.halp.kmeans_iterations)
  np.testing.assert_allclose(state["prototypes"], expected, atol=1e-6)
  _, kept = run(7, {**variables, "prototypes": state["prototypes"]})  # not a refresh step
  np.testing.assert_array_equal(kept["prototypes"], state["prototypes"])
  _, refreshed = run(8, {**variables, "prototypes": state["prototypes"]})  # 5 + 3
  assert not np.allclose(refreshed["prototypes"], state["prototypes"])


@pytest.mark.parametrize("method, field, value, message", [
    ("groco", "loss.num_negatives", 32, r"loss.num_negatives \(32\) must be below batch_size"),
    ("groco", "loss.relaxation", "tanh", "loss.relaxation must be one of"),
    ("groco", "loss.steepness", 0.0, "loss.steepness must be > 0"),
    ("halp", "halp.prototype_examples", 65, (r"halp.prototype_examples must be in "
                                             r"\[halp.num_prototypes, queue_size\] = \[6, 64\]")),
    ("halp", "halp.start_fraction", 1.5, r"halp.start_fraction must be in \[0, 1\]"),
    ("halp", "halp.num_prototypes", 1, (r"halp.num_prototypes \(1\) must exceed "
                                        r"halp.skip_closest \(1\)")),
])
def test_bad_settings_are_named(method, field, value, message):
  module = {"groco": groco_experiment, "halp": halp_experiment}[method]
  with pytest.raises(ValueError, match=message):
    module.get_method(helpers.smoke_config("", method, **{field: value}))
