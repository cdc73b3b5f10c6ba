"""Device meshes, global batches and multi-process start-up.

One mesh per run, with the batch sharded along its "data" axis; the train state is replicated.
Multi-host runs start through `jax.distributed`, from the config or the cluster's environment.
"""


import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(config) -> None:
  """Starts JAX's multi-controller runtime when the config asks for it.

  Explicit: `config.coordinator_address`, `num_processes` and `process_id` (e.g. localhost tests,
  or your own launcher). `config.auto_detect=True` lets `jax.distributed.initialize()` find the
  cluster itself (SLURM under srun, Open MPI, TPU pod slices, JAX_COORDINATOR_ADDRESS with
  JAX_NUM_PROCESSES / JAX_PROCESS_ID). A single process needs neither.
  """
  if jax.distributed.is_initialized():
    return
  explicit = bool(config.coordinator_address)
  if not (explicit or config.auto_detect):
    return
  # CPU devices of different processes need a collectives backend; gloo ships with jaxlib. The
  # setting only concerns the CPU backend, so it is harmless on GPU and TPU hosts.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    if config.num_processes < 1 or not 0 <= config.process_id < config.num_processes:
      raise ValueError(
          "distributed.num_processes must be >= 1 and 0 <= distributed.process_id < "
          f"num_processes; got num_processes={config.num_processes}, "
          f"process_id={config.process_id}")
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address,
        num_processes=config.num_processes,
        process_id=config.process_id,
        initialization_timeout=config.timeout_s)
  else:
    try:
      jax.distributed.initialize(initialization_timeout=config.timeout_s)
    except ValueError as e:
      raise ValueError(
          f"distributed.auto_detect=True, but JAX found no cluster environment ({e}); set "
          "--config.distributed.coordinator_address, num_processes and process_id instead") from e
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def make_mesh(config) -> Mesh:
  """A mesh over `config.num_devices` devices (-1: all) with axes `config.axes`.

  `config.shape` may hold one -1, filled so the product equals the number of devices. Devices
  keep jax.devices() order, which groups them by process, as the input pipeline assumes (process
  p holds the p-th contiguous block of every global batch).
  """
  devices = jax.devices()
  n = len(devices) if config.num_devices == -1 else config.num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"mesh.num_devices must be -1 or in [1, {len(devices)}], got "
                     f"{config.num_devices}")
  if n != len(devices) and jax.process_count() > 1:
    raise ValueError("mesh.num_devices must be -1 (all devices) in a multi-process run")
  axes = tuple(config.axes)
  if DATA_AXIS not in axes:
    raise ValueError(f"mesh.axes must contain {DATA_AXIS!r}, got {axes}")
  shape = list(config.shape)
  if len(shape) != len(axes):
    raise ValueError(f"mesh.shape {tuple(shape)} and mesh.axes {axes} differ in length")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh.shape may contain at most one -1, got {tuple(shape)}")
  if -1 in shape:
    known = int(np.prod([s for s in shape if s != -1]))
    if n % known:
      raise ValueError(f"mesh.shape {tuple(config.shape)} does not divide {n} devices")
    shape[shape.index(-1)] = n // known
  if int(np.prod(shape)) != n:
    raise ValueError(f"mesh.shape {tuple(shape)} holds {int(np.prod(shape))} devices, "
                     f"but {n} are used")
  return Mesh(np.asarray(devices[:n]).reshape(shape), axes)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the "data" axis, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> None:
  n = mesh.shape[DATA_AXIS]
  if global_batch_size % n or global_batch_size % jax.process_count():
    raise ValueError(
        f"batch_size={global_batch_size} must be divisible by the {n} devices of the mesh's "
        f"'{DATA_AXIS}' axis and by the {jax.process_count()} processes")
