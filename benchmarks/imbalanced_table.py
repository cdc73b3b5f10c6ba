"""SimCLR against iSogCLR on a long-tailed Fashion-MNIST: the setting where iSogCLR's paper (Qiu
et al. 2023) claims its largest gains over a single temperature. Markdown + JSON.

    .venv/bin/python benchmarks/imbalanced_table.py                  # both methods, 3 seeds
    .venv/bin/python benchmarks/imbalanced_table.py --seeds=0 --steps=100   # a quick look
    .venv/bin/python benchmarks/imbalanced_table.py --table_only     # re-assemble the table

Each run pre-trains `configs/<method>.py` (the fashion_mnist preset: the 3-stage ResNet of width
32, SimCLR's projector, LARS, batch 256) on the long-tailed subset of the training split
(`data.imbalance_ratio`, default 100: class 0 keeps its 6,000 images, class 9 its first 60;
14,886 images in all, `sslx.data.sources.long_tailed_subset`) for `--steps` steps, then
evaluates as the methods table does, on the balanced splits: weighted cosine kNN (k=20) with the
first `--eval_train` training images as the bank, and the offline linear probe, scored on the
first `--eval_test` test images; beside top-1, the mean top-1 of the five rarest training
classes (5-9: 60 to 464 images each) by kNN. The two methods share everything but the loss: the
same seed draws the same initialisation and views. Each run is saved to
`results/imbalanced/<method>_seed<s>.json` as soon as it is measured; the table
(`results/imbalanced_table.md` / `.json`, shown in docs/results/imbalanced.md) gives the mean
and standard deviation over the seeds found.
"""

import importlib
import os
import platform
import shutil
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # configs/ and experiments/ live in the checkout

from benchmarks import table_runs  # noqa: E402
from sslx import run, sharding  # noqa: E402
from sslx.data import sources  # noqa: E402
from sslx.evaluate import features as features_lib  # noqa: E402
from sslx.evaluate import knn, offline  # noqa: E402
from sslx.train import loop  # noqa: E402
from sslx.train.metrics import read_metrics  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", ["simclr", "isogclr"], "methods to (re)measure")
flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds to run each method with")
flags.DEFINE_integer("steps", 500, "optimizer steps per run (batch 256)")
flags.DEFINE_float("imbalance_ratio", 100.0, "data.imbalance_ratio of the training subset")
flags.DEFINE_integer("eval_train", 20000, "training images in the kNN bank / probe training set")
flags.DEFINE_integer("eval_test", 5000, "test images scored")
flags.DEFINE_string("data_dir", "", "tfds data dir (default: sslx's default)")
flags.DEFINE_string("results", os.path.join(HERE, "results"), "output directory")
flags.DEFINE_bool("table_only", False, "only assemble the table from existing runs")

RARE_CLASSES = (5, 6, 7, 8, 9)  # the five smallest classes of the long-tailed subset


def run_config(method: str, seed: int):
  config = table_runs.shortened(
      importlib.import_module(f"configs.{method}").get_config("fashion_mnist"),
      steps=FLAGS.steps, data_dir=FLAGS.data_dir, eval_train=FLAGS.eval_train,
      eval_test=FLAGS.eval_test)
  with config.unlocked():
    config.seed = seed
    config.data.imbalance_ratio = FLAGS.imbalance_ratio
    config.eval.baselines = ()
  return config


def rare_class_knn_top1(config, state) -> float:
  """Mean kNN top-1 over RARE_CLASSES of the trained encoder (the run's own kNN settings)."""
  info = sources.get_dataset_info(config.data.name)
  train_source, test_source = offline.eval_sources(config, info, sources.source_kwargs(config.data))
  method = loop.build_method(config)
  mesh = sharding.make_mesh(config.mesh)
  variables = {"params": state.params, **state.model_state}
  extract = lambda s: features_lib.extract_features(  # noqa: E731
      method.apply, variables, s, mesh=mesh, batch_size=config.eval.batch_size)
  train_x, train_y = extract(train_source)
  test_x, test_y = extract(test_source)
  predicted = knn.knn_classify(train_x, train_y, test_x, num_classes=info.num_classes,
                               k=config.eval.knn_k, temperature=config.eval.knn_temperature)
  return float(np.mean([np.mean(predicted[test_y == c] == c) for c in RARE_CLASSES]))


