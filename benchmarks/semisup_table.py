"""The semi-supervised table, USB-style: methods x labels per class x seeds on MNIST and
Fashion-MNIST, the error of the EMA classifier on the whole test split as mean +- std over seeds.

    .venv/bin/python benchmarks/semisup_table.py   # every missing cell, then the table
    .venv/bin/python benchmarks/semisup_table.py --methods fixmatch --datasets mnist --labels 4
    .venv/bin/python benchmarks/semisup_table.py --table_only

Each cell runs `configs/<method>.py:<dataset>,labels=<n>` with `--config.seed=<seed>` through
`sslx.run.train_and_evaluate` for `--steps` optimizer steps (the cosine schedule ends there) of
the CPU preset (32 labelled + 7 x 32 unlabelled images a step, the 3-stage ResNet of width 16)
and writes `results/semisup/<dataset>_<method>_<labels>_seed<seed>.json` as soon as it is
measured: the EMA classifier's top-1 on the 10,000 test images, the wall time, the machine and
the command. Cells already measured are skipped, and a cell interrupted mid-run resumes from its
checkpoints (`--workdir_root`), so the table is filled over several invocations, in the
background. "labels only" is `supervised` on the same labelled images, "fully supervised" is
`supervised` with every label (`labels=-1`, one cell per seed, shown in every labels column).
The table (`results/semisup_table.md` / `.json`) is assembled from whatever cells exist; the
documentation site shows it as generated (docs/results/semi-supervised.md).
"""

import json
import os
import platform
import sys
import time

import numpy as np
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # configs/ and experiments/ live in the checkout

FLAGS = flags.FLAGS
METHODS = ("supervised", "pseudo_label", "pseudo_label_mixup", "mean_teacher", "mixmatch",
           "fixmatch", "flexmatch", "freematch", "softmatch", "simclrv2_finetune", "simclrv2")
# SimCLRv2's pipeline (configs/simclrv2.py): a SimCLR pre-training per dataset and seed (its own
# preset's steps, no labels), fine-tuned per label count (its preset: 60 epochs of the labelled
# images), then distilled into the student for --steps like every other row. Its two rows are
# the fine-tuned network (stage 2) and the student (stage 3).
SIMCLRV2_STAGES = ("pretrain", "finetune", "distill")
flags.DEFINE_list("methods", list(METHODS), "methods (rows)")
flags.DEFINE_list("datasets", ["mnist", "fashion_mnist"], "datasets")
flags.DEFINE_list("labels", ["4", "25"], "labels per class (columns)")
flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds (the split and the run)")
flags.DEFINE_integer("steps", 600, "optimizer steps per cell")
flags.DEFINE_bool("fully_supervised", True, "also the fully supervised row (labels=-1)")
flags.DEFINE_string("data_dir", "", "tfds data dir (default: sslx's default)")
flags.DEFINE_string("results", os.path.join(HERE, "results"), "output directory")
flags.DEFINE_string("workdir_root", "/tmp/sslx_semisup_table", "run directories (resumable)")
flags.DEFINE_bool("table_only", False, "only assemble the table from existing cells")

ROW_NAMES = {"supervised": "labels only", "pseudo_label": "Pseudo-Label",
             "pseudo_label_mixup": "soft Pseudo-Label + mixup",
             "mean_teacher": "Mean Teacher", "mixmatch": "MixMatch", "fixmatch": "FixMatch",
             "flexmatch": "FlexMatch", "freematch": "FreeMatch", "softmatch": "SoftMatch",
             "simclrv2_finetune": "SimCLRv2 fine-tuned (stage 2)",
             "simclrv2": "SimCLRv2 distilled (stage 3)"}


def cell_name(dataset: str, method: str, labels: int, seed: int) -> str:
  return f"{dataset}_{method}_{labels}_seed{seed}"


