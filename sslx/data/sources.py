"""The dataset registry and random-access sources (TFDS array_record, read without TensorFlow).

Every dataset is read with ``tfds.data_source``: an array_record file read by index, decoded with
numpy. That path does not need TensorFlow:

* ``tfds.features.Tensor`` / ``ClassLabel`` / ``Text`` features deserialize with tfds's own
  protobuf parser (``ExampleParserNp``);
* ``tfds.features.Image`` features (cifar10, cifar100, stl10, imagenet2012 as TFDS builds them)
  are stored as PNG/JPEG bytes and ``Image.decode_example_np`` decodes them with OpenCV if it is
  installed, else with PIL (we checked: a cifar10 prepared in array_record format reads and decodes
  through ``tfds.data_source`` with pillow and no TensorFlow; ``tests/data/test_sources.py`` keeps
  that checked). *Encoding* an ``Image`` feature (i.e. building those datasets) needs TensorFlow,
  which is why they have to be built elsewhere with ``tfds build``.

Fashion-MNIST, the default dataset, is prepared here from its idx files by ``SslxFashionMnist``,
a tfds builder whose features are a raw ``Tensor`` (no TensorFlow needed to write it either).

Note: ``tfds.data_source`` on a dataset that is not prepared tries to download and build it, so
``load_source`` checks ``is_prepared()`` first and never lets tfds do that.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import shutil
import struct
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "IdxFormatError",
    "SslxFashionMnist",
    "find_fashion_mnist_dir",
    "get_dataset_info",
    "load_source",
    "prepare_fashion_mnist",
    "read_idx",
    "resolve_data_dir",
]

log = logging.getLogger(__name__)

DATA_DIR_ENV = "SSLX_DATA_DIR"
FASHION_MNIST_DIR_ENV = "SSLX_FASHION_MNIST_DIR"
# Where Debian's `dataset-fashion-mnist` package puts the idx files (a tuple tests can replace).
SYSTEM_FASHION_MNIST_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)
# The dataset authors' own (Zalando Research) download location, from their README.
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Downloads go to <data_dir>/downloads/<this>.
_DOWNLOAD_SUBDIR = "sslx_fashion_mnist"

# split -> (images file, labels file), without the optional ".gz".
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_SIZES = {"train": 60000, "test": 10000}
FASHION_MNIST_CLASSES = (
  "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


class DatasetNotFoundError(FileNotFoundError):
  """A dataset is neither prepared nor preparable from anything found; the message says why."""


class IdxFormatError(ValueError):
  """An idx file is corrupt: wrong magic number, wrong size, or not a valid gzip stream."""


# --------------------------------------------------------------------------------------------
# The registry.


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the library knows about one dataset.

  mean / std are per channel, for pixels scaled to [0, 1] (divide uint8 by 255 first).
  ``prepare`` builds the array_record files under a data dir if sslx can do it itself
  (``prepare(data_dir=..., source_dir=..., allow_download=...)``); None means the user must build
  them, as ``prepare_hint`` says.
  """

  name: str
  tfds_name: str
  image_shape: tuple[int, int, int]  # (H, W, C)
  num_classes: int
  train_split: str
  test_split: str
  mean: tuple[float, ...]
  std: tuple[float, ...]
  prepare: Optional[Callable[..., None]] = None
  prepare_hint: str = ""


def _tfds_build_hint(tfds_name: str, extra: str = "") -> str:
  return (
    f"build it on a machine with TensorFlow installed: `pip install tensorflow tensorflow-datasets`"
    f" then `tfds build {tfds_name} --file_format=array_record --data_dir=DATA_DIR`{extra},"
    f" and copy DATA_DIR/{tfds_name}/ into this data dir (or point $SSLX_DATA_DIR /"
    " --config.data.data_dir at DATA_DIR)"
  )


def resolve_data_dir(data_dir: Optional[str | os.PathLike] = None) -> str:
  """The data dir to use: ``data_dir`` if given, else $SSLX_DATA_DIR, else ~/tensorflow_datasets."""
  if data_dir is None or str(data_dir) == "":
    data_dir = os.environ.get(DATA_DIR_ENV) or "~/tensorflow_datasets"
  return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))


# --------------------------------------------------------------------------------------------
# idx files.

_IDX_UBYTE = 0x08


def _open_idx_bytes(path: Path) -> bytes:
  raw = path.read_bytes()
  if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
    try:
      return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
      raise IdxFormatError(
        f"{path}: not a valid gzip file ({e}); the file is corrupt or truncated, delete it and"
        " get it again") from e
  return raw


