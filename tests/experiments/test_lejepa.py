"""LeJEPA's experiment module through the loop on real Fashion-MNIST, sharded over the 8 fake
devices: the loss and its two logged terms, and bad loss settings named. (Learning on a fixed
batch is checked with every other method in test_methods.py, an exact resume in test_resume.py;
sigreg and lejepa against their float64 references in tests/losses/test_sigreg.py.)"""

import numpy as np
import pytest

from experiments import lejepa as lejepa_experiment
from sslx.train import loop
from sslx.train.metrics import read_metrics
from tests.train import helpers


def test_the_logged_terms_make_up_the_loss(fashion_mnist_dir, tmp_path):
  config = helpers.smoke_config(fashion_mnist_dir, "lejepa", **{
      "total_steps": 3, "checkpoint_every": 3, "eval.enabled": False, "loss.lambd": 0.3})
  workdir = str(tmp_path / "run")
  loop.train(config, workdir)
  losses = [row for row in read_metrics(workdir) if "train/loss" in row]
  assert len(losses) == 3
  for row in losses:  # L = (1 - lambd) * prediction + lambd * SIGReg, SIGReg > 0
    np.testing.assert_allclose(row["train/loss"], 0.7 * row["train/prediction_loss"]
                               + 0.3 * row["train/sigreg"], rtol=1e-5)
    assert row["train/sigreg"] > 0


@pytest.mark.parametrize("field, value, message", [
    ("loss.lambd", 1.5, r"loss.lambd must be in \[0, 1\], got 1.5"),
    ("loss.num_slices", 0, "loss.num_slices must be an int >= 1, got 0"),
    ("loss.t_max", 0.0, "loss.t_max must be > 0, got 0.0"),
    ("loss.num_knots", 1, "loss.num_knots must be an int >= 2, got 1"),
])
def test_bad_loss_settings_are_named(field, value, message):
  with pytest.raises(ValueError, match=message):
    lejepa_experiment.get_method(helpers.smoke_config("", "lejepa", **{field: value}))
