"""T-JEPA on a small real table: how good is its representation under a linear probe?

For each seed: a stratified train / test split of the table (`sslx.data.tabular`, standardised on
train), T-JEPA trained on the training rows without labels (configs/tjepa.py, the library's
optimizer, jitted train step and EMA teacher), then scikit-learn classifiers on the test rows:

  tjepa          logistic regression on the trained encoder's representation (`Method.apply`)
  random_init    the same probe on the same network at its random initialisation
  raw_features   the same probe on the standardised features themselves
  hist_gbt       HistGradientBoostingClassifier on the raw features (the paper's strong baseline)

Mean +- std over the seeds (the splits are small: ~114 test rows for breast_cancer, so one row is
~0.9 points). Writes `<results>/tabular_table.{md,json}` and prints the table.

  python benchmarks/tabular_table.py                         # breast_cancer, 5 seeds
  python benchmarks/tabular_table.py --config configs/tjepa.py:wine --config.total_steps=500
"""

import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # configs/ and experiments/ live in the checkout

from sslx.data import tabular  # noqa: E402
from sslx.train import loop, optim  # noqa: E402
from sslx.train.state import TrainState  # noqa: E402
from sslx.train.step import make_train_step  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", "tjepa.py"),
                                "T-JEPA config (a tabular preset).", lock_config=True)
flags.DEFINE_integer("seeds", 5, "splits / trainings to average over (seeds 0 .. seeds-1)")
flags.DEFINE_float("test_fraction", tabular.DEFAULT_TEST_FRACTION, "rows held out per split")
flags.DEFINE_string("results", os.path.join(HERE, "results"), "output directory")
flags.DEFINE_string("name", "tabular_table", "output file stem")

ROWS = ("tjepa", "random_init", "raw_features", "hist_gbt")
DESCRIPTIONS = {
    "tjepa": "linear probe on the T-JEPA representation",
    "random_init": "linear probe on the same network, randomly initialised",
    "raw_features": "linear probe on the standardised raw features",
    "hist_gbt": "HistGradientBoostingClassifier on the raw features",
}


def train(config, split: tabular.TabularSplit, seed: int):
  """T-JEPA trained on `split`'s training rows: (method, initial variables, trained variables,
  metrics of the last logged steps)."""
  method = loop.get_method(config)
  tx, schedule = optim.make_optimizer(config.optim, config.batch_size, config.total_steps)
  rows = tabular.batches(split.train_features, config.batch_size, seed)
  example = {"features": jnp.asarray(next(rows))}
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = dict(jax.jit(method.init)(init_rng, example))
  initial = jax.device_get(variables)  # a host copy: the train step donates the state's buffers
  params = variables.pop("params")
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                     opt_state=tx.init(params), rng=train_rng,
                     nonfinite_steps=jnp.zeros((), jnp.int32))
  # One device: no shardings (a table of a few hundred rows gains nothing from a mesh).
  step = make_train_step(method, tx, schedule, state_sharding=None, batch_sharding=None,
                         metric_sharding=None)
  log = []
  for i in range(config.total_steps):
    state, metrics = step(state, {"features": jnp.asarray(next(rows))})
    if (i + 1) % config.log_every == 0 or i + 1 == config.total_steps:
      log.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  if int(state.nonfinite_steps):
    raise FloatingPointError(f"{int(state.nonfinite_steps)} non-finite steps (seed {seed})")
  return method, initial, state.variables, log


def probe_accuracy(train_x, train_y, test_x, test_y) -> float:
  """Test accuracy of a logistic regression on standardised inputs (fitted on train)."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
  probe.fit(train_x, train_y)
  return float(probe.score(test_x, test_y))


def measure_seed(config, seed: int) -> dict:
  from sklearn.ensemble import HistGradientBoostingClassifier
  split = tabular.load_split(config.data.name, seed=seed, test_fraction=FLAGS.test_fraction)
  start = time.perf_counter()
  method, initial, trained, log = train(config, split, seed)
  seconds = time.perf_counter() - start
  featurize = jax.jit(method.apply)

  def probe(variables):
    return probe_accuracy(np.asarray(featurize(variables, split.train_features)),
                          split.train_labels,
                          np.asarray(featurize(variables, split.test_features)),
                          split.test_labels)

  trees = HistGradientBoostingClassifier(random_state=seed)
  trees.fit(split.train_features, split.train_labels)
  return {
      "seed": seed,
      "tjepa": probe(trained),
      "random_init": probe(initial),
      "raw_features": probe_accuracy(split.train_features, split.train_labels,
                                     split.test_features, split.test_labels),
      "hist_gbt": float(trees.score(split.test_features, split.test_labels)),
      "train_seconds": round(seconds, 1),
      "first_loss": log[0]["train/loss"], "final_loss": log[-1]["train/loss"],
      "final_embedding_std": log[-1]["train/embedding_std"],
      "final_target_embedding_std": log[-1]["train/target_embedding_std"],
      "representation_dim": int(featurize(trained, split.test_features[:1]).shape[1]),
      "train_rows": len(split.train_labels), "test_rows": len(split.test_labels),
  }


def summarize(per_seed: list[dict]) -> dict:
  return {row: {"mean": float(np.mean([s[row] for s in per_seed])),
                "std": float(np.std([s[row] for s in per_seed]))} for row in ROWS}


def format_table(summary: dict, config, per_seed: list[dict]) -> str:
  seeds = len(per_seed)
  lines = [
      f"T-JEPA on {config.data.name} ({per_seed[0]['train_rows']} train / "
      f"{per_seed[0]['test_rows']} test rows per split, {seeds} stratified splits; "
      f"{config.total_steps} steps at batch {config.batch_size}; test accuracy, mean +- std "
      f"over the splits)",
      "",
      "| representation | accuracy | |",
      "|---|---|---|",
  ]
  for row in ROWS:
    s = summary[row]
    lines.append(f"| {row} | {100 * s['mean']:.1f} +- {100 * s['std']:.1f} | "
                 f"{DESCRIPTIONS[row]} |")
  return "\n".join(lines) + "\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  per_seed = []
  for seed in range(FLAGS.seeds):
    per_seed.append(measure_seed(config, seed))
    print(json.dumps(per_seed[-1]), flush=True)
  summary = summarize(per_seed)
  table = format_table(summary, config, per_seed)
  print(table)
  os.makedirs(FLAGS.results, exist_ok=True)
  with open(os.path.join(FLAGS.results, f"{FLAGS.name}.md"), "w") as f:
    f.write(table)
  with open(os.path.join(FLAGS.results, f"{FLAGS.name}.json"), "w") as f:
    json.dump({"summary": summary, "per_seed": per_seed, "config": json.loads(config.to_json()),
               "machine": {"platform": platform.platform(), "jax": jax.__version__,
                           "devices": [str(d) for d in jax.devices()]}}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
