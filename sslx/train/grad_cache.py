"""Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"): the exact full-batch gradient of a contrastive loss with one micro-batch's
activations in memory instead of the whole batch's.

The loss needs every embedding at once (each is a negative of the others), but the network's
backward pass does not: with z = f(params, x) per example and L = objective(z),
dL/dparams = sum over micro-batches c of VJP_c(dL/dz_c). So (1) all micro-batches are embedded
without keeping activations, (2) the objective's value and its gradient with respect to all
embeddings come from one ordinary pass over z (cheap: z is [2B, D]), (3) each micro-batch is
embedded again with its activations and back-propagated with its slice of dL/dz, the parameter
gradients summed over micro-batches in a `jax.lax.scan` (one micro-batch's activations live at a
time).

`cached_embedding` wraps the embedding function in a `jax.custom_vjp` that does (1) in its forward
pass and (3) in its backward pass; (2) is the caller's ordinary autodiff through the objective.
The method's `loss` therefore stays an ordinary function of the parameters: the train step's
`jax.value_and_grad(method.loss)` (sslx.train.step) and any user loop get the cached gradient
unchanged.

Exact only when one example's embedding does not depend on the rest of the batch: no BatchNorm in
the embedding network (a micro-batch would normalise with other statistics), which
`check_no_batch_norm` refuses. Drop path draws its masks per micro-batch (`fold_in(rng, c)`): with
a `drop_path_rate` above 0 the step is equal to the full batch's in distribution, not in value.
Plain gradient accumulation (a loss per micro-batch) is not offered: for contrastive losses it
changes the objective (each example sees only its micro-batch's negatives), and BatchNorm would
see other batch statistics.

Config: ``optim.grad_cache_chunks`` (1: off), the number of micro-batches; ``batch_size`` must
divide by it. Supported by the two-view contrastive methods (experiments/_contrastive.py: SimCLR,
DCL, SupCon, NNCLR) with a ViT encoder and a projector with ``projector.norm`` "layer" or "none".
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

FIELD = "optim.grad_cache_chunks"
# experiments/_contrastive.two_view_method; other methods refuse the option (check_method).
SUPPORTED = ("simclr", "dcl", "supcon", "nnclr")
_WHAT_WORKS = (f"supported by the two-view contrastive methods {SUPPORTED} with a BatchNorm-free "
               "encoder and projector: model.name='vit' and projector.norm='layer' or 'none'")


def chunks_from_config(config) -> int:
  """``optim.grad_cache_chunks`` (1 when the config has no such field), checked: an int >= 1
  that divides ``batch_size``."""
  chunks = config.optim.get("grad_cache_chunks", 1)
  if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
    raise ValueError(f"{FIELD} must be an int >= 1 (1: off), got {chunks!r}")
  if chunks > 1 and config.batch_size % chunks:
    raise ValueError(f"batch_size ({config.batch_size}) must divide by {FIELD} ({chunks}): "
                     "every micro-batch holds batch_size / grad_cache_chunks images")
  return chunks


def check_no_batch_norm(module: nnx.Module, name: str) -> None:
  """A ValueError naming `FIELD` when `module` (an embedding network, abstract or not) holds a
  BatchNorm: a micro-batch would be normalised with its own statistics, not the batch's."""
  found = [".".join(map(str, path)) or name for path, node in nnx.iter_graph(module)
           if isinstance(node, nnx.BatchNorm)]
  if found:
    raise ValueError(
        f"{FIELD} > 1 is exact only when one example's embedding does not depend on the rest of "
        f"the batch, but the {name} has BatchNorm ({', '.join(found[:3])}"
        f"{', ...' if len(found) > 3 else ''}): a micro-batch would be normalised with other "
        f"statistics. Gradient caching is {_WHAT_WORKS}.")


def check_method(config, method) -> None:
  """Refuses, before any compute, a config asking for gradient caching from a method that does
  not do it (`Method.grad_cache_chunks` differs from ``optim.grad_cache_chunks``)."""
  chunks = chunks_from_config(config)
  if chunks > 1 and getattr(method, "grad_cache_chunks", 1) != chunks:
    raise ValueError(f"{FIELD}={chunks}: experiment {config.experiment!r} does not support "
                     f"gradient caching; it is {_WHAT_WORKS}.")


def _split(x, chunks: int):
  """[N, ...] -> [chunks, N / chunks, ...], micro-batch c holding rows c, c + chunks, ...: strided,
  so that a batch sharded along its first axis gives every device an equal share of every
  micro-batch (no resharding)."""
  return jnp.swapaxes(x.reshape(x.shape[0] // chunks, chunks, *x.shape[1:]), 0, 1)


def _merge(x):
  """The inverse of `_split`: [chunks, N / chunks, ...] -> [N, ...]."""
  return jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def cached_embedding(embed: Callable[[Any, Any, jax.Array, jax.Array], jax.Array],
                     chunks: int) -> Callable[[Any, Any, jax.Array, jax.Array], jax.Array]:
  """`embed` computed in `chunks` micro-batches, with the gradient-caching backward pass.

  Args:
    embed: ``embed(params, state, x, rng) -> z``, [N, ...] -> [N, D], each row of z a function
      of its row of x only (no BatchNorm); ``state`` is non-trainable (no gradient), ``rng``
      drives stochastic layers (drop path).
    chunks: micro-batches; N must divide by it.

  Returns:
    ``embed_cached(params, state, x, rng) -> z`` with the same value (micro-batch c uses the key
    ``fold_in(rng, c)``, so stochastic layers draw per micro-batch, deterministically in both
    passes), differentiable in ``params`` only. Its forward pass keeps no activations; its
    backward pass recomputes each micro-batch's forward and pulls its slice of the cotangent
    through it, summing the parameter gradients.
  """
  if chunks < 1:
    raise ValueError(f"chunks must be >= 1, got {chunks}")

  def forward(params, state, x, rng):
    if x.shape[0] % chunks:
      raise ValueError(f"the embedded batch ({x.shape[0]} rows) must divide by the number of "
                       f"micro-batches ({chunks})")

    def body(_, inputs):
      c, x_c = inputs
      return None, embed(params, state, x_c, jax.random.fold_in(rng, c))

    _, z = jax.lax.scan(body, None, (jnp.arange(chunks), _split(x, chunks)))
    return _merge(z)

  @jax.custom_vjp
  def embed_cached(params, state, x, rng):
    return forward(params, state, x, rng)

  def fwd(params, state, x, rng):
    # Residuals are the inputs only: no activation outlives its micro-batch.
    return forward(params, state, x, rng), (params, state, x, rng)

  def bwd(residuals, dz):
    params, state, x, rng = residuals

    def body(grads, inputs):
      c, x_c, dz_c = inputs
      _, pull = jax.vjp(lambda p: embed(p, state, x_c, jax.random.fold_in(rng, c)), params)
      return jax.tree.map(jnp.add, grads, pull(dz_c)[0]), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(body, zeros, (jnp.arange(chunks), _split(x, chunks),
                                          _split(dz, chunks)))
    return grads, None, None, None  # state, images and key get no gradient

  embed_cached.defvjp(fwd, bwd)
  return embed_cached
