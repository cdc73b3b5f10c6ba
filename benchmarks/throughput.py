"""Steady-state speed of any config's real train step on the current devices: compile seconds,
source images/s, step FLOPs and MFU, for float32 vs bfloat16 and remat on / off side by side.

    .venv/bin/python benchmarks/throughput.py --config configs/simclr.py \
        --dtypes=float32,bfloat16 --remats=none,block          # the fashion_mnist preset
    .venv/bin/python benchmarks/throughput.py --config configs/mae.py --name=mae_fashion_mnist \
        --dtypes=float32,bfloat16 --remats=none,block
    .venv/bin/python benchmarks/throughput.py --config configs/simclr.py:imagenet \
        --config.batch_size=256 --dtypes=bfloat16,float32     # ResNet-50 on a GPU

No dataset is read: every step gets the same synthetic batch of uint8 images of the config's
dataset shape (`sslx.data.sources.get_dataset_info`), placed on the mesh once, so only the
device step is timed (the host pipeline is benchmarks/input_pipeline.py's). The state and the
jitted step are built as `sslx.train.loop` builds them (`state_initializer`, `make_train_step`,
the config's mesh and sharding rules); `--config.x=y` overrides any field.

Reported per run (one run per `--dtypes` x `--remats` pair, in one process; with `--interleave`
all are compiled first and then time their rounds in turn, so a load that comes and goes on a
shared machine falls on every run alike):

* `compile_s`: lowering + XLA compilation of the step (a persistent compilation cache,
  `JAX_COMPILATION_CACHE_DIR`, shortens it on a second run);
* `images_per_s`: batch_size * steps / seconds over `--steps` steps after `--warmup` steps,
  dispatched back to back and waited for once, in the fastest of `--rounds` rounds (source
  images: a two-view method sees twice as many views); `median_images_per_s` over the rounds;
* `model_flops_per_step`: XLA's cost analysis of the step *without* remat and scan (the
  lowered, global program), so recomputation is not counted as useful work and a scanned block
  is not counted once (XLA counts a while loop's body once); `compiled_flops_per_device` is the
  compiled program's own count for one device (with remat's recomputation; a scanned body once);
* `mfu`: model_flops_per_step * steps/s / peak, where peak is the mesh's peak FLOP/s at the
  run's compute dtype: the dense table below times the device count on GPU / TPU, and on CPU the
  rate of a large `jnp.dot` measured at that dtype (all fake CPU devices share the host's cores,
  so the CPU peak is not multiplied). `mfu_vs_bf16_peak` uses the bfloat16 peak for every dtype,
  so float32 and bfloat16 rows share one denominator. `--peak_flops` overrides both (per device).

Writes `benchmarks/results/throughput_<name>.json` (after every run, so a time limit loses at
most the run in progress) with the machine (platform, CPU count, device kind, jax version) and
the exact command.
"""

import dataclasses
import importlib.metadata
import json
import os
import platform
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # configs/ and experiments/ live in the checkout

from benchmarks import xla_memory  # noqa: E402
from sslx import sharding
from sslx.data import sources
from sslx.models import COMPUTE_DTYPES, REMAT_POLICIES
from sslx.train import loop, optim
from sslx.train.step import make_train_step


@dataclasses.dataclass(frozen=True)
class DevicePeak:
  """Dense (no sparsity) peak FLOP/s of one chip: `bfloat16`, and `float32`, the rate of
  float32 dots and convolutions at XLA's default precision (TF32 tensor cores on Ampere and
  later GPUs; bfloat16 passes on TPU, so the bf16 peak)."""
  name: str
  patterns: tuple[str, ...]  # lower-case substrings of jax's device_kind, first match wins
  bfloat16: float
  float32: float


