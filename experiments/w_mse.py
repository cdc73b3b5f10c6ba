"""W-MSE (Ermolov et al. 2021): each view's projections are whitened per sub-batch (Cholesky),
then the normalised MSE between the whitened views of an image is minimised, over all view pairs.
"""

import itertools

import jax

from experiments import _redundancy
from sslx.losses import w_mse
from sslx.method import Method


def multi_view_w_mse(projections: list, rng, *, whitening_size: int, whitening_iters: int = 1,
                     eps: float = 0.0) -> jax.Array:
  """W-MSE over every pair of views ([B, D] each), averaged over pairs and over
  ``whitening_iters`` random partitions of the batch into sub-batches (the authors' w_iter)."""
  batch = projections[0].shape[0]
  pairs = list(itertools.combinations(range(len(projections)), 2))  # W-MSE 4: 6 pairs
  total = 0.0
  for key in jax.random.split(rng, whitening_iters):
    # The loss whitens consecutive sub-batches: one shuffle shared by all views makes them a
    # random partition (the authors' torch.randperm). A single sub-batch needs none.
    order = jax.random.permutation(key, batch)
    shuffled = (projections if whitening_size == batch else [z[order] for z in projections])
    total += sum(w_mse(shuffled[i], shuffled[j], whitening_size=whitening_size, eps=eps)
                 for i, j in pairs)
  return total / (whitening_iters * len(pairs))


def get_method(config) -> Method:
  loss = config.loss
  batch_size, dim = config.batch_size, config.projector.out_features
  size = loss.whitening_size
  if not (isinstance(size, int) and dim < size <= batch_size and batch_size % size == 0):
    raise ValueError(f"loss.whitening_size must divide batch_size {batch_size} and exceed "
                     f"projector.out_features {dim} (a smaller sub-batch has a singular "
                     f"covariance), got {size!r}")
  if not (isinstance(loss.whitening_iters, int) and loss.whitening_iters >= 1):
    raise ValueError(f"loss.whitening_iters must be an integer >= 1, got "
                     f"{loss.whitening_iters!r}")
  if not 0 <= loss.eps < 1:
    raise ValueError(f"loss.eps must be in [0, 1), got {loss.eps!r}")

  def objective(context):
    return multi_view_w_mse(context.projections, context.rng, whitening_size=size,
                            whitening_iters=loss.whitening_iters, eps=loss.eps), {}

  return _redundancy.redundancy_method(config, objective, num_views=loss.num_views)
