"""Small tabular datasets for tabular self-supervised methods (T-JEPA): scikit-learn's bundled
tables, a fixed stratified train / test split per seed, and standardisation fitted on train only.

Only tables that ship inside scikit-learn are loaded (nothing downloads). The larger benchmarks of
the tabular papers (adult, higgs, jannis, ...) are named in `DOWNLOAD_ONLY` so that asking for
one gives a clear error instead of a silent fetch.
"""

from typing import NamedTuple

import numpy as np

# name -> the sklearn.datasets loader (imported lazily: scikit-learn is only needed here).
BUNDLED = {"breast_cancer": "load_breast_cancer", "wine": "load_wine", "digits": "load_digits"}
# The T-JEPA paper's benchmarks (Thimonier et al. 2024, Table 1): downloaded by the authors'
# scripts, never bundled with scikit-learn.
DOWNLOAD_ONLY = ("adult", "higgs", "jannis", "helena", "aloi", "california")
DEFAULT_TEST_FRACTION = 0.2


class TabularSplit(NamedTuple):
  """One train / test split of a table, features standardised with the train split's statistics.

  train_features / test_features: float32 [N, F]; train_labels / test_labels: int32 [N];
  mean / std: float64 [F], the train split's statistics the features were standardised with.
  """

  train_features: np.ndarray
  train_labels: np.ndarray
  test_features: np.ndarray
  test_labels: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  feature_names: tuple[str, ...]
  num_classes: int

  @property
  def num_features(self) -> int:
    return self.train_features.shape[1]


def check_name(name: str) -> None:
  """A ValueError unless `name` is a bundled table; the download-only ones say so."""
  if name in BUNDLED:
    return
  if name in DOWNLOAD_ONLY:
    raise ValueError(
        f"tabular dataset {name!r} is not bundled with scikit-learn and sslx does not download "
        f"it; bundled tables: {sorted(BUNDLED)}")
  raise ValueError(f"tabular dataset must be one of {sorted(BUNDLED)}, got {name!r}")


def load_table(name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """The whole table: features float64 [N, F], labels int32 [N], feature names."""
  check_name(name)
  from sklearn import datasets
  bunch = getattr(datasets, BUNDLED[name])()
  names = tuple(str(n) for n in getattr(bunch, "feature_names", range(bunch.data.shape[1])))
  return bunch.data.astype(np.float64), bunch.target.astype(np.int32), names


def standardize(train: np.ndarray, test: np.ndarray):
  """(train, test) standardised with the train split's per-feature mean and std, and those
  statistics. Constant features (std 0, e.g. digits' always-blank corner pixels) keep scale 1,
  so they become 0 instead of NaN."""
  mean = train.mean(axis=0)
  std = train.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  return (train - mean) / std, (test - mean) / std, mean, std


def load_split(name: str, *, seed: int = 0,
               test_fraction: float = DEFAULT_TEST_FRACTION) -> TabularSplit:
  """A stratified split of `name` (the same for the same seed), standardised on its train part.

  Stratified so that every class keeps its share in both parts (the small tables are
  unbalanced: breast_cancer is 63% benign); the scaler never sees a test row.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
  from sklearn.model_selection import train_test_split
  features, labels, names = load_table(name)
  x_train, x_test, y_train, y_test = train_test_split(
      features, labels, test_size=test_fraction, stratify=labels, random_state=seed)
  x_train, x_test, mean, std = standardize(x_train, x_test)
  return TabularSplit(train_features=x_train.astype(np.float32), train_labels=y_train,
                      test_features=x_test.astype(np.float32), test_labels=y_test, mean=mean,
                      std=std, feature_names=names, num_classes=int(labels.max()) + 1)


def num_features(name: str) -> int:
  """Columns of the table `name` (what the T-JEPA tokenizer is built for)."""
  return load_table(name)[0].shape[1]


def batches(features: np.ndarray, batch_size: int, seed: int):
  """Endless shuffled batches of `features` [N, F] (a new permutation each epoch, the last
  incomplete batch of an epoch dropped so every step has the same shape)."""
  if not 1 <= batch_size <= len(features):
    raise ValueError(f"batch_size must be in [1, {len(features)}] (the training rows), got "
                     f"{batch_size}")
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(len(features))
    for start in range(0, len(order) - batch_size + 1, batch_size):
      yield features[order[start:start + batch_size]]