# Datasheet numbers. The non-tensor-core FP32 rates, for reference: H100 SXM / H200 67e12,
# H100 PCIe 51e12, A100 19.5e12 (only reached with jax_default_matmul_precision=highest).
DEVICE_PEAKS = (
    DevicePeak("H100 PCIe", ("h100 pcie",), 756e12, 378e12),
    DevicePeak("H100 SXM", ("h100 80gb hbm3", "h100 sxm"), 989e12, 494.5e12),
    DevicePeak("H200", ("h200",), 989e12, 494.5e12),
    DevicePeak("A100", ("a100",), 312e12, 156e12),
    DevicePeak("TPU v4", ("tpu v4",), 275e12, 275e12),
    DevicePeak("TPU v5e", ("tpu v5 lite", "tpu v5e"), 197e12, 197e12),
    DevicePeak("TPU v5p", ("tpu v5p", "tpu v5"), 459e12, 459e12),
    DevicePeak("TPU v6e", ("tpu v6 lite", "tpu v6e"), 918e12, 918e12),
)


def device_peak(device_kind: str) -> DevicePeak:
  """The table's entry for `device_kind` (`jax.devices()[0].device_kind`)."""
  kind = device_kind.lower()
  for peak in DEVICE_PEAKS:
    if any(p in kind for p in peak.patterns):
      return peak
  raise ValueError(f"no peak FLOP/s known for device kind {device_kind!r}; known: "
                   f"{[p.name for p in DEVICE_PEAKS]} (and CPUs, measured). Pass "
                   "--peak_flops=<dense bf16 FLOP/s of one device> to measure MFU against it")


def matmul_flops_per_s(dtype: str, n: int = 1024, repeats: int = 5) -> float:
  """The best rate of an [n, n] x [n, n] `jnp.dot` at `dtype` on the default device: the CPU's
  peak as XLA reaches it (bfloat16 dots on a CPU are often slower than float32)."""
  a = jnp.ones((n, n), dtype)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


class Peaks:
  """Peak FLOP/s of the whole mesh by compute dtype, and where the number comes from."""

  def __init__(self, num_devices: int, override: float = 0.0):
    if override < 0:
      raise ValueError(f"--peak_flops must be >= 0 (0: from the device table), got {override}")
    device = jax.devices()[0]
    self.platform, self.device_kind = device.platform, device.device_kind
    self.num_devices, self.override = num_devices, override
    self.table = None
    if not override and self.platform != "cpu":
      self.table = device_peak(self.device_kind)  # fails before any compile when unknown
    self._measured = {}

  def __call__(self, dtype: str) -> tuple[float, str]:
    if self.override:
      return self.override * self.num_devices, f"--peak_flops x {self.num_devices} devices"
    if self.table is not None:
      per_device = getattr(self.table, dtype)
      return per_device * self.num_devices, (
          f"{self.table.name} dense {dtype} {per_device / 1e12:g} TFLOP/s x "
          f"{self.num_devices} devices")
    if dtype not in self._measured:
      self._measured[dtype] = matmul_flops_per_s(dtype)
    return self._measured[dtype], f"measured 1024^3 jnp.dot at {dtype} on this host"


def check_runs(dtypes, remats) -> None:
  """Bad flags fail before anything is built."""
  bad = [d for d in dtypes if d not in COMPUTE_DTYPES]
  if bad or not dtypes:
    raise ValueError(f"--dtypes must be a non-empty list of {list(COMPUTE_DTYPES)} "
                     f"(config.model.dtype), got {list(dtypes)}")
  bad = [r for r in remats if r not in REMAT_POLICIES]
  if bad or not remats:
    raise ValueError(f"--remats must be a non-empty list of {list(REMAT_POLICIES)} "
                     f"(config.model.remat), got {list(remats)}")


def with_model(config, **fields):
  """A copy of `config` with `config.model.<field>` set; `vit_scan` sets model.vit.scan."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for field, value in fields.items():
      if field == "vit_scan":
        config.model.vit.scan = value
      else:
        config.model[field] = value
  return config


def synthetic_batch(config, info, batch_sharding) -> dict:
  """What `pipeline.to_global_batch` gives the step: uint8 images (or, with data.crop_on_host,
  the views the host cropped), labels, an all-true mask."""
  rng = np.random.default_rng(config.seed)
  n = config.batch_size
  images = lambda shape: rng.integers(0, 256, (n, *shape), dtype=np.uint8)
  if config.data.get("crop_on_host", False):
    from sslx.data import decode
    crops = decode.host_crops_for(config, info.image_shape[-1])
    shapes = crops.view_shapes()
    image = (images(next(iter(shapes.values()))) if crops.stacked
             else {group: images(shape) for group, shape in shapes.items()})
  else:
    image = images(info.image_shape)
  batch = {"image": image, "label": rng.integers(0, info.num_classes, (n,), dtype=np.int32),
           "index": np.arange(n, dtype=np.int32), "mask": np.ones((n,), bool)}
  return jax.device_put(batch, batch_sharding)


def cost_flops(stage) -> float:
  """XLA's FLOP count of a `jax.stages.Lowered` or `Compiled`."""
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0]
  return float(cost["flops"])


