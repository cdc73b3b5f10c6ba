"""The label-free monitor (sslx.evaluate.monitor) in the training loop: monitor/* metrics in
metrics.jsonl at the eval.every steps, equal to representation_metrics of the same views
computed independently (one device, no chunking, no sharding) from the saved checkpoints."""

import os

import jax
import numpy as np
import pytest

from sslx import sharding
from sslx.data import augment, sources
from sslx.evaluate import monitor as monitor_lib
from sslx.evaluate import representation
from sslx.train import loop
from sslx.train.metrics import read_metrics
from tests.train.helpers import restore_state, smoke_config

MONITOR_EXAMPLES, MONITOR_VIEWS, EVERY = 64, 4, 3
_RUNS = {}


def train_monitored_run(data_dir, tmp_path_factory):
  """One smoke run (6 steps, checkpoints at 3 and 6, monitor every 3 steps, plots on) shared by
  the monitor, plot and command-line tests: training is the expensive part."""
  if data_dir not in _RUNS:
    workdir = str(tmp_path_factory.mktemp("monitored_run"))
    config = smoke_config(data_dir, **{
        "eval.every": EVERY, "eval.monitor_examples": MONITOR_EXAMPLES,
        "eval.monitor_views": MONITOR_VIEWS, "eval.plots": True, "eval.enabled": False,
        "eval.train_examples": 500, "eval.test_examples": 200, "eval.baselines": ()})
    out = loop.train(config, workdir)
    _RUNS[data_dir] = (config, workdir, out["state"])
  return _RUNS[data_dir]


@pytest.fixture(scope="module")
def monitored_run(fashion_mnist_dir, tmp_path_factory):
  return train_monitored_run(fashion_mnist_dir, tmp_path_factory)


def independent_views(config, images):
  """[n, q, h, w, c]: view j of image i from key fold_in(fold_in(PRNGKey(seed), i), j), the
  monitor's documented contract, built here image by image on the default device."""
  view_pipeline = augment.make_pipeline(config.augment)
  base = jax.random.PRNGKey(config.seed)
  keys = np.stack([np.stack([np.asarray(jax.random.fold_in(jax.random.fold_in(base, i), j))
                             for j in range(MONITOR_VIEWS)]) for i in range(len(images))])
  flat_keys = keys.reshape(-1, keys.shape[-1])
  flat_images = np.repeat(images, MONITOR_VIEWS, axis=0)
  views = jax.jit(jax.vmap(view_pipeline))(flat_keys, flat_images)
  return np.asarray(views).reshape(len(images), MONITOR_VIEWS, *views.shape[1:])


def test_monitor_metrics_logged_at_eval_steps_equal_independent_computation(monitored_run):
  config, workdir, _ = monitored_run
  records = {r["step"]: r for r in read_metrics(workdir)}
  names = {f"monitor/{m}" for m in monitor_lib.METRICS}
  monitored_steps = [s for s, r in records.items() if names & set(r)]
  assert monitored_steps == [3, 6]
  assert all("train/loss" in r for r in records.values())  # one record per step, merged

  info = sources.get_dataset_info("fashion_mnist")
  test_split = sources.load_source("fashion_mnist", info.test_split,
                                   data_dir=config.data.data_dir, allow_download=False)
  images = np.stack([np.asarray(test_split[i]["image"]) for i in range(MONITOR_EXAMPLES)])
  views = independent_views(config, images)
  method = loop.get_method(config)
  for step in monitored_steps:
    assert names <= set(records[step])
    logged = {m: records[step][f"monitor/{m}"] for m in monitor_lib.METRICS}
    assert all(np.isfinite(v) for v in logged.values()), logged
    _, state = restore_state(workdir, step)
    variables = {"params": state["params"], **state["model_state"]}
    z = np.asarray(jax.jit(method.apply)(variables, views.reshape(-1, *views.shape[2:])))
    expected = representation.representation_metrics(z.reshape(MONITOR_EXAMPLES,
                                                                MONITOR_VIEWS, -1))
    for m in monitor_lib.METRICS:
      np.testing.assert_allclose(logged[m], expected[m], rtol=1e-4, atol=1e-5, err_msg=m)


def test_monitor_ranks_trained_smoke_encoder_above_collapsed(monitored_run):
  config, _, state = monitored_run
  monitor = monitor_lib.build(config, loop.get_method(config), sharding.make_mesh(config.mesh),
                              sources.get_dataset_info("fashion_mnist"),
                              {"data_dir": config.data.data_dir, "allow_download": False})
  trained = monitor.metrics(state.variables)
  # Every parameter zero: the encoder maps every image to the same (zero) features.
  collapsed = monitor.metrics(jax.tree.map(np.zeros_like, jax.device_get(state.variables)))
  assert trained["rankme"] > 2.5 * collapsed["rankme"], (trained, collapsed)
  assert trained["lidar"] > 2.5 * collapsed["lidar"], (trained, collapsed)
  assert collapsed["rankme"] < 1.5 and collapsed["embedding_std"] < 1e-6
  assert trained["embedding_std"] > 0.02


def test_monitor_checks_its_settings(fashion_mnist_dir):
  config = smoke_config(fashion_mnist_dir)
  info = sources.get_dataset_info("fashion_mnist")
  mesh = sharding.make_mesh(config.mesh)
  images = np.zeros((4, 28, 28, 1), np.uint8)
  with config.unlocked():
    config.eval.monitor_views = 1
  with pytest.raises(ValueError, match="eval.monitor_views must be an int >= 2"):
    monitor_lib.Monitor(config, lambda v, x: x, mesh, monitor_lib.MonitorSet(images, [0] * 4))
  with config.unlocked():
    config.eval.monitor_views, config.eval.monitor_examples = 2, 1
  with pytest.raises(ValueError, match="eval.monitor_examples must be an int >= 2"):
    monitor_lib.load_monitor_set(config, info, {"data_dir": fashion_mnist_dir})
  with pytest.raises(ValueError, match=r"monitor_set.images must be uint8"):
    monitor_lib.Monitor(config, lambda v, x: x, mesh,
                        monitor_lib.MonitorSet(images.astype(np.float32), [0] * 4))
  with pytest.raises(ValueError, match=r"z_views must be \[n, q, d\]"):
    monitor_lib.metrics_of(np.zeros((4, 3)))


def test_negative_eval_every_is_rejected(fashion_mnist_dir, tmp_path):
  config = smoke_config(fashion_mnist_dir, **{"eval.every": -1})
  with pytest.raises(ValueError, match="eval.every must be >= 0"):
    loop.train(config, os.fspath(tmp_path))
