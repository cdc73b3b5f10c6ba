"""Where each method's linear-probe error comes from (risk decomposition) and how much it
memorises its training images (SSLMem), on Fashion-MNIST. Markdown + JSON.

    .venv/bin/python benchmarks/diagnostics_table.py                       # simclr, byol
    .venv/bin/python benchmarks/diagnostics_table.py --methods=barlow_twins --steps=300
    .venv/bin/python benchmarks/diagnostics_table.py --table_only          # re-assemble

Per method, two encoders are pre-trained with `configs/<method>.py`'s fashion_mnist preset for
`--steps` steps, as SSLMem's protocol needs (Wang et al. 2024, Sec. 3): ``f`` on
``train[:N-C]`` and ``g`` on ``train[C:]`` (`data.train_split`, C = `--candidates`), so the
first C training images (the candidates) are in ``f``'s data only, the last C (the extras) in
``g``'s only, and the rest are shared. `--views` augmented views of each candidate, of as many
shared images and of each extra (the method's own training augmentation) go through both
encoders; `sslx.evaluate.diagnostics.sslmem` scores each image (alignment under ``g`` minus
under ``f``). The candidates' mean score against the shared images' (the protocol's noise floor)
is the memorisation; the extras, trained on by ``g`` only, should score below the floor.

`sslx.evaluate.diagnostics.risk_decomposition` splits ``f``'s linear-probe test error into its
four terms, with the first `--eval_train` training images (all in ``f``'s pre-training set) and
the first `--eval_test` test images; the approximation error is not estimated (no supervised
model is trained) and stays inside the usability term, as in the authors' minimal protocol.
One JSON per method in `results/diagnostics/`; the table is `results/diagnostics_table.md`.
"""

import importlib
import json
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
from sslx import experiment, sharding  # noqa: E402
from sslx.data import augment, pipeline, sources  # noqa: E402
from sslx.evaluate import diagnostics, offline  # noqa: E402
from sslx.evaluate import features as features_lib  # noqa: E402
from sslx.train import loop  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", ["simclr", "byol"], "methods to (re)measure")
flags.DEFINE_integer("steps", 500, "optimizer steps per encoder (batch 256)")
flags.DEFINE_integer("candidates", 500, "images in f's pre-training data only (and extras in g's)")
flags.DEFINE_integer("views", 8, "augmented views per scored image")
flags.DEFINE_integer("eval_train", 10000, "training images of the risk decomposition's probes")
flags.DEFINE_integer("eval_test", 5000, "test images of the risk decomposition")
flags.DEFINE_string("data_dir", "", "tfds data dir (default: sslx's default)")
flags.DEFINE_string("results", os.path.join(HERE, "results"), "output directory")
flags.DEFINE_bool("table_only", False, "only assemble the table from existing rows")


def encoder_config(method: str, train_split: str):
  config = table_runs.shortened(
      importlib.import_module(f"configs.{method}").get_config("fashion_mnist"),
      steps=FLAGS.steps, data_dir=FLAGS.data_dir, eval_train=FLAGS.eval_train,
      eval_test=FLAGS.eval_test)
  with config.unlocked():
    config.data.train_split = train_split
    config.eval.every = 0
  return config


def train_encoder(config) -> tuple:
  """(method, variables) of a freshly trained encoder (its workdir removed)."""
  workdir = tempfile.mkdtemp(prefix="sslx_diagnostics_")
  try:
    trained = loop.train(config, workdir)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  state = trained["state"]
  return trained["method"], {"params": state.params, **state.model_state}


def augmented_views(config, images: np.ndarray, seed: int) -> np.ndarray:
  """[N, H, W, C] uint8 -> [N * V, H', W', C] float views in [0, 1] ([image, view] order), the
  method's first training view; the same for both encoders."""
  spec = experiment.view_configs(config)[0]
  keys = jax.random.split(jax.random.PRNGKey(seed), FLAGS.views)
  views = jax.jit(jax.vmap(lambda k: augment.augment_batch(k, images, spec)))(keys)
  return np.asarray(views).swapaxes(0, 1).reshape(-1, *views.shape[2:])


def representations(method, variables, views: np.ndarray) -> np.ndarray:
  """[N * V, ...] views -> [N, V, D] encoder features."""
  apply = jax.jit(method.apply)
  out = np.concatenate([np.asarray(apply(variables, views[i:i + 512]))
                        for i in range(0, len(views), 512)])
  return out.reshape(-1, FLAGS.views, out.shape[-1])