class StepBuilder:
  """The train state and jitted step of a config, as `sslx.train.loop` builds them."""

  def __init__(self, config):
    self.config = config
    self.mesh = sharding.make_mesh(config.mesh)
    rules = sharding.get_rules(config.mesh)
    sharding.check_rules_fit_mesh(rules, self.mesh)
    sharding.check_batch_divisible(config.batch_size, self.mesh)
    self.info = sources.get_dataset_info(config.data.name)
    method = loop.build_method(config)
    tx, schedule = optim.make_optimizer(config.optim, config.batch_size, config.total_steps)
    self.init_state, self.state_sharding = loop.state_initializer(
        config, method, tx, self.mesh, rules, self.info)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self.train_step = make_train_step(method, tx, schedule, state_sharding=self.state_sharding,
                                      batch_sharding=self.batch_sharding,
                                      metric_sharding=sharding.replicated(self.mesh))
    self.rng = jax.random.PRNGKey(config.seed)

  def lower(self, batch):
    abstract_state = jax.eval_shape(self.init_state, self.rng)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state,
        self.state_sharding)
    return self.train_step.lower(abstract_state, batch)

  def new_state(self):
    return jax.jit(self.init_state, out_shardings=self.state_sharding)(self.rng)


def model_flops_per_step(config, batch, lowered=None) -> float:
  """FLOPs of one step of `config` without remat and scan (see the module docstring); reuses
  `lowered` when the config already has neither."""
  plain = config.model.get("remat", "none") == "none" and not config.model.vit.get("scan", False)
  if lowered is None or not plain:
    lowered = StepBuilder(with_model(config, remat="none", vit_scan=False)).lower(batch)
  return cost_flops(lowered)


def check_counts(steps: int, warmup: int, rounds: int) -> None:
  if steps < 1 or warmup < 1 or rounds < 1:
    raise ValueError(f"steps, warmup (the first step included) and rounds must be >= 1, got "
                     f"steps={steps}, warmup={warmup}, rounds={rounds}")


