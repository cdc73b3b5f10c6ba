"""Forward + backward time and compiled memory of the sslx losses at realistic sizes, beside the
same losses from the PyTorch library lightly where it has them.

    .venv/bin/python benchmarks/losses.py                      # sslx only
    bash benchmarks/setup_lightly.sh                           # once: torch + lightly venv
    .venv/bin/python benchmarks/losses.py --lightly-python .venv-lightly/bin/python

Inputs come from benchmarks/loss_cases.py (NumPy, same seed on both sides). For each loss the
jitted ``value_and_grad`` is compiled once, run ``--warmup`` times, then timed ``--repeats``
times (median, with ``block_until_ready``); memory is XLA's compiled temporary buffer size
(``memory_analysis().temp_size_in_bytes``), the peak scratch memory of the step beyond inputs
and outputs. lightly is timed with ``loss.backward()`` in a separate process (its own venv:
torch is never a dependency of sslx). Writes ``results/losses.json`` and ``results/losses.png``.

Sizes (benchmarks/loss_cases.py): global batch 4096 for the pairwise losses (dim 128 for the
contrastive ones, 2048 for Barlow Twins / VICReg), DINO with 8 views of 512 images and 8192
prototypes, SwAV 8 views x 4096 x 3000 prototypes, MSN 11 views x 1024, iBOT 2 x 32 images x 196
patches x 8192. DINO's 65536 prototypes and Barlow Twins' 8192 dimensions scale these up 8x and
16x in FLOPs; pass --scale to grow every batch.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import loss_cases  # noqa: E402
from sslx import losses  # noqa: E402

# Keyword settings: each paper's defaults.
SSLX_KWARGS = {
    "nt_xent": dict(temperature=0.1),
    "nt_xent_blockwise": dict(temperature=0.1, block_size=512),
    "dcl": dict(temperature=0.1),
    "info_nce": dict(temperature=0.2),
    "w_mse": dict(whitening_size=256),
}


def sslx_loss(name):
  fn = getattr(losses, name)
  kwargs = SSLX_KWARGS.get(name, {})

  def scalar(**inputs):
    out = fn(**inputs, **kwargs)
    return out[0] if isinstance(out, tuple) else out  # msn returns (loss, aux)

  return scalar


def time_sslx(name, inputs, grad_names, warmup, repeats):
  fn = sslx_loss(name)
  fixed_names = tuple(k for k in inputs if k not in grad_names)

  # Every input is an argument of the jitted function: closing over the fixed ones would bake
  # them into the program as constants, which XLA then spends seconds constant-folding.
  def value_and_grad(diff, fixed):
    return jax.value_and_grad(
        lambda d: fn(**dict(zip(grad_names, d)), **dict(zip(fixed_names, fixed))))(diff)

  args = (tuple(jnp.asarray(inputs[k]) for k in grad_names),
          tuple(jnp.asarray(inputs[k]) for k in fixed_names))
  jitted = jax.jit(value_and_grad)
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  temp_bytes = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return {"seconds": float(np.median(times)), "compile_seconds": compile_s,
          "temp_bytes": temp_bytes}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default="", help="comma-separated loss names")
  parser.add_argument("--scale", type=float, default=1.0, help="multiply every global batch")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--lightly-python", default="",
                      help="python of a venv with torch + lightly (benchmarks/setup_lightly.sh)")
  parser.add_argument("--out", default=os.path.join(HERE, "results"))
  args = parser.parse_args()

  names = [n for n in loss_cases.CASES if not args.only or n in args.only.split(",")]
  results = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
             "cpu_count": os.cpu_count(), "losses": {}}
  for name in names:
    builder, batch, dim, grad_names = loss_cases.CASES[name]
    batch = int(batch * args.scale)
    inputs = builder(np.random.default_rng(0), batch, dim)
    row = {"batch": batch, "dim": dim,
           "sslx": time_sslx(name, inputs, grad_names, args.warmup, args.repeats)}
    results["losses"][name] = row
    temp = row["sslx"]["temp_bytes"]
    mib = temp / 2**20 if temp is not None else float("nan")
    print(f"{name:>18}  B={batch:<5d} D={dim:<5d} sslx {1e3 * row['sslx']['seconds']:8.1f} ms  "
          f"temp {mib:8.1f} MiB", flush=True)

  if args.lightly_python:
    command = [args.lightly_python, os.path.join(HERE, "lightly_losses.py"),
               "--names", ",".join(names), "--scale", str(args.scale),
               "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    done = subprocess.run(command, capture_output=True, text=True)
    sys.stderr.write(done.stderr[-3000:])
    lightly = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {
        "_version": f"lightly run failed (exit {done.returncode})"}
    results["lightly_version"] = lightly.pop("_version")
    for name, timing in lightly.items():
      row = results["losses"][name]
      row["lightly"] = timing
      row["lightly_over_sslx"] = timing["seconds"] / row["sslx"]["seconds"]
      print(f"{name:>18}  lightly {1e3 * timing['seconds']:8.1f} ms  "
            f"(lightly / sslx = {row['lightly_over_sslx']:.2f})", flush=True)

  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "losses.json"), "w") as f:
    json.dump(results, f, indent=2)
  plot(results, os.path.join(args.out, "losses.png"))
  print("wrote", os.path.join(args.out, "losses.json"))


def plot(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(results["losses"])
  sslx_ms = [1e3 * results["losses"][n]["sslx"]["seconds"] for n in names]
  lightly_ms = [1e3 * results["losses"][n]["lightly"]["seconds"]
                if "lightly" in results["losses"][n] else np.nan for n in names]
  y = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.2))
  ax.barh(y - 0.2, sslx_ms, height=0.4, label="sslx (jax)")
  if not np.all(np.isnan(lightly_ms)):
    ax.barh(y + 0.2, lightly_ms, height=0.4, label="lightly (torch)")
  ax.set_yticks(y, names)
  ax.invert_yaxis()
  ax.set_xscale("log")
  ax.set_xlabel("forward + backward (ms, log scale)")
  ax.set_title(f"losses on {results['device']} ({results['cpu_count']} cores)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


if __name__ == "__main__":
  main()
