"""T-JEPA's experiment module: the feature masks (context and targets disjoint), the target
encoder outside the gradient, the [REG] tokens (in every encoder input, never a target), the loss
rebuilt independently in NumPy, the representation it evaluates and its config errors. (Learning
on a fixed batch is checked with every other method in test_methods.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tjepa as tjepa_config
from experiments import tjepa
from sslx.data import tabular
from tests.train import helpers

BATCH = 8
LOSS_RNG = jax.random.PRNGKey(11)


def smoke_config(arg="smoke", **overrides):
  config = tjepa_config.get_config(arg)
  with config.unlocked():
    for key, value in overrides.items():  # "tjepa.pooling" -> config.tjepa.pooling
      section, field = key.split(".")
      config[section][field] = value
  return config


@pytest.fixture(scope="module")
def setup():
  config = smoke_config(**{"model.num_registers": 2})
  method = tjepa.get_method(config)
  features = tabular.load_split(config.data.name).train_features[:BATCH]
  batch = {"features": jnp.asarray(features), "label": jnp.zeros((BATCH,), jnp.int32)}
  variables = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  # A target encoder that is not the context encoder, so using the wrong one shows.
  variables = helpers.with_teacher_moved(variables)
  num_features, net = tjepa._network(config)
  return config, method, batch, variables, net, num_features


def test_context_and_target_features_are_disjoint_subsets_of_the_columns():
  masks = jax.jit(lambda k: tjepa.feature_masks(k, 64, 30, 8, 12, 4))(jax.random.PRNGKey(3))
  context, targets = np.asarray(masks.context_indices), np.asarray(masks.target_indices)
  assert context.shape == (64, 8) and targets.shape == (64, 4, 12)
  for row in range(64):
    assert len(set(context[row])) == 8
    for m in range(4):
      assert len(set(targets[row, m])) == 12
      assert not set(targets[row, m]) & set(context[row])
  assert context.min() >= 0 and max(context.max(), targets.max()) < 30
  # Rows and target sets draw different subsets, and every column gets used as a target.
  assert len({tuple(sorted(r)) for r in context}) > 60
  assert not np.array_equal(np.sort(targets[:, 0], -1), np.sort(targets[:, 1], -1))
  assert set(targets.ravel()) == set(range(30))


def test_mask_sizes_follow_the_shares_and_must_leave_room_for_the_targets():
  config = smoke_config(**{"tjepa.context_share": 0.25, "tjepa.target_share": 0.39})
  assert tjepa.mask_sizes(config, 30) == (8, 12)
  with pytest.raises(ValueError, match=r"context_share \+ target_share .* got 0.6 and 0.5"):
    tjepa.get_method(smoke_config(**{"tjepa.context_share": 0.6, "tjepa.target_share": 0.5}))
  with pytest.raises(ValueError, match="num_context \\+ num_target must be <= num_features=5"):
    tjepa.feature_masks(jax.random.PRNGKey(0), 2, 5, 3, 3, 1)


@pytest.fixture(scope="module")
def loss_and_grads(setup):
  """The method's loss, aux and gradients wrt the parameters and the target encoder (one
  compile)."""
  _, method, batch, variables, _, _ = setup

  def value(params, teacher):
    return method.loss(params, {**variables, "teacher": teacher}, batch, LOSS_RNG)

  return jax.jit(jax.value_and_grad(value, argnums=(0, 1), has_aux=True))(
      variables["params"], variables["teacher"])


def test_the_target_encoder_gets_no_gradient_and_the_registers_do(setup, loss_and_grads):
  _, _, _, variables, _, _ = setup
  assert set(variables) == {"params", "teacher"}
  assert set(variables["params"]) == {"encoder", "predictor"}
  assert (jax.tree.structure(variables["teacher"]["params"])
          == jax.tree.structure(variables["params"]["encoder"]))
  (_, _), (param_grads, teacher_grads) = loss_and_grads
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(teacher_grads))
  for part in ("encoder", "predictor"):
    assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(param_grads[part]))
  # The [REG] tokens reach the loss only through the context encoder and the predictor.
  assert np.abs(np.asarray(param_grads["encoder"]["registers"])).min() > 0


def test_registers_lead_every_encoder_output_and_the_tokens_are_value_times_vector_plus_embedding(
    setup):
  config, _, batch, variables, net, num_features = setup
  model = net.merge(variables["params"], {})
  x = np.asarray(batch["features"], np.float64)
  enc = variables["params"]["encoder"]
  expected = (x[..., None] * np.asarray(enc["value_embed"], np.float64)
              + np.asarray(enc["feature_embed"], np.float64))
  np.testing.assert_allclose(model.encoder.tokens(batch["features"]), expected, rtol=1e-5,
                             atol=1e-6)
  assert enc["registers"].shape == (2, config.model.width)
  assert model.encoder(batch["features"]).shape == (BATCH, 2 + num_features, config.model.width)
  idx = jnp.asarray(np.tile(np.arange(5), (BATCH, 1)), jnp.int32)
  assert model.encoder(batch["features"], idx).shape == (BATCH, 2 + 5, config.model.width)
  with pytest.raises(ValueError, match=r"features must be \[batch, 30\], got shape \(8, 29\)"):
    model.encoder(batch["features"][:, :29])


def test_the_loss_is_the_mse_of_predictions_to_target_tokens_rebuilt_in_numpy(
    setup, loss_and_grads):
  config, _, batch, variables, net, num_features = setup
  (value, aux), _ = loss_and_grads
  registers = config.model.num_registers
  num_context, num_target = tjepa.mask_sizes(config, num_features)
  masks = tjepa.feature_masks(LOSS_RNG, BATCH, num_features, num_context, num_target,
                              config.tjepa.num_targets)
  ctx_index = np.asarray(masks.context_indices)
  tgt_index = np.asarray(masks.target_indices)  # [B, M, Kt]

  @jax.jit
  def rebuild(variables):
    student = net.merge(variables["params"], {})
    teacher = net.merge({**variables["params"], "encoder": variables["teacher"]["params"]}, {})
    tokens = teacher.encoder(batch["features"])  # [B, R + F, D], every feature
    context = student.encoder(batch["features"], ctx_index)
    # One predictor call per target set, each from the context alone.
    pred = jnp.stack([student.predictor(context, ctx_index, tgt_index[:, m])
                      for m in range(tgt_index.shape[1])], axis=1)
    return tokens, pred

  tokens, pred = (np.asarray(a, np.float64) for a in rebuild(variables))
  targets = np.zeros_like(pred)
  for b in range(BATCH):
    for m in range(tgt_index.shape[1]):
      for k, feature in enumerate(tgt_index[b, m]):
        targets[b, m, k] = tokens[b, registers + feature]  # the registers are never targets
  expected = np.mean((pred - targets) ** 2)
  np.testing.assert_allclose(float(value), expected, rtol=1e-5)
  # Reading the targets without skipping the registers would give another value.
  shifted = np.stack([tokens[b][tgt_index[b]] for b in range(BATCH)])
  assert abs(np.mean((pred - shifted) ** 2) - expected) > 1e-3 * expected
  assert np.isfinite(float(aux["metrics"]["train/embedding_std"]))


def test_the_representation_is_the_target_encoder_flattened_or_pooled(setup):
  config, method, batch, variables, net, num_features = setup
  width, registers = config.model.width, config.model.num_registers
  features = method.apply(variables, batch["features"])
  assert features.shape == (BATCH, (registers + num_features) * width)
  teacher = net.merge({**variables["params"], "encoder": variables["teacher"]["params"]}, {})
  np.testing.assert_allclose(
      features, np.reshape(teacher.encoder(batch["features"]), (BATCH, -1)), rtol=1e-5,
      atol=1e-6)
  pooled = tjepa.get_method(smoke_config(**{"model.num_registers": 2, "tjepa.pooling": "mean",
                                            "tjepa.eval_encoder": "context"}))
  out = pooled.apply(variables, batch["features"])
  student = net.merge(variables["params"], {})
  np.testing.assert_allclose(out, np.mean(student.encoder(batch["features"]), axis=1),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    ({"data.name": "adult"}, "'adult' is not bundled with scikit-learn"),
    ({"tjepa.context_share": 1.0}, r"config.tjepa.context_share must be in \(0, 1\), got 1.0"),
    ({"tjepa.num_targets": 0}, "config.tjepa.num_targets must be > 0, got 0"),
    ({"model.num_registers": -1}, "config.model.num_registers must be >= 0, got -1"),
    ({"tjepa.pooling": "cls"}, r"config.tjepa.pooling must be one of \('flatten', 'mean'\), "
                               "got 'cls'"),
    ({"tjepa.eval_encoder": "ema"}, "config.tjepa.eval_encoder must be one of"),
    ({"model.width": 18}, "config.model.width must be a positive multiple of num_heads and of 4, "
                          "got width=18, num_heads=2"),
])
def test_bad_config_is_refused_naming_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    tjepa.get_method(smoke_config(**overrides))


def test_configs_name_their_table_and_the_published_preset_refuses_its_absent_data():
  assert tjepa_config.get_config().data.name == "breast_cancer"
  assert tjepa_config.get_config("wine,smoke").data.name == "wine"
  config = tjepa_config.get_config("jannis")
  assert (config.batch_size, config.model.depth, config.model.width) == (512, 16, 64)
  with pytest.raises(ValueError, match="'jannis' is not bundled with scikit-learn"):
    tjepa.get_method(config)
  with pytest.raises(ValueError, match=r"unknown \['imagenet'\]"):
    tjepa_config.get_config("imagenet")
