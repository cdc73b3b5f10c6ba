"""Clustering losses: Sinkhorn-Knopp equipartitioned codes and SwAV swapped prediction."""

import numbers
from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sslx.losses import _checks
from sslx.losses._common import (
    as_float32, gather_batch_invariant, l2_normalize, mean_across_devices)


def _check_num_iters(num_iters) -> None:
  if (not isinstance(num_iters, numbers.Integral) or isinstance(num_iters, bool)
      or num_iters < 0):
    raise ValueError(f"num_iters must be an integer >= 0, but got {num_iters!r}.")


def _logsumexp_over_samples(
    logits: jax.Array, queue_logits: jax.Array | None, axis_name: Hashable | None) -> jax.Array:
  """``log sum_i exp(logits[i, k])`` over the global batch's rows and the queue's rows: ``[K]``.

  ``logits`` ([b, K]) are this device's rows when ``axis_name`` is set; ``queue_logits`` ([Q, K])
  are replicated, so their sum is added once rather than psum-ed (which would count it n times).
  Shifting by the global maximum keeps ``exp`` in range for any ``scores / epsilon``.
  """
  shift = jnp.max(logits, axis=0)
  if axis_name is not None:
    shift = jax.lax.pmax(shift, axis_name)
  if queue_logits is not None:
    shift = jnp.maximum(shift, jnp.max(queue_logits, axis=0))
  total = jnp.sum(jnp.exp(logits - shift), axis=0)
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
  if queue_logits is not None:
    total = total + jnp.sum(jnp.exp(queue_logits - shift), axis=0)
  return shift + jnp.log(total)


