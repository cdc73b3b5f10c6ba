"""Device meshes, global batches, parameter sharding rules and multi-process start-up.

One mesh per run ("data" always, "fsdp" / "model" from config), laid out over the interconnect
by jax's mesh_utils (across TPU slices / GPU nodes with mesh.dcn_shape) so that each process
holds one contiguous block of the batch. The batch is split over "data" (and "fsdp");
parameters are replicated, or sharded by rules mapping their logical axis names (e.g. "embed",
"mlp", "heads", set by sslx.models.vit) to mesh axes. Multi-host runs start through
`jax.distributed`, from the config or the cluster's environment.
"""

import math
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MODEL_AXIS = "model"
# Mesh axes the global batch is split over: FSDP (ZeRO-3) devices are data-parallel too, each
# gathering the weights it needs layer by layer (Rajbhandari et al. 2020; MaxText's
# ("data", "fsdp") batch axes).
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

# Logical-name -> mesh-axis rules. The first rule for a name whose mesh axes exist, are not yet
# used by another dimension of the same parameter and divide the dimension wins; no rule (or
# None) leaves the dimension replicated.
RULE_PRESETS = {
    "replicated": (),
    # FSDP / ZeRO-3: every weight is split along its residual-width ("embed") dimension. MLP
    # weights are embed x mlp, attention weights embed x heads x kv: all are covered.
    "fsdp": (("embed", FSDP_AXIS),),
    # Megatron tensor parallelism (Shoeybi et al. 2019): each device owns a slice of the MLP
    # hidden units and whole attention heads; the residual stream stays replicated.
    "tensor": (("mlp", MODEL_AXIS), ("heads", MODEL_AXIS)),
    "fsdp_tensor": (("embed", FSDP_AXIS), ("mlp", MODEL_AXIS), ("heads", MODEL_AXIS)),
}


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


def make_mesh(config, devices: Sequence[Any] | None = None) -> Mesh:
  """A mesh with axes `config.axes` and shape `config.shape`, laid out over the interconnect.

  `config` is a config's `mesh` field: `num_devices` (-1: all of `devices`), `shape` (may hold
  one -1, filled so the product equals the number of devices), `axes` (must include "data") and
  `dcn_shape` (multi-slice TPU / multi-node GPU; see `device_grid`).

  `devices` defaults to `jax.devices()`; any other list works too, e.g. a TPU topology's
  (`jax.experimental.topologies.get_topology_desc(...).devices`) to compile a step ahead of time
  for a pod slice this machine does not have.
  """
  return Mesh(device_grid(config, devices), tuple(config.axes))


