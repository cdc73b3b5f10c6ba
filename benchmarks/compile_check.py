"""Do the ImageNet presets fit their TPU slices? Compiled ahead of time for a TPU topology on a
machine without a TPU: XLA's per-chip memory, FLOPs and estimated step time of the real step.

    bash benchmarks/setup_tpu_compile.sh          # once: .venv-tpu with jax[tpu] (libtpu)
    .venv-tpu/bin/python benchmarks/compile_check.py                  # every preset, 2 slices
    .venv-tpu/bin/python benchmarks/compile_check.py --presets=mae_vit_l16 --topologies=v5p-64 \
        --set=model.remat=block --out=/tmp/mae_l    # one preset on another slice, with overrides
    .venv/bin/python benchmarks/compile_check.py --presets=simclr_r50 --topologies=cpu-8 \
        --out=/tmp/cpu      # no libtpu: 8 fake CPU devices, same lowering, same memory report

As MaxText's train_compile.py: `jax.experimental.topologies` describes the slice (libtpu knows
its chips and interconnect without owning one), and the train step is built exactly as
`sslx.train.loop` builds it (`build_method`, `state_initializer`, `make_train_step`) and
lowered with `jax.ShapeDtypeStruct`s carrying `NamedSharding`s on a mesh of the slice's
devices, so no array is allocated. For each preset (PRESETS: the `imagenet` variant of
`configs/<method>.py`, at its own global batch and mesh settings) and slice, one row reports per
chip: the train state's bytes (parameters, optimizer state, model state such as EMA teachers)
from the shardings; XLA's `memory_analysis()` (arguments, outputs, aliased = donated, temporaries
and their peak, see benchmarks/xla_memory.py) against the chip's HBM, fitting when the peak
leaves at least 10% of it free; the compile seconds; `cost_analysis()`'s FLOPs per chip and
XLA's estimated step time (`optimal_seconds`, its roofline over the compiled program: a lower
bound, so the MFU it implies, FLOPs / (time x chips x peak bf16 FLOP/s), is an upper bound).
FLOPs are what the compiled program executes: with remat they include the recomputation.

libtpu admits one process per machine (a lockfile in /tmp); to compile in two processes at
once, start them with ALLOW_MULTIPLE_LIBTPU_LOAD=1 (nothing here touches a TPU).

`--cpu_scan_compare` also compiles ViT presets for 8 fake CPU devices with model.vit.scan off
and on (the compile-time target: a ViT-B/16 step under 60 s on the 2-core reference machine).
Writes `results/compile_check.json` and `.md`.
"""

import os

# The cpu-N topologies are fake CPU devices, which must be requested before jax is imported.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")
# Without this jax would try to open a local TPU; the TPU slices are only compiled for.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import ast  # noqa: E402
import dataclasses  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from jax.experimental import mesh_utils  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # configs/ and experiments/ live in the checkout

from benchmarks import xla_memory  # noqa: E402
from sslx import sharding  # noqa: E402
from sslx.data import sources  # noqa: E402
from sslx.train import loop, optim  # noqa: E402
from sslx.train.step import make_train_step  # noqa: E402

