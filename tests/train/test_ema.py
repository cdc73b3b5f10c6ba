"""EMA teachers: the cosine momentum schedule, the update, and the EMA scaling rule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx.train import ema


def test_cosine_schedule_matches_byol_formula_and_constant_schedule():
  total, base = 100, 0.996
  got = np.asarray([ema.ema_momentum(k, total, base=base) for k in range(total + 1)])
  # BYOL Sec. 3.2: tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2.
  want = [1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2 for k in range(total + 1)]
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
  assert got[0] == pytest.approx(base) and got[-1] == pytest.approx(1.0)
  assert np.all(np.diff(got) >= 0)
  traced = jax.jit(lambda k: ema.ema_momentum(k, total, base=base))(jnp.int32(37))
  assert float(traced) == pytest.approx(want[37], abs=1e-7)
  assert float(ema.ema_momentum(50, total, base=0.99, schedule="constant")) == pytest.approx(0.99)


def test_scaling_rule_equals_kappa_updates_at_the_small_batch():
  """rho ** kappa in one step moves the teacher as far towards a (locally fixed) student as kappa
  steps of rho do: the premise of the rule (Busbridge et al. 2023, Sec. 2)."""
  rng = np.random.default_rng(0)
  teacher = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
  student = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
  rho, kappa = 0.99, 8
  small = teacher
  for _ in range(kappa):
    small = ema.ema_update(small, student, rho)
  scaled = ema.ema_momentum(0, 10, base=rho, schedule="constant",
                            scale=ema.ema_scale(8 * 256, 256))
  big = ema.ema_update(teacher, student, scaled)
  for leaf_small, leaf_big in zip(jax.tree.leaves(small), jax.tree.leaves(big)):
    np.testing.assert_allclose(leaf_big, leaf_small, rtol=1e-5, atol=1e-6)  # float32 rho
  # Without the rule, one step at the large batch moves the teacher kappa times too little.
  unscaled = ema.ema_update(teacher, student, rho)
  assert not np.allclose(unscaled["w"], small["w"], rtol=1e-3)
  # The schedule is a function of the training fraction: the step of the same epoch at kappa
  # times the batch gives the kappa-th power of the momentum there.
  np.testing.assert_allclose(ema.ema_momentum(10, 100, base=0.99, scale=4.0),
                             ema.ema_momentum(40, 400, base=0.99) ** 4, rtol=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda: ema.ema_momentum(0, 10, base=0.9, schedule="linear"), "schedule: expected one of"),
    (lambda: ema.ema_momentum(0, 10, base=1.2), "0 <= base <= final <= 1"),
    (lambda: ema.ema_momentum(0, 0, base=0.9), "total_steps: expected an int >= 1"),
    (lambda: ema.ema_momentum(0, 10, base=0.9, scale=0.0), "scale: expected a positive"),
    (lambda: ema.ema_scale(0, 256), "batch_size: expected an int >= 1, got 0"),
    (lambda: ema.ema_update({"a": 1.0}, {"b": 1.0}, 0.9), "same structure"),
])
def test_bad_arguments_are_named(call, match):
  with pytest.raises(ValueError, match=match):
    call()