def read_idx(path: str | os.PathLike, *, ndim: int) -> np.ndarray:
  """Reads an unsigned-byte idx file (gzipped or plain) with ``ndim`` dimensions into uint8.

  Checks the magic number (0x0000 08 ndim) and that the payload size matches the header.
  Raises IdxFormatError otherwise.
  """
  path = Path(path)
  data = _open_idx_bytes(path)
  if len(data) < 4 + 4 * ndim:
    raise IdxFormatError(f"{path}: {len(data)} bytes is too short for an idx file header")
  magic = struct.unpack(">I", data[:4])[0]
  expected = (_IDX_UBYTE << 8) | ndim
  if magic != expected:
    raise IdxFormatError(
      f"{path}: bad magic number 0x{magic:08x}, expected 0x{expected:08x} (an unsigned-byte idx"
      f" file with {ndim} dimension(s)); the file is corrupt or not what its name says")
  dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
  offset = 4 + 4 * ndim
  want = int(np.prod(dims, dtype=np.int64))
  if len(data) - offset != want:
    raise IdxFormatError(
      f"{path}: header says shape {dims} ({want} bytes) but the file holds {len(data) - offset}"
      " bytes of data; the file is corrupt or truncated")
  return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _idx_file(directory: Path, base: str) -> Optional[Path]:
  for name in (base + ".gz", base):
    if (directory / name).is_file():
      return directory / name
  return None