GIB = 2**30
HEADROOM = 0.10  # a preset fits when its peak leaves this fraction of the chip's HBM free


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator generation: what a slice name means and what a chip holds and computes."""
  device_kind: str
  hbm_bytes: int
  peak_bf16_flops: float  # dense, per chip
  cores_per_chip_in_name: int  # v4-32 and v5p-32 count TensorCores: 16 chips
  torus_dims: int  # 3: v4 / v5p slices are AxBxC; 2: v5e / v6e are AxB
  chip_config_name: str  # "megacore": one jax device per v4 chip, as v4 slices run


# Per chip: HBM and dense bf16 peak, from Google Cloud's TPU system-architecture pages.
CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, 2, 3, "megacore"),
    "v5e": Chip("TPU v5 lite", 16 * GIB, 197e12, 1, 2, "default"),
    "v5p": Chip("TPU v5", 95 * GIB, 459e12, 2, 3, "default"),
    "v6e": Chip("TPU v6 lite", 32 * GIB, 918e12, 1, 2, "default"),
}
# Slice shapes by chip count: the smallest near-cube (3D) or near-square (2D) torus.
TORUS_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
            128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16)}
TORUS_2D = {4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
            256: (16, 16)}
TOPOLOGY_FORMS = (f"<generation>-<size> with generation one of {sorted(CHIPS)} (e.g. v5p-32, "
                  "v4-64, v5e-64; v4 / v5p sizes count TensorCores, 2 per chip) or cpu-<N> (N "
                  "fake CPU devices)")


@dataclasses.dataclass(frozen=True)
class Preset:
  """An ImageNet preset: `configs/<method>.py:imagenet` with `overrides` (dotted field -> value),
  the slice its docstring promises it fits, and one more slice to show how it scales."""
  method: str
  overrides: dict
  documented: str
  other: str


PRESETS = {
    "simclr_r50": Preset("simclr", {}, "v5p-32", "v4-64"),
    "byol_r50": Preset("byol", {}, "v5p-32", "v4-64"),
    "moco_v3_vit_b16": Preset("moco_v3", {}, "v5p-32", "v4-64"),
    "dino_vit_s16": Preset("dino", {}, "v5p-16", "v5e-32"),
    "dino_vit_b16": Preset("dino", {"model.vit.variant": "B/16"}, "v5p-32", "v4-64"),
    "ibot_vit_b16": Preset("ibot", {}, "v5p-32", "v4-64"),
    "mae_vit_b16": Preset("mae", {}, "v5p-32", "v4-64"),
    "mae_vit_l16": Preset("mae", {"model.vit.variant": "L/16"}, "v5p-64", "v4-128"),
    "ijepa_vit_h14": Preset("ijepa", {}, "v5p-64", "v4-128"),
    "dinov2_vit_l16": Preset("dinov2", {}, "v5p-64", "v4-128"),
    "lejepa_vit_l14": Preset("lejepa", {}, "v5p-32", "v4-64"),
    "msn_vit_s16": Preset("msn", {}, "v5p-16", "v5e-32"),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str  # as given, e.g. "v5p-32"
  devices: tuple  # one jax device per chip (TPU topology devices, or CPU devices)
  chip: Chip
  slice_shape: tuple  # the torus, e.g. (2, 2, 4); (N,) for cpu-N


def cpu_chip(num_devices: int) -> Chip:
  """Fake CPU devices share the host's memory: each "chip" gets an even share of it. They have
  no peak FLOP/s here (XLA gives no step-time estimate on CPU either)."""
  host_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return Chip("cpu", host_bytes // num_devices, math.nan, 1, 1, "")


def get_topology(name: str) -> Topology:
  """The devices of a slice by name: a TPU slice through libtpu (no TPU needed), or cpu-N."""
  match = re.fullmatch(r"(v4|v5e|v5p|v6e|cpu)-(\d+)", name)
  if match is None:
    raise ValueError(f"topology {name!r} is not understood; expected {TOPOLOGY_FORMS}")
  generation, size = match.group(1), int(match.group(2))
  if generation == "cpu":
    devices = jax.devices("cpu")
    if not 1 <= size <= len(devices):
      raise ValueError(f"topology {name!r} needs {size} CPU devices, this process has "
                       f"{len(devices)} (XLA_FLAGS=--xla_force_host_platform_device_count=N "
                       "before jax is imported)")
    return Topology(name, tuple(devices[:size]), cpu_chip(size), (size,))
  chip = CHIPS[generation]
  chips, remainder = divmod(size, chip.cores_per_chip_in_name)
  shapes = TORUS_3D if chip.torus_dims == 3 else TORUS_2D
  if remainder or chips not in shapes:
    sizes = [n * chip.cores_per_chip_in_name for n in shapes]
    raise ValueError(f"topology {name!r}: {generation} slices here have sizes {sizes}")
  slice_shape = shapes[chips]
  try:
    from jax.experimental import topologies
    description = topologies.get_topology_desc(
        platform="tpu", topology_name=f"{generation}:{'x'.join(map(str, slice_shape))}",
        chip_config_name=chip.chip_config_name,
        chips_per_host_bounds=(2, 2, 1), num_slices=1)
  except Exception as e:  # jax raises RuntimeError / ValueError without a usable libtpu
    raise RuntimeError(f"topology {name!r} needs libtpu to describe the TPU slice ({e}); run "
                       "bash benchmarks/setup_tpu_compile.sh and use .venv-tpu/bin/python, or "
                       "use a cpu-N topology") from e
  devices = tuple(description.devices)
  if len(devices) != chips or devices[0].device_kind != chip.device_kind:
    raise AssertionError(f"{name}: libtpu gave {len(devices)} x {devices[0].device_kind}, "
                         f"expected {chips} x {chip.device_kind}")
  return Topology(name, devices, chip, slice_shape)


def preset_config(name: str, overrides: dict | None = None):
  """The preset's config with its own overrides and then `overrides` (dotted field -> value)."""
  if name not in PRESETS:
    raise ValueError(f"preset {name!r} is unknown; known presets: {sorted(PRESETS)}")
  preset = PRESETS[name]
  config = importlib.import_module(f"configs.{preset.method}").get_config("imagenet")
  with config.unlocked():
    for field, value in {**preset.overrides, **(overrides or {})}.items():
      parent, _, leaf = field.rpartition(".")
      node = config
      for part in parent.split(".") if parent else ():
        node = node[part]
      if leaf not in node:
        raise ValueError(f"--set {field}: the config has no field {field!r}")
      node[leaf] = value
  return config


