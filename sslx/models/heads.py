"""Heads that sit on an encoder: the projector / predictor MLPs of SimCLR, BYOL and their kin."""

from typing import Sequence

import jax
from flax import nnx


class MLP(nnx.Module):
  """Linear -> BatchNorm -> ReLU blocks, then a final Linear (optionally followed by BatchNorm).

  SimCLR's projector is MLP(d, (2048,), 128); SimCLR v2 uses three layers; BYOL's predictor is
  MLP(256, (4096,), 256). Hidden layers drop the Linear bias because BatchNorm follows.
  """

  def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, *,
               batch_norm_last: bool = False, rngs: nnx.Rngs):
    linears, norms = [], []
    features = in_features
    for width in hidden:
      linears.append(nnx.Linear(features, width, use_bias=False, rngs=rngs))
      norms.append(nnx.BatchNorm(width, momentum=0.9, epsilon=1e-5, rngs=rngs))
      features = width
    self.hidden_linears = nnx.List(linears)
    self.hidden_norms = nnx.List(norms)
    self.out = nnx.Linear(features, out_features, use_bias=not batch_norm_last, rngs=rngs)
    self.out_bn = (nnx.BatchNorm(out_features, momentum=0.9, epsilon=1e-5, use_scale=False,
                                 use_bias=False, rngs=rngs) if batch_norm_last else None)

  def __call__(self, x, *, train: bool):
    for linear, bn in zip(self.hidden_linears, self.hidden_norms):
      x = jax.nn.relu(bn(linear(x), use_running_average=not train))
    x = self.out(x)
    if self.out_bn is not None:
      x = self.out_bn(x, use_running_average=not train)
    return x
