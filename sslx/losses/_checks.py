"""Input validation shared by the losses.

Shapes are static under ``jax.jit``, so these checks run at trace time and cost nothing per step.
Every message names the argument, the shape received and the shape expected, because a loss is
usually called deep inside a training step where a bare broadcasting error is hard to trace back.
"""

import numbers
from typing import Any

import jax
import numpy as np


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(np.shape(x))


def check_rank(name: str, x: Any, rank: int, expected: str | None = None) -> None:
  """Raises ValueError unless ``x`` has exactly ``rank`` dimensions.

  Args:
    name: the argument's name, as the caller of the loss spells it.
    x: an array (anything with a shape).
    rank: the required number of dimensions.
    expected: a readable form of the expected shape, e.g. ``"[batch, dim]"``; defaults to one
      made of ``rank`` placeholders.
  """
  shape = _shape(x)
  if len(shape) != rank:
    if expected is None:
      expected = "[" + ", ".join(f"d{i}" for i in range(rank)) + "]"
    raise ValueError(
        f"{name} must have rank {rank} with shape {expected}, "
        f"but got shape {shape} (rank {len(shape)})."
    )


def check_same_shape(name_a: str, a: Any, name_b: str, b: Any) -> None:
  """Raises ValueError unless ``a`` and ``b`` have the same shape; ``a`` is the reference."""
  shape_a, shape_b = _shape(a), _shape(b)
  if shape_a != shape_b:
    raise ValueError(
        f"{name_b} must have the same shape as {name_a}: expected {shape_a}, "
        f"but got {name_b} with shape {shape_b}."
    )


def check_pair(name_a: str, a: Any, name_b: str, b: Any, expected: str = "[batch, dim]") -> None:
  """Raises ValueError unless ``a`` and ``b`` are rank-2 arrays of one shape (two views)."""
  rank = expected.count(",") + 1
  check_rank(name_a, a, rank, expected)
  check_rank(name_b, b, rank, expected)
  check_same_shape(name_a, a, name_b, b)


def check_min_size(name: str, size: int, minimum: int, why: str = "") -> None:
  """Raises ValueError if a static size (e.g. a batch dimension) is below ``minimum``."""
  if size < minimum:
    reason = f" ({why})" if why else ""
    raise ValueError(f"{name} must be at least {minimum}{reason}, but got {size}.")


def check_positive(name: str, value: Any) -> None:
  """Raises ValueError if ``value`` is a Python/NumPy real number that is not > 0.

  Arrays (possibly traced, e.g. a learned temperature) are let through: their value is unknown
  at trace time and checking it would need a host sync.
  """
  if isinstance(value, numbers.Real) and not value > 0:  # `not >` also rejects NaN
    raise ValueError(f"{name} must be > 0, but got {value!r}.")


def check_non_negative(name: str, value: Any) -> None:
  """Like ``check_positive`` but allows 0 (a weight of 0 switches a term off)."""
  if isinstance(value, numbers.Real) and not value >= 0:  # `not >=` also rejects NaN
    raise ValueError(f"{name} must be >= 0, but got {value!r}.")


def check_unit_interval(name: str, value: Any) -> None:
  """Python/NumPy numbers (a threshold, a momentum) must lie in [0, 1]; arrays pass."""
  if isinstance(value, numbers.Real) and not 0.0 <= value <= 1.0:  # also rejects NaN
    raise ValueError(f"{name} must be in [0, 1], but got {value!r}.")


def check_global_batch_size(name: str, x: Any, axis_name: Any, minimum: int, why: str) -> int:
  """Returns the global batch size of ``x`` (its first dimension times the size of
  ``axis_name``), raising ValueError if it is below ``minimum``; ``why`` says what needs it."""
  local_batch = _shape(x)[0]
  shards = 1 if axis_name is None else jax.lax.axis_size(axis_name)
  global_batch = local_batch * shards
  if axis_name is None:
    description = f"the global batch size ({name}.shape[0], {name} of shape {_shape(x)})"
  else:
    description = (f"the global batch size ({name}.shape[0] = {local_batch} times the size "
                   f"{shards} of axis {axis_name!r})")
  check_min_size(description, global_batch, minimum, why)
  return global_batch