class Run:
  """One config's compiled step and state after `warmup` steps, timed a round at a time (so
  several runs can take turns in one process: --interleave)."""

  def __init__(self, config, *, warmup: int):
    self.config = config
    self.dtype = config.model.get("dtype", "float32")
    builder = StepBuilder(config)  # a bad model.dtype / model.remat fails here
    self.info, self.num_devices = builder.info, builder.mesh.size
    self.batch = synthetic_batch(config, builder.info, builder.batch_sharding)
    start = time.perf_counter()
    lowered = builder.lower(self.batch)
    self.lower_s = time.perf_counter() - start
    self.compiled = lowered.compile()
    self.compile_s = time.perf_counter() - start
    self.model_flops = model_flops_per_step(config, self.batch, lowered)

    start = time.perf_counter()
    self.state = jax.block_until_ready(builder.new_state())
    self.init_s = time.perf_counter() - start
    start = time.perf_counter()
    self.state, self.metrics = self.compiled(self.state, self.batch)
    self.first_loss = float(self.metrics["train/loss"])  # waits for the step
    self.first_step_s = time.perf_counter() - start
    for _ in range(warmup - 1):
      self.state, self.metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, self.metrics))
    self.warmup = warmup
    self.round_s, self.round_cpu_s = [], []

  def time_round(self, steps: int) -> None:
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):  # dispatched back to back, as the loop's steps overlap
      self.state, self.metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, self.metrics))
    self.round_s.append(time.perf_counter() - start)
    self.round_cpu_s.append(time.process_time() - cpu_start)

  def row(self, steps: int, peaks: Peaks) -> dict:
    """The result: the rate of the fastest round (the least disturbed by other work on the
    machine, as timeit reports)."""
    config, dtype, model_flops = self.config, self.dtype, self.model_flops
    round_s, round_cpu_s, compiled = self.round_s, self.round_cpu_s, self.compiled
    seconds = min(round_s)
    last_loss = float(self.metrics["train/loss"])
    steps_per_s = steps / seconds
    peak, peak_source = peaks(dtype)
    bf16_peak, _ = peaks("bfloat16")
    memory_stats = getattr(jax.devices()[0], "memory_stats", lambda: None)() or {}
    return {
        "dtype": dtype, "remat": config.model.get("remat", "none"),
        "vit_scan": bool(config.model.vit.get("scan", False)), "model": config.model.name,
        "batch_size": config.batch_size, "image_shape": list(self.info.image_shape),
        "num_devices": self.num_devices,
        "lower_s": self.lower_s, "compile_s": self.compile_s, "init_s": self.init_s,
        "first_step_s": self.first_step_s, "warmup_steps": self.warmup, "timed_steps": steps,
        "round_s": round_s, "round_cpu_s": round_cpu_s, "timed_s": seconds,
        "step_s": seconds / steps,
        "images_per_s": images_per_s(config.batch_size, steps, seconds),
        "median_images_per_s": images_per_s(config.batch_size, steps, float(np.median(round_s))),
        "model_flops_per_step": model_flops, "compiled_flops_per_device": cost_flops(compiled),
        "peak_flops": peak, "peak_source": peak_source, "mfu": mfu(model_flops, steps_per_s, peak),
        "bf16_peak_flops": bf16_peak, "mfu_vs_bf16_peak": mfu(model_flops, steps_per_s, bf16_peak),
        # Whether config.model.dtype reached the compiled program at all.
        "hlo_has_bf16": "bf16" in compiled.as_text(),
        "memory": xla_memory.memory_analysis(compiled),
        # The process's peak so far on device 0 (GPU / TPU): runs of one process accumulate.
        "process_peak_bytes_in_use": memory_stats.get("peak_bytes_in_use"),
        "first_loss": self.first_loss, "last_loss": last_loss,
        "finite": bool(np.isfinite(self.first_loss) and np.isfinite(last_loss)),
    }


def measure(config, *, steps: int, warmup: int, peaks: Peaks, rounds: int = 1) -> dict:
  """Compiles `config`'s train step, runs `warmup` steps, then times `rounds` rounds of `steps`
  steps; one result row (see `Run.row`)."""
  check_counts(steps, warmup, rounds)
  run = Run(config, warmup=warmup)
  for _ in range(rounds):
    run.time_round(steps)
  return run.row(steps, peaks)


def images_per_s(batch_size: int, steps: int, seconds: float) -> float:
  """Source images per second (a two-view method sees 2x as many views)."""
  return batch_size * steps / seconds


def mfu(flops_per_step: float, steps_per_s: float, peak_flops: float) -> float:
  """Model FLOPs utilisation: the useful FLOP/s achieved over the peak FLOP/s."""
  return flops_per_step * steps_per_s / peak_flops


def machine() -> dict:
  device = jax.devices()[0]
  return {"platform": device.platform, "device_kind": device.device_kind,
          "device_count": jax.device_count(), "process_count": jax.process_count(),
          "cpu_count": os.cpu_count(), "machine": platform.machine(),
          "python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": importlib.metadata.version("jaxlib")}


def format_row(r: dict) -> str:
  gib = (r["memory"] or {}).get("peak_estimate_bytes")
  return (f"{r['model']:6s} {r['dtype']:8s} remat={r['remat']:12s} scan={int(r['vit_scan'])} "
          f"batch {r['batch_size']:5d}  compile {r['compile_s']:7.1f} s  step "
          f"{r['step_s'] * 1e3:9.1f} ms  {r['images_per_s']:9.1f} img/s  "
          f"{r['model_flops_per_step'] / r['batch_size'] / 1e9:7.2f} GFLOP/img  MFU "
          f"{100 * r['mfu']:5.1f}% (vs bf16 peak {100 * r['mfu_vs_bf16_peak']:5.1f}%)  "
          f"bf16 in HLO: {'yes' if r['hlo_has_bf16'] else 'no '}  "
          f"mem est {'-' if gib is None else f'{gib / 2**30:.2f} GiB'}  "
          f"loss {r['first_loss']:.4f} -> {r['last_loss']:.4f}")