def slice_mesh(config, topology: Topology) -> Mesh:
  """`config.mesh` (axes, a shape with at most one -1) over every chip of the slice, laid out
  by `mesh_utils.create_device_mesh` so the inner axes follow the torus's fast links."""
  if config.mesh.num_devices not in (-1, len(topology.devices)):
    raise ValueError(f"mesh.num_devices={config.mesh.num_devices}, but {topology.name} has "
                     f"{len(topology.devices)} chips; use -1 (all)")
  shape = list(config.mesh.shape)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh.shape may contain at most one -1, got {tuple(shape)}")
  if -1 in shape:
    shape[shape.index(-1)] = len(topology.devices) // math.prod(s for s in shape if s != -1)
  if math.prod(shape) != len(topology.devices):
    raise ValueError(f"mesh.shape {tuple(config.mesh.shape)} does not fit the "
                     f"{len(topology.devices)} chips of {topology.name}")
  try:
    devices = mesh_utils.create_device_mesh(shape, devices=topology.devices)
  except (ValueError, NotImplementedError):  # a shape the torus cannot be folded into
    devices = mesh_utils.create_device_mesh(shape, devices=topology.devices,
                                            allow_split_physical_axes=True)
  return Mesh(devices, tuple(config.mesh.axes))


def describe_model(config) -> str:
  if config.model.name == "vit":
    return f"ViT-{config.model.vit.variant or 'custom'}"
  r = config.model.resnet
  return f"ResNet-{r.depth}" if r.depth else f"ResNet{tuple(r.stage_sizes)}x{r.width}"


def lower_train_step(config, mesh: Mesh):
  """(the jitted train step lowered for `mesh`, the abstract state it takes), built as
  `sslx.train.loop` builds them; every input is a ShapeDtypeStruct, so nothing is allocated."""
  rules = sharding.get_rules(config.mesh)
  sharding.check_rules_fit_mesh(rules, mesh)
  sharding.check_batch_divisible(config.batch_size, mesh)
  info = sources.get_dataset_info(config.data.name)
  method = loop.build_method(config)
  tx, schedule = optim.make_optimizer(config.optim, config.batch_size, config.total_steps)
  init_state, state_sharding = loop.state_initializer(config, method, tx, mesh, rules, info)
  abstract_state = jax.eval_shape(init_state, jax.random.PRNGKey(config.seed))
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                abstract_state, state_sharding)
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {"image": jax.ShapeDtypeStruct((config.batch_size, *info.image_shape), jnp.uint8,
                                         sharding=batch_sharding),
           "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32,
                                         sharding=batch_sharding),
           "index": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32,
                                         sharding=batch_sharding)}
  train_step = make_train_step(method, tx, schedule, state_sharding=state_sharding,
                               batch_sharding=batch_sharding,
                               metric_sharding=sharding.replicated(mesh))
  return train_step.lower(abstract_state, batch), abstract_state


def cost_analysis(stage) -> dict:
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per device program
    cost = cost[0]
  return {k: float(v) for k, v in cost.items()
          if k in ("flops", "bytes accessed", "optimal_seconds", "transcendentals")}


def scan_flops_ratio(config) -> float:
  """The unscanned step's FLOPs over the scanned one's. XLA's cost analysis counts a while
  loop's body once, so a scanned ViT's FLOPs and step time would hold one block of its depth;
  this ratio restores the other blocks' share (the step time is scaled by it too: the blocks'
  compute dominates the step). Both are counted on the lowered, not yet optimised or
  partitioned, program (the whole step), on one CPU device: a TPU-lowered program has no cost
  analysis before it is compiled."""
  axes = tuple(config.mesh.axes)
  one_device = Mesh(np.array(jax.devices("cpu")[:1]).reshape((1,) * len(axes)), axes)
  flops = {}
  for scan in (False, True):
    with config.unlocked():
      variant = config.copy_and_resolve_references()
      variant.model.vit.scan = scan
    flops[scan] = cost_analysis(lower_train_step(variant, one_device)[0])["flops"]
  return flops[False] / flops[True]


