"""Tests for sslx.losses.sigreg and sslx.losses.lejepa (LeJEPA, Balestriero and LeCun 2025):
an independent float64 reference written from the paper's formulas (the Epps-Pulley integral
over the whole symmetric range with complex exponentials, where the loss integrates half the
range with cosines and sines), the statistic's known values, and the same value and gradient on
one device and sharded over the 8 fake CPU devices of conftest.py (SIGReg's characteristic
function needs the global batch)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import sslx.losses
from sslx.losses import lejepa, sigreg
from tests.losses.harness import (
    BATCH, REPLICATED, check_against_reference, check_sharded_equivalence)

VIEWS = P(None, "data")  # [views, batch, dim]: the batch is the second dimension


def ref_sigreg(z, directions, t_max=3.0, num_knots=17):
  """Algorithm 1 of the paper: N * trapz over t in [-t_max, t_max] of |ecf(t) - phi(t)|^2 phi(t),
  averaged over the unit directions."""
  z = np.asarray(z, np.float64)
  a = np.asarray(directions, np.float64)
  a = a / np.linalg.norm(a, axis=0)
  t = np.linspace(-t_max, t_max, 2 * num_knots - 1)  # the loss's knots, mirrored
  phi = np.exp(-t**2 / 2)
  statistics = []
  for m in range(a.shape[1]):
    x = z @ a[:, m]
    ecf = np.mean(np.exp(1j * np.outer(x, t)), axis=0)  # at each knot
    statistics.append(len(x) * np.trapezoid(np.abs(ecf - phi) ** 2 * phi, t))
  return np.mean(statistics)


def ref_lejepa(global_z, local_z, directions, lambd=0.05):
  views = [np.asarray(v, np.float64) for v in [*global_z, *local_z]]
  centre = np.mean([np.asarray(v, np.float64) for v in global_z], axis=0)
  prediction = np.mean([np.mean((centre - v) ** 2) for v in views])
  regulariser = np.mean([ref_sigreg(v, directions) for v in views])
  return (1 - lambd) * prediction + lambd * regulariser


def sigreg_args(seed, batch, dim=3, slices=5):
  rng = np.random.default_rng(seed)
  # Scale 0.7 and a shift: not a standard Gaussian, so the statistic and its gradient are large.
  z = (0.7 * rng.normal(size=(batch, dim)) + 0.3).astype(np.float32)
  return z, rng.normal(size=(dim, slices)).astype(np.float32)


def lejepa_args(seed, batch, dim=3):
  z, directions = sigreg_args(seed, batch, dim)
  rng = np.random.default_rng(seed + 1)
  global_z = np.stack([z, z + 0.2 * rng.normal(size=z.shape)]).astype(np.float32)
  local_z = (z + 0.5 * rng.normal(size=(2, *z.shape))).astype(np.float32)
  return global_z, local_z, directions


def lejepa_fn(global_z, local_z, directions, axis_name=None):
  return lejepa(global_z, local_z, directions, lambd=0.3, axis_name=axis_name)[0]


def test_sigreg_and_lejepa_match_the_reference_in_value_and_gradient():
  check_against_reference(sigreg, ref_sigreg, sigreg_args(0, 8), grad_rtol=5e-5)
  check_against_reference(functools.partial(sigreg, t_max=5.0, num_knots=9),
                          functools.partial(ref_sigreg, t_max=5.0, num_knots=9),
                          sigreg_args(1, 6), grad_rtol=5e-5)
  check_against_reference(lejepa_fn, functools.partial(ref_lejepa, lambd=0.3), lejepa_args(2, 8),
                          grad_argnums=(0, 1), grad_rtol=5e-5)


def test_same_value_and_gradient_on_one_and_eight_devices():
  for global_batch in (16, 8):  # local batch 2, and 1
    check_sharded_equivalence(sigreg, sigreg_args(3, global_batch), specs=[BATCH, REPLICATED],
                              rtol=2e-5)
  check_sharded_equivalence(lejepa_fn, lejepa_args(4, 16), specs=[VIEWS, VIEWS, REPLICATED],
                            grad_argnums=(0, 1), rtol=2e-5)


def test_the_statistic_is_small_for_a_gaussian_and_grows_with_the_batch_otherwise():
  directions = jax.random.normal(jax.random.PRNGKey(0), (8, 32))
  stat = jax.jit(sigreg)
  # Null expectation: integral (1 - phi^2) phi dt over [-3, 3] = 1.05, whatever the batch.
  null = [float(stat(jax.random.normal(jax.random.PRNGKey(s), (2048, 8)), directions))
          for s in range(4)]
  assert 0.7 < np.mean(null) < 1.4, null
  # A collapsed batch: ecf = 1, so the statistic is N * integral (1 - phi)^2 phi dt.
  t = np.linspace(-3, 3, 33)
  phi = np.exp(-t**2 / 2)
  np.testing.assert_allclose(stat(jnp.zeros((2048, 8)), directions),
                             2048 * np.trapezoid((1 - phi) ** 2 * phi, t), rtol=1e-5)
  # A Gaussian of the wrong scale is found too, more surely with more examples.
  wide = [float(stat(2.0 * jax.random.normal(jax.random.PRNGKey(9), (n, 8)), directions))
          for n in (256, 2048)]
  assert 10 < wide[0] < wide[1] / 4, wide


def test_direction_norms_do_not_matter_and_lejepa_terms():
  sigreg = jax.jit(sslx.losses.sigreg)
  lejepa = jax.jit(sslx.losses.lejepa, static_argnames="lambd")
  z, directions = sigreg_args(5, 16, dim=4, slices=6)
  scaled = directions * np.array([0.1, 1, 3, 7, 0.5, 2], np.float32)
  np.testing.assert_allclose(sigreg(z, scaled), sigreg(z, directions), rtol=1e-5)
  # Identical views: no prediction error, and L = lambd * SIGReg of the one view.
  loss, terms = lejepa(np.stack([z, z]), np.stack([z]), directions, lambd=0.25)
  assert float(terms["prediction"]) == 0.0
  np.testing.assert_allclose(terms["sigreg"], sigreg(z, directions), rtol=1e-6)
  np.testing.assert_allclose(loss, 0.25 * terms["sigreg"], rtol=1e-6)
  # No local views: the prediction term compares the global views with their mean only.
  global_z, _, _ = lejepa_args(6, 16, dim=4)
  _, terms = lejepa(global_z, None, directions)
  np.testing.assert_allclose(terms["prediction"],
                             np.mean((global_z[0] - global_z[1]) ** 2) / 4, rtol=1e-5)


def test_bfloat16_inputs_compute_in_float32():
  z, directions = sigreg_args(7, 16)
  value = jax.jit(sigreg)(jnp.asarray(z, jnp.bfloat16), directions)
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, sigreg(jnp.asarray(z, jnp.bfloat16).astype(jnp.float32),
                                           directions), rtol=1e-6)


def test_bad_arguments_are_named():
  z, directions = sigreg_args(8, 8)
  with pytest.raises(ValueError, match=r"directions must have shape \[dim, num_slices\] with "
                                       r"dim = 3"):
    sigreg(z, directions.T)
  with pytest.raises(ValueError, match=r"z must have rank 2 with shape \[batch, dim\]"):
    sigreg(z[0], directions)
  with pytest.raises(ValueError, match="t_max must be"):
    sigreg(z, directions, t_max=0.0)
  with pytest.raises(ValueError, match="num_knots must be an integer >= 2, but got 1"):
    sigreg(z, directions, num_knots=1)
  with pytest.raises(ValueError, match="lambd must be in"):
    lejepa(np.stack([z]), None, directions, lambd=1.5)
  with pytest.raises(ValueError, match=r"local_z must have shape \[V_l, 8, 3\]"):
    lejepa(np.stack([z]), np.stack([z[:4]]), directions)
