"""A whole run: train a config in a workdir (`sslx.train.loop.train`), then evaluate the trained
encoder offline (`sslx.evaluate.offline`). `python -m sslx.main` and the notebooks call it.

The only module that imports both halves, so neither imports the other's entry point: the loop
stays about training, and the evaluation (also run alone by `python -m sslx.evaluate`) depends on
`sslx.train` only to rebuild and restore runs.
"""

import json

import jax
from etils import epath

from sslx.data import sources
from sslx.evaluate import offline, report
from sslx.train import loop


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints), then, with eval.enabled,
  evaluates the encoder and writes `workdir/results.json` (process 0) and prints its table.

  The evaluation settings are checked with the training run's, before any compute. Returns
  `loop.train`'s dict ({"state", "preempted", "pictures", "method", "mesh"}) with the
  evaluation's results ({"rows", "protocol", "dataset", "steps"}) when it ran; a preempted run
  is not evaluated (its restart is).
  """
  trained = loop.train(config, workdir,
                       extra_checks=((lambda mesh: offline.check_config(config, mesh))
                                     if config.eval.enabled else None))
  if trained["preempted"] or not config.eval.enabled:
    return trained
  results = offline.evaluate(config, trained["method"], trained["state"], trained["mesh"],
                             sources.get_dataset_info(config.data.name),
                             sources.source_kwargs(config.data))
  if jax.process_index() == 0:
    (epath.Path(workdir) / "results.json").write_text(json.dumps(results, indent=2))
    print(report.format_table(results["rows"]))
  return {**trained, **results}