def device_grid(config, devices: Sequence[Any] | None = None) -> np.ndarray:
  """`make_mesh`'s devices, as an array shaped like the mesh.

  The layout is `jax.experimental.mesh_utils`': `create_device_mesh` maps the mesh axes onto the
  physical interconnect (a TPU slice's torus; GPU ids); with `config.dcn_shape`,
  `create_hybrid_device_mesh` lays `dcn_shape[i]` granules along mesh axis i over the slower
  data-centre network (TPU slices; elsewhere processes, i.e. launch one process per GPU node),
  each granule holding `shape[i] // dcn_shape[i]` of the axis over its fast links. A subset of
  the devices (`num_devices`) keeps `devices` order: part of a slice is no torus to lay out.

  The batch axes are then reordered so that process p holds the p-th contiguous block of every
  global batch, the rows the input pipeline gives it (`check_batch_blocks`). Reordering whole
  positions of an axis keeps together every group of devices that communicates along an axis.
  Where no such reordering can (e.g. an "fsdp" axis the torus order lays across hosts), the
  devices are taken in process order instead, with a warning; a "model" axis across processes,
  or dcn_shape granules that split a block, are errors.

  `devices` may be any objects with jax.Device's `process_index`, `platform` and `device_kind`
  (and `id`, `slice_index`, `coords`, `core_on_chip` where mesh_utils reads them), so tests can
  lay out fake multi-host pods.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices) if config.num_devices == -1 else config.num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"mesh.num_devices must be -1 or in [1, {len(devices)}], got "
                     f"{config.num_devices}")
  subset = n < len(devices)
  if subset and len({d.process_index for d in devices}) > 1:
    raise ValueError("mesh.num_devices must be -1 (all devices) in a multi-process run")
  axes = tuple(config.axes)
  if DATA_AXIS not in axes:
    raise ValueError(f"mesh.axes must contain {DATA_AXIS!r}, got {axes}")
  shape = _full_shape(tuple(config.shape), axes, n)
  dcn_shape = _dcn_shape(tuple(config.get("dcn_shape", ())), shape, axes)
  devices = devices[:n]
  granule, num_granules = _granules(devices)
  dcn_granules = math.prod(dcn_shape)
  # Several GPU / CPU processes without dcn_shape are laid out as one network, as before.
  if dcn_granules != num_granules and (dcn_granules > 1 or granule != "processes"):
    raise ValueError(
        f"mesh.dcn_shape {tuple(config.get('dcn_shape', ()))} lays out {dcn_granules} "
        f"{granule} (its product), but the {n} devices span {num_granules}; e.g. "
        f"{(num_granules,) + (1,) * (len(axes) - 1)} is data parallelism across {granule} over "
        f"mesh.axes {axes}")
  try:
    if subset:
      grid = np.asarray(devices).reshape(shape)
    elif dcn_granules > 1:
      grid = mesh_utils.create_hybrid_device_mesh(
          [s // d for s, d in zip(shape, dcn_shape)], dcn_shape, devices,
          process_is_granule=granule == "processes", allow_split_physical_axes=True)
    else:
      grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError) as e:  # e.g. no mapping onto the physical torus
    raise ValueError(f"mesh.shape {shape} with mesh.dcn_shape {dcn_shape} cannot be laid out "
                     f"over the devices' interconnect: {e}") from e
  grid = _order_batch_by_process(grid, axes)
  try:
    check_batch_blocks(grid, axes)
  except ValueError:
    if dcn_granules > 1:  # the devices' order cannot respect the slow links: say so
      raise
    # The torus order mixes processes within a block (e.g. "fsdp" over hosts of a v4-32): the
    # devices in process order then, as before mesh_utils, if that gives each process a block.
    by_process = np.asarray(sorted(devices, key=lambda d: (d.process_index, d.id)))
    grid = by_process.reshape(shape)
    check_batch_blocks(grid, axes)
    logging.warning("mesh.shape %s over axes %s: the interconnect-aware layout would split "
                    "processes' blocks of the batch; the devices are in process order instead",
                    shape, axes)
  return grid


def _full_shape(shape: tuple, axes: tuple[str, ...], n: int) -> tuple[int, ...]:
  """mesh.shape with its -1 filled in, checked against the axes and the n devices."""
  if len(shape) != len(axes):
    raise ValueError(f"mesh.shape {shape} and mesh.axes {axes} differ in length")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh.shape may contain at most one -1, got {shape}")
  full = list(shape)
  if -1 in full:
    known = math.prod(s for s in full if s != -1)
    if n % known:
      raise ValueError(f"mesh.shape {shape} does not divide {n} devices")
    full[full.index(-1)] = n // known
  if math.prod(full) != n:
    raise ValueError(f"mesh.shape {tuple(full)} holds {math.prod(full)} devices, but {n} are "
                     "used")
  return tuple(full)


def _dcn_shape(dcn_shape: tuple, shape: tuple[int, ...], axes: tuple[str, ...]) -> tuple:
  """mesh.dcn_shape checked against the mesh's full shape; () is one granule, all ones."""
  if not dcn_shape:
    return (1,) * len(shape)
  if len(dcn_shape) != len(axes) or not all(isinstance(d, int) and d >= 1 for d in dcn_shape):
    raise ValueError(f"mesh.dcn_shape must be () or one positive int per mesh axis {axes}, got "
                     f"{dcn_shape}")
  if any(s % d for s, d in zip(shape, dcn_shape)):
    raise ValueError(f"mesh.dcn_shape {dcn_shape} does not divide mesh.shape {shape} (axes "
                     f"{axes}): each entry splits its mesh axis over slices / processes")
  return dcn_shape


def _granules(devices: Sequence[Any]) -> tuple[str, int]:
  """What mesh.dcn_shape counts, and how many of them `devices` span: TPU slices (the chips of
  one slice share the ICI torus) or, elsewhere, processes (one per GPU node)."""
  if devices[0].platform == "tpu":
    return "TPU slices", len({getattr(d, "slice_index", 0) for d in devices})
  return "processes", len({d.process_index for d in devices})


