"""The methods table: every method trained on Fashion-MNIST with the same budget,
evaluated by kNN and linear probe beside a random encoder and raw pixels; Markdown + JSON.

    .venv/bin/python benchmarks/methods_table.py                      # every method, then the table
    .venv/bin/python benchmarks/methods_table.py --methods byol,dino  # some rows only
    .venv/bin/python benchmarks/methods_table.py --table_only         # re-assemble the table

Each method runs its own `configs/<name>.py` (the fashion_mnist preset: the same 3-stage ResNet of
width 32, or for the masked and predictive methods the config's small ViT; batch 256) through
`sslx.run.train_and_evaluate`, with `--steps` optimizer steps (the cosine schedules end
there) and the evaluation on the first `--eval_train` training / `--eval_test` test images:
weighted cosine kNN (k=20, T=0.07, bank = the training images) and the offline linear probe,
exactly as a run's own evaluation. Each row is written to `results/methods/<name>.json` as soon as
it is measured, so rows can be computed in separate invocations; the baselines (`_baselines.json`:
the random encoder of the shared backbone and raw pixels, same evaluation) are computed once. The
table (`results/methods_table.md` / `.json`) is assembled from whatever rows exist; the
documentation site shows it as generated (docs/results/methods.md). A method on another
encoder than the shared ResNet (the ViT methods) is also evaluated at its own random
initialisation, read through its own `apply`, and compared with that. A method whose kNN top-1 is
not above its random initialisation's is flagged in the table and makes the script exit with
status 1. Methods whose default preset is not an image dataset (T-JEPA's tabular data) have their
own table, benchmarks/tabular_table.py. A method whose experiment module draws pictures of the
trained model (MAE's reconstructions, iBOT's attention maps: `save_pictures`) leaves them in
`results/pictures/`.
"""

import glob
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import jax
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # configs/ and experiments/ live in the checkout

from benchmarks import table_runs  # noqa: E402
from sslx import run  # noqa: E402
from sslx.data import sources  # noqa: E402
from sslx.evaluate import features as features_lib  # noqa: E402
from sslx.evaluate import offline  # noqa: E402
from sslx.train import loop  # noqa: E402
from sslx.train.metrics import read_metrics  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", [], "methods to (re)measure; default: every configs/<name>.py that "
                  "has an experiments/<name>.py")
flags.DEFINE_integer("steps", 200, "optimizer steps per method (batch 256)")
flags.DEFINE_integer("eval_train", 20000, "training images in the kNN bank / probe training set")
flags.DEFINE_integer("eval_test", 5000, "test images scored")
flags.DEFINE_string("data_dir", "", "tfds data dir (default: sslx's default)")
flags.DEFINE_string("results", os.path.join(HERE, "results"), "output directory")
flags.DEFINE_bool("table_only", False, "only assemble the table from existing rows")

BASELINES = "_baselines"


def all_methods() -> list[str]:
  names = []
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
    name = os.path.basename(path)[:-3]
    if (not name.startswith("_") and os.path.exists(os.path.join(REPO, "experiments", name + ".py"))
        and _trains_on_images(name)):
      names.append(name)
  return names


def _trains_on_images(name: str) -> bool:
  """Whether configs/<name>.py's default preset trains a self-supervised encoder on an image
  dataset (tabular methods have their own table, benchmarks/tabular_table.py; semi-supervised
  classifiers theirs, benchmarks/semisup_table.py)."""
  import importlib
  config = importlib.import_module(f"configs.{name}").get_config()
  return config.data.name in sources.DATASETS and not loop.is_semi_supervised(config)


def table_config(name: str):
  import importlib
  config = table_runs.shortened(
      importlib.import_module(f"configs.{name}").get_config("fashion_mnist"), steps=FLAGS.steps,
      data_dir=FLAGS.data_dir, eval_train=FLAGS.eval_train, eval_test=FLAGS.eval_test)
  with config.unlocked():
    # The shared baselines are the ResNet's; a method on another encoder (the ViTs) gets the
    # random initialisation of its own network, read through its own `apply`, as its baseline.
    config.eval.baselines = () if uses_shared_backbone(config) else ("random_encoder",)
  return config


def uses_shared_backbone(config) -> bool:
  return config.model.name == "resnet"


def measure_method(name: str) -> dict:
  config = table_config(name)
  workdir = tempfile.mkdtemp(prefix=f"sslx_table_{name}_")
  try:
    t0 = time.perf_counter()
    results = run.train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - t0
    records = read_metrics(workdir)
    pictures = keep_pictures(results["pictures"])
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  row = results["rows"]["SSL encoder"]
  last = records[-1]
  speeds = [r["train/images_per_s"] for r in records if "train/images_per_s" in r]
  return {
      "method": name, "knn_top1": row["knn_top1"], "linear_top1": row.get("linear_top1"),
      "feature_dim": row["feature_dim"], "steps": config.total_steps,
      "batch_size": config.batch_size, "epochs": round(last["train/epoch"], 2),
      "final_loss": last["train/loss"], "final_embedding_std": last.get("train/embedding_std"),
      "images_per_s": round(sum(speeds) / len(speeds), 1) if speeds else None,
      "seconds": round(seconds, 1), "config": f"configs/{name}.py",
      "encoder": "shared ResNet" if uses_shared_backbone(config) else config.model.name,
      "random_init": results["rows"].get("random encoder"), "pictures": pictures,
      "eval": {"train_examples": FLAGS.eval_train, "test_examples": FLAGS.eval_test,
               "knn": f"k={config.eval.knn_k}, T={config.eval.knn_temperature}"},
      "jax": jax.__version__, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
  }


