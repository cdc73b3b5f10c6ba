"""iSogCLR's per-example state: one step updates exactly the batch's rows of the temperature,
moving-average and momentum tables as the authors' code does (an independent float64 NumPy
reference of LibAUC's GCLoss_v1 with enable_isogclr), and the long-tailed training subset."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import isogclr
from sslx.data import sources
from sslx.train import loop
from tests.experiments.test_methods import fixed_batch
from tests.train import helpers

LOSS = ml_collections.ConfigDict({"tau_init": 0.1, "tau_min": 0.05, "tau_max": 0.7, "rho": 0.3,
                                  "gamma": 0.9, "eta": 0.01, "beta": 0.9})


def libauc_step(z1, z2, tau, u, m, c):
  """LibAUC's unimodal iSogCLR bookkeeping for one batch, in float64: each view of image i is
  an anchor with the 2B - 2 other embeddings as negatives, temperature tau_i."""
  a1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
  a2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
  b = len(a1)
  eye = np.eye(b, dtype=bool)
  grads, new_u = [], []
  for anchor, same, other in ((a1, a1, a2), (a2, a2, a1)):
    # negatives: the other view of every other image, and every other image's same view
    s = np.concatenate([anchor @ other.T, anchor @ same.T], axis=1)  # [B, 2B]
    negative = np.concatenate([~eye, ~eye], axis=1)
    e = np.exp(s / tau[:, None]) * negative
    g = e.sum(1) / (2 * b - 2)
    u_a = np.where(u > 0, (1 - c.gamma) * u + c.gamma * g, g)
    p = e / u_a[:, None]
    grads.append(np.log(u_a) + c.rho - (p * s / tau[:, None]).sum(1) / (2 * b - 2))
    new_u.append(u_a)
  grad = (grads[0] + grads[1]) / 2
  m = (1 - c.beta) * m + c.beta * grad
  return np.clip(tau - c.eta * m, c.tau_min, c.tau_max), (new_u[0] + new_u[1]) / 2, m


def test_a_step_updates_the_batch_rows_as_libauc():
  rng = np.random.default_rng(0)
  b, d, n = 6, 5, 11
  z1, z2 = rng.normal(size=(b, d)), rng.normal(size=(b, d))
  index = np.array([7, 2, 9, 0, 4, 5])
  # Some rows seen before (u > 0, a momentum, a temperature of their own), others fresh; the
  # small eta of LibAUC would move tau too little to check, so this one is larger.
  tables = {"tau": rng.uniform(0.08, 0.5, n), "u": np.where(np.arange(n) % 2, 0.0,
                                                            rng.uniform(1.0, 5.0, n)),
            "tau_momentum": rng.normal(0.0, 0.5, n)}
  config = ml_collections.ConfigDict({**LOSS.to_dict(), "eta": 0.05})
  _, new = isogclr.loss_and_tables(
      jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32), jnp.asarray(index),
      {k: jnp.asarray(v, jnp.float32) for k, v in tables.items()}, config)
  tau, u, m = libauc_step(z1, z2, tables["tau"][index], tables["u"][index],
                          tables["tau_momentum"][index], config)
  np.testing.assert_allclose(np.asarray(new["tau"])[index], tau, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new["u"])[index], u, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(new["tau_momentum"])[index], m, rtol=1e-4, atol=1e-6)
  assert not np.allclose(tau, tables["tau"][index])  # the step moved them
  others = np.setdiff1d(np.arange(n), index)
  for key, value in tables.items():
    np.testing.assert_array_equal(np.asarray(new[key])[others],
                                  value[others].astype(np.float32))


def test_the_method_updates_the_rows_of_the_batch_images(fashion_mnist_dir):
  config = helpers.smoke_config(fashion_mnist_dir, "isogclr")
  method = loop.get_method(config)
  batch = fixed_batch(config.batch_size)
  batch["index"] = jnp.arange(config.batch_size, dtype=jnp.int32) * 997 + 5  # spread out
  variables = method.init(jax.random.PRNGKey(0), batch)
  assert variables["isogclr"]["tau"].shape == (60000,)  # one row per training image
  params = variables.pop("params")
  aux = jax.jit(lambda v: method.loss(params, {**v, "step": jnp.zeros((), jnp.int32)}, batch,
                                      jax.random.PRNGKey(1))[1])(variables)
  index = np.asarray(batch["index"])
  others = np.setdiff1d(np.arange(60000), index)
  for key in ("tau", "u", "tau_momentum"):
    old, new = np.asarray(variables["isogclr"][key]), np.asarray(aux["state"]["isogclr"][key])
    np.testing.assert_array_equal(new[others], old[others])
    assert np.all(new[index] != old[index]), key


def test_bad_loss_settings_are_named():
  for field, value, match in (("tau_init", 0.9, r"loss\.tau_init must lie in \[loss\.tau_min"),
                              ("tau_min", 0.0, r"loss\.tau_min must be > 0"),
                              ("gamma", 0.0, r"loss\.gamma must be in \(0, 1\]"),
                              ("beta", 1.5, r"loss\.beta must be in \(0, 1\]"),
                              ("rho", -0.1, r"loss\.rho must be >= 0")):
    config = ml_collections.ConfigDict({**LOSS.to_dict(), field: value})
    with pytest.raises(ValueError, match=match):
      isogclr.check_config(config)


def test_long_tailed_subset_follows_the_exponential_profile():
  labels = np.repeat(np.arange(10), 100)[np.random.default_rng(0).permutation(1000)]
  subset = sources.long_tailed_subset(labels, 10.0)
  counts = np.bincount(labels[subset], minlength=10)
  # n_c = floor(100 * 10^(-c/9)): 100, 77, 59, ..., 10
  np.testing.assert_array_equal(counts, np.floor(100 * 10.0 ** (-np.arange(10) / 9)))
  assert np.all(np.diff(subset) > 0)
  for c in range(10):  # each class keeps its first examples, in split order
    np.testing.assert_array_equal(subset[labels[subset] == c],
                                  np.flatnonzero(labels == c)[:counts[c]])
  np.testing.assert_array_equal(sources.long_tailed_subset(labels, 1), np.arange(1000))
  with pytest.raises(ValueError, match=r"imbalance_ratio: expected a number >= 1"):
    sources.long_tailed_subset(labels, 0.5)
  with pytest.raises(ValueError, match=r"keeps no example of classes \[7, 8, 9\]"):
    sources.long_tailed_subset(labels, 1000.0)
  with pytest.raises(ValueError, match=r"3 examples have no label"):
    sources.long_tailed_subset(np.concatenate([labels, [-1, -1, -1]]), 10.0)
