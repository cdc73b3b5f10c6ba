"""Tests for sslx.losses.semi_supervised: closed forms, float64 references written from the papers
(loops), invariances, errors, and equivalence on one device versus 8 fake CPU devices."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from sslx.losses import semi_supervised as ss
from sslx.losses.semi_supervised import (
    fixmatch, flexmatch, flexmatch_init, flexmatch_thresholds, flexmatch_update, freematch,
    freematch_init, mean_teacher, soft_pseudo_label_mixup, softmatch, softmatch_init)
from tests.losses.harness import (
    BATCH, REPLICATED, assert_close, check_against_reference, check_sharded_equivalence,
    finite_difference_grad, make_mesh)


def softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def random_logits(seed, batch, classes, spread=3.0):
  rng = np.random.default_rng(seed)
  weak = (spread * rng.normal(size=(batch, classes))).astype(np.float32)
  strong = (weak + rng.normal(size=(batch, classes))).astype(np.float32)
  return strong, weak


# --- References (float64, one example at a time) -----------------------------------------------


def reference_fixmatch(strong, weak, threshold, thresholds_per_class=None):
  total = 0.0
  for s, w in zip(strong, weak):
    p = softmax(w)
    y = int(np.argmax(p))
    t = threshold if thresholds_per_class is None else thresholds_per_class[y]
    if p[y] >= t:
      total += -np.log(softmax(s)[y])
  return total / len(strong)


def reference_mean_teacher(student, teacher):
  return sum(np.sum((softmax(s) - softmax(t)) ** 2) for s, t in zip(student, teacher)) / (
      len(student) * np.shape(student)[1])


def reference_mixup(logits, a, b, lam, prior, w_prior, w_entropy):
  n, c = np.shape(logits)
  prior = np.asarray(prior, np.float64)  # NumPy 2: float32 * python float stays float32
  probs = [softmax(x) for x in logits]
  ce = sum(lam * -np.dot(a[i], np.log(probs[i])) + (1 - lam) * -np.dot(b[i], np.log(probs[i]))
           for i in range(n)) / n
  mean_prob = sum(probs) / n
  prior_term = -sum(prior[k] * math.log(mean_prob[k]) for k in range(c))
  entropy = sum(-np.dot(p, np.log(p)) for p in probs) / n
  return ce + w_prior * prior_term + w_entropy * entropy


# --- Docstrings ---------------------------------------------------------------------------------


# --- FixMatch -----------------------------------------------------------------------------------


def test_fixmatch_closed_form_mask_over_all_examples():
  weak = jnp.array([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 9.0], [1.0, 0.0, 0.0]])
  strong = jnp.array([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  loss, aux = jax.jit(fixmatch)(strong, weak)
  # Examples 0 and 2 are confident (p > 0.999); each has CE log 3 on a uniform strong view.
  np.testing.assert_allclose(loss, 2 * math.log(3) / 4, rtol=1e-6)
  np.testing.assert_allclose(aux["mask_rate"], 0.5)


@pytest.mark.parametrize("threshold", [0.0, 0.7, 0.95])
def test_fixmatch_matches_reference(threshold):
  strong, weak = random_logits(1, 12, 4)
  check_against_reference(
      lambda s: fixmatch(s, weak, threshold=threshold)[0],
      lambda s: reference_fixmatch(s, weak, threshold), [strong])
  grad_weak = jax.grad(lambda w: fixmatch(strong, w, threshold=threshold)[0])(weak)
  np.testing.assert_array_equal(grad_weak, 0.0)  # pseudo-labels are constants


def test_fixmatch_soft_labels_and_invariances():
  strong, weak = random_logits(2, 8, 3)
  loss, _ = fixmatch(strong, weak, threshold=0.0, temperature=0.5, hard_labels=False)
  expected = np.mean([-np.dot(softmax(w / 0.5), np.log(softmax(s))) for s, w in zip(strong, weak)])
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  fn = jax.jit(lambda s, w: fixmatch(s, w, threshold=0.5)[0])
  perm = np.random.default_rng(0).permutation(8)
  np.testing.assert_allclose(fn(strong[perm], weak[perm]), fn(strong, weak), rtol=1e-6)
  assert abs(float(fn(strong, np.roll(weak, 1, axis=0))) - float(fn(strong, weak))) > 1e-2


def test_fixmatch_dtype_zero_logits_and_errors():
  strong, weak = random_logits(3, 8, 5)
  low, _ = fixmatch(jnp.asarray(strong, jnp.bfloat16), jnp.asarray(weak, jnp.bfloat16),
                    threshold=0.5)
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(low, fixmatch(strong, weak, threshold=0.5)[0], rtol=3e-2)
  zeros = jnp.zeros((4, 5))
  value, grad = jax.value_and_grad(lambda s: fixmatch(s, zeros)[0])(zeros)
  assert float(value) == 0.0 and np.all(grad == 0.0)
  with pytest.raises(ValueError, match=r"logits_strong must have rank 2 with shape "
                     r"\[batch, num_classes\].*\(5,\)"):
    fixmatch(jnp.ones(5), jnp.ones(5))
  with pytest.raises(ValueError, match=r"logits_weak must have the same shape as logits_strong: "
                     r"expected \(4, 5\).*\(4, 3\)"):
    fixmatch(zeros, jnp.zeros((4, 3)))
  with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\], but got 1.5"):
    fixmatch(zeros, zeros, threshold=1.5)
  with pytest.raises(ValueError, match=r"temperature must be > 0, but got 0"):
    fixmatch(zeros, zeros, temperature=0)
  with pytest.raises(ValueError, match=r"must be at least 1.*got 0"):
    fixmatch(jnp.zeros((0, 5)), jnp.zeros((0, 5)))


# --- FlexMatch ----------------------------------------------------------------------------------


def test_flexmatch_thresholds_closed_form():
  # 3 classes: sigma = (4, 2, 0), 6 unselected.
  state = jnp.array([0] * 4 + [1] * 2 + [-1] * 6, jnp.int32)
  warm = flexmatch_thresholds(state, 3, threshold=0.9)
  beta = np.array([4, 2, 0]) / 6  # the unselected count is the largest
  np.testing.assert_allclose(warm, 0.9 * beta / (2 - beta), rtol=1e-6)
  cold = flexmatch_thresholds(state, 3, threshold=0.9, warmup=False, mapping="linear")
  np.testing.assert_allclose(cold, 0.9 * np.array([1.0, 0.5, 0.0]), rtol=1e-6)
  np.testing.assert_array_equal(flexmatch_thresholds(flexmatch_init(5), 3, warmup=False), 0.0)


def test_flexmatch_matches_reference_and_update():
  strong, weak = random_logits(4, 10, 3)
  state = jnp.array([0, 0, 0, 1, 2, -1, -1, 1, 0, -1, 2, 2], jnp.int32)
  thresholds = np.asarray(flexmatch_thresholds(state, 3, threshold=0.9))
  check_against_reference(
      lambda s: flexmatch(s, weak, state, threshold=0.9)[0],
      lambda s: reference_fixmatch(s, weak, None, thresholds), [strong])
  # Update: examples at positions idx whose confidence passes 0.9 record their argmax.
  idx = np.array([11, 0, 5, 3, 9, 1, 2, 4, 6, 7], np.int32)
  new = np.asarray(jax.jit(flexmatch_update)(state, weak, idx, threshold=0.9))
  expected = np.array(state)
  for row, i in enumerate(idx):
    p = softmax(weak[row])
    if p.max() >= 0.9:
      expected[i] = int(np.argmax(p))
  assert not np.array_equal(expected, np.asarray(state))  # the test changes something
  np.testing.assert_array_equal(new, expected)


def test_flexmatch_errors():
  zeros = jnp.zeros((4, 3))
  state = flexmatch_init(6)
  with pytest.raises(ValueError, match=r"class_state must have rank 1 with shape "
                     r"\[num_unlabelled\].*\(6, 1\)"):
    flexmatch(zeros, zeros, state[:, None])
  with pytest.raises(ValueError, match=r"class_state must be an integer array.*float32"):
    flexmatch(zeros, zeros, jnp.zeros(6))
  with pytest.raises(ValueError, match=r"mapping must be one of .*'cubic'"):
    flexmatch(zeros, zeros, state, mapping="cubic")
  with pytest.raises(ValueError, match=re.escape(
      "example_indices must have shape [4] (one index per row of logits_weak), but got shape "
      "(3,)")):
    flexmatch_update(state, zeros, jnp.arange(3))
  with pytest.raises(ValueError, match=r"example_indices must be an integer array"):
    flexmatch_update(state, zeros, jnp.zeros(4))
  with pytest.raises(ValueError, match=r"num_unlabelled must be an integer >= 1, but got 0"):
    flexmatch_init(0)


def test_flexmatch_update_sharded_matches_one_device():
  strong, weak = random_logits(5, 16, 3)
  idx = np.random.default_rng(1).permutation(40)[:16].astype(np.int32)
  state = np.random.default_rng(2).integers(-1, 3, size=40).astype(np.int32)
  expected = np.asarray(jax.jit(flexmatch_update)(state, weak, idx, threshold=0.8))
  assert not np.array_equal(expected, state)
  mesh = make_mesh()
  put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))  # noqa: E731
  with jax.set_mesh(mesh):
    jitted = jax.jit(functools.partial(flexmatch_update, threshold=0.8))(
        put(state, REPLICATED), put(weak, BATCH), put(idx, BATCH))
    mapped = jax.jit(jax.shard_map(
        functools.partial(flexmatch_update, threshold=0.8, axis_name="data"), mesh=mesh,
        in_specs=(REPLICATED, BATCH, BATCH), out_specs=REPLICATED))(
            put(state, REPLICATED), put(weak, BATCH), put(idx, BATCH))
  np.testing.assert_array_equal(jitted, expected)
  np.testing.assert_array_equal(mapped, expected)


# --- Mean Teacher -------------------------------------------------------------------------------


def test_mean_teacher_reference_and_teacher_is_constant():
  student, teacher = random_logits(6, 7, 4)
  check_against_reference(
      lambda s: mean_teacher(s, teacher), lambda s: reference_mean_teacher(s, teacher), [student])
  grad_t = jax.grad(lambda t: mean_teacher(student, t))(teacher)
  np.testing.assert_array_equal(grad_t, 0.0)
  perm = np.random.default_rng(0).permutation(7)
  np.testing.assert_allclose(
      mean_teacher(student[perm], teacher[perm]), mean_teacher(student, teacher), rtol=1e-6)
  assert float(mean_teacher(student, np.roll(teacher, 1, 0))) > float(
      mean_teacher(student, teacher)) + 1e-3
  low = mean_teacher(jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16))
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(low, mean_teacher(student, teacher), rtol=5e-2)
  assert float(mean_teacher(jnp.zeros((2, 3)), jnp.zeros((2, 3)))) == 0.0
  with pytest.raises(ValueError, match=r"teacher_logits must have the same shape as "
                     r"student_logits: expected \(2, 3\)"):
    mean_teacher(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


# --- Soft pseudo-labels with mixup --------------------------------------------------------------


def soft_labels(seed, batch, classes):
  return softmax(np.random.default_rng(seed).normal(size=(batch, classes))).astype(np.float32)


@pytest.mark.parametrize("use_prior", [False, True])
def test_mixup_matches_reference(use_prior):
  logits, _ = random_logits(7, 9, 4)
  a = soft_labels(1, 9, 4)
  b = a[np.random.default_rng(3).permutation(9)]
  prior = np.array([0.1, 0.2, 0.3, 0.4], np.float32) if use_prior else None
  ref_prior = prior if use_prior else np.full(4, 0.25)
  check_against_reference(
      lambda x: soft_pseudo_label_mixup(x, a, b, 0.3, class_prior=prior),
      lambda x: reference_mixup(x, a, b, 0.3, ref_prior, 0.8, 0.4), [logits])


def test_mixup_zero_logits_invariance_and_errors():
  a = soft_labels(2, 6, 3)
  value, grad = jax.value_and_grad(
      lambda x: soft_pseudo_label_mixup(x, a, a[::-1], 0.6))(jnp.zeros((6, 3)))
  np.testing.assert_allclose(value, math.log(3) * 2.2, rtol=1e-6)
  assert np.all(np.isfinite(grad))
  logits, _ = random_logits(8, 6, 3)
  perm = np.random.default_rng(1).permutation(6)
  fn = jax.jit(soft_pseudo_label_mixup)
  np.testing.assert_allclose(fn(logits[perm], a[perm], a[::-1][perm], 0.6),
                             fn(logits, a, a[::-1], 0.6), rtol=1e-6)
  assert abs(float(fn(logits, np.roll(a, 1, 0), a[::-1], 0.6))
             - float(fn(logits, a, a[::-1], 0.6))) > 1e-2
  low = fn(jnp.asarray(logits, jnp.bfloat16), a, a[::-1], 0.6)
  assert low.dtype == jnp.float32
  with pytest.raises(ValueError, match=r"soft_labels_b must have the same shape as logits_mixed"):
    soft_pseudo_label_mixup(logits, a, a[:, :2], 0.5)
  with pytest.raises(ValueError, match=r"mix_ratio must be in \[0, 1\], but got -0.1"):
    soft_pseudo_label_mixup(logits, a, a, -0.1)
  with pytest.raises(ValueError, match=r"reg_entropy_weight must be >= 0, but got -1"):
    soft_pseudo_label_mixup(logits, a, a, 0.5, reg_entropy_weight=-1)
  with pytest.raises(ValueError, match=re.escape(
      "class_prior must have shape [3] (the logits' num_classes), but got shape (4,)")):
    soft_pseudo_label_mixup(logits, a, a, 0.5, class_prior=jnp.ones(4) / 4)


# --- Sharded equivalence ------------------------------------------------------------------------


@pytest.mark.parametrize("global_batch", [16, 8])
def test_same_value_and_gradient_on_one_and_eight_devices(global_batch):
  strong, weak = random_logits(10 + global_batch, global_batch, 4)
  labels_a = soft_labels(global_batch, global_batch, 4)
  labels_b = labels_a[::-1].copy()
  state = np.random.default_rng(0).integers(-1, 4, size=20).astype(np.int32)

  def combined(s, w, a, b, c, axis_name=None):
    # One compiled program per setting for all four losses keeps the test fast; each term
    # enters with a distinct weight so that an error in one is not hidden by another.
    fix = fixmatch(s, w, threshold=0.6, axis_name=axis_name)[0]
    flex = flexmatch(s, w, c, threshold=0.9, axis_name=axis_name)[0]
    mt = mean_teacher(s, w, axis_name=axis_name)
    mix = soft_pseudo_label_mixup(s, a, b, 0.3, axis_name=axis_name)
    return fix + 2.0 * flex + 3.0 * mt + 5.0 * mix

  check_sharded_equivalence(
      combined, [strong, weak, labels_a, labels_b, state],
      specs=[BATCH, BATCH, BATCH, BATCH, REPLICATED], grad_argnums=(0,))
  # The prior term of the mixup loss needs the global batch mean: checked on its own too.
  check_sharded_equivalence(
      lambda s, a, b, axis_name=None: soft_pseudo_label_mixup(
          s, a, b, 0.3, reg_entropy_weight=0.0, axis_name=axis_name),
      [strong, labels_a, labels_b], grad_argnums=(0,), grad_inside_body=False)


def test_module_exports():
  assert {"fixmatch", "flexmatch", "flexmatch_update", "freematch", "freematch_init",
          "mean_teacher", "soft_pseudo_label_mixup", "softmatch", "softmatch_init"} <= set(dir(ss))


# --- FreeMatch and SoftMatch --------------------------------------------------------------------


def reference_freematch(strong, weak, tau, p_model, label_hist, m, fairness_weight):
  """USB's FreeMatchThresholingHook (update, then mask) and entropy_loss, one example at a time.
  Returns (loss, new state, mask rate, L_u, L_f)."""
  n, c = np.shape(weak)
  weak_probs = [softmax(w) for w in weak]
  confidence = [p.max() for p in weak_probs]
  labels = [int(np.argmax(p)) for p in weak_probs]
  hist = np.zeros(c)
  for y in labels:
    hist[y] += 1
  new_tau = m * float(tau) + (1 - m) * sum(confidence) / n
  new_p = m * np.asarray(p_model, np.float64) + (1 - m) * sum(weak_probs) / n
  new_h = m * np.asarray(label_hist, np.float64) + (1 - m) * hist / hist.sum()
  consistency, selected = 0.0, []
  for i in range(n):
    if confidence[i] >= new_tau * new_p[labels[i]] / new_p.max():
      consistency -= math.log(softmax(strong[i])[labels[i]])
      selected.append(i)
  consistency /= n
  fairness = 0.0
  if selected:
    q = [softmax(strong[i]) for i in selected]
    mean_q = sum(q) / len(q)
    hist_q = np.zeros(c)
    for qi in q:
      hist_q[int(np.argmax(qi))] += 1
    hist_q /= hist_q.sum()
    inv = lambda x: np.array([0.0 if v == 0 else 1.0 / v for v in x])  # noqa: E731
    target = new_p * inv(new_h)
    target /= target.sum()
    predicted = mean_q * inv(hist_q)
    predicted /= predicted.sum()
    fairness = sum(target[k] * math.log(predicted[k] + 1e-12) for k in range(c))
  state = {"tau": new_tau, "p_model": new_p, "label_hist": new_h}
  return (consistency + fairness_weight * fairness, state, len(selected) / n, consistency,
          fairness)


def reference_softmatch(strong, weak, p_model, mu, var, m, n_sigma):
  """USB's DistAlignEMAHook (uniform target) then SoftMatchWeightingHook, both updating first.
  Returns (loss, new state, mean weight)."""
  n, c = np.shape(weak)
  weak_probs = [softmax(w) for w in weak]
  mean_prob = sum(weak_probs) / n
  p_model = np.asarray(p_model, np.float64)
  new_p = mean_prob if p_model.sum() == 0 else m * p_model + (1 - m) * mean_prob
  aligned = [p * (1 / c + 1e-6) / (new_p + 1e-6) for p in weak_probs]
  confidence = [(a / a.sum()).max() for a in aligned]
  mean_conf = sum(confidence) / n
  var_conf = sum((x - mean_conf) ** 2 for x in confidence) / (n - 1)
  new_mu = m * float(mu) + (1 - m) * mean_conf
  new_var = m * float(var) + (1 - m) * var_conf
  weights = [math.exp(-min(x - new_mu, 0.0) ** 2 / (2 * new_var / n_sigma**2))
             for x in confidence]
  loss = sum(-w * math.log(softmax(s)[int(np.argmax(p))])
             for w, s, p in zip(weights, strong, weak_probs)) / n
  return loss, {"p_model": new_p, "mu": new_mu, "var": new_var}, sum(weights) / n


def freematch_state(c, seed=0):
  """A state away from its uniform start: a confident threshold and skewed class statistics."""
  rng = np.random.default_rng(seed)
  p_model = rng.dirichlet(np.ones(c)).astype(np.float32)
  hist = rng.dirichlet(np.ones(c)).astype(np.float32)
  return {"tau": np.float32(0.8), "p_model": p_model, "label_hist": hist}


def softmatch_state(c, seed=0):
  p_model = np.random.default_rng(seed).dirichlet(np.ones(c)).astype(np.float32)
  return {"p_model": p_model, "mu": np.float32(0.7), "var": np.float32(0.05)}


HYPER = {"momentum": np.float32(0.9), "fairness_weight": np.float32(0.5),
         "n_sigma": np.float32(2.0)}


def _both(strong, weak, free_state, soft_state, hyper, axis_name=None):
  """Both losses on one batch: for each, (loss, gradients w.r.t. (logits_strong, logits_weak),
  aux). The FreeMatch and SoftMatch tests share this one program (hyper-parameters and states
  are arguments, not constants) so that each shape and sharding compiles once."""
  def free(s, w):
    return freematch(s, w, free_state, momentum=hyper["momentum"],
                     fairness_weight=hyper["fairness_weight"], axis_name=axis_name)

  def soft(s, w):
    return softmatch(s, w, soft_state, momentum=hyper["momentum"], n_sigma=hyper["n_sigma"],
                     axis_name=axis_name)

  out = {}
  for name, fn in (("freematch", free), ("softmatch", soft)):
    (loss, aux), grads = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(strong, weak)
    out[name] = (loss, grads, aux)
  return out


_both_jit = jax.jit(_both)


def assert_state_close(actual, expected, rtol=1e-5):
  assert set(actual) == set(expected)
  for key in expected:
    assert_close(actual[key], expected[key], rtol=rtol)


def test_freematch_closed_form():
  # All-zero logits from the initial state, m = 1/2: tau' = 1/2, every example passes with label
  # 0 (L_u = log 2); h' = (3/4, 1/4) so P = SumNorm(p' / h') = (1/4, 3/4), and every strong view
  # predicts class 0, so Q = (1, 0): L_f = 3/4 log 1e-12.
  zeros = np.zeros((4, 2), np.float32)
  hyper = dict(HYPER, momentum=np.float32(0.5), fairness_weight=np.float32(0.1))
  loss, _, aux = _both_jit(zeros, zeros, freematch_init(2), softmatch_init(2), hyper)["freematch"]
  np.testing.assert_allclose(aux["consistency_loss"], math.log(2), rtol=1e-6)
  np.testing.assert_allclose(aux["fairness_loss"], 0.75 * math.log(1e-12), rtol=1e-6)
  np.testing.assert_allclose(loss, math.log(2) + 0.075 * math.log(1e-12), rtol=1e-6)
  assert float(aux["mask_rate"]) == 1.0
  assert_state_close(aux["state"], {"tau": 0.5, "p_model": [0.5, 0.5], "label_hist": [0.75, 0.25]})
  # Nothing selected (1/2 < tau' = 0.9 * 0.9 + 0.1 / 2): no fairness term (USB skips it) and a
  # zero gradient, not NaN.
  state = dict(freematch_init(2), tau=jnp.float32(0.9))
  loss, (grad, _), aux = _both_jit(
      np.ones((4, 2), np.float32), zeros, state, softmatch_init(2), HYPER)["freematch"]
  assert float(loss) == 0.0 and float(aux["fairness_loss"]) == 0.0
  assert np.all(grad == 0.0)


def test_softmatch_closed_form():
  # Confidences (0.9, 0.6, 0.9, 0.6), balanced so the alignment is exact: with m = 0, mu' =
  # 0.75 and var' = 4 * 0.15^2 / 3 = 0.03, so the 0.6 rows weigh exp(-0.15^2 / (2 * 0.03 / 4)).
  weak = np.log(np.array([[0.9, 0.1], [0.6, 0.4], [0.1, 0.9], [0.4, 0.6]], np.float32))
  zeros = np.zeros((4, 2), np.float32)
  hyper = dict(HYPER, momentum=np.float32(0.0))
  loss, _, aux = _both_jit(zeros, weak, freematch_init(2), softmatch_init(2), hyper)["softmatch"]
  low = math.exp(-1.5)
  np.testing.assert_allclose(loss, math.log(2) * (2 + 2 * low) / 4, rtol=1e-5)
  np.testing.assert_allclose(aux["mask_rate"], (1 + low) / 2, rtol=1e-5)
  assert_state_close(aux["state"], {"p_model": [0.5, 0.5], "mu": 0.75, "var": 0.03})
  # The first step sets p_model to the batch mean (USB's None); later steps average.
  skewed = 2 * weak[:, ::-1]
  first = _both_jit(zeros, skewed, freematch_init(2), softmatch_init(2), HYPER)["softmatch"][2]
  expected = np.mean(softmax(skewed), axis=0)
  assert_close(first["state"]["p_model"], expected)
  later = _both_jit(zeros, weak, freematch_init(2), first["state"], HYPER)["softmatch"][2]
  assert_close(later["state"]["p_model"], 0.9 * expected + 0.1 * 0.5)


def _random_case():
  """The batch of the reference and 1-vs-8-device tests (one compiled program for both)."""
  strong, weak = random_logits(22, 16, 4, spread=2.0)
  return strong, weak, freematch_state(4, 1), softmatch_state(4, 1)


def test_freematch_softmatch_match_reference():
  strong, weak, free_state, soft_state = _random_case()
  strong64 = strong.astype(np.float64)
  free_args = (free_state["tau"], free_state["p_model"], free_state["label_hist"], 0.9, 0.5)
  out = _both_jit(strong, weak, free_state, soft_state, HYPER)

  loss, (grad, grad_weak), aux = out["freematch"]
  expected, state, rate, consistency, fairness = reference_freematch(strong64, weak, *free_args)
  assert 0.0 < rate < 1.0 and fairness != 0.0  # the mask and the fairness term both matter
  assert_close(loss, expected)
  assert_close(aux["mask_rate"], rate)
  assert_close(aux["consistency_loss"], consistency)
  assert_close(aux["fairness_loss"], fairness)
  assert_state_close(aux["state"], state)
  assert_close(grad, finite_difference_grad(
      lambda s: reference_freematch(s, weak, *free_args)[0], strong64), rtol=2e-5)
  np.testing.assert_array_equal(grad_weak, 0.0)  # pseudo-labels and statistics are constants

  # SoftMatch, from a running state and from the first step (p_model unset).
  fresh = dict(soft_state, p_model=np.zeros(4, np.float32))
  for state_in in (soft_state, fresh):
    if state_in is fresh:
      out = _both_jit(strong, weak, free_state, fresh, HYPER)
    soft_args = (state_in["p_model"], state_in["mu"], state_in["var"], 0.9, 2.0)
    loss, (grad, grad_weak), aux = out["softmatch"]
    expected, state, mean_weight = reference_softmatch(strong64, weak, *soft_args)
    assert 0.05 < mean_weight < 0.95  # some weights are truncated, others not
    assert_close(loss, expected)
    assert_close(aux["mask_rate"], mean_weight)
    assert_state_close(aux["state"], state)
    assert_close(grad, finite_difference_grad(
        lambda s, a=soft_args: reference_softmatch(s, weak, *a)[0], strong64), rtol=2e-5)
    np.testing.assert_array_equal(grad_weak, 0.0)


def test_freematch_softmatch_one_and_eight_devices():
  """Value, gradients, aux and new state: one device versus a sharded batch under jax.jit
  (Explicit mesh) and under jax.shard_map with axis_name (gradient inside the body, as a
  data-parallel train step does)."""
  args = _random_case() + (HYPER,)
  expected = _both_jit(*args)
  mesh = make_mesh()
  specs = (BATCH, BATCH, REPLICATED, REPLICATED, REPLICATED)
  put = jax.tree.map(lambda spec, a: jax.tree.map(
      lambda x: jax.device_put(x, NamedSharding(mesh, spec)), a), specs, args,
      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  out_specs = {name: (REPLICATED, (BATCH, BATCH), REPLICATED)
               for name in ("freematch", "softmatch")}
  mapped = jax.jit(jax.shard_map(functools.partial(_both, axis_name="data"), mesh=mesh,
                                 in_specs=specs, out_specs=out_specs))
  with jax.set_mesh(mesh):
    results = {"jit": _both_jit(*put), "shard_map": mapped(*put)}
  for setting, result in results.items():
    flat, tree = jax.tree.flatten_with_path(result)
    assert tree == jax.tree.structure(expected), setting
    for (path, actual), want in zip(flat, jax.tree.leaves(expected)):
      try:
        assert_close(actual, want)
      except AssertionError as e:
        raise AssertionError(f"{setting}, {jax.tree_util.keystr(path)}: {e}") from None


def test_freematch_softmatch_errors():
  zeros = jnp.zeros((4, 3))
  free, soft = freematch_init(3), softmatch_init(3)
  with pytest.raises(ValueError, match=r"logits_strong must have rank 2 .*\(3,\)"):
    freematch(jnp.zeros(3), jnp.zeros(3), free)
  with pytest.raises(ValueError, match=r"logits_weak must have the same shape as logits_strong"):
    softmatch(zeros, jnp.zeros((4, 2)), soft)
  with pytest.raises(ValueError, match=re.escape(
      "state must be a dict with keys ['label_hist', 'p_model', 'tau'] (see freematch_init), "
      "but got ['mu', 'p_model', 'var']")):
    freematch(zeros, zeros, soft)
  with pytest.raises(ValueError, match=re.escape(
      "state['p_model'] must have shape (3,) (num_classes = 3 from the logits; see "
      "softmatch_init), but got shape (4,)")):
    softmatch(zeros, zeros, softmatch_init(4))
  with pytest.raises(ValueError, match=re.escape("state['tau'] must have shape ()")):
    freematch(zeros, zeros, dict(free, tau=jnp.ones(1)))
  for fn, state in ((freematch, free), (softmatch, soft)):
    for bad in (1.0, -0.1):
      with pytest.raises(ValueError, match=rf"momentum must be in \[0, 1\), but got {bad}"):
        fn(zeros, zeros, state, momentum=bad)
  with pytest.raises(ValueError, match=r"fairness_weight must be >= 0, but got -0.5"):
    freematch(zeros, zeros, free, fairness_weight=-0.5)
  with pytest.raises(ValueError, match=r"n_sigma must be > 0, but got 0"):
    softmatch(zeros, zeros, soft, n_sigma=0)
  with pytest.raises(ValueError, match=r"must be at least 2 \(the unbiased variance"):
    softmatch(zeros[:1], zeros[:1], soft)
  for init in (freematch_init, softmatch_init):
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 1, but got 0"):
      init(0)
