"""Equivariance of trained encoders on Fashion-MNIST: R^2 of the rotation and the colour change
between two views, regressed from the pair of representations (`sslx.evaluate.equivariance`,
the SIE paper's protocol), for SIE's whole representation, its invariant and equivariant parts,
seq-JEPA's per-view encoder output and its [AGG] aggregate, other methods' encoders and the
random encoder of the same architecture; JSON + a printed table.

    .venv/bin/python benchmarks/equivariance.py                        # SIE vs random encoder
    .venv/bin/python benchmarks/equivariance.py --methods sie,seq_jepa,vicreg
    .venv/bin/python benchmarks/equivariance.py --methods seq_jepa \
        --output benchmarks/results/equivariance_seq_jepa.json

Each method is trained as in the methods table (its fashion_mnist preset, `--steps` steps of
batch 256, the cosine schedules ending there); the evaluation's views are rotations uniform in
+-`--degrees` and brightness / contrast jitter of 0.4 (no crop or flip), regressors are fitted
on `--train` training images and scored on `--test` test images.
"""

import json
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # configs/ and experiments/ live in the checkout

from sslx import sharding  # noqa: E402
from sslx.data import sources  # noqa: E402
from sslx.evaluate import equivariance  # noqa: E402
from sslx.train import loop  # noqa: E402
from sslx.train.checkpoint import Checkpointer  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", ["sie"], "methods to train and evaluate")
flags.DEFINE_integer("steps", 200, "optimizer steps per method (batch 256)")
flags.DEFINE_integer("train", 5000, "training images whose pairs fit the regressors")
flags.DEFINE_integer("test", 2000, "test images whose pairs are scored")
flags.DEFINE_float("degrees", 20.0,
                   "each view is rotated uniformly in +-degrees (configs/sie.py's range)")
flags.DEFINE_string("output", os.path.join(HERE, "results", "equivariance.json"), "JSON output")


def train(name: str):
  """(config, method, trained variables, random-init variables) of `name` after FLAGS.steps."""
  import importlib
  config = importlib.import_module(f"configs.{name}").get_config("fashion_mnist")
  with config.unlocked():
    config.total_steps = FLAGS.steps
    config.checkpoint_every = FLAGS.steps
    config.optim.warmup_steps = min(config.optim.warmup_steps, FLAGS.steps // 5)
    config.progress_bar = False
    config.eval.enabled = False
  workdir = tempfile.mkdtemp(prefix=f"sslx_equivariance_{name}_")
  try:
    loop.train(config, workdir)
    method = loop.build_method(config)
    mesh = sharding.make_mesh(config.mesh)
    state = loop.restore_onto_mesh(config, method, Checkpointer(workdir), mesh)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  example = {"image": np.zeros((config.batch_size, 28, 28, 1), np.uint8)}
  random_init = jax.jit(method.init)(jax.random.PRNGKey(config.seed), example)
  return config, method, state.variables, random_init


def first_images(split: str, n: int) -> np.ndarray:
  source = sources.load_source("fashion_mnist", split)
  return np.stack([source[i]["image"] for i in range(min(n, len(source)))])


def main(argv):
  del argv
  train_images, test_images = first_images("train", FLAGS.train), first_images("test", FLAGS.test)
  embeds, info = {}, {}
  for name in FLAGS.methods:
    t0 = time.perf_counter()
    config, method, trained, random_init = train(name)
    info[name] = {"train_seconds": round(time.perf_counter() - t0, 1), "steps": FLAGS.steps,
                  "config": f"configs/{name}.py"}
    apply = jax.jit(method.apply)
    full = lambda x, v=trained: apply(v, x)  # noqa: E731
    embeds[name] = full
    if name == "sie":
      from experiments import sie
      embeds["sie invariant part"] = lambda x, f=full, c=config: sie.split(c, f(x))[0]
      embeds["sie equivariant part"] = lambda x, f=full, c=config: sie.split(c, f(x))[1]
    if name == "seq_jepa":  # the paper's invariant representation beside the per-view one
      from experiments import seq_jepa
      aggregate_config = config.copy_and_resolve_references()
      with aggregate_config.unlocked():
        aggregate_config.seq_jepa.eval_features = "aggregate"
      aggregate = jax.jit(seq_jepa.get_method(aggregate_config).apply)
      embeds["seq_jepa aggregate"] = lambda x, v=trained, f=aggregate: f(v, x)
    if f"random encoder ({config.model.name})" not in embeds:
      embeds[f"random encoder ({config.model.name})"] = lambda x, v=random_init: apply(v, x)
  t0 = time.perf_counter()
  results = equivariance.evaluate_equivariance(embeds, train_images, test_images,
                                               degrees=FLAGS.degrees)
  out = {"results": results, "methods": info, "eval_seconds": round(time.perf_counter() - t0, 1),
         "protocol": {"train_images": len(train_images), "test_images": len(test_images),
                      "degrees": FLAGS.degrees, "brightness": 0.4, "contrast": 0.4,
                      "targets": list(equivariance.PARAMETER_NAMES),
                      "regressors": "ridge (linear) and 3-layer ReLU MLP on [z1, z2]"}}
  os.makedirs(os.path.dirname(FLAGS.output), exist_ok=True)
  with open(FLAGS.output, "w") as f:
    json.dump(out, f, indent=1)
  print("| representation | rotation R2 linear | rotation R2 MLP | colour R2 linear | "
        "colour R2 MLP |\n|:--|--:|--:|--:|--:|")
  for name, r in results.items():
    print(f"| {name} | {r['linear']['rotation']:.3f} | {r['mlp']['rotation']:.3f} | "
          f"{r['linear']['color']:.3f} | {r['mlp']['color']:.3f} |")


if __name__ == "__main__":
  app.run(main)
