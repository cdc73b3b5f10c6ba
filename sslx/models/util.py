"""Model bookkeeping shared by the encoders and heads: abstract construction, parameter counts and
the compiler's FLOP estimate from shapes only, and the accelerator options every model shares:
the compute dtype (`set_compute_dtype`) and per-block rematerialisation (`remat_call`)."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def count_params(module_or_tree: Any) -> int:
  """Number of trainable scalars in an NNX module (its ``nnx.Param`` leaves) or in a pytree.

  Works on abstract modules and trees (``nnx.eval_shape``, ``jax.eval_shape``): only shapes are
  read. For a module, BatchNorm running statistics and RNG state are not counted, matching
  PyTorch's ``sum(p.numel() for p in model.parameters())``; for a plain pytree every array leaf
  counts.

  Example:
    >>> from flax import nnx
    >>> count_params(nnx.eval_shape(lambda: nnx.Linear(3, 4, rngs=nnx.Rngs(0))))
    16
  """
  if isinstance(module_or_tree, nnx.Module):
    _, params, _ = nnx.split(module_or_tree, nnx.Param, ...)
    module_or_tree = params
  return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(module_or_tree)
                 if hasattr(leaf, "shape")))


def abstract_module(build: Callable[[nnx.Rngs], nnx.Module], seed: int = 0) -> nnx.Module:
  """``nnx.eval_shape(lambda: build(nnx.Rngs(seed)))`` in time linear in the number of layers.

  A module whose variables are ``jax.ShapeDtypeStruct``s: for parameter counts and FLOPs of
  published-size models without allocating them. Why not plain ``nnx.eval_shape``: every RNG
  draw under a trace increments a traced counter, flax 0.12 then asks the tracer for its
  ``.sharding``, and jax composes the refusal's message by scanning the whole trace, so the cost
  grows with the square of the number of layers (ResNet-200: 22 s instead of 3 s on a loaded
  2-core machine). The counters only count draws, so they are kept as concrete NumPy scalars;
  the module's shapes are exactly those of ``nnx.eval_shape``.

  Example:
    >>> from flax import nnx
    >>> abstract_module(lambda rngs: nnx.Linear(3, 4, rngs=rngs)).kernel.shape
    (3, 4)
  """
  def make():
    rngs = nnx.Rngs(seed)
    try:
      for _, stream in rngs.items():
        stream.count.set_raw_value(np.zeros(stream.count.shape, np.uint32))
    except (AttributeError, TypeError):  # another flax: same result, only slower
      rngs = nnx.Rngs(seed)
    return build(rngs)

  return nnx.eval_shape(make)


def count_flops(fn: Callable, *args: Any) -> float:
  """XLA's estimate of the floating-point operations of ``fn(*args)``, from lowering alone.

  ``args`` may be ``jax.ShapeDtypeStruct``s, so published-size models cost nothing to measure.
  A multiply-add counts as two operations, so the "FLOPs" quoted for CNNs (He et al. 2016:
  3.8e9 for ResNet-50, which are multiply-adds) are about half of this number. Element-wise
  operations (BatchNorm, ReLU, pooling) are included, which adds a few percent.
  """
  cost = jax.jit(fn).lower(*args).cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per device program
    cost = cost[0]
  if not cost or "flops" not in cost:
    raise ValueError(f"XLA gave no cost analysis for fn (got {cost!r}); expected a 'flops' key")
  return float(cost["flops"])


# config.model.dtype -> the compute dtype of convolutions, matmuls and attention.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# config.model.remat: "none", "block" (save nothing inside a block: recompute it whole in the
# backward pass) or one of jax.checkpoint_policies' ready-made policies (the others there are
# factories that need arguments).
REMAT_POLICIES = ("none", "block", "everything_saveable", "nothing_saveable", "dots_saveable",
                  "checkpoint_dots", "dots_with_no_batch_dims_saveable",
                  "checkpoint_dots_with_no_batch_dims")


def compute_dtype(name: str, field: str = "model.dtype"):
  """The jnp dtype for a `config.model.dtype` name; a ValueError naming `field` otherwise."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"{field} must be one of {tuple(COMPUTE_DTYPES)}, got {name!r}")
  return COMPUTE_DTYPES[name]


def check_remat(remat: str, field: str = "model.remat") -> str:
  if remat not in REMAT_POLICIES:
    raise ValueError(f"{field} must be one of {REMAT_POLICIES}, got {remat!r}")
  return remat


def set_compute_dtype(module: nnx.Module, dtype) -> nnx.Module:
  """Sets the compute dtype of every layer of `module` (in place; returns it).

  The precision policy in one place (as the flax ImageNet example and big_vision): every layer
  with a ``dtype`` attribute (flax's Linear / Conv / BatchNorm / LayerNorm, sslx's ViT layers
  and heads) computes in `dtype`, while its parameters stay float32 (``param_dtype``) and are
  cast at use, so gradients, optimizer state and EMA teachers stay float32. Normalisation
  statistics and softmax are computed in float32 by the layers themselves, and sslx's encoders
  and heads return float32, so losses see float32. `dtype` is a jnp dtype or a
  `config.model.dtype` name.
  """
  dtype = compute_dtype(dtype if isinstance(dtype, str) else jnp.dtype(dtype).name, "dtype")
  for _, node in nnx.iter_graph(module):
    if isinstance(node, nnx.Module) and hasattr(node, "dtype"):
      node.dtype = dtype
  return module


def remat_call(fn: Callable, remat: str, *args):
  """``fn(*args)``, rematerialised per `remat` (a REMAT_POLICIES name): with "none" a plain
  call; otherwise activations inside `fn` are recomputed in the backward pass except those the
  policy saves. `fn` may be an NNX module method taking the module first (nnx.remat carries the
  module's state, BatchNorm statistics updates included)."""
  if remat == "none":
    return fn(*args)
  policy = None if remat == "block" else getattr(jax.checkpoint_policies, check_remat(remat))
  return nnx.remat(fn, policy=policy)(*args)