def sinkhorn_knopp(
    scores: jax.Array,
    *,
    epsilon: float = 0.05,
    num_iters: int = 3,
    queue_scores: jax.Array | None = None,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""Soft cluster assignments with equal cluster sizes, by Sinkhorn-Knopp (SwAV's codes).

  From Caron, Misra, Mairal, Goyal, Bojanowski and Joulin, "Unsupervised Learning of Visual
  Features by Contrasting Cluster Assignments", NeurIPS 2020 (arXiv:2006.09882), Sec. 3.1 and
  ``distributed_sinkhorn`` in facebookresearch/swav's main_swav.py, which this follows.

  With ``S`` the ``[B, K]`` scores of the ``B`` samples of the global batch (plus the queue's
  ``Q`` rows, if given; ``N = B + Q``) against ``K`` prototypes, start from
  ``P_ik = exp(S_ik / epsilon) / sum_jl exp(S_jl / epsilon)`` and repeat ``num_iters`` times::

      P_ik <- P_ik / (K * sum_j P_jk)      # every prototype gets total weight 1/K
      P_ik <- P_ik / (N * sum_l P_il)      # every sample gets total weight 1/N

  and return the codes ``q_ik = N * P_ik`` (each row sums to 1). The authors' code works on the
  transpose ``Q = P^T`` ([K, B]) and all-reduces the per-prototype sums; here the same
  iterations run in log space (``exp(S / epsilon)`` overflows float32 once a score exceeds
  ``88 * epsilon``, 4.4 at the default), which is the same arithmetic up to rounding.

  The codes are a target: they are computed under ``jax.lax.stop_gradient`` and carry no
  gradient to ``scores`` (the authors compute them under ``torch.no_grad``).

  Args:
    scores: ``[b, K]`` prototype scores of ``b`` samples (in SwAV, dot products of
      l2-normalised embeddings with l2-normalised prototypes).
    epsilon: the entropic regularisation, > 0 (0.05 in the paper).
    num_iters: how many row-then-column normalisation rounds, >= 0 (3 in the paper).
    queue_scores: optional ``[Q, K]`` scores of queued embeddings of earlier batches, which join
      the transport problem (the prototype and sample counts include them) but get no codes
      back. They are the whole queue, the same on every device (replicated): with
      ``axis_name`` they are counted once, not once per device.
    axis_name: ``None`` when ``scores`` is the whole global batch (also under ``jax.jit`` with
      ``scores`` sharded along the batch over a mesh). Inside ``jax.shard_map``, the mapped axis:
      ``scores`` is then the local shard and the per-prototype sums run over every device's
      samples (``psum``), with ``N`` the global count, so the codes equal those computed on one
      device from the whole batch.

  Returns:
    ``[b, K]`` float32 codes, each row a probability vector, for the rows of ``scores`` (not for
    the queue). Zero scores (e.g. from all-zero embeddings) give uniform codes ``1/K``.

  Raises:
    ValueError: if ``scores`` is not rank 2, ``queue_scores`` is not ``[Q, K]``, the global
      batch plus the queue holds fewer than 2 samples (a single sample's code would be forced
      to be uniform), ``epsilon`` is a number <= 0 or ``num_iters`` is not an integer >= 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import sinkhorn_knopp
    >>> # Both samples prefer prototype 0; equipartition splits them evenly between the two.
    >>> scores = jnp.array([[1.0, 0.0], [1.0, 0.0]])
    >>> print(sinkhorn_knopp(scores, epsilon=1.0, num_iters=1).round(4))
    [[0.5 0.5]
     [0.5 0.5]]
    >>> # Distinct preferences are kept: the codes are softmax(scores / epsilon) here.
    >>> codes = sinkhorn_knopp(jnp.eye(2), epsilon=1.0)
    >>> [[round(c, 4) for c in row] for row in codes.tolist()]
    [[0.7311, 0.2689], [0.2689, 0.7311]]
  """
  _checks.check_rank("scores", scores, 2, "[batch, num_prototypes]")
  num_prototypes = np.shape(scores)[1]
  if queue_scores is not None:
    _checks.check_rank("queue_scores", queue_scores, 2, "[queue_length, num_prototypes]")
    if np.shape(queue_scores)[1] != num_prototypes:
      raise ValueError(
          f"queue_scores must have shape [queue_length, num_prototypes] with num_prototypes = "
          f"{num_prototypes} (scores.shape[1]), but got shape {tuple(np.shape(queue_scores))}.")
  _checks.check_positive("epsilon", epsilon)
  _check_num_iters(num_iters)

  (scores,) = as_float32(scores)
  global_batch = _checks.check_global_batch_size(
      "scores", scores, axis_name, 1, "codes are computed for the batch")
  queue_length = 0 if queue_scores is None else np.shape(queue_scores)[0]
  num_samples = global_batch + queue_length
  _checks.check_min_size(
      "the number of samples (global batch plus queue)", num_samples, 2,
      "with one sample the equal-size constraint forces a uniform code")

  logits = jax.lax.stop_gradient(scores) / epsilon
  queue_logits = None
  if queue_scores is not None:
    (queue_scores,) = as_float32(queue_scores)
    queue_logits = jax.lax.stop_gradient(queue_scores) / epsilon

  log_k = np.log(num_prototypes).astype(np.float32)
  log_n = np.log(num_samples).astype(np.float32)

  # Normalise the total mass to 1, as the authors do before the first iteration; it only
  # matters when num_iters == 0.
  total = jax.nn.logsumexp(_logsumexp_over_samples(logits, queue_logits, axis_name))
  logits = logits - total
  if queue_logits is not None:
    queue_logits = queue_logits - total

  def iteration(_, carry):
    logits, queue_logits = carry
    # Every prototype gets total weight 1/K over the batch and the queue together.
    per_prototype = _logsumexp_over_samples(logits, queue_logits, axis_name)[None, :] + log_k
    # Every sample gets total weight 1/N; these sums are per row, so they need no communication.
    logits = logits - per_prototype
    logits = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True) - log_n
    if queue_logits is not None:
      queue_logits = queue_logits - per_prototype
      queue_logits = queue_logits - jax.nn.logsumexp(queue_logits, axis=1, keepdims=True) - log_n
    return logits, queue_logits

  # A loop rather than unrolling keeps compile time independent of num_iters.
  logits, _ = jax.lax.fori_loop(0, num_iters, iteration, (logits, queue_logits))
  return jax.lax.stop_gradient(jnp.exp(logits + log_n))


def normalize_prototypes(prototypes: jax.Array) -> jax.Array:
  """Projects the ``[K, D]`` prototype vectors onto the unit sphere (rows l2-normalised).

  SwAV (facebookresearch/swav main_swav.py) normalises the prototype weights in place, outside
  the gradient, before every training step, so that scores are cosine similarities; ``swav``
  takes scores and leaves this to the caller: apply this to the prototype parameters before the
  forward pass (e.g. in the train step, ahead of ``jax.grad``), and compute
  ``scores = l2_normalize(z) @ prototypes.T``. An all-zero prototype stays zero (norms are
  clamped at 1e-6), so its scores are 0.

  Args:
    prototypes: ``[K, D]`` prototype vectors (the rows of SwAV's bias-free linear layer).

  Returns:
    ``[K, D]`` float32 rows of unit norm.

  Raises:
    ValueError: if ``prototypes`` is not rank 2.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import normalize_prototypes
    >>> print(normalize_prototypes(jnp.array([[3.0, 4.0], [0.0, 0.0]])))
    [[0.6 0.8]
     [0.  0. ]]
  """
  _checks.check_rank("prototypes", prototypes, 2, "[num_prototypes, dim]")
  (prototypes,) = as_float32(prototypes)
  return l2_normalize(prototypes)


def _check_crops_for_assign(crops_for_assign, num_views: int) -> tuple[int, ...]:
  crops = tuple(crops_for_assign)
  if (not crops or len(set(crops)) != len(crops)
      or not all(isinstance(c, numbers.Integral) and 0 <= c < num_views for c in crops)):
    raise ValueError(
        f"crops_for_assign must be distinct view indices in [0, {num_views}) (scores_per_view "
        f"has {num_views} views), but got {crops_for_assign!r}.")
  return crops


def _check_queue(name: str, queue, num_assigned: int, last_dim: int, last_name: str) -> None:
  _checks.check_rank(name, queue, 3, f"[len(crops_for_assign), queue_length, {last_name}]")
  shape = tuple(np.shape(queue))
  if shape[0] != num_assigned or shape[2] != last_dim:
    raise ValueError(
        f"{name} must have shape [len(crops_for_assign), queue_length, {last_name}] = "
        f"[{num_assigned}, queue_length, {last_dim}], but got shape {shape}.")


def swav(
    scores_per_view: jax.Array,
    *,
    temperature: float | jax.Array = 0.1,
    epsilon: float = 0.05,
    num_iters: int = 3,
    crops_for_assign: Sequence[int] = (0, 1),
    queue_scores: jax.Array | None = None,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""SwAV's swapped prediction loss.

  From Caron, Misra, Mairal, Goyal, Bojanowski and Joulin, "Unsupervised Learning of Visual
  Features by Contrasting Cluster Assignments", NeurIPS 2020 (arXiv:2006.09882), eqs. (1)-(3),
  in the multi-crop form of facebookresearch/swav's main_swav.py, which this follows.

  With ``V`` views (crops) of a global batch of ``B`` images, ``s_v`` the ``[B, K]`` prototype
  scores of view ``v``, ``A`` the views in ``crops_for_assign`` and temperature ``t``::

      q_a   = sinkhorn_knopp(s_a)                      # [B, K] codes, no gradient
      p_v   = softmax(s_v / t)                         # row-wise
      l(a, v) = -1/B sum_i sum_k q_a[i, k] log p_v[i, k]
      L     = 1/|A| sum_{a in A} 1/(V - 1) sum_{v != a} l(a, v)

  Each assigned view's code is predicted from every other view, global or local. With a queue,
  ``q_a`` comes from Sinkhorn over the queued scores of view ``a`` followed by the batch's, and
  only the batch's codes are used, as in the authors' code.

  The scores are the caller's: SwAV uses ``s_v = normalize(z_v) @ normalize(C).T`` with
  l2-normalised embeddings and prototypes ``C`` renormalised before every step
  (``normalize_prototypes``). Queue maintenance is ``swav_update_queue``.

  Args:
    scores_per_view: ``[V, b, K]``, the scores of ``V >= 2`` views; the two global views come
      first (SwAV assigns codes to them), then the local crops. Row ``i`` of every view is the
      same image.
    temperature: ``t`` above, > 0 (0.1 in the paper). A (traced) array is used as is.
    epsilon: Sinkhorn's entropic regularisation, > 0 (0.05).
    num_iters: Sinkhorn iterations, >= 0 (3).
    crops_for_assign: distinct indices of the views whose codes are targets ((0, 1) in the
      paper: the two global views).
    queue_scores: optional ``[len(crops_for_assign), Q, K]``: for each assigned view, the scores
      of its queued embeddings of earlier batches against the current prototypes
      (``queue @ prototypes.T``). The queue is the whole global queue, replicated on every
      device (where the authors keep a ``Q / n`` slice per device; the union is the same
      problem). The authors start using it only once it is full: pass ``None`` until then.
    axis_name: ``None`` for global arrays (one device, or ``jax.jit`` with ``scores_per_view``
      sharded along axis 1 over a mesh, ``P(None, "data")``). Inside ``jax.shard_map``, the
      mapped axis: ``scores_per_view`` holds the local ``b`` rows of each view, Sinkhorn's
      per-prototype sums are ``psum``-ed over devices, and the batch mean is ``pmean``-ed, so
      the value and gradients are those of ``L`` over the global batch (see ``nt_xent`` for how
      gradients behave inside the body; with ``check_vma=True`` no extra scaling is needed).

  Returns:
    A float32 scalar ``L``. The gradient flows through ``p_v`` only. All-zero scores (e.g. from
    all-zero embeddings, which ``l2_normalize`` maps to zero) give uniform codes and
    predictions, so ``L = log K``, with finite gradients.

  Raises:
    ValueError: if ``scores_per_view`` is not rank 3 or has fewer than 2 views,
      ``crops_for_assign`` is empty, repeated or out of range, ``queue_scores`` does not have
      shape ``[len(crops_for_assign), Q, K]``, the global batch plus queue is below 2 samples,
      or ``temperature``/``epsilon`` is a number <= 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import swav
    >>> s = jnp.stack([jnp.eye(2), jnp.eye(2)])  # two views with the same scores
    >>> # codes = predictions = [[a, 1 - a], [1 - a, a]], a = e / (1 + e): L = H(a) in nats
    >>> round(float(swav(s, temperature=1.0, epsilon=1.0)), 4)
    0.5822
  """
  _checks.check_rank("scores_per_view", scores_per_view, 3, "[views, batch, num_prototypes]")
  num_views, _, num_prototypes = np.shape(scores_per_view)
  _checks.check_min_size(
      "the number of views (scores_per_view.shape[0])", num_views, 2,
      "a code is predicted from another view")
  crops = _check_crops_for_assign(crops_for_assign, num_views)
  if queue_scores is not None:
    _check_queue("queue_scores", queue_scores, len(crops), num_prototypes, "num_prototypes")
  _checks.check_positive("temperature", temperature)

  (scores_per_view,) = as_float32(scores_per_view)
  log_probs = jax.nn.log_softmax(scores_per_view / temperature, axis=-1)  # [V, b, K]

  loss = 0.0
  for i, assigned in enumerate(crops):
    codes = sinkhorn_knopp(
        scores_per_view[assigned], epsilon=epsilon, num_iters=num_iters,
        queue_scores=None if queue_scores is None else queue_scores[i], axis_name=axis_name)
    # Cross-entropy of the code with each view's prediction, one per view: [V, b] -> [V].
    cross_entropy = -jnp.mean(jnp.sum(codes[None] * log_probs, axis=-1), axis=1)
    others = np.arange(num_views) != assigned
    loss = loss + jnp.sum(jnp.where(others, cross_entropy, 0.0)) / (num_views - 1)
  loss = loss / len(crops)

  # Equal shard sizes make the mean of local batch means the global mean.
  loss = mean_across_devices(loss, axis_name)
  return loss


def swav_update_queue(
    queue: jax.Array,
    embeddings_per_view: jax.Array,
    *,
    crops_for_assign: Sequence[int] = (0, 1),
    axis_name: Hashable | None = None,
) -> jax.Array:
  """SwAV's queue after a step: the newest global batch of embeddings in front, oldest dropped.

  As in facebookresearch/swav main_swav.py, each assigned view has its own first-in-first-out
  queue of (l2-normalised, gradient-free) embeddings; after the step's codes are computed, the
  batch's embeddings of that view are pushed to the front. The authors keep a ``Q / n`` slice per
  device holding that device's samples; here the queue is the whole global queue, replicated
  (gathered from every device when ``axis_name`` is set), so ``swav`` sees the same samples.

  Args:
    queue: ``[len(crops_for_assign), Q, D]``, the current queue (zeros when empty).
    embeddings_per_view: ``[V, b, D]``, this step's embeddings of every view (SwAV's normalised
      projector outputs).
    crops_for_assign: as in ``swav``: which views feed the queue, in the queue's order.
    axis_name: ``None`` for global arrays; inside ``jax.shard_map`` the mapped axis, over which
      the embeddings are gathered (device ``r``'s rows follow device ``r - 1``'s).

  Returns:
    The new ``[len(crops_for_assign), Q, D]`` float32 queue (stop-gradient): the ``B`` global
    rows of the step (all of them if ``B >= Q``, then only the first ``Q``) followed by the
    first ``Q - B`` rows of ``queue``.

  Raises:
    ValueError: on shapes that do not match, or bad ``crops_for_assign``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import swav_update_queue
    >>> queue = jnp.zeros((1, 3, 1))
    >>> emb = jnp.array([[[1.0], [2.0]], [[5.0], [6.0]]])  # 2 views, batch 2, dim 1
    >>> q = swav_update_queue(queue, emb, crops_for_assign=(0,))
    >>> q = swav_update_queue(q, emb + 2.0, crops_for_assign=(0,))
    >>> q[0, :, 0].tolist()
    [3.0, 4.0, 1.0]
  """
  _checks.check_rank("embeddings_per_view", embeddings_per_view, 3, "[views, batch, dim]")
  num_views, _, dim = np.shape(embeddings_per_view)
  crops = _check_crops_for_assign(crops_for_assign, num_views)
  _check_queue("queue", queue, len(crops), dim, "dim")
  queue_length = np.shape(queue)[1]

  queue, embeddings_per_view = as_float32(queue, embeddings_per_view)
  newest = jax.lax.stop_gradient(embeddings_per_view[np.asarray(crops)])  # [A, b, D]
  # Typed invariant across the axis, so the new queue can leave a shard_map replicated.
  newest = gather_batch_invariant(newest, axis_name, axis=1)
  return jnp.concatenate([newest, jax.lax.stop_gradient(queue)], axis=1)[:, :queue_length]
