"""Per-device memory of a ViT train step under sslx's sharding rules, on 8 simulated CPU devices.

    .venv/bin/python benchmarks/sharding.py          # ViT-B/16 at 224 px, ~10 min on 2 cores
    .venv/bin/python benchmarks/sharding.py --model=S/16 --image_size=32 --run_step \
        --state_only_methods= --out=/tmp/sharding_small   # creates each state, runs one step
    .venv/bin/python benchmarks/sharding.py --nocompile   # the state's bytes only, seconds

For each method (`--methods`, built from its ImageNet config `configs/<method>.py:imagenet` with
`model.name=vit`; default MoCo v3, the repository's ViT-B/16 recipe, and SimCLR) and each layout
(`--layouts`: a `mesh.rules` preset on a mesh of 8 devices), the script builds the train state
and the train step exactly as `sslx.train.loop` does (`state_initializer`, `make_train_step`)
and reports, for device 0:

* the bytes of the train state it holds, split into parameters, optimizer state and model state
  (EMA teachers, BatchNorm statistics), from each leaf's sharding (`shard_shape`). When the
  whole state fits `--max_alloc_gib` over all 8 devices it is also created with
  `jit(init, out_shardings=...)` and the bytes of its shards on device 0 must equal that sum;
* XLA's memory analysis of the compiled step (`memory_analysis()`: arguments, outputs, aliased
  (donated) bytes, temporaries); the arguments must be the state's bytes above plus the batch's
  image shard. Compiling allocates nothing, so a ViT-B step is measured on a small CPU. Methods
  in `--state_only_methods` and layouts in `--state_only_layouts` are not compiled;
* with `--run_step` (and a created state), one real step, whose loss must equal the first
  layout's.

Ratios are to the replicated layout. A leaf is reported as mismatched when it is replicated
although the rules would shard it: a parameter dimension the mesh does not divide (the rules fall
back to replication; the `tensor_1x8` layout checks that this shows: ViT-B's 12 heads over a model
axis of 8), or a leaf mirroring a sharded parameter (same path tail and shape, e.g. an EMA
teacher's copy) that is not sharded like it. Parameters without logical axis names (the heads'
BatchNorm scales and shifts) are replicated by design and shown apart. Writes
`results/sharding.json` and `results/sharding.md`.
"""

import os

# Eight CPU devices must be requested before jax is imported.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import importlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # configs/ and experiments/ live in the checkout

from benchmarks import xla_memory as xla_memory_lib  # noqa: E402
from sslx import sharding  # noqa: E402
from sslx.data import sources  # noqa: E402
from sslx.train import loop, optim  # noqa: E402
from sslx.train.step import make_train_step  # noqa: E402

# name -> (mesh.rules preset, mesh.axes, mesh.shape). "tensor_1x8" is the mismatch check: ViT-B's
# 12 heads (ViT-S's 6) do not divide a model axis of 8, so attention falls back to replication.
LAYOUTS = {
    "replicated": ("replicated", ("data",), (8,)),
    "fsdp_1x8": ("fsdp", ("data", "fsdp"), (1, 8)),
    "fsdp_2x4": ("fsdp", ("data", "fsdp"), (2, 4)),
    "tensor_4x2": ("tensor", ("data", "model"), (4, 2)),
    "fsdp_tensor_2x2x2": ("fsdp_tensor", ("data", "fsdp", "model"), (2, 2, 2)),
    "tensor_1x8": ("tensor", ("data", "model"), (1, 8)),
}
CATEGORIES = ("params", "opt_state", "model_state", "other")
MIB = 2**20
MAX_LISTED = 8

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", ["moco_v3", "simclr"],
                  "configs/<method>.py to build (their imagenet variant, with model.name=vit)")
flags.DEFINE_list("state_only_methods", ["simclr"],
                  "methods whose state is measured but whose step is not compiled")
