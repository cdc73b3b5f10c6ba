"""MSN's experiment module: an anchor pass sees floor(0.85 N) patches, one subset for every image of
the pass, and only those; the EMA target sees the first random crop, the online network the second
one masked and the focal crops whole; bad settings are named. (Learning on a fixed batch, the EMA
target and every state entry's update are checked with every other method in test_methods.py; the
loss against its float64 reference in tests/losses/test_distillation.py.)"""

import jax
import numpy as np
import pytest

from experiments import _multicrop
from experiments import msn as msn_experiment
from sslx import experiment
from tests.experiments.test_methods import fixed_batch
from tests.train import helpers


def test_an_anchor_pass_sees_one_random_subset_of_85_percent_of_the_patches():
  config = helpers.smoke_config("", "msn")
  net = experiment.Network(lambda rngs: msn_experiment.MSNModel(config, (28, 28, 1), rngs=rngs))
  variables = net.init(jax.random.PRNGKey(0))
  model = net.merge(variables["params"], variables["batch_stats"])
  base = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (28, 28, 1)))
  # Image 0 as is, image 1 + p with patch p (7 x 7 patches of 4 px) changed: in evaluation mode
  # (running BatchNorm statistics) a row depends on its own image only.
  images = np.repeat(base[None], 50, axis=0)
  for p in range(49):
    r, c = divmod(p, 7)
    images[1 + p, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 1.0

  def seen(rng):
    z = jax.jit(lambda x: model.project(x, train=False, rng=rng, patch_drop=0.15))(images)
    return {p for p in range(49) if not np.allclose(z[1 + p], z[0], atol=1e-6)}

  first, second = seen(jax.random.PRNGKey(2)), seen(jax.random.PRNGKey(3))
  assert len(first) == len(second) == 41  # floor(0.85 * 49)
  assert first != second  # a fresh subset per pass
  whole = jax.jit(lambda x: model.project(x, train=False))(images)
  assert all(not np.allclose(whole[1 + p], whole[0], atol=1e-6) for p in range(49))


def test_the_target_sees_the_first_crop_the_focal_crops_are_seen_whole():
  config = helpers.smoke_config("", "msn")
  images = _multicrop.images_for(config)
  net = _multicrop.MultiCropNetwork(
      lambda rngs, shape: msn_experiment.MSNModel(config, shape, rngs=rngs), config, images)
  student = net.init(jax.random.PRNGKey(0))
  variables = helpers.with_teacher_moved({**student, "teacher": student})
  views, rng = _multicrop.crop_views(jax.random.PRNGKey(1), fixed_batch(8)["image"], config,
                                     images)
  anchors, targets, _, _ = jax.jit(lambda v, views, r: msn_experiment.embed_views(
      net, net, 0.15, v["params"], v, views, r))(variables, views, rng)
  local = views[_multicrop.LOCAL]
  assert anchors.shape == (1 + local.shape[0], 8, 16) and targets.shape == (8, 16)

  def projected(source, group, x):  # one training-mode pass, as the method's
    return jax.jit(lambda p, s, x: net.merge(p, s, group).project(x, train=True))(
        source["params"], source["batch_stats"], x)

  teacher = variables["teacher"]
  np.testing.assert_allclose(targets, projected(teacher, _multicrop.GLOBAL,
                                                views[_multicrop.GLOBAL][0]), atol=1e-5)
  focal = projected(variables, _multicrop.LOCAL, local.reshape(-1, *local.shape[2:]))
  np.testing.assert_allclose(anchors[1:], focal.reshape(anchors[1:].shape), atol=1e-5)
  # The random anchor crop is masked: its projection is not that of the whole crop.
  whole = projected(variables, _multicrop.GLOBAL, views[_multicrop.GLOBAL][1])
  assert not np.allclose(anchors[0], whole, atol=1e-3)


@pytest.mark.parametrize("field, value, message", [
    ("model.name", "resnet", "model.name must be 'vit', got 'resnet'"),
    ("model.vit.class_token", False, "model.vit.class_token must be True"),
    ("loss.patch_drop", 1.0, r"loss.patch_drop must be in \[0, 1\), got 1.0"),
    ("loss.sharpen", 0.0, "loss.sharpen must be > 0, got 0.0"),
    ("loss.me_max_weight", -1.0, "loss.me_max_weight must be >= 0, got -1.0"),
])
def test_bad_settings_are_named(field, value, message):
  with pytest.raises(ValueError, match=message):
    msn_experiment.get_method(helpers.smoke_config("", "msn", **{field: value}))


def test_the_target_crop_is_one_of_exactly_two_global_crops():
  config = helpers.smoke_config("", "msn")
  config.multicrop["global"]["number"] = 3
  with pytest.raises(ValueError, match="multicrop.global.number must be 2 for MSN"):
    msn_experiment.get_method(config)
