"""Memory and time of NT-Xent's forward+backward: `nt_xent` versus `nt_xent_blockwise`.

For each global batch size, compiles ``jax.value_and_grad`` of both losses on one device, reads
the compiled scratch memory (``memory_analysis().temp_size_in_bytes``), and times the compiled
step (median of a few runs after a warm-up, with ``block_until_ready``). Compiling allocates
nothing, so memory is also reported for sizes too large to run (``--memory-only-sizes``), and a
run is skipped when its scratch memory would exceed ``--max-run-bytes``.

Writes ``nt_xent_memory.json`` and ``nt_xent_memory.png`` to ``--out``. Example::

    python benchmarks/nt_xent_memory.py --sizes 1024 2048 4096 --out benchmarks/results
"""

import argparse
import functools
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sslx.losses import nt_xent
from sslx.losses.large_batch import DEFAULT_BLOCK_SIZE, nt_xent_blockwise


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192],
                      help="global batch sizes B to compile and time")
  parser.add_argument("--memory-only-sizes", type=int, nargs="*", default=[16384, 32768],
                      help="global batch sizes to compile only (memory, no timing)")
  parser.add_argument("--dim", type=int, default=128, help="embedding dimension D")
  parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
  parser.add_argument("--temperature", type=float, default=0.1)
  parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
  parser.add_argument("--slow-run-seconds", type=float, default=5.0,
                      help="time a single run when the warm-up run took longer than this")
  parser.add_argument("--max-run-bytes", type=float, default=2 * 2**30,
                      help="do not run a program whose compiled scratch memory exceeds this")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  return parser.parse_args()


def compile_step(loss_fn, batch: int, dim: int):
  spec = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
  return jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1))).lower(spec, spec).compile()


def time_step(compiled, batch: int, dim: int, repeats: int, slow: float) -> list[float]:
  rng = np.random.default_rng(0)
  z1 = jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32)
  z2 = jnp.asarray(z1 + 0.5 * rng.normal(size=(batch, dim)), jnp.float32)
  start = time.perf_counter()
  jax.block_until_ready(compiled(z1, z2))  # warm-up: first-run allocations, page faults
  if time.perf_counter() - start > slow:
    repeats = 1  # keeps the whole benchmark within a few minutes on a small CPU
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(z1, z2))
    times.append(time.perf_counter() - start)
  return times


def plot(results: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
  for name, style in (("nt_xent", "o-"), ("nt_xent_blockwise", "s-")):
    rows = [r for r in results["rows"] if r["loss"] == name]
    ax_mem.plot([r["batch"] for r in rows], [r["temp_bytes"] / 2**20 for r in rows], style,
                label=name)
    timed = [r for r in rows if r["median_s"] is not None]
    ax_time.plot([r["batch"] for r in timed], [r["median_s"] for r in timed], style, label=name)
  for ax, label in ((ax_mem, "compiled temp memory (MiB)"), (ax_time, "fwd+bwd time (s)")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("global batch B")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  fig.suptitle(f"NT-Xent value_and_grad, D={results['dim']}, block_size="
               f"{results['block_size']}, {results['device']}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main() -> None:
  args = parse_args()
  losses = {
      "nt_xent": functools.partial(nt_xent, temperature=args.temperature),
      "nt_xent_blockwise": functools.partial(
          nt_xent_blockwise, temperature=args.temperature, block_size=args.block_size),
  }
  device = jax.devices()[0]
  results = {
      "dim": args.dim, "block_size": args.block_size, "temperature": args.temperature,
      "device": f"{device.platform} ({device.device_kind}), {os.cpu_count()} cores",
      "jax": jax.__version__, "python": platform.python_version(),
      "time": "median seconds of value_and_grad over timed runs after one warm-up run",
      "memory": "compiled.memory_analysis().temp_size_in_bytes (scratch, excl. arguments)",
      "rows": [],
  }
  begin = time.perf_counter()
  timed_sizes = set(args.sizes)
  for batch in sorted(timed_sizes | set(args.memory_only_sizes)):
    for name, loss_fn in losses.items():
      compiled = compile_step(loss_fn, batch, args.dim)
      stats = compiled.memory_analysis()
      temp = None if stats is None else int(stats.temp_size_in_bytes)
      times, note = None, None
      if batch not in timed_sizes:
        note = "memory only (--memory-only-sizes)"
      elif temp is not None and temp > args.max_run_bytes:
        note = f"not run: temp memory above --max-run-bytes={int(args.max_run_bytes)}"
      else:
        times = time_step(compiled, batch, args.dim, args.repeats, args.slow_run_seconds)
      row = {"loss": name, "batch": batch, "temp_bytes": temp,
             "median_s": None if times is None else statistics.median(times),
             "times_s": times, "note": note}
      results["rows"].append(row)
      shown = "-" if times is None else f"{row['median_s']:.4f}"
      print(f"B={batch:6d} {name:18s} temp={temp / 2**20:10.1f} MiB  time={shown:>8s} s"
            + (f"  ({note})" if note else ""), flush=True)
      del compiled
  results["total_seconds"] = time.perf_counter() - begin

  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "nt_xent_memory.json"), "w") as f:
    json.dump(results, f, indent=2)
  plot(results, os.path.join(args.out, "nt_xent_memory.png"))
  print(f"total {results['total_seconds']:.1f} s; wrote {args.out}/nt_xent_memory.{{json,png}}")


if __name__ == "__main__":
  main()