flags.DEFINE_string("model", "B/16", "ViT variant (model.vit.variant), e.g. B/16, S/16")
flags.DEFINE_integer("image_size", 224, "view size (augment.crop_size) the ViT sees")
flags.DEFINE_integer("batch_size", 16, "global batch; divisible by every layout's batch axes")
flags.DEFINE_list("layouts", list(LAYOUTS), f"layouts to measure, of {list(LAYOUTS)}")
flags.DEFINE_float("max_alloc_gib", 4.0, "create a layout's state when it needs at most this "
                   "over all 8 devices (else its bytes come from the shardings only)")
flags.DEFINE_bool("compile", True, "compile the train step for XLA's memory analysis (off: the "
                  "state's bytes only, in seconds)")
flags.DEFINE_list("state_only_layouts", ["tensor_1x8"],
                  "layouts whose state is measured but whose step is not compiled")
flags.DEFINE_bool("run_step", False, "run one train step on each allocated state")
flags.DEFINE_string("out", os.path.join(HERE, "results", "sharding"),
                    "output path without extension (.json and .md are written)")


def validate_flags() -> None:
  unknown = [name for name in FLAGS.layouts if name not in LAYOUTS]
  if unknown or not FLAGS.layouts:
    raise ValueError(f"--layouts must be a non-empty list of {list(LAYOUTS)}, got "
                     f"{FLAGS.layouts}")
  if FLAGS.batch_size < 1 or FLAGS.batch_size % 8:
    raise ValueError(f"--batch_size must be a positive multiple of 8 (the most batch shards "
                     f"of a layout), got {FLAGS.batch_size}")
  if FLAGS.image_size < 1:
    raise ValueError(f"--image_size must be >= 1, got {FLAGS.image_size}")
  if jax.device_count() != 8:
    raise ValueError(f"this benchmark needs 8 devices, got {jax.device_count()}: run it in a "
                     "fresh process (XLA_FLAGS is set before jax is imported)")


def make_config(method: str, layout: str):
  """`configs/<method>.py:imagenet` with a ViT, this benchmark's size and the layout's mesh."""
  rules, axes, shape = LAYOUTS[layout]
  config = importlib.import_module(f"configs.{method}").get_config("imagenet")
  with config.unlocked():
    config.model.name = "vit"
    config.model.vit.variant = FLAGS.model
    config.augment.crop_size = FLAGS.image_size
    config.batch_size = FLAGS.batch_size
    config.mesh.axes = axes
    config.mesh.shape = shape
    config.mesh.rules = rules
    config.mesh.custom_rules = ()
    if "ema" in config:  # keeps the EMA momentum the paper's at this batch (no effect on memory)
      config.ema.reference_batch_size = FLAGS.batch_size
  return config


def leaf_category(path) -> str:
  field = getattr(path[0], "name", None) if path else None
  return field if field in CATEGORIES[:3] else "other"


device0_bytes = xla_memory_lib.shard_bytes  # bytes of one array's shard on device 0


def _normalized(spec) -> tuple:
  """A PartitionSpec without its trailing Nones: P(None, None) and P() both replicate."""
  spec = tuple(spec)
  while spec and spec[-1] is None:
    spec = spec[:-1]
  return spec


def _keys(path) -> tuple[str, ...]:
  return tuple(str(k) for k in path)


