"""Evaluates a checkpoint of a training run: ``python -m sslx.evaluate --workdir DIR``.

Reads ``DIR/config.json``, rebuilds the method (`sslx.train.loop.build_method`), restores the
latest checkpoint (or ``--step``) of ``DIR/checkpoints`` with orbax onto the mesh, runs the
chosen ``--protocols`` and writes ``DIR/results.json`` (or ``--output``) and, with ``--plots``,
the run's pictures (`sslx.evaluate.plots`) into DIR:

* ``knn``, ``linear``: weighted kNN and the offline linear probe on frozen features, the
  run's own end-of-training evaluation (`sslx.evaluate.offline.evaluate`, on the run's
  ``eval.train_fraction`` of the train split), with the baselines of ``--baselines`` (default:
  the run's ``eval.baselines``);
* ``rankme``, ``lidar``, ``alpha_req``, ``alignment``, ``uniformity``, ``embedding_std``: the
  label-free metrics of `sslx.evaluate.monitor` on the run's monitor set.

results.json holds ``rows`` (one per representation: the SSL encoder and the baselines) and
``protocol``, which names the protocol behind every number, so an offline linear-probe figure
is never mistaken for an online one.

The evaluation runs on this job's devices with the run's mesh settings, single-process unless
``--distributed_auto_detect`` (the training job's coordinator settings are not reused).
"""

import json

import ml_collections
from etils import epath

from sslx import paths
from sslx.train import runs

KNN_PROTOCOLS = ("knn", "linear")
# Protocols on the same frozen features as kNN, off by default (they cost more): big_vision's
# few-shot ridge probes and the linear probe on 1% / 10% label fractions (SimCLRv2).
EXTRA_FEATURE_PROTOCOLS = ("fewshot", "label_fractions")
DEFAULT_LABEL_FRACTIONS = (0.01, 0.1)
DEFAULT_PROTOCOLS = KNN_PROTOCOLS + ("rankme", "lidar", "alpha_req", "alignment", "uniformity",
                                     "embedding_std")
PROTOCOLS = DEFAULT_PROTOCOLS + EXTRA_FEATURE_PROTOCOLS
BASELINES = ("random_encoder", "raw_pixels")


class FlagError(ValueError):
  """A command-line argument is wrong; the message names the flag."""


def parse_protocols(protocols) -> tuple[str, ...]:
  """'knn,rankme' or a sequence -> ('knn', 'rankme'); unknown or no names: ValueError."""
  names = protocols.split(",") if isinstance(protocols, str) else list(protocols or ())
  names = [n.strip() for n in names if n.strip()]
  unknown = [n for n in names if n not in PROTOCOLS]
  if unknown or not names:
    raise FlagError(f"--protocols: unknown {unknown} in {protocols!r}; expected a comma-"
                     f"separated list of {', '.join(PROTOCOLS)}" if unknown else
                     f"--protocols: expected at least one of {', '.join(PROTOCOLS)}, got "
                     f"{protocols!r}")
  return tuple(dict.fromkeys(names))


def _checked_path(path, flag: str) -> epath.Path:
  """`paths.checked`, its error (a URL scheme without its filesystem) a FlagError."""
  try:
    return paths.checked(path, flag)
  except ValueError as e:
    raise FlagError(str(e)) from None


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """`sslx.train.runs.load_config` of `workdir`, its errors FlagErrors naming --workdir."""
  try:
    return runs.load_config(workdir, "--workdir")
  except ValueError as e:
    raise FlagError(str(e)) from None


def checkpoint_step(checkpointer, workdir: str, step: int | None) -> int:
  """`step` if `workdir` holds it, else its latest step when `step` is None."""
  steps = checkpointer.all_steps()
  if not steps:
    raise FlagError(f"--workdir {workdir!r} holds no checkpoint in {checkpointer.directory}")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise FlagError(f"--step {step}: no such checkpoint in {checkpointer.directory}; "
                     f"saved steps: {steps}")
  return step


