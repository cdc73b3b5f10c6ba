"""Command-line entry point: python -m sslx.main --config configs/<file>.py --workdir DIR
trains the config, then evaluates the encoder (`sslx.run.train_and_evaluate`).

`--config configs/x.py:smoke` selects a variant; `--config.optim.lr=0.5` overrides a field (an
unknown field is an error that names it).
"""

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from sslx import run  # after flag parsing, so --help is fast
  logging.set_verbosity(logging.INFO)
  run.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
