"""MYOW's schedule and checks, which the generic smoke test cannot see: the mined-view loss is
off for the authors' first 100 of 800 epochs, then ramps to its full weight by epoch 110."""

import numpy as np
import pytest

from configs import myow as myow_config
from experiments import myow


def test_mining_weight_follows_the_authors_schedule():
  config = myow_config.get_config("cifar10")
  total = config.total_steps
  weight = lambda epoch: float(myow.mining_weight(config, epoch / 800 * total))
  assert weight(0) == 0 and weight(99.9) == 0
  np.testing.assert_allclose(weight(105), 0.5, atol=1e-3)
  assert weight(110) == pytest.approx(1.0) and weight(800) == pytest.approx(1.0)


@pytest.mark.parametrize("field, value, message", [
    ("k", 0, "mining.k"), ("k", 32, "mining.k"), ("start", 0.5, "mining.start"),
    ("max_weight", -1.0, "mining.max_weight")])
def test_bad_mining_settings_name_the_field(field, value, message):
  config = myow_config.get_config("smoke")  # batch 32, start = full = 0
  with config.unlocked():
    config.mining[field] = value
  with pytest.raises(ValueError, match=message):
    myow.validate(config)
