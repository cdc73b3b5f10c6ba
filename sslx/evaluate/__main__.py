"""python -m sslx.evaluate --workdir DIR [--step N] [--protocols knn,linear,rankme,lidar,...]

Evaluates a checkpoint of a training run and writes DIR/results.json (see sslx/evaluate/cli.py).
absl flags and app.run, as sslx.main: grain reads its settings from parsed absl flags.
"""

from absl import app, flags

from sslx.evaluate import cli

flags.DEFINE_string("workdir", None, "Workdir of a training run (config.json, checkpoints/).")
flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
flags.DEFINE_list("protocols", list(cli.DEFAULT_PROTOCOLS),
                  f"Comma-separated protocols among {', '.join(cli.PROTOCOLS)} (the default: "
                  f"all but {', '.join(cli.EXTRA_FEATURE_PROTOCOLS)}).")
flags.DEFINE_list("label_fractions", [str(x) for x in cli.DEFAULT_LABEL_FRACTIONS],
                  "Fractions of the labels of the label_fractions protocol.")
flags.DEFINE_string("output", None, "Where to write the results (default: DIR/results.json).")
flags.DEFINE_bool("plots", True, "Write curves.png, spectrum.png and embedding_map.png into DIR.")
flags.DEFINE_list("baselines", None, "Baselines evaluated with knn / linear, among "
                  f"{', '.join(cli.BASELINES)} (default: the run's eval.baselines; '' for none).")
flags.DEFINE_bool("distributed_auto_detect", False, "Multi-process evaluation: let "
                  "jax.distributed.initialize() find the cluster (SLURM, Open MPI, TPU pods).")
flags.mark_flags_as_required(["workdir"])

if __name__ == "__main__":
  app.run(cli.main)