def evaluate_checkpoint(workdir: str, *, step: int | None = None, protocols=DEFAULT_PROTOCOLS,
                        output: str | None = None, plots: bool = True,
                        baselines=None, distributed_auto_detect: bool = False,
                        label_fractions=DEFAULT_LABEL_FRACTIONS) -> dict:
  """Runs `protocols` on checkpoint `step` (latest if None) of the run in `workdir`, writes
  the results (to `output`, default `workdir/results.json`) and, with `plots`, the pictures.

  A multi-process evaluation (SLURM, TPU pod slices, ...) passes `distributed_auto_detect`
  and every process calls it; process 0 writes. Returns the results dict.
  """
  protocols = parse_protocols(protocols)
  if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
    raise FlagError(f"--step must be a checkpoint step >= 0, got {step!r}")
  if baselines is not None:
    baselines = tuple(b for b in baselines if b)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
      raise FlagError(f"--baselines: unknown {unknown}; expected names from {BASELINES}")
  if output:
    _checked_path(output, "--output")
  config = load_run_config(workdir)
  if not (epath.Path(workdir) / "checkpoints").is_dir():
    raise FlagError(f"--workdir {workdir!r} holds no checkpoint (no checkpoints/ directory)")

  # Imported here, after the arguments are checked: jax and the models take seconds to load.
  import jax
  from absl import logging

  from sslx import sharding
  from sslx.data import sources
  from sslx.evaluate import monitor as monitor_lib
  from sslx.evaluate import offline
  from sslx.train import loop
  from sslx.train.checkpoint import Checkpointer

  checkpointer = Checkpointer(workdir)
  try:
    step = checkpoint_step(checkpointer, workdir, step)
    config.distributed.auto_detect = bool(distributed_auto_detect)
    sharding.initialize_distributed(config.distributed)
    mesh = sharding.make_mesh(config.mesh)
    if any(p in KNN_PROTOCOLS + EXTRA_FEATURE_PROTOCOLS for p in protocols):
      offline.check_config(config, mesh)  # before the restore: it can take minutes
    info = sources.get_dataset_info(config.data.name)
    source_kwargs = sources.source_kwargs(config.data)
    method = loop.build_method(config)
    state = loop.restore_onto_mesh(config, method, checkpointer, mesh, step)
  finally:
    checkpointer.close()

  results = {"workdir": paths.absolute(workdir), "experiment": config.experiment,
             "dataset": config.data.name, "steps": int(state.step), "protocols": list(protocols),
             "rows": {"SSL encoder": {}}, "protocol": {}}
  if any(p in KNN_PROTOCOLS + EXTRA_FEATURE_PROTOCOLS for p in protocols):
    eval_config = ml_collections.ConfigDict(config.to_dict())
    eval_config.eval.linear_probe = "linear" in protocols
    eval_config.eval.fewshot = "fewshot" in protocols
    eval_config.eval.label_fractions = (tuple(float(x) for x in label_fractions)
                                        if "label_fractions" in protocols else ())
    if baselines is not None:
      eval_config.eval.baselines = baselines
    knn_results = offline.evaluate(eval_config, method, state, mesh, info, source_kwargs)
    for name, row in knn_results["rows"].items():
      if "knn" not in protocols:  # kNN always runs with the probe; reported only if asked
        row.pop("knn_top1")
      results["rows"].setdefault(name, {}).update(row)
    results["protocol"].update({p: knn_results["protocol"][p] for p in KNN_PROTOCOLS
                                if p in protocols})
    if "fewshot" in protocols:
      results["protocol"]["fewshot"] = knn_results["protocol"]["fewshot"]
    if "label_fractions" in protocols:
      results["protocol"]["label_fractions"] = knn_results["protocol"]["linear@fraction"]
  label_free = [p for p in protocols if p in monitor_lib.METRICS]
  monitor = None
  if label_free or plots:
    monitor = monitor_lib.build(config, method, mesh, info, source_kwargs)
  if label_free:
    values = monitor.metrics(state.variables)
    results["rows"]["SSL encoder"].update({p: values[p] for p in label_free})
    described = monitor_lib.describe(config)
    results["protocol"].update({p: described[p] for p in label_free})
  if plots:
    from sslx.evaluate import plots as plots_lib
    results["plots"] = plots_lib.write_run_plots(workdir, monitor, state.variables)

  if jax.process_index() == 0:
    target = epath.Path(output) if output else epath.Path(workdir) / "results.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2))
    logging.info("results written to %s", target)
  return results


def main(argv):
  from absl import app, flags, logging

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  f = flags.FLAGS
  try:
    results = evaluate_checkpoint(f.workdir, step=f.step, protocols=f.protocols,
                                  output=f.output, plots=f.plots, baselines=f.baselines,
                                  distributed_auto_detect=f.distributed_auto_detect,
                                  label_fractions=f.label_fractions)
  except FlagError as e:
    raise app.UsageError(str(e)) from None
  from sslx.evaluate import report
  print(report.format_table(results["rows"]))
  for name, text in results["protocol"].items():
    print(f"{name}: {text}")