def measure(method: str, seed: int) -> dict:
  config = run_config(method, seed)
  workdir = tempfile.mkdtemp(prefix=f"sslx_imbalanced_{method}_{seed}_")
  try:
    t0 = time.perf_counter()
    results = run.train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - t0
    rare = rare_class_knn_top1(config, results["state"])
    records = read_metrics(workdir)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  row, last = results["rows"]["SSL encoder"], records[-1]
  return {
      "method": method, "seed": seed, "knn_top1": row["knn_top1"],
      "linear_top1": row.get("linear_top1"), "rare_classes_knn_top1": rare,
      "steps": config.total_steps, "batch_size": config.batch_size,
      "imbalance_ratio": config.data.imbalance_ratio,
      "train_images": sources.num_train_examples(config.data),
      "epochs": round(last["train/epoch"], 2), "final_loss": last["train/loss"],
      "final_tau_mean": last.get("train/tau_mean"), "final_tau_std": last.get("train/tau_std"),
      "seconds": round(seconds, 1), "config": f"configs/{method}.py",
      "eval": {"train_examples": FLAGS.eval_train, "test_examples": FLAGS.eval_test,
               "knn": f"k={config.eval.knn_k}, T={config.eval.knn_temperature}"},
      "command": "python " + " ".join(sys.argv), "jax": jax.__version__,
      "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
  }


def _mean_std(values) -> str:
  values = 100 * np.asarray(values, float)
  if len(values) == 1:
    return f"{values[0]:.1f}"
  return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"


def assemble_table(runs_dir: str) -> tuple[str, dict]:
  runs = table_runs.read_rows(runs_dir)
  by_method = {}
  for r in runs:
    by_method.setdefault(r["method"], []).append(r)
  lines = [("| method | seeds | kNN top-1 | linear top-1 | kNN top-1, 5 rarest classes | "
            "final mean / std of tau | minutes per run |"),
           "|:---|---:|---:|---:|---:|---:|---:|"]
  for method, rs in by_method.items():
    taus = [r["final_tau_mean"] for r in rs if r.get("final_tau_mean") is not None]
    tau = (f"{np.mean(taus):.3f} / {np.mean([r['final_tau_std'] for r in rs]):.3f}"
           if taus else "-")
    lines.append(
        f"| {method} | {len(rs)} | {_mean_std([r['knn_top1'] for r in rs])} | "
        f"{_mean_std([r['linear_top1'] for r in rs])} | "
        f"{_mean_std([r['rare_classes_knn_top1'] for r in rs])} | {tau} | "
        f"{np.mean([r['seconds'] for r in rs]) / 60:.1f} |")
  first = runs[0] if runs else {}
  note = (f"\n\nLong-tailed Fashion-MNIST (imbalance ratio {first.get('imbalance_ratio')}: "
          f"{first.get('train_images')} training images), {first.get('steps')} steps of "
          f"{first.get('batch_size')} ({first.get('epochs')} passes over the subset); mean ± "
          "standard deviation over the seeds; evaluated on the balanced splits "
          f"({first.get('eval', {}).get('train_examples')} training images as the kNN bank and "
          f"probe set, {first.get('eval', {}).get('test_examples')} test images). Measured on "
          f"{first.get('machine')}, jax {first.get('jax')}.\n")
  return "\n".join(lines) + note, {"runs": runs}


def main(argv):
  del argv
  runs_dir = os.path.join(FLAGS.results, "imbalanced")
  if not FLAGS.table_only:
    for seed in map(int, FLAGS.seeds):
      for method in FLAGS.methods:
        r = measure(method, seed)
        table_runs.write_row(runs_dir, f"{method}_seed{seed}", r)
        print(f"{method} seed {seed}: kNN {r['knn_top1']:.4f}, linear {r['linear_top1']}, "
              f"rare-class kNN {r['rare_classes_knn_top1']:.4f} ({r['seconds']:.0f} s)",
              flush=True)
  table_runs.write_table(FLAGS.results, "imbalanced_table", *assemble_table(runs_dir))


if __name__ == "__main__":
  app.run(main)
