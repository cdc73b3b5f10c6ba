"""The EMA scaling rule on BYOL (Busbridge et al. 2023): at batch kappa*B the rule's teacher
follows the batch-B teacher per epoch far more closely than the unscaled momentum does.

The setting and the measurements are benchmarks/ema_scaling_rule.py's (the rule's SDE regime:
no BatchNorm, deterministic views, plain SGD with the linear learning-rate rule), shrunk to 256
Fashion-MNIST images, B=16, kappa=4, 2 epochs.
"""

import numpy as np
import pytest

from benchmarks import ema_scaling_rule


@pytest.mark.slow  # about a minute: started first (tests/conftest.py)
def test_rule_keeps_the_teacher_on_the_batch_B_trajectory(fashion_mnist_dir):
  images = ema_scaling_rule.fashion_mnist_images(256, data_dir=fashion_mnist_dir)
  result = ema_scaling_rule.compare(images, batch_size=16, kappa=4, epochs=2, lr=0.01,
                                    momentum=0.95)
  moved = np.array(result["teacher_moved_B"])[1:]
  with_rule = np.array(result["teacher_distance_kappa_B_rule"])[1:]
  without = np.array(result["teacher_distance_kappa_B_no_rule"])[1:]
  # Without the rule the teacher lags kappa times more steps' worth of data: a large part of
  # its movement. With it, the gap is a small fraction of that, at every epoch boundary.
  assert np.all(without > 0.2 * moved), result
  assert np.all(with_rule < 0.4 * without), result
  # The loss curves per epoch are reported, and finite.
  for key in ("loss_B", "loss_kappa_B_rule", "loss_kappa_B_no_rule"):
    assert np.all(np.isfinite(result[key])) and len(result[key]) == 2
