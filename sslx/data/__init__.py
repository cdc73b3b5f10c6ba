"""Datasets and the input pipeline.

``sources``: the dataset registry (``DATASETS``, ``get_dataset_info``) and ``load_source``, which
returns a random-access tfds array_record source (preparing Fashion-MNIST from its idx files on
first use). ``pipeline``: grain iterators yielding this process's rows of each global batch
(``train_iterator``, ``eval_iterator``) and ``to_global_batch``, which makes global jax arrays.
"""

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
  IdxFormatError,
  SslxFashionMnist,
  find_fashion_mnist_dir,
  get_dataset_info,
  load_source,
  prepare_fashion_mnist,
  read_idx,
  resolve_data_dir,
)

__all__ = [
  "DATASETS",
  "DEFAULT_READ_OPTIONS",
  "DatasetInfo",
  "DatasetNotFoundError",
  "IdxFormatError",
  "SslxFashionMnist",
  "eval_iterator",
  "find_fashion_mnist_dir",
  "get_dataset_info",
  "load_source",
  "prepare_fashion_mnist",
  "read_idx",
  "resolve_data_dir",
  "to_global_batch",
  "train_iterator",
]