def account(abstract_state, state_sharding, param_axes, mesh, rules) -> dict:
  """Bytes of the state on device 0 and in all (one copy) by category; the bytes of the ViT
  (parameters with logical names, and the optimizer moments that mirror them); and the leaves
  that stay replicated although the rules would shard them (see the module docstring)."""
  names_by_path = {}  # parameter path -> logical names (None: replicated by design)
  if param_axes is not None:
    for path, names in jax.tree_util.tree_flatten_with_path(
        param_axes, is_leaf=lambda x: x is None or isinstance(x, tuple))[0]:
      names_by_path[_keys(path)] = names
  leaves = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  shardings = jax.tree.leaves(state_sharding)
  if len(leaves) != len(shardings):
    raise AssertionError(f"{len(leaves)} state leaves but {len(shardings)} shardings")
  params = {}  # parameter path -> (shape, spec, has logical names)
  for (path, x), s in zip(leaves, shardings):
    if leaf_category(path) == "params":
      params[_keys(path[1:])] = (x.shape, s.spec, names_by_path.get(_keys(path[1:])) is not None)

  out = {c: {"device0_bytes": 0, "global_bytes": 0} for c in CATEGORIES}
  vit = {"device0_bytes": 0, "global_bytes": 0}
  unnamed_params, fallbacks, mirrors = 0, [], []
  for (path, x), s in zip(leaves, shardings):
    category, keys = leaf_category(path), _keys(path[1:])
    nbytes, global_bytes = device0_bytes(x.shape, x.dtype, s), x.size * x.dtype.itemsize
    out[category]["device0_bytes"] += nbytes
    out[category]["global_bytes"] += global_bytes
    where = jax.tree_util.keystr(path)
    if category == "params":
      names = names_by_path.get(keys)
      if names is None:
        unnamed_params += nbytes
        continue
      vit["device0_bytes"] += nbytes
      vit["global_bytes"] += global_bytes
      # What the rules give when every dimension divides (size 0 divides anything).
      wanted = sharding.logical_to_mesh(names, (0,) * len(names), mesh, rules)
      if _normalized(s.spec) != _normalized(wanted):
        fallbacks.append({"leaf": where, "shape": list(x.shape), "spec": str(s.spec),
                          "rules_ask": str(wanted), "device0_bytes": nbytes})
      continue
    # The parameter this leaf mirrors, if any: the longest parameter path ending its path, of
    # the same shape (optimizer moments, an EMA teacher's copy).
    mirrored = next((params[keys[i:]] for i in range(len(keys)) if keys[i:] in params
                     and params[keys[i:]][0] == x.shape), None)
    if mirrored is None:
      continue
    _, spec, named = mirrored
    if named and category == "opt_state":
      vit["device0_bytes"] += nbytes
      vit["global_bytes"] += global_bytes
    if _normalized(spec) and _normalized(s.spec) != _normalized(spec):
      mirrors.append({"leaf": where, "shape": list(x.shape), "spec": str(s.spec),
                      "parameter_spec": str(spec), "device0_bytes": nbytes})
  total = {k: sum(out[c][k] for c in CATEGORIES) for k in ("device0_bytes", "global_bytes")}
  return {"categories": out, "total": total, "vit_params_opt": vit,
          "unnamed_params_device0_bytes": unnamed_params,
          "fallback_count": len(fallbacks), "mirror_count": len(mirrors),
          "fallback_bytes": sum(f["device0_bytes"] for f in fallbacks),
          "mirror_bytes": sum(m["device0_bytes"] for m in mirrors),
          "mirror_subtrees": sorted({m["leaf"].split("]")[0] + "]" for m in mirrors}),
          # The first few, to find them; the counts and bytes above cover all.
          "fallbacks": fallbacks[:MAX_LISTED], "mirrors": mirrors[:MAX_LISTED]}


