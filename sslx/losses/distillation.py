"""Self-distillation losses (DINO, iBOT, MSN), the KoLeo regulariser and SimCLRv2 distillation.

The teacher's outputs are targets: every loss here applies stop-gradient to them itself. State
that the papers update outside the gradient (DINO's and iBOT's centers) is updated by separate
pure functions, ``dino_center_update`` and ``ibot_patch_center_update``.
"""

import math
import numbers
from collections.abc import Hashable

import jax
import jax.numpy as jnp

from sslx.losses import _checks
from sslx.losses._common import (
    as_float32, batch_mean, batch_offset, gather_batch, l2_normalize, take_rows)

_HIGHEST = jax.lax.Precision.HIGHEST

# DINOv2's KoLeoLoss normalises with F.normalize(eps=1e-8), measures distances with
# nn.PairwiseDistance(eps=1e-8) (which adds eps to the difference) and takes log(d + 1e-8).
_KOLEO_EPS = 1e-8

# Floor for sums that divide in Sinkhorn: only reached if every probability of a prototype (or a
# sample) underflows, where the authors' code would produce 0/0 = NaN.
_TINY = float(jnp.finfo(jnp.float32).tiny)


def _check_center(center, dim: int, logits_name: str, logits_shape) -> None:
  if tuple(jnp.shape(center)) != (dim,):
    raise ValueError(f"center must have shape [dim] = ({dim},), matching {logits_name} of shape "
                     f"{tuple(logits_shape)}, but got center with shape "
                     f"{tuple(jnp.shape(center))}.")


