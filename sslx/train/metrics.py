"""Metric logging from process 0: one JSON line per logged step in `workdir/metrics.jsonl`, and
TensorBoard event files (written by tensorboardX, readable without TensorFlow) in `workdir/tb`.
The workdir may be local or remote (`gs://...`): files are written through `etils.epath`.
"""

import io
import json
import time

import jax
import numpy as np
from etils import epath

from sslx import paths

# Remote workdirs: seconds between uploads of metrics.jsonl (also uploaded at flush and close).
# Each upload rewrites the whole file, so uploading at every logged step would cost quadratic
# bytes over a long run; a crash loses at most this much, which a resume logs again.
REMOTE_UPLOAD_SECONDS = 60.0


class MetricWriter:

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self._remote = paths.is_remote(workdir)
    self._tb = None
    self._text = ""  # remote workdirs: the whole file, rewritten at each upload
    self._uploaded_text, self._uploaded_at = "", time.monotonic()
    if self.enabled:
      if self._remote:
        # Object stores cannot append: the file is read once and rewritten whole, so a resumed
        # run keeps the records of the earlier ones.
        self._text = self._uploaded_text = (self.path.read_text() if self.path.exists()
                                            else "")
        _write_events_through_epath(paths.scheme(workdir))
      from tensorboardX import SummaryWriter  # imported here: only process 0 writes
      self._tb = SummaryWriter(str(epath.Path(workdir) / "tb"))

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    line = json.dumps(record) + "\n"
    if self._remote:
      self._text += line
      if time.monotonic() - self._uploaded_at >= REMOTE_UPLOAD_SECONDS:
        self._upload()
    else:
      with self.path.open("a") as f:
        f.write(line)
    for k, v in record.items():
      if k != "step":
        self._tb.add_scalar(k, v, global_step=int(step))

  def _upload(self) -> None:
    if self._text != self._uploaded_text:
      self.path.write_text(self._text)
      self._uploaded_text = self._text
    self._uploaded_at = time.monotonic()

  def flush(self) -> None:
    if self._remote and self.enabled:
      self._upload()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    self.flush()
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str) -> list[dict]:
  """The records of `workdir/metrics.jsonl`, in order (later records win on a resumed step)."""
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  by_step = {}
  for line in path.read_text().splitlines():
    record = json.loads(line)
    by_step[record["step"]] = record
  return [by_step[s] for s in sorted(by_step)]


class _EpathEventFile:
  """A TensorBoard event file written through etils.epath: the events are kept in memory and
  the whole file rewritten at each flush, as object stores cannot append (tensorboardX's own
  gs:// writer does the same, through google-cloud-storage)."""

  def __init__(self, path: str):
    self._path = epath.Path(path)
    self._events = io.BytesIO()

  def write(self, data: bytes) -> None:
    self._events.write(data)

  def flush(self) -> None:
    self._path.write_bytes(self._events.getvalue())

  def close(self) -> None:
    self.flush()


class _EpathEventFiles:
  """tensorboardX's writer factory interface (`open`, `directory_check`) over etils.epath."""

  def open(self, path: str) -> _EpathEventFile:
    return _EpathEventFile(path)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def _write_events_through_epath(scheme: str) -> None:
  """Makes tensorboardX write the event files of `scheme://` paths through etils.epath, so they
  need the same filesystem package as every other file of the workdir (tensorboardX would use
  google-cloud-storage for gs:// and know no other scheme)."""
  from tensorboardX import record_writer
  record_writer.register_writer_factory(scheme, _EpathEventFiles())
