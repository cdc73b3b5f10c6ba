"""Memory of SimCLR's train step with gradient caching (optim.grad_cache_chunks, sslx.train.grad_cache)
against the full-batch step: the same loss and gradient, one micro-batch's activations at a time.

For each number of micro-batches, builds the real train step as `sslx.train.loop` does
(`build_method`, `state_initializer`, `make_train_step`) on one device for SimCLR with a ViT and
a LayerNorm projector, compiles it ahead of time and reads XLA's `memory_analysis()` (temp: the
scratch the step needs beyond its arguments and outputs; see benchmarks/xla_memory.py). With
``--time-steps N`` it also runs the step N times after a warm-up on a random batch and reports
the median step time (gradient caching runs the forward pass twice). Examples::

    # CPU, the Fashion-MNIST ViT (4 blocks of width 128, 28x28 views), batch 256:
    python benchmarks/grad_cache_memory.py --dataset fashion_mnist --batch-size 256
    # GPU, ViT-S/16 on 224x224 views in bfloat16, batch 256, timed:
    python benchmarks/grad_cache_memory.py --dataset imagenet --batch-size 256 --time-steps 5

Writes ``grad_cache_memory[_<suffix>].json`` to ``--out`` with the machine and the command.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # configs/ and experiments/ live in the checkout

from benchmarks import xla_memory
from configs import simclr as simclr_config
from sslx import sharding
from sslx.data import sources
from sslx.train import loop, optim
from sslx.train.step import make_train_step

MIB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="fashion_mnist",
                      choices=("fashion_mnist", "cifar10", "imagenet"),
                      help="the simclr preset (view size, ViT size, compute dtype)")
  parser.add_argument("--batch-size", type=int, default=256, help="global batch (one device)")
  parser.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4, 8],
                      help="optim.grad_cache_chunks values; 1 is the full-batch step")
  parser.add_argument("--vit-variant", default=None, help="override model.vit.variant")
  parser.add_argument("--dtype", default=None, help="override model.dtype")
  parser.add_argument("--remat", default="none", help="model.remat (none | block | policy)")
  parser.add_argument("--time-steps", type=int, default=0,
                      help="timed steps after a warm-up (0: compile and memory only)")
  parser.add_argument("--suffix", default="", help="grad_cache_memory_<suffix>.json")
  parser.add_argument("--note", default="", help="recorded in the JSON (e.g. machine load)")
  parser.add_argument("--out", default=os.path.join(HERE, "results"))
  return parser.parse_args(argv)


def make_config(args, chunks: int):
  config = simclr_config.get_config(args.dataset)
  with config.unlocked():
    config.batch_size = args.batch_size
    config.model.name = "vit"
    config.model.remat = args.remat
    if args.vit_variant is not None:
      config.model.vit.variant = args.vit_variant
    if args.dtype is not None:
      config.model.dtype = args.dtype
    config.projector.norm = "layer"  # BatchNorm-free: what gradient caching needs
    config.optim.name = "adamw"
    config.optim.grad_cache_chunks = chunks
    config.mesh.num_devices = 1
    config.mesh.shape = (1,)
    config.require_accelerator = False
  return config


def describe(config) -> str:
  v = config.model.vit
  vit = (f"ViT-{v.variant}" if v.variant else
         f"ViT of width {v.width}, depth {v.depth}, patch {v.patch_size}")
  return (f"SimCLR, {vit}, {config.augment.crop_size}x{config.augment.crop_size} views, "
          f"model.dtype {config.model.dtype}, model.remat {config.model.remat}, projector "
          f"{tuple(config.projector.hidden)} -> {config.projector.out_features} with LayerNorm, "
          "AdamW")


def measure(config, time_steps: int) -> dict:
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.get_rules(config.mesh)
  info = sources.get_dataset_info(config.data.name)
  method = loop.build_method(config)
  tx, schedule = optim.make_optimizer(config.optim, config.batch_size, config.total_steps)
  init_state, state_sharding = loop.state_initializer(config, method, tx, mesh, rules, info)
  batch_sharding = sharding.batch_sharding(mesh)
  # The batch the step sees: [B, H, W, C] images, or [B, 2, h, w, C] crops made on the host.
  image_shape = info.image_shape
  if config.data.crop_on_host:
    image_shape = (2, config.augment.crop_size, config.augment.crop_size, image_shape[-1])
  batch_spec = {"image": jax.ShapeDtypeStruct((config.batch_size, *image_shape), jnp.uint8),
                "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)}
  abstract_state = jax.eval_shape(init_state, jax.random.PRNGKey(0))
  step = make_train_step(method, tx, schedule, state_sharding=state_sharding,
                         batch_sharding=batch_sharding, metric_sharding=sharding.replicated(mesh))
  start = time.perf_counter()
  compiled = step.lower(abstract_state, batch_spec).compile()
  row = {"chunks": config.optim.grad_cache_chunks, "batch_size": config.batch_size,
         "compile_s": round(time.perf_counter() - start, 2),
         **xla_memory.memory_analysis(compiled)}
  if time_steps:
    state = jax.jit(init_state, out_shardings=state_sharding)(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, batch_spec["image"].shape), jnp.uint8),
             "label": jnp.zeros((config.batch_size,), jnp.int32)}
    batch = jax.device_put(batch, batch_sharding)
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(time_steps):
      begin = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - begin)
    row["median_step_s"] = statistics.median(times)
    row["loss_after_steps"] = float(metrics["train/loss"])
  return row


def main(argv=None) -> None:
  args = parse_args(argv)
  device = jax.devices()[0]
  first = make_config(args, 1)
  results = {
      "command": "python " + " ".join([os.path.relpath(__file__, os.getcwd()), *sys.argv[1:]]),
      "device": f"{device.platform} ({device.device_kind}), {os.cpu_count()} CPU cores",
      "jax": jax.__version__, "python": platform.python_version(),
      "model": describe(first),
      "memory": "compiled train step's memory_analysis() on one device, bytes "
                "(temp: scratch beyond arguments and outputs; peak_estimate: arguments + "
                "outputs - aliased + temp)",
      "note": args.note,
      "rows": [],
  }
  for chunks in args.chunks:
    row = measure(make_config(args, chunks), args.time_steps)
    results["rows"].append(row)
    timing = f"  step {row['median_step_s'] * 1e3:8.1f} ms" if "median_step_s" in row else ""
    print(f"chunks={chunks:3d}  temp {row['temp_bytes'] / MIB:9.1f} MiB  peak "
          f"{row['peak_estimate_bytes'] / MIB:9.1f} MiB  compile {row['compile_s']:6.1f} s"
          + timing, flush=True)
  base = results["rows"][0]["temp_bytes"]
  for row in results["rows"]:
    row["temp_vs_first"] = round(row["temp_bytes"] / base, 3)
  os.makedirs(args.out, exist_ok=True)
  name = "grad_cache_memory" + (f"_{args.suffix}" if args.suffix else "") + ".json"
  with open(os.path.join(args.out, name), "w") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {os.path.join(args.out, name)}")


if __name__ == "__main__":
  main()