def compile_check(config, topology: Topology) -> dict:
  """One row: `config`'s train step compiled for `topology` from abstract inputs, with its
  per-chip memory, cost and fit (see the module docstring)."""
  mesh = slice_mesh(config, topology)
  # CPU seconds beside wall seconds: on a shared machine the wall time depends on the load.
  start, cpu_start = time.perf_counter(), time.process_time()
  lowered, abstract_state = lower_train_step(config, mesh)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  done, cpu_done = time.perf_counter(), time.process_time()

  state_bytes = {field: sum(xla_memory.shard_bytes(x.shape, x.dtype, x.sharding)
                            for x in jax.tree.leaves(getattr(abstract_state, field)))
                 for field in ("params", "opt_state", "model_state")}
  memory = xla_memory.memory_analysis(compiled)
  if memory is None:
    raise RuntimeError(f"{topology.name}: XLA gave no memory analysis for the compiled step")
  cost = cost_analysis(compiled)
  step_s = cost.get("optimal_seconds")  # XLA's TPU roofline; absent on CPU
  step_s = step_s if step_s and step_s > 0 else None
  scan_ratio, scan_ratio_error = 1.0, None
  if config.model.name == "vit" and config.model.vit.scan:
    try:
      scan_ratio = scan_flops_ratio(config)
    except Exception as e:  # the memory report stands without it
      scan_ratio, scan_ratio_error = None, repr(e)[:500]
  chips = len(topology.devices)
  row = {
      "model": describe_model(config), "method": config.experiment,
      "topology": topology.name, "device_kind": topology.chip.device_kind, "chips": chips,
      "slice_shape": list(topology.slice_shape),
      "mesh": dict(zip(mesh.axis_names, (int(n) for n in mesh.devices.shape))),
      "rules": config.mesh.rules if not config.mesh.custom_rules else "custom",
      "global_batch": config.batch_size, "batch_per_chip": config.batch_size / chips,
      "image_shape": list(sources.get_dataset_info(config.data.name).image_shape),
      "dtype": config.model.dtype, "remat": config.model.remat,
      "scan": bool(config.model.vit.scan), "state_bytes_per_chip": state_bytes, **memory,
      "hbm_bytes": topology.chip.hbm_bytes,
      "lower_s": lowered_at - start, "compile_s": done - lowered_at,
      "lower_and_compile_cpu_s": cpu_done - cpu_start,
      "cost_analysis": cost, "scan_flops_ratio": scan_ratio,
      "scan_flops_ratio_error": scan_ratio_error,
      "flops_per_chip": scan_ratio and cost["flops"] * scan_ratio,
      "estimated_step_s": step_s and scan_ratio and step_s * scan_ratio,
  }
  add_verdict(row, topology.chip)
  return row


def add_verdict(row: dict, chip: Chip) -> None:
  """The fit and the implied speed, from the row's measured fields and the chip table."""
  row["peak_fraction_of_hbm"] = row["peak_estimate_bytes"] / chip.hbm_bytes
  row["fits"] = row["peak_estimate_bytes"] <= (1 - HEADROOM) * chip.hbm_bytes
  flops = row["flops_per_chip"]
  row["flops_per_step"] = None if flops is None else flops * row["chips"]
  step_s = row["estimated_step_s"]
  if step_s is None or flops is None or math.isnan(chip.peak_bf16_flops):
    row["mfu"] = row["images_per_s"] = None
  else:
    row["mfu"] = row["flops_per_step"] / (step_s * row["chips"] * chip.peak_bf16_flops)
    row["images_per_s"] = row["global_batch"] / step_s


def parse_overrides(items) -> dict:
  """["model.remat=block", "batch_size=2048"] -> {"model.remat": "block", "batch_size": 2048}."""
  out = {}
  for item in items or ():
    field, sep, text = item.partition("=")
    if not sep or not field:
      raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. model.remat=block")
    try:
      out[field] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      out[field] = text  # a bare word: a string
  return out


FLAGS = flags.FLAGS
flags.DEFINE_list("presets", list(PRESETS), f"presets to compile, of {list(PRESETS)}")
flags.DEFINE_list("topologies", [], "slices to compile each preset for (default: --slices of "
                  f"the preset's own); {TOPOLOGY_FORMS}")
