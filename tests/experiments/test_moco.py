"""The momentum-contrast family (MoCo v2, MoCo v3, MoBY): what the generic method test cannot see.
The key queue is FIFO and holds exactly the latest keys; shuffle-BN normalises the query and key
encoders per group, the key encoder's groups drawn from a permutation of the batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import moco_v2 as moco_v2_config
from experiments import _momentum_contrast, moco_v2
from sslx import experiment
from sslx.losses._common import l2_normalize


def _config(symmetric=True, **overrides):
  config = moco_v2_config.get_config("smoke")  # batch 32, queue 64
  with config.unlocked():
    config.update(overrides)
    config.loss.symmetric = symmetric  # True: one queue per view
  return config


def _images(n=32, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1)), jnp.uint8)


def test_queue_is_fifo_and_holds_the_latest_keys():
  config = _config(symmetric=False)  # MoCo v2's own loss: one queue, of view-2 keys
  method = moco_v2.get_method(config)
  moco = _momentum_contrast.MomentumContrast(config, num_queues=1)
  b, k = config.batch_size, config.queue_size
  variables = method.init(jax.random.PRNGKey(0), None)
  initial = np.asarray(variables["queue"])
  loss = jax.jit(method.loss)

  @jax.jit
  def expected_keys(variables, images, rng):  # the loss's own random-number plumbing
    (_, v2), encoder_rng = experiment.two_views(rng, images, config, moco.images)
    keys, _ = moco.keys(variables, [v2], jax.random.split(encoder_rng)[1])
    return [l2_normalize(key) for key in keys]

  history = []
  for step in range(3):
    images, rng = _images(seed=step), jax.random.PRNGKey(10 + step)
    keys = [np.asarray(key) for key in expected_keys(variables, images, rng)]
    _, aux = loss(variables["params"], variables, {"image": images}, rng)
    variables = {**variables, **aux["state"]}
    history.insert(0, keys)  # newest first
    queue = np.asarray(variables["queue"])
    assert queue.shape == (1, k, config.projector.out_features)
    # Rows [i*b, (i+1)*b) hold the keys of i steps ago, then the initial queue's first rows.
    for i, past in enumerate(history[:k // b]):
      np.testing.assert_allclose(queue[0, i * b:(i + 1) * b], past[0], atol=1e-5)
    filled = min(len(history), k // b) * b
    np.testing.assert_array_equal(queue[0, filled:], initial[0, :k - filled])


def _changed_rows(forward, x, j):
  """Rows of forward(x) that change when only example j of x changes."""
  y, y_changed = forward(x), forward(x.at[j].multiply(-3.0))
  return set(np.flatnonzero(np.abs(np.asarray(y - y_changed)).max(axis=1) > 1e-6).tolist())


@pytest.mark.parametrize("groups", [0, 4])
def test_shuffle_bn_normalises_per_group_of_a_permutation(groups):
  config = _config(shuffle_bn_groups=groups)
  moco = _momentum_contrast.MomentumContrast(config)
  variables = moco.init(jax.random.PRNGKey(0), None)
  x = jax.random.normal(jax.random.PRNGKey(1), (32, *moco.images.view_shape))
  rng = jax.random.PRNGKey(2)
  keys = jax.jit(lambda x: moco.keys(variables, [x], rng)[0][0])
  queries = jax.jit(lambda x: moco.queries(variables["params"], variables, [x], rng)[1][0])
  j = 5
  key_group, query_group = _changed_rows(keys, x, j), _changed_rows(queries, x, j)
  if groups == 0:  # global-batch BatchNorm: every output depends on every example
    assert key_group == query_group == set(range(32))
    return
  # Queries: BN over the consecutive group of j; keys: over a random group of 8 containing j.
  assert query_group == set(range(8))
  assert len(key_group) == 8 and j in key_group and key_group != query_group
  # The keys of that group are exactly the key network run on the group alone (BN statistics of
  # those 8 examples), whatever their order.
  members = np.array(sorted(key_group))
  teacher = moco.target.merge(variables["teacher"]["params"], variables["teacher"]["batch_stats"])
  alone = teacher(x[members], train=True)
  np.testing.assert_allclose(keys(x)[members], alone, atol=1e-4)


def test_bad_queue_and_group_sizes_are_rejected():
  with pytest.raises(ValueError, match="queue_size"):
    _momentum_contrast.MomentumContrast(_config(queue_size=16))
  with pytest.raises(ValueError, match="shuffle_bn_groups"):
    _momentum_contrast.MomentumContrast(_config(shuffle_bn_groups=5))
