"""Checkpoints: the train state and the input iterator saved together by one orbax
CheckpointManager under `workdir/checkpoints`, so a restarted run continues exactly.
"""

import os

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Saves every `save_every` steps (and on demand), keeps the newest `max_to_keep`.

  Saving is asynchronous: arrays are copied to host memory before `save` returns and written in
  the background; orbax writes into a temporary directory and renames it when complete, so a
  process killed mid-save leaves the previous checkpoint as the latest one.
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator)))

  def restore(self, abstract_state, data_iterator=None, step: int | None = None):
    """Restores the state (onto the shardings of `abstract_state`) and, when given, the input
    iterator in place (evaluation needs the state only)."""
    step = self.latest_step() if step is None else step
    logging.info("Restoring checkpoint %d from %s", step, self.directory)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items)).state

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a pytree of arrays: the target of a restore."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