def _order_batch_by_process(grid: np.ndarray, axes: tuple[str, ...]) -> np.ndarray:
  """`grid` with the positions along each batch axis stably sorted by the processes of their
  devices (innermost batch axis first), which makes each process's share of the batch one
  block wherever whole-axis reordering can; one process's grid comes back unchanged."""
  for dim in reversed([axes.index(a) for a in BATCH_AXES if a in axes]):
    keys = [tuple(d.process_index for d in np.take(grid, [i], axis=dim).flat)
            for i in range(grid.shape[dim])]
    grid = np.take(grid, sorted(range(len(keys)), key=keys.__getitem__), axis=dim)
  return grid


def check_batch_blocks(grid: np.ndarray, axes: Sequence[str]) -> None:
  """ValueError unless the i-th process (processes ranked by `process_index`) holds exactly the
  i-th of equal contiguous blocks of the global batch.

  That is what the input pipeline assumes: `pipeline.train_iterator` gives process i rows
  [i*L, (i+1)*L) of every global batch and `pipeline.to_global_batch` places them with
  `jax.make_array_from_process_local_data` under `batch_sharding`, whose blocks follow the
  mesh's batch axes ("data", then "fsdp"). `grid`: a mesh's devices (`mesh.devices`), over
  mesh axes `axes`.
  """
  axes = tuple(axes)
  batch_dims = [axes.index(a) for a in BATCH_AXES if a in axes]
  other_dims = [i for i in range(grid.ndim) if i not in batch_dims]
  # One row per block of the batch, in batch order, holding the devices that keep that block.
  blocks = np.transpose(grid, batch_dims + other_dims).reshape(
      math.prod(grid.shape[i] for i in batch_dims), -1)
  processes = sorted({d.process_index for d in grid.flat})
  if len(blocks) % len(processes):
    raise ValueError(
        f"the mesh's batch axes split the batch into {len(blocks)} blocks, which "
        f"{len(processes)} processes cannot hold equally; change mesh.shape / mesh.dcn_shape so "
        "the axes spanning processes are batch axes ('data', 'fsdp')")
  per_process = len(blocks) // len(processes)
  for i, block in enumerate(blocks):
    owners = sorted({d.process_index for d in block})
    expected = processes[i // per_process]
    if owners != [expected]:
      raise ValueError(
          f"block {i} of the {len(blocks)} blocks of the global batch would be held by "
          f"process(es) {owners}, but the input pipeline gives it to process {expected} alone "
          "(process i reads the i-th contiguous block of every batch); lay out the mesh so the "
          "axes spanning processes come first among the batch axes and non-batch axes ('model') "
          "stay within a process: set mesh.axes / mesh.shape / mesh.dcn_shape accordingly")


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes the batch is split over: "data", and "fsdp" when the mesh has it."""
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the "data" (and "fsdp") axes, the rest replicated."""
  axes = batch_axes(mesh)
  return NamedSharding(mesh, P(axes[0] if len(axes) == 1 else axes))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> None:
  axes = batch_axes(mesh)
  n = math.prod(mesh.shape[a] for a in axes)
  if global_batch_size % n or global_batch_size % jax.process_count():
    raise ValueError(
        f"batch_size={global_batch_size} must be divisible by the {n} devices of the mesh's "
        f"{' x '.join(repr(a) for a in axes)} axes and by the {jax.process_count()} processes")


def get_rules(rules: Any) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
  """Normalises sharding rules: a preset name (RULE_PRESETS), or pairs (logical_name, mesh_axis)
  where mesh_axis is an axis name, a tuple of them (split over their product) or None
  (replicate). A config (e.g. config.mesh) may be passed: its `custom_rules` pairs when not
  empty, else its `rules` preset name; neither -> replicated. (Two fields because a
  ConfigDict field keeps its type: `--config.mesh.rules=fsdp` on the command line, pairs in a
  config file.)

  >>> get_rules("fsdp")
  (('embed', ('fsdp',)),)
  """
  if hasattr(rules, "get") and not isinstance(rules, (str, tuple, list)):
    rules = rules.get("custom_rules", ()) or rules.get("rules", "replicated")
  if isinstance(rules, str):
    if rules not in RULE_PRESETS:
      raise ValueError(f"mesh.rules must be one of {sorted(RULE_PRESETS)} or (logical_name, "
                       f"mesh_axis) pairs, got {rules!r}")
    rules = RULE_PRESETS[rules]
  out = []
  for rule in rules or ():
    ok = isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
    axes = rule[1] if ok else None
    if ok and isinstance(axes, str):
      axes = (axes,)
    if not ok or not (axes is None or (isinstance(axes, (tuple, list)) and axes
                                       and all(isinstance(a, str) for a in axes))):
      raise ValueError(f"each sharding rule must be (logical_name, mesh_axis | (mesh_axes,) | "
                       f"None), got {rule!r}")
    out.append((rule[0], None if axes is None else tuple(axes)))
  return tuple(out)


def check_rules_fit_mesh(rules: Any, mesh: Mesh) -> None:
  """ValueError when the rules name mesh axes the mesh lacks, or the mesh has a "model" axis
  the rules never use: either would silently replicate (the second also repeats every
  computation on each device of that axis). The train loop calls this; library callers may
  share one rule set across meshes through `logical_to_mesh`, which skips missing axes."""
  used = {a for _, axes in get_rules(rules) if axes for a in axes}
  missing = sorted(used - set(mesh.axis_names))
  if missing:
    raise ValueError(f"mesh.rules shard over mesh axes {missing}, but mesh.axes is "
                     f"{tuple(mesh.axis_names)}; add them to mesh.axes and mesh.shape")
  if MODEL_AXIS in mesh.axis_names and MODEL_AXIS not in used:
    raise ValueError(f"the mesh has a {MODEL_AXIS!r} axis but mesh.rules shard nothing over it; "
                     "use mesh.rules=tensor or fsdp_tensor, or drop the axis")


def logical_to_mesh(names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                    rules: Any, *, strict: bool = False, where: str = "parameter") -> P:
  """The PartitionSpec of an array of `shape` whose dimensions carry logical `names`.

  Rules naming axes the mesh lacks are skipped, so one rule set serves every mesh (the "fsdp"
  rules on a data-only mesh replicate). A dimension the chosen mesh axes do not divide (e.g.
  12 heads over a model axis of 8, or p*p*C patch pixels) falls back to the next rule and
  finally to replication; with `strict=True` it raises ValueError instead.
  """
  if names is None:
    return P()
  names = tuple(names)
  if len(names) != len(shape):
    raise ValueError(f"{where}: {len(names)} logical axis names {names} for an array of shape "
                     f"{tuple(shape)}")
  used, spec = set(), []
  for dim, (size, name) in enumerate(zip(shape, names)):
    choice = None
    for rule_name, axes in get_rules(rules):
      if rule_name != name or axes is None:
        if rule_name == name:  # an explicit "replicate" rule ends the search
          break
        continue
      axes = tuple(a for a in axes if a in mesh.axis_names)
      if not axes or used.intersection(axes):
        continue
      n = math.prod(mesh.shape[a] for a in axes)
      if size % n:
        if strict:
          raise ValueError(
              f"{where}: dimension {dim} ({name!r}, size {size}) is not divisible by mesh axes "
              f"{axes} of size {n}; change the mesh or the rules, or pass strict=False to "
              "replicate it")
        continue
      choice = axes
      used.update(axes)
      break
    spec.append(None if choice is None else (choice[0] if len(choice) == 1 else choice))
  return P(*spec)


def _is_variable(x):
  return isinstance(x, nnx.Variable)


def _names_of(variable):
  metadata = variable.get_metadata()
  # "out_sharding" in flax 0.12 (nnx.with_partitioning); older / newer releases used
  # "sharding" and "sharding_names".
  for key in ("out_sharding", "sharding_names", "sharding"):
    if metadata.get(key):
      return tuple(metadata[key])
  return None


def _state_of(tree):
  if isinstance(tree, nnx.Module):
    return nnx.state(tree)
  return tree


def logical_axes(tree: Any) -> Any:
  """Logical axis names of every variable of an NNX module or State (abstract ones too), as a
  pure dict shaped like `State.to_pure_dict()`; None where a variable has no names."""
  state = _state_of(tree)
  if not isinstance(state, nnx.State):
    raise ValueError(f"tree must be an nnx.Module or nnx.State, got {type(tree).__name__}")
  named = jax.tree.map(lambda v: v.replace(_names_of(v)), state, is_leaf=_is_variable)
  return named.to_pure_dict()


def logical_shardings(tree: Any, axes: Any, mesh: Mesh, rules: Any, *,
                      strict: bool = False) -> Any:
  """NamedShardings for a pytree of arrays / ShapeDtypeStructs whose logical names are `axes`
  (a tree with `tree`'s structure as prefix: a tuple of names, or None for replicated, per
  leaf; axes=None replicates everything, e.g. a ResNet's variables)."""
  if axes is None:
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)
  fallbacks = []

  def one(path, x, names):
    where = jax.tree_util.keystr(path)
    spec = logical_to_mesh(names, np.shape(x), mesh, rules, strict=strict, where=where)
    # The spec the rules would give if every dimension divided (size 0 divides anything):
    # a difference means a fallback to replication, worth a warning.
    wanted = logical_to_mesh(names, (0,) * len(names), mesh, rules) if names else P()
    if spec != wanted:
      fallbacks.append(f"{where} {tuple(np.shape(x))} {tuple(spec)} (rules ask {tuple(wanted)})")
    return NamedSharding(mesh, spec)

  out = jax.tree_util.tree_map_with_path(one, tree, axes)
  if fallbacks:
    logging.warning("%d parameter dimensions are replicated because the mesh does not divide "
                    "them: %s", len(fallbacks), "; ".join(fallbacks[:8]))
  return out


