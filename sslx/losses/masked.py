"""Masked-prediction losses: MAE pixel reconstruction, I-JEPA and data2vec feature regression."""

from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sslx.losses import _checks
from sslx.losses._common import as_float32, mean_across_devices

# torch.nn.functional.layer_norm / instance_norm's default eps, which I-JEPA and data2vec use.
TORCH_NORM_EPS = 1e-5


def _check_mask(mask, reference, reference_name: str) -> None:
  expected = tuple(np.shape(reference))[:2]
  if tuple(np.shape(mask)) != expected:
    raise ValueError(
        f"mask must have shape [batch, num_positions] = {expected} ({reference_name}.shape[:2]), "
        f"but got shape {tuple(np.shape(mask))}.")


def _masked_mean(per_position: jax.Array, mask: jax.Array, axis_name: Hashable | None):
  """``sum(per_position * mask) / sum(mask)`` over the global batch; 0 when nothing is masked."""
  total = jnp.sum(per_position * mask)
  count = jnp.sum(mask)
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
    count = jax.lax.psum(count, axis_name)
  # With no masked position the sum is 0 too; the safe denominator keeps 0/0 (and its
  # gradient) out of the result.
  return jnp.where(count > 0, total / jnp.maximum(count, 1e-12), 0.0)


def _layer_norm(x: jax.Array, axis: int) -> jax.Array:
  """Affine-free normalisation to zero mean and unit (biased) variance along ``axis``, as
  ``F.layer_norm`` (``axis=-1``) and ``F.instance_norm`` (``axis`` = time) compute it."""
  mean = jnp.mean(x, axis=axis, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=axis, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + TORCH_NORM_EPS)


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """Cuts ``[b, H, W, C]`` images into non-overlapping ``p x p`` patches, flattened.

  The layout of facebookresearch/mae's ``patchify`` (which takes NCHW images): patches in
  row-major order over the ``(H/p) x (W/p)`` grid, each patch flattened as ``(row, column,
  channel)``, so row ``h * (W/p) + w`` of the output is the patch at grid position ``(h, w)``.

  Args:
    images: ``[b, H, W, C]`` (channels last, as flax convolutions take them).
    patch_size: ``p``, a positive integer dividing both ``H`` and ``W``.

  Returns:
    ``[b, (H/p) * (W/p), p * p * C]``, in the dtype of ``images``.

  Raises:
    ValueError: if ``images`` is not rank 4 or ``p`` does not divide ``H`` and ``W``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import patchify
    >>> image = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> print(patchify(image, 2)[0])
    [[ 0.  1.  4.  5.]
     [ 2.  3.  6.  7.]
     [ 8.  9. 12. 13.]
     [10. 11. 14. 15.]]
  """
  _checks.check_rank("images", images, 4, "[batch, height, width, channels]")
  batch, height, width, channels = np.shape(images)
  if not isinstance(patch_size, (int, np.integer)) or patch_size < 1 or (
      height % patch_size or width % patch_size):
    raise ValueError(
        f"patch_size must be a positive integer dividing the height and width of images "
        f"(shape {(batch, height, width, channels)}), but got {patch_size!r}.")
  grid_h, grid_w = height // patch_size, width // patch_size
  x = jnp.reshape(images, (batch, grid_h, patch_size, grid_w, patch_size, channels))
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))  # [b, H/p, W/p, p, p, C]
  return jnp.reshape(x, (batch, grid_h * grid_w, patch_size * patch_size * channels))