def measure(method_name: str) -> dict:
  info = sources.get_dataset_info("fashion_mnist")
  n, c = 60000, FLAGS.candidates
  if FLAGS.eval_train > n - c:
    raise ValueError(f"--eval_train={FLAGS.eval_train}: the risk decomposition's training "
                     f"images must all be in f's pre-training set, the first {n - c}")
  t0 = time.perf_counter()
  f_config = encoder_config(method_name, f"train[:{n - c}]")
  if "augment" not in f_config:
    raise ValueError(f"{method_name}: its views are not `augment` (multi-crop); SSLMem's views "
                     "here are a two-view method's training augmentation")
  f_method, f_vars = train_encoder(f_config)
  g_method, g_vars = train_encoder(encoder_config(method_name, f"train[{c}:]"))
  train_seconds = time.perf_counter() - t0

  source = sources.load_source("fashion_mnist", info.train_split,
                               **sources.source_kwargs(f_config.data))
  groups = {"candidates": np.arange(c), "shared": np.arange(c, 2 * c),
            "extras": np.arange(n - c, n)}
  scores = {}
  for name, indices in groups.items():
    images = np.stack([np.asarray(e["image"]) for e in pipeline.read_examples(source, indices)])
    views = augmented_views(f_config, images, seed=1)
    scores[name] = diagnostics.sslmem(representations(f_method, f_vars, views),
                                      representations(g_method, g_vars, views), normalize=True)

  mesh = sharding.make_mesh(f_config.mesh)
  train_source, test_source = offline.eval_sources(f_config, info,
                                                   sources.source_kwargs(f_config.data))
  extract = lambda s: features_lib.extract_features(  # noqa: E731
      f_method.apply, f_vars, s, mesh=mesh, batch_size=f_config.eval.batch_size)
  (x, y), (xt, yt) = extract(train_source), extract(test_source)
  risk = diagnostics.risk_decomposition(x, y, xt, yt, num_classes=info.num_classes)
  return {
      "method": method_name, "steps": FLAGS.steps, "batch_size": f_config.batch_size,
      "candidates": c, "views": FLAGS.views,
      "sslmem": {k: {"mean": float(v.mean()), "std": float(v.std())} for k, v in scores.items()},
      "risk": risk, "eval": {"train_examples": FLAGS.eval_train, "test_examples": FLAGS.eval_test},
      "train_seconds": round(train_seconds, 1), "config": f"configs/{method_name}.py",
      "command": "python " + " ".join(sys.argv), "jax": jax.__version__,
      "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
  }


def assemble_table(rows_dir: str) -> tuple[str, dict]:
  rows = table_runs.read_rows(rows_dir)
  pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
  lines = [("| method | SSLMem: candidates | shared (floor) | extras | probe error | "
            "usability (+ approx.) | probe gen. | encoder gen. |"),
           "|:---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    m, k = r["sslmem"], r["risk"]
    lines.append(
        f"| {r['method']} | {m['candidates']['mean']:.4f} | {m['shared']['mean']:.4f} | "
        f"{m['extras']['mean']:.4f} | {pct(k['total'])} | {pct(k['usability'])} | "
        f"{pct(k['probe_generalization'])} | {pct(k['encoder_generalization'])} |")
  first = rows[0] if rows else {}
  note = (f"\n\nEach encoder pre-trained {first.get('steps')} steps of {first.get('batch_size')} "
          f"Fashion-MNIST images; SSLMem: mean score over {first.get('candidates')} images per "
          f"group, {first.get('views')} views each, representations l2-normalised (distances "
          "in [0, 2]). Risk terms in % of the test images, from linear probes on "
          f"{first.get('eval', {}).get('train_examples')} training / "
          f"{first.get('eval', {}).get('test_examples')} test images. Measured on "
          f"{first.get('machine')}, jax {first.get('jax')}.\n")
  return "\n".join(lines) + note, {"rows": rows}


def main(argv):
  del argv
  rows_dir = os.path.join(FLAGS.results, "diagnostics")
  if not FLAGS.table_only:
    for method in FLAGS.methods:
      row = measure(method)
      table_runs.write_row(rows_dir, method, row)
      print(json.dumps({"method": method, "sslmem": row["sslmem"], "risk": row["risk"]}),
            flush=True)
  table_runs.write_table(FLAGS.results, "diagnostics_table", *assemble_table(rows_dir))


if __name__ == "__main__":
  app.run(main)