def cell_config(dataset: str, method: str, labels: int, seed: int, stage: str | None = None):
  """The config of a cell, or of one SimCLRv2 stage (`stage`) of a simclrv2 cell."""
  import importlib
  if stage is None:
    config = importlib.import_module(f"configs.{method}").get_config(
        f"{dataset},labels={labels}")
  else:
    config = importlib.import_module("configs.simclrv2").get_config(
        f"pretrain,{dataset}" if stage == "pretrain" else f"{stage},{dataset},labels={labels}")
  with config.unlocked():
    config.seed = seed
    if stage in (None, "distill"):  # the other stages keep their presets' lengths
      config.total_steps = FLAGS.steps
    config.checkpoint_every = max(config.total_steps // 4, 1)
    config.log_every = min(config.log_every, config.total_steps)
    config.progress_bar = False
    config.data.data_dir = FLAGS.data_dir
    # The classifier's error on the whole test split is the figure; the kNN bank (all the
    # training labels) is a side number, on 10,000 training images.
    config.eval.train_examples = 10000
    if stage == "finetune":
      config.simclrv2.pretrained = stage_workdir(dataset, "pretrain", labels, seed)
    elif stage == "distill":
      config.simclrv2.teacher = stage_workdir(dataset, "finetune", labels, seed)
  return config


def stage_workdir(dataset: str, stage: str, labels: int, seed: int) -> str:
  """A SimCLRv2 stage's run directory; the pre-training is shared by every label count."""
  name = (f"{dataset}_simclrv2_pretrain_seed{seed}" if stage == "pretrain" else
          cell_name(dataset, f"simclrv2_{stage}", labels, seed))
  return os.path.join(FLAGS.workdir_root, name)


def simclrv2_stages(dataset: str, method: str, labels: int, seed: int):
  """Trains the SimCLRv2 stages before `method`'s last one (each resumes, or is already done);
  returns the config and workdir of the last, and the earlier stages' budgets."""
  from sslx.train import loop
  last = "finetune" if method == "simclrv2_finetune" else "distill"
  earlier = {}
  for stage in SIMCLRV2_STAGES[:SIMCLRV2_STAGES.index(last)]:
    config = cell_config(dataset, method, labels, seed, stage)
    with config.unlocked():
      config.eval.enabled = False
    loop.train(config, stage_workdir(dataset, stage, labels, seed))
    earlier[stage] = f"{config.total_steps} steps of {config.batch_size}"
  config = cell_config(dataset, method, labels, seed, last)
  return config, stage_workdir(dataset, last, labels, seed), earlier


def measure(dataset: str, method: str, labels: int, seed: int) -> dict:
  import jax

  from sslx import run
  t0 = time.perf_counter()
  earlier = {}
  if method.startswith("simclrv2"):
    config, workdir, earlier = simclrv2_stages(dataset, method, labels, seed)
  else:
    config = cell_config(dataset, method, labels, seed)
    workdir = os.path.join(FLAGS.workdir_root, cell_name(dataset, method, labels, seed))
  results = run.train_and_evaluate(config, workdir)
  row = results["rows"]["SSL encoder"]
  return {
      "dataset": dataset, "method": method, "labels_per_class": labels, "seed": seed,
      "steps": config.total_steps, "batch": f"{config.batch_size} labelled + "
                                           f"{config.batch_size * config.semi.uratio} unlabelled",
      "earlier_stages": earlier,
      "test_error": 1.0 - row["classifier_top1"], "knn_top1": row["knn_top1"],
      "seconds": round(time.perf_counter() - t0, 1),
      "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or 'cpu'}), "
                 f"jax {jax.__version__} on {jax.default_backend()}",
      "command": (f"python benchmarks/semisup_table.py --methods {method} --datasets {dataset} "
                  f"--labels {labels} --seeds {seed} --steps {FLAGS.steps}"),
      "protocol": results["protocol"].get("classifier", ""),
  }


def cells():
  out = []
  for seed in map(int, FLAGS.seeds):
    for labels in map(int, FLAGS.labels):
      for dataset in FLAGS.datasets:
        for method in FLAGS.methods:
          out.append((dataset, method, labels, seed))
    if FLAGS.fully_supervised:
      out.extend((dataset, "supervised", -1, seed) for dataset in FLAGS.datasets)
  return out


def load_cells(directory: str) -> list[dict]:
  if not os.path.isdir(directory):
    return []
  return [json.load(open(os.path.join(directory, f))) for f in sorted(os.listdir(directory))
          if f.endswith(".json")]


def format_errors(errors: list[float]) -> str:
  """Mean +- std over seeds; one seed is shown alone (a std of one number says nothing)."""
  if not errors:
    return "-"
  if len(errors) == 1:
    return f"{errors[0]:.2f} (n=1)"
  return f"{np.mean(errors):.2f} +- {np.std(errors):.2f} (n={len(errors)})"


def make_table(measured: list[dict]) -> tuple[str, dict]:
  """Markdown (one table per dataset: a row per method, a column per labels-per-class count,
  mean +- std % error over the seeds measured, n = seeds) and its JSON."""
  summary, lines = {}, []
  for dataset in sorted({m["dataset"] for m in measured}):
    rows = [m for m in measured if m["dataset"] == dataset]
    label_counts = sorted({m["labels_per_class"] for m in rows if m["labels_per_class"] > 0})
    lines += [f"**{dataset}** (test error %, mean +- std over seeds; n = seeds)", "",
              "| method | " + " | ".join(f"{n} labels / class" for n in label_counts) + " |",
              "|:--|" + "--:|" * len(label_counts)]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    for method in methods:
      cells_text = []
      for n in label_counts:
        errors = [100 * r["test_error"] for r in rows
                  if r["method"] == method and r["labels_per_class"] == n]
        summary[f"{dataset}/{method}/{n}"] = errors
        cells_text.append(format_errors(errors))
      lines.append(f"| {ROW_NAMES[method]} | " + " | ".join(cells_text) + " |")
    full = [100 * r["test_error"] for r in rows if r["labels_per_class"] == -1]
    if full:
      summary[f"{dataset}/supervised/all"] = full
      text = format_errors(full)
      lines.append("| fully supervised (all labels) | " + " | ".join([text] * len(label_counts))
                   + " |")
    lines.append("")
  # The fine-tuning stage has its own length (SimCLRv2's epochs of the labelled images).
  steps = sorted({m["steps"] for m in measured if m["method"] != "simclrv2_finetune"})
  seconds = [m["seconds"] for m in measured]
  # The uratio differs between methods; "supervised" and SimCLRv2's fine-tuning read unlabelled
  # images they do not use.
  batches = {m["method"]: m["batch"] for m in measured
             if m["method"] not in ("supervised", "simclrv2_finetune")}
  usual = max(set(batches.values()), key=list(batches.values()).count) if batches else "-"
  others = "; ".join(f"{ROW_NAMES[k]}: {v}" for k, v in batches.items() if v != usual)
  lines.append(f"Budget per cell: {', '.join(map(str, steps))} steps of {usual} images"
               f"{f' ({others})' if others else ''}; "
               f"{np.mean(seconds) / 60:.1f} min a cell on average (training and evaluation) on "
               f"{measured[0]['machine'] if measured else '-'}. Error of the EMA classifier on the "
               "whole test split.")
  stages = {}  # what SimCLRv2's student comes after, per label count
  for m in measured:
    if m["method"] == "simclrv2":
      stages.setdefault(m["labels_per_class"], m["earlier_stages"])
  if stages:
    pretrain = {v["pretrain"] for v in stages.values()}
    finetune = ", ".join(f"{v['finetune']} labelled images with {n} labels / class"
                         for n, v in sorted(stages.items()))
    lines.append(f"SimCLRv2: a SimCLR pre-training of {', '.join(pretrain)} images (no labels; "
                 f"shared by the label counts), a fine-tuning (stage 2's row) of {finetune}, "
                 "then the student (stage 3's row), trained like the other rows.")
  return "\n".join(lines), summary


def write_table(results: str) -> str:
  measured = load_cells(os.path.join(results, "semisup"))
  markdown, summary = make_table(measured)
  with open(os.path.join(results, "semisup_table.md"), "w") as f:
    f.write(markdown + "\n")
  with open(os.path.join(results, "semisup_table.json"), "w") as f:
    json.dump({"cells": measured, "errors_percent": summary}, f, indent=2)
  return markdown


def main(argv):
  del argv
  directory = os.path.join(FLAGS.results, "semisup")
  os.makedirs(directory, exist_ok=True)
  if not FLAGS.table_only:
    for dataset, method, labels, seed in cells():
      path = os.path.join(directory, cell_name(dataset, method, labels, seed) + ".json")
      if os.path.exists(path):
        continue
      result = measure(dataset, method, labels, seed)
      with open(path, "w") as f:
        json.dump(result, f, indent=2)
      print(f"{cell_name(dataset, method, labels, seed)}: "
            f"{100 * result['test_error']:.2f}% error, {result['seconds']:.0f} s", flush=True)
  markdown = write_table(FLAGS.results)
  print(markdown)


if __name__ == "__main__":
  app.run(main)