def measure(method_name: str, layout: str, reference_loss) -> dict:
  """One row: the state's accounting, XLA's memory analysis of the compiled step (unless the
  layout is state-only), and the state created (and stepped) when it fits."""
  config = make_config(method_name, layout)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.get_rules(config.mesh)
  sharding.check_rules_fit_mesh(rules, mesh)
  sharding.check_batch_divisible(config.batch_size, mesh)
  info = sources.get_dataset_info(config.data.name)
  method = loop.get_method(config)
  tx, schedule = optim.make_optimizer(config.optim, config.batch_size, config.total_steps)
  init_state, state_sharding = loop.state_initializer(config, method, tx, mesh, rules, info)
  rng = jax.random.PRNGKey(config.seed)
  abstract_state = jax.eval_shape(init_state, rng)
  row = {"method": method_name, "layout": layout, "rules": config.mesh.rules,
         "mesh": dict(zip(config.mesh.axes, config.mesh.shape)),
         **account(abstract_state, state_sharding, method.param_axes, mesh, rules),
         "xla": None, "compile_s": None, "resident_device0_bytes": None, "loss": None,
         "step_s": None}

  batch_sharding = sharding.batch_sharding(mesh)
  batch_shapes = {"image": jax.ShapeDtypeStruct((config.batch_size, *info.image_shape),
                                                jnp.uint8, sharding=batch_sharding),
                  "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32,
                                                sharding=batch_sharding)}
  row["batch_device0_bytes"] = sum(device0_bytes(b.shape, b.dtype, batch_sharding)
                                   for b in batch_shapes.values())
  compiled = None
  if (FLAGS.compile and layout not in FLAGS.state_only_layouts
      and method_name not in FLAGS.state_only_methods):
    start = time.perf_counter()
    train_step = make_train_step(method, tx, schedule, state_sharding=state_sharding,
                                 batch_sharding=batch_sharding,
                                 metric_sharding=sharding.replicated(mesh))
    compiled = train_step.lower(abstract_state, batch_shapes).compile()
    row["compile_s"] = time.perf_counter() - start
    row["xla"] = xla_memory(compiled, row)

  row["allocated"] = row["total"]["device0_bytes"] * 8 <= FLAGS.max_alloc_gib * 2**30
  if row["allocated"]:
    state = jax.jit(init_state, out_shardings=state_sharding)(rng)
    resident = sum(shard.data.nbytes for x in jax.tree.leaves(state)
                   for shard in x.addressable_shards if shard.device == jax.devices()[0])
    row["resident_device0_bytes"] = resident
    if resident != row["total"]["device0_bytes"]:
      raise AssertionError(f"{method_name} {layout}: {resident} state bytes resident on device "
                           f"0, {row['total']['device0_bytes']} computed from the shardings")
    if FLAGS.run_step and compiled is not None:
      images = np.random.default_rng(0).integers(
          0, 256, (config.batch_size, *info.image_shape), dtype=np.uint8)
      batch = jax.device_put({"image": images,
                              "label": np.zeros((config.batch_size,), np.int32)},
                             batch_sharding)
      start = time.perf_counter()
      state, metrics = compiled(state, batch)
      row["loss"] = float(metrics["train/loss"])
      row["step_s"] = time.perf_counter() - start
      if reference_loss is not None and not np.isclose(row["loss"], reference_loss, rtol=1e-4):
        raise AssertionError(f"{method_name} {layout}: loss {row['loss']} differs from the "
                             f"first layout's {reference_loss}")
    del state
  return row


def xla_memory(compiled, row) -> dict | None:
  """`memory_analysis()` of the compiled step (bytes per device), checked against the state."""
  x = xla_memory_lib.memory_analysis(compiled)  # with peak_estimate_bytes
  if x is None:
    return None
  # jit drops unused arguments (a label the method never reads), never a state leaf: every one
  # flows to the new state.
  state_bytes = row["total"]["device0_bytes"]
  if not state_bytes <= x["argument_bytes"] <= state_bytes + row["batch_device0_bytes"]:
    raise AssertionError(
        f"{row['method']} {row['layout']}: XLA's argument bytes {x['argument_bytes']} are not "
        f"the state bytes on device 0 computed from the shardings ({state_bytes}) plus at most "
        f"the batch's ({row['batch_device0_bytes']})")
  return x


def ideal_ratio(row) -> float:
  """1 / the devices the rules split a parameter over at most: the product of the mesh axes the
  rules use (FSDP over 8: 1/8; fsdp_tensor on 2x2x2: embed over 2 and mlp / heads over 2, 1/4)."""
  used = {a for _, axes in sharding.get_rules(row["rules"]) for a in axes or ()
          if a in row["mesh"]}
  return 1 / math.prod(row["mesh"][a] for a in used)


