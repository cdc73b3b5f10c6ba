"""Weighted k-nearest-neighbour classification on frozen features.

This is the kNN monitor of Wu et al. 2018 ("Unsupervised Feature Learning via Non-Parametric
Instance Discrimination") as used by DINO's ``eval_knn``: features are L2-normalised, similarity is
the cosine similarity, each query looks at its ``k`` most similar bank entries, and each of those
votes for its own label with weight ``exp(similarity / temperature)``. The prediction is the class
with the largest summed vote (ties go to the lowest class index).

Queries are processed in chunks of a fixed size (the last chunk is zero-padded) by a single jitted
function, so memory stays at ``batch_size * bank_size`` similarities (at most 2**28; the chunk is
made smaller for huge banks) and only one shape compiles.

With ``mesh`` the bank is sharded: its rows are split over every device of the mesh (and so over
hosts), each device scores the (replicated) queries against its shard and keeps its local top-k,
and the devices' candidates are all-gathered and merged into the global top-k. The merge sees the
candidates in bank order, so ties resolve to the lowest bank index exactly as on one device; the
answer is the single-device one, and per device memory is ``batch_size * bank_size / devices``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

_EPS = 1e-12
# Upper bound on the [chunk, bank] similarity matrix (2**28 float32 = 1 GiB): batch_size is lowered
# for very large banks so memory stays bounded.
_MAX_SIM_ELEMENTS = 2**28


def _check_features(x, name: str) -> np.ndarray:
  """``x`` as a float32 [num_examples, dim] NumPy array (NumPy, jax, bfloat16 ... accepted)."""
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D [num_examples, dim], got shape {x.shape}")
  if x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"{name} is empty (shape {x.shape})")
  try:
    x = x.astype(np.float32, copy=False)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be numeric, got dtype {x.dtype}") from e
  if not np.isfinite(x).all():
    raise ValueError(f"{name} contains NaN or infinite values")
  return x


def _check_labels(y, name: str, num_examples: int, num_classes: int, features_name: str):
  y = np.asarray(y)
  if y.ndim != 1 or y.shape[0] != num_examples:
    raise ValueError(
        f"{name} must be 1-D with one label per row of {features_name} ({num_examples}), "
        f"got shape {y.shape}"
    )
  if not np.issubdtype(y.dtype, np.integer):
    if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
      y = y.astype(np.int64)
    else:
      raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(
        f"{name} must lie in [0, num_classes={num_classes}), got range [{y.min()}, {y.max()}]"
    )
  return y.astype(np.int32)


def check_train_test(train_features, train_labels, test_features, test_labels, num_classes):
  """The checked (num_classes, x_train, y_train, x_test, y_test) of a probe's inputs: NumPy
  arrays, labels in range, train and test features of the same width."""
  num_classes = _check_num_classes(num_classes)
  x_train = _check_features(train_features, "train_features")
  x_test = _check_features(test_features, "test_features")
  y_train = _check_labels(train_labels, "train_labels", x_train.shape[0], num_classes,
                          "train_features")
  y_test = _check_labels(test_labels, "test_labels", x_test.shape[0], num_classes,
                         "test_features")
  if x_test.shape[1] != x_train.shape[1]:
    raise ValueError(
        f"test_features has dim {x_test.shape[1]} but train_features has dim {x_train.shape[1]}")
  return num_classes, x_train, y_train, x_test, y_test


def _check_num_classes(num_classes) -> int:
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
    raise ValueError(f"num_classes must be an int, got {num_classes!r}")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  return int(num_classes)


def l2_normalize(x: jax.Array) -> jax.Array:
  """Rows scaled to unit L2 norm (an all-zero row stays zero)."""
  x = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, _EPS)


def _top_k(bank, query, k: int):
  """Cosine similarities [B, k] (descending) and bank indices [B, k] of the k nearest entries."""
  sim = jnp.dot(l2_normalize(query), bank.T, precision=jax.lax.Precision.HIGHEST)  # [B, N]
  return jax.lax.top_k(sim, k)


@functools.partial(jax.jit, static_argnames=("k",))
def _neighbors_chunk(bank, query, *, k: int):
  return _top_k(bank, query, k)


def _vote(top_sim, top_labels, temperature, num_classes: int):
  """Weighted vote of the k neighbours [B, k]: the class with the largest sum of
  exp(similarity / temperature) (ties -> lowest class)."""
  weights = jnp.exp(top_sim / temperature)  # [B, k]
  votes = jnp.einsum(
      "bk,bkc->bc", weights, jax.nn.one_hot(top_labels, num_classes, dtype=jnp.float32),
      precision=jax.lax.Precision.HIGHEST,
  )  # [B, C]
  return jnp.argmax(votes, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_chunk(bank, bank_labels, query, temperature, *, k: int, num_classes: int):
  """Predicted labels [B] for one chunk of queries [B, D] against the normalised bank [N, D]."""
  top_sim, top_idx = _top_k(bank, query, k)
  return _vote(top_sim, bank_labels[top_idx], temperature, num_classes)


@functools.lru_cache(maxsize=16)
def _sharded_fns(mesh: Mesh, k: int, num_classes: int):
  """Jitted (neighbours, predictions) of a query chunk against a bank sharded over all of
  ``mesh``'s devices: local top-k per shard, all-gathered, merged into the global top-k."""
  axes = tuple(mesh.axis_names)

  def global_top_k(bank, labels, valid, query):
    shard_rows = bank.shape[0]  # rows per device
    sim = jnp.dot(l2_normalize(query), l2_normalize(bank).T,
                  precision=jax.lax.Precision.HIGHEST)  # [B, shard_rows]
    sim = jnp.where(valid[None, :], sim, -jnp.inf)  # padding rows never win
    local_sim, local_idx = jax.lax.top_k(sim, min(k, shard_rows))
    # Gathered in shard order (= bank order), so ties still go to the lowest bank index.
    gather = functools.partial(jax.lax.all_gather, axis_name=axes, axis=1, tiled=True)
    cand_sim = gather(local_sim)
    cand_idx = gather(local_idx + jax.lax.axis_index(axes) * shard_rows)
    cand_labels = gather(labels[local_idx])
    top_sim, pos = jax.lax.top_k(cand_sim, k)
    return (top_sim, jnp.take_along_axis(cand_idx, pos, axis=1),
            jnp.take_along_axis(cand_labels, pos, axis=1))

  rows, rep = P(axes), P()
  # The outputs are merged from all-gathered candidates, hence equal on every device; jax's
  # replication check cannot infer that through all_gather, so it is off.
  neighbors = jax.shard_map(global_top_k, mesh=mesh, in_specs=(rows, rows, rows, rep),
                            out_specs=(rep, rep, rep), check_vma=False)

  def predict(bank, labels, valid, query, temperature):
    top_sim, _, top_labels = neighbors(bank, labels, valid, query)
    return _vote(top_sim, top_labels, temperature, num_classes)

  return jax.jit(lambda *a: neighbors(*a)[:2]), jax.jit(predict)