def read_fashion_mnist_split(directory: str | os.PathLike, split: str,
                             expected_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split of idx files from a directory: images uint8 [N, 28, 28, 1], labels [N]."""
  directory = Path(directory)
  images_base, labels_base = FASHION_MNIST_FILES[split]
  images_path, labels_path = _idx_file(directory, images_base), _idx_file(directory, labels_base)
  if images_path is None or labels_path is None:
    raise DatasetNotFoundError(f"{directory}: missing {images_base}[.gz] or {labels_base}[.gz]")
  images = read_idx(images_path, ndim=3)
  labels = read_idx(labels_path, ndim=1)
  if images.shape[1:] != (28, 28):
    raise IdxFormatError(f"{images_path}: images are {images.shape[1:]}, expected (28, 28)")
  if images.shape[0] != labels.shape[0]:
    raise IdxFormatError(
      f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]}"
      " labels")
  if expected_size is not None and images.shape[0] != expected_size:
    raise IdxFormatError(
      f"{images_path}: {images.shape[0]} examples, expected {expected_size} for the {split} split")
  if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
    raise IdxFormatError(f"{labels_path}: label {labels.max()} out of range 0..9")
  return images[..., None], labels


def _missing_files(directory: Path) -> list[str]:
  bases = [b for pair in FASHION_MNIST_FILES.values() for b in pair]
  return [b + "[.gz]" for b in bases if _idx_file(directory, b) is None]


def _download_dir(data_dir: str) -> Path:
  return Path(data_dir) / "downloads" / _DOWNLOAD_SUBDIR


def find_fashion_mnist_dir(source_dir: Optional[str | os.PathLike] = None,
                           data_dir: Optional[str | os.PathLike] = None
                           ) -> tuple[Optional[Path], list[str]]:
  """The first directory holding all four Fashion-MNIST idx files, and a line per place looked.

  Order: ``source_dir`` (from --config.data.source_dir), $SSLX_FASHION_MNIST_DIR, the system
  directories (/usr/share/datasets/fashion-mnist), then an earlier download in
  <data_dir>/downloads/sslx_fashion_mnist.
  """
  candidates: list[tuple[str, Optional[str]]] = [
    ("source_dir argument (--config.data.source_dir)", None if source_dir is None
     else os.fspath(source_dir)),
    (f"${FASHION_MNIST_DIR_ENV}", os.environ.get(FASHION_MNIST_DIR_ENV) or None),
  ]
  candidates += [("system directory", d) for d in SYSTEM_FASHION_MNIST_DIRS]
  if data_dir is not None:
    candidates.append(("earlier download", str(_download_dir(resolve_data_dir(data_dir)))))
  looked = []
  for what, directory in candidates:
    if directory is None:
      looked.append(f"{what}: not given")
      continue
    path = Path(os.path.expanduser(directory))
    if not path.is_dir():
      looked.append(f"{what}: {path} (no such directory)")
      continue
    missing = _missing_files(path)
    if missing:
      looked.append(f"{what}: {path} (missing {', '.join(missing)})")
      continue
    return path, looked
  return None, looked


def _download_fashion_mnist(data_dir: str) -> Path:
  """Downloads the four gzipped idx files into <data_dir>/downloads/sslx_fashion_mnist."""
  target = _download_dir(data_dir)
  target.mkdir(parents=True, exist_ok=True)
  for pair in FASHION_MNIST_FILES.values():
    for base in pair:
      dest = target / (base + ".gz")
      if dest.is_file():
        continue
      url = FASHION_MNIST_URL + base + ".gz"
      log.info("Downloading %s to %s", url, dest)
      with tempfile.NamedTemporaryFile(dir=target, delete=False, suffix=".part") as tmp:
        try:
          with urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, tmp)
        except BaseException:
          tmp.close()
          os.unlink(tmp.name)
          raise
      os.replace(tmp.name, dest)
  return target


# --------------------------------------------------------------------------------------------
# The Fashion-MNIST builder.


class SslxFashionMnist(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST from its idx files, written as array_record in file order (no shuffling).

  Named ``sslx_fashion_mnist`` so it does not collide with tfds's own ``fashion_mnist`` builder
  (which uses an ``Image`` feature and so needs TensorFlow to build). ``source_dir`` is the
  directory of idx files; it is only needed to build, not to read.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Fashion-MNIST idx files as raw uint8 tensors, in file order."}

  def __init__(self, *, source_dir: Optional[str | os.PathLike] = None,
               expected_sizes: Optional[dict[str, int]] = None, **kwargs: Any):
    self._source_dir = None if source_dir is None else Path(source_dir)
    self._expected_sizes = expected_sizes
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="Fashion-MNIST (Zalando Research): 28x28 grayscale images of 10 clothing"
                  " classes; 60000 train and 10000 test examples, in the idx files' order.",
      features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8,
                                       encoding=tfds.features.Encoding.BYTES),
        "label": tfds.features.ClassLabel(names=list(FASHION_MNIST_CLASSES)),
      }),
      supervised_keys=("image", "label"),
      homepage="https://github.com/zalandoresearch/fashion-mnist",
      disable_shuffling=True,  # keep the idx order; sslx's pipeline shuffles
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    if self._source_dir is None:
      raise DatasetNotFoundError("SslxFashionMnist needs source_dir (the idx files) to build")
    splits = {}
    for split in FASHION_MNIST_FILES:
      expected = None if self._expected_sizes is None else self._expected_sizes[split]
      # Parse (and validate) before tfds starts writing anything.
      images, labels = read_fashion_mnist_split(self._source_dir, split, expected)
      splits[split] = self._generate_examples(images, labels)
    return splits

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
    for i in range(labels.shape[0]):
      yield i, {"image": images[i], "label": int(labels[i])}


def _not_found_message(looked: Sequence[str], download_note: str, data_dir: str) -> str:
  lines = ["Fashion-MNIST is not prepared in " + data_dir + " and its idx files were not found."]
  lines.append("Looked in:")
  lines += [f"  - {entry}" for entry in looked]
  lines.append(f"  - download from {FASHION_MNIST_URL}: {download_note}")
  lines.append("To get the data, do one of:")
  lines.append("  - `apt-get install dataset-fashion-mnist` (puts the files in "
               "/usr/share/datasets/fashion-mnist);")
  files = ", ".join(b + ".gz" for pair in FASHION_MNIST_FILES.values() for b in pair)
  lines.append(f"  - put the four files ({files})"
               f" in a directory and set {FASHION_MNIST_DIR_ENV}=DIR, or pass"
               " --config.data.source_dir=DIR;")
  lines.append("  - allow the download (allow_download=True) on a machine with network access.")
  return "\n".join(lines)


def prepare_fashion_mnist(*, data_dir: Optional[str | os.PathLike] = None,
                          source_dir: Optional[str | os.PathLike] = None,
                          allow_download: bool = True) -> str:
  """Builds sslx_fashion_mnist under ``data_dir`` unless it is already there; returns the data dir.

  Already prepared -> returns at once (the idx files are not even looked for). Otherwise the idx
  files come from the first of ``find_fashion_mnist_dir``'s places, else (only if
  ``allow_download``) are downloaded from the authors' URL into <data_dir>/downloads. Nothing
  found -> DatasetNotFoundError naming every place looked; a corrupt file -> IdxFormatError.
  """
  data_dir = resolve_data_dir(data_dir)
  builder = SslxFashionMnist(data_dir=data_dir)
  if builder.is_prepared():
    return data_dir
  found, looked = find_fashion_mnist_dir(source_dir, data_dir)
  expected_sizes = None
  if found is None:
    if not allow_download:
      raise DatasetNotFoundError(_not_found_message(looked, "not allowed (allow_download=False)",
                                                    data_dir))
    try:
      found = _download_fashion_mnist(data_dir)
    except OSError as e:  # URLError, timeouts, HTTP errors are OSErrors
      raise DatasetNotFoundError(_not_found_message(looked, f"failed: {e}", data_dir)) from e
    expected_sizes = FASHION_MNIST_SIZES
  log.info("Preparing sslx_fashion_mnist in %s from %s", data_dir, found)
  builder = SslxFashionMnist(data_dir=data_dir, source_dir=found, expected_sizes=expected_sizes,
                             file_format="array_record")
  builder.download_and_prepare()
  return data_dir


DATASETS: dict[str, DatasetInfo] = {
  "fashion_mnist": DatasetInfo(
    name="fashion_mnist", tfds_name="sslx_fashion_mnist", image_shape=(28, 28, 1),
    num_classes=10, train_split="train", test_split="test",
    mean=(0.2860,), std=(0.3530,),
    prepare=prepare_fashion_mnist,
    prepare_hint="prepared automatically from its idx files (apt-get install"
                 " dataset-fashion-mnist, $SSLX_FASHION_MNIST_DIR, --config.data.source_dir, or a"
                 " download)"),
  "cifar10": DatasetInfo(
    name="cifar10", tfds_name="cifar10", image_shape=(32, 32, 3), num_classes=10,
    train_split="train", test_split="test",
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    prepare_hint=_tfds_build_hint("cifar10")),
  "cifar100": DatasetInfo(
    name="cifar100", tfds_name="cifar100", image_shape=(32, 32, 3), num_classes=100,
    train_split="train", test_split="test",
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    prepare_hint=_tfds_build_hint("cifar100")),
  # Self-supervised pretraining uses the 100k unlabelled images too (their label is -1).
  "stl10": DatasetInfo(
    name="stl10", tfds_name="stl10", image_shape=(96, 96, 3), num_classes=10,
    train_split="train+unlabelled", test_split="test",
    mean=(0.4467, 0.4398, 0.4066), std=(0.2603, 0.2566, 0.2713),
    prepare_hint=_tfds_build_hint("stl10")),
  # ImageNet images have varying sizes (JPEG): image_shape is the nominal training resolution and
  # the images must be resized to it before batching. tfds needs the manually downloaded tars.
  "imagenet2012": DatasetInfo(
    name="imagenet2012", tfds_name="imagenet2012", image_shape=(224, 224, 3), num_classes=1000,
    train_split="train", test_split="validation",
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    prepare_hint=_tfds_build_hint(
      "imagenet2012", " (with ILSVRC2012_img_{train,val}.tar in DATA_DIR/downloads/manual)")),
}


def get_dataset_info(name: str) -> DatasetInfo:
  """The registry entry for ``name``; ValueError listing the known names if there is none."""
  try:
    return DATASETS[name]
  except KeyError:
    raise ValueError(
      f"Unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}") from None


def load_source(name: str, split: str, *, data_dir: Optional[str | os.PathLike] = None,
                source_dir: Optional[str | os.PathLike] = None, allow_download: bool = True):
  """A random-access source for one split: ``len(src)`` and ``src[i]`` ->
  ``{"image": uint8 [H, W, C], "label": int, ...}`` (tfds's ArrayRecordDataSource).

  ``split`` is a tfds split spec ("train", "test", "train+unlabelled", "train[:10%]", ...).
  fashion_mnist is prepared first if needed (see ``prepare_fashion_mnist``); the other datasets
  must already be prepared in array_record format under the data dir, else DatasetNotFoundError
  says how to build them.
  """
  info = get_dataset_info(name)
  data_dir = resolve_data_dir(data_dir)
  if info.prepare is not None:
    info.prepare(data_dir=data_dir, source_dir=source_dir, allow_download=allow_download)
  else:
    builder = tfds.builder(info.tfds_name, data_dir=data_dir)
    if not builder.is_prepared():
      raise DatasetNotFoundError(
        f"Dataset {name!r} (tfds {info.tfds_name!r}) is not prepared: looked for"
        f" {builder.data_dir} (under the data dir {data_dir}, from the data_dir argument /"
        f" --config.data.data_dir, ${DATA_DIR_ENV} or ~/tensorflow_datasets). sslx cannot build"
        f" it without TensorFlow; {info.prepare_hint}.")
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
      raise DatasetNotFoundError(
        f"Dataset {name!r} in {builder.data_dir} is stored as {builder.info.file_format.value},"
        f" but sslx reads array_record (random access, no TensorFlow); {info.prepare_hint}.")
  return tfds.data_source(info.tfds_name, split=split, data_dir=data_dir)
