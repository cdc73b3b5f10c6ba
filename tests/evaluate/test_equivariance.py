"""The equivariance evaluation: the relative transformation parameters it regresses, R^2, and
that its regressors find a transformation encoded in an embedding and nothing in one that does
not encode it."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx.evaluate import equivariance


def synthetic_parameters(n, seed):
  """Angles (degrees) and brightness / contrast factors of two views of n images."""
  rng = np.random.default_rng(seed)
  angles = rng.uniform(-180, 180, size=(2, n))
  factors = rng.uniform(0.6, 1.4, size=(2, n, 2))
  return angles, factors


def relative(angles, factors):
  delta = np.deg2rad(angles[1] - angles[0])
  return np.concatenate([np.sin(delta)[:, None], np.cos(delta)[:, None],
                         np.log(factors[1]) - np.log(factors[0])], axis=1)


def encoding_embedding(angles, factors, noise_dims, seed):
  """Per view: [sin, cos, log brightness, log contrast] of its own transformation, plus noise."""
  rng = np.random.default_rng(seed)
  views = []
  for i in range(2):
    theta = np.deg2rad(angles[i])
    views.append(np.concatenate([np.sin(theta)[:, None], np.cos(theta)[:, None],
                                 np.log(factors[i]),
                                 rng.normal(size=(len(theta), noise_dims))], axis=1))
  return np.concatenate(views, axis=1)


def test_relative_parameters_from_the_ops_params():
  pipeline = equivariance.transformation_pipeline(degrees=180.0, brightness=0.4, contrast=0.4)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (6, 28, 28, 1)), jnp.uint8)
  (_, p1), (_, p2) = (equivariance.view_with_parameters(jax.random.PRNGKey(i), images, pipeline)
                      for i in range(2))
  got = np.asarray(equivariance.relative_parameters(p1, p2))
  angle = np.asarray(p2["rotate"]["angle"]) - np.asarray(p1["rotate"]["angle"])
  f1, f2 = np.asarray(p1["color_jitter"]["factors"]), np.asarray(p2["color_jitter"]["factors"])
  np.testing.assert_allclose(got[:, 0], np.sin(np.deg2rad(angle)), atol=1e-5)
  np.testing.assert_allclose(got[:, 1], np.cos(np.deg2rad(angle)), atol=1e-5)
  np.testing.assert_allclose(got[:, 2:], np.log(f2[:, :2] / f1[:, :2]), atol=1e-5)
  assert np.ptp(angle) > 10 and np.ptp(got[:, 2]) > 0.05  # the draws really vary
  # The identity transformation: angle 0 (cos 1), factor ratios 1.
  np.testing.assert_allclose(np.asarray(equivariance.relative_parameters(p1, p1)),
                             np.tile([0.0, 1.0, 0.0, 0.0], (6, 1)), atol=1e-6)


def test_bad_inputs_name_what_was_expected():
  with pytest.raises(ValueError, match="params1.*'rotate' and 'color_jitter'.*got \\['flip'\\]"):
    equivariance.relative_parameters({"flip": {}}, {"flip": {}})
  with pytest.raises(ValueError, match="color_jitter op"):
    equivariance.transformation_pipeline("flip(p=0.5)", degrees=10)
  with pytest.raises(ValueError, match="already rotates"):
    equivariance.transformation_pipeline("color_jitter|rotate(10)", degrees=10)
  with pytest.raises(ValueError, match=r"same shape, got \(3, 2\) and \(3, 1\)"):
    equivariance.r2_score(np.zeros((3, 2)), np.zeros((3, 1)))
  with pytest.raises(ValueError, match="regressors: unknown \\['tree'\\]"):
    equivariance.pair_regression_r2(np.zeros((4, 2)), np.zeros((4, 4)), np.zeros((4, 2)),
                                    np.zeros((4, 4)), regressors=("tree",))


def test_r2_score_is_one_for_a_perfect_fit_and_zero_for_the_mean():
  target = np.random.default_rng(1).normal(size=(50, 3))
  assert equivariance.r2_score(target, target) == pytest.approx(1.0)
  assert equivariance.r2_score(np.broadcast_to(target.mean(0), target.shape),
                               target) == pytest.approx(0.0, abs=1e-12)
  # Per column, then averaged: column 0 perfect, column 1 predicted by its mean.
  mixed = np.stack([target[:, 0], np.full(50, target[:, 1].mean())], axis=1)
  assert equivariance.r2_score(mixed, target[:, :2]) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def synthetic_results():
  train_angles, train_factors = synthetic_parameters(3000, 0)
  test_angles, test_factors = synthetic_parameters(500, 1)
  results = {}
  for name, encode in (("encoding", True), ("noise", False)):
    pairs = []
    for angles, factors, seed in ((train_angles, train_factors, 2),
                                  (test_angles, test_factors, 3)):
      z = encoding_embedding(angles, factors, noise_dims=4, seed=seed)
      pairs.append(z if encode else np.random.default_rng(seed).normal(size=z.shape))
    results[name] = equivariance.pair_regression_r2(
        pairs[0], relative(train_angles, train_factors), pairs[1],
        relative(test_angles, test_factors), steps=2000)
  return results


def test_regressors_read_a_transformation_the_embedding_encodes(synthetic_results):
  r = synthetic_results["encoding"]
  # The colour log ratios are linear in the pair: ridge is exact up to its small penalty.
  assert r["linear"]["color"] > 0.99
  assert r["mlp"]["color"] > 0.9
  # Over the full circle, sin / cos of an angle difference are products of the two views'
  # sin / cos: the MLP finds them, a linear map on [z1, z2] cannot.
  assert r["mlp"]["rotation"] > 0.9
  assert r["linear"]["rotation"] < 0.1


def test_regressors_find_nothing_in_an_embedding_that_does_not_encode_it(synthetic_results):
  for regressor in ("linear", "mlp"):
    for group in ("rotation", "color"):
      assert synthetic_results["noise"][regressor][group] < 0.05


def test_evaluate_equivariance_runs_on_images_and_a_constant_embedding_scores_zero():
  rng = np.random.default_rng(4)
  images = rng.integers(0, 255, (40, 28, 28, 1)).astype(np.uint8)

  def constant(x):
    return jnp.zeros((x.shape[0], 3))

  def mean_pixel(x):  # brightness moves the mean pixel: the colour ratio is partly readable
    return jnp.mean(x, axis=(1, 2, 3))[:, None]

  results = equivariance.evaluate_equivariance({"constant": constant, "mean": mean_pixel},
                                               images[:30], images[30:], degrees=30.0,
                                               regressors=("linear",))
  assert set(results) == {"constant", "mean"}
  # A constant predicts the training mean: R^2 <= 0 on the test pairs (below 0 by the gap
  # between the train and test means).
  assert results["constant"]["linear"]["rotation"] <= 1e-9
  assert results["constant"]["linear"]["color"] <= 1e-9
  assert math.isfinite(results["mean"]["linear"]["color"])