flags.DEFINE_enum("slices", "both", ["both", "documented", "other"],
                  "without --topologies: the slice each preset's docstring names, its other one, "
                  "or both")
flags.DEFINE_multi_string("set", [], "FIELD=VALUE config override for every preset (repeatable)")
flags.DEFINE_list("cpu_scan_compare", ["moco_v3_vit_b16"],
                  "ViT presets also compiled for cpu-8 with model.vit.scan on and off (empty: "
                  "none)")
flags.DEFINE_string("out", os.path.join(HERE, "results", "compile_check"),
                    "output path without extension (.json and .md are written)")
flags.DEFINE_bool("append", False, "keep the rows already in --out's JSON (a row of the same "
                  "preset, slice and settings is replaced): results of several runs in one table")


# What makes two rows the same measurement (--append replaces the older one).
ROW_KEY = ("preset", "topology", "global_batch", "dtype", "remat", "scan", "mesh", "rules")


def gib(b) -> str:
  return f"{b / GIB:.1f}"


HEADER = ["preset", "slice", "mesh", "batch/chip", "dtype", "remat", "scan", "state", "args",
          "out", "alias", "temp", "peak", "HBM", "peak/HBM", "fits", "compile s", "CPU s",
          "TFLOP/chip", "est. step ms", "MFU", "img/s (est.)"]


def table_row(r: dict) -> list[str]:
  fmt = lambda v, f: "-" if v is None else f.format(v)  # noqa: E731
  return [
      r["preset"], r["topology"], "x".join(f"{a}:{n}" for a, n in r["mesh"].items()),
      f"{r['batch_per_chip']:g}", r["dtype"], r["remat"], "yes" if r["scan"] else "no",
      gib(sum(r["state_bytes_per_chip"].values())), gib(r["argument_bytes"]),
      gib(r["output_bytes"]), gib(r["alias_bytes"]), gib(r["temp_bytes"]),
      gib(r["peak_estimate_bytes"]), gib(r["hbm_bytes"]), f"{r['peak_fraction_of_hbm']:.2f}",
      "yes" if r["fits"] else "**no**", f"{r['lower_s'] + r['compile_s']:.0f}",
      fmt(r.get("lower_and_compile_cpu_s"), "{:.0f}"),
      fmt(r["flops_per_chip"] and r["flops_per_chip"] / 1e12, "{:.2f}"),
      fmt(r["estimated_step_s"] and r["estimated_step_s"] * 1e3, "{:.0f}"),
      fmt(r["mfu"], "{:.2f}"), fmt(r["images_per_s"], "{:.0f}")]


