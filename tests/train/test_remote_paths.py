"""A workdir behind a URL: training, resuming and `sslx.evaluate` read and write every file through
etils.epath, so nothing lands on the local disk instead; a URL whose filesystem is not installed
is refused before any compute.

The remote store is `testbucket://`, an epath path class registered here that keeps the bucket in
a local directory and records every file opened for writing through it (GCS itself cannot be
reached offline). One concession: tensorstore, which writes orbax's arrays, has no epath layer
(its kvstore drivers are `file`, `gcs`, `s3`) and takes its directory from `Path.as_posix()`; for
this class that is the local directory, as a bucket is for tensorstore's gcs driver.
"""

import json
import os
import struct
import sys

import jax
import numpy as np
import pytest
from etils import epath

from sslx.evaluate import cli
from sslx.run import train_and_evaluate
from sslx.train import loop
from sslx.train.metrics import read_metrics
from tests.train.helpers import REPO, smoke_config

PREFIX = "testbucket://"


@epath.register_path_cls(PREFIX)
class BucketPath(epath.gpath.PosixGPath):
  """`testbucket://a/b`, stored at `<root>/a/b`. `str()` and `os.fspath()` give the URL, so code
  that bypasses epath (`open(path)`, `os.makedirs(path)`) writes a relative `testbucket:`
  directory into the working directory instead, which the tests look for."""

  root: str | None = None  # the local directory holding the bucket, set by the `bucket` fixture
  written: set[str] = set()  # local paths of the files opened for writing through this class

  @classmethod
  def _to_local(cls, parts) -> tuple[str, ...]:
    joined = "/".join(os.fspath(p) for p in parts)
    if not joined.startswith(PREFIX):
      return tuple(parts)  # already local (pathlib joining paths of this class)
    assert cls.root is not None, "testbucket:// used outside the bucket fixture"
    return (os.path.join(cls.root, joined[len(PREFIX):]),)

  if sys.version_info < (3, 12):
    def __new__(cls, *parts):
      return super().__new__(cls, *cls._to_local(parts))
  else:
    def __init__(self, *parts):
      super().__init__(*self._to_local(parts))

  def as_posix(self) -> str:  # what tensorstore is given (see the module docstring)
    return super().__str__()

  def __str__(self) -> str:
    local, root = super().__str__(), self.root
    inside = root is not None and (local == root or local.startswith(root + os.sep))
    return PREFIX + os.path.relpath(local, root) if inside else local

  def __fspath__(self) -> str:
    return str(self)

  def __repr__(self) -> str:
    return f"BucketPath({str(self)!r})"

  def open(self, mode="r", **kwargs):
    if "w" in mode or "a" in mode:
      BucketPath.written.add(self.as_posix())
    return super().open(mode, **kwargs)

  # epath's own rename / replace pass the target on as os.fspath(target), the URL.
  def rename(self, target):
    return self._move(target, os.rename)

  def replace(self, target):
    return self._move(target, os.replace)

  def _move(self, target, move):
    target = BucketPath(target)
    src, dst = self.as_posix(), target.as_posix()
    move(src, dst)
    BucketPath.written = {dst + p[len(src):] if p == src or p.startswith(src + "/") else p
                          for p in BucketPath.written}
    return target


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """(the bucket's local directory, the empty working directory of the test)."""
  root, cwd = tmp_path / "bucket", tmp_path / "cwd"
  root.mkdir()
  cwd.mkdir()
  monkeypatch.setattr(BucketPath, "root", str(root))
  monkeypatch.setattr(BucketPath, "written", set())
  monkeypatch.chdir(cwd)
  return root, cwd


def _files(root) -> set[str]:
  return {os.path.join(d, f) for d, _, files in os.walk(root) for f in files}


def _is_tensorstore_data(path: str) -> bool:
  """What orbax writes through tensorstore inside a checkpoint's item: the arrays (OCDBT) and
  their shardings."""
  parts = path.split(os.sep)
  item = parts[parts.index("checkpoints") + 3:] if "checkpoints" in parts else []  # <step>/state/
  return bool(item) and (item[-1] in ("manifest.ocdbt", "_sharding") or item[0] == "d"
                         or item[0].startswith("ocdbt.process_"))


def _tensorboard_losses(tb: epath.Path) -> dict[int, float]:
  """train/loss by step from the event files (TFRecord framing + Event protos)."""
  from tensorboardX.proto import event_pb2
  values = {}
  for event_file in tb.iterdir():
    data, pos = event_file.read_bytes(), 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      values.update({event.step: v.simple_value for v in event.summary.value
                     if v.tag == "train/loss"})
  return values


