"""seq-JEPA's experiment module: the actions between consecutive views, the loss rebuilt as
1 - cosine to the target encoder's representation of the next view, no gradient into the target
encoder, the aggregator's use of the actions and clear config errors. (Learning on a fixed batch
is checked with every other method in test_methods.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import seq_jepa as seq_jepa_config
from experiments import seq_jepa
from tests.experiments.test_methods import fixed_batch
from tests.train import helpers


def smoke_config(**overrides):
  return helpers.smoke_config("", "seq_jepa", **overrides)


@pytest.fixture(scope="module")
def setup():
  config = smoke_config()
  method = seq_jepa.get_method(config)
  batch = fixed_batch(8)
  # A target encoder that is not the online one, so using the wrong one shows.
  variables = helpers.with_teacher_moved(jax.jit(method.init)(jax.random.PRNGKey(0), batch))
  variables["step"] = jnp.zeros((), jnp.int32)
  images, net = seq_jepa.network(config)
  return config, method, batch, variables, images, net


LOSS_RNG = jax.random.PRNGKey(7)


@pytest.fixture(scope="module")
def loss_and_grads(setup):
  _, method, batch, variables, _, _ = setup

  def value(params, teacher):
    return method.loss(params, {**variables, "teacher": teacher}, batch, LOSS_RNG)

  return jax.jit(jax.value_and_grad(value, argnums=(0, 1), has_aux=True))(
      variables["params"], variables["teacher"])


def test_actions_are_the_relative_transformations_between_consecutive_views(setup):
  config, _, batch, _, images, _ = setup
  length = config.seq_jepa.seq_len
  pipeline = seq_jepa.equivariance.transformation_pipeline(
      config.augment, degrees=config.seq_jepa.rotation_degrees)

  @jax.jit
  def views_and_angles(rng):
    views, actions = seq_jepa.sequence_views(rng, batch["image"], config, images)
    # The rotation angles the views were drawn with, redrawn from the same keys.
    angles = [seq_jepa.equivariance.view_with_parameters(
        jax.random.fold_in(rng, i), batch["image"], pipeline)[1]["rotate"]["angle"]
        for i in range(length + 1)]
    return views, actions, angles

  views, actions, angles = views_and_angles(jax.random.PRNGKey(3))
  assert len(views) == length + 1 and actions.shape == (8, length, 4)
  for i in range(length):
    delta = np.deg2rad(np.asarray(angles[i + 1]) - np.asarray(angles[i]))
    np.testing.assert_allclose(np.asarray(actions[:, i, 0]), np.sin(delta), atol=1e-5)
    np.testing.assert_allclose(np.asarray(actions[:, i, 1]), np.cos(delta), atol=1e-5)
  assert np.ptp(np.asarray(angles[0])) > 5


def test_loss_is_one_minus_cosine_to_the_target_encoder_on_the_next_view(setup, loss_and_grads):
  config, _, batch, variables, images, net = setup
  (value, _), _ = loss_and_grads
  length = config.seq_jepa.seq_len

  @jax.jit
  def rebuilt(params):
    view_rng, _ = jax.random.split(LOSS_RNG)
    views, actions = seq_jepa.sequence_views(view_rng, batch["image"], config, images)
    model = net.merge(params, variables["batch_stats"])
    z = jnp.stack([model.encoder(v, train=True) for v in views[:length]], axis=1)
    pred = model.predict(model.aggregate(z, actions[:, :length - 1], train=True),
                         actions[:, length - 1], train=True)
    teacher = net.merge({**params, **variables["teacher"]["params"]},
                        {**variables["batch_stats"], **variables["teacher"]["batch_stats"]})
    target = teacher.encoder(views[length], train=True)
    cos = jnp.sum(pred * target, -1) / (jnp.linalg.norm(pred, axis=-1)
                                         * jnp.linalg.norm(target, axis=-1))
    return 1.0 - jnp.mean(cos)

  np.testing.assert_allclose(float(value), float(rebuilt(variables["params"])), rtol=1e-5)


def test_no_gradient_reaches_the_target_encoder_and_the_online_parts_all_learn(loss_and_grads):
  _, (param_grads, teacher_grads) = loss_and_grads
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(teacher_grads))
  for part in ("encoder", "action_embedding", "agg_token", "blocks", "predictor"):
    leaves = jax.tree.leaves(param_grads[part])
    assert any(np.any(np.asarray(g)) for g in leaves), part


def test_the_aggregate_depends_on_the_actions_and_the_last_action_token_is_zero(setup):
  config, _, _, variables, _, net = setup
  model = net.merge(variables["params"], variables["batch_stats"])
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(6, 3, 16)), jnp.float32)
  a, b = (jnp.asarray(rng.normal(size=(6, 2, 4)), jnp.float32) for _ in range(2))
  agg = jax.jit(lambda z, actions: model.aggregate(z, actions, train=False))
  assert not np.allclose(agg(z, a), agg(z, b), atol=1e-4)
  assert agg(z, a).shape == (6, 16 + config.seq_jepa.action_dim)
  # A one-view sequence has only the zero action token: it runs, with no action to embed.
  assert agg(z[:, :1], jnp.zeros((6, 0, 4))).shape == agg(z, a).shape


def test_apply_reads_the_encoder_or_the_aggregate_of_the_image_repeated_with_identity_actions(
    setup):
  config, _, batch, variables, images, net = setup
  x = batch["image"].astype(jnp.float32) / 255
  model = net.merge(variables["params"], variables["batch_stats"])
  z = model.encoder(images.for_eval(x), train=False)
  np.testing.assert_allclose(seq_jepa.get_method(config).apply(variables, x), z, atol=1e-5)
  # The identity action is what relative_parameters gives for a view and itself.
  pipeline = seq_jepa.equivariance.transformation_pipeline(config.augment, degrees=20.0)
  _, params = seq_jepa.equivariance.view_with_parameters(jax.random.PRNGKey(1), batch["image"],
                                                         pipeline)
  itself = seq_jepa.equivariance.relative_parameters(params, params)
  np.testing.assert_allclose(itself, np.tile(seq_jepa.IDENTITY_ACTION, (8, 1)), atol=1e-6)
  length = config.seq_jepa.seq_len
  expected = model.aggregate(jnp.stack([z] * length, axis=1), jnp.stack([itself] * (length - 1),
                                                                         axis=1), train=False)
  aggregate = seq_jepa.get_method(smoke_config(**{"seq_jepa.eval_features": "aggregate"}))
  np.testing.assert_allclose(aggregate.apply(variables, x), expected, atol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    ({"seq_jepa.eval_features": "cls"}, r"eval_features must be one of \('encoder', "
                                        r"'aggregate'\), got 'cls'"),
    ({"seq_jepa.seq_len": 0}, r"config.seq_jepa.seq_len must be an integer >= 1, got 0"),
    ({"seq_jepa.num_heads": 5}, r"config.seq_jepa.num_heads must divide the token width "
                                r"\(representation 16 \+ action_dim 8 = 24\), got 5"),
    ({"seq_jepa.rotation_degrees": -1.0}, r"rotation_degrees must be >= 0, got -1.0"),
])
def test_bad_config_names_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    seq_jepa.get_method(smoke_config(**overrides))


def test_presets_3diebench_is_documented_but_refused_and_unknown_datasets_are_errors():
  config = seq_jepa_config.get_config("3diebench")
  assert (config.seq_jepa.seq_len, config.seq_jepa.action_dim, config.batch_size) == (3, 128, 512)
  with pytest.raises(ValueError, match="no 3DIEBench loader"):
    seq_jepa.get_method(config)
  with pytest.raises(ValueError, match="no imagenet preset"):
    seq_jepa_config.get_config("imagenet")