def dino(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    center: jax.Array,
    *,
    student_temp: float | jax.Array = 0.1,
    teacher_temp: float | jax.Array = 0.04,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""DINO self-distillation: cross-entropy between teacher and student views of an image.

  From Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
  (arXiv:2104.14294), eq. (3) and Algorithm 1, following ``DINOLoss`` of facebookresearch/dino.
  With ``V_s`` student views (the ``V_t`` global views first, then the local crops), ``V_t``
  teacher views (the global views), the center ``c`` and temperatures ``t_s``, ``t_t``::

      P_t[q, i] = sg(softmax((teacher_logits[q, i] - c) / t_t))
      P_s[v, i] = softmax(student_logits[v, i] / t_s)
      L = 1/|S| * sum_{(q, v) in S} 1/B * sum_i  -sum_k P_t[q, i, k] log P_s[v, i, k]
      S = {(q, v) : 0 <= q < V_t, 0 <= v < V_s, v != q}

  Student view ``v < V_t`` is the same crop as teacher view ``v``; those same-view pairs are
  skipped, as in the authors' code. DINO warms ``t_t`` up from 0.04 to 0.04-0.07 over the first
  epochs; pass the scheduled value (a traced array is accepted). Update the center with
  ``dino_center_update`` after the step, from the same ``teacher_logits``.

  Args:
    student_logits: ``[V_s, b, K]`` student head outputs; views ``0 .. V_t - 1`` are the global
      crops in the teacher's order. All views must share ``K`` (and ``b``).
    teacher_logits: ``[V_t, b, K]`` teacher head outputs of the global crops, ``V_t <= V_s``.
      No gradient flows into them.
    center: ``[K]`` the running center ``c`` (from ``dino_center_update``; start at zeros).
    student_temp: ``t_s`` > 0 (DINO: 0.1).
    teacher_temp: ``t_t`` > 0 (DINO: 0.04 to 0.07).
    axis_name: ``None`` for global arrays, or the mapped axis inside ``jax.shard_map``, where
      the arrays are sharded along their batch dimension (axis 1; ``in_specs=P(None, axis)``)
      and the per-pair means are ``pmean``-ed over the axis. Shards must have equal ``b``.

  Returns:
    A float32 scalar, ``L`` over the global batch (inputs are cast to float32; the softmaxes are
    computed stably with ``log_softmax``, so any finite logits give a finite loss and gradient,
    including all-zero ones: then ``L = log K``). Gradients under ``jax.shard_map`` behave as for
    ``nt_xent`` (``check_vma=True``: the in-body gradient is ``dL/d(local shard)``).

  Raises:
    ValueError: if the logits are not rank 3, their ``b``/``K`` differ, ``V_t > V_s``, there is
      no pair (``V_s = 1``), ``center`` is not ``[K]``, or a temperature is a number <= 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import dino
    >>> student = jnp.zeros((3, 2, 4))  # uniform student: cross-entropy log(4) with any target
    >>> teacher = jnp.ones((2, 2, 4))
    >>> round(float(dino(student, teacher, jnp.zeros(4))), 4)
    1.3863
  """
  _checks.check_rank("student_logits", student_logits, 3, "[student_views, batch, dim]")
  _checks.check_rank("teacher_logits", teacher_logits, 3, "[teacher_views, batch, dim]")
  num_student, batch, dim = student_logits.shape
  num_teacher = teacher_logits.shape[0]
  if tuple(teacher_logits.shape[1:]) != (batch, dim):
    raise ValueError(
        f"teacher_logits must have shape [teacher_views, {batch}, {dim}] (batch and dim of "
        f"student_logits with shape {tuple(student_logits.shape)}), but got teacher_logits with "
        f"shape {tuple(teacher_logits.shape)}.")
  if num_teacher > num_student:
    raise ValueError(
        f"student_logits must hold every teacher view first: expected at least {num_teacher} "
        f"student views (teacher_logits of shape {tuple(teacher_logits.shape)}), but got "
        f"student_logits with shape {tuple(student_logits.shape)}.")
  num_pairs = num_teacher * num_student - num_teacher
  _checks.check_min_size(
      f"the number of (teacher view, other student view) pairs (teacher_logits of shape "
      f"{tuple(teacher_logits.shape)}, student_logits of shape {tuple(student_logits.shape)})",
      num_pairs, 1, "same-view pairs are skipped")
  _check_center(center, dim, "teacher_logits", teacher_logits.shape)
  _checks.check_positive("student_temp", student_temp)
  _checks.check_positive("teacher_temp", teacher_temp)

  student_logits, teacher_logits, center = as_float32(student_logits, teacher_logits, center)
  log_student = jax.nn.log_softmax(student_logits / student_temp, axis=-1)  # [V_s, b, K]
  teacher = jax.lax.stop_gradient(
      jax.nn.softmax((teacher_logits - center) / teacher_temp, axis=-1))  # [V_t, b, K]
  cross_entropy = -jnp.einsum("qbk,vbk->qvb", teacher, log_student, precision=_HIGHEST)
  pairs = jnp.arange(num_teacher)[:, None] != jnp.arange(num_student)[None, :]  # [V_t, V_s]
  # Averaging each pair's batch mean over pairs is the batch mean of the per-example average.
  per_example = jnp.sum(jnp.where(pairs[:, :, None], cross_entropy, 0.0), axis=(0, 1))
  return batch_mean(per_example / num_pairs, axis_name)


def dino_center_update(
    center: jax.Array,
    teacher_logits: jax.Array,
    *,
    momentum: float | jax.Array = 0.9,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""DINO's center update: an EMA of the teacher logits' mean over views and the global batch.

  From Caron et al., ICCV 2021 (arXiv:2104.14294), eq. (4), as ``DINOLoss.update_center`` of
  facebookresearch/dino (sum all-reduced over devices, divided by the global count)::

      c <- m * c + (1 - m) * 1/(V_t B) * sum_{q, i} teacher_logits[q, i]

  Args:
    center: ``[K]`` the current center.
    teacher_logits: ``[V_t, b, K]`` the teacher outputs given to ``dino`` this step.
    momentum: ``m`` in [0, 1] (DINO: 0.9).
    axis_name: ``None`` for global arrays, or the mapped axis inside ``jax.shard_map`` (the
      batch mean is ``pmean``-ed, so every device gets the same center).

  Returns:
    The new ``[K]`` float32 center, with no gradient.

  Raises:
    ValueError: if ``teacher_logits`` is not rank 3, ``center`` is not ``[K]``, or ``momentum``
      is a number outside [0, 1].

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import dino_center_update
    >>> teacher = jnp.array([[[1.0, 0.0]], [[3.0, 2.0]]])  # 2 views of one image
    >>> dino_center_update(jnp.zeros(2), teacher, momentum=0.5).tolist()
    [1.0, 0.5]
  """
  _checks.check_rank("teacher_logits", teacher_logits, 3, "[teacher_views, batch, dim]")
  _check_center(center, teacher_logits.shape[-1], "teacher_logits", teacher_logits.shape)
  _checks.check_unit_interval("momentum", momentum)
  center, teacher_logits = as_float32(center, teacher_logits)
  batch_center = batch_mean(jnp.mean(teacher_logits, axis=0), axis_name)
  return jax.lax.stop_gradient(center * momentum + batch_center * (1.0 - momentum))


def ibot_patch(
    student_patch_logits: jax.Array,
    teacher_patch_logits: jax.Array,
    mask: jax.Array,
    center: jax.Array,
    *,
    student_temp: float | jax.Array = 0.1,
    teacher_temp: float | jax.Array = 0.07,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""iBOT's masked image modelling term: patch-level self-distillation on masked patches.

  From Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022
  (arXiv:2111.07832), Section 3, following the patch part of ``iBOTLoss`` in facebookresearch/ibot.
  The student sees global view ``v`` with the patches of ``mask[v]`` masked, the teacher sees it
  whole; for patch ``n`` of image ``i`` with center ``c2``::

      P_t[v, i, n] = sg(softmax((teacher_patch_logits[v, i, n] - c2) / t_t))
      l[v, i, n]   = -sum_k P_t[v, i, n, k] log softmax(student_patch_logits[v, i, n] / t_s)_k
      L_i,v = sum_n mask[v, i, n] l[v, i, n] / max(sum_n mask[v, i, n], 1)
      L     = 1/V * sum_v 1/B * sum_i L_i,v

  Only same-view pairs are used (the [CLS] cross-view term is ``dino``). As in the authors'
  code, an image with no masked patch contributes 0 but still counts in the mean over images
  (iBOT masks only a fraction of the images). Multiply by iBOT's ``lambda2`` (1.0) yourself.

  Args:
    student_patch_logits: ``[V, b, N, K]`` student head outputs of the ``N`` patch tokens of the
      ``V`` masked global views.
    teacher_patch_logits: ``[V, b, N, K]`` teacher head outputs of the same views unmasked; no
      gradient flows into them.
    mask: ``[V, b, N]`` bool (or 0/1) masks, True where the student's patch was masked.
    center: ``[K]`` the patch center ``c2`` (from ``ibot_patch_center_update``).
    student_temp: ``t_s`` > 0 (iBOT: 0.1).
    teacher_temp: ``t_t`` > 0 (iBOT's patch temperature: 0.04 warmed up to 0.07).
    axis_name: ``None`` for global arrays, or the mapped axis inside ``jax.shard_map``, the
      arrays sharded along the batch (axis 1; ``in_specs=P(None, axis)``); the mean over images
      is then ``pmean``-ed (shards must have equal ``b``).

  Returns:
    A float32 scalar, ``L`` over the global batch; finite for any finite logits (computed with
    ``log_softmax``), 0 if nothing is masked.

  Raises:
    ValueError: on wrong ranks, if the logits' shapes differ, ``mask`` is not ``[V, b, N]``,
      ``center`` is not ``[K]``, or a temperature is a number <= 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import ibot_patch
    >>> student = jnp.zeros((1, 2, 3, 4))  # uniform student: log(4) per masked patch
    >>> teacher = jnp.ones((1, 2, 3, 4))
    >>> mask = jnp.array([[[True, False, True], [False, False, False]]])  # image 2: no mask
    >>> round(float(ibot_patch(student, teacher, mask, jnp.zeros(4))), 4)  # (log 4 + 0) / 2
    0.6931
  """
  _checks.check_rank("student_patch_logits", student_patch_logits, 4,
                     "[views, batch, patches, dim]")
  _checks.check_rank("teacher_patch_logits", teacher_patch_logits, 4,
                     "[views, batch, patches, dim]")
  _checks.check_same_shape("student_patch_logits", student_patch_logits,
                           "teacher_patch_logits", teacher_patch_logits)
  views, batch, patches, dim = student_patch_logits.shape
  if tuple(jnp.shape(mask)) != (views, batch, patches):
    raise ValueError(
        f"mask must have shape [views, batch, patches] = {(views, batch, patches)}, matching "
        f"student_patch_logits of shape {tuple(student_patch_logits.shape)}, but got mask with "
        f"shape {tuple(jnp.shape(mask))}.")
  _check_center(center, dim, "teacher_patch_logits", teacher_patch_logits.shape)
  _checks.check_positive("student_temp", student_temp)
  _checks.check_positive("teacher_temp", teacher_temp)

  student, teacher, center, mask = as_float32(
      student_patch_logits, teacher_patch_logits, center, mask)
  mask = jax.lax.stop_gradient(mask)
  log_student = jax.nn.log_softmax(student / student_temp, axis=-1)
  target = jax.lax.stop_gradient(jax.nn.softmax((teacher - center) / teacher_temp, axis=-1))
  per_patch = -jnp.sum(target * log_student, axis=-1)  # [V, b, N]
  per_image = (jnp.sum(per_patch * mask, axis=-1)
               / jnp.maximum(jnp.sum(mask, axis=-1), 1.0))  # [V, b]
  return batch_mean(jnp.mean(per_image, axis=0), axis_name)


def ibot_patch_center_update(
    center: jax.Array,
    teacher_patch_logits: jax.Array,
    *,
    momentum: float | jax.Array = 0.9,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""iBOT's patch center update: EMA of the teacher patch logits' mean (all patches).

  As ``iBOTLoss.update_center`` in facebookresearch/ibot: the mean over patches of each image
  (masked or not), then over views and the global batch (all-reduced), then an EMA::

      c2 <- m * c2 + (1 - m) * 1/(V B) * sum_{v, i} 1/N * sum_n teacher_patch_logits[v, i, n]

  Args:
    center: ``[K]`` the current patch center.
    teacher_patch_logits: ``[V, b, N, K]`` the teacher patch outputs given to ``ibot_patch``.
    momentum: ``m`` in [0, 1] (iBOT's ``center_momentum2``: 0.9).
    axis_name: ``None`` for global arrays, or the mapped axis inside ``jax.shard_map``.

  Returns:
    The new ``[K]`` float32 center, with no gradient.

  Raises:
    ValueError: if ``teacher_patch_logits`` is not rank 4, ``center`` is not ``[K]``, or
      ``momentum`` is a number outside [0, 1].

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import ibot_patch_center_update
    >>> teacher = jnp.array([[[[1.0, 0.0], [3.0, 0.0]]]])  # 1 view, 1 image, 2 patches
    >>> ibot_patch_center_update(jnp.ones(2), teacher, momentum=0.5).tolist()
    [1.5, 0.5]
  """
  _checks.check_rank("teacher_patch_logits", teacher_patch_logits, 4,
                     "[views, batch, patches, dim]")
  _check_center(center, teacher_patch_logits.shape[-1], "teacher_patch_logits",
                teacher_patch_logits.shape)
  _checks.check_unit_interval("momentum", momentum)
  center, teacher = as_float32(center, teacher_patch_logits)
  batch_center = batch_mean(jnp.mean(teacher, axis=(0, 2)), axis_name)
  return jax.lax.stop_gradient(center * momentum + batch_center * (1.0 - momentum))


def _sinkhorn(q: jax.Array, iterations: int, axis_name: Hashable | None) -> jax.Array:
  """MSN's ``distributed_sinkhorn`` on ``[b, K]`` assignment probabilities.

  Alternates making every prototype's total mass over the global batch equal and every sample's
  assignment sum to 1; the authors' extra divisions by the total, ``K`` and ``B`` rescale whole
  matrices that the next normalisation divides out, so only the final one (rows summing to 1)
  is kept.
  """
  for _ in range(iterations):
    per_prototype = q.sum(axis=0)
    if axis_name is not None:
      per_prototype = jax.lax.psum(per_prototype, axis_name)
    q = q / jnp.maximum(per_prototype, _TINY)
    q = q / jnp.maximum(q.sum(axis=1, keepdims=True), _TINY)
  return q


def msn(
    anchor_views: jax.Array,
    target_views: jax.Array,
    prototypes: jax.Array,
    *,
    temperature: float | jax.Array = 0.1,
    target_temperature: float | jax.Array = 0.025,
    me_max_weight: float | jax.Array = 1.0,
    use_sinkhorn: bool = True,
    sinkhorn_iterations: int = 3,
    axis_name: Hashable | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  r"""Masked Siamese Networks: anchor-to-target prototype assignment with ME-MAX.

  From Assran et al., "Masked Siamese Networks for Label-Efficient Learning", ECCV 2022
  (arXiv:2204.07141), Section 3, following ``init_msn_loss`` and ``msn_train.py`` of
  facebookresearch/msn with its released config (``configs/pretrain/msn_vits16.yaml``:
  ``temperature 0.1``, sharpening ``T = 0.25``, ``use_sinkhorn: true``, ``me_max: true``,
  ``memax_weight 1.0``, ``ent_weight 0``). With cosine similarities to the ``K`` prototypes::

      p[v, i]  = softmax(cos(anchor_views[v, i], prototypes) / tau)               (anchors)
      p+[i]    = sg(softmax(cos(target_views[i], prototypes) / tau_+))            (targets)
      p+       = Sinkhorn(p+)  over the global batch, 3 iterations (if use_sinkhorn)
      H        = 1/(V B) * sum_{v, i} -sum_k p+[i, k] log p[v, i, k]
      pbar     = 1/(V B) * sum_{v, i} p[v, i]             (mean over the global batch)
      ME-MAX   = log K - H(pbar) = log K + sum_k pbar_k log pbar_k      (>= 0)
      L        = H + lambda * ME-MAX

  The authors sharpen the target as ``p**(1/T)`` renormalised, with ``p`` at ``tau``; that is
  ``softmax(cos / (tau T))``, computed here directly with ``tau_+ = tau T = 0.025``. Their
  one-hot prototype labels (label smoothing 0) are the identity and are omitted. The
  cross-entropy uses ``log_softmax`` where the authors take ``log(p ** -p+)``, which overflows
  only when ``p`` underflows. MSN sums the prototypes' gradient over GPUs after DDP averaging
  the encoder's (``AllReduceSum`` of ``prototypes.grad``); here every gradient is the gradient
  of ``L``: scale the prototypes' learning rate to reproduce that.

  Args:
    anchor_views: ``[V, b, D]`` student (online) representations of the ``V`` masked anchor
      views (MSN: 1 random + 10 focal views) of ``b`` images.
    target_views: ``[b, D]`` target (EMA) encoder representations of the unmasked view; no
      gradient flows into them.
    prototypes: ``[K, D]`` learnable prototypes (replicated on every device); gradients reach
      them through the anchors only (the targets are computed without gradient, as in MSN).
    temperature: ``tau`` > 0 for the anchors (MSN: 0.1).
    target_temperature: ``tau_+`` > 0 for the targets (MSN: 0.1 * 0.25 = 0.025).
    me_max_weight: ``lambda`` >= 0 (MSN: 1.0); 0 disables the regulariser.
    use_sinkhorn: balance the targets with Sinkhorn-Knopp over the global batch (MSN: True).
    sinkhorn_iterations: number of Sinkhorn iterations (MSN: 3).
    axis_name: ``None`` for global arrays, or the mapped axis inside ``jax.shard_map``, with
      ``anchor_views`` sharded on axis 1 (``P(None, axis)``), ``target_views`` on axis 0 and the
      prototypes replicated (``P()``); Sinkhorn's prototype sums and ``pbar`` are then all-reduced
      and the cross-entropy ``pmean``-ed, as in MSN's ``AllReduce``.

  Returns:
    ``(loss, aux)``: the float32 scalar ``L``, and a dict of float32 scalars with
    ``"cross_entropy"`` (``H``), ``"me_max"`` (the regulariser before weighting) and
    ``"entropy"`` (the mean entropy of the anchor predictions, MSN's ``use_ent`` term, weighted
    0 in its config; a diagnostic, not part of ``L``). Norms are clamped at ``eps = 1e-6``:
    zero vectors give uniform assignments and a finite loss and gradient.

  Raises:
    ValueError: on wrong ranks, if ``b`` or ``D`` disagree, the global batch is smaller than 2
      (Sinkhorn and ME-MAX balance assignments across the batch), ``sinkhorn_iterations < 1``
      with ``use_sinkhorn``, a temperature is a number <= 0, or ``me_max_weight`` is a number
      < 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import msn
    >>> prototypes = jnp.eye(2)
    >>> anchors = jnp.zeros((1, 2, 2))  # zero vectors: uniform predictions, pbar uniform
    >>> targets = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> loss, aux = msn(anchors, targets, prototypes)
    >>> round(float(loss), 4), round(float(aux["me_max"]), 4)  # H = log 2, ME-MAX = 0
    (0.6931, 0.0)
  """
  _checks.check_rank("anchor_views", anchor_views, 3, "[views, batch, dim]")
  _checks.check_rank("target_views", target_views, 2, "[batch, dim]")
  _checks.check_rank("prototypes", prototypes, 2, "[num_prototypes, dim]")
  _, batch, dim = anchor_views.shape
  if tuple(target_views.shape) != (batch, dim):
    raise ValueError(
        f"target_views must have shape [batch, dim] = {(batch, dim)} (from anchor_views of shape "
        f"{tuple(anchor_views.shape)}), but got target_views with shape "
        f"{tuple(target_views.shape)}.")
  if prototypes.shape[1] != dim:
    raise ValueError(
        f"prototypes must have shape [num_prototypes, {dim}] (dim of anchor_views with shape "
        f"{tuple(anchor_views.shape)}), but got prototypes with shape {tuple(prototypes.shape)}.")
  _checks.check_positive("temperature", temperature)
  _checks.check_positive("target_temperature", target_temperature)
  if isinstance(me_max_weight, numbers.Real) and not me_max_weight >= 0:
    raise ValueError(f"me_max_weight must be >= 0, but got {me_max_weight!r}.")
  if use_sinkhorn and (not isinstance(sinkhorn_iterations, int) or sinkhorn_iterations < 1):
    raise ValueError(f"sinkhorn_iterations must be a positive int, but got "
                     f"{sinkhorn_iterations!r}.")
  # Batch dimension 1 of anchor_views; target_views has the same b with batch first.
  _checks.check_global_batch_size(
      "target_views", target_views, axis_name, 2,
      "Sinkhorn and ME-MAX balance the assignments across the batch")

  anchor_views, target_views, prototypes = as_float32(anchor_views, target_views, prototypes)
  protos = l2_normalize(prototypes)
  anchor_logits = jnp.einsum("vbd,kd->vbk", l2_normalize(anchor_views), protos,
                             precision=_HIGHEST) / temperature
  log_probs = jax.nn.log_softmax(anchor_logits, axis=-1)  # [V, b, K]
  probs = jnp.exp(log_probs)

  target_logits = jnp.matmul(l2_normalize(target_views), protos.T,
                             precision=_HIGHEST) / target_temperature
  targets = jax.nn.softmax(jax.lax.stop_gradient(target_logits), axis=-1)  # [b, K]
  if use_sinkhorn:
    targets = _sinkhorn(targets, sinkhorn_iterations, axis_name)
  targets = jax.lax.stop_gradient(targets)

  cross_entropy = batch_mean(
      jnp.mean(-jnp.sum(targets[None] * log_probs, axis=-1), axis=0), axis_name)
  mean_probs = batch_mean(jnp.mean(probs, axis=0), axis_name)  # [K], over views and batch
  num_prototypes = prototypes.shape[0]
  me_max = (math.log(num_prototypes)
            + jnp.sum(mean_probs * jnp.log(jnp.maximum(mean_probs, _TINY))))
  entropy = batch_mean(jnp.mean(-jnp.sum(probs * log_probs, axis=-1), axis=0), axis_name)
  loss = cross_entropy + me_max_weight * me_max
  return loss, {"cross_entropy": cross_entropy, "me_max": me_max, "entropy": entropy}


def koleo(
    z: jax.Array,
    *,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""KoLeo regulariser: spread embeddings by pushing up nearest-neighbour distances.

  From Sablayrolles, Douze, Schmid and Jegou, "Spreading vectors for similarity search", ICLR
  2019 (arXiv:1806.03198), the Kozachenko-Leonenko entropy estimator, in the form of
  DINOv2's ``KoLeoLoss`` (Oquab et al., "DINOv2: Learning Robust Visual Features without
  Supervision", TMLR 2024, arXiv:2304.07193)::

      x_i   = z_i / max(|z_i|, 1e-8)
      j(i)  = argmax_{j != i} x_i . x_j          (nearest neighbour on the sphere, no gradient)
      d_i   = |x_i - x_j(i) + 1e-8|              (torch's PairwiseDistance adds eps)
      L     = -1/B * sum_i log(d_i + 1e-8)

  Gradients flow through both ``x_i`` and its neighbour ``x_j(i)``, as in DINOv2. Here the
  neighbours are searched over the global batch (gathered over ``axis_name``). DINOv2 applies
  it per GPU (the local batch) and separately to each global crop's [CLS] outputs
  (``sum(koleo(p) for p in cls.chunk(2))``, so two crops of an image are never neighbours): to
  reproduce that exactly, call ``koleo`` per view inside ``jax.shard_map`` with
  ``axis_name=None``. Ties between neighbours go to the lowest global index.

  Args:
    z: ``[b, D]`` embeddings of one view (DINOv2: the student's [CLS] backbone outputs).
    axis_name: ``None`` for global arrays, or the mapped axis inside ``jax.shard_map``: ``z`` is
      the local shard, the normalised batch is ``all_gather``-ed to search neighbours (gradients
      flow back to the device owning each neighbour) and the mean is ``pmean``-ed.

  Returns:
    A float32 scalar ``L``. Coincident vectors (including two zero vectors, which normalise to
    0) have ``d = 1e-8 sqrt(D)``: the loss is finite (about 18) but its gradient is of order
    1e8 or more, as in DINOv2; such inputs should not occur in training.

  Raises:
    ValueError: if ``z`` is not rank 2 or the global batch is smaller than 2.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import koleo
    >>> z = jnp.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])  # neighbour distances sqrt(2)
    >>> round(float(koleo(z)), 4)  # -log(sqrt(2))
    -0.3466
  """
  _checks.check_rank("z", z, 2, "[batch, dim]")
  _checks.check_global_batch_size("z", z, axis_name, 2,
                                  "each vector needs a nearest neighbour other than itself")
  (z,) = as_float32(z)
  local_batch = z.shape[0]
  x = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), _KOLEO_EPS**2))
  keys = gather_batch(x, axis_name)  # [B, D]
  dots = jnp.matmul(x, keys.T, precision=_HIGHEST)
  rows = jnp.arange(local_batch) + batch_offset(local_batch, axis_name)
  dots = jnp.where(jnp.arange(keys.shape[0])[None, :] == rows[:, None], -jnp.inf, dots)
  neighbour = take_rows(keys, jnp.argmax(dots, axis=1))
  distance = jnp.linalg.norm(x - neighbour + _KOLEO_EPS, axis=-1)
  return batch_mean(-jnp.log(distance + _KOLEO_EPS), axis_name)


def knowledge_distillation(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float | jax.Array = 1.0,
    scale_by_temperature_squared: bool = True,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""Knowledge distillation with temperature, as in SimCLRv2's self-training step.

  From Chen, Kornblith, Swersky, Norouzi and Hinton, "Big Self-Supervised Models are Strong
  Semi-Supervised Learners", NeurIPS 2020 (arXiv:2006.10029), eq. (2), and ``add_kd_loss`` of
  google-research/simclr (``colabs/`` and ``tf2/colabs/distillation_self_training.ipynb``)::

      P_T = sg(softmax(teacher_logits / T)),   log P_S = log_softmax(student_logits / T)
      L   = s * 1/B * sum_i -sum_k P_T[i, k] log P_S[i, k],   s = T^2 (or 1)

  The paper's eq. (2) has no ``T^2``; the released code multiplies by ``T^2`` (Hinton et al.'s
  factor keeping gradient magnitudes independent of ``T``), which is the default here
  (``scale_by_temperature_squared=False`` gives eq. (2)). The two agree at ``T = 1``; with
  ``T != 1`` they differ by the constant factor ``T^2``, i.e. only in the effective learning rate.

  Args:
    student_logits: ``[b, K]`` student logits.
    teacher_logits: ``[b, K]`` teacher logits; no gradient flows into them.
    temperature: ``T`` > 0.
    scale_by_temperature_squared: multiply by ``T^2`` as the released code does.
    axis_name: ``None`` for global arrays, or the mapped axis inside ``jax.shard_map`` (the mean
      is ``pmean``-ed; shards must have equal ``b``).

  Returns:
    A float32 scalar; finite for any finite logits (``log_softmax``), ``log K`` (times ``s``)
    when the student's logits are all equal.

  Raises:
    ValueError: if the logits are not rank 2, their shapes differ, or ``temperature`` is a
      number <= 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import knowledge_distillation
    >>> teacher = jnp.array([[2.0, 0.0]])
    >>> round(float(knowledge_distillation(teacher, teacher)), 4)  # = entropy of softmax([2, 0])
    0.3653
  """
  _checks.check_rank("student_logits", student_logits, 2, "[batch, num_classes]")
  _checks.check_rank("teacher_logits", teacher_logits, 2, "[batch, num_classes]")
  _checks.check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
  _checks.check_positive("temperature", temperature)
  student_logits, teacher_logits = as_float32(student_logits, teacher_logits)
  teacher = jax.lax.stop_gradient(jax.nn.softmax(teacher_logits / temperature, axis=-1))
  log_student = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  per_example = -jnp.sum(teacher * log_student, axis=-1)
  if scale_by_temperature_squared:
    per_example = per_example * jnp.square(jnp.asarray(temperature, jnp.float32))
  return batch_mean(per_example, axis_name)
