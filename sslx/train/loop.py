"""The training loop: build the method, data and optimizer from a config, train with periodic
checkpoints and metrics, and resume from the workdir.

Training only: the offline evaluation of the trained encoder is `sslx.evaluate.offline`, run
after `train` by `sslx.run.train_and_evaluate`. The loop uses the evaluation package's
instruments that run while it trains (the label-free monitor, the online probe, the end-of-run
plots); those never import the loop, so imports run one way (see `sslx.evaluate.offline`).
"""

import importlib
import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from sslx import paths, runtime, sharding
from sslx.data import decode, pipeline, sources
from sslx.evaluate import monitor as monitor_lib
from sslx.train import grad_cache, optim, runs
from sslx.train.checkpoint import Checkpointer, abstract_like, check_workdir_supported
from sslx.train.metrics import MetricWriter
from sslx.train.preemption import PreemptionWatch
from sslx.train.state import TrainState
from sslx.train.step import make_train_step


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient became NaN or inf; the run stops with its last good checkpoint."""


# What a step whose loss, gradient or update is NaN / inf does (its update is never applied):
# "stop" the run (raising NonFiniteLossError, the last good checkpoint kept), or "skip" it,
# counted in train/nonfinite_steps and logged with its step.
NONFINITE_POLICIES = ("stop", "skip")


def experiment_module(config):
  """The experiment module `experiments.<config.experiment>`."""
  try:
    module = importlib.import_module(f"experiments.{config.experiment}")
  except ModuleNotFoundError as e:
    if e.name not in ("experiments", f"experiments.{config.experiment}"):
      raise  # the module exists but one of its own imports failed
    raise ValueError(f"config.experiment={config.experiment!r}: no module "
                     f"experiments/{config.experiment}.py (run from the repository root)") from e
  return module


def get_method(config):
  """The experiment module builds the Method."""
  return experiment_module(config).get_method(config)


def build_method(config):
  """The Method a run trains: the experiment's, with the online linear probe beside it when
  eval.online_probe (its classifier is part of the state, so restores need it too)."""
  method = get_method(config)
  grad_cache.check_method(config, method)  # optim.grad_cache_chunks only where it is exact
  if config.eval.get("online_probe", False):  # logs train/online_probe_top1 (augmented views)
    from sslx.evaluate import online_probe
    method = online_probe.with_online_probe(method, config)
  return method


def _check_workdir(workdir: str) -> None:
  """Creates the workdir (local, or a URL such as gs://bucket/run whose filesystem must be
  installed) and checks a local one is writable."""
  check_workdir_supported(workdir)
  path = paths.checked(workdir, "--workdir")
  path.mkdir(parents=True, exist_ok=True)
  if not paths.is_remote(workdir) and not os.access(workdir, os.W_OK):
    raise PermissionError(f"--workdir {workdir!r} is not writable")


def train(config, workdir: str, *,
          extra_checks: Callable[[jax.sharding.Mesh], None] | None = None) -> dict:
  """Trains `config` in `workdir`, resuming if it holds checkpoints.

  Returns {"state", "preempted", "pictures", "method", "mesh"}: the final train state, whether a
  SIGTERM stopped the run early, the method's pictures, and the method and mesh it ran on (what
  the evaluation reuses). `extra_checks(mesh)`: the caller's own checks of the config (sslx.run:
  the evaluation's), run after the run's own and before any compute, so a bad evaluation setting
  fails before hours of training rather than after.
  """
  sharding.initialize_distributed(config.distributed)
  runtime.log_and_check_runtime(require_accelerator=config.require_accelerator)
  _check_workdir(workdir)
  if config.data.data_dir:  # a gs:// data dir needs the same filesystem as a gs:// workdir
    paths.checked(config.data.data_dir, "config.data.data_dir")
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.get_rules(config.mesh)  # a bad preset or rule fails here, before any compute
  sharding.check_rules_fit_mesh(rules, mesh)
  sharding.check_batch_divisible(config.batch_size, mesh)
  for field in ("total_steps", "log_every", "checkpoint_every"):
    if config[field] < 1:
      raise ValueError(f"{field} must be >= 1, got {config[field]}")
  if config.optim.name == "lars" and config.model.get("vit", {}).get("scan", False) and (
      config.model.get("name") == "vit"):
    # optax's LARS takes one trust ratio per leaf: over a scanned ViT's [depth, ...] stacks it
    # would be one ratio for all layers instead of one per layer.
    raise ValueError("optim.name='lars' needs model.vit.scan=False (LARS's trust ratio is per "
                     "layer; scanned blocks stack the layers); or use optim.name='adamw'")
  if config.nonfinite_policy not in NONFINITE_POLICIES:
    raise ValueError(f"nonfinite_policy must be one of {NONFINITE_POLICIES}, got "
                     f"{config.nonfinite_policy!r}")
  if config.data.get("imbalance_ratio", 1.0) != 1 and is_semi_supervised(config):
    raise ValueError(f"data.imbalance_ratio={config.data.imbalance_ratio}: long-tailed subsets "
                     "are for self-supervised runs; a semi-supervised run draws its labelled "
                     "set from the whole split (keep data.imbalance_ratio=1)")
  if config.data.get("train_split", "") and is_semi_supervised(config):
    raise ValueError(f"data.train_split={config.data.train_split!r}: a semi-supervised run draws "
                     "its labelled and unlabelled sets from the dataset's train split (keep "
                     "data.train_split='')")
  if config.eval.every < 0:
    raise ValueError(f"eval.every must be >= 0 (0: no monitor metrics), got {config.eval.every}")
  if extra_checks is not None:
    extra_checks(mesh)
  _check_same_run(config, workdir)
  info = sources.get_dataset_info(config.data.name)
  source_kwargs = sources.source_kwargs(config.data)
  if jax.process_index() == 0:  # prepares the dataset on first use: one writer only
    sources.load_source(config.data.name, info.train_split, **source_kwargs)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("sslx: dataset prepared")
  host_crops = decode.host_crops_for(config, channels=info.image_shape[-1])
  split = sources.pretraining_split(config.data)
  try:
    train_source = sources.load_source(config.data.name, split, **source_kwargs,
                                       encoded=host_crops is not None)
  except Exception as e:
    if not config.data.get("train_split", ""):
      raise
    raise ValueError(f"data.train_split={split!r} could not be read from {config.data.name!r} "
                     f"(expected a tfds split spec such as 'train[500:]'): {e}") from e
  if len(train_source) == 0:
    raise ValueError(f"data.train_split={split!r} of {config.data.name!r} holds no example")
  subset = sources.train_indices(config.data)
  if subset is not None:  # data.imbalance_ratio: a long-tailed part of the split
    train_source = pipeline.Subset(train_source, subset)
  method = build_method(config)
  tx, schedule = optim.make_optimizer(config.optim, config.batch_size, config.total_steps)

  batch_sharding = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)
  epoch_size = len(train_source)  # images a train/epoch counts: the unlabelled ones in semi
  if is_semi_supervised(config):
    labelled, unlabelled = semi_supervised_split(config, workdir)
    epoch_size = len(unlabelled)
    data_iter = pipeline.semi_supervised_iterator(
        train_source, labelled=labelled, unlabelled=unlabelled,
        global_batch_size=config.batch_size, uratio=config.semi.uratio, seed=config.seed,
        worker_count=config.data.worker_count)
  else:
    data_iter = pipeline.train_iterator(train_source, global_batch_size=config.batch_size,
                                        seed=config.seed, worker_count=config.data.worker_count,
                                        host_crops=host_crops)

  init_state, state_sharding = state_initializer(config, method, tx, mesh, rules, info)
  state = jax.jit(init_state, out_shardings=state_sharding)(jax.random.PRNGKey(config.seed))
  checkpointer = Checkpointer(workdir, max_to_keep=config.max_checkpoints)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore_for_resume(abstract_like(state), data_iter,
                                            fallback=config.checkpoint_fallback)
  elif method.warm_start is not None:
    state = warm_started(state, method, tx, mesh, state_sharding)
  start_step = int(state.step)
  train_step = make_train_step(method, tx, schedule, state_sharding=state_sharding,
                               batch_sharding=batch_sharding, metric_sharding=replicated)

  writer = MetricWriter(workdir)
  is_main = jax.process_index() == 0
  # Built by every process: the monitor's jitted function runs on the whole mesh.
  monitor = (monitor_lib.build(config, method, mesh, info, source_kwargs)
             if config.eval.every > 0 or config.eval.plots else None)
  if is_main:
    (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
  progress = None
  if is_main and config.progress_bar:
    from tqdm import tqdm
    progress = tqdm(total=config.total_steps, initial=start_step, desc="train", unit="step",
                    dynamic_ncols=True)

  preempted = False
  # SIGTERM handler installed for the loop only (given back even when the loop raises).
  with PreemptionWatch() as preemption:
    pending, last_log, warned_upto = [], (start_step, time.perf_counter()), start_step
    previous_step = None
    for step in range(start_step, config.total_steps):
      batch = pipeline.to_global_batch(next(data_iter), batch_sharding)
      state, metrics = train_step(state, batch)
      # At most two steps in flight: the host waits for the previous step once this one is
      # dispatched. XLA's asynchronous dispatch would otherwise let it run up to log_every steps
      # ahead, and a SIGTERM's save would wait for all of them (minutes on a slow device, past a
      # scheduler's grace period).
      if previous_step is not None:
        previous_step.block_until_ready()
      previous_step = metrics["train/loss"]
      pending.append(metrics)  # stays on device until the next log
      done = step + 1
      preempted = preemption.reached(done)
      is_log = done % config.log_every == 0 or done == config.total_steps or preempted
      is_checkpoint = (done % config.checkpoint_every == 0 or done == config.total_steps
                       or preempted)
      is_monitor = config.eval.every > 0 and (done % config.eval.every == 0
                                              or done == config.total_steps)
      if is_log or is_checkpoint or is_monitor:
        # Checked before every save, so a checkpoint never holds a step that went non-finite.
        fetched = jax.device_get(pending)
        bad = [done - len(fetched) + i + 1 for i, m in enumerate(fetched) if m["train/nonfinite"]]
        if bad and config.nonfinite_policy == "stop":
          _stop_nonfinite(bad[0], checkpointer, writer, progress)
        new_bad = [b for b in bad if b > warned_upto]  # `fetched` may hold checked steps
        if new_bad:
          logging.warning("non-finite loss or gradient at step(s) %s: update skipped "
                          "(nonfinite_policy=skip; %d skipped so far)", new_bad,
                          int(state.nonfinite_steps))
        warned_upto = done
        pending = [] if is_log else fetched  # kept for the next log's averages
      monitored = {}
      if is_monitor:
        t0 = time.perf_counter()
        monitored = {f"monitor/{k}": v for k, v in monitor.metrics(state.variables).items()}
        # Not training time: moved out of the images/s window.
        last_log = (last_log[0], last_log[1] + time.perf_counter() - t0)
        if not is_log:  # on a log step they join that step's record (one record per step)
          writer.write(done, monitored)
      if is_log:
        summary = {k: np.mean([m[k] for m in fetched]) for k in fetched[-1]}
        summary.update(monitored)
        now = time.perf_counter()
        if last_log[0] > start_step:  # the first window after a (re)start includes compilation
          summary["train/images_per_s"] = ((done - last_log[0]) * config.batch_size
                                           / (now - last_log[1]))
        # Epochs of the training images: of the unlabelled stream in a semi-supervised run.
        summary["train/epoch"] = done * config.batch_size * (
            config.semi.uratio if is_semi_supervised(config) else 1) / epoch_size
        summary["train/nonfinite_steps"] = int(state.nonfinite_steps)  # since step 0
        last_log = (done, now)
        writer.write(done, summary)
        if progress is not None:
          progress.set_postfix(loss=f"{summary['train/loss']:.4f}",
                               img_s=f"{summary.get('train/images_per_s', 0):.0f}")
          progress.update(done - progress.n)
      if is_checkpoint:
        checkpointer.save(done, state, data_iter)
      if preempted:
        break
    checkpointer.wait()  # inside: a second SIGTERM must not kill the preemption save's commit
  data_iter.close()  # stops grain's worker processes and frees their shared memory
  if progress is not None:
    progress.close()
  writer.flush()
  if preempted:
    logging.warning("preempted: checkpoint %d saved in %s; the same command resumes the run",
                    done, checkpointer.directory)
  pictures = []
  if config.eval.plots and not preempted:
    from sslx.evaluate import plots  # matplotlib is imported only when plots are written
    plots.write_run_plots(workdir, monitor, state.variables)
    pictures = save_method_pictures(config, state.variables, monitor.monitor_set.images,
                                    workdir)
  writer.close()
  checkpointer.close()
  return {"state": state, "preempted": preempted, "pictures": pictures, "method": method,
          "mesh": mesh}


PICTURE_IMAGES = 8  # monitor images drawn by a method's own pictures


def save_method_pictures(config, variables, monitor_images, workdir: str) -> list[str]:
  """The experiment module's own pictures of the trained model, if it defines
  `save_pictures(config, variables, images, directory) -> paths` (MAE reconstructions, DINO /
  iBOT attention maps), drawn on the first monitor images into the workdir. Single-process runs
  only: the pictures read the variables on one host."""
  save_pictures = getattr(experiment_module(config), "save_pictures", None)
  if save_pictures is None:
    return []
  if jax.process_count() > 1:
    logging.info("%s pictures are drawn by single-process runs only", config.experiment)
    return []
  paths = save_pictures(config, jax.device_get(variables), monitor_images[:PICTURE_IMAGES],
                        workdir)
  logging.info("method pictures written: %s", paths)
  return paths


# Fields that define the trajectory of a run: a resumed run must not change them.
_RUN_DEFINING = ("experiment", "seed", "batch_size", "total_steps", "data.name",
                 "data.train_split", "data.imbalance_ratio", "model", "projector", "augment",
                 "loss", "optim", "eval.online_probe", "semi", "simclrv2")
# Settings under those that trade memory for compute without changing what is computed (up to
# float reassociation): a run that ran out of memory may resume with more of them.
_MEMORY_ONLY = ("model.remat", "optim.grad_cache_chunks")


def is_semi_supervised(config) -> bool:
  """Whether `config` trains a semi-supervised method (it has a `semi` section: a labelled and
  an unlabelled part in every batch)."""
  return "semi" in config


def example_batch(config, info) -> dict:
  """Zeros shaped like a global batch of `config` (what `Method.init` is given)."""
  batch = {"image": jnp.zeros((config.batch_size, *info.image_shape), jnp.uint8),
           "label": jnp.zeros((config.batch_size,), jnp.int32)}
  if not is_semi_supervised(config):
    batch["index"] = jnp.zeros((config.batch_size,), jnp.int32)
  else:
    unlabelled = config.batch_size * config.semi.uratio
    batch["unlabelled_image"] = jnp.zeros((unlabelled, *info.image_shape), jnp.uint8)
    batch["unlabelled_index"] = jnp.zeros((unlabelled,), jnp.int32)
  return batch


SPLIT_FILE = "semi_supervised_split.json"


def semi_supervised_split(config, workdir: str) -> tuple[np.ndarray, np.ndarray]:
  """(labelled, unlabelled) indices into the train split of a semi-supervised run:
  semi.labels_per_class examples of every class drawn with config.seed among the examples that
  have a label (`sources.labelled_subset`), and every training image (semi.unlabelled='all', as
  USB) or the others. The labelled indices are written to `workdir/semi_supervised_split.json`
  when the run starts and read back from it when it resumes, so a resumed run trains on the same
  labels even if the way they are drawn changes in a later sslx."""
  info = sources.get_dataset_info(config.data.name)
  labels = sources.split_labels(config.data.name, info.train_split,
                                **sources.source_kwargs(config.data))
  record = epath.Path(workdir) / SPLIT_FILE
  defining = {"dataset": config.data.name, "split": info.train_split, "seed": config.seed,
              "labels_per_class": config.semi.labels_per_class}
  saved = json.loads(record.read_text()) if record.exists() else {}
  if saved and all(saved.get(k) == v for k, v in defining.items()):
    labelled = np.asarray(saved["labelled"], np.int64)
    return labelled, sources.unlabelled_indices(len(labels), labelled, config.semi.unlabelled)
  # A new run, or a workdir left by a run of other settings that never checkpointed (one that did
  # is refused earlier, by _check_same_run).
  try:
    labelled, unlabelled = sources.semi_supervised_split(
        labels, config.semi.labels_per_class, config.seed, config.semi.unlabelled)
  except ValueError as e:
    raise ValueError(f"semi.labels_per_class={config.semi.labels_per_class} on "
                     f"{config.data.name!r}: {e}") from None
  if jax.process_index() == 0:  # written whole, then renamed: other processes never read half
    partial = epath.Path(f"{record}.partial")
    partial.write_text(json.dumps({**defining, "labelled": labelled.tolist()}))
    partial.replace(record)
  return labelled, unlabelled


def state_initializer(config, method, tx, mesh, rules, info):
  """(init_state(rng) -> TrainState, its shardings): the fresh state of a run, which is also
  the target a checkpoint is restored onto."""

  def init_state(rng):
    init_rng, train_rng = jax.random.split(rng)
    example = example_batch(config, info)
    variables = dict(method.init(init_rng, example))
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                      opt_state=tx.init(params), rng=train_rng,
                      nonfinite_steps=jnp.zeros((), jnp.int32))

  # Parameters carrying logical axis names (ViT) are sharded by config.mesh.rules (FSDP, tensor
  # parallel); everything else, and every parameter under the default rules, is replicated.
  abstract_state = jax.eval_shape(init_state, jax.random.PRNGKey(config.seed))
  param_sharding = sharding.logical_shardings(abstract_state.params, method.param_axes, mesh,
                                              rules)
  state_sharding = sharding.state_shardings(abstract_state, abstract_state.params,
                                            param_sharding, mesh)
  return init_state, state_sharding


def restore_onto_mesh(config, method, checkpointer, mesh, step: int | None = None):
  """The train state saved at `step` (latest if None) restored onto `mesh` with the run's
  shardings, without the input iterator. orbax reshards: a checkpoint written by any number of
  processes and devices restores onto any mesh the config's rules fit (evaluation, fine-tuning,
  or inspecting a pod run on one host)."""
  rules = sharding.get_rules(config.mesh)
  sharding.check_rules_fit_mesh(rules, mesh)
  info = sources.get_dataset_info(config.data.name)
  tx, _ = optim.make_optimizer(config.optim, config.batch_size, config.total_steps)
  init_state, state_sharding = state_initializer(config, method, tx, mesh, rules, info)
  abstract = jax.eval_shape(init_state, jax.random.PRNGKey(config.seed))
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, state_sharding)
  return checkpointer.restore(abstract, step=step)


def restore_finished_run(workdir: str, mesh, *, name: str, config=None) -> TrainState:
  """The final train state of the finished run in `workdir` (`config`: its saved config, read if
  None), restored onto `mesh` (`restore_onto_mesh`): what a run that starts from another run
  reads (`Method.warm_start`). `name` is the config field that gave `workdir`, named in errors; a
  run that has not reached its total_steps (preempted, still running) is refused."""
  config = runs.load_config(workdir, name) if config is None else config
  checkpointer = Checkpointer(workdir, read_only=True)
  try:
    last = checkpointer.latest_step()
    if last != config.total_steps:
      raise ValueError(f"{name}={workdir!r} has not finished: its last checkpoint is step {last} "
                       f"of {config.total_steps}; finish it first (its own command resumes it)")
    return restore_onto_mesh(config, build_method(config), checkpointer, mesh, last)
  finally:
    checkpointer.close()


def warm_started(state: TrainState, method, tx, mesh, state_sharding) -> TrainState:
  """A fresh run's state with `method.warm_start`'s variables (another run's parts copied in)
  and the optimizer state of those parameters, on the run's shardings."""
  fresh = state.variables
  variables = dict(method.warm_start(fresh, mesh))
  expected, got = (jax.tree_util.tree_flatten_with_path(v)[0] for v in (fresh, variables))
  differ = [jax.tree_util.keystr(path) for (path, x), (other, y) in zip(expected, got)
            if path != other or x.shape != y.shape or x.dtype != y.dtype]
  if differ or len(expected) != len(got):
    raise ValueError(f"Method.warm_start must return variables of the fresh run's structure, "
                     f"shapes and dtypes; it differs at {differ[:3] or 'the number of leaves'}")
  params = variables.pop("params")
  state = jax.device_put(state._replace(params=params, model_state=variables), state_sharding)
  opt_state = jax.jit(tx.init, out_shardings=state_sharding.opt_state)(state.params)
  return state._replace(opt_state=opt_state)


def _check_same_run(config, workdir: str) -> None:
  """Refuses to resume a workdir with settings that would silently change the run."""
  path = epath.Path(workdir) / "config.json"
  if not (path.exists() and runs.has_checkpoints(workdir)):
    return
  saved = runs.flatten(json.loads(path.read_text()))
  current = runs.flatten(json.loads(config.to_json_best_effort()))
  # A field the saved config lacks was added to sslx after that run started; the run trained as
  # if it held the field's default, so an upgrade does not strand a long run (logged, not refused).
  added = sorted(k for k in set(current) - set(saved) if k.startswith(_RUN_DEFINING))
  if added:
    logging.warning("resuming %s, whose config.json predates %s: taking this config's values %s",
                    workdir, ", ".join(added), [current[k] for k in added])
  changed = sorted(k for k in saved
                   if k.startswith(_RUN_DEFINING) and not k.startswith(_MEMORY_ONLY)
                   and saved[k] != current.get(k))
  if changed:
    diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
    raise ValueError(f"--workdir {workdir!r} holds a run with other settings ({diffs}); resuming "
                     "would not continue that run. Use a new --workdir, or the saved settings.")


def _stop_nonfinite(step, checkpointer, writer, progress):
  checkpointer.wait()
  where = f"at step {step}"
  last = checkpointer.latest_step()
  kept = (f"the last good checkpoint (step {last}) is kept in {checkpointer.directory}"
          if last is not None else "no checkpoint had been written yet")
  if progress is not None:
    progress.close()
  writer.close()
  raise NonFiniteLossError(
      f"the loss or its gradient became NaN/inf {where}; training stopped and the update was "
      f"not applied; {kept}. Lower optim.lr, raise loss.temperature, or check the data.")
