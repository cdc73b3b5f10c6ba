"""Datasets and the input pipeline.

``sources``: the dataset registry (``DATASETS``, ``get_dataset_info``) and ``load_source``, which
returns a random-access tfds array_record source (preparing Fashion-MNIST, MNIST and the sklearn
digits on first use, through ``ImageArrayBuilder`` builders). ``pipeline``: grain iterators
yielding this process's rows of each global batch (``train_iterator``, ``eval_iterator``) and
``to_global_batch``, which makes global jax arrays.

On-device pieces live in their submodules, imported by name (``from sslx.data import augment``):
``augment`` (named augmentation ops and pipelines), ``randaugment`` (FixMatch's weak and strong
augmentation: ``translate``, ``randaugment``, ``cutout``), ``views`` (multi-crop), ``masks`` (MAE,
BEiT / iBOT and I-JEPA mask generators).
"""

# Registers randaugment's ops in augment's registry: importing any submodule runs this first, so
# a spec naming them always parses (augment itself cannot import randaugment, which subclasses
# its AugmentOp: that would be an import cycle).
from sslx.data import randaugment  # noqa: F401

from sslx.data.pipeline import (
  DEFAULT_READ_OPTIONS,
  eval_iterator,
  to_global_batch,
  train_iterator,
)
from sslx.data.sources import (
  DATASETS,
  DatasetInfo,
  DatasetNotFoundError,
  IdxBuilder,
  IdxFormatError,
  ImageArrayBuilder,
  ResizedSource,
  SslxDigits,
  SslxFashionMnist,
  SslxMnist,
  digits_to_uint8,
  find_fashion_mnist_dir,
  get_dataset_info,
  load_source,
  prepare_digits,
  prepare_fashion_mnist,
  prepare_mnist,
  read_idx,
  read_idx_split,
  resize_and_center_crop,
  resolve_data_dir,
  stratified_split,
)

__all__ = [
  "DATASETS",
  "DEFAULT_READ_OPTIONS",
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
  "eval_iterator",
  "find_fashion_mnist_dir",
  "get_dataset_info",
  "load_source",
  "prepare_digits",
  "prepare_fashion_mnist",
  "prepare_mnist",
  "read_idx",
  "read_idx_split",
  "resize_and_center_crop",
  "resolve_data_dir",
  "stratified_split",
  "to_global_batch",
  "train_iterator",
]
