"""Tests for sslx.losses.distillation (dino, ibot_patch, msn, koleo, knowledge_distillation and
the center updates) against closed forms, independent float64 references written from the papers
and the authors' code, and the same loss on one device versus sharded over 8 fake CPU devices."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from sslx.losses.distillation import (
    dino, dino_center_update, ibot_patch, ibot_patch_center_update, knowledge_distillation, koleo,
    msn)
from tests.losses.harness import (
    BATCH, REPLICATED, assert_close, check_against_reference, check_sharded_equivalence,
    make_mesh)

VIEW_BATCH = P(None, "data")  # [views, batch, ...] arrays are sharded on their second dimension
NORM_EPS = 1e-6


def np_softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - np.max(x))
  return e / e.sum()


def _unit(v, eps=NORM_EPS):
  return v / max(np.linalg.norm(v), eps)


# --- Independent references (float64, loops, the authors' layouts) -------------------------------


def reference_dino(student, teacher, center, student_temp, teacher_temp):
  """facebookresearch/dino DINOLoss: chunk per view, skip v == iq, average the pair means."""
  student = np.asarray(student, np.float64)
  teacher = np.asarray(teacher, np.float64)
  total, terms = 0.0, 0
  for iq in range(teacher.shape[0]):
    for v in range(student.shape[0]):
      if v == iq:
        continue
      losses = [-np.sum(np_softmax((t - center) / teacher_temp)
                        * np.log(np_softmax(s / student_temp)))
                for t, s in zip(teacher[iq], student[v])]
      total += np.mean(losses)
      terms += 1
  return total / terms


def reference_ibot_patch(student, teacher, mask, center, student_temp, teacher_temp):
  """facebookresearch/ibot iBOTLoss, patch part: per image masked mean, mean over images, views."""
  student = np.asarray(student, np.float64)
  teacher = np.asarray(teacher, np.float64)
  total = 0.0
  for v in range(student.shape[0]):
    per_image = []
    for i in range(student.shape[1]):
      masked = [-np.sum(np_softmax((teacher[v, i, n] - center) / teacher_temp)
                        * np.log(np_softmax(student[v, i, n] / student_temp)))
                for n in range(student.shape[2]) if mask[v, i, n]]
      per_image.append(sum(masked) / max(len(masked), 1))
    total += np.mean(per_image)
  return total / student.shape[0]


def reference_msn(anchors, targets, prototypes, tau=0.1, sharpen_t=0.25, me_max_weight=1.0,
                  use_sinkhorn=True, target_prototypes=None):
  """facebookresearch/msn init_msn_loss: snn softmax, sharpen p**(1/T), distributed_sinkhorn on
  the [K, B] transpose with its /B and /K, view-major concatenation of the anchors."""
  anchors = np.asarray(anchors, np.float64)
  prototypes = np.asarray(prototypes, np.float64)
  target_prototypes = prototypes if target_prototypes is None else target_prototypes
  num_views, batch, _ = anchors.shape
  rows = anchors.reshape(num_views * batch, -1)  # torch.cat of the views
  protos = np.stack([_unit(c) for c in prototypes])
  probs = np.stack([np_softmax(protos @ _unit(a) / tau) for a in rows])
  t_protos = np.stack([_unit(c) for c in np.asarray(target_prototypes, np.float64)])
  t = np.stack([np_softmax(t_protos @ _unit(x) / tau) for x in np.asarray(targets, np.float64)])
  t = t ** (1.0 / sharpen_t)
  t = t / t.sum(axis=1, keepdims=True)
  if use_sinkhorn:
    q = t.T.copy()
    k, b = q.shape
    q /= q.sum()
    for _ in range(3):
      q /= q.sum(axis=1, keepdims=True)
      q /= k
      q /= q.sum(axis=0, keepdims=True)
      q /= b
    t = (q * b).T
  t = np.concatenate([t] * num_views, axis=0)
  ce = np.mean(np.sum(-t * np.log(probs), axis=1))
  avg = probs.mean(axis=0)
  rloss = np.sum(avg * np.log(avg)) + math.log(len(avg))
  return ce + me_max_weight * rloss


def reference_koleo(z):
  """DINOv2 KoLeoLoss: F.normalize(eps=1e-8), NN by inner product (diagonal excluded),
  PairwiseDistance(eps=1e-8) and -log(d + 1e-8)."""
  x = np.stack([_unit(v, 1e-8) for v in np.asarray(z, np.float64)])
  total = 0.0
  for i in range(len(x)):
    j = max((k for k in range(len(x)) if k != i), key=lambda k: x[i] @ x[k])
    total += -np.log(np.linalg.norm(x[i] - x[j] + 1e-8) + 1e-8)
  return total / len(x)


def reference_distillation(student, teacher, temperature, squared=True):
  """SimCLRv2 add_kd_loss: T^2 * softmax_cross_entropy(softmax(t/T), s/T), mean."""
  total = 0.0
  for s, t in zip(np.asarray(student, np.float64), np.asarray(teacher, np.float64)):
    total += -np.sum(np_softmax(t / temperature) * np.log(np_softmax(s / temperature)))
  return total / len(student) * (temperature**2 if squared else 1.0)


def random_logits(seed, shape, scale=2.0):
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def check_center_update_sharded(update, teacher, center, spec):
  expected = jax.jit(update)(center, teacher)
  for axis_type in (AxisType.Explicit, AxisType.Auto):
    mesh = make_mesh(axis_type)
    with jax.set_mesh(mesh):
      assert_close(jax.jit(update)(center, jax.device_put(teacher, NamedSharding(mesh, spec))),
                   expected)
  mesh = make_mesh(AxisType.Explicit)
  mapped = jax.shard_map(functools.partial(update, axis_name="data"), mesh=mesh,
                         in_specs=(P(), spec), out_specs=P())
  with jax.set_mesh(mesh):
    assert_close(jax.jit(mapped)(center, jax.device_put(teacher, NamedSharding(mesh, spec))),
                 expected)


# --- DINO -----------------------------------------------------------------------------------------

dino_jit = jax.jit(dino)


def random_dino(seed, batch, dim=5, student_views=4, teacher_views=2):
  student = random_logits(seed, (student_views, batch, dim))
  teacher = random_logits(seed + 1, (teacher_views, batch, dim))
  center = random_logits(seed + 2, (dim,), scale=0.5)
  return student, teacher, center


def test_dino_closed_form_one_hot_teacher():
  # Teacher views are (nearly exactly) one-hot on classes 0 and 1; only the cross pairs count.
  teacher = jnp.array([[[50.0, 0.0, 0.0]], [[0.0, 50.0, 0.0]]])
  student = jnp.array([[[0.1, 0.0, 0.0]], [[0.0, 0.0, 0.1]]])  # same-view pairs would be easy
  expected = 0.5 * (-math.log(np_softmax([0.0, 0.0, 1.0])[0])
                    - math.log(np_softmax([1.0, 0.0, 0.0])[1]))
  np.testing.assert_allclose(dino_jit(student, teacher, jnp.zeros(3)), expected, rtol=1e-6)


@pytest.mark.parametrize("views", [(2, 2), (4, 2), (3, 1)])
def test_dino_matches_reference(views):
  student, teacher, center = random_dino(views[0], 3, student_views=views[0],
                                         teacher_views=views[1])
  check_against_reference(
      lambda s, t, c: dino(s, t, c, student_temp=0.1, teacher_temp=0.04),
      lambda s, t, c: reference_dino(s, t, c, 0.1, 0.04), [student, teacher, center],
      grad_argnums=(0,), grad_rtol=1e-4)


def test_dino_stop_gradient_center_and_invariances():
  student, teacher, center = random_dino(5, 6)
  g_t, g_c = jax.jit(jax.grad(dino, argnums=(1, 2)))(student, teacher, center)
  np.testing.assert_array_equal(g_t, 0.0)
  np.testing.assert_array_equal(g_c, 0.0)
  value = dino_jit(student, teacher, center)
  # The center is subtracted from the teacher logits.
  np.testing.assert_allclose(dino_jit(student, teacher - center, jnp.zeros(5)), value, rtol=1e-6)
  perm = np.random.default_rng(0).permutation(6)
  np.testing.assert_allclose(dino_jit(student[:, perm], teacher[:, perm], center), value,
                             rtol=1e-6)
  np.testing.assert_allclose(dino_jit(student + 3.0, teacher - 2.0, center), value, rtol=1e-5)
  # Local crops may come in any order; swapping both global views together changes nothing.
  np.testing.assert_allclose(dino_jit(student[[0, 1, 3, 2]], teacher, center), value, rtol=1e-6)
  np.testing.assert_allclose(dino_jit(student[[1, 0, 2, 3]], teacher[[1, 0]], center), value,
                             rtol=1e-6)
  # Guards: the wrong image pairing, or counting the same-view pairs, changes the value.
  assert abs(float(dino_jit(student, teacher[:, np.roll(perm, 1)], center)) - float(value)) > 1e-2
  assert abs(float(dino_jit(student[[1, 0, 2, 3]], teacher, center)) - float(value)) > 1e-3


@pytest.mark.parametrize("global_batch", [16, 8])
def test_dino_sharded(global_batch):
  student, teacher, center = random_dino(10 + global_batch, global_batch, dim=4, student_views=3)
  check_sharded_equivalence(dino, [student, teacher, center],
                            specs=[VIEW_BATCH, VIEW_BATCH, REPLICATED])


def test_dino_center_update_matches_reference_and_shards():
  _, teacher, center = random_dino(20, 16)
  expected = 0.9 * center + 0.1 * np.mean(teacher.reshape(-1, 5), axis=0)
  assert_close(dino_center_update(center, teacher), expected)
  check_center_update_sharded(dino_center_update, teacher, center, VIEW_BATCH)


def test_dino_low_precision_and_zero_logits():
  student, teacher, center = random_dino(21, 8)
  value = dino_jit(jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16),
                   jnp.asarray(center, jnp.bfloat16))
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, dino_jit(student, teacher, center), rtol=3e-2)
  zeros = jnp.zeros((3, 2, 4))
  value, grad = jax.jit(jax.value_and_grad(dino))(zeros, zeros[:2], jnp.zeros(4))
  np.testing.assert_allclose(value, math.log(4), rtol=1e-6)
  assert np.all(np.isfinite(grad))


def test_dino_errors():
  s, t, c = jnp.ones((3, 2, 4)), jnp.ones((2, 2, 4)), jnp.zeros(4)
  with pytest.raises(ValueError, match=r"student_logits must have rank 3 with shape "
                                       r"\[student_views, batch, dim\].*\(2, 4\)"):
    dino(jnp.ones((2, 4)), t, c)
  with pytest.raises(ValueError, match=r"teacher_logits must have shape \[teacher_views, 2, 4\].*"
                                       r"teacher_logits with shape \(2, 3, 4\)"):
    dino(s, jnp.ones((2, 3, 4)), c)
  with pytest.raises(ValueError, match=r"at least 3 student views.*\(2, 2, 4\)"):
    dino(t, jnp.ones((3, 2, 4)), c)
  with pytest.raises(ValueError, match=r"number of \(teacher view, other student view\) pairs.*"
                                       r"must be at least 1"):
    dino(s[:1], t[:1], c)
  with pytest.raises(ValueError, match=r"center must have shape \[dim\] = \(4,\).*\(1, 4\)"):
    dino(s, t, jnp.zeros((1, 4)))
  with pytest.raises(ValueError, match=r"teacher_temp must be > 0, but got 0.0"):
    dino(s, t, c, teacher_temp=0.0)
  with pytest.raises(ValueError, match=r"student_temp must be > 0"):
    dino(s, t, c, student_temp=-1.0)
  with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], but got 1.5"):
    dino_center_update(c, t, momentum=1.5)


# --- iBOT -----------------------------------------------------------------------------------------

ibot_jit = jax.jit(ibot_patch)


def random_ibot(seed, batch, views=2, patches=3, dim=4):
  rng = np.random.default_rng(seed)
  student = random_logits(seed, (views, batch, patches, dim))
  teacher = random_logits(seed + 1, (views, batch, patches, dim))
  mask = rng.random((views, batch, patches)) < 0.5
  mask[0, 0] = False  # an image with nothing masked: contributes 0 but counts in the mean
  center = random_logits(seed + 2, (dim,), scale=0.5)
  return student, teacher, mask, center


def test_ibot_closed_form():
  student = jnp.zeros((1, 2, 2, 3))  # uniform student: log 3 per masked patch
  teacher = jnp.ones((1, 2, 2, 3))
  mask = jnp.array([[[True, True], [True, False]]])
  # Image 1: (log 3 + log 3) / 2; image 2: log 3 / 1; mean over images.
  np.testing.assert_allclose(ibot_jit(student, teacher, mask, jnp.zeros(3)), math.log(3),
                             rtol=1e-6)
  np.testing.assert_allclose(ibot_jit(student, teacher, jnp.zeros((1, 2, 2), bool),
                                      jnp.zeros(3)), 0.0)


def test_ibot_matches_reference():
  student, teacher, mask, center = random_ibot(30, 3)
  check_against_reference(
      lambda s, t, c: ibot_patch(s, t, mask, c),
      lambda s, t, c: reference_ibot_patch(s, t, mask, c, 0.1, 0.07), [student, teacher, center],
      grad_argnums=(0,), grad_rtol=1e-4)


def test_ibot_invariances_and_guards():
  student, teacher, mask, center = random_ibot(31, 4)
  value = ibot_jit(student, teacher, mask, center)
  perm = np.random.default_rng(1).permutation(3)  # patches
  np.testing.assert_allclose(
      ibot_jit(student[:, :, perm], teacher[:, :, perm], mask[:, :, perm], center), value,
      rtol=1e-6)
  bperm = np.random.default_rng(2).permutation(4)
  np.testing.assert_allclose(
      ibot_jit(student[:, bperm], teacher[:, bperm], mask[:, bperm], center), value, rtol=1e-6)
  # Unmasked patches do not matter; masked ones and their pairing do.
  changed = student.copy()
  changed[~mask] = 100.0
  np.testing.assert_allclose(ibot_jit(changed, teacher, mask, center), value, rtol=1e-6)
  assert abs(float(ibot_jit(student, teacher[:, :, np.roll(np.arange(3), 1)], mask, center))
             - float(value)) > 1e-2
  g_t, g_c = jax.jit(jax.grad(ibot_patch, argnums=(1, 3)))(student, teacher, mask, center)
  np.testing.assert_array_equal(g_t, 0.0)
  np.testing.assert_array_equal(g_c, 0.0)


@pytest.mark.parametrize("global_batch", [16, 8])
def test_ibot_sharded(global_batch):
  student, teacher, mask, center = random_ibot(40 + global_batch, global_batch, dim=3)
  check_sharded_equivalence(ibot_patch, [student, teacher, mask, center],
                            specs=[VIEW_BATCH, VIEW_BATCH, VIEW_BATCH, REPLICATED])


def test_ibot_center_update_matches_reference_and_shards():
  _, teacher, _, center = random_ibot(41, 16)
  per_image = teacher.mean(axis=2).reshape(-1, 4)  # mean over patches, then over V*B images
  assert_close(ibot_patch_center_update(center, teacher), 0.9 * center + 0.1 * per_image.mean(0))
  check_center_update_sharded(ibot_patch_center_update, teacher, center, VIEW_BATCH)


def test_ibot_low_precision_and_errors():
  student, teacher, mask, center = random_ibot(42, 4)
  value = ibot_jit(jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16), mask,
                   center)
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, ibot_jit(student, teacher, mask, center), rtol=3e-2)
  with pytest.raises(ValueError, match=r"mask must have shape \[views, batch, patches\] = "
                                       r"\(2, 4, 3\).*mask with shape \(2, 4\)"):
    ibot_patch(student, teacher, mask[..., 0], center)
  with pytest.raises(ValueError, match=r"teacher_patch_logits must have the same shape as "
                                       r"student_patch_logits"):
    ibot_patch(student, teacher[:1], mask, center)
  with pytest.raises(ValueError, match=r"student_patch_logits must have rank 4 with shape "
                                       r"\[views, batch, patches, dim\]"):
    ibot_patch(student[0], teacher, mask, center)
  with pytest.raises(ValueError, match=r"center must have shape \[dim\] = \(4,\)"):
    ibot_patch(student, teacher, mask, jnp.zeros(3))
  with pytest.raises(ValueError, match=r"teacher_temp must be > 0"):
    ibot_patch(student, teacher, mask, center, teacher_temp=0)
  with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
    ibot_patch_center_update(center, teacher, momentum=-0.1)


# --- MSN ------------------------------------------------------------------------------------------


def msn_loss(anchors, targets, prototypes, axis_name=None, **kwargs):
  return msn(anchors, targets, prototypes, axis_name=axis_name, **kwargs)[0]


msn_jit = jax.jit(msn, static_argnames=("use_sinkhorn",))
msn_loss_jit = jax.jit(msn_loss, static_argnames=("use_sinkhorn",))


def random_msn(seed, batch, views=2, dim=4, num_proto=5):
  rng = np.random.default_rng(seed)
  prototypes = rng.normal(size=(num_proto, dim)).astype(np.float32)
  targets = rng.normal(size=(batch, dim)).astype(np.float32)
  anchors = (targets[None] + 0.8 * rng.normal(size=(views, batch, dim))).astype(np.float32)
  return anchors, targets, prototypes


@pytest.mark.parametrize("use_sinkhorn", [True, False])
def test_msn_matches_reference(use_sinkhorn):
  anchors, targets, prototypes = random_msn(50, 4)
  fixed = np.asarray(prototypes, np.float64)  # the targets take no gradient to the prototypes
  check_against_reference(
      functools.partial(msn_loss, use_sinkhorn=use_sinkhorn),
      lambda a, t, c: reference_msn(a, t, c, use_sinkhorn=use_sinkhorn, target_prototypes=fixed),
      [anchors, targets, prototypes], grad_argnums=(0, 2), rtol=2e-5, grad_rtol=2e-4)


def test_msn_aux_terms_and_weights():
  anchors, targets, prototypes = random_msn(51, 6)
  loss, aux = msn_jit(anchors, targets, prototypes)
  np.testing.assert_allclose(loss, aux["cross_entropy"] + aux["me_max"], rtol=1e-6)
  assert float(aux["me_max"]) >= 0.0 and float(aux["entropy"]) > 0.0
  no_reg, _ = jax.jit(functools.partial(msn, me_max_weight=0.0))(anchors, targets, prototypes)
  np.testing.assert_allclose(no_reg, aux["cross_entropy"], rtol=1e-6)
  np.testing.assert_allclose(
      no_reg, reference_msn(anchors, targets, prototypes, me_max_weight=0.0), rtol=1e-5)


def test_msn_invariances_and_guards():
  anchors, targets, prototypes = random_msn(52, 6)
  value = msn_loss_jit(anchors, targets, prototypes)
  perm = np.random.default_rng(3).permutation(6)
  np.testing.assert_allclose(msn_loss_jit(anchors[:, perm], targets[perm], prototypes), value,
                             rtol=1e-5)
  pperm = np.random.default_rng(4).permutation(5)
  np.testing.assert_allclose(msn_loss_jit(anchors, targets, prototypes[pperm]), value,
                             rtol=1e-5)
  np.testing.assert_allclose(msn_loss_jit(3 * anchors, 0.5 * targets, 7 * prototypes), value,
                             rtol=1e-5)
  np.testing.assert_allclose(msn_loss_jit(anchors[::-1], targets, prototypes), value, rtol=1e-5)
  wrong = msn_loss_jit(anchors, targets[np.roll(perm, 1)], prototypes)
  assert abs(float(wrong) - float(value)) > 1e-2
  # Sinkhorn changes the targets (the batch is far from balanced over 5 prototypes).
  assert abs(float(msn_loss_jit(anchors, targets, prototypes, use_sinkhorn=False))
             - float(value)) > 1e-3
  g_t = jax.jit(jax.grad(msn_loss, argnums=1))(anchors, targets, prototypes)
  np.testing.assert_array_equal(g_t, 0.0)


@pytest.mark.parametrize("global_batch", [16, 8])
def test_msn_sharded(global_batch):
  anchors, targets, prototypes = random_msn(60 + global_batch, global_batch, dim=3, num_proto=4)
  check_sharded_equivalence(msn_loss, [anchors, targets, prototypes],
                            specs=[VIEW_BATCH, BATCH, REPLICATED], grad_argnums=(0, 2))


def test_msn_low_precision_and_zero_vectors():
  anchors, targets, prototypes = random_msn(53, 8, dim=8)
  value, _ = msn_jit(jnp.asarray(anchors, jnp.bfloat16), jnp.asarray(targets, jnp.bfloat16),
                     jnp.asarray(prototypes, jnp.bfloat16))
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, msn_loss_jit(anchors, targets, prototypes),
                             rtol=5e-2)
  anchors[0, 1] = 0.0
  targets[2] = 0.0
  value, grads = jax.jit(jax.value_and_grad(msn_loss, argnums=(0, 2)))(anchors, targets,
                                                                      prototypes)
  np.testing.assert_allclose(value, reference_msn(anchors, targets, prototypes), rtol=1e-5)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_msn_errors():
  a, t, c = jnp.ones((2, 4, 3)), jnp.ones((4, 3)), jnp.ones((5, 3))
  with pytest.raises(ValueError, match=r"target_views must have shape \[batch, dim\] = \(4, 3\).*"
                                       r"target_views with shape \(3, 3\)"):
    msn(a, jnp.ones((3, 3)), c)
  with pytest.raises(ValueError, match=r"prototypes must have shape \[num_prototypes, 3\].*"
                                       r"\(5, 2\)"):
    msn(a, t, jnp.ones((5, 2)))
  with pytest.raises(ValueError, match=r"anchor_views must have rank 3 with shape "
                                       r"\[views, batch, dim\]"):
    msn(t, t, c)
  with pytest.raises(ValueError, match=r"global batch size \(target_views.shape\[0\], "
                                       r"target_views of shape \(1, 3\)\) must be at least 2"):
    msn(a[:, :1], t[:1], c)
  with pytest.raises(ValueError, match=r"target_temperature must be > 0"):
    msn(a, t, c, target_temperature=0.0)
  with pytest.raises(ValueError, match=r"me_max_weight must be >= 0, but got -1.0"):
    msn(a, t, c, me_max_weight=-1.0)
  with pytest.raises(ValueError, match=r"sinkhorn_iterations must be a positive int, but got 0"):
    msn(a, t, c, sinkhorn_iterations=0)


# --- KoLeo ----------------------------------------------------------------------------------------

koleo_jit = jax.jit(koleo)


def test_koleo_closed_form_regular_simplex():
  # The 4 vertices of a regular tetrahedron: every nearest-neighbour distance is sqrt(8/3).
  z = jnp.array([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
  np.testing.assert_allclose(koleo_jit(z), -math.log(math.sqrt(8 / 3)), rtol=1e-5)


@pytest.mark.parametrize("batch,dim", [(2, 3), (7, 4)])
def test_koleo_matches_reference(batch, dim):
  z = random_logits(70 + batch, (batch, dim), scale=1.0)
  check_against_reference(koleo, reference_koleo, [z], grad_rtol=1e-4)


def test_koleo_invariances_and_guard():
  z = random_logits(71, (9, 4), scale=1.0)
  value = koleo_jit(z)
  perm = np.random.default_rng(5).permutation(9)
  np.testing.assert_allclose(koleo_jit(z[perm]), value, rtol=1e-5)
  scale = np.random.default_rng(6).uniform(0.1, 10, size=(9, 1)).astype(np.float32)
  np.testing.assert_allclose(koleo_jit(scale * z), value, rtol=1e-4)
  rotation, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(4, 4)))
  np.testing.assert_allclose(koleo_jit((z @ rotation).astype(np.float32)), value, rtol=1e-4)
  # Moving one vector next to another lowers its nearest-neighbour distance: the loss grows.
  close = z.copy()
  close[0] = z[1] + 0.01
  assert float(koleo_jit(close)) > float(value) + 0.1


@pytest.mark.parametrize("global_batch", [16, 8])
def test_koleo_sharded(global_batch):
  check_sharded_equivalence(koleo, [random_logits(80 + global_batch, (global_batch, 3), 1.0)])


def test_koleo_low_precision_zero_vectors_and_errors():
  z = random_logits(72, (8, 8), scale=1.0)
  value = koleo_jit(jnp.asarray(z, jnp.bfloat16))
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, koleo_jit(z), rtol=3e-2)
  zeros = jnp.zeros((3, 4))
  value, grad = jax.jit(jax.value_and_grad(koleo))(zeros)
  np.testing.assert_allclose(value, -math.log(2e-8 + 1e-8), rtol=1e-3)  # d = 1e-8 * sqrt(4)
  assert np.all(np.isfinite(grad))
  with pytest.raises(ValueError, match=r"global batch size \(z.shape\[0\], z of shape \(1, 4\)\) "
                                       r"must be at least 2"):
    koleo(jnp.ones((1, 4)))
  with pytest.raises(ValueError, match=r"z must have rank 2 with shape \[batch, dim\]"):
    koleo(jnp.ones(4))


# --- SimCLRv2 knowledge distillation -------------------------------------------------------------

distill_jit = jax.jit(knowledge_distillation, static_argnames=("scale_by_temperature_squared",))


def test_distillation_closed_form():
  # A one-hot teacher makes it the cross-entropy of the student at T = 1.
  student = jnp.array([[1.0, 2.0, 3.0]])
  teacher = jnp.array([[100.0, 0.0, 0.0]])
  np.testing.assert_allclose(distill_jit(student, teacher), -math.log(np_softmax([1, 2, 3])[0]),
                             rtol=1e-6)
  # The T^2 factor of the released code.
  np.testing.assert_allclose(distill_jit(student, teacher, temperature=2.0),
                             4 * distill_jit(student, teacher, temperature=2.0,
                                             scale_by_temperature_squared=False), rtol=1e-6)


@pytest.mark.parametrize("temperature,squared", [(1.0, True), (2.5, True), (0.5, False)])
def test_distillation_matches_reference(temperature, squared):
  student = random_logits(90, (5, 4))
  teacher = random_logits(91, (5, 4))
  check_against_reference(
      functools.partial(knowledge_distillation, temperature=temperature,
                        scale_by_temperature_squared=squared),
      functools.partial(reference_distillation, temperature=temperature, squared=squared),
      [student, teacher])


def test_distillation_invariances_minimum_and_guard():
  student = random_logits(92, (6, 4))
  teacher = random_logits(93, (6, 4))
  value = distill_jit(student, teacher, temperature=2.0)
  perm = np.random.default_rng(8).permutation(6)
  np.testing.assert_allclose(distill_jit(student[perm], teacher[perm], temperature=2.0), value,
                             rtol=1e-6)
  np.testing.assert_allclose(distill_jit(student + 5.0, teacher - 1.0, temperature=2.0), value,
                             rtol=1e-5)
  # Minimised (gradient zero) when the student equals the teacher.
  assert float(distill_jit(teacher, teacher, temperature=2.0)) < float(value)
  grad = jax.jit(jax.grad(knowledge_distillation))(teacher, teacher)
  np.testing.assert_allclose(grad, 0.0, atol=1e-7)
  assert abs(float(distill_jit(student, teacher[np.roll(perm, 1)], temperature=2.0))
             - float(value)) > 1e-2
  np.testing.assert_array_equal(
      jax.jit(jax.grad(knowledge_distillation, argnums=1))(student, teacher), 0.0)


@pytest.mark.parametrize("global_batch", [16, 8])
def test_distillation_sharded(global_batch):
  check_sharded_equivalence(functools.partial(knowledge_distillation, temperature=2.0),
                            [random_logits(94, (global_batch, 3)),
                             random_logits(95, (global_batch, 3))])


def test_distillation_low_precision_zero_logits_and_errors():
  student = random_logits(96, (8, 6))
  teacher = random_logits(97, (8, 6))
  value = distill_jit(jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16))
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, distill_jit(student, teacher), rtol=3e-2)
  np.testing.assert_allclose(distill_jit(jnp.zeros((2, 6)), teacher[:2]), math.log(6), rtol=1e-6)
  with pytest.raises(ValueError, match=r"teacher_logits must have the same shape as "
                                       r"student_logits: expected \(8, 6\)"):
    knowledge_distillation(student, teacher[:, :5])
  with pytest.raises(ValueError, match=r"student_logits must have rank 2 with shape "
                                       r"\[batch, num_classes\]"):
    knowledge_distillation(student[None], teacher)
  with pytest.raises(ValueError, match=r"temperature must be > 0, but got -2.0"):
    knowledge_distillation(student, teacher, temperature=-2.0)
