"""The dataset registry and Fashion-MNIST preparation, on small fake idx files (no network)."""

import dataclasses
import gzip
import io
import os
import shutil
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sslx.data import sources
from sslx.data.sources import DatasetNotFoundError, IdxFormatError

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
N_TRAIN, N_TEST = 50, 20


def _idx_bytes(array: np.ndarray) -> bytes:
  header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _write_fake(directory: Path, seed: int = 0, gz: bool = True) -> dict:
  """Writes random train/test idx files; returns {split: (images [N,28,28], labels [N])}."""
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  out = {}
  for split, n in (("train", N_TRAIN), ("test", N_TEST)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (n,), dtype=np.uint8)
    for base, array in zip(sources.FASHION_MNIST_FILES[split], (images, labels), strict=True):
      data = _idx_bytes(array)
      if gz:
        (directory / (base + ".gz")).write_bytes(gzip.compress(data))
      else:
        (directory / base).write_bytes(data)
    out[split] = (images, labels)
  return out


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
  """No system dir, no env vars: each test decides where the idx files are."""
  monkeypatch.setattr(sources, "SYSTEM_FASHION_MNIST_DIRS", (str(tmp_path / "no_system_dir"),))
  monkeypatch.delenv(sources.FASHION_MNIST_DIR_ENV, raising=False)
  monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)


def _read_all(src):
  examples = src.__getitems__(list(range(len(src))))
  images = np.stack([e["image"] for e in examples])
  labels = np.array([e["label"] for e in examples])
  return images, labels


def _assert_same(src, images, labels):
  assert len(src) == len(labels)
  got_images, got_labels = _read_all(src)
  assert got_images.dtype == np.uint8 and got_images.shape == images.shape + (1,)
  np.testing.assert_array_equal(got_images[..., 0], images)  # same order as the idx files
  np.testing.assert_array_equal(got_labels, labels)


def test_prepare_from_source_dir_then_reuse(tmp_path):
  fake = _write_fake(tmp_path / "idx")
  data_dir = tmp_path / "tfds"
  for split in ("train", "test"):
    src = sources.load_source("fashion_mnist", split, data_dir=data_dir,
                              source_dir=tmp_path / "idx", allow_download=False)
    _assert_same(src, *fake[split])
    assert isinstance(src[0]["label"], (int, np.integer))
  assert (data_dir / "sslx_fashion_mnist" / "1.0.0").is_dir()

  # Written once: a second call needs no idx files and rebuilds nothing.
  shutil.rmtree(tmp_path / "idx")
  record = next((data_dir / "sslx_fashion_mnist" / "1.0.0").glob("*train.array_record*"))
  mtime = record.stat().st_mtime_ns
  start = time.perf_counter()
  src = sources.load_source("fashion_mnist", "train", data_dir=data_dir, allow_download=False)
  assert time.perf_counter() - start < 2.0
  assert record.stat().st_mtime_ns == mtime
  _assert_same(src, *fake["train"])


def test_plain_idx_files_and_env_var_discovery(tmp_path, monkeypatch):
  # The system dir has one data set, the env var another: the env var wins over the system dir.
  system = tmp_path / "system"
  _write_fake(system, seed=1)
  monkeypatch.setattr(sources, "SYSTEM_FASHION_MNIST_DIRS", (str(system),))
  fake = _write_fake(tmp_path / "env_dir", seed=2, gz=False)
  monkeypatch.setenv(sources.FASHION_MNIST_DIR_ENV, str(tmp_path / "env_dir"))
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path / "env_data_dir"))
  src = sources.load_source("fashion_mnist", "test", allow_download=False)
  _assert_same(src, *fake["test"])
  assert (tmp_path / "env_data_dir" / "sslx_fashion_mnist").is_dir()  # SSLX_DATA_DIR used


