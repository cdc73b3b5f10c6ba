"""Weighted kNN against an independent float64 NumPy reference and scikit-learn's neighbours."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from sslx.evaluate import knn_accuracy, knn_classify
from sslx.evaluate.knn import nearest_neighbors
from sslx.sharding import make_mesh_from


def reference_knn(bank, bank_labels, query, num_classes, k, temperature):
  """Plain-loop float64 weighted kNN (Wu et al. 2018); also returns the decision margins.

  Returns (predictions, rank_gap, vote_gap): rank_gap is the smallest gap between the k-th and the
  (k+1)-th similarity, vote_gap the smallest relative gap between the two largest class votes.
  Large gaps mean float32 rounding cannot change the answer.
  """
  bank = np.asarray(bank, np.float64)
  query = np.asarray(query, np.float64)
  preds, rank_gaps, vote_gaps = [], [], []
  bank_unit = [row / np.sqrt(np.sum(row * row)) for row in bank]
  for q in query:
    q_unit = q / np.sqrt(np.sum(q * q))
    sims = np.array([float(np.dot(q_unit, b)) for b in bank_unit])
    order = np.argsort(-sims, kind="stable")
    if k < len(sims):
      rank_gaps.append(sims[order[k - 1]] - sims[order[k]])
    votes = [0.0] * num_classes
    for j in order[:k]:
      votes[int(bank_labels[j])] += np.exp(sims[j] / temperature)
    best = max(range(num_classes), key=lambda c: (votes[c], -c))  # ties -> lowest class
    preds.append(best)
    top2 = sorted(votes)[-2:]
    vote_gaps.append((top2[1] - top2[0]) / top2[1])
  rank_gap = min(rank_gaps) if rank_gaps else np.inf
  return np.array(preds), rank_gap, min(vote_gaps)


def random_problem(seed, n_bank=400, n_query=60, dim=16, num_classes=5):
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((num_classes, dim))
  bank_labels = rng.integers(0, num_classes, n_bank)
  query_labels = rng.integers(0, num_classes, n_query)
  bank = centers[bank_labels] + 1.5 * rng.standard_normal((n_bank, dim))
  query = centers[query_labels] + 1.5 * rng.standard_normal((n_query, dim))
  # Arbitrary positive row scales: the method must be scale-invariant (cosine similarity).
  bank *= rng.uniform(0.1, 10.0, (n_bank, 1))
  return (bank.astype(np.float32), bank_labels, query.astype(np.float32), query_labels,
          num_classes)


@pytest.mark.parametrize("seed,k,temperature", [
    (0, 1, 0.1), (1, 5, 0.07), (2, 20, 0.1), (3, 50, 0.5), (4, 200, 0.1), (5, 10, 2.0),
])
def test_matches_float64_reference(seed, k, temperature):
  bank, bank_labels, query, _, num_classes = random_problem(seed)
  expected, rank_gap, vote_gap = reference_knn(bank, bank_labels, query, num_classes, k,
                                               temperature)
  # The data is tie-free by a margin well above float32 rounding of the similarities (< 1e-6).
  assert rank_gap > 3e-6 and vote_gap > 1e-4, (rank_gap, vote_gap)
  got = knn_classify(bank, bank_labels, query, num_classes=num_classes, k=k,
                     temperature=temperature, batch_size=16)
  assert got.shape == (query.shape[0],)
  np.testing.assert_array_equal(got, expected)
  # A non-trivial problem: not every query gets the same answer.
  assert len(np.unique(expected)) > 1


def test_temperature_weights_change_the_vote():
  # One very close neighbour of class 0 and two farther ones of class 1: a sharp temperature lets
  # the close one win, a soft one lets the majority win. Plain majority voting would fail one case.
  bank = np.array([[1.0, 0.05], [1.0, 0.9], [1.0, -0.9], [-1.0, 0.0]], np.float32)
  labels = np.array([0, 1, 1, 2])
  query = np.array([[1.0, 0.0]], np.float32)
  for temperature in (0.05, 10.0):
    expected, _, _ = reference_knn(bank, labels, query, 3, 3, temperature)
    got = knn_classify(bank, labels, query, num_classes=3, k=3, temperature=temperature)
    np.testing.assert_array_equal(got, expected)
  assert knn_classify(bank, labels, query, num_classes=3, k=3, temperature=0.05)[0] == 0
  assert knn_classify(bank, labels, query, num_classes=3, k=3, temperature=10.0)[0] == 1


def assert_same_neighbours_as_sklearn(bank, query, sims, idx, k):
  """The k neighbour sets and similarities equal scikit-learn's brute-force cosine search."""
  with threadpool_limits(1):
    nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(
        bank.astype(np.float64))
    dist, sk_idx = nn.kneighbors(query.astype(np.float64))
  for row in range(query.shape[0]):
    assert set(idx[row]) == set(sk_idx[row])
  np.testing.assert_allclose(sims, 1.0 - dist, atol=1e-5)