def default_name(config_filename: str) -> str:
  """configs/simclr.py:imagenet,smoke -> simclr_imagenet_smoke; no variant -> fashion_mnist."""
  path, _, variant = config_filename.partition(":")
  stem = os.path.splitext(os.path.basename(path))[0]
  parts = [p.split("=")[0] for p in variant.split(",") if p] or ["fashion_mnist"]
  return "_".join([stem, *parts])


def define_flags():
  """Called by main only, so importing this module (tests) defines no flags."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/x.py:variant).",
                                  lock_config=True)
  flags.DEFINE_list("dtypes", [], f"compute dtypes to run, of {list(COMPUTE_DTYPES)} "
                    "(default: the config's model.dtype)")
  flags.DEFINE_list("remats", [], f"model.remat values to run, of {list(REMAT_POLICIES)} "
                    "(default: the config's)")
  flags.DEFINE_integer("steps", 10, "timed steps per run")
  flags.DEFINE_integer("warmup", 2, "untimed steps after compiling (the first one included)")
  flags.DEFINE_integer("rounds", 3, "timed rounds of --steps steps; the fastest gives images/s")
  flags.DEFINE_bool("interleave", False, "compile every run first, then let their rounds take "
                    "turns: a fair comparison on a machine shared with other work (all states "
                    "are held at once)")
  flags.DEFINE_float("peak_flops", 0.0, "peak FLOP/s of one device for MFU (0: the device table, "
                     "or on CPU a measured jnp.dot)")
  flags.DEFINE_string("name", "", "results name: benchmarks/results/throughput_<name>.json "
                      "(default: <config file>_<variant>)")
  flags.DEFINE_string("out_dir", os.path.join(HERE, "results"), "where the JSON is written")
  flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  config = FLAGS.config
  dtypes = FLAGS.dtypes or [config.model.get("dtype", "float32")]
  remats = FLAGS.remats or [config.model.get("remat", "none")]
  check_runs(dtypes, remats)
  mesh_devices = sharding.make_mesh(config.mesh).size
  peaks = Peaks(mesh_devices, FLAGS.peak_flops)
  name = FLAGS.name or default_name(FLAGS["config"].config_filename)
  path = os.path.join(FLAGS.out_dir, f"throughput_{name}.json")
  executable = os.path.relpath(sys.executable)  # .venv/bin/python from the repository root
  if executable.startswith(".."):
    executable = sys.executable
  result = {"name": name, "command": shlex.join([executable, *sys.argv]),
            "machine": machine(), "config": FLAGS["config"].config_filename,
            "runs": []}
  check_counts(FLAGS.steps, FLAGS.warmup, FLAGS.rounds)
  print(f"{name}: {result['machine']}")
  configs = [with_model(config, dtype=d, remat=r) for d in dtypes for r in remats]

  def save(row):
    result["runs"].append(row)
    print(format_row(row), flush=True)
    if row["dtype"] == "bfloat16" and not row["hlo_has_bf16"]:
      print("  warning: no bf16 in the compiled step: config.model.dtype had no effect")
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(result, f, indent=2)

  if FLAGS.interleave:  # every run compiled first, then their rounds take turns
    runs = [Run(c, warmup=FLAGS.warmup) for c in configs]
    for _ in range(FLAGS.rounds):
      for run in runs:
        run.time_round(FLAGS.steps)
    for run in runs:
      save(run.row(FLAGS.steps, peaks))
  else:  # one run at a time: a run's state is freed before the next is built
    for c in configs:
      save(measure(c, steps=FLAGS.steps, warmup=FLAGS.warmup, peaks=peaks, rounds=FLAGS.rounds))
  print(f"written to {path}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
