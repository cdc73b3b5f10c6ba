"""SIE's experiment module: the loss against a float64 NumPy rebuild of the authors' equations,
the method's loss equal to that loss on rebuilt inputs (views, transformation parameters), the
hypernetwork predictor, the split representation and clear config errors. (Learning on a fixed
batch is checked with every other method in test_methods.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sie as sie_config
from experiments import sie
from sslx.evaluate import equivariance
from tests.experiments.test_methods import fixed_batch
from tests.train import helpers

WEIGHTS = {"sim_weight": 10.0, "var_weight": 10.0, "cov_weight": 1.0, "equi_factor": 0.45}


def numpy_sie_loss(x_inv, y_inv, x_eq, y_eq, pred, w):
  """facebookresearch/SIE src/models.py class SIE, in float64 NumPy."""
  x_inv, y_inv, x_eq, y_eq, pred = (np.asarray(a, np.float64)
                                    for a in (x_inv, y_inv, x_eq, y_eq, pred))
  n = len(x_inv)
  x, y = np.concatenate([x_inv, x_eq], 1), np.concatenate([y_inv, y_eq], 1)

  def hinge(z):
    std = np.sqrt(np.var(z, axis=0, ddof=1) + 1e-4)
    return np.mean(np.maximum(0.0, 1.0 - std))

  def off_diagonal_cov(z):
    zc = z - z.mean(0)
    cov = zc.T @ zc / (n - 1)
    return (np.sum(cov ** 2) - np.sum(np.diag(cov) ** 2)) / z.shape[1]

  return (w["sim_weight"] * np.mean((x_inv - y_inv) ** 2)
          + w["equi_factor"] * w["sim_weight"] * np.mean((pred - y_eq) ** 2)
          + w["var_weight"] * (hinge(x) / 2 + hinge(y) / 2)
          + w["var_weight"] * hinge(pred) / 2
          + w["cov_weight"] * (off_diagonal_cov(x) + off_diagonal_cov(y)))


def random_embeddings(seed, n=16, inv=6, eq=5):
  rng = np.random.default_rng(seed)
  # Scales around 1 so the variance hinges are partly active.
  return [rng.normal(scale=s, size=(n, d)).astype(np.float32)
          for s, d in ((0.8, inv), (1.2, inv), (0.9, eq), (1.1, eq), (0.7, eq))]


def test_sie_loss_matches_the_authors_equations_in_value_and_gradient():
  arrays = random_embeddings(0)
  value, terms = jax.jit(lambda *a: sie.sie_loss(*a, WEIGHTS))(*map(jnp.asarray, arrays))
  np.testing.assert_allclose(float(value), numpy_sie_loss(*arrays, WEIGHTS), rtol=1e-5)
  assert set(terms) == {"inv_loss", "equi_loss", "var_loss", "cov_loss", "pred_var_loss"}
  # Gradient wrt the prediction and view 1's equivariant embedding: central differences of the
  # float64 reference at a few coordinates.
  grads = jax.jit(jax.grad(lambda *a: sie.sie_loss(*a, WEIGHTS)[0], argnums=(2, 4)))(
      *map(jnp.asarray, arrays))
  eps = 1e-5
  for arg, grad in zip((2, 4), grads):
    for index in ((0, 0), (3, 2), (15, 4)):
      plus = [np.asarray(a, np.float64).copy() for a in arrays]
      minus = [a.copy() for a in plus]
      plus[arg][index] += eps
      minus[arg][index] -= eps
      numeric = (numpy_sie_loss(*plus, WEIGHTS) - numpy_sie_loss(*minus, WEIGHTS)) / (2 * eps)
      np.testing.assert_allclose(float(grad[index]), numeric, rtol=1e-3, atol=1e-5)


def smoke_config(**overrides):
  return helpers.smoke_config("", "sie", **overrides)


@pytest.fixture(scope="module")
def setup():
  config = smoke_config()
  method = sie.get_method(config)
  batch = fixed_batch(8)
  variables = dict(jax.jit(method.init)(jax.random.PRNGKey(0), batch))
  variables["step"] = jnp.zeros((), jnp.int32)
  images, net = sie.network(config)
  return config, method, batch, variables, images, net


def test_the_method_loss_is_sie_loss_on_the_rebuilt_views_and_transformation(setup):
  config, method, batch, variables, images, net = setup
  rng = jax.random.PRNGKey(5)

  @jax.jit
  def both(params):
    value, aux = method.loss(params, variables, batch, rng)
    # Rebuilt: the same keys as the method draws its views and encoder keys with.
    view_rng, encoder_rng = jax.random.split(rng)
    pipeline = sie.view_pipeline(config)
    (v1, p1), (v2, p2) = (equivariance.view_with_parameters(jax.random.fold_in(view_rng, i),
                                                            batch["image"], pipeline)
                          for i in range(2))
    model = net.merge(params, variables["batch_stats"])
    _, x_inv, x_eq = model.embed(images.normalize(v1), train=True)
    _, y_inv, y_eq = model.embed(images.normalize(v2), train=True)
    action = equivariance.relative_parameters(p1, p2)
    prediction = model.predictor(x_eq, action)
    expected = sie.sie_loss(x_inv, y_inv, x_eq, y_eq, prediction, config.loss.to_dict())[0]
    return value, aux, expected, action, (p1["rotate"]["angle"], p2["rotate"]["angle"])

  value, aux, expected, action, (a1, a2) = both(variables["params"])
  np.testing.assert_allclose(float(value), float(expected), rtol=1e-5)
  # The predictor is told the rotation the augmentation drew.
  delta = np.deg2rad(np.asarray(a2) - np.asarray(a1))
  np.testing.assert_allclose(np.asarray(action[:, 0]), np.sin(delta), atol=1e-5)
  assert np.ptp(np.asarray(a1)) > 5
  assert {"train/equi_loss", "train/inv_loss", "train/embedding_std"} <= set(aux["metrics"])


def test_the_predictor_is_a_linear_map_whose_weights_the_action_sets(setup):
  _, _, _, variables, _, net = setup
  model = net.merge(variables["params"], variables["batch_stats"])
  rng = np.random.default_rng(1)
  z = jnp.asarray(rng.normal(size=(4, model.predictor.dim)), jnp.float32)
  a, b = (jnp.asarray(rng.normal(size=(4, 4)), jnp.float32) for _ in range(2))
  pred = model.predictor
  np.testing.assert_allclose(pred(2 * z, a), 2 * pred(z, a), rtol=1e-5, atol=1e-6)
  # The linear hypernetwork (no bias): W(a + b) = W(a) + W(b), and each example its own map.
  np.testing.assert_allclose(pred.weights(a + b), pred.weights(a) + pred.weights(b),
                             rtol=1e-4, atol=1e-5)
  w = np.asarray(pred.weights(a))
  np.testing.assert_allclose(np.asarray(pred(z, a)), np.einsum("boi,bi->bo", w, np.asarray(z)),
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(w[0], w[1])


def test_apply_returns_the_whole_representation_and_split_cuts_it(setup):
  config, method, batch, variables, _, _ = setup
  features = method.apply(variables, batch["image"].astype(jnp.float32) / 255)
  inv, eq = sie.split(config, features)
  assert features.shape == (8, 16)
  assert inv.shape == (8, 16 - config.sie.equivariant_dims)
  assert eq.shape == (8, config.sie.equivariant_dims)
  assert sie.part_sizes(512, 256, (2048, 2048, 2048)) == ([1024] * 3, [1024] * 3)


@pytest.mark.parametrize("overrides, message", [
    ({"sie.equivariant_dims": 0}, r"config.sie.equivariant_dims must be an integer in \(0, 16\)"
                                  r".*got 0"),
    ({"sie.equivariant_dims": 16}, r"equivariant_dims must be an integer in \(0, 16\).*got 16"),
    ({"sie.hypernetwork": "conv"}, r"config.sie.hypernetwork must be one of \('linear', 'mlp'\),"
                                   r" got 'conv'"),
    ({"loss.equi_factor": -1.0}, r"config.loss.equi_factor must be >= 0, got -1.0"),
    ({"sie.rotation_degrees": -5.0}, r"config.sie.rotation_degrees must be >= 0, got -5.0"),
])
def test_bad_config_names_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    sie.get_method(smoke_config(**overrides))


def test_presets_3diebench_is_documented_but_refused_and_unknown_datasets_are_errors():
  config = sie_config.get_config("3diebench")
  assert (config.model.resnet.depth, config.sie.equivariant_dims, config.batch_size) == (
      18, 256, 1024)
  assert config.projector.hidden == (2048, 2048) and config.loss.equi_factor == 0.45
  with pytest.raises(ValueError, match="no 3DIEBench loader"):
    sie.get_method(config)
  with pytest.raises(ValueError, match="no cifar10 preset"):
    sie_config.get_config("cifar10")
  with pytest.raises(ValueError, match="cannot be combined"):
    sie_config.get_config("3diebench,imagenet")
  with pytest.raises(ValueError, match="unknown \\['mnist'\\]"):
    sie_config.get_config("mnist")
