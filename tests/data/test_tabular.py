"""sslx.data.tabular: the stratified split, standardisation fitted on the training rows only, the
clear refusal of tables that would need a download, and the endless batches."""

import numpy as np
import pytest

from sslx.data import tabular


def test_the_split_is_stratified_disjoint_complete_and_fixed_by_the_seed():
  features, labels, _ = tabular.load_table("breast_cancer")
  split = tabular.load_split("breast_cancer", seed=3)
  assert split.train_features.dtype == np.float32 and split.train_labels.dtype == np.int32
  assert len(split.train_labels) + len(split.test_labels) == len(labels)
  assert len(split.test_labels) == round(0.2 * len(labels))
  # Every class keeps its share in both parts, to within one row.
  for part in (split.train_labels, split.test_labels):
    counts = np.bincount(part, minlength=2)
    expected = np.bincount(labels) * len(part) / len(labels)
    assert np.all(np.abs(counts - expected) <= 1), (counts, expected)
  # Undoing the standardisation gives back distinct rows of the table, every row exactly once.
  rows = np.concatenate([split.train_features, split.test_features]) * split.std + split.mean
  order = np.lexsort(features.T)
  np.testing.assert_allclose(rows[np.lexsort(rows.T)], features[order], rtol=1e-5, atol=1e-4)
  same = tabular.load_split("breast_cancer", seed=3)
  np.testing.assert_array_equal(same.test_features, split.test_features)
  other = tabular.load_split("breast_cancer", seed=4)
  assert not np.array_equal(other.test_labels, split.test_labels)


def test_the_scaler_sees_the_training_rows_only():
  split = tabular.load_split("wine", seed=0)
  features, _, _ = tabular.load_table("wine")
  raw_train = split.train_features.astype(np.float64) * split.std + split.mean
  np.testing.assert_allclose(split.mean, raw_train.mean(0), rtol=1e-6)
  np.testing.assert_allclose(split.std, raw_train.std(0), rtol=1e-6)
  # The statistics of the whole table differ: the test rows did not enter them.
  assert not np.allclose(split.mean, features.mean(0))
  np.testing.assert_allclose(split.train_features.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(split.train_features.std(0), 1, atol=1e-5)
  # Changing the test rows changes nothing on the training side.
  train, test = features[:100], features[100:]
  a = tabular.standardize(train, test)
  b = tabular.standardize(train, test * 10 + 3)
  for x, y in zip((a[0], a[2], a[3]), (b[0], b[2], b[3])):
    np.testing.assert_array_equal(x, y)


def test_a_constant_feature_becomes_zero_not_nan():
  split = tabular.load_split("digits", seed=0)
  assert np.isfinite(split.train_features).all() and np.isfinite(split.test_features).all()
  constant = split.std == 1.0
  assert constant.any()  # digits has always-blank pixels
  assert np.all(split.train_features[:, constant] == 0)
  assert split.num_classes == 10 and split.num_features == 64


@pytest.mark.parametrize("name, message", [("adult", "not bundled with scikit-learn"),
                                           ("higgs", "not bundled with scikit-learn"),
                                           ("iris2", "must be one of")])
def test_tables_that_are_not_bundled_are_refused_by_name(name, message):
  with pytest.raises(ValueError, match=message) as error:
    tabular.load_split(name)
  assert repr(name) in str(error.value) and "breast_cancer" in str(error.value)


def test_bad_test_fraction_and_batch_size_are_refused():
  with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\), got 1.5"):
    tabular.load_split("wine", test_fraction=1.5)
  with pytest.raises(ValueError, match=r"batch_size must be in \[1, 5\].*got 6"):
    next(tabular.batches(np.zeros((5, 2)), 6, seed=0))


def test_batches_cover_every_row_once_per_epoch_then_reshuffle():
  rows = np.arange(10, dtype=np.float32)[:, None]
  stream = tabular.batches(rows, 5, seed=0)
  first_epoch = np.concatenate([next(stream), next(stream)])[:, 0]
  second_epoch = np.concatenate([next(stream), next(stream)])[:, 0]
  assert sorted(first_epoch) == list(range(10)) == sorted(second_epoch)
  assert not np.array_equal(first_epoch, second_epoch)