def test_neighbour_sets_match_sklearn_cosine():
  bank, _, query, _, _ = random_problem(7, n_bank=300, n_query=50, dim=24)
  k = 15
  sims, idx = nearest_neighbors(bank, query, k=k, batch_size=16)
  assert_same_neighbours_as_sklearn(bank, query, sims, idx, k)
  assert np.all(np.diff(sims, axis=1) <= 0)  # most similar first


def test_k1_returns_label_of_nearest_neighbour():
  rng = np.random.default_rng(3)
  bank = rng.standard_normal((200, 8)).astype(np.float32)
  labels = rng.integers(0, 10, 200)
  # Queries are small perturbations of chosen bank rows, rescaled.
  rows = rng.choice(200, 40, replace=False)
  query = (3.0 * (bank[rows] + 0.01 * rng.standard_normal((40, 8)))).astype(np.float32)
  got = knn_classify(bank, labels, query, num_classes=10, k=1)
  np.testing.assert_array_equal(got, labels[rows])
  unit_b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  unit_q = query / np.linalg.norm(query, axis=1, keepdims=True)
  np.testing.assert_array_equal(got, labels[np.argmax(unit_q @ unit_b.T, axis=1)])


@pytest.mark.parametrize("batch_size", [1, 7, 16, 59, 60, 61, 4096])
def test_chunking_does_not_change_the_answer(batch_size):
  bank, bank_labels, query, _, num_classes = random_problem(11, n_query=60)
  one_chunk = knn_classify(bank, bank_labels, query, num_classes=num_classes, k=25,
                           batch_size=query.shape[0])
  got = knn_classify(bank, bank_labels, query, num_classes=num_classes, k=25,
                     batch_size=batch_size)
  np.testing.assert_array_equal(got, one_chunk)


def test_accuracy_and_input_types():
  bank, bank_labels, query, query_labels, num_classes = random_problem(13)
  preds = knn_classify(bank, bank_labels, query, num_classes=num_classes, k=20)
  acc = knn_accuracy(bank, bank_labels, query, query_labels, num_classes=num_classes, k=20)
  assert isinstance(acc, float) and 0.0 <= acc <= 1.0
  assert acc == pytest.approx(np.mean(preds == query_labels))
  assert acc > 0.5  # clustered data, chance is 0.2
  # jax arrays, float64 and bfloat16 features, int32 labels: same predictions.
  np.testing.assert_array_equal(
      knn_classify(jnp.asarray(bank), jnp.asarray(bank_labels, jnp.int32), jnp.asarray(query),
                   num_classes=num_classes, k=20), preds)
  np.testing.assert_array_equal(
      knn_classify(bank.astype(np.float64), bank_labels, query.astype(np.float64),
                   num_classes=num_classes, k=20), preds)
  bf16 = knn_classify(jnp.asarray(bank, jnp.bfloat16), bank_labels, query,
                      num_classes=num_classes, k=20)
  assert np.mean(bf16 == preds) > 0.9
  # Perfect, well separated clusters are classified perfectly.
  one_hot = np.eye(num_classes, dtype=np.float32)
  assert knn_accuracy(one_hot[bank_labels], bank_labels, one_hot[query_labels], query_labels,
                      num_classes=num_classes, k=5) == 1.0