def param_shardings(tree: Any, mesh: Mesh, rules: Any, *, strict: bool = False) -> Any:
  """NamedShardings for the variables of an NNX module or State (abstract ones from
  `nnx.eval_shape` cost nothing), as a pure dict shaped like `State.to_pure_dict()`, ready for
  `jax.jit(..., in_shardings=..., out_shardings=...)`. A plain pytree of arrays (no logical
  names) is replicated, as are variables without names (ResNet's, BatchNorm statistics).

  >>> from flax import nnx
  >>> from sslx.models.vit import vit
  >>> mesh = make_mesh_from(("data", "fsdp"), (1, 8))
  >>> model = nnx.eval_shape(lambda: vit(patch_size=4, width=32, depth=1, num_heads=4,
  ...                                    image_size=16, rngs=nnx.Rngs(0)))
  >>> param_shardings(nnx.state(model, nnx.Param), mesh, "fsdp")["blocks"][0]["fc1"][
  ...     "kernel"].spec
  PartitionSpec('fsdp', None)
  """
  state = _state_of(tree)
  if not isinstance(state, nnx.State):
    return logical_shardings(state, None, mesh, rules, strict=strict)
  return logical_shardings(state.to_pure_dict(), logical_axes(state), mesh, rules,
                           strict=strict)


