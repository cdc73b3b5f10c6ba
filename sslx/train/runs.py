"""A training run read back from its workdir: the config it saved (``config.json``), as the
evaluation CLI and the runs that start from another run (SimCLRv2's fine-tuning and
distillation stages) need it. Light to import: no jax."""

import json

import ml_collections
from etils import epath

from sslx import paths


def load_config(workdir: str, name: str = "--workdir") -> ml_collections.ConfigDict:
  """The config a run saved in `workdir/config.json`, with the eval fields it predates filled
  from `configs.common.base_config` (monitor settings of runs trained before they existed).
  `workdir` may be local or remote (gs://...). A ValueError names `name` (the flag or config
  field that gave `workdir`) when it is not a run's workdir."""
  directory = paths.checked(workdir, name)
  if not directory.is_dir():
    raise ValueError(f"{name} {workdir!r} does not exist")
  path = directory / "config.json"
  if not path.exists():
    raise ValueError(f"{name} {workdir!r} has no config.json: not a training run's workdir")
  saved = json.loads(path.read_text())
  try:
    from configs.common import base_config  # the repository root is on sys.path
    saved["eval"] = {**base_config().eval.to_dict(), **saved.get("eval", {})}
  except ImportError:
    pass  # then a run that predates a field fails where the field is read, naming it
  # The training job's coordinator address and process id describe that job, not this one.
  saved["distributed"] = {**saved.get("distributed", {}), "coordinator_address": "",
                          "num_processes": 1, "process_id": 0, "auto_detect": False}
  return ml_collections.ConfigDict(saved)


def has_checkpoints(workdir: str) -> bool:
  """Whether `workdir/checkpoints` holds at least one saved step."""
  checkpoints = epath.Path(workdir) / "checkpoints"
  return checkpoints.is_dir() and any(entry.name.isdigit() for entry in checkpoints.iterdir())


def flatten(tree: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}: a config's fields by their dotted names."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out
