"""Semi-supervised consistency and pseudo-labelling losses on classifier logits.

These losses take the logits of the unlabelled part of a batch; the supervised cross-entropy on
labelled examples is the caller's. Pseudo-labels and teacher outputs are constants
(``stop_gradient``), as in the authors' code.
"""

import numbers
from collections.abc import Hashable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sslx.losses import _checks
from sslx.losses._common import (
    as_float32, batch_mean, batch_sum, mean_across_devices, replicate_rows)

_MAPPINGS = ("convex", "linear")


def _check_logit_pair(name_a: str, a, name_b: str, b, axis_name) -> None:
  _checks.check_rank(name_a, a, 2, "[batch, num_classes]")
  _checks.check_rank(name_b, b, 2, "[batch, num_classes]")
  _checks.check_same_shape(name_a, a, name_b, b)
  _checks.check_global_batch_size(name_a, a, axis_name, 1, "the loss is a mean over examples")


def _hard_pseudo_labels(logits_weak: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Confidence and arg-max class of the weak view's softmax, as constants."""
  probs = jax.nn.softmax(jax.lax.stop_gradient(logits_weak), axis=-1)
  return jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1)


def _hard_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def fixmatch(
    logits_strong: jax.Array,
    logits_weak: jax.Array,
    *,
    threshold: float | jax.Array = 0.95,
    temperature: float | jax.Array = 1.0,
    hard_labels: bool = True,
    axis_name: Hashable | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  r"""FixMatch's unlabelled loss: confident weak-view pseudo-labels supervise the strong view.

  From Sohn, Berthelot, Li, Zhang, Carlini, Cubuk, Kurakin, Zhang and Raffel, "FixMatch:
  Simplifying Semi-Supervised Learning with Consistency and Confidence", NeurIPS 2020
  (arXiv:2001.07685), eq. (4), as in the authors' code (google-research/fixmatch). With
  ``p_i = softmax(logits_weak_i)`` (a constant), ``y_i = argmax p_i`` and global unlabelled
  batch size ``B``::

      l_u = 1/B sum_i 1[max p_i >= threshold] * CE(y_i, softmax(logits_strong_i))

  The mask is multiplied in and the mean is over *all* ``B`` unlabelled examples, not over the
  confident ones. With ``hard_labels=False`` the target is the soft ``softmax(logits_weak / T)``
  (the TorchSSL/USB variant); ``temperature`` has no effect with hard labels, where the
  confidence is always taken from the untempered softmax, as in the code.

  Args:
    logits_strong: ``[b, C]`` logits of the strongly augmented views (receive gradient).
    logits_weak: ``[b, C]`` logits of the weakly augmented views of the same examples.
    threshold: confidence threshold in [0, 1] (paper: 0.95).
    temperature: ``T`` > 0 for soft targets.
    hard_labels: arg-max pseudo-labels (the paper) or soft ones.
    axis_name: ``None`` for global arrays; inside ``jax.shard_map`` the mapped batch axis, over
      which the mean is taken (``pmean``, equal local batches).

  Returns:
    ``(loss, {"mask_rate": fraction of the global batch above the threshold})``, float32
    scalars (inputs of any float dtype are cast to float32). All-zero logits give a uniform
    ``p_i``, which is below any threshold above ``1/C``: loss 0 with a zero gradient.

  Raises:
    ValueError: if the logits are not rank 2 or differ in shape, the batch is empty,
      ``threshold`` is outside [0, 1] or ``temperature`` <= 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import fixmatch
    >>> weak = jnp.array([[10.0, 0.0], [0.0, 0.0]])  # confident class 0; undecided
    >>> strong = jnp.array([[0.0, 0.0], [5.0, 0.0]])
    >>> loss, aux = fixmatch(strong, weak)  # (log 2 + 0) / 2
    >>> round(float(loss), 4), float(aux["mask_rate"])
    (0.3466, 0.5)
  """
  _check_logit_pair("logits_strong", logits_strong, "logits_weak", logits_weak, axis_name)
  _checks.check_unit_interval("threshold", threshold)
  _checks.check_positive("temperature", temperature)

  logits_strong, logits_weak = as_float32(logits_strong, logits_weak)
  confidence, labels = _hard_pseudo_labels(logits_weak)
  mask = (confidence >= threshold).astype(jnp.float32)
  if hard_labels:
    per_example = _hard_cross_entropy(logits_strong, labels)
  else:
    targets = jax.nn.softmax(jax.lax.stop_gradient(logits_weak) / temperature, axis=-1)
    per_example = -jnp.sum(targets * jax.nn.log_softmax(logits_strong, axis=-1), axis=-1)
  loss = mean_across_devices(jnp.mean(per_example * mask), axis_name)
  return loss, {"mask_rate": mean_across_devices(jnp.mean(mask), axis_name)}


# --- FlexMatch ----------------------------------------------------------------------------------


def flexmatch_init(num_unlabelled: int) -> jax.Array:
  """FlexMatch's initial state: ``int32[num_unlabelled]`` of -1 (no example selected yet).

  The state holds, for every unlabelled example of the dataset, the class of its last confident
  prediction (or -1); ``flexmatch_update`` writes it and ``flexmatch_thresholds`` reads it. Keep it
  in the train state beside the parameters, replicated on every device.

  Args:
    num_unlabelled: the number of unlabelled examples in the dataset (>= 1).

  Returns:
    ``int32[num_unlabelled]`` filled with -1.

  Example:
    >>> from sslx.losses import flexmatch_init
    >>> flexmatch_init(4)
    Array([-1, -1, -1, -1], dtype=int32)
  """
  if not isinstance(num_unlabelled, (int, np.integer)) or num_unlabelled < 1:
    raise ValueError(f"num_unlabelled must be an integer >= 1, but got {num_unlabelled!r}.")
  return jnp.full((num_unlabelled,), -1, jnp.int32)


def _check_class_state(class_state) -> None:
  _checks.check_rank("class_state", class_state, 1, "[num_unlabelled]")
  if not jnp.issubdtype(jnp.asarray(class_state).dtype, jnp.integer):
    raise ValueError(
        f"class_state must be an integer array of shape [num_unlabelled] (see flexmatch_init), "
        f"but got dtype {jnp.asarray(class_state).dtype}.")


def flexmatch_thresholds(
    class_state: jax.Array,
    num_classes: int,
    *,
    threshold: float | jax.Array = 0.95,
    warmup: bool = True,
    mapping: str = "convex",
) -> jax.Array:
  r"""FlexMatch's class-wise thresholds ``T_c = M(beta_c) * threshold`` from its state.

  ``sigma_c`` counts the unlabelled examples whose last confident prediction is ``c`` and
  ``sigma_-1`` those never selected (``class_state == -1``). The learning effect is::

      beta_c = sigma_c / max(max_c' sigma_c', sigma_-1)   (warmup=True, paper eq. 11)
      beta_c = sigma_c / max_c' sigma_c'                  (warmup=False)

  (``beta = 0`` while nothing is selected)

  and ``M(x) = x / (2 - x)`` (``"convex"``, the paper's choice) or ``M(x) = x``
  (``"linear"``). Deviation: TorchSSL leaves ``beta`` unchanged in a step where every entry of
  the state is the same value; it only starts at zeros, which this formula gives too.

  Args:
    class_state: ``int[num_unlabelled]``, the selected label per unlabelled example or -1.
    num_classes: ``C``.
    threshold: ``tau`` in [0, 1].
    warmup: use the threshold warm-up normalisation.
    mapping: ``"convex"`` or ``"linear"``.

  Returns:
    float32 ``[C]`` thresholds.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import flexmatch_thresholds
    >>> # Two examples last selected as class 0, one as class 1, one never selected.
    >>> flexmatch_thresholds(jnp.array([0, 0, 1, -1]), 3, threshold=0.9)
    Array([0.9, 0.3, 0. ], dtype=float32)
  """
  _check_class_state(class_state)
  _checks.check_unit_interval("threshold", threshold)
  if mapping not in _MAPPINGS:
    raise ValueError(f"mapping must be one of {_MAPPINGS}, but got {mapping!r}.")
  # Shift by one so the -1 entries are counted in bin 0.
  counts = jnp.bincount(jnp.asarray(class_state) + 1, length=num_classes + 1).astype(jnp.float32)
  class_counts = counts[1:]
  denominator = jnp.max(class_counts)
  if warmup:
    denominator = jnp.maximum(denominator, counts[0])
  beta = jnp.where(denominator > 0, class_counts / jnp.maximum(denominator, 1.0), 0.0)
  mapped = beta / (2.0 - beta) if mapping == "convex" else beta
  return threshold * mapped


def flexmatch(
    logits_strong: jax.Array,
    logits_weak: jax.Array,
    class_state: jax.Array,
    *,
    threshold: float | jax.Array = 0.95,
    warmup: bool = True,
    mapping: str = "convex",
    axis_name: Hashable | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  r"""FlexMatch's unlabelled loss: FixMatch with curriculum (class-wise) thresholds.

  From Zhang, Wang, Hou, Wu, Wang, Okumura and Shinozaki, "FlexMatch: Boosting Semi-Supervised
  Learning with Curriculum Pseudo Labeling", NeurIPS 2021 (arXiv:2110.08263), as in the
  TorchSSL code (``models/flexmatch``, hard labels, no distribution alignment). With
  ``p_i = softmax(logits_weak_i)`` (constant), ``y_i = argmax p_i`` and the thresholds ``T_c``
  of :func:`flexmatch_thresholds`::

      l_u = 1/B sum_i 1[max p_i >= T_{y_i}] * CE(y_i, softmax(logits_strong_i))

  averaged over all ``B`` unlabelled examples. At the start (state all -1) every ``T_c`` is 0,
  so every example is used, as in TorchSSL. After the step, update the state with
  :func:`flexmatch_update` (outside the gradient).

  Args:
    logits_strong: ``[b, C]`` logits of the strong views (receive gradient).
    logits_weak: ``[b, C]`` logits of the weak views.
    class_state: ``int[num_unlabelled]`` state (:func:`flexmatch_init`), replicated.
    threshold: ``tau`` in [0, 1] (paper: 0.95).
    warmup: threshold warm-up (paper's default).
    mapping: ``"convex"`` (``M(x) = x/(2-x)``, paper's default) or ``"linear"``.
    axis_name: ``None`` for global arrays; inside ``jax.shard_map`` the mapped batch axis.

  Returns:
    ``(loss, {"mask_rate": ..., "class_thresholds": float32[C]})``, float32. All-zero logits
    give uniform ``p_i``: finite loss (``log C`` for the examples that pass the threshold).

  Raises:
    ValueError: on bad ranks, shapes or dtypes, ``threshold`` outside [0, 1] or an unknown
      ``mapping``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import flexmatch, flexmatch_init
    >>> weak = jnp.array([[2.0, 0.0], [0.0, 0.0]])
    >>> strong = jnp.zeros((2, 2))
    >>> loss, aux = flexmatch(strong, weak, flexmatch_init(10))  # all thresholds start at 0
    >>> round(float(loss), 4), float(aux["mask_rate"])  # log 2, both examples used
    (0.6931, 1.0)
  """
  _check_logit_pair("logits_strong", logits_strong, "logits_weak", logits_weak, axis_name)
  thresholds = flexmatch_thresholds(
      class_state, np.shape(logits_weak)[1], threshold=threshold, warmup=warmup, mapping=mapping)
  logits_strong, logits_weak = as_float32(logits_strong, logits_weak)
  confidence, labels = _hard_pseudo_labels(logits_weak)
  # A one-hot product rather than thresholds[labels]: on an Explicit mesh, gathering from a
  # replicated table with batch-sharded indices has no unambiguous output sharding.
  example_threshold = _select(thresholds, labels)
  mask = (confidence >= example_threshold).astype(jnp.float32)
  per_example = _hard_cross_entropy(logits_strong, labels)
  loss = mean_across_devices(jnp.mean(per_example * mask), axis_name)
  mask_rate = mean_across_devices(jnp.mean(mask), axis_name)
  return loss, {"mask_rate": mask_rate, "class_thresholds": thresholds}


def flexmatch_update(
    class_state: jax.Array,
    logits_weak: jax.Array,
    example_indices: jax.Array,
    *,
    threshold: float | jax.Array = 0.95,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""FlexMatch's state update: record the prediction of every example above ``threshold``.

  As in TorchSSL: ``class_state[idx_i] = argmax p_i`` for each unlabelled example ``i`` of the
  global batch with ``max p_i >= threshold`` (the fixed ``tau``, not the class-wise threshold);
  other entries are unchanged. Indices should be distinct within a global batch; if one repeats,
  the largest selected label wins (deterministic, unlike torch's scatter).

  Args:
    class_state: ``int[num_unlabelled]`` state, replicated.
    logits_weak: ``[b, C]`` logits of the weak views.
    example_indices: ``int[b]`` position of each example in the unlabelled set.
    threshold: ``tau`` in [0, 1].
    axis_name: ``None`` for global arrays; inside ``jax.shard_map`` the mapped batch axis:
      each device scatters its own selections and they are combined with ``pmax``, so every
      device returns the same (replicated, invariant) new state.

  Returns:
    The new state, same shape and dtype as ``class_state``.

  Raises:
    ValueError: on bad ranks, shapes or dtypes, or ``threshold`` outside [0, 1].

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import flexmatch_init, flexmatch_update
    >>> weak = jnp.array([[0.0, 9.0], [0.0, 0.0]])  # confident class 1; undecided
    >>> flexmatch_update(flexmatch_init(4), weak, jnp.array([2, 0])).tolist()
    [-1, -1, 1, -1]
  """
  _check_class_state(class_state)
  _checks.check_rank("logits_weak", logits_weak, 2, "[batch, num_classes]")
  _checks.check_rank("example_indices", example_indices, 1, "[batch]")
  if np.shape(example_indices)[0] != np.shape(logits_weak)[0]:
    raise ValueError(
        f"example_indices must have shape [{np.shape(logits_weak)[0]}] (one index per row of "
        f"logits_weak), but got shape {tuple(np.shape(example_indices))}.")
  if not jnp.issubdtype(jnp.asarray(example_indices).dtype, jnp.integer):
    raise ValueError(
        f"example_indices must be an integer array, but got dtype "
        f"{jnp.asarray(example_indices).dtype}.")
  _checks.check_unit_interval("threshold", threshold)

  class_state = jnp.asarray(class_state)
  (logits_weak,) = as_float32(logits_weak)
  confidence, labels = _hard_pseudo_labels(logits_weak)
  # label + 1 >= 1 marks a write and 0 "no write", so combining devices is a max.
  written = jnp.where(confidence >= threshold, labels + 1, 0).astype(class_state.dtype)
  # Under an Explicit mesh the batch-sharded updates must be replicated before scattering into
  # the replicated state.
  indices = replicate_rows(jnp.asarray(example_indices))
  written = replicate_rows(written)
  scattered = jnp.zeros_like(class_state).at[indices].max(written, mode="drop")
  if axis_name is not None:
    scattered = jax.lax.pmax(scattered, axis_name)
  return jnp.where(scattered > 0, scattered - 1, class_state)


# --- Mean Teacher -------------------------------------------------------------------------------


def mean_teacher(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""Mean Teacher's consistency cost: squared error between student and teacher softmaxes.

  From Tarvainen and Valpola, "Mean teachers are better role models: Weight-averaged
  consistency targets improve semi-supervised deep learning results", NeurIPS 2017
  (arXiv:1703.01780), as in the authors' code (CuriousAI/mean-teacher, ``softmax_mse_loss``
  divided by the minibatch size)::

      J = 1/(B C) sum_i sum_c ( softmax(s_i)_c - softmax(t_i)_c )^2

  i.e. the sum over classes is divided by the number of classes ``C`` and the result averaged
  over the global batch ``B`` (the same as TorchSSL's ``mse_loss(reduction='mean')``). The
  teacher (the EMA model's logits) is a constant. The ramped-up consistency weight is the
  caller's.

  Args:
    student_logits: ``[b, C]`` logits of the student (receive gradient).
    teacher_logits: ``[b, C]`` logits of the EMA teacher on another noisy view.
    axis_name: ``None`` for global arrays; inside ``jax.shard_map`` the mapped batch axis.

  Returns:
    A float32 scalar. All-zero logits are fine (uniform softmax).

  Raises:
    ValueError: if the logits are not rank 2, differ in shape or the batch is empty.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import mean_teacher
    >>> s = jnp.array([[0.0, 0.0]])  # softmax (1/2, 1/2)
    >>> t = jnp.array([[jnp.log(3.0), 0.0]])  # softmax (3/4, 1/4)
    >>> round(float(mean_teacher(s, t)), 6)  # ((1/4)^2 + (1/4)^2) / 2
    0.0625
  """
  _check_logit_pair("student_logits", student_logits, "teacher_logits", teacher_logits, axis_name)
  student_logits, teacher_logits = as_float32(student_logits, teacher_logits)
  student = jax.nn.softmax(student_logits, axis=-1)
  teacher = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits), axis=-1)
  return mean_across_devices(jnp.mean((student - teacher) ** 2), axis_name)


# --- Pseudo-labelling with mixup (Arazo et al.) -------------------------------------------------


def soft_pseudo_label_mixup(
    logits_mixed: jax.Array,
    soft_labels_a: jax.Array,
    soft_labels_b: jax.Array,
    mix_ratio: float | jax.Array,
    *,
    class_prior: jax.Array | None = None,
    reg_prior_weight: float = 0.8,
    reg_entropy_weight: float = 0.4,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""Soft pseudo-labelling with mixup and the two regularisers of Arazo et al.

  From Arazo, Ortego, Albert, O'Connor and McGuinness, "Pseudo-Labeling and Confirmation Bias in
  Deep Semi-Supervised Learning", IJCNN 2020 (arXiv:1908.02983), eqs. (3)-(6), as in the
  authors' code (EricArazo/PseudoLabeling, ``loss_mixup_reg_ep``). With ``h_i =
  softmax(logits_mixed_i)``, its global batch mean ``hbar``, the prior ``p`` (uniform by
  default), the soft labels ``a_i``, ``b_i`` of the two mixed examples and ``lam = mix_ratio``::

      L_mix = lam * 1/B sum_i -a_i . log h_i + (1 - lam) * 1/B sum_i -b_i . log h_i
      R_A   = -sum_c p_c log hbar_c
      R_H   = 1/B sum_i -h_i . log h_i
      L     = L_mix + reg_prior_weight * R_A + reg_entropy_weight * R_H

  The paper writes ``R_A`` as ``KL(p || hbar) = sum_c p_c log(p_c / hbar_c)``; the code drops
  the constant ``sum_c p_c log p_c`` (same gradient), and so does this function, so ``L`` is
  the code's value. Labelled examples carry their one-hot labels, unlabelled ones their soft
  pseudo-labels (the network's softmax from the previous epoch); both are constants here.

  Mixing the inputs is the caller's: draw ``lam ~ Beta(alpha, alpha)`` and a permutation of the
  *global* batch, feed ``lam x + (1 - lam) x[perm]`` to the network and pass
  ``soft_labels_a = y``, ``soft_labels_b = y[perm]`` (under ``jax.shard_map``, permute the
  gathered batch, then take the local rows, so that pairs may cross devices).

  Args:
    logits_mixed: ``[b, C]`` logits on the mixed inputs (receive gradient).
    soft_labels_a: ``[b, C]`` soft labels of the first mixed examples (rows sum to 1).
    soft_labels_b: ``[b, C]`` soft labels of the second (permuted) examples.
    mix_ratio: ``lam`` in [0, 1], a scalar shared by the whole batch.
    class_prior: ``[C]`` prior ``p`` (sums to 1), or ``None`` for uniform.
    reg_prior_weight: weight of ``R_A``, >= 0 (code: 0.8).
    reg_entropy_weight: weight of ``R_H``, >= 0 (code: 0.4).
    axis_name: ``None`` for global arrays; inside ``jax.shard_map`` the mapped batch axis:
      ``hbar`` is then the ``pmean`` of the local means, the global batch mean.

  Returns:
    A float32 scalar. All-zero logits give uniform ``h``: ``L = log C (1 + reg_prior_weight +
    reg_entropy_weight)`` for labels summing to 1; finite gradient.

  Raises:
    ValueError: on bad ranks or shapes, ``mix_ratio`` outside [0, 1] or a negative weight.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import soft_pseudo_label_mixup
    >>> logits = jnp.zeros((2, 4))  # uniform predictions
    >>> labels = jnp.eye(4)[:2]
    >>> loss = soft_pseudo_label_mixup(logits, labels, labels[::-1], 0.3)
    >>> round(float(loss), 4)  # log 4 * (1 + 0.8 + 0.4)
    3.0498
  """
  _check_logit_pair("logits_mixed", logits_mixed, "soft_labels_a", soft_labels_a, axis_name)
  _checks.check_same_shape("logits_mixed", logits_mixed, "soft_labels_b", soft_labels_b)
  _checks.check_unit_interval("mix_ratio", mix_ratio)
  _checks.check_non_negative("reg_prior_weight", reg_prior_weight)
  _checks.check_non_negative("reg_entropy_weight", reg_entropy_weight)
  num_classes = np.shape(logits_mixed)[1]
  if class_prior is None:
    prior = jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)
  else:
    _checks.check_rank("class_prior", class_prior, 1, f"[{num_classes}]")
    if np.shape(class_prior)[0] != num_classes:
      raise ValueError(
          f"class_prior must have shape [{num_classes}] (the logits' num_classes), but got "
          f"shape {tuple(np.shape(class_prior))}.")
    (prior,) = as_float32(class_prior)

  logits, labels_a, labels_b = as_float32(logits_mixed, soft_labels_a, soft_labels_b)
  labels_a = jax.lax.stop_gradient(labels_a)
  labels_b = jax.lax.stop_gradient(labels_b)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  probs = jnp.exp(log_probs)
  mixed_ce = (mix_ratio * jnp.mean(-jnp.sum(labels_a * log_probs, axis=-1))
              + (1.0 - mix_ratio) * jnp.mean(-jnp.sum(labels_b * log_probs, axis=-1)))
  entropy = jnp.mean(-jnp.sum(probs * log_probs, axis=-1))
  local = mean_across_devices(mixed_ce + reg_entropy_weight * entropy, axis_name)
  # The prior term is a function of the global batch mean, so the mean is reduced first.
  mean_prob = batch_mean(probs, axis_name)
  prior_term = -jnp.sum(prior * jnp.log(mean_prob))
  return local + reg_prior_weight * prior_term


# --- FreeMatch and SoftMatch: shared state handling ---------------------------------------------


def _check_momentum(value) -> None:
  """An EMA momentum must lie in [0, 1): at 1 the statistics would never move."""
  if isinstance(value, numbers.Real) and not 0.0 <= value < 1.0:  # also rejects NaN
    raise ValueError(f"momentum must be in [0, 1), but got {value!r}.")


def _check_num_classes(num_classes) -> None:
  if (not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool)
      or num_classes < 1):
    raise ValueError(f"num_classes must be an integer >= 1, but got {num_classes!r}.")


def _check_ema_state(state, num_classes: int, shapes: dict[str, tuple[int, ...]],
                     init_name: str) -> dict[str, jax.Array]:
  """Validates a FreeMatch / SoftMatch state; returns its leaves as float32 constants."""
  if not isinstance(state, Mapping) or set(state) != set(shapes):
    got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
    raise ValueError(
        f"state must be a dict with keys {sorted(shapes)} (see {init_name}), but got {got}.")
  for key, shape in shapes.items():
    if tuple(np.shape(state[key])) != shape:
      raise ValueError(
          f"state[{key!r}] must have shape {shape} (num_classes = {num_classes} from the "
          f"logits; see {init_name}), but got shape {tuple(np.shape(state[key]))}.")
  return {key: jax.lax.stop_gradient(jnp.asarray(state[key], jnp.float32)) for key in shapes}


def _ema(old: jax.Array, new: jax.Array, momentum) -> jax.Array:
  return momentum * old + (1.0 - momentum) * new


def _select(table: jax.Array, labels: jax.Array) -> jax.Array:
  """``table[labels]`` as a one-hot product (see flexmatch: batch-sharded gathers)."""
  return jnp.sum(jax.nn.one_hot(labels, table.shape[0]) * table, axis=-1)


def _reciprocal_or_zero(x: jax.Array) -> jax.Array:
  """``1 / x`` with 0 where ``x == 0`` (USB's ``replace_inf_to_zero(1 / x)``)."""
  nonzero = x != 0
  return jnp.where(nonzero, 1.0 / jnp.where(nonzero, x, 1.0), 0.0)


def _sum_normalize(x: jax.Array) -> jax.Array:
  total = jnp.sum(x)
  return x / jnp.where(total > 0, total, 1.0)


# --- FreeMatch ----------------------------------------------------------------------------------


def freematch_init(num_classes: int) -> dict[str, jax.Array]:
  """FreeMatch's initial state: every statistic at its uniform value ``1/C``.

  ``{"tau": float32[], "p_model": float32[C], "label_hist": float32[C]}``: the global confidence
  threshold, the class-wise expectation of the weak-view softmax and the histogram of its
  arg-max, as in the paper (``tau_0 = p_0 = h_0 = 1/C``) and USB. :func:`freematch` returns the
  updated state in its ``aux["state"]``; keep it in the train state, replicated on every device.

  Args:
    num_classes: ``C`` (>= 1).

  Returns:
    The state dict, float32.

  Example:
    >>> from sslx.losses import freematch_init
    >>> state = freematch_init(4)
    >>> float(state["tau"]), state["p_model"].tolist(), state["label_hist"].shape
    (0.25, [0.25, 0.25, 0.25, 0.25], (4,))
  """
  _check_num_classes(num_classes)
  def uniform():  # a buffer per entry: a trainer that donates the state must not see one twice
    return jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)

  return {"tau": jnp.asarray(1.0 / num_classes, jnp.float32), "p_model": uniform(),
          "label_hist": uniform()}


def freematch(
    logits_strong: jax.Array,
    logits_weak: jax.Array,
    state: dict[str, jax.Array],
    *,
    momentum: float | jax.Array = 0.999,
    fairness_weight: float | jax.Array = 0.01,
    axis_name: Hashable | None = None,
) -> tuple[jax.Array, dict]:
  r"""FreeMatch's unlabelled loss: self-adaptive thresholds (SAT) and class fairness (SAF).

  From Wang, Chen, Heng, Hou, Fan, Wu, Wang, Savvides, Shinozaki, Raj, Schiele and Xie,
  "FreeMatch: Self-adaptive Thresholding for Semi-supervised Learning", ICLR 2023
  (arXiv:2205.07246), eqs. (5)-(11), as in USB (microsoft/Semi-supervised-learning,
  ``algorithms/freematch``: hard labels, no quantile, no clipping). With ``p_i =
  softmax(logits_weak_i)`` (a constant), ``y_i = argmax p_i``, ``q_i = softmax(logits_strong_i)``,
  momentum ``m`` and global unlabelled batch size ``B``, the state is first updated with the
  current batch (USB updates before masking)::

      tau' = m tau + (1 - m) 1/B sum_i max p_i
      p'   = m p_model + (1 - m) 1/B sum_i p_i
      h'   = m label_hist + (1 - m) 1/B sum_i onehot(y_i)

  then the mask (the local thresholds are ``tau'`` scaled by MaxNorm of ``p'``) and the
  consistency loss, averaged over all ``B`` examples::

      mask_i = 1[max p_i >= tau' p'_{y_i} / max_c p'_c]
      L_u    = 1/B sum_i mask_i CE(y_i, q_i)

  The fairness term is USB's ``entropy_loss``, on the ``M = sum_i mask_i`` selected examples'
  *strong* views: their mean ``qbar = 1/M sum_i mask_i q_i`` and the histogram ``hbar = 1/M
  sum_i mask_i onehot(argmax q_i)``. With ``inv(x)_c = 1/x_c`` (0 where ``x_c = 0``) and
  ``SumNorm(x) = x / sum_c x_c``::

      P   = SumNorm(p' * inv(h'))
      Q   = SumNorm(qbar * inv(hbar))
      L_f = sum_c P_c log(Q_c + 1e-12)           (0 when M = 0, as USB skips it)

  i.e. the paper's ``L_f = -H(P, Q)``, the negative cross-entropy; the gradient flows through
  ``qbar`` only (``hbar`` is an arg-max count). The loss is ``L_u + fairness_weight * L_f`` (the
  caller's ``w_u`` multiplies the whole). USB's default ``ent_loss_ratio`` is 0.01; its released
  configs use 0.001.

  Deviation: under data parallelism USB computes ``L_f`` from each GPU's own selected examples
  and averages the gradients; here ``qbar`` and ``hbar`` are of the global batch, so the loss is
  that of a single-GPU USB run whatever the sharding. The statistics of the state are of the
  global batch in both (USB all-gathers them).

  Args:
    logits_strong: ``[b, C]`` logits of the strongly augmented views (receive gradient).
    logits_weak: ``[b, C]`` logits of the weakly augmented views of the same examples.
    state: the state of :func:`freematch_init` or of the previous step, replicated (a constant).
    momentum: ``m`` in [0, 1) (paper: 0.999).
    fairness_weight: ``w_f`` >= 0.
    axis_name: ``None`` for global arrays; inside ``jax.shard_map`` the mapped batch axis, over
      which every batch statistic is taken (``pmean`` / ``psum``, equal local batches).

  Returns:
    ``(loss, aux)``: a float32 scalar and ``{"mask_rate": fraction of the global batch selected,
    "consistency_loss": L_u, "fairness_loss": L_f, "state": the updated state}``, the state
    replicated (invariant under ``shard_map``). All-zero logits pass every example (``max p_i =
    tau' = 1/C``, label 0): ``L_u = log C``, and ``Q`` is one-hot, so ``L_f = (1 - P_0) log 1e-12``
    with a zero gradient.

  Raises:
    ValueError: if the logits are not rank 2 or differ in shape, the batch is empty, the state
      has other keys or shapes, ``momentum`` is outside [0, 1) or ``fairness_weight`` < 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import freematch, freematch_init
    >>> weak = jnp.array([[9.0, 0.0], [0.0, 0.0]])  # confident class 0; undecided
    >>> strong = jnp.zeros((2, 2))
    >>> loss, aux = freematch(strong, weak, freematch_init(2), momentum=0.0)
    >>> float(aux["state"]["tau"]) > 0.5, float(aux["mask_rate"])  # only row 0 passes tau'
    (True, 0.5)
    >>> round(float(aux["consistency_loss"]), 4)  # log 2 / 2
    0.3466
  """
  _check_logit_pair("logits_strong", logits_strong, "logits_weak", logits_weak, axis_name)
  num_classes = np.shape(logits_weak)[1]
  state = _check_ema_state(
      state, num_classes, {"tau": (), "p_model": (num_classes,), "label_hist": (num_classes,)},
      "freematch_init")
  _check_momentum(momentum)
  _checks.check_non_negative("fairness_weight", fairness_weight)

  logits_strong, logits_weak = as_float32(logits_strong, logits_weak)
  probs = jax.nn.softmax(jax.lax.stop_gradient(logits_weak), axis=-1)
  confidence, labels = jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1)
  new_state = {
      "tau": _ema(state["tau"], batch_mean(confidence, axis_name), momentum),
      "p_model": _ema(state["p_model"], batch_mean(probs, axis_name), momentum),
      "label_hist": _ema(state["label_hist"],
                         batch_mean(jax.nn.one_hot(labels, num_classes), axis_name), momentum),
  }
  local_thresholds = new_state["tau"] * new_state["p_model"] / jnp.max(new_state["p_model"])
  mask = (confidence >= _select(local_thresholds, labels)).astype(jnp.float32)
  consistency = mean_across_devices(
      jnp.mean(_hard_cross_entropy(logits_strong, labels) * mask), axis_name)

  # Self-adaptive fairness on the selected strong views, over the global batch.
  strong_probs = jax.nn.softmax(logits_strong, axis=-1)
  strong_hist = jax.nn.one_hot(jnp.argmax(jax.lax.stop_gradient(strong_probs), axis=-1),
                               num_classes)
  selected = batch_sum(mask, axis_name)
  count = jnp.where(selected > 0, selected, 1.0)
  mean_strong = batch_sum(mask[:, None] * strong_probs, axis_name) / count
  hist_strong = batch_sum(mask[:, None] * strong_hist, axis_name) / count
  target = _sum_normalize(new_state["p_model"] * _reciprocal_or_zero(new_state["label_hist"]))
  predicted = _sum_normalize(mean_strong * _reciprocal_or_zero(hist_strong))
  fairness = jnp.where(selected > 0, jnp.sum(target * jnp.log(predicted + 1e-12)), 0.0)

  loss = consistency + fairness_weight * fairness
  return loss, {"mask_rate": mean_across_devices(jnp.mean(mask), axis_name),
                "consistency_loss": consistency, "fairness_loss": fairness,
                "state": new_state}


# --- SoftMatch ----------------------------------------------------------------------------------


def softmatch_init(num_classes: int) -> dict[str, jax.Array]:
  """SoftMatch's initial state: ``{"p_model": float32[C], "mu": float32[], "var": float32[]}``.

  ``mu = 1/C`` and ``var = 1`` start the Gaussian of the confidence, as in the paper and USB.
  ``p_model``, the EMA of the weak-view softmax used by uniform alignment, starts at zeros,
  meaning "no batch seen yet": USB's ``DistAlignEMAHook`` sets it to the first batch's mean
  without averaging, and :func:`softmatch` does the same when ``p_model`` sums to 0. Keep the
  state (``aux["state"]`` of :func:`softmatch`) in the train state, replicated on every device.

  Args:
    num_classes: ``C`` (>= 1).

  Returns:
    The state dict, float32.

  Example:
    >>> from sslx.losses import softmatch_init
    >>> state = softmatch_init(4)
    >>> state["p_model"].tolist(), float(state["mu"]), float(state["var"])
    ([0.0, 0.0, 0.0, 0.0], 0.25, 1.0)
  """
  _check_num_classes(num_classes)
  return {"p_model": jnp.zeros((num_classes,), jnp.float32),
          "mu": jnp.asarray(1.0 / num_classes, jnp.float32),
          "var": jnp.asarray(1.0, jnp.float32)}


def softmatch(
    logits_strong: jax.Array,
    logits_weak: jax.Array,
    state: dict[str, jax.Array],
    *,
    momentum: float | jax.Array = 0.999,
    n_sigma: float | jax.Array = 2.0,
    axis_name: Hashable | None = None,
) -> tuple[jax.Array, dict]:
  r"""SoftMatch's unlabelled loss: pseudo-labels weighted by a truncated Gaussian of confidence.

  From Chen, Tao, Fan, Wang, Wang, Schiele, Xie, Raj and Savvides, "SoftMatch: Addressing the
  Quantity-Quality Trade-off in Semi-supervised Learning", ICLR 2023 (arXiv:2301.10921), eqs.
  (6)-(9), as in USB (microsoft/Semi-supervised-learning, ``algorithms/softmatch``: hard labels,
  uniform alignment, one Gaussian for all classes). With ``p_i = softmax(logits_weak_i)`` (a
  constant), momentum ``m`` and global unlabelled batch size ``B``, in USB's order:

  1. uniform alignment (USB's ``DistAlignEMAHook``, target ``u = 1/C``), its EMA updated first::

         p'      = m p_model + (1 - m) 1/B sum_i p_i     (= the batch mean at the first step)
         a_i     = SumNorm(p_i * (u + 1e-6) / (p' + 1e-6))

  2. the Gaussian's statistics of the aligned confidence ``c_i = max a_i``, updated first
     (``var`` unbiased, over the global batch)::

         mu'  = m mu  + (1 - m) 1/B sum_i c_i
         var' = m var + (1 - m) 1/(B - 1) sum_i (c_i - mean c)^2

  3. the weights and the loss, with the pseudo-label ``y_i = argmax p_i`` of the *unaligned*
     weak view (as USB) and ``q_i = softmax(logits_strong_i)``::

         w_i = exp(-(c_i - mu')^2 / (2 var' / n_sigma^2))  if c_i < mu',  else 1
         L_u = 1/B sum_i w_i CE(y_i, q_i)

  USB writes the weight as ``exp(-min(c_i - mu', 0)^2 / (2 var' / n_sigma^2))``, the same value
  (and no 0/0 here if ``var'`` were 0). The weights are constants.

  Args:
    logits_strong: ``[b, C]`` logits of the strongly augmented views (receive gradient).
    logits_weak: ``[b, C]`` logits of the weakly augmented views of the same examples.
    state: the state of :func:`softmatch_init` or of the previous step, replicated (a constant).
    momentum: ``m`` in [0, 1) (paper: 0.999), for the alignment and the Gaussian alike.
    n_sigma: > 0; the Gaussian's standard deviation is ``sqrt(var') / n_sigma`` (USB: 2).
    axis_name: ``None`` for global arrays; inside ``jax.shard_map`` the mapped batch axis, over
      which every batch statistic is taken (``pmean``, equal local batches).

  Returns:
    ``(loss, aux)``: a float32 scalar and ``{"mask_rate": mean weight over the global batch
    (USB's util_ratio), "state": the updated state}``, the state replicated (invariant under
    ``shard_map``). All-zero logits give weights 1 and loss ``log C``.

  Raises:
    ValueError: if the logits are not rank 2 or differ in shape, the global batch has fewer than
      2 examples, the state has other keys or shapes, ``momentum`` is outside [0, 1) or
      ``n_sigma`` <= 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import softmatch, softmatch_init
    >>> weak = jnp.array([[9.0, 0.0], [0.0, 9.0]])  # confident, balanced: alignment is a no-op
    >>> strong = jnp.zeros((2, 2))
    >>> loss, aux = softmatch(strong, weak, softmatch_init(2))
    >>> round(float(loss), 4), float(aux["mask_rate"])  # confidence > mu': weights 1, log 2
    (0.6931, 1.0)
  """
  _check_logit_pair("logits_strong", logits_strong, "logits_weak", logits_weak, axis_name)
  batch = _checks.check_global_batch_size(
      "logits_weak", logits_weak, axis_name, 2, "the unbiased variance of the confidence")
  num_classes = np.shape(logits_weak)[1]
  state = _check_ema_state(state, num_classes, {"p_model": (num_classes,), "mu": (), "var": ()},
                           "softmatch_init")
  _check_momentum(momentum)
  _checks.check_positive("n_sigma", n_sigma)

  logits_strong, logits_weak = as_float32(logits_strong, logits_weak)
  probs = jax.nn.softmax(jax.lax.stop_gradient(logits_weak), axis=-1)
  labels = jnp.argmax(probs, axis=-1)

  batch_probs = batch_mean(probs, axis_name)
  p_model = jnp.where(jnp.sum(state["p_model"]) > 0,
                      _ema(state["p_model"], batch_probs, momentum), batch_probs)
  aligned = probs * (1.0 / num_classes + 1e-6) / (p_model + 1e-6)
  aligned = aligned / jnp.sum(aligned, axis=-1, keepdims=True)
  confidence = jnp.max(aligned, axis=-1)

  mean_confidence = batch_mean(confidence, axis_name)
  variance = batch_mean((confidence - mean_confidence) ** 2, axis_name) * (batch / (batch - 1))
  mu = _ema(state["mu"], mean_confidence, momentum)
  var = _ema(state["var"], variance, momentum)
  gap = jnp.minimum(confidence - mu, 0.0)
  weight = jnp.where(confidence < mu, jnp.exp(-gap**2 * n_sigma**2 / (2.0 * var)), 1.0)

  loss = mean_across_devices(jnp.mean(_hard_cross_entropy(logits_strong, labels) * weight),
                             axis_name)
  return loss, {"mask_rate": mean_across_devices(jnp.mean(weight), axis_name),
                "state": {"p_model": p_model, "mu": mu, "var": var}}
