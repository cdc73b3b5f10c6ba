"""What the generic method test cannot see in NNCLR, DCL and SupCon: NNCLR's support set is a FIFO
of the first view's projections and starts sanely; DCLW is selectable; SupCon reads the labels
(and with all-distinct labels it is SimCLR's NT-Xent)."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import dcl as dcl_config
from configs import nnclr as nnclr_config
from configs import simclr as simclr_config
from configs import supcon as supcon_config
from experiments import dcl, nnclr, simclr, supcon
from sslx import experiment
from tests.experiments.test_methods import fixed_batch


def _loss(method, variables, batch, seed=1):
  params = variables["params"]
  return method.loss(params, variables, batch, jax.random.PRNGKey(seed))


def test_nnclr_support_set_is_a_fifo_of_first_view_projections():
  config = nnclr_config.get_config("smoke")  # batch 32, support 4 * 32
  method = nnclr.get_method(config)
  batch = fixed_batch(config.batch_size)
  variables = dict(method.init(jax.random.PRNGKey(0), batch))
  b, size = config.batch_size, config.support_size
  assert variables["support"].shape == (size, config.projector.out_features)
  assert not np.any(np.asarray(variables["support"]))  # starts empty

  # The first view's projections, computed independently of the loss (train-mode BatchNorm uses
  # the batch's statistics, so the running averages carried along do not matter).
  images = experiment.images_for(config)
  net = experiment.Network(lambda rngs: nnclr.NNCLRModel(config, images.view_shape, rngs=rngs))

  def first_view_projections(state, seed):
    (v1, v2), encoder_rng = experiment.two_views(jax.random.PRNGKey(seed), batch["image"],
                                                 config, images)
    model = net.merge(variables["params"], state["batch_stats"])
    z = model.projector(model.encoder(jnp.concatenate([v1, v2]), train=True, rng=encoder_rng),
                        train=True)
    return np.asarray(z[:b])

  state, projections = dict(variables), []
  for step in range(5):  # 5 * 32 > 128: the oldest batch has been pushed out
    projections.append(first_view_projections(state, seed=step))
    value, aux = _loss(method, state, batch, seed=step)
    assert np.isfinite(float(value))
    assert float(aux["metrics"]["train/support_empty"]) == (1.0 if step == 0 else 0.0)
    if step == 0:  # the empty support set: each view's neighbour is its own projection
      np.testing.assert_allclose(float(aux["metrics"]["train/neighbor_cosine"]), 1.0, atol=1e-5)
    state = {**state, **aux["state"]}
    newest_first = np.concatenate(projections[::-1])[:size]
    filled = min((step + 1) * b, size)
    np.testing.assert_allclose(np.asarray(state["support"])[:filled], newest_first[:filled],
                               rtol=1e-4, atol=1e-5)
    assert not np.any(np.asarray(state["support"])[filled:])


def test_nnclr_rejects_a_support_set_smaller_than_the_batch():
  config = nnclr_config.get_config("smoke")
  with config.unlocked():
    config.support_size = config.batch_size - 1
  try:
    nnclr.get_method(config)
  except ValueError as error:
    assert "support_size" in str(error)
  else:
    raise AssertionError("support_size < batch_size was accepted")


def test_dclw_is_selectable_and_weights_the_positives():
  config = dcl_config.get_config("smoke,dclw")
  assert config.loss.variant == "dclw" and dcl_config.get_config("smoke").loss.variant == "dcl"
  batch = fixed_batch(config.batch_size)
  method_w = dcl.get_method(config)
  method = dcl.get_method(dcl_config.get_config("smoke"))
  variables = method.init(jax.random.PRNGKey(0), batch)
  value_w, _ = _loss(method_w, variables, batch)
  value, _ = _loss(method, variables, batch)
  assert np.isfinite(float(value_w)) and abs(float(value_w) - float(value)) > 1e-4


def test_supcon_uses_the_labels_and_is_nt_xent_when_all_labels_differ():
  config = supcon_config.get_config("smoke")
  reference = simclr_config.get_config("smoke")  # the same model, views and temperature
  with reference.unlocked():
    reference.loss.temperature = config.loss.temperature
  batch = fixed_batch(config.batch_size)  # labels 0..3: 8 examples per class
  method = supcon.get_method(config)
  variables = method.init(jax.random.PRNGKey(0), batch)

  with_classes, aux = _loss(method, variables, batch)
  distinct = {**batch, "label": jnp.arange(config.batch_size, dtype=jnp.int32)}
  without_classes, _ = _loss(method, variables, distinct)
  simclr_value, _ = _loss(simclr.get_method(reference), variables, batch)
  np.testing.assert_allclose(float(without_classes), float(simclr_value), rtol=1e-5)
  assert abs(float(with_classes) - float(without_classes)) > 0.1
  np.testing.assert_allclose(float(aux["metrics"]["train/same_class_fraction"]), 7 / 31,
                             rtol=1e-6)