@pytest.mark.slow
def test_run_resume_and_evaluation_write_only_through_epath(fashion_mnist_dir, bucket):
  root, cwd = bucket
  workdir = PREFIX + "runs/simclr"
  run = epath.Path(workdir)
  assert isinstance(run, BucketPath)
  # One device: the paths do not depend on the mesh, and compiling for 8 costs CI time.
  one_device = {"mesh.num_devices": 1}
  first = smoke_config(fashion_mnist_dir, **one_device, **{"eval.enabled": False})  # saves 3, 6
  uninterrupted = jax.tree.map(np.asarray, loop.train(first, workdir)["state"])
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["3", "6"]

  (run / "checkpoints" / "6").rmtree()  # as if the run had stopped after step 3
  # Evaluation settings may change on resume: this time the run evaluates (kNN only).
  resumed = smoke_config(fashion_mnist_dir, **one_device, **{
      "eval.baselines": (), "eval.linear_probe": False, "eval.train_examples": 400,
      "eval.test_examples": 200})
  out = train_and_evaluate(resumed, workdir)
  for x, y in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(out["state"]), strict=True):
    np.testing.assert_array_equal(x, np.asarray(y))  # continued from step 3's checkpoint

  # metrics.jsonl keeps the first run's records (object stores cannot append: it is rewritten).
  assert len((run / "metrics.jsonl").read_text().splitlines()) == 6 + 3
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
  losses = _tensorboard_losses(run / "tb")
  assert sorted(losses) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([losses[r["step"]] for r in records],
                             [r["train/loss"] for r in records], rtol=1e-6)
  assert json.loads((run / "config.json").read_text())["total_steps"] == 6
  end_of_run = json.loads((run / "results.json").read_text())
  assert 0.1 < end_of_run["rows"]["SSL encoder"]["knn_top1"] <= 1

  # `python -m sslx.evaluate` on step 3: restores from the bucket, writes results and plots there.
  output = workdir + "/eval/step3.json"
  results = cli.evaluate_checkpoint(workdir, step=3, protocols=("rankme",), plots=True,
                                    output=output)
  assert results["workdir"] == workdir and results["steps"] == 3
  assert json.loads(epath.Path(output).read_text())["rows"] == results["rows"]
  assert 1 <= results["rows"]["SSL encoder"]["rankme"] <= 16
  assert results["plots"] == [f"{workdir}/{name}" for name in
                              ("curves.png", "spectrum.png", "embedding_map.png")]
  for picture in results["plots"]:
    assert epath.Path(picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture

  # Nothing went around epath: no file in the working directory or a `testbucket:` directory
  # beside the repository, and every file in the bucket was written through BucketPath, except
  # the array data tensorstore writes.
  assert os.listdir(cwd) == []
  assert not os.path.exists(os.path.join(REPO, "testbucket:"))
  unrecorded = {p for p in _files(root) - BucketPath.written if not _is_tensorstore_data(p)}
  assert not unrecorded, sorted(unrecorded)
  assert any(_is_tensorstore_data(p) for p in _files(root / "runs/simclr/checkpoints/3"))


def test_url_without_its_filesystem_is_refused_before_any_compute(tmp_path, monkeypatch):
  # Neither gs:// filesystem is installed, even where one is (TensorFlow's gfile is epath's
  # other route to gs://).
  monkeypatch.setitem(sys.modules, "gcsfs", None)
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  monkeypatch.chdir(tmp_path)

  def no_mesh(*args, **kwargs):
    raise AssertionError("the mesh was built: the workdir must be checked before")

  monkeypatch.setattr(loop.sharding, "make_mesh", no_mesh)
  config = smoke_config(str(tmp_path / "tfds"))  # never read: every call fails before
  with pytest.raises(ValueError, match=r"--workdir='gs://bucket/run': gs:// paths need gcsfs"):
    train_and_evaluate(config, "gs://bucket/run")
  with pytest.raises(ValueError, match=r"--workdir='nosuch://x/run': no filesystem handles "
                                       r"nosuch:// paths; use a local path or one of gs://"):
    train_and_evaluate(config, "nosuch://x/run")
  with pytest.raises(ValueError, match=r"--workdir='s3://bucket/run': orbax cannot write "
                                       r"checkpoints to s3:// paths"):
    train_and_evaluate(config, "s3://bucket/run")
  with pytest.raises(ValueError, match=r"config.data.data_dir='gs://bucket/tfds': .*gcsfs"):
    train_and_evaluate(smoke_config("gs://bucket/tfds"), str(tmp_path / "run"))
  with pytest.raises(cli.FlagError, match=r"--workdir='gs://bucket/run': .*gcsfs"):
    cli.evaluate_checkpoint("gs://bucket/run")
  assert sorted(os.listdir(tmp_path)) == ["run"]  # no local "gs:", "s3:" or "nosuch:" directory


def test_figures_and_data_dirs_keep_their_urls(bucket):
  from matplotlib.figure import Figure

  from sslx.data import sources
  from sslx.evaluate import plots
  root, cwd = bucket
  fig = Figure(figsize=(1, 1))
  fig.subplots().plot([0, 1])
  assert plots.save_figure(fig, PREFIX + "pictures/line.png") == PREFIX + "pictures/line.png"
  assert (root / "pictures/line.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert BucketPath.written == {str(root / "pictures/line.png")}
  assert os.listdir(cwd) == []
  assert sources.resolve_data_dir("gs://bucket/tfds") == "gs://bucket/tfds"  # not made absolute
  assert sources.resolve_data_dir("tfds") == str(cwd / "tfds")