def mae(
    pred: jax.Array,
    target: jax.Array,
    mask: jax.Array,
    *,
    norm_pix_loss: bool = True,
    eps: float = 1e-6,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""The masked autoencoder's pixel reconstruction loss.

  From He, Chen, Xie, Li, Dollar and Girshick, "Masked Autoencoders Are Scalable Vision
  Learners", CVPR 2022 (arXiv:2111.06377), Sec. 3, as ``forward_loss`` in facebookresearch/mae's
  models_mae.py computes it. With ``x_il`` the ``P`` target pixels of patch ``l`` of image ``i``
  and ``m_il = 1`` for a masked (removed) patch::

      t_il = (x_il - mean(x_il)) / sqrt(var(x_il) + eps)   if norm_pix_loss, else x_il
      e_il = 1/P sum_p (pred_ilp - t_ilp)^2
      L    = sum_il m_il e_il / sum_il m_il

  ``var`` is the unbiased variance (``P - 1`` in the denominator), as torch's ``Tensor.var``
  default in the authors' code. Visible patches do not count.

  Over several devices the authors average over each device's own masked patches and then
  average the devices' losses (DDP averages the gradients). Here ``L`` is defined over the global
  batch, the sum of every device's masked errors over the total masked count (both ``psum``-ed
  with ``axis_name``): the same whenever every device masks the same number of patches (MAE's
  fixed mask ratio), and independent of how the batch is split otherwise.

  Args:
    pred: ``[b, L, P]`` decoder predictions for all ``L`` patches (``P = p * p * C``).
    target: ``[b, L, P]``, the patchified images (``patchify(images, p)``). Gradients flow to it
      too, though it is normally data.
    mask: ``[b, L]``, 1 (or True) where the patch was masked and must be reconstructed, 0 where
      it was visible to the encoder.
    norm_pix_loss: normalise each target patch by its own mean and variance (True in the
      paper's main results).
    eps: added to the variance, > 0 (1e-6 in the authors' code).
    axis_name: ``None`` for global arrays (one device, or ``jax.jit`` with inputs sharded along
      the batch). Inside ``jax.shard_map``, the mapped axis: numerator and masked count are
      ``psum``-ed, so every device gets the global ``L`` and, inside the body, the gradient of
      ``L`` with respect to its shard (see ``nt_xent``).

  Returns:
    A float32 scalar ``L``; 0 if no patch is masked anywhere. A constant target patch (zero
    variance) normalises to zero, so all-zero inputs give 0 with finite gradients.

  Raises:
    ValueError: if ``pred`` or ``target`` is not rank 3, their shapes differ, ``mask`` is not
      ``[b, L]``, ``eps`` is a number <= 0, or ``norm_pix_loss`` is set with ``P = 1`` (the
      unbiased variance of one pixel is undefined).

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import mae
    >>> target = jnp.array([[[1.0, 3.0], [0.0, 0.0]]])  # one image, two patches of 2 pixels
    >>> pred = jnp.zeros((1, 2, 2))
    >>> mask = jnp.array([[1, 0]])  # only the first patch was masked
    >>> round(float(mae(pred, target, mask, norm_pix_loss=False)), 4)  # (1 + 9) / 2
    5.0
    >>> # normalised target (-1, 1) / sqrt(2 + 1e-6): error (1/2 + 1/2) / 2
    >>> round(float(mae(pred, target, mask)), 4)
    0.5
  """
  _checks.check_rank("pred", pred, 3, "[batch, num_patches, patch_dim]")
  _checks.check_rank("target", target, 3, "[batch, num_patches, patch_dim]")
  _checks.check_same_shape("pred", pred, "target", target)
  _check_mask(mask, pred, "pred")
  _checks.check_positive("eps", eps)
  if norm_pix_loss and np.shape(target)[2] < 2:
    raise ValueError(
        f"norm_pix_loss needs at least 2 values per patch for the unbiased variance, but target "
        f"has shape {tuple(np.shape(target))}.")

  pred, target, mask = as_float32(pred, target, mask)
  if norm_pix_loss:
    mean = jnp.mean(target, axis=-1, keepdims=True)
    var = jnp.var(target, axis=-1, keepdims=True, ddof=1)
    target = (target - mean) * jax.lax.rsqrt(var + eps)
  per_patch = jnp.mean(jnp.square(pred - target), axis=-1)  # [b, L]
  return _masked_mean(per_patch, jax.lax.stop_gradient(mask), axis_name)


def ijepa(
    predictions: jax.Array,
    targets: jax.Array,
    *,
    normalize_targets: bool = True,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""I-JEPA's feature prediction loss: smooth L1 to layer-normalised target-encoder features.

  From Assran, Duval, Misra, Bojanowski, Vincent, Rabbat, LeCun and Ballas, "Self-Supervised
  Learning from Images with a Joint-Embedding Predictive Architecture", CVPR 2023
  (arXiv:2301.08243), as facebookresearch/ijepa's src/train.py computes it. The paper writes an
  average L2 distance; the code that produced the published numbers uses
  ``F.smooth_l1_loss`` (Huber with ``beta = 1``), which this follows. With ``s_y`` the target
  encoder's features at the target blocks' patches and ``\hat s_y`` the predictor's::

      t   = layer_norm(s_y)            # over the feature axis, no affine, eps = 1e-5
      h(d) = d^2 / 2 if |d| < 1 else |d| - 1/2
      L   = mean over every example, block, patch and feature of h(\hat s_y - t)

  The authors layer-normalise the whole target-encoder output and then select the target
  blocks; layer norm acts on each patch's feature vector alone, so normalising the selected
  patches here (``normalize_targets=True``) is the same.

  Args:
    predictions: ``[b, M, N, D]`` predictor outputs for ``M`` target blocks of ``N`` patches
      each, or ``[b, T, D]`` with the blocks' patches flattened (the mean is the same).
    targets: the target encoder's features at the same patches, same shape. They are targets:
      ``jax.lax.stop_gradient`` is applied (the authors compute them under ``torch.no_grad``).
    normalize_targets: apply the layer norm above; pass False if ``targets`` are already
      normalised.
    axis_name: ``None`` for global arrays (one device, or ``jax.jit`` with inputs sharded along
      the batch). Inside ``jax.shard_map``, the mapped axis: the local mean is ``pmean``-ed (the
      authors' AllReduce), so every device gets the global ``L``.

  Returns:
    A float32 scalar ``L``. Zero targets stay zero after the layer norm (its variance is clamped
    by eps), so all-zero inputs give 0 with finite gradients.

  Raises:
    ValueError: if ``predictions`` is not rank 3 or 4, or ``targets`` has another shape.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import ijepa
    >>> targets = jnp.array([[[0.0, 4.0]]])  # layer norm maps it to about (-1, 1)
    >>> preds = jnp.array([[[0.0, 3.0]]])  # errors ~1 and ~2: h = 1/2 and 3/2
    >>> round(float(ijepa(preds, targets)), 3)
    1.0
    >>> round(float(ijepa(preds, targets, normalize_targets=False)), 3)  # errors 0 and 1
    0.25
  """
  if np.ndim(predictions) not in (3, 4):
    raise ValueError(
        f"predictions must have rank 3 or 4 with shape [batch, positions, dim] or [batch, "
        f"blocks, patches, dim], but got shape {tuple(np.shape(predictions))} "
        f"(rank {np.ndim(predictions)}).")
  _checks.check_same_shape("predictions", predictions, "targets", targets)

  predictions, targets = as_float32(predictions, targets)
  targets = jax.lax.stop_gradient(targets)
  if normalize_targets:
    targets = _layer_norm(targets, axis=-1)
  diff = predictions - targets
  abs_diff = jnp.abs(diff)
  # where() sends each branch's gradient only where it is selected; both are finite everywhere.
  huber = jnp.where(abs_diff < 1.0, 0.5 * jnp.square(diff), abs_diff - 0.5)
  loss = jnp.mean(huber)
  loss = mean_across_devices(loss, axis_name)  # equal shard sizes: the global mean
  return loss


_NORMS = (None, "instance", "layer")


def _normalize(x: jax.Array, kind: str | None) -> jax.Array:
  if kind == "layer":
    return _layer_norm(x, axis=-1)  # each position's feature vector
  if kind == "instance":
    return _layer_norm(x, axis=-2)  # each example's channel over its positions
  return x


def data2vec_targets(
    teacher_layer_outputs: jax.Array | Sequence[jax.Array],
    top_k: int | None = None,
    *,
    per_layer_norm: str | None = "instance",
    final_norm: str | None = "layer",
) -> jax.Array:
  r"""data2vec's regression targets: the average of the teacher's top ``k`` layers, normalised.

  From Baevski, Hsu, Xu, Babu, Gu and Auli, "data2vec: A General Framework for Self-supervised
  Learning in Speech, Vision and Language", ICML 2022 (arXiv:2202.03555), Sec. 3.3, and
  Baevski, Babu, Hsu and Auli, "Efficient Self-supervised Learning with Contextualized Target
  Representations for Vision, Speech and Language" (data2vec 2.0), ICML 2023
  (arXiv:2212.07525), as ``make_targets`` in fairseq's examples/data2vec computes them. With
  ``a_l`` the ``[b, T, D]`` output of teacher layer ``l`` of ``L`` (patch tokens only)::

      y = final_norm( 1/k sum_{l = L-k+1}^{L} per_layer_norm(a_l) )

  where ``"instance"`` normalises each example's channel over its ``T`` positions
  (``F.instance_norm``) and ``"layer"`` each position's ``D`` features (``F.layer_norm``), both
  without affine parameters, with biased variance and eps = 1e-5. The defaults are the data2vec
  2.0 image setting (fairseq config v2/base_images_only_task.yaml: instance norm per layer,
  layer norm of the average, all 10 teacher blocks, ``top_k = None``); data2vec 1.0's image
  setting (vision/pretraining/base_imagenet_d2v1.yaml) is ``top_k=6, per_layer_norm=None,
  final_norm="layer"``. fairseq's batch-norm option, used by neither, is not provided: it
  would need batch statistics.

  Args:
    teacher_layer_outputs: ``[num_layers, b, T, D]``, the teacher's layer outputs from first to
      last, or a sequence of ``num_layers`` arrays ``[b, T, D]``.
    top_k: how many of the last layers to average, 1 <= top_k <= num_layers; None for all.
    per_layer_norm: ``"instance"``, ``"layer"`` or None, applied to each layer before averaging.
    final_norm: ``"instance"``, ``"layer"`` or None, applied to the average.

  Returns:
    ``[b, T, D]`` float32 targets, under ``jax.lax.stop_gradient`` (the teacher is not trained
    by this loss). Every statistic is per example, so this needs no ``axis_name``. Zero inputs
    give zero targets.

  Raises:
    ValueError: if the layer outputs are not ``[num_layers, b, T, D]`` (or the sequence's
      arrays differ in shape), ``top_k`` is out of range, or a norm is not one of the above.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import data2vec_targets
    >>> layers = jnp.array([[[[5.0, 5.0]]], [[[1.0, 3.0]]], [[[0.0, 4.0]]]])  # 3 layers, b=T=1
    >>> y = data2vec_targets(layers, top_k=2, per_layer_norm=None, final_norm=None)
    >>> print(y)  # the mean of the last two layers
    [[[0.5 3.5]]]
    >>> y = data2vec_targets(layers, top_k=2, per_layer_norm=None)  # then layer-normalised
    >>> [round(v, 4) for v in y[0, 0].tolist()]
    [-1.0, 1.0]
  """
  if isinstance(teacher_layer_outputs, (list, tuple)):
    if not teacher_layer_outputs:
      raise ValueError("teacher_layer_outputs must hold at least one layer, but got none.")
    for i, layer in enumerate(teacher_layer_outputs):
      _checks.check_rank(f"teacher_layer_outputs[{i}]", layer, 3, "[batch, positions, dim]")
      _checks.check_same_shape(
          "teacher_layer_outputs[0]", teacher_layer_outputs[0], f"teacher_layer_outputs[{i}]",
          layer)
    teacher_layer_outputs = jnp.stack(as_float32(*teacher_layer_outputs))
  _checks.check_rank(
      "teacher_layer_outputs", teacher_layer_outputs, 4, "[num_layers, batch, positions, dim]")
  num_layers = np.shape(teacher_layer_outputs)[0]
  if top_k is None:
    top_k = num_layers
  if not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= num_layers:
    raise ValueError(
        f"top_k must be an integer in [1, {num_layers}] (teacher_layer_outputs has shape "
        f"{tuple(np.shape(teacher_layer_outputs))}), but got {top_k!r}.")
  for name, kind in (("per_layer_norm", per_layer_norm), ("final_norm", final_norm)):
    if kind not in _NORMS:
      raise ValueError(f"{name} must be one of {_NORMS}, but got {kind!r}.")

  (outputs,) = as_float32(teacher_layer_outputs)
  outputs = jax.lax.stop_gradient(outputs[num_layers - top_k:])
  average = jnp.mean(_normalize(outputs, per_layer_norm), axis=0)
  return jax.lax.stop_gradient(_normalize(average, final_norm))


def data2vec(
    predictions: jax.Array,
    teacher_layer_outputs: jax.Array | Sequence[jax.Array],
    mask: jax.Array,
    *,
    top_k: int | None = None,
    per_layer_norm: str | None = "instance",
    final_norm: str | None = "layer",
    beta: float = 0.0,
    scale: float | None = None,
    axis_name: Hashable | None = None,
) -> jax.Array:
  r"""data2vec's masked regression loss of the student's predictions to the teacher's targets.

  From Baevski et al., "data2vec", ICML 2022 (arXiv:2202.03555), eq. (2), and data2vec 2.0,
  ICML 2023 (arXiv:2212.07525), as fairseq's examples/data2vec (``d2v_loss`` in
  models/data2vec2.py and the data2vec_vision model) computes it. With ``y = data2vec_targets(
  teacher_layer_outputs, top_k, ...)``, ``m_it = 1`` at masked positions and ``D`` features::

      l(d) = d^2                                  if beta == 0
           = d^2 / (2 beta) if |d| < beta else |d| - beta / 2   otherwise (smooth L1)
      L    = scale * sum_it m_it sum_d l(pred_itd - y_itd) / sum_it m_it

  The error is summed over features and averaged over masked positions, scaled by ``scale``
  (``1 / sqrt(D)`` by default), as fairseq does (its trainer divides the summed loss by the
  number of masked positions over all workers; here both sums are ``psum``-ed with
  ``axis_name``). The paper's eq. (2) writes the per-feature error without the sum and scale;
  the code's form, which produced the published numbers, is used. data2vec 2.0 image: ``beta =
  0`` (L2); data2vec 1.0 image: ``beta = 2`` (smooth L1). Its extra CLS loss and the repeated
  ("cloned") batch are the caller's: repeat the teacher outputs along the batch to match.

  Args:
    predictions: ``[b, T, D]`` student (decoder) outputs at every position.
    teacher_layer_outputs: the teacher's layer outputs on the unmasked input, ``[num_layers, b,
      T, D]`` or a sequence of ``[b, T, D]`` (see ``data2vec_targets``; no gradient).
    mask: ``[b, T]``, 1 (or True) at the masked positions whose targets are regressed.
    top_k, per_layer_norm, final_norm: passed to ``data2vec_targets``.
    beta: 0 for the squared error, > 0 for smooth L1 with this threshold.
    scale: multiplies the loss, > 0; None for ``1 / sqrt(D)``.
    axis_name: ``None`` for global arrays (one device, or ``jax.jit`` with inputs sharded along
      the batch; for the stacked layer outputs that is axis 1, ``P(None, "data")``). Inside
      ``jax.shard_map``, the mapped axis: the summed error and the masked count are ``psum``-ed,
      so every device gets the global ``L``.

  Returns:
    A float32 scalar ``L``; 0 if no position is masked anywhere. Zero teacher outputs give zero
    targets, and all-zero inputs give 0 with finite gradients.

  Raises:
    ValueError: if ``predictions`` is not rank 3, the targets' shape differs from it, ``mask``
      is not ``[b, T]``, ``beta`` is negative, ``scale`` is a number <= 0, or
      ``data2vec_targets`` rejects its arguments.

  Example:
    >>> import jax.numpy as jnp
    >>> from sslx.losses import data2vec
    >>> teacher = jnp.array([[[[0.0, 4.0], [1.0, 1.0]]]])  # 1 layer, b=1, T=2, D=2
    >>> preds = jnp.array([[[-1.0, 0.0], [7.0, 7.0]]])
    >>> mask = jnp.array([[1, 0]])  # only position 0 counts; its target is ~(-1, 1)
    >>> loss = data2vec(preds, teacher, mask, per_layer_norm=None, scale=1.0)
    >>> round(float(loss), 4)  # (0^2 + 1^2) / 1 masked position
    1.0
  """
  _checks.check_rank("predictions", predictions, 3, "[batch, positions, dim]")
  _check_mask(mask, predictions, "predictions")
  if not isinstance(beta, (int, float, np.number)) or not beta >= 0:
    raise ValueError(f"beta must be >= 0, but got {beta!r}.")
  if scale is not None:
    _checks.check_positive("scale", scale)
  targets = data2vec_targets(
      teacher_layer_outputs, top_k, per_layer_norm=per_layer_norm, final_norm=final_norm)
  _checks.check_same_shape("predictions", predictions, "the targets (teacher layers' [b, T, D])",
                           targets)

  predictions, mask = as_float32(predictions, mask)
  dim = np.shape(predictions)[-1]
  diff = predictions - targets
  if beta == 0:
    error = jnp.square(diff)
  else:
    abs_diff = jnp.abs(diff)
    error = jnp.where(abs_diff < beta, 0.5 * jnp.square(diff) / beta, abs_diff - 0.5 * beta)
  per_position = jnp.sum(error, axis=-1)  # [b, T]
  scale = 1.0 / np.sqrt(dim) if scale is None else scale
  return scale * _masked_mean(per_position, jax.lax.stop_gradient(mask), axis_name)