def test_source_dir_wins_and_system_dir_is_found(tmp_path, monkeypatch):
  system = tmp_path / "system"
  fake_system = _write_fake(system, seed=3)
  monkeypatch.setattr(sources, "SYSTEM_FASHION_MNIST_DIRS", (str(system),))
  found, _ = sources.find_fashion_mnist_dir(None)
  assert found == system
  fake_explicit = _write_fake(tmp_path / "explicit", seed=4)
  monkeypatch.setenv(sources.FASHION_MNIST_DIR_ENV, str(system))
  found, looked = sources.find_fashion_mnist_dir(tmp_path / "explicit")
  assert found == tmp_path / "explicit" and looked == []
  src = sources.load_source("fashion_mnist", "train", data_dir=tmp_path / "d",
                            source_dir=tmp_path / "explicit", allow_download=False)
  _assert_same(src, *fake_explicit["train"])
  assert not np.array_equal(fake_system["train"][0], fake_explicit["train"][0])


def test_missing_files_one_clear_error(tmp_path, monkeypatch):
  partial = tmp_path / "partial"
  _write_fake(partial)
  (partial / "t10k-labels-idx1-ubyte.gz").unlink()
  monkeypatch.setenv(sources.FASHION_MNIST_DIR_ENV, str(tmp_path / "env_nowhere"))
  with pytest.raises(DatasetNotFoundError) as info:
    sources.load_source("fashion_mnist", "train", data_dir=tmp_path / "d", source_dir=partial,
                        allow_download=False)
  assert isinstance(info.value, FileNotFoundError)
  message = str(info.value)
  for place in (str(partial), "t10k-labels-idx1-ubyte", str(tmp_path / "env_nowhere"),
                sources.FASHION_MNIST_DIR_ENV, str(tmp_path / "no_system_dir"),
                str(tmp_path / "d" / "downloads"), "allow_download=False",
                "apt-get install dataset-fashion-mnist", "--config.data.source_dir"):
    assert place in message, place
  assert not (tmp_path / "d" / "sslx_fashion_mnist" / "1.0.0").exists()


def test_download_from_authors_url(tmp_path, monkeypatch):
  # A file:// URL stands in for the authors' server: no network.
  mirror = tmp_path / "mirror"
  fake = _write_fake(mirror)
  monkeypatch.setattr(sources, "FASHION_MNIST_URL", mirror.as_uri() + "/")
  monkeypatch.setattr(sources, "FASHION_MNIST_SIZES", {"train": N_TRAIN, "test": N_TEST})
  data_dir = tmp_path / "d"
  with pytest.raises(DatasetNotFoundError):
    sources.load_source("fashion_mnist", "train", data_dir=data_dir, allow_download=False)
  src = sources.load_source("fashion_mnist", "train", data_dir=data_dir, allow_download=True)
  _assert_same(src, *fake["train"])
  assert (data_dir / "downloads" / "sslx_fashion_mnist" / "train-images-idx3-ubyte.gz").is_file()


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "FASHION_MNIST_URL", (tmp_path / "nothing").as_uri() + "/")
  with pytest.raises(DatasetNotFoundError, match="failed"):
    sources.load_source("fashion_mnist", "train", data_dir=tmp_path / "d", allow_download=True)


def test_corrupt_files_clear_errors(tmp_path):
  bad = tmp_path / "bad"
  _write_fake(bad)
  path = bad / "train-images-idx3-ubyte.gz"
  data = bytearray(gzip.decompress(path.read_bytes()))
  data[3] = 0x01  # labels magic in an images file
  path.write_bytes(gzip.compress(bytes(data)))
  with pytest.raises(IdxFormatError, match="magic") as info:
    sources.load_source("fashion_mnist", "train", data_dir=tmp_path / "d", source_dir=bad,
                        allow_download=False)
  assert "train-images-idx3-ubyte" in str(info.value)

  _write_fake(bad)
  labels = bad / "train-labels-idx1-ubyte.gz"
  labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-3]))  # truncated
  with pytest.raises(IdxFormatError, match="corrupt or truncated"):
    sources.load_source("fashion_mnist", "train", data_dir=tmp_path / "d", source_dir=bad,
                        allow_download=False)

  _write_fake(bad)
  labels.write_bytes(labels.read_bytes()[:30])  # truncated gzip stream
  with pytest.raises(IdxFormatError, match="gzip"):
    sources.read_idx(labels, ndim=1)
  assert not (tmp_path / "d" / "sslx_fashion_mnist" / "1.0.0").exists()


