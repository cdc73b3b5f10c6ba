"""Offline linear probe against scikit-learn's LogisticRegression, plus the results table."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from sslx.evaluate import format_table, linear_probe
from sslx.evaluate.linear import fit_logistic_regression, stratified_split

CANDIDATES = (0.0, 1e-5, 1e-4, 1e-3)


@pytest.fixture(scope="module")
def digits_probe(digits):
  return linear_probe(*digits, num_classes=10, weight_decays=CANDIDATES, seed=0)


def standardize(x_train, x_test):
  mean, std = x_train.mean(0), x_train.std(0)
  std = np.where(std < 1e-6, 1.0, std)
  return (x_train - mean) / std, (x_test - mean) / std


def sklearn_top1(x_train, y_train, x_test, y_test, weight_decay):
  """sklearn minimises mean CE + ||W||^2 / (2 C n): C = 1 / (weight_decay * n)."""
  z_train, z_test = standardize(x_train.astype(np.float64), x_test.astype(np.float64))
  if weight_decay == 0:
    clf = LogisticRegression(C=np.inf, max_iter=5000)
  else:
    clf = LogisticRegression(C=1.0 / (weight_decay * len(y_train)), max_iter=5000, tol=1e-6)
  with threadpool_limits(1):  # sklearn's default thread pools crawl on a small, shared CPU
    return clf.fit(z_train, y_train).score(z_test, y_test), clf


def test_digits_agrees_with_sklearn(digits, digits_probe):
  result = digits_probe
  assert result["weight_decay"] in CANDIDATES
  assert set(result["holdout_top1"]) == set(CANDIDATES)
  assert all(0.0 <= a <= 1.0 for a in result["holdout_top1"].values())
  sk, _ = sklearn_top1(*digits, result["weight_decay"])
  assert 0.0 <= result["top1"] <= 1.0
  assert abs(result["top1"] - sk) <= 0.015, (result, sk)
  assert result["top1"] > 0.93


@pytest.mark.parametrize("weight_decay", [1e-3, 3e-2])
def test_single_candidate_agrees_with_sklearn(digits, weight_decay):
  result = linear_probe(*digits, num_classes=10, weight_decays=(weight_decay,))
  assert result["weight_decay"] == weight_decay and result["holdout_top1"] == {}
  sk, _ = sklearn_top1(*digits, weight_decay)
  assert abs(result["top1"] - sk) <= 0.015, (result, sk)


def test_objective_minimiser_matches_sklearn_coefficients(digits):
  # Same objective => same minimiser: catches a wrong regulariser scale or an unregularised fit.
  x_train, y_train, _, _ = digits
  weight_decay = 1e-2
  z_train, _ = standardize(x_train, x_train)
  params, iters = fit_logistic_regression(z_train, y_train, num_classes=10,
                                          weight_decay=weight_decay, tol=1e-5)
  assert 0 < iters < 500
  _, clf = sklearn_top1(x_train, y_train, x_train, y_train, weight_decay)
  w = np.asarray(params["w"]).T  # [C, D] like clf.coef_
  np.testing.assert_allclose(w, clf.coef_, atol=2e-3 * np.abs(clf.coef_).max())
  b = np.asarray(params["b"])
  # The bias is not regularised, so it is defined up to a constant shift across classes.
  np.testing.assert_allclose(b - b.mean(), clf.intercept_ - clf.intercept_.mean(), atol=2e-2)


def test_preconditioning_keeps_the_minimiser_and_saves_iterations():
  # Strongly correlated features (low rank + a little noise): plain L-BFGS crawls, the
  # preconditioned one (W = P V) reaches the same minimiser in far fewer iterations. (The digits
  # train shape, so the compiled fit is reused.)
  rng = np.random.default_rng(2)
  n, dim, rank, num_classes = 1257, 64, 6, 10
  y = rng.integers(0, num_classes, n)
  z = rng.standard_normal((num_classes, rank))[y] + rng.standard_normal((n, rank))
  x = z @ rng.standard_normal((rank, dim)) + 0.05 * rng.standard_normal((n, dim))
  x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
  identity = (np.eye(dim, dtype=np.float32), np.eye(dim, dtype=np.float32))
  common = dict(num_classes=num_classes, weight_decay=1e-3, tol=1e-5)
  plain, plain_iters = fit_logistic_regression(x, y, preconditioner=identity, **common)
  fast, fast_iters = fit_logistic_regression(x, y, **common)
  assert fast_iters < plain_iters / 2, (fast_iters, plain_iters)
  np.testing.assert_allclose(fast["w"], plain["w"], atol=5e-3 * np.abs(plain["w"]).max())


def test_linearly_separable_toy_reaches_100_percent():
  rng = np.random.default_rng(0)
  num_classes, dim = 4, 6
  centers = 6.0 * np.eye(num_classes, dim)
  y_train, y_test = rng.integers(0, num_classes, 400), rng.integers(0, num_classes, 200)
  x_train = centers[y_train] + 0.5 * rng.standard_normal((400, dim))
  x_test = centers[y_test] + 0.5 * rng.standard_normal((200, dim))
  result = linear_probe(x_train, y_train, x_test, y_test, num_classes=num_classes)
  assert result["top1"] == 1.0 and result["train_top1"] == 1.0
  assert result["weight_decay"] in (0.0, 1e-5, 1e-4, 1e-3)
  # Standardisation uses train statistics, so a per-feature affine change of all the features
  # (applied to train and test alike) gives the same probe.
  scale, shift = rng.uniform(0.01, 100.0, dim), rng.uniform(-50.0, 50.0, dim)
  moved = linear_probe(x_train * scale + shift, y_train, x_test * scale + shift, y_test,
                       num_classes=num_classes)
  assert moved["top1"] == 1.0 and moved["weight_decay"] == result["weight_decay"]
  # Test statistics are never used: a test split of one class only (whose own mean and std are
  # far from the train ones) is still classified perfectly.
  only_0 = y_test == 0
  single = linear_probe(x_train, y_train, x_test[only_0], y_test[only_0], num_classes=num_classes)
  assert single["top1"] == 1.0


def test_holdout_scores_and_choice(digits, digits_probe):
  # The holdout accuracies are those of a probe fitted on the seeded stratified split (train
  # statistics of the fitted rows only), and the choice is their argmax, ties to the larger decay.
  x_train, y_train, _, _ = digits
  fit, hold = stratified_split(y_train, 0.1, seed=0)
  for weight_decay in (1e-4, 1e-3):
    sk, _ = sklearn_top1(x_train[fit], y_train[fit], x_train[hold], y_train[hold], weight_decay)
    assert abs(digits_probe["holdout_top1"][weight_decay] - sk) <= 0.015
  scores = digits_probe["holdout_top1"]
  best = max(scores.values())
  assert digits_probe["weight_decay"] == max(wd for wd, a in scores.items() if a == best)


def test_deterministic_given_seed(digits, digits_probe):
  again = linear_probe(*digits, num_classes=10, weight_decays=CANDIDATES, seed=0)
  assert again == digits_probe


def test_stratified_split_is_seeded_and_stratified():
  labels = np.repeat(np.arange(5), [10, 20, 30, 40, 1])
  fit, hold = stratified_split(labels, 0.1, seed=0)
  assert np.intersect1d(fit, hold).size == 0
  np.testing.assert_array_equal(np.sort(np.concatenate([fit, hold])), np.arange(labels.size))
  np.testing.assert_array_equal(np.bincount(labels[hold], minlength=5), [1, 2, 3, 4, 0])
  again_fit, again_hold = stratified_split(labels, 0.1, seed=0)
  np.testing.assert_array_equal(hold, again_hold)
  _, other_hold = stratified_split(labels, 0.1, seed=1)
  assert not np.array_equal(hold, other_hold)


def test_invalid_inputs_raise(digits):
  x_train, y_train, x_test, y_test = digits
  with pytest.raises(ValueError, match="train_labels"):
    linear_probe(x_train, y_train[:-1], x_test, y_test, num_classes=10)
  with pytest.raises(ValueError, match="train_labels"):
    linear_probe(x_train, y_train[:, None], x_test, y_test, num_classes=10)
  with pytest.raises(ValueError, match="test_labels"):
    linear_probe(x_train, y_train, x_test, y_test[:5], num_classes=10)
  with pytest.raises(ValueError, match="test_labels"):
    linear_probe(x_train, y_train, x_test, np.where(y_test == 0, 10, y_test), num_classes=10)
  with pytest.raises(ValueError, match="test_features has dim"):
    linear_probe(x_train, y_train, x_test[:, :10], y_test, num_classes=10)
  with pytest.raises(ValueError, match="train_features"):
    linear_probe(x_train[:, :, None], y_train, x_test, y_test, num_classes=10)
  with pytest.raises(ValueError, match="holdout_fraction"):
    linear_probe(x_train, y_train, x_test, y_test, num_classes=10, holdout_fraction=1.0)
  with pytest.raises(ValueError, match="weight_decays"):
    linear_probe(x_train, y_train, x_test, y_test, num_classes=10, weight_decays=(-1.0,))
  with pytest.raises(ValueError, match="weight_decays"):
    linear_probe(x_train, y_train, x_test, y_test, num_classes=10, weight_decays=())


def test_format_table():
  table = format_table({
      "SimCLR encoder": {"knn_top1": 0.86, "linear_top1": 0.85},
      "raw pixels": {"linear_top1": 0.8412, "knn_top1": 0.8},
      "random encoder": {"knn_top1": 0.3, "feature_dim": 512},
  })
  lines = table.splitlines()
  assert len(lines) == 5
  assert len({len(line) for line in lines}) == 1  # aligned
  assert lines[0].split("|")[1:4] == [" representation ", " kNN top-1 (%) ",
                                      " linear top-1 (%) "]
  assert [c.strip() for c in lines[2].split("|")[1:-1]] == ["SimCLR encoder", "86.0", "85.0",
                                                            "-"]
  assert [c.strip() for c in lines[3].split("|")[1:-1]] == ["raw pixels", "80.0", "84.1", "-"]
  assert [c.strip() for c in lines[4].split("|")[1:-1]] == ["random encoder", "30.0", "-", "512"]
