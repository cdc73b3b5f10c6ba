"""Checkpoints: the train state and the input iterator saved together by one orbax
CheckpointManager under `workdir/checkpoints`, so a restarted run continues exactly. The workdir
may be local or remote (`gs://...`): orbax writes through `etils.epath` and tensorstore.
"""

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from sslx import paths


# Remote schemes orbax cannot checkpoint to: tensorstore, which writes the arrays, is given a GCS
# bucket for gs:// and a local directory for anything else.
_UNSUPPORTED_SCHEMES = ("s3", "az", "hf")


def check_workdir_supported(workdir: str, name: str = "--workdir") -> None:
  """Raises ValueError, naming `name`, for a URL whose scheme orbax cannot write checkpoints to
  (called before any compute: orbax would only fail at the first save)."""
  if paths.scheme(workdir) in _UNSUPPORTED_SCHEMES:
    raise ValueError(f"{name}={workdir!r}: orbax cannot write checkpoints to "
                     f"{paths.scheme(workdir)}:// paths; use a local path (or a mount) or gs://")


class UnreadableCheckpointError(RuntimeError):
  """A checkpoint cannot be restored (truncated, corrupted, or files missing)."""


class Checkpointer:
  """Saves every `save_every` steps (and on demand), keeps the newest `max_to_keep`.

  Saving is asynchronous: arrays are copied to host memory before `save` returns and written in
  the background; orbax writes into a temporary directory and renames it when complete, so a
  process killed mid-save leaves the previous checkpoint as the latest one.
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3, read_only: bool = False):
    # Absolute: tensorstore, which writes the arrays, refuses relative local paths.
    self.directory = paths.absolute(epath.Path(workdir) / "checkpoints")
    # read_only: another run's checkpoints, read by a run that starts from them (never pruned).
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                             read_only=read_only))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator)))

  def step_path(self, step: int) -> str:
    return str(epath.Path(self.directory) / str(step))

  def restore(self, abstract_state, data_iterator=None, step: int | None = None):
    """Restores the state (onto the shardings of `abstract_state`) and, when given, the input
    iterator in place (evaluation needs the state only). Raises UnreadableCheckpointError
    naming the checkpoint when it cannot be read."""
    step = self.latest_step() if step is None else step
    logging.info("Restoring checkpoint %d from %s", step, self.directory)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**items)).state
    except Exception as e:  # orbax, tensorstore, json and OS errors all mean "cannot read it"
      raise UnreadableCheckpointError(
          f"checkpoint {self.step_path(step)} (step {step}) cannot be restored: "
          f"{type(e).__name__}: {str(e)[:500]}") from e

  def restore_for_resume(self, abstract_state, data_iterator, *, fallback: bool):
    """Restores the newest checkpoint to continue training.

    A newest checkpoint that cannot be restored is an error that names it (never a silent
    restart from scratch over existing work). With `fallback`, older checkpoints are tried,
    newest first; only once one restores are the newer ones moved to `checkpoints_unreadable/`
    (kept for inspection, and out of the way of their steps' next saves). When none restores
    (a config whose state no longer matches the checkpoints fails on every one), nothing is
    moved. One process only: hosts would have to agree on which checkpoint failed.
    """
    if fallback and jax.process_count() > 1:
      raise ValueError(
          "checkpoint_fallback=True is supported in single-process runs only; with several "
          f"processes, move the unreadable step out of {self.directory} by hand")
    steps = sorted(self.all_steps(), reverse=True)
    failed = []
    for step in steps:
      try:
        state = self.restore(abstract_state, data_iterator, step)
      except UnreadableCheckpointError as e:
        if not fallback:
          older = steps[1:]
          hint = (f"rerun with --config.checkpoint_fallback=True to resume from step {older[0]} "
                  "if it restores (the unreadable checkpoint is then moved aside, not deleted)"
                  if older else "there is no earlier checkpoint to fall back to")
          raise UnreadableCheckpointError(f"{e}; {hint}") from e.__cause__
        logging.warning("%s; trying the next older checkpoint", e)
        failed.append(step)
        continue
      for bad in failed:
        logging.warning("resumed from step %d; unreadable step %d moved to %s", step, bad,
                        self._move_aside(bad))
      return state
    raise UnreadableCheckpointError(
        f"none of the checkpoints {steps} in {self.directory} restores (see the log for each "
        "error); nothing was moved. If the config changed, resume with the saved one "
        "(config.json in the workdir)")

  def _move_aside(self, step: int) -> str:
    target_dir = epath.Path(self.directory + "_unreadable")
    target_dir.mkdir(parents=True, exist_ok=True)
    target, n = target_dir / str(step), 0
    while target.exists():  # an earlier fallback moved this step already
      n += 1
      target = target_dir / f"{step}.{n}"
    epath.Path(self.step_path(step)).rename(target)
    self.manager.reload()
    return str(target)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a pytree of arrays: the target of a restore."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