def test_registry():
  assert set(sources.DATASETS) >= {"fashion_mnist", "cifar10", "cifar100", "stl10",
                                   "imagenet2012"}
  for name, info in sources.DATASETS.items():
    assert info.name == name
    assert len(info.mean) == len(info.std) == info.image_shape[-1]
  info = sources.get_dataset_info("fashion_mnist")
  assert info.image_shape == (28, 28, 1) and info.num_classes == 10
  assert info.tfds_name == "sslx_fashion_mnist"
  with pytest.raises(dataclasses.FrozenInstanceError):
    info.num_classes = 3
  with pytest.raises(ValueError, match="cifar10.*fashion_mnist"):
    sources.get_dataset_info("mnist_typo")
  with pytest.raises(ValueError, match="known datasets"):
    sources.load_source("mnist_typo", "train")


def test_resolve_data_dir(monkeypatch, tmp_path):
  assert sources.resolve_data_dir(tmp_path) == str(tmp_path)
  assert sources.resolve_data_dir(None) == os.path.expanduser("~/tensorflow_datasets")
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path / "x"))
  assert sources.resolve_data_dir(None) == str(tmp_path / "x")
  assert sources.resolve_data_dir(tmp_path / "y") == str(tmp_path / "y")


def test_unprepared_tfds_dataset_clear_error(tmp_path):
  with pytest.raises(DatasetNotFoundError) as info:
    sources.load_source("cifar10", "train", data_dir=tmp_path)
  message = str(info.value)
  assert "tfds build cifar10 --file_format=array_record" in message
  assert str(tmp_path / "cifar10") in message
  assert "TensorFlow" in message
  assert not (tmp_path / "downloads").exists() or not any((tmp_path / "downloads").iterdir())


def test_prepared_cifar10_image_feature_reads_without_tensorflow(tmp_path, monkeypatch):
  """A cifar10 built by `tfds build` (PNG-encoded Image feature) decodes via PIL, no TF."""
  import PIL.Image
  import tensorflow_datasets as tfds
  from tensorflow_datasets.image_classification import cifar

  def png(self, image):  # encoding an Image needs TF; PIL writes the same PNG bytes
    buf = io.BytesIO()
    PIL.Image.fromarray(np.asarray(image)).save(buf, format="PNG")
    return buf.getvalue()

  monkeypatch.setattr(tfds.features.Image, "encode_example", png)
  images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)

  class FakeCifar10(cifar.Cifar10, skip_registration=True):
    name = "cifar10"

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(range(4)),
              "test": self._generate_examples(range(4, 6))}

    def _generate_examples(self, indices):
      for i in indices:
        yield i, {"id": f"img{i}", "image": images[i], "label": i}

  FakeCifar10(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  src = sources.load_source("cifar10", "train", data_dir=tmp_path)
  assert len(src) == 4
  got = {int(src[i]["label"]): src[i]["image"] for i in range(4)}
  for i in range(4):
    assert got[i].dtype == np.uint8 and got[i].shape == (32, 32, 3)
    np.testing.assert_array_equal(got[i], images[i])
  assert "tensorflow" not in sys.modules


def test_real_fashion_mnist(tmp_path, monkeypatch):
  """The real data, installed by the project's setup script (dataset-fashion-mnist): not skipped."""
  monkeypatch.setattr(sources, "SYSTEM_FASHION_MNIST_DIRS", (str(REAL_FASHION_MNIST),))
  train = sources.load_source("fashion_mnist", "train", data_dir=tmp_path, allow_download=False)
  test = sources.load_source("fashion_mnist", "test", data_dir=tmp_path, allow_download=False)
  assert len(train) == 60000 and len(test) == 10000
  example = test[0]
  assert example["image"].shape == (28, 28, 1) and example["image"].dtype == np.uint8
  images, labels = _read_all(train)
  assert labels.min() == 0 and labels.max() == 9
  np.testing.assert_array_equal(np.bincount(labels), np.full(10, 6000))
  assert abs(images.mean() - 72.94) < 0.01
  info = sources.get_dataset_info("fashion_mnist")
  assert abs(images.mean() / 255 - info.mean[0]) < 1e-3
  assert abs(images.std() / 255 - info.std[0]) < 1e-3
