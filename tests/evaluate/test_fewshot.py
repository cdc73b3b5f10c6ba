"""Few-shot ridge probes against a float64 NumPy solve, shot sampling, and label fractions."""

import numpy as np
import pytest

from sslx.data.sources import label_fraction
from sslx.evaluate import fewshot, linear_probe


def reference_ridge_scores(x_train, y_train, x_test, num_classes, l2_reg):
  """big_vision's least-squares classifier written out in float64 with the primal normal
  equations (np.linalg.solve), whatever the shape."""
  x_train = np.asarray(x_train, np.float64)
  mean, std = x_train.mean(0), x_train.std(0)
  std = np.where(std < 1e-5, 1.0, std + 1e-5)

  def design(x):
    z = (np.asarray(x, np.float64) - mean) / std
    return np.concatenate([z, np.full((len(z), 1), 100.0)], axis=1)

  a = design(x_train)
  targets = 2.0 * np.eye(num_classes)[y_train] - 1.0
  w = np.linalg.solve(a.T @ a + l2_reg * np.eye(a.shape[1]), a.T @ targets)
  return design(x_test) @ w


@pytest.mark.parametrize("shots,l2_reg", [(1, 1024.0), (5, 1024.0), (25, 1.0), (25, 1024.0)])
def test_ridge_matches_float64_solve(digits, shots, l2_reg):
  # 1 and 5 shots (10 and 50 rows < 65 columns) take the dual path, 25 shots the primal one.
  x_train, y_train, x_test, _ = digits
  idx = fewshot.sample_shots(y_train, shots, num_classes=10, seed=3)
  params = fewshot.fit_ridge_classifier(x_train[idx], y_train[idx], num_classes=10,
                                        l2_reg=l2_reg)
  got = np.asarray(fewshot.ridge_scores(params, x_test))
  expected = reference_ridge_scores(x_train[idx], y_train[idx], x_test, 10, l2_reg)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-8 * np.abs(expected).max())
  np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))


def test_shot_sampling_is_class_balanced_seeded_and_nested(digits):
  _, y_train, _, _ = digits
  for shots in (1, 5, 25):
    idx = fewshot.sample_shots(y_train, shots, num_classes=10, seed=0)
    assert len(set(idx.tolist())) == idx.size == 10 * shots
    np.testing.assert_array_equal(np.bincount(y_train[idx], minlength=10), shots)
  np.testing.assert_array_equal(fewshot.sample_shots(y_train, 5, num_classes=10, seed=4),
                                fewshot.sample_shots(y_train, 5, num_classes=10, seed=4))
  assert set(fewshot.sample_shots(y_train, 5, num_classes=10, seed=4).tolist()) != set(
      fewshot.sample_shots(y_train, 5, num_classes=10, seed=5).tolist())
  # A seed's smaller shot sets are inside its larger ones (big_vision's per-class prefixes).
  assert set(fewshot.sample_shots(y_train, 5, num_classes=10, seed=2).tolist()) <= set(
      fewshot.sample_shots(y_train, 10, num_classes=10, seed=2).tolist())
  with pytest.raises(ValueError, match="shots=1000"):
    fewshot.sample_shots(y_train, 1000, num_classes=10, seed=0)
  with pytest.raises(ValueError, match="shots must"):
    fewshot.sample_shots(y_train, 0, num_classes=10, seed=0)


def test_fewshot_probe_per_seed_and_summary(digits):
  x_train, y_train, x_test, y_test = digits
  result = fewshot.fewshot_probe(x_train, y_train, x_test, y_test, num_classes=10,
                                 shots=(1, 10), seeds=(0, 1))
  for seed in (0, 1):
    idx = fewshot.sample_shots(y_train, 10, num_classes=10, seed=seed)
    expected = reference_ridge_scores(x_train[idx], y_train[idx], x_test, 10, 1024.0)
    assert result["per_seed"][seed][10] == np.mean(expected.argmax(1) == y_test)
  runs = [result["per_seed"][s][10] for s in (0, 1)]
  assert result["top1"][10] == pytest.approx(np.mean(runs))
  assert result["interval"][10]["n"] == 2
  assert result["top1"][10] > result["top1"][1] > 0.3  # chance is 0.1
  assert result["top1"][10] > 0.85
  assert "l2_reg=1024" in result["protocol"]
  with pytest.raises(ValueError, match="test_features has dim"):
    fewshot.fewshot_probe(x_train, y_train, x_test[:, :3], y_test, num_classes=10)
  with pytest.raises(ValueError, match="l2_reg"):
    fewshot.fit_ridge_classifier(x_train, y_train, num_classes=10, l2_reg=0.0)


def test_label_fraction_is_balanced_seeded_and_sized(digits):
  _, y_train, _, _ = digits
  counts = np.bincount(y_train, minlength=10)
  for fraction in (0.1, 0.25):
    idx = label_fraction(y_train, fraction, seed=0)
    np.testing.assert_array_equal(np.bincount(y_train[idx], minlength=10),
                                  np.round(counts * fraction))
    assert np.all(np.diff(idx) > 0)  # sorted, no repeats
    np.testing.assert_array_equal(idx, label_fraction(y_train, fraction, seed=0))
    assert not np.array_equal(idx, label_fraction(y_train, fraction, seed=1))
  with pytest.raises(ValueError, match="keeps no example"):
    label_fraction(y_train, 0.001, seed=0)
  with pytest.raises(ValueError, match="fraction"):
    label_fraction(y_train, 1.0, seed=0)


def test_fraction_probe_equals_probe_on_the_subset(digits):
  x_train, y_train, x_test, y_test = digits
  kwargs = {"weight_decays": (1e-3,), "max_iters": 200}
  result = fewshot.label_fraction_probes(x_train, y_train, x_test, y_test, num_classes=10,
                                         fractions=(0.1,), seed=2, **kwargs)
  idx = label_fraction(y_train, 0.1, seed=2)
  direct = linear_probe(x_train[idx], y_train[idx], x_test, y_test, num_classes=10, seed=2,
                        **kwargs)
  assert result["linear_top1@10%"] == direct["top1"]
  assert result["num_labels"]["linear_top1@10%"] == idx.size
  assert 0.6 < result["linear_top1@10%"] < 1.0
  assert fewshot.fraction_key("linear_top1", 0.01) == "linear_top1@1%"