def add_ratios(rows: list[dict]) -> None:
  """Ratios to the same method's replicated row (None without one)."""
  replicated = {r["method"]: r for r in rows if r["layout"] == "replicated"}
  for row in rows:
    cats = row["categories"]
    row["params_opt_device0_bytes"] = (cats["params"]["device0_bytes"]
                                       + cats["opt_state"]["device0_bytes"])
    row["ideal_ratio"] = ideal_ratio(row)
    vit = row["vit_params_opt"]
    row["ratio_vit_params_opt"] = vit["device0_bytes"] / vit["global_bytes"]
    ref = replicated.get(row["method"])
    row["ratio_params_opt"] = row["ratio_state"] = row["ratio_peak"] = None
    if ref is None:
      continue
    row["ratio_params_opt"] = row["params_opt_device0_bytes"] / ref["params_opt_device0_bytes"]
    row["ratio_state"] = row["total"]["device0_bytes"] / ref["total"]["device0_bytes"]
    if row["xla"] and ref["xla"]:
      row["ratio_peak"] = (row["xla"]["peak_estimate_bytes"]
                           / ref["xla"]["peak_estimate_bytes"])


def notes(row) -> str:
  out = []
  if row["fallback_count"]:
    out.append(f"{row['fallback_count']} parameters fall back to replication "
               f"({row['fallback_bytes'] / MIB:.1f} MiB), e.g. `{row['fallbacks'][0]['leaf']}` "
               f"`{row['fallbacks'][0]['spec']}` where the rules ask "
               f"`{row['fallbacks'][0]['rules_ask']}`")
  if row["mirror_count"]:
    out.append(f"{row['mirror_count']} leaves mirroring sharded parameters are replicated "
               f"({row['mirror_bytes'] / MIB:.1f} MiB, under "
               f"{', '.join(row['mirror_subtrees'])})")
  if row["unnamed_params_device0_bytes"] and row["layout"] != "replicated":
    out.append(f"parameters without logical names (BatchNorm) replicated "
               f"({row['unnamed_params_device0_bytes'] / MIB:.1f} MiB)")
  return "; ".join(out)


HEADER = ["method", "layout", "params", "opt", "model st.", "state/dev", "p+o ratio",
          "ViT p+o ratio", "ideal", "state ratio", "XLA arg", "XLA out", "XLA temp",
          "peak est.", "peak ratio", "compile s", "resident", "loss"]


def format_table(rows: list[dict], markdown: bool = False) -> str:
  mib = lambda b: f"{b / MIB:.1f}"  # noqa: E731
  ratio = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
  body = []
  for r in rows:
    c, x = r["categories"], r["xla"] or {}
    body.append([
        r["method"], r["layout"], mib(c["params"]["device0_bytes"]),
        mib(c["opt_state"]["device0_bytes"]), mib(c["model_state"]["device0_bytes"]),
        mib(r["total"]["device0_bytes"]), ratio(r["ratio_params_opt"]),
        ratio(r["ratio_vit_params_opt"]), ratio(r["ideal_ratio"]), ratio(r["ratio_state"]),
        *(mib(x[k]) if k in x else "-" for k in ("argument_bytes", "output_bytes",
                                                   "temp_bytes", "peak_estimate_bytes")),
        ratio(r["ratio_peak"]), "-" if r["compile_s"] is None else f"{r['compile_s']:.0f}",
        "-" if r["resident_device0_bytes"] is None else mib(r["resident_device0_bytes"]),
        "-" if r["loss"] is None else f"{r['loss']:.5f}"])
  if markdown:
    lines = ["| " + " | ".join(HEADER) + " |",
             "|" + "|".join([":---"] * 2 + ["---:"] * (len(HEADER) - 2)) + "|"]
    lines += ["| " + " | ".join(b) + " |" for b in body]
    lines.append("")
  else:
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(HEADER)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(HEADER, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths)) for b in body]
  for r in rows:
    if notes(r):
      lines.append(("- " if markdown else "") + f"{r['method']} {r['layout']}: {notes(r)}")
  return "\n".join(lines)


