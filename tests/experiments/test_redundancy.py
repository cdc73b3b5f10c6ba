"""What the generic method test cannot see in the redundancy-reduction family: W-MSE's shared
sub-batch partition and pair averaging over several views, Mixed Barlow Twins' regulariser
warm-up, the extra views' augmentation, and config errors naming the field."""

import jax
import numpy as np
import pytest

from configs import barlow_twins as barlow_twins_config
from configs import w_mse as w_mse_config
from experiments import _redundancy, mixed_barlow_twins, w_mse


def test_w_mse_whitens_every_view_on_the_same_random_sub_batches():
  z = jax.random.normal(jax.random.PRNGKey(0), (64, 4))
  # Identical views whiten identically only if all views share the partition into sub-batches.
  same = w_mse.multi_view_w_mse([z, z, z], jax.random.PRNGKey(1), whitening_size=16,
                                whitening_iters=2)
  assert float(same) < 1e-4
  # Pairs (0, 1): 0, (0, 2) and (1, 2): opposite directions, 4 each -> mean 8 / 3.
  mixed = w_mse.multi_view_w_mse([z, z, -z], jax.random.PRNGKey(1), whitening_size=16)
  np.testing.assert_allclose(float(mixed), 8 / 3, rtol=1e-4)


def test_mixed_barlow_twins_regularizer_weight_warms_up_linearly():
  weight = mixed_barlow_twins.regularizer_weight
  np.testing.assert_allclose([float(weight(s, 2.0, 100)) for s in (0, 50, 100, 500)],
                             [0.0, 1.0, 2.0, 2.0])
  assert float(weight(0, 8.0, 0)) == 8.0  # no warm-up: constant from the first step


def test_extra_views_use_the_base_augmentation():
  config = barlow_twins_config.get_config("imagenet")
  views = _redundancy.view_configs(config, 4)
  assert len(views) == 4
  assert (views[0]["blur_prob"], views[1]["blur_prob"]) == (1.0, 0.1)  # asymmetric pair kept
  assert views[2] == views[3] == config.augment.to_dict()


def test_bad_whitening_size_names_the_field():
  config = w_mse_config.get_config("smoke")
  with config.unlocked():
    config.loss.whitening_size = config.projector.out_features  # singular covariance
  with pytest.raises(ValueError, match="whitening_size"):
    w_mse.get_method(config)