def keep_pictures(paths: list[str]) -> list[str]:
  """Copies a run's method pictures (MAE reconstructions, attention maps) into
  `<results>/pictures/`; returns their paths relative to the results directory."""
  kept = []
  for path in paths:
    relative = os.path.join("pictures", os.path.basename(path))
    os.makedirs(os.path.join(FLAGS.results, "pictures"), exist_ok=True)
    shutil.copyfile(path, os.path.join(FLAGS.results, relative))
    kept.append(relative)
  return kept


def measure_baselines() -> dict:
  """The random encoder of the shared backbone (SimCLR's, randomly initialised) and raw pixels."""
  config = table_config("simclr")
  info = sources.get_dataset_info(config.data.name)
  train_source, test_source = offline.eval_sources(config, info, sources.source_kwargs(config.data))
  method = loop.get_method(config)
  import jax.numpy as jnp
  from sslx import sharding
  mesh = sharding.make_mesh(config.mesh)
  bs = config.eval.batch_size
  random_vars = jax.jit(method.init)(
      jax.random.PRNGKey(config.seed + 1),
      {"image": jnp.zeros((bs, *info.image_shape), jnp.uint8), "label": jnp.zeros((bs,), int)})
  featurizers = {
      "random encoder": lambda s: features_lib.extract_features(
          method.apply, random_vars, s, mesh=mesh, batch_size=bs),
      "raw pixels": features_lib.raw_pixel_features,
  }
  return {name: offline.evaluate_features(config, info, f, train_source, test_source, name)
          for name, f in featurizers.items()}


def _pct(x) -> str:
  return "-" if x is None else f"{100 * x:.1f}"


def assemble_table(rows_dir: str) -> tuple[str, dict, list[str]]:
  with open(os.path.join(rows_dir, BASELINES + ".json")) as f:
    baselines = json.load(f)
  rows = []
  for path in sorted(glob.glob(os.path.join(rows_dir, "*.json"))):
    if os.path.basename(path) != BASELINES + ".json":
      with open(path) as f:
        rows.append(json.load(f))
  rows.sort(key=lambda r: -r["knn_top1"])
  shared_random = baselines["random encoder"]

  def random_init(r):  # the row's own random-init baseline, or the shared ResNet's
    return r.get("random_init") or shared_random

  failing = [r["method"] for r in rows if r["knn_top1"] <= random_init(r)["knn_top1"]]
  budget = {(r["steps"], r["batch_size"]) for r in rows}
  lines = ["| method | encoder | kNN top-1 (%) | linear top-1 (%) | random init: kNN / linear (%) "
           "| final loss | embedding std | images/s |",
           "|:-------|:---|-----:|-----:|-----:|-----:|-----:|-----:|"]
  for r in rows:
    flag = " (below its random init)" if r["method"] in failing else ""
    std = r["final_embedding_std"]
    base = random_init(r)
    lines.append(f"| {r['method']}{flag} | {r.get('encoder', 'shared ResNet')} | "
                 f"{_pct(r['knn_top1'])} | {_pct(r['linear_top1'])} | "
                 f"{_pct(base['knn_top1'])} / {_pct(base.get('linear_top1'))} | "
                 f"{r['final_loss']:.3f} | {'-' if std is None else f'{std:.3f}'} | "
                 f"{r['images_per_s'] or '-'} |")
  for name, b in baselines.items():
    lines.append(f"| *{name}* | {'shared ResNet' if name == 'random encoder' else '-'} | "
                 f"{_pct(b['knn_top1'])} | {_pct(b.get('linear_top1'))} | | | | |")
  first = rows[0] if rows else {"eval": {"train_examples": FLAGS.eval_train,
                                         "test_examples": FLAGS.eval_test}}
  steps = ", ".join(f"{s} steps x {b}" for s, b in sorted(budget))
  caption = (f"Fashion-MNIST, {steps} images per method. Every method on the shared ResNet uses "
             f"the same one (3 stages of 1 basic block, width 32, 128-d features); the masked "
             f"and predictive methods train their config's ViT (4-pixel patches, width 128, 4 "
             f"blocks) and are compared with the random initialisation of that network, read "
             f"through the method's own feature ([CLS] or mean patch token). kNN (k=20, T=0.07) "
             f"and offline linear probe fit on the first {first['eval']['train_examples']} "
             f"training images, scored on the first {first['eval']['test_examples']} test "
             f"images.")
  table = caption + "\n\n" + "\n".join(lines) + "\n"
  return table, {"rows": rows, "baselines": baselines, "below_random_encoder": failing}, failing


def main(argv):
  del argv
  rows_dir = os.path.join(FLAGS.results, "methods")
  os.makedirs(rows_dir, exist_ok=True)
  if not FLAGS.table_only:
    known = all_methods()
    unknown = sorted(set(FLAGS.methods) - set(known))
    if unknown:
      raise ValueError(f"--methods: unknown {unknown}; known: {known}")
    if not os.path.exists(os.path.join(rows_dir, BASELINES + ".json")):
      baselines = measure_baselines()
      with open(os.path.join(rows_dir, BASELINES + ".json"), "w") as f:
        json.dump(baselines, f, indent=2)
    with open(os.path.join(rows_dir, BASELINES + ".json")) as f:
      print("baselines:", json.dumps(json.load(f)))
    for name in FLAGS.methods or known:
      row = measure_method(name)
      with open(os.path.join(rows_dir, name + ".json"), "w") as f:
        json.dump(row, f, indent=2)
      print(f"{name}: kNN {_pct(row['knn_top1'])}  linear {_pct(row['linear_top1'])}  "
            f"({row['seconds']:.0f} s)", flush=True)
  table, summary, failing = assemble_table(rows_dir)
  table_runs.write_table(FLAGS.results, "methods_table", table, summary)
  if failing:
    print(f"below their random init on kNN: {failing}")
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
