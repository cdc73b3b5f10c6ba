"""Ranking-based and positive-hallucinating contrastive losses: GroCo and HaLP."""

import functools
import math
from collections.abc import Hashable

import jax
import jax.numpy as jnp
import numpy as np

from sslx.losses import _checks
from sslx.losses._common import (
    as_float32, batch_offset, gather_batch, l2_normalize, mean_across_devices, num_shards,
    replicate_rows)

# --- Differentiable sorting network (Petersen et al.) -------------------------------------------

RELAXATIONS = ("cauchy", "logistic")


@functools.lru_cache(maxsize=None)
def _odd_even_layers(n: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
  """The odd-even transposition network on ``n`` wires, one entry per layer.

  Each layer is ``(partner, low, high)``: wire ``j`` is compared with wire ``partner[j]``, and
  ``low[j] < high[j]`` are the two wires of its comparator (the minimum goes to ``low``).
  Wires without a comparator in a layer have ``partner = low = high = j``. ``n`` layers sort any
  input when the swaps are hard, as in ``diffsort.networks.odd_even_network``.
  """
  layers = []
  for layer in range(n):
    partner = np.arange(n)
    for i in range(layer % 2, n - 1, 2):
      partner[i], partner[i + 1] = i + 1, i
    low = np.minimum(np.arange(n), partner)
    high = np.maximum(np.arange(n), partner)
    layers.append((partner, low, high))
  return tuple(layers)


def _swap_probability(difference: jax.Array, steepness, relaxation: str) -> jax.Array:
  """Relaxed probability that a comparator keeps its two wires in place, from ``high - low``."""
  v = steepness * difference
  if relaxation == "cauchy":
    return jnp.arctan(v) / math.pi + 0.5
  return jax.nn.sigmoid(v)


def _diff_sort(values: jax.Array, steepness, relaxation: str) -> jax.Array:
  """Relaxed permutation matrix of a differentiable odd-even sorting network (ascending).

  Args:
    values: ``[batch, n]`` numbers to sort along the last axis.
    steepness: inverse temperature of the relaxation.
    relaxation: ``"cauchy"`` or ``"logistic"``.

  Returns:
    ``[batch, n, n]`` matrix ``P`` with ``P[r, j]`` the (relaxed) probability that input ``r``
    ends at sorted position ``j`` (position 0 is the smallest): the relaxed sorted values are
    ``values @ P``. Each comparator mixes its two wires with weights ``a`` and ``1 - a``, so
    ``P`` is doubly stochastic; with hard swaps it is the sorting permutation.
  """
  x = values
  n = values.shape[1]
  perm = jnp.broadcast_to(jnp.eye(n, dtype=values.dtype), (values.shape[0], n, n))
  for partner, low, high in _odd_even_layers(values.shape[1]):
    # alpha_j is the weight wire j keeps on itself: the comparator's min wire keeps
    # alpha = p(x_low <= x_high), and its max wire keeps the same alpha (it takes the max).
    # Unpaired wires have low = high = partner = j and are left unchanged whatever alpha is.
    alpha = _swap_probability(x[:, high] - x[:, low], steepness, relaxation)
    x = alpha * x + (1.0 - alpha) * x[:, partner]
    perm = alpha[:, None, :] * perm + (1.0 - alpha[:, None, :]) * perm[:, :, partner]
  return perm


def _log(p: jax.Array) -> jax.Array:
  # torch.nn.BCELoss clamps log at -100; float32 cannot hold exp(-100) as a normal number, so
  # the floor is the smallest normal float instead (log = -87.3). It only matters for a
  # probability below 1e-38, which the heavy-tailed Cauchy relaxation never produces.
  return jnp.log(jnp.maximum(p, jnp.finfo(jnp.float32).tiny))


def groco(
    z1: jax.Array,
    z2: jax.Array,
    *,
    num_negatives: int = 10,
    steepness: float = 1.0,
    relaxation: str = "cauchy",
    stop_gradient: bool = True,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""GroCo, the group-ordering loss of "Learning by Sorting".

  From Shvetsova, Petersen, Kukleva, Schiele and Kuehne, "Learning by Sorting: Self-supervised
  Learning with Group Ordering Constraints", ICCV 2023 (arXiv:2301.02009), with the sorting
  relaxation of Petersen, Borgelt, Kuehne and Deussen, "Differentiable Sorting Networks for
  Scalable Sorting and Ranking Supervision", ICML 2021 (arXiv:2105.04019). Follows the authors'
  code (github.com/ninatu/learning_by_sorting, ``losses/groco.py``, two-view configs).

  For each view ``v`` in {1, 2} and each anchor ``a_i`` (row ``i`` of ``z_v``, normalised),
  with cosine similarity ``s``:

  * the positive score is ``s(a_i, z_{3-v}[i])`` (the other view of example ``i``);
  * the negative scores are the ``k = num_negatives`` largest ``s(a_i, z_v[j])``, ``j != i``,
    over the global batch (other examples of the *same* view, as in the authors' code).

  Concatenate ``x = [negatives ascending (k), positive (1)]`` (``n = k + 1``; the target order
  is already ascending) and run it through a differentiable odd-even sorting network: each
  comparator on wires ``l < h`` keeps them in place with probability
  ``alpha = 1/2 + arctan(steepness (x_h - x_l)) / pi`` (Cauchy; or ``sigmoid(steepness (x_h -
  x_l))``, logistic) and swaps them otherwise, mixing values and the relaxed permutation matrix
  ``P`` (``P[r, j]``: probability that score ``r`` lands at rank ``j``, rank 0 lowest). With
  ``q_r = sum_{j >= k} P[r, j]`` (probability of landing in the positive group, the top rank)
  and ``m_r = sum_{j < k} P[r, j]`` (negative group), and targets ``t_r = [r >= k]``::

      BCE(p, t) = -t log(p) - (1 - t) log(1 - p)
      l_i = 1/(2n) sum_r ( BCE(q_r, t_r) + BCE(m_r, 1 - t_r) )
      L   = 1/2 (mean_i l_i over view-1 anchors + mean_i l_i over view-2 anchors)

  so that positives are pushed above every negative while the order within each group is free.
  ``q_r, m_r`` are clipped to [0, 1] and the logs floored, as torch's BCELoss does.

  With ``stop_gradient=True`` (the authors' default) the positive and the negatives are
  constants and only the anchor receives gradient; both views still get gradients because each
  view is an anchor in turn.

  Args:
    z1: ``[b, D]`` projections of the first view.
    z2: ``[b, D]`` projections of the second view; row ``j`` is the same example as row ``j``
      of ``z1``.
    num_negatives: ``k``, how many hardest negatives are ranked (authors: 10). The global batch
      must have at least ``k + 1`` examples.
    steepness: inverse temperature of the comparator relaxation, > 0 (authors: 1).
    relaxation: ``"cauchy"`` (authors' choice) or ``"logistic"``.
    stop_gradient: treat positives and negatives as constants (authors' default).
    axis_name: ``None`` for global arrays (one device, or ``jax.jit`` over a sharded mesh).
      Inside ``jax.shard_map``, the mapped batch axis: negatives are then gathered from every
      device, and shard ``r`` holds examples ``r*b .. r*b + b - 1``. All shards have equal ``b``.

  Returns:
    A float32 scalar ``L`` (inputs of any float dtype are cast to float32). With ``axis_name``
    it is the ``pmean`` of the local means, the same on every device; gradients behave as
    described for ``nt_xent``. Zero vectors normalise to zero (norms clamped at 1e-6), so all
    their scores are 0, every comparator is a coin flip, and the loss and gradient stay finite.

  Raises:
    ValueError: if ``z1``/``z2`` are not rank 2 or differ in shape, ``num_negatives`` < 1, the
      global batch is smaller than ``num_negatives + 1``, ``steepness`` <= 0 or ``relaxation``
      is unknown.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import groco
    >>> z = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # positive score 1, negative score 0
    >>> loss = groco(z, 2.0 * z, num_negatives=1)  # = -log(1/2 + arctan(1)/pi) = -log(3/4)
    >>> loss.dtype, round(float(loss), 4)
    (dtype('float32'), 0.2877)
  """
  _checks.check_pair("z1", z1, "z2", z2)
  _checks.check_positive("steepness", steepness)
  if not isinstance(num_negatives, (int, np.integer)) or num_negatives < 1:
    raise ValueError(f"num_negatives must be an integer >= 1, but got {num_negatives!r}.")
  if relaxation not in RELAXATIONS:
    raise ValueError(f"relaxation must be one of {RELAXATIONS}, but got {relaxation!r}.")
  _checks.check_global_batch_size(
      "z1", z1, axis_name, num_negatives + 1,
      f"each anchor needs num_negatives={num_negatives} other examples as negatives")

  return _groco(z1, z2, steepness, num_negatives=num_negatives, relaxation=relaxation,
                stop_gradient=stop_gradient, axis_name=axis_name)


# One compiled program for the unrolled network, also when called eagerly (op-by-op dispatch of
# its ~10 gathers per layer would be slow); under an outer jit or shard_map it is inlined.
@functools.partial(
    jax.jit, static_argnames=("num_negatives", "relaxation", "stop_gradient", "axis_name"))
def _groco(z1, z2, steepness, *, num_negatives, relaxation, stop_gradient, axis_name):
  z1, z2 = as_float32(z1, z2)
  u1, u2 = l2_normalize(z1), l2_normalize(z2)
  const = jax.lax.stop_gradient if stop_gradient else (lambda x: x)
  local_batch = z1.shape[0]
  rows = jnp.arange(local_batch) + batch_offset(local_batch, axis_name)

  def per_anchor(anchors, partners):
    positive = jnp.sum(anchors * const(partners), axis=1)  # [b]
    keys = gather_batch(const(anchors), axis_name)  # [B, D], same view as the anchors
    sims = jnp.matmul(anchors, keys.T, precision=jax.lax.Precision.HIGHEST)  # [b, B]
    is_self = jnp.arange(keys.shape[0])[None, :] == rows[:, None]
    sims = jnp.where(is_self, -jnp.inf, sims)
    negatives = jax.lax.top_k(sims, num_negatives)[0][:, ::-1]  # ascending, [b, k]
    scores = jnp.concatenate([negatives, positive[:, None]], axis=1)  # [b, n]
    perm = _diff_sort(scores, steepness, relaxation)  # [b, n, n]
    in_positive_ranks = jnp.clip(jnp.sum(perm[:, :, num_negatives:], axis=2), 0.0, 1.0)
    in_negative_ranks = jnp.clip(jnp.sum(perm[:, :, :num_negatives], axis=2), 0.0, 1.0)
    is_positive = jnp.arange(num_negatives + 1) >= num_negatives  # t_r
    # The authors average two BCEs that agree up to rounding (P is doubly stochastic);
    # both are kept so float32 results match theirs.
    bce_positive = -jnp.where(is_positive, _log(in_positive_ranks), _log(1.0 - in_positive_ranks))
    bce_negative = -jnp.where(is_positive, _log(1.0 - in_negative_ranks), _log(in_negative_ranks))
    return 0.5 * jnp.mean(bce_positive + bce_negative, axis=1)  # [b]

  loss = 0.5 * (jnp.mean(per_anchor(u1, u2)) + jnp.mean(per_anchor(u2, u1)))
  loss = mean_across_devices(loss, axis_name)
  return loss


# --- HaLP ---------------------------------------------------------------------------------------


def _check_halp_options(num_positives, lambda_pos, num_candidates, skip_closest, num_prototypes):
  for name, value in (("num_positives", num_positives), ("num_candidates", num_candidates),
                      ("skip_closest", skip_closest)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1, but got {value!r}.")
  if not 0.0 <= lambda_pos <= 1.0:
    raise ValueError(f"lambda_pos must be in [0, 1], but got {lambda_pos!r}.")
  if num_prototypes <= skip_closest:
    raise ValueError(
        f"prototypes must have more than skip_closest={skip_closest} rows (the closest ones are "
        f"skipped as targets), but got {num_prototypes}.")


def halp_positives(
    anchors: jax.Array,
    prototypes: jax.Array,
    key: jax.Array,
    *,
    num_positives: int = 100,
    lambda_pos: float = 0.8,
    num_candidates: int = 20,
    skip_closest: int = 1,
    axis_name: Hashable | None = None,
) -> tuple[jax.Array, jax.Array]:
  r"""Hallucinated latent positives of HaLP, in closed form.

  From Shah, Roy, Shah, Mishra, Jacobs, Cherian and Chellappa, "HaLP: Hallucinating Latent
  Positives for Skeleton-based Self-Supervised Learning of Actions", CVPR 2023
  (arXiv:2304.00387); follows the authors' code (github.com/anshulbshah/HaLP,
  ``moco/generator.py``).

  Anchors ``k`` and prototypes are normalised. For each anchor, ``p0`` is its most similar
  prototype; a target ``p`` is drawn uniformly from the ``num_candidates`` prototypes ranked
  just after the ``skip_closest`` most similar ones (the slice ``argsort(sim)[-c-s:-s]`` of the
  code). The positive moves along the great circle (slerp) from ``k`` towards ``p``::

      omega = arccos(k . p),   g(t) = sin((1-t) omega)/sin(omega) k + sin(t omega)/sin(omega) p

  and the largest step that keeps ``g`` at least as close to ``p0`` as to ``p``
  (``g . (p0 - p) >= 0``) is, in closed form::

      K = (1 - p . p0) / (k . (p0 - p)),   t_max = arctan( sin(omega) / (K + cos(omega)) ) / omega

  The step is ``t = (1 - u) t_max`` with ``u ~ U(0, lambda_pos)``, so ``lambda_pos = 0`` gives
  the hardest positive ``t_max`` and larger values easier ones. The result is normalised. As in
  the code, ``1e-8`` is added to the denominators of ``K``, ``t_max`` and the slerp weights;
  here ``k . p`` is also clipped to [-1, 1] before ``arccos``, which the code does not do.

  A positive is *valid* (the paper's rank filter) when its most similar prototype is still
  ``p0``. Everything is computed under ``stop_gradient``: positives are constants, as in the
  code (keys and prototypes carry no gradient there).

  Randomness is drawn per example from ``jax.random.fold_in(key, global_index)``, so the same
  global batch gives the same positives on one device, under ``jax.jit`` over a mesh and inside
  ``jax.shard_map`` with ``axis_name``.

  Args:
    anchors: ``[b, D]`` anchor embeddings (HaLP uses the momentum encoder's keys).
    prototypes: ``[P, D]`` prototypes, replicated (HaLP: spherical k-means of the queue,
      refreshed every few steps by the caller). Must have more than ``skip_closest`` rows.
    key: a ``jax.random`` key (raw ``uint32[2]`` or typed), the same on every device.
    num_positives: ``M``, positives generated per anchor (code default 100).
    lambda_pos: hardness control in [0, 1] (code default 0.8).
    num_candidates: how many prototypes after the closest ones can be targets (code: 20).
    skip_closest: how many most similar prototypes are never targets, >= 1 (code: 1).
    axis_name: ``None`` for global arrays; inside ``jax.shard_map`` the mapped batch axis (only
      used for the global example index of each row).

  Returns:
    ``(positives, valid)``: float32 ``[b, M, D]`` unit vectors and bool ``[b, M]``.

  Raises:
    ValueError: on bad ranks/shapes, ``lambda_pos`` outside [0, 1], a non-positive integer
      option, or too few prototypes.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sslx.losses import halp_positives
    >>> anchors = jnp.array([[1.0, 0.0]])  # at angle 0; prototypes at +30 and -90 degrees
    >>> protos = jnp.array([[3**0.5 / 2, 0.5], [0.0, -1.0]])
    >>> pos, valid = halp_positives(anchors, protos, jax.random.key(0), num_positives=1,
    ...                             lambda_pos=0.0)  # hardest: the bisector, at -30 degrees
    >>> pos.shape, [round(float(v), 4) for v in pos[0, 0]]
    ((1, 1, 2), [0.866, -0.5])
  """
  _checks.check_rank("anchors", anchors, 2, "[batch, dim]")
  _checks.check_rank("prototypes", prototypes, 2, "[num_prototypes, dim]")
  if np.shape(prototypes)[1] != np.shape(anchors)[1]:
    raise ValueError(
        f"prototypes must have shape [num_prototypes, {np.shape(anchors)[1]}] (the anchors' "
        f"dim), but got shape {tuple(np.shape(prototypes))}.")
  _check_halp_options(num_positives, lambda_pos, num_candidates, skip_closest,
                      np.shape(prototypes)[0])

  return _halp_positives(anchors, prototypes, key, lambda_pos, num_positives=num_positives,
                         num_candidates=num_candidates, skip_closest=skip_closest,
                         axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=(
    "num_positives", "num_candidates", "skip_closest", "axis_name"))
def _halp_positives(anchors, prototypes, key, lambda_pos, *, num_positives, num_candidates,
                    skip_closest, axis_name):
  anchors, prototypes = as_float32(anchors, prototypes)
  k = jax.lax.stop_gradient(l2_normalize(anchors))
  protos = replicate_rows(jax.lax.stop_gradient(l2_normalize(prototypes)))
  num_protos = protos.shape[0]
  local_batch = k.shape[0]

  sim = jnp.matmul(k, protos.T, precision=jax.lax.Precision.HIGHEST)  # [b, P]
  order = jnp.argsort(sim, axis=1)  # ascending similarity, as the code
  closest = order[:, -1]
  start = max(num_protos - num_candidates - skip_closest, 0)
  candidates = order[:, start:num_protos - skip_closest]  # [b, c]

  rows = jnp.arange(local_batch) + batch_offset(local_batch, axis_name)

  def draws(row):
    choice_key, step_key = jax.random.split(jax.random.fold_in(key, row))
    choice = jax.random.randint(choice_key, (num_positives,), 0, candidates.shape[1])
    u = jax.random.uniform(step_key, (num_positives,), maxval=lambda_pos)
    return choice, u

  choice, u = jax.vmap(draws)(rows)  # [b, M] each
  target_idx = jnp.take_along_axis(candidates, choice, axis=1)  # [b, M]
  # One-hot products rather than protos[idx]: on an Explicit mesh a gather of a replicated
  # table with batch-sharded indices has no unambiguous output sharding.
  target = jnp.einsum("bmp,pd->bmd", jax.nn.one_hot(target_idx, num_protos), protos,
                      precision=jax.lax.Precision.HIGHEST)  # [b, M, D]
  p0 = jnp.einsum("bp,pd->bd", jax.nn.one_hot(closest, num_protos), protos,
                  precision=jax.lax.Precision.HIGHEST)[:, None, :]  # [b, 1, D]
  start_point = k[:, None, :]

  k_dot_diff = jnp.sum(start_point * (p0 - target), axis=-1)
  target_dot_p0 = jnp.sum(target * p0, axis=-1)
  cos_omega = jnp.clip(jnp.sum(target * start_point, axis=-1), -1.0, 1.0)
  big_k = (1.0 - target_dot_p0) / (k_dot_diff + 1e-8)
  omega = jnp.arccos(cos_omega)
  sin_omega = jnp.sin(omega)
  t_max = jnp.arctan(sin_omega / (big_k + cos_omega + 1e-8)) / (omega + 1e-8)
  t = (1.0 - u) * t_max
  alpha = jnp.sin((1.0 - t) * omega) / (sin_omega + 1e-8)
  beta = jnp.sin(t * omega) / (sin_omega + 1e-8)
  positives = l2_normalize(alpha[..., None] * start_point + beta[..., None] * target)

  new_closest = jnp.argmax(
      jnp.einsum("bmd,pd->bmp", positives, protos, precision=jax.lax.Precision.HIGHEST), axis=-1)
  valid = new_closest == closest[:, None]
  return positives, valid


def halp(
    query: jax.Array,
    keys: jax.Array,
    prototypes: jax.Array,
    rng: jax.Array,
    *,
    queue: jax.Array | None = None,
    temperature: float | jax.Array = 0.07,
    weight: float = 1.0,
    num_positives: int = 100,
    lambda_pos: float = 0.8,
    num_candidates: int = 20,
    skip_closest: int = 1,
    axis_name: Hashable | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  r"""MoCo InfoNCE plus the HaLP term on hallucinated positives.

  From Shah et al., "HaLP: Hallucinating Latent Positives for Skeleton-based Self-Supervised
  Learning of Actions", CVPR 2023 (arXiv:2304.00387), as in the authors' code
  (``moco/builder_single_modality_halp.py``). With normalised query ``q_i`` (gradient), key
  ``k_i`` (constant, the momentum encoder's output), negatives ``n_j`` and the positives
  ``g_im`` and validity mask ``v_im`` of :func:`halp_positives` generated from ``k_i``::

      L_nce  = mean_i -log( exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_j exp(q_i.n_j / t)) )
      L_halp = -sum_{i,m} v_im (q_i . g_im / t) / (sum_{i,m} v_im + 1e-8)
      L      = L_nce + weight * L_halp

  The code writes the HaLP term as ``log(exp(q.g / t))``, i.e. it only pulls the query towards
  the valid hallucinated positives (no denominator), averaged over valid positives. Its count
  of valid positives is per device; here it is over the global batch, so the value does not
  depend on the number of devices. Negatives are the ``queue`` (MoCo, as the authors) or, with
  ``queue=None``, the keys of the other examples of the global batch.

  Args:
    query: ``[b, D]`` query projections (receive gradient).
    keys: ``[b, D]`` key projections of the other view, treated as constants.
    prototypes: ``[P, D]`` replicated prototypes (see :func:`halp_positives`).
    rng: a ``jax.random`` key, the same on every device.
    queue: ``[K, D]`` replicated negatives (normalised here; constants), or ``None``.
    temperature: ``t``, > 0 (code: 0.07).
    weight: ``mu``, >= 0, the weight of ``L_halp`` (code default 1; its NTU scripts use 2).
    num_positives, lambda_pos, num_candidates, skip_closest: see :func:`halp_positives`.
    axis_name: ``None`` for global arrays; inside ``jax.shard_map`` the mapped batch axis.

  Returns:
    ``(loss, aux)``: the float32 scalar ``L`` and ``aux = {"infonce": L_nce, "halp": L_halp,
    "valid_fraction": fraction of valid positives}``, all global and equal on every device.
    Zero vectors normalise to zero (norms clamped at 1e-6); the loss and gradient stay finite.

  Raises:
    ValueError: on bad ranks/shapes, ``temperature`` <= 0, ``weight`` < 0, bad HaLP options, or
      ``queue=None`` with a global batch smaller than 2 (no negatives).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sslx.losses import halp
    >>> q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> protos = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> loss, aux = halp(q, q, protos, jax.random.key(0), temperature=1.0, weight=0.0)
    >>> round(float(aux["infonce"]), 4)  # log(1 + exp(-1)): one negative at cosine 0
    0.3133
  """
  _checks.check_pair("query", query, "keys", keys)
  _checks.check_positive("temperature", temperature)
  if not weight >= 0:
    raise ValueError(f"weight must be >= 0, but got {weight!r}.")
  if queue is not None:
    _checks.check_rank("queue", queue, 2, "[queue_size, dim]")
    if np.shape(queue)[1] != np.shape(query)[1]:
      raise ValueError(
          f"queue must have shape [queue_size, {np.shape(query)[1]}] (the query's dim), but got "
          f"shape {tuple(np.shape(queue))}.")
  else:
    _checks.check_global_batch_size(
        "query", query, axis_name, 2, "with queue=None the other examples are the negatives")

  positives, valid = halp_positives(
      keys, prototypes, rng, num_positives=num_positives, lambda_pos=lambda_pos,
      num_candidates=num_candidates, skip_closest=skip_closest, axis_name=axis_name)

  query, keys = as_float32(query, keys)
  q = l2_normalize(query)
  k = jax.lax.stop_gradient(l2_normalize(keys))
  local_batch = q.shape[0]
  positive_logit = jnp.sum(q * k, axis=1) / temperature  # [b]
  if queue is None:
    negatives = gather_batch(k, axis_name)  # [B, D]
    rows = jnp.arange(local_batch) + batch_offset(local_batch, axis_name)
    is_negative = jnp.arange(negatives.shape[0])[None, :] != rows[:, None]
  else:
    negatives = replicate_rows(jax.lax.stop_gradient(l2_normalize(as_float32(queue)[0])))
    is_negative = jnp.ones((1, negatives.shape[0]), bool)
  negative_logits = jnp.matmul(q, negatives.T, precision=jax.lax.Precision.HIGHEST) / temperature
  negative_logits = jnp.where(is_negative, negative_logits, -jnp.inf)
  all_logits = jnp.concatenate([positive_logit[:, None], negative_logits], axis=1)
  infonce = jnp.mean(jax.nn.logsumexp(all_logits, axis=1) - positive_logit)

  valid_f = valid.astype(jnp.float32)
  pulled = jnp.einsum("bd,bmd->bm", q, positives, precision=jax.lax.Precision.HIGHEST)
  pulled_sum = jnp.sum(valid_f * pulled) / temperature
  valid_count = jnp.sum(valid_f)
  if axis_name is not None:
    infonce = jax.lax.pmean(infonce, axis_name)
    pulled_sum = jax.lax.psum(pulled_sum, axis_name)
    valid_count = jax.lax.psum(valid_count, axis_name)
  halp_term = -pulled_sum / (valid_count + 1e-8)
  loss = infonce + weight * halp_term
  total = num_positives * local_batch * num_shards(axis_name)
  return loss, {"infonce": infonce, "halp": halp_term, "valid_fraction": valid_count / total}