def test_invalid_inputs_raise():
  bank, labels, query, qlabels, c = random_problem(0, n_bank=30, n_query=5)
  with pytest.raises(ValueError, match="k="):
    knn_classify(bank, labels, query, num_classes=c, k=31)
  with pytest.raises(ValueError, match="k must"):
    knn_classify(bank, labels, query, num_classes=c, k=0)
  with pytest.raises(ValueError, match="query_features has dim"):
    knn_classify(bank, labels, query[:, :3], num_classes=c, k=3)
  with pytest.raises(ValueError, match="bank_labels"):
    knn_classify(bank, labels[:-1], query, num_classes=c, k=3)
  with pytest.raises(ValueError, match="bank_labels"):
    knn_classify(bank, labels + c, query, num_classes=c, k=3)
  with pytest.raises(ValueError, match="bank_features"):
    knn_classify(bank[0], labels, query, num_classes=c, k=3)
  with pytest.raises(ValueError, match="query_features"):
    knn_classify(bank, labels, query[None], num_classes=c, k=3)
  with pytest.raises(ValueError, match="temperature"):
    knn_classify(bank, labels, query, num_classes=c, k=3, temperature=0.0)
  with pytest.raises(ValueError, match="batch_size"):
    knn_classify(bank, labels, query, num_classes=c, k=3, batch_size=0)
  with pytest.raises(ValueError, match="query_labels"):
    knn_accuracy(bank, labels, query, qlabels[:-1], num_classes=c, k=3)
  with pytest.raises(ValueError, match="NaN"):
    knn_classify(np.where(bank > 1, np.nan, bank), labels, query, num_classes=c, k=3)


def test_bank_sharded_over_the_mesh_matches_one_device_and_sklearn():
  # 397 bank rows: not a multiple of 8, so the last device's shard is padded.
  bank, bank_labels, query, query_labels, num_classes = random_problem(17, n_bank=397,
                                                                       n_query=40)
  mesh = make_mesh_from(("data",), (8,))
  # k = 60 is more than a device's 50 rows; k = 397 is the whole bank.
  for k, temperature in ((1, 0.1), (60, 0.5), (397, 0.1)):
    got = knn_classify(bank, bank_labels, query, num_classes=num_classes, k=k,
                       temperature=temperature, batch_size=16, mesh=mesh)
    one_device = knn_classify(bank, bank_labels, query, num_classes=num_classes, k=k,
                              temperature=temperature, batch_size=16)
    np.testing.assert_array_equal(got, one_device)
    expected, _, vote_gap = reference_knn(bank, bank_labels, query, num_classes, k, temperature)
    if vote_gap > 1e-4:  # far from a tie in float32
      np.testing.assert_array_equal(got, expected)
  k = 30
  sims, idx = nearest_neighbors(bank, query, k=k, batch_size=16, mesh=mesh)
  one_sims, one_idx = nearest_neighbors(bank, query, k=k, batch_size=16)
  np.testing.assert_array_equal(idx, one_idx)
  np.testing.assert_allclose(sims, one_sims, atol=1e-6)
  assert_same_neighbours_as_sklearn(bank, query, sims, idx, k)
  # A 2-D mesh (the bank over data x fsdp) gives the same answer.
  mesh_2d = make_mesh_from(("data", "fsdp"), (4, 2))
  assert knn_accuracy(bank, bank_labels, query, query_labels, num_classes=num_classes, k=20,
                      mesh=mesh_2d) == knn_accuracy(bank, bank_labels, query, query_labels,
                                                    num_classes=num_classes, k=20)
  with pytest.raises(ValueError, match="mesh"):
    knn_classify(bank, bank_labels, query, num_classes=num_classes, k=3, mesh="data")
