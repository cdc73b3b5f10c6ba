"""DINOv2's experiment module: Sinkhorn-Knopp teacher targets over the masked patches only
(against a float64 transcription of DINOv2's ``sinkhorn_knopp_teacher``), targets passed to the
library's losses exactly, separate or shared patch head, and bad settings named. (Learning on a
fixed batch and every state entry's update: test_methods.py; a bit-equal resume:
test_resume.py; layer-wise lr decay and the weight-decay cosine: tests/train/test_optim.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dinov2 as dinov2_config
from experiments import dinov2
from sslx.losses import dino, sinkhorn_knopp
from tests.train import helpers


def _reference_sinkhorn(logits, temperature, num_iters=3):
  """DINOv2's sinkhorn_knopp_teacher in float64 on the valid samples: Q = exp(l / T)^T, total 1,
  then per iteration prototypes to 1/K and samples to 1/B; finally samples to 1."""
  q = np.exp(np.asarray(logits, np.float64) / temperature).T  # [K, B]
  k, b = q.shape
  q /= q.sum()
  for _ in range(num_iters):
    q /= q.sum(axis=1, keepdims=True)
    q /= k
    q /= q.sum(axis=0, keepdims=True)
    q /= b
  return (q * b).T


def test_masked_sinkhorn_knopp_balances_the_masked_patches_only():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(12, 5)).astype(np.float32)
  valid = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0], bool)
  probs = np.asarray(dinov2.masked_sinkhorn_knopp(jnp.asarray(logits), jnp.asarray(valid), 0.5))
  np.testing.assert_allclose(probs[valid], _reference_sinkhorn(logits[valid], 0.5), rtol=1e-5)
  np.testing.assert_allclose(probs[~valid], 1 / 5)  # no weight: uniform, finite
  # Every sample valid: the library's Sinkhorn-Knopp (SwAV's), which the [CLS] targets use.
  every = dinov2.masked_sinkhorn_knopp(jnp.asarray(logits), jnp.ones(12, bool), 0.5)
  np.testing.assert_allclose(every, sinkhorn_knopp(jnp.asarray(logits), epsilon=0.5), rtol=1e-5)
  np.testing.assert_allclose(every, _reference_sinkhorn(logits, 0.5), rtol=1e-5)


def test_targets_reach_the_library_loss_exactly():
  """`as_teacher_logits` with a zero center: sslx.losses.dino's cross-entropy against p itself,
  including targets with exact zeros."""
  rng = np.random.default_rng(1)
  student = rng.normal(size=(3, 4, 6)).astype(np.float32)
  probs = rng.dirichlet(np.ones(6), size=(2, 4)).astype(np.float32)
  probs[0, 0] = [1, 0, 0, 0, 0, 0]
  value = dino(jnp.asarray(student), dinov2.as_teacher_logits(jnp.asarray(probs), 0.07),
               jnp.zeros(6), student_temp=0.1, teacher_temp=0.07)
  log_student = jax.nn.log_softmax(student / 0.1, axis=-1)
  pairs = [(q, v) for q in range(2) for v in range(3) if q != v]
  expected = np.mean([-(probs[q] * log_student[v]).sum(-1).mean() for q, v in pairs])
  np.testing.assert_allclose(float(value), expected, rtol=1e-5)


@pytest.mark.parametrize("separate, centering", [(True, "sinkhorn_knopp"), (False, "centering")])
def test_heads_and_state_follow_the_config(separate, centering):
  config = helpers.smoke_config("", "dinov2", **{"ibot.separate_head": separate,
                                                 "loss.centering": centering})
  method = dinov2.get_method(config)
  variables = jax.eval_shape(method.init, jax.random.PRNGKey(0), None)
  assert ("patch_head" in variables["params"]) == separate
  # Running centers only for DINO / iBOT's centering; Sinkhorn-Knopp needs none.
  assert ("center" in variables and "patch_center" in variables) == (centering == "centering")


@pytest.mark.parametrize("overrides, match", [
    ({"loss.centering": "sinkhorn"}, "config.loss.centering"),
    ({"loss.koleo_weight": -0.1}, "config.loss.koleo_weight"),
    ({"loss.center_momentum2": 1.5}, "config.loss.center_momentum2"),
    ({"ibot.pred_ratio": (0.3,), "ibot.pred_ratio_var": (0.4,)}, "config.ibot.pred_ratio"),
    ({"model.name": "resnet"}, "DINOv2 needs a ViT"),
])
def test_bad_settings_are_named(overrides, match):
  config = helpers.smoke_config("", "dinov2", **overrides)
  with pytest.raises(ValueError, match=match):
    dinov2.get_method(config)


def test_patch14_variants_are_imagenet_only():
  assert dinov2_config.get_config("imagenet,b14").model.vit.variant == "B/14"
  with pytest.raises(ValueError, match="variants of imagenet"):
    dinov2_config.get_config("fashion_mnist,s14")