def format_table(rows: list[dict], markdown: bool = False) -> str:
  if not rows:
    return "(no rows)"
  body = [table_row(r) for r in rows]
  if markdown:
    lines = ["| " + " | ".join(HEADER) + " |",
             "|" + "|".join([":---"] * 7 + ["---:"] * (len(HEADER) - 7)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
  widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(HEADER)]
  return "\n".join(["  ".join(h.rjust(w) for h, w in zip(HEADER, widths))]
                   + ["  ".join(v.rjust(w) for v, w in zip(b, widths)) for b in body])


def main(argv):
  del argv
  unknown = [p for p in FLAGS.presets + FLAGS.cpu_scan_compare if p not in PRESETS]
  if unknown:
    raise ValueError(f"--presets / --cpu_scan_compare: unknown {unknown}; known: {list(PRESETS)}")
  overrides = parse_overrides(FLAGS.set)
  logging.set_verbosity(logging.ERROR)
  begin = time.perf_counter()
  command = "python " + " ".join(sys.argv)
  results = {
      "commands": [], "jax": jax.__version__,
      "python": platform.python_version(), "platform": platform.platform(),
      "cpu_count": os.cpu_count(), "libtpu": _libtpu_version(), "headroom": HEADROOM,
      "chips": {g: dataclasses.asdict(c) for g, c in CHIPS.items()},
      "units": "bytes per chip (the tables print GiB); FLOPs per chip per step",
      "rows": [], "cpu_scan_compare": [], "failures": [],
  }
  if FLAGS.append and os.path.exists(FLAGS.out + ".json"):
    with open(FLAGS.out + ".json") as f:
      previous = json.load(f)
    for key in ("commands", "rows", "cpu_scan_compare", "failures"):
      results[key] = previous.get(key, [])
  results["commands"].append(command)

  def run(preset_name, topology_name, extra, into):
    label = f"{preset_name} on {topology_name} {extra or ''}".strip()
    try:
      config = preset_config(preset_name, {**overrides, **extra})
      row = {"preset": preset_name,
             "documented": topology_name == PRESETS[preset_name].documented,
             **compile_check(config, get_topology(topology_name)),
             "overrides": {**overrides, **extra}, "command": command,
             "load_average": list(os.getloadavg())}
    except Exception as e:  # one failed compile (e.g. out of host memory) must not lose the rest
      logging.exception("%s failed", label)
      results["failures"].append({"preset": preset_name, "topology": topology_name,
                                  "overrides": {**overrides, **extra}, "error": repr(e)[:2000]})
      print(f"{label}: FAILED {e!r}"[:400], flush=True)
      return
    same = lambda r: all(r[k] == row[k] for k in ROW_KEY)  # noqa: E731
    into[:] = [r for r in into if not same(r)] + [row]
    # A failure of this preset on this slice from an earlier run is superseded by the row.
    results["failures"] = [f for f in results["failures"]
                           if (f["preset"], f["topology"]) != (preset_name, topology_name)]
    mfu = "-" if row["mfu"] is None else f"{row['mfu']:.2f}"
    print(f"{label}: peak {gib(row['peak_estimate_bytes'])} of {gib(row['hbm_bytes'])} GiB "
          f"({'fits' if row['fits'] else 'DOES NOT FIT'}), compile "
          f"{row['lower_s'] + row['compile_s']:.0f} s, MFU {mfu}, "
          f"{time.perf_counter() - begin:.0f} s elapsed", flush=True)
    write(results)

  for preset_name in FLAGS.presets:
    preset = PRESETS[preset_name]
    own = {"both": (preset.documented, preset.other), "documented": (preset.documented,),
           "other": (preset.other,)}[FLAGS.slices]
    for topology_name in FLAGS.topologies or own:
      run(preset_name, topology_name, {}, results["rows"])
  for preset_name in FLAGS.cpu_scan_compare:
    for scan in (True, False):  # the target (scanned) first
      run(preset_name, "cpu-8", {"model.vit.scan": scan}, results["cpu_scan_compare"])
  results["total_seconds"] = time.perf_counter() - begin
  write(results)
  print(format_table(results["rows"]))
  print(f"wrote {FLAGS.out}.json and .md ({results['total_seconds']:.0f} s)")


def _libtpu_version() -> str | None:
  try:
    import libtpu
  except ImportError:
    return None
  return getattr(libtpu, "__version__", "unknown")


def write(results: dict) -> None:
  os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
  with open(FLAGS.out + ".json", "w") as f:
    json.dump(results, f, indent=2)
  with open(FLAGS.out + ".md", "w") as f:
    f.write(MD_INTRO.format(command="`; `".join(results["commands"]), jax=results["jax"],
                            libtpu=results["libtpu"], cpus=results["cpu_count"]))
    f.write(format_table(results["rows"], markdown=True) + "\n")
    if results["cpu_scan_compare"]:
      f.write("\nCompile seconds for 8 fake CPU devices (lowering + XLA compile), "
              "model.vit.scan off and on:\n\n")
      f.write(format_table(results["cpu_scan_compare"], markdown=True) + "\n")
    for failure in results["failures"]:
      f.write(f"\n- FAILED: {failure['preset']} on {failure['topology']} "
              f"{failure['overrides']}: `{failure['error'][:300]}`\n")


MD_INTRO = """\
# ImageNet presets compiled for TPU slices (XLA's memory and cost analysis per chip)

`{command}`; jax {jax}, libtpu {libtpu}, compiled on a {cpus}-core CPU machine without a TPU.

GiB per chip. `state`: the train state's shards (parameters, optimizer state, EMA teachers);
`args` / `out` / `alias` / `temp`: `memory_analysis()` of the compiled step (the state is donated,
so its outputs alias its arguments); `peak` = args + out - alias + temp; `fits`: peak at most 90%
of the chip's HBM. `compile s`: wall seconds to lower and compile; `CPU s`: the process's CPU
seconds for it (the machine is shared: wall time depends on its load). `TFLOP/chip`:
`cost_analysis()` of one step (scanned ViTs: scaled by the unscanned / scanned FLOP ratio, since
XLA counts a loop's body once); `est. step ms`: XLA's `optimal_seconds` (a roofline lower bound,
scaled alike); `MFU` = FLOPs / (step time x chips x peak bf16 FLOP/s), an upper bound;
`img/s (est.)`: global batch / estimated step time.

"""


if __name__ == "__main__":
  app.run(main)