def check(rows: list[dict]) -> None:
  """What the layouts must show: the fallback check layout its fallbacks, every other layout
  none; under FSDP the ViT's parameters and moments at the ideal fraction of their bytes, within
  3% (the MLP hidden bias and the per-head qkv bias have no "embed" dimension and stay
  replicated: +1% at ViT-S, +0.4% at ViT-B)."""
  for row in rows:
    name = f"{row['method']} {row['layout']}"
    if row["layout"] == "tensor_1x8":
      assert row["fallback_count"], f"{name}: expected a fallback to replication, none found"
    else:
      assert not row["fallback_count"], f"{name}: {row['fallbacks']}"
    if row["rules"] == "fsdp":
      assert abs(row["ratio_vit_params_opt"] - row["ideal_ratio"]) < 0.03 * row["ideal_ratio"], (
          f"{name}: the ViT's parameters + moments take {row['ratio_vit_params_opt']:.4f} of "
          f"their bytes per device, FSDP should give {row['ideal_ratio']:.4f}")


def main(argv):
  del argv
  validate_flags()
  logging.set_verbosity(logging.ERROR)  # the fallback row's warning is reported in the table
  begin = time.perf_counter()
  load = os.getloadavg()
  results = {
      "model": f"ViT-{FLAGS.model}", "image_size": FLAGS.image_size,
      "batch_size": FLAGS.batch_size, "methods": FLAGS.methods,
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind} "
                 f"(--xla_force_host_platform_device_count=8) on {os.cpu_count()} cores",
      "jax": jax.__version__, "python": platform.python_version(),
      "load_average_at_start": [round(v, 2) for v in load],
      "command": " ".join(sys.argv),
      "units": "bytes on device 0 (the tables print MiB)",
      "layouts": {name: {"rules": LAYOUTS[name][0], "axes": LAYOUTS[name][1],
                         "shape": LAYOUTS[name][2]} for name in FLAGS.layouts},
      "rows": [],
  }
  for method_name in FLAGS.methods:
    reference_loss = None
    for layout in FLAGS.layouts:
      row = measure(method_name, layout, reference_loss)
      reference_loss = row["loss"] if reference_loss is None else reference_loss
      results["rows"].append(row)
      x = row["xla"] or {}
      print(f"{method_name:8s} {layout:18s} state/dev {row['total']['device0_bytes'] / MIB:8.1f}"
            f" MiB  temp {x.get('temp_bytes', 0) / MIB:8.1f} MiB  "
            f"{time.perf_counter() - begin:5.0f} s"
            + ("" if row["loss"] is None else f"  loss {row['loss']:.5f}"), flush=True)
  add_ratios(results["rows"])
  results["total_seconds"] = time.perf_counter() - begin
  print(format_table(results["rows"]))
  os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
  with open(FLAGS.out + ".json", "w") as f:
    json.dump(results, f, indent=2)
  with open(FLAGS.out + ".md", "w") as f:
    f.write(MD_INTRO.format(model=FLAGS.model, size=FLAGS.image_size, batch=FLAGS.batch_size,
                            devices=results["devices"], jax=jax.__version__,
                            command=results["command"]))
    f.write(format_table(results["rows"], markdown=True) + "\n")
  print(f"wrote {FLAGS.out}.json and .md ({results['total_seconds']:.0f} s)")
  check(results["rows"])


MD_INTRO = """\
# Per-device memory of a ViT train step under sslx's sharding rules

ViT-{model} at {size} px, global batch {batch}, {devices}, jax {jax};
`{command}`.

MiB on device 0. `params`, `opt`, `model st.`: the train state's parameters, optimizer state
and model state (EMA teacher, BatchNorm statistics) from each leaf's sharding; `p+o ratio`:
parameters + optimizer state against the replicated layout; `ViT p+o ratio`: the same for the
parameters with logical axis names (the ViT's and the heads' Linear layers) and their moments
only; `ideal`: 1 / the most
devices the rules split a parameter over; `XLA *`: `memory_analysis()` of the compiled train
step (arguments = state + image shards; out = new state + metrics; the state is donated);
`peak est.`: arg + out - alias + temp; `resident`: the state created with
`jit(init, out_shardings=...)` and its device-0 shards summed (`-`: not created, over
`--max_alloc_gib`); `compile s`: tracing, lowering and compiling the step; `loss`: one step
run (`--run_step`). `-` in the XLA columns: a state-only
layout, not compiled.

"""


if __name__ == "__main__":
  app.run(main)
