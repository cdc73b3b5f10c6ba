"""A resumed run equals the straight one bit for bit, for methods whose step draws fresh
randomness or keeps state beyond the parameters: LeJEPA (SIGReg's directions from the step's
key), MSN (the EMA target, the dropped patches), DINOv2 (the masks, Sinkhorn-Knopp targets, the
weight-decay schedule), HaLP (the queue, the prototypes refreshed
from it), iSogCLR (per-image state over a long-tailed training subset) and PIRL (its memory
bank). Real Fashion-MNIST through the loop on the 8 fake devices, checkpointed by orbax; the
run is resumed from step 2 of 4 after its last checkpoint is removed."""

import os
import shutil

import jax
import numpy as np
import pytest

from sslx.train import loop
from tests.train import helpers


@pytest.mark.parametrize("method, overrides", [
    ("lejepa", {}),
    ("msn", {}),
    # DINOv2: the weight-decay cosine's step count and layer-wise decay in the optimizer state.
    ("dinov2", {}),
    # HaLP's prototypes refreshed at steps 0 and 2: the resumed run must redo the second.
    ("halp", {"halp.refresh_every": 2}),
    # iSogCLR: per-image temperatures, moving averages and momenta indexed by the batches'
    # positions in a long-tailed subset of the training split.
    ("isogclr", {"data.imbalance_ratio": 10.0}),
    # PIRL: the memory bank, NCE's partition function fixed at step 0, the negatives' draws.
    ("pirl", {}),
])
def test_a_resumed_run_equals_the_straight_one(fashion_mnist_dir, tmp_path, method, overrides):
  config = helpers.smoke_config(fashion_mnist_dir, method, **{
      "total_steps": 4, "checkpoint_every": 2, "eval.enabled": False, **overrides})
  workdir = str(tmp_path / "run")
  straight = loop.train(config, workdir)["state"]
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
  resumed = loop.train(config, workdir)["state"]
  assert int(resumed.step) == 4
  for a, b in zip(jax.tree.leaves((straight.params, straight.model_state, straight.opt_state)),
                  jax.tree.leaves((resumed.params, resumed.model_state, resumed.opt_state)),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
