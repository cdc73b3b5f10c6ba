"""Tests for sslx.losses.masked (MAE, I-JEPA, data2vec) against closed forms, independent float64
references, and the same loss on one device versus sharded over 8 fake CPU devices."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sslx.losses.masked import data2vec, data2vec_targets, ijepa, mae, patchify
from tests.losses.harness import check_against_reference, check_sharded_equivalence

TORCH_EPS = 1e-5  # F.layer_norm / F.instance_norm default


# --- Independent references (float64, loops over examples and positions) -----------------------


def reference_patchify(images, p):
  b, h, w, c = images.shape
  out = np.zeros((b, (h // p) * (w // p), p * p * c))
  for i in range(b):
    for gy in range(h // p):
      for gx in range(w // p):
        for dy in range(p):
          for dx in range(p):
            for ch in range(c):
              out[i, gy * (w // p) + gx, (dy * p + dx) * c + ch] = images[i, gy * p + dy,
                                                                           gx * p + dx, ch]
  return out


def reference_mae(pred, target, mask, norm_pix_loss=True, eps=1e-6):
  """models_mae.forward_loss, patch by patch: unbiased variance, mean over masked patches."""
  total, count = 0.0, 0.0
  for i in range(pred.shape[0]):
    for l in range(pred.shape[1]):
      t = np.asarray(target[i, l], np.float64)
      if norm_pix_loss:
        mean = t.sum() / t.size
        var = ((t - mean) ** 2).sum() / (t.size - 1)
        t = (t - mean) / math.sqrt(var + eps)
      error = np.mean((np.asarray(pred[i, l], np.float64) - t) ** 2)
      total += float(mask[i, l]) * error
      count += float(mask[i, l])
  return total / count


def _norm_vector(v):
  v = np.asarray(v, np.float64)
  mean = v.sum() / v.size
  var = ((v - mean) ** 2).sum() / v.size
  return (v - mean) / math.sqrt(var + TORCH_EPS)


def _huber(d, beta=1.0):
  d = abs(d)
  return 0.5 * d * d / beta if d < beta else d - 0.5 * beta


def reference_ijepa(pred, target, normalize=True):
  pred = np.asarray(pred, np.float64).reshape(-1, pred.shape[-1])
  target = np.asarray(target, np.float64).reshape(-1, target.shape[-1])
  total = 0.0
  for row in range(pred.shape[0]):
    t = _norm_vector(target[row]) if normalize else target[row]
    total += sum(_huber(a - b) for a, b in zip(pred[row], t))
  return total / pred.size


def _norm_example(x, kind):
  """x: [T, D] of one example."""
  out = np.array(x, np.float64)
  if kind == "layer":
    for t in range(out.shape[0]):
      out[t] = _norm_vector(out[t])
  elif kind == "instance":
    for d in range(out.shape[1]):
      out[:, d] = _norm_vector(out[:, d])
  return out


def reference_data2vec_targets(layers, top_k, per_layer_norm, final_norm):
  layers = np.asarray(layers, np.float64)
  out = np.zeros(layers.shape[1:])
  for i in range(layers.shape[1]):
    chosen = [_norm_example(layers[l, i], per_layer_norm)
              for l in range(layers.shape[0] - top_k, layers.shape[0])]
    out[i] = _norm_example(sum(chosen) / top_k, final_norm)
  return out


def reference_data2vec(pred, layers, mask, top_k, per_layer_norm="instance", final_norm="layer",
                       beta=0.0, scale=None):
  y = reference_data2vec_targets(layers, top_k, per_layer_norm, final_norm)
  dim = pred.shape[-1]
  scale = 1 / math.sqrt(dim) if scale is None else scale
  total, count = 0.0, 0.0
  for i in range(pred.shape[0]):
    for t in range(pred.shape[1]):
      if mask[i, t]:
        diffs = np.asarray(pred[i, t], np.float64) - y[i, t]
        total += sum(d * d if beta == 0 else _huber(d, beta) for d in diffs)
        count += 1
  return scale * total / count


def random_masked_batch(seed, batch=4, patches=3, dim=4, dtype=np.float32):
  rng = np.random.default_rng(seed)
  target = rng.normal(size=(batch, patches, dim)).astype(dtype)
  pred = (target + 0.7 * rng.normal(size=target.shape)).astype(dtype)
  mask = np.zeros((batch, patches), np.float32)
  mask[:, 0] = 1.0  # every image has a masked patch, and some have more
  mask[rng.uniform(size=(batch, patches)) < 0.4] = 1.0
  return pred, target, mask


# --- patchify ----------------------------------------------------------------------------------


def test_patchify_matches_reference_and_rejects_bad_sizes():
  images = np.random.default_rng(0).normal(size=(2, 4, 6, 3)).astype(np.float32)
  np.testing.assert_array_equal(jax.jit(patchify, static_argnums=1)(images, 2),
                                reference_patchify(images, 2).astype(np.float32))
  with pytest.raises(ValueError, match=r"patch_size must be a positive integer dividing .*"
                     r"\(2, 4, 6, 3\).*got 4"):
    patchify(images, 4)
  with pytest.raises(ValueError, match=r"images must have rank 4 .*\(4, 6, 3\) \(rank 3\)"):
    patchify(images[0], 2)


# --- MAE ---------------------------------------------------------------------------------------

mae_loss = jax.jit(mae, static_argnames=("norm_pix_loss", "eps"))
mae_value_and_grad = jax.jit(jax.value_and_grad(mae, argnums=(0, 1)),
                             static_argnames=("norm_pix_loss",))


def test_mae_closed_forms():
  target = jnp.array([[[1.0, 3.0], [5.0, -5.0]]])
  pred = jnp.zeros((1, 2, 2))
  mask = jnp.array([[1.0, 0.0]])
  np.testing.assert_allclose(mae_loss(pred, target, mask, norm_pix_loss=False), 5.0, rtol=1e-6)
  # (1, 3): mean 2, unbiased variance 2; normalised (-1, 1) / sqrt(2 + 1e-6).
  np.testing.assert_allclose(mae_loss(pred, target, mask), 1 / (2 + 1e-6), rtol=1e-6)
  # Nothing masked anywhere: 0, not 0/0.
  np.testing.assert_array_equal(mae_loss(pred, target, jnp.zeros((1, 2))), 0.0)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_mae_matches_reference_value_and_gradient(norm_pix_loss):
  pred, target, mask = random_masked_batch(1)
  check_against_reference(
      functools.partial(mae, norm_pix_loss=norm_pix_loss),
      functools.partial(reference_mae, norm_pix_loss=norm_pix_loss),
      [pred, target, mask], grad_argnums=(0, 1), grad_rtol=1e-4)


def test_mae_invariances_and_wrong_pairing():
  pred, target, mask = random_masked_batch(2, batch=6, patches=5, dim=4)
  base = float(mae_loss(pred, target, mask))
  perm = np.random.default_rng(0).permutation(6)
  np.testing.assert_allclose(mae_loss(pred[perm], target[perm], mask[perm]), base, rtol=1e-6)
  patches = np.random.default_rng(1).permutation(5)
  np.testing.assert_allclose(
      mae_loss(pred[:, patches], target[:, patches], mask[:, patches]), base, rtol=1e-6)
  # Per-patch normalisation: affine changes of a target patch do not matter.
  np.testing.assert_allclose(mae_loss(pred, 3.0 * target + 2.0, mask), base, rtol=1e-5)
  # Visible patches do not count; masked ones and their pairing do.
  changed = pred.copy()
  changed[mask == 0] += 10.0
  np.testing.assert_allclose(mae_loss(changed, target, mask), base, rtol=1e-6)
  changed[mask == 1] += 1.0
  assert abs(float(mae_loss(changed, target, mask)) - base) > 1e-1
  assert abs(float(mae_loss(pred, np.roll(target, 1, axis=0), mask)) - base) > 1e-2


def test_mae_zero_inputs_and_bfloat16():
  zeros = jnp.zeros((2, 3, 4))
  value, grads = mae_value_and_grad(zeros, zeros, jnp.ones((2, 3)))
  assert float(value) == 0.0 and all(np.all(np.isfinite(g)) for g in grads)
  pred, target, mask = random_masked_batch(3, dim=8)
  low = [jnp.asarray(a, jnp.bfloat16) for a in (pred, target)]
  value = mae_loss(*low, mask)
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, mae_loss(pred, target, mask), rtol=3e-2)
  np.testing.assert_allclose(mae_loss(pred, target, mask.astype(bool)),
                             mae_loss(pred, target, mask), rtol=1e-7)


@pytest.mark.parametrize("global_batch", [16, 8])
def test_mae_same_value_and_gradient_on_one_and_eight_devices(global_batch):
  # Masked counts differ between devices: the loss is over the global masked count.
  pred, target, mask = random_masked_batch(10 + global_batch, batch=global_batch)
  mask[:2] = 1.0
  check_sharded_equivalence(mae, [pred, target, mask], grad_argnums=(0, 1))


def test_mae_bad_inputs():
  good = jnp.ones((2, 3, 4))
  with pytest.raises(ValueError, match=r"pred must have rank 3 .*\(3, 4\) \(rank 2\)"):
    mae(jnp.ones((3, 4)), good, jnp.ones((2, 3)))
  with pytest.raises(ValueError, match=r"target must have the same shape as pred: expected "
                     r"\(2, 3, 4\).*\(2, 3, 5\)"):
    mae(good, jnp.ones((2, 3, 5)), jnp.ones((2, 3)))
  with pytest.raises(ValueError, match=r"mask must have shape \[batch, num_positions\] = "
                     r"\(2, 3\).*got shape \(2, 4\)"):
    mae(good, good, jnp.ones((2, 4)))
  with pytest.raises(ValueError, match=r"eps must be > 0, but got 0.0"):
    mae(good, good, jnp.ones((2, 3)), eps=0.0)
  with pytest.raises(ValueError, match=r"norm_pix_loss needs at least 2 values per patch.*"
                     r"\(2, 3, 1\)"):
    mae(jnp.ones((2, 3, 1)), jnp.ones((2, 3, 1)), jnp.ones((2, 3)))


# --- I-JEPA ------------------------------------------------------------------------------------

ijepa_loss = jax.jit(ijepa, static_argnames=("normalize_targets",))


def random_blocks(seed, shape, scale=1.5):
  rng = np.random.default_rng(seed)
  target = rng.normal(size=shape).astype(np.float32)
  # Errors of both sizes, so both branches of the Huber loss are exercised.
  pred = (rng.normal(size=shape) * scale).astype(np.float32)
  return pred, target


def test_ijepa_closed_forms():
  targets = jnp.array([[[0.0, 4.0]]])
  preds = jnp.array([[[0.0, 3.0]]])
  np.testing.assert_allclose(ijepa_loss(preds, targets, normalize_targets=False), 0.25,
                             rtol=1e-6)
  unit = 4.0 / math.sqrt(4.0 + TORCH_EPS) / 2  # layer norm of (0, 4) is (-unit, unit)
  expected = (0.5 * unit ** 2 + (3.0 - unit - 0.5)) / 2
  np.testing.assert_allclose(ijepa_loss(preds, targets), expected, rtol=1e-6)


@pytest.mark.parametrize("shape,normalize", [((2, 2, 3, 4), True), ((3, 4, 5), False)])
def test_ijepa_matches_reference_value_and_gradient(shape, normalize):
  pred, target = random_blocks(sum(shape), shape)
  check_against_reference(
      functools.partial(ijepa, normalize_targets=normalize),
      functools.partial(reference_ijepa, normalize=normalize), [pred, target])


def test_ijepa_layouts_invariances_and_stop_gradient():
  pred, target = random_blocks(4, (4, 2, 3, 5))
  base = float(ijepa_loss(pred, target))
  np.testing.assert_allclose(ijepa_loss(pred.reshape(4, 6, 5), target.reshape(4, 6, 5)), base,
                             rtol=1e-6)
  perm = np.random.default_rng(2).permutation(4)
  np.testing.assert_allclose(ijepa_loss(pred[perm], target[perm]), base, rtol=1e-6)
  np.testing.assert_allclose(ijepa_loss(pred, 5.0 * target - 1.0), base, rtol=1e-5)
  assert abs(float(ijepa_loss(pred, target[:, ::-1])) - base) > 1e-2
  grad_t = jax.jit(jax.grad(ijepa, argnums=1))(pred, target)
  np.testing.assert_array_equal(grad_t, 0.0)


def test_ijepa_zero_inputs_and_bfloat16():
  value, grad = jax.jit(jax.value_and_grad(ijepa))(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)))
  assert float(value) == 0.0 and np.all(np.isfinite(grad))
  pred, target = random_blocks(5, (4, 3, 8))
  value = ijepa_loss(jnp.asarray(pred, jnp.bfloat16), jnp.asarray(target, jnp.bfloat16))
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, ijepa_loss(pred, target), rtol=2e-2)


@pytest.mark.parametrize("shape", [(16, 2, 3, 4), (8, 5, 4)])
def test_ijepa_same_value_and_gradient_on_one_and_eight_devices(shape):
  pred, target = random_blocks(shape[0], shape)
  check_sharded_equivalence(ijepa, [pred, target])


def test_ijepa_bad_inputs():
  with pytest.raises(ValueError, match=r"predictions must have rank 3 or 4 .*\(2, 3\) \(rank 2\)"):
    ijepa(jnp.ones((2, 3)), jnp.ones((2, 3)))
  with pytest.raises(ValueError, match=r"targets must have the same shape as predictions: "
                     r"expected \(2, 3, 4\).*\(2, 3, 5\)"):
    ijepa(jnp.ones((2, 3, 4)), jnp.ones((2, 3, 5)))


# --- data2vec ----------------------------------------------------------------------------------

targets_fn = jax.jit(data2vec_targets, static_argnames=("top_k", "per_layer_norm", "final_norm"))
d2v_loss = jax.jit(data2vec, static_argnames=(
    "top_k", "per_layer_norm", "final_norm", "beta", "scale"))


def random_teacher(seed, layers=3, batch=3, positions=4, dim=3):
  rng = np.random.default_rng(seed)
  teacher = (rng.normal(size=(layers, batch, positions, dim)) * rng.uniform(0.5, 3, size=(
      layers, 1, 1, 1)) + rng.normal(size=(layers, 1, 1, dim))).astype(np.float32)
  pred = rng.normal(size=(batch, positions, dim)).astype(np.float32)
  mask = (rng.uniform(size=(batch, positions)) < 0.5).astype(np.float32)
  mask[:, 0] = 1.0
  return pred, teacher, mask


@pytest.mark.parametrize("top_k,per_layer,final", [
    (3, "instance", "layer"), (2, None, "layer"), (1, "layer", "instance"), (2, None, None)])
def test_data2vec_targets_match_reference(top_k, per_layer, final):
  _, teacher, _ = random_teacher(top_k)
  y = targets_fn(teacher, top_k, per_layer_norm=per_layer, final_norm=final)
  assert y.dtype == jnp.float32 and y.shape == teacher.shape[1:]
  np.testing.assert_allclose(y, reference_data2vec_targets(teacher, top_k, per_layer, final),
                             rtol=1e-5, atol=1e-5)


def test_data2vec_targets_closed_form_sequence_input_and_zeros():
  layers = [jnp.full((1, 1, 2), 5.0), jnp.array([[[1.0, 3.0]]]), jnp.array([[[0.0, 4.0]]])]
  np.testing.assert_allclose(
      data2vec_targets(layers, 2, per_layer_norm=None, final_norm=None), [[[0.5, 3.5]]])
  np.testing.assert_allclose(data2vec_targets(jnp.stack(layers), 2), data2vec_targets(layers, 2))
  np.testing.assert_array_equal(data2vec_targets(jnp.zeros((2, 2, 3, 4))), 0.0)


@pytest.mark.parametrize("kwargs", [
    dict(top_k=3), dict(top_k=2, per_layer_norm=None, beta=2.0), dict(top_k=1, scale=0.5)])
def test_data2vec_matches_reference_value_and_gradient(kwargs):
  pred, teacher, mask = random_teacher(7)
  check_against_reference(
      lambda p, t, m: data2vec(p, t, m, **kwargs),
      lambda p, t, m: reference_data2vec(p, t, m, **kwargs), [pred, teacher, mask])


def test_data2vec_invariances_and_wrong_pairing():
  pred, teacher, mask = random_teacher(8, batch=5)
  base = float(d2v_loss(pred, teacher, mask))
  perm = np.random.default_rng(3).permutation(5)
  np.testing.assert_allclose(d2v_loss(pred[perm], teacher[:, perm], mask[perm]), base, rtol=1e-6)
  changed = pred.copy()
  changed[mask == 0] = 100.0
  np.testing.assert_allclose(d2v_loss(changed, teacher, mask), base, rtol=1e-6)
  # All layers are averaged by default, so their order does not matter; the top one does.
  np.testing.assert_allclose(d2v_loss(pred, teacher[::-1], mask), base, rtol=1e-6)
  top = float(d2v_loss(pred, teacher, mask, top_k=1))
  assert abs(float(d2v_loss(pred, teacher[::-1], mask, top_k=1)) - top) > 1e-2
  assert abs(float(d2v_loss(pred, np.roll(teacher, 1, axis=1), mask)) - base) > 1e-2
  grad_t = jax.jit(jax.grad(data2vec, argnums=1))(pred, teacher, mask)
  np.testing.assert_array_equal(grad_t, 0.0)


def test_data2vec_zero_inputs_no_mask_and_bfloat16():
  value, grad = jax.jit(jax.value_and_grad(data2vec))(
      jnp.zeros((2, 3, 4)), jnp.zeros((2, 2, 3, 4)), jnp.ones((2, 3)))
  assert float(value) == 0.0 and np.all(np.isfinite(grad))
  pred, teacher, mask = random_teacher(9, dim=8)
  np.testing.assert_array_equal(d2v_loss(pred, teacher, np.zeros_like(mask)), 0.0)
  value = d2v_loss(jnp.asarray(pred, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16), mask)
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, d2v_loss(pred, teacher, mask), rtol=3e-2)


@pytest.mark.parametrize("global_batch,beta", [(16, 0.0), (8, 2.0)])
def test_data2vec_same_value_and_gradient_on_one_and_eight_devices(global_batch, beta):
  pred, teacher, mask = random_teacher(global_batch, batch=global_batch)
  check_sharded_equivalence(functools.partial(data2vec, beta=beta), [pred, teacher, mask],
                            specs=[P("data"), P(None, "data"), P("data")])


def test_data2vec_bad_inputs():
  pred, teacher, mask = jnp.ones((2, 3, 4)), jnp.ones((2, 2, 3, 4)), jnp.ones((2, 3))
  with pytest.raises(ValueError, match=r"predictions must have rank 3 .*\(3, 4\) \(rank 2\)"):
    data2vec(pred[0], teacher, mask)
  with pytest.raises(ValueError, match=r"mask must have shape .* = \(2, 3\).*\(3, 2\)"):
    data2vec(pred, teacher, mask.T)
  with pytest.raises(ValueError, match=re.escape("the targets (teacher layers' [b, T, D]) must "
                                                 "have the same shape as predictions")):
    data2vec(pred, jnp.ones((2, 2, 3, 5)), mask)
  with pytest.raises(ValueError, match=r"teacher_layer_outputs must have rank 4 .*\(2, 3, 4\)"):
    data2vec(pred, pred, mask)
  with pytest.raises(ValueError, match=r"teacher_layer_outputs\[1\] must have the same shape as "
                     r"teacher_layer_outputs\[0\]"):
    data2vec_targets([pred, pred[:, :2]])
  with pytest.raises(ValueError, match=r"top_k must be an integer in \[1, 2\].*got 3"):
    data2vec(pred, teacher, mask, top_k=3)
  with pytest.raises(ValueError, match=r"per_layer_norm must be one of .*got 'batch'"):
    data2vec(pred, teacher, mask, per_layer_norm="batch")
  with pytest.raises(ValueError, match=r"beta must be >= 0, but got -1.0"):
    data2vec(pred, teacher, mask, beta=-1.0)
  with pytest.raises(ValueError, match=r"scale must be > 0, but got 0"):
    data2vec(pred, teacher, mask, scale=0)