def _global_array(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """``x`` (the same NumPy array on every process) as a global array with ``sharding``; each
  process places only its own devices' slices, so this works across hosts."""
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _shard_bank(bank: np.ndarray, labels: np.ndarray, mesh: Mesh):
  """The bank's rows padded to a multiple of the device count and split over all devices, with
  its labels and a mask of the real rows; also the rows per device."""
  if not isinstance(mesh, Mesh):
    raise ValueError(f"mesh must be a jax.sharding.Mesh or None, got {type(mesh).__name__}")
  num_rows = bank.shape[0]
  pad = -num_rows % mesh.size
  rows = NamedSharding(mesh, P(tuple(mesh.axis_names)))
  bank = np.concatenate([bank, np.zeros((pad, bank.shape[1]), bank.dtype)])
  labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
  valid = np.arange(num_rows + pad) < num_rows
  return ([_global_array(a, rows) for a in (bank, labels, valid)],
          (num_rows + pad) // mesh.size)


def _replicated_chunk(mesh: Mesh):
  rep = NamedSharding(mesh, P())
  return lambda block: _global_array(np.asarray(block), rep)


@jax.jit
def _normalize_bank(bank):
  return l2_normalize(bank)


def _is_positive_int(x) -> bool:
  return not isinstance(x, bool) and isinstance(x, (int, np.integer)) and x >= 1


def _check_k(k, bank_size: int):
  if not _is_positive_int(k):
    raise ValueError(f"k must be a positive int, got {k!r}")
  if k > bank_size:
    raise ValueError(f"k={k} is larger than the bank size ({bank_size} bank_features rows)")
  return int(k)


def _check_batch_size(batch_size):
  if not _is_positive_int(batch_size):
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  return int(batch_size)


def _check_query(query, bank):
  if query.shape[1] != bank.shape[1]:
    raise ValueError(
        f"query_features has dim {query.shape[1]} but bank_features has dim {bank.shape[1]}"
    )


def _chunked(fn, query: np.ndarray, batch_size: int, bank_size: int):
  """Applies ``fn`` to fixed-size chunks of ``query`` (the last one zero-padded) and returns the
  outputs trimmed to the real rows, as NumPy."""
  num_queries = query.shape[0]
  chunk = max(1, min(batch_size, num_queries, _MAX_SIM_ELEMENTS // bank_size))
  outs = []
  for start in range(0, num_queries, chunk):
    block = query[start:start + chunk]
    valid = block.shape[0]
    if valid < chunk:
      block = np.concatenate([block, np.zeros((chunk - valid, block.shape[1]), block.dtype)])
    outs.append((fn(block), valid))  # dispatched asynchronously
  return [jax.tree.map(lambda a, v=valid: np.asarray(a)[:v], out) for out, valid in outs]


def nearest_neighbors(bank_features, query_features, *, k: int, batch_size: int = 1024,
                      mesh: Mesh | None = None):
  """The ``k`` most cosine-similar bank rows of every query row.

  With ``mesh``, the bank is sharded over all its devices (see the module docstring).
  Returns (similarities [M, k] float32 in descending order, indices [M, k] int64) as NumPy.
  """
  bank = _check_features(bank_features, "bank_features")
  query = _check_features(query_features, "query_features")
  _check_query(query, bank)
  k = _check_k(k, bank.shape[0])
  batch_size = _check_batch_size(batch_size)
  if mesh is not None:
    (bank_s, labels_s, valid_s), shard_rows = _shard_bank(
        bank, np.zeros(bank.shape[0], np.int32), mesh)
    neighbors_fn = _sharded_fns(mesh, k, 1)[0]
    put = _replicated_chunk(mesh)
    outs = _chunked(lambda q: neighbors_fn(bank_s, labels_s, valid_s, put(q)), query,
                    batch_size, shard_rows)
  else:
    bank_n = _normalize_bank(jnp.asarray(bank))
    outs = _chunked(lambda q: _neighbors_chunk(bank_n, q, k=k), query, batch_size,
                    bank.shape[0])
  return (np.concatenate([s for s, _ in outs]),
          np.concatenate([i for _, i in outs]).astype(np.int64))


def knn_classify(
    bank_features,
    bank_labels,
    query_features,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    batch_size: int = 1024,
    mesh: Mesh | None = None,
) -> np.ndarray:
  """Weighted kNN predictions (Wu et al. 2018 / DINO ``eval_knn``) for each query row.

  Args:
    bank_features: [N, D] features of the labelled bank (e.g. the train split). NumPy or jax.
    bank_labels: [N] integer labels in [0, num_classes).
    query_features: [M, D] features to classify (e.g. the test split).
    num_classes: number of classes.
    k: number of neighbours, 1 <= k <= N.
    temperature: temperature of the vote weights exp(cos_sim / temperature), > 0.
    batch_size: queries per jitted chunk (the last chunk is padded to this size).
    mesh: if given, the bank is sharded over all of its devices (every process must pass the
      same arrays); the predictions are those of one device.

  Returns:
    [M] int64 NumPy array of predicted labels.
  """
  num_classes = _check_num_classes(num_classes)
  bank = _check_features(bank_features, "bank_features")
  query = _check_features(query_features, "query_features")
  labels = _check_labels(bank_labels, "bank_labels", bank.shape[0], num_classes, "bank_features")
  _check_query(query, bank)
  k = _check_k(k, bank.shape[0])
  if not np.isfinite(temperature) or temperature <= 0:
    raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
  batch_size = _check_batch_size(batch_size)
  temp = jnp.float32(temperature)
  if mesh is not None:
    (bank_s, labels_s, valid_s), shard_rows = _shard_bank(bank, labels, mesh)
    predict_fn = _sharded_fns(mesh, k, num_classes)[1]
    put = _replicated_chunk(mesh)
    outs = _chunked(lambda q: predict_fn(bank_s, labels_s, valid_s, put(q), temp), query,
                    batch_size, shard_rows)
    return np.concatenate(outs).astype(np.int64)

  bank_n = _normalize_bank(jnp.asarray(bank))
  bank_labels_j = jnp.asarray(labels)
  outs = _chunked(lambda q: _knn_chunk(bank_n, bank_labels_j, q, temp, k=k,
                                       num_classes=num_classes), query, batch_size,
                  bank.shape[0])
  return np.concatenate(outs).astype(np.int64)


def knn_accuracy(
    bank_features,
    bank_labels,
    query_features,
    query_labels,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    batch_size: int = 1024,
    mesh: Mesh | None = None,
) -> float:
  """Top-1 accuracy in [0, 1] of :func:`knn_classify` against ``query_labels``."""
  num_classes = _check_num_classes(num_classes)
  query = _check_features(query_features, "query_features")
  q_labels = _check_labels(query_labels, "query_labels", query.shape[0], num_classes,
                           "query_features")
  preds = knn_classify(bank_features, bank_labels, query, num_classes=num_classes, k=k,
                       temperature=temperature, batch_size=batch_size, mesh=mesh)
  return float(np.mean(preds == q_labels))