def state_shardings(state: Any, params: Any, param_sharding: Any, mesh: Mesh) -> Any:
  """Shardings for a whole train state: a leaf whose path ends with a parameter's full path and
  has its shape gets that parameter's sharding, which covers the parameters themselves, the
  optimizer moments (`opt_state/.../mu/encoder/...`) and EMA teachers holding any part of the
  parameters (`model_state/teacher/encoder/...`, without the predictor); every other leaf (step
  counter, RNG key, scalars, BatchNorm statistics) is replicated.

  `state` and `params` may be abstract (`jax.eval_shape`), so the shardings are known before
  anything is allocated: `jax.jit(init, out_shardings=state_shardings(...))` then creates
  each parameter directly in its slices.
  """
  by_path = {}
  for (path, leaf), spec in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                jax.tree.leaves(param_sharding), strict=True):
    by_path[_plain_path(path)] = (np.shape(leaf), spec)
  longest = max((len(p) for p in by_path), default=0)
  rep = NamedSharding(mesh, P())

  def sharding_of(path, leaf):
    path = _plain_path(path)
    for start in range(max(len(path) - longest, 0), len(path)):
      shape, spec = by_path.get(path[start:], (None, None))
      if shape == np.shape(leaf):
        return spec
    return rep

  return jax.tree_util.tree_map_with_path(sharding_of, state)


def _plain_path(path) -> tuple:
  """A key path as plain names and indices, so optax's named tuples (`.mu`), dicts and lists
  compare alike."""
  out = []
  for key in path:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
      if hasattr(key, attr):
        out.append(getattr(key, attr))
        break
    else:
      out.append(str(key))
  return tuple(out)


def make_mesh_from(axes: Sequence[str], shape: Sequence[int]) -> Mesh:
  """make_mesh over all devices from explicit axes and shape (tests, notebooks)."""
  import ml_collections  # local: only this convenience needs it
  return make_mesh(ml_collections.ConfigDict(
      {"num_devices": -1, "axes": tuple(axes), "shape": tuple(shape)}))
