"""Checks every loss test uses: an independent float64 reference in value and gradient, and
the same loss on one device, under ``jax.jit`` over a sharded mesh, and inside ``jax.shard_map``
on the 8 fake CPU devices of conftest.py.

A loss under test is given as ``fn(*arrays, axis_name=None) -> scalar`` (wrap keyword
arguments and auxiliary outputs away with a lambda or functools.partial).
"""

import functools
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH = P("data")  # the spec of an argument whose first dimension is the batch
REPLICATED = P()  # the spec of an argument every device holds whole (a queue, a center, ...)


def finite_difference_grad(f: Callable, x, h: float = 1e-6) -> np.ndarray:
  """Central differences of a float64 scalar function, one coordinate at a time."""
  x = np.asarray(x, np.float64)
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[idx] = h
    grad[idx] = (f(x + step) - f(x - step)) / (2 * h)
  return grad


def assert_close(actual, expected, rtol: float = 1e-5) -> None:
  """Relative tolerance, with an absolute floor relative to the largest entry so that entries
  of a gradient that happen to be near zero are not held to an impossible standard."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  np.testing.assert_allclose(
      actual, expected, rtol=rtol, atol=rtol * max(np.max(np.abs(expected), initial=0.0), 1e-30))


def check_against_reference(
    fn: Callable, reference: Callable, args: Sequence[np.ndarray], *,
    grad_argnums: Sequence[int] = (0,), rtol: float = 1e-5, grad_rtol: float = 2e-5,
    h: float = 1e-6) -> None:
  """``fn`` (float32 jax, jitted) against ``reference`` (float64 NumPy, same positional args):
  the value, and the gradient of each of ``grad_argnums`` against finite differences of the
  reference."""
  args = [np.asarray(a) for a in args]
  value, grads = jax.jit(jax.value_and_grad(fn, argnums=tuple(grad_argnums)))(*args)
  assert np.shape(value) == ()
  assert_close(value, reference(*args), rtol=rtol)
  args64 = [np.asarray(a, np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating) else a
            for a in args]
  for argnum, grad in zip(grad_argnums, grads):
    def along(x, argnum=argnum):
      return reference(*args64[:argnum], x, *args64[argnum + 1:])
    assert_close(grad, finite_difference_grad(along, args64[argnum], h=h), rtol=grad_rtol)


def make_mesh(axis_type: AxisType = AxisType.Explicit) -> jax.sharding.Mesh:
  assert jax.device_count() == 8, "conftest.py should provide 8 CPU devices"
  return jax.make_mesh((8,), ("data",), axis_types=(axis_type,))


def _put(mesh, args, specs):
  return [jax.device_put(a, NamedSharding(mesh, spec)) for a, spec in zip(args, specs)]


def check_sharded_equivalence(
    fn: Callable, args: Sequence[np.ndarray], *, specs: Sequence[P] | None = None,
    grad_argnums: Sequence[int] = (0,), rtol: float = 1e-5,
    axis_types: Sequence[AxisType] = (AxisType.Explicit, AxisType.Auto),
    grad_inside_body: bool = True) -> None:
  """Value and gradient of ``fn`` agree on one device and over 8 devices, in three settings:

  1. ``jax.jit`` on global arrays whose ``specs[i]`` is ``BATCH`` (sharded along "data") or
     ``REPLICATED``, for each of ``axis_types``, with ``axis_name=None``;
  2. ``jax.grad`` of a ``jax.shard_map`` wrapper (``out_specs=P()``) with ``axis_name="data"``;
  3. ``jax.grad`` inside the ``shard_map`` body, per device, as a data-parallel train step
     written with shard_map does; every device must see the same loss, the batch-sharded
     gradients must be the per-shard pieces of the global gradient, and the replicated ones
     the whole global gradient (already summed over devices).

  Args in BATCH position need a first dimension divisible by 8.
  """
  args = [np.asarray(a) for a in args]
  specs = list(specs) if specs is not None else [BATCH] * len(args)
  grad_argnums = tuple(grad_argnums)
  value_and_grad = jax.jit(jax.value_and_grad(fn, argnums=grad_argnums))

  device = jax.devices()[0]
  expected_value, expected_grads = value_and_grad(*[jax.device_put(a, device) for a in args])

  def compare(value, grads, setting):
    try:
      assert_close(value, expected_value, rtol=rtol)
      for grad, expected in zip(grads, expected_grads):
        assert_close(grad, expected, rtol=rtol)
    except AssertionError as e:
      raise AssertionError(f"{setting}: {e}") from None

  for axis_type in axis_types:
    mesh = make_mesh(axis_type)
    with jax.set_mesh(mesh):
      compare(*value_and_grad(*_put(mesh, args, specs)), f"jit, {axis_type} mesh")

  mesh = make_mesh(AxisType.Explicit)
  local_fn = functools.partial(fn, axis_name="data")
  wrapped = jax.shard_map(local_fn, mesh=mesh, in_specs=tuple(specs), out_specs=P())
  with jax.set_mesh(mesh):
    compare(*jax.jit(jax.value_and_grad(wrapped, argnums=grad_argnums))(*_put(mesh, args, specs)),
            "grad of a shard_map wrapper")

  if grad_inside_body:
    def body(*local_args):
      value, grads = jax.value_and_grad(local_fn, argnums=grad_argnums)(*local_args)
      return value[None], grads  # one value per device, to see that all devices agree

    grad_specs = tuple(specs[i] for i in grad_argnums)
    step = jax.shard_map(body, mesh=mesh, in_specs=tuple(specs),
                         out_specs=(P("data"), grad_specs))
    with jax.set_mesh(mesh):
      values, grads = jax.jit(step)(*_put(mesh, args, specs))
    values = np.asarray(values)
    compare(values[0], grads, "grad inside the shard_map body")
    assert_close(values, np.full(8, values[0]))
