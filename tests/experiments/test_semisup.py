"""The semi-supervised methods (experiments/_semisup.py and its users): each learns on a fixed
batch with its own state updated; FlexMatch through the loop on real Fashion-MNIST equals on 1
and 8 devices and resumes bit-equal (iterators, EMA model and per-example state included); the
evaluation scores the EMA classifier; bad settings fail before any compute."""

import importlib
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sslx import run
from sslx.data import sources
from sslx.train import loop
from sslx.train.metrics import read_metrics
from sslx.train.state import TrainState
from sslx.train.step import make_train_step
from tests.train.helpers import set_fields

SEMI_METHODS = ("supervised", "pseudo_label", "mean_teacher", "fixmatch", "flexmatch", "freematch",
                "softmatch", "mixmatch", "pseudo_label_mixup")


def semi_config(method, data_dir=None, variant="fashion_mnist,smoke", **overrides):
  config = importlib.import_module(f"configs.{method}").get_config(variant)
  if data_dir is not None:
    overrides = {"data.data_dir": data_dir, "data.allow_download": False, **overrides}
  return set_fields(config, overrides)


def fixed_semi_batch(labelled=16, uratio=2, seed=0):
  """Blobs whose class (0..3) is their size, on a dark background with noise."""
  rng = np.random.default_rng(seed)
  n = labelled * (1 + uratio)
  labels = np.arange(n) % 4
  images = rng.integers(0, 30, size=(n, 28, 28, 1)).astype(np.uint8)
  for i, c in enumerate(labels):
    r, col = rng.integers(2, 14, size=2)
    side = 5 + 3 * c
    images[i, r:r + side, col:col + side] = 200
  return {"image": jnp.asarray(images[:labelled]),
          "label": jnp.asarray(labels[:labelled], jnp.int32),
          "unlabelled_image": jnp.asarray(images[labelled:]),
          "unlabelled_index": jnp.arange(n - labelled, dtype=jnp.int32)}


def test_every_semi_supervised_method_has_its_config():
  for name in SEMI_METHODS:
    config = importlib.import_module(f"configs.{name}").get_config("smoke")
    assert config.experiment == name and loop.is_semi_supervised(config)
    assert config.data.name == "mnist"


@pytest.mark.parametrize("name", SEMI_METHODS)
def test_method_learns_on_a_fixed_batch(name, monkeypatch):
  # Mean Teacher's consistency weight of 50 (USB's) would drown the labelled loss in 10 steps,
  # and no prediction is 95% confident within them: a low threshold lets pseudo-labels through.
  config = semi_config(name, total_steps=10, **{"semi.unsup_weight": 1.0})
  if "threshold" in config.loss:
    config.loss.threshold = 0.3
  # FlexMatch's state has a row per unlabelled image: 32 here instead of the dataset's 60000.
  monkeypatch.setattr("experiments._semisup.num_unlabelled", lambda config: 32)
  method = loop.get_method(config)
  batch = fixed_semi_batch()
  variables = dict(method.init(jax.random.PRNGKey(0), batch))
  assert set(variables) >= {"params", "batch_stats", "ema"}
  images = batch["image"].astype(jnp.float32) / 255
  assert method.apply(variables, images).shape == (16, 16)
  assert method.predict(variables, images).shape == (16, 10)
  tx = optax.adam(3e-3)
  params = variables.pop("params")
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                     opt_state=tx.init(params), rng=jax.random.PRNGKey(1),
                     nonfinite_steps=jnp.zeros((), jnp.int32))
  initial = jax.tree.map(np.asarray, state)
  step = make_train_step(method, tx, lambda s: 3e-3, state_sharding=None, batch_sharding=None,
                         metric_sharding=None)
  history = []
  for _ in range(10):
    state, metrics = step(state, batch)
    history.append(jax.device_get(metrics))
  sup = [m["train/sup_loss"] for m in history]
  assert np.mean(sup[-3:]) < 0.95 * np.mean(sup[:3]), sup
  assert int(state.nonfinite_steps) == 0
  # The evaluated EMA model follows the trained one: moved from its start, not equal to it.
  ema, start = state.model_state["ema"]["params"], initial.model_state["ema"]["params"]
  leaf = lambda tree: np.asarray(jax.tree.leaves(tree)[0])  # noqa: E731
  assert not np.allclose(leaf(ema), leaf(start))
  assert not np.allclose(leaf(ema), leaf(state.params))
  if name == "supervised":
    assert "train/unsup_loss" not in history[-1]
  else:
    unsup = "train/mixup_loss" if name == "pseudo_label_mixup" else "train/unsup_loss"
    assert np.isfinite([m[unsup] for m in history]).all()
    if "threshold" in config.loss:
      assert history[-1]["train/mask_rate"] > 0
  if name in ("pseudo_label", "mean_teacher", "mixmatch"):  # ramped over 40% of 10 steps
    np.testing.assert_allclose([m["train/unsup_weight"] for m in history[:5]],
                               config.semi.unsup_weight * np.array([0, 0.25, 0.5, 0.75, 1]))
  for key in set(state.model_state) - {"batch_stats", "ema"}:  # the method's own state moved
    before, after = initial.model_state[key], state.model_state[key]
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(
        jax.tree.leaves(before), jax.tree.leaves(after), strict=True)), key
  if name == "flexmatch":  # confident examples are recorded by their position
    status = np.asarray(state.model_state["flexmatch"])
    assert status.shape == (32,) and (status >= 0).any()
    assert history[-1]["train/flexmatch_selected"] == np.mean(status >= 0)


@pytest.mark.slow  # about a minute: started first (tests/conftest.py)
def test_flexmatch_on_eight_devices_resumes_exactly(fashion_mnist_dir, tmp_path):
  """Through the loop on real Fashion-MNIST: 8 devices follow 1; a run resumed from step 2
  ends bit-equal to the straight one (both iterators, the EMA model, FlexMatch's per-example
  state). The evaluation of the EMA classifier's top-1 is tests/train/test_multihost.py's (one
  process and two). This is also the loop's 1-vs-8 and
  resume check of a method with `Method.after_update` state, which replaced BYOL's (its teacher
  takes the same path; its momentum schedule and update are tested in tests/train/test_ema.py and
  tests/experiments/test_methods.py; LARS on 8 devices is no longer run through the loop)."""
  # The unlabelled weight ramps over the run, so a resume that restored the wrong step (which
  # `Method.loss` and `after_update` read) would not end bit-equal.
  settings = {"eval.enabled": False, "total_steps": 4, "checkpoint_every": 2,
              "semi.labels_per_class": 3, "loss.threshold": 0.25, "semi.unsup_warmup": 0.75}
  one = tmp_path / "one"
  loop.train(semi_config("flexmatch", fashion_mnist_dir, **settings,
                         **{"mesh.num_devices": 1}), str(one))
  config = semi_config("flexmatch", fashion_mnist_dir, **settings)
  eight = tmp_path / "eight"
  straight = jax.tree.map(np.asarray, loop.train(config, str(eight))["state"])
  shutil.rmtree(eight / "checkpoints" / "4")  # as if the run had stopped after step 2
  resumed = loop.train(config, str(eight))
  for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed["state"]), strict=True):
    np.testing.assert_array_equal(x, np.asarray(y))
  status = np.asarray(resumed["state"].model_state["flexmatch"])
  assert status.shape == (60000,) and (status >= 0).any()
  losses = {d: [r["train/loss"] for r in read_metrics(str(d))] for d in (one, eight)}
  np.testing.assert_allclose(losses[eight][-4:], losses[one], rtol=2e-5)
  split = json.loads((eight / loop.SPLIT_FILE).read_text())
  labels = sources.split_labels("fashion_mnist", "train", data_dir=fashion_mnist_dir)
  assert np.bincount(labels[split["labelled"]]).tolist() == [3] * 10


def test_mixmatch_sharpen_and_mixup_against_numpy():
  from experiments import _semisup, mixmatch
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(5), size=4)
  expected = probs ** 2 / np.sum(probs ** 2, axis=-1, keepdims=True)  # T = 0.5
  np.testing.assert_allclose(mixmatch.sharpen(jnp.asarray(probs), 0.5), expected, rtol=1e-5)
  np.testing.assert_allclose(mixmatch.sharpen(jnp.asarray(probs), 1.0), probs, rtol=1e-5)

  x = rng.normal(size=(8, 3)).astype(np.float32)
  for own_majority in (True, False):
    mixed_x, perm, lam = map(np.asarray, _semisup.mixup(jax.random.PRNGKey(3), x, 0.5,
                                                        own_majority=own_majority))
    assert sorted(perm.tolist()) == list(range(8)) and 0.0 < lam < 1.0
    assert lam >= 0.5 or not own_majority
    np.testing.assert_allclose(mixed_x, lam * x + (1 - lam) * x[perm], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, overrides, match", [
    ("mixmatch", {"loss.temperature": 0.0}, r"loss.temperature must be in \(0, 1\].*got 0.0"),
    ("mixmatch", {"loss.mixup_alpha": -1.0}, r"loss.mixup_alpha must be > 0.*got -1.0"),
    ("pseudo_label_mixup", {"loss.labelled_only_fraction": 1.0},
     r"loss.labelled_only_fraction must be in \[0, 1\), got 1.0"),
])
def test_mixup_methods_refuse_bad_settings(name, overrides, match):
  with pytest.raises(ValueError, match=match):
    loop.get_method(semi_config(name, **overrides))


@pytest.mark.parametrize("overrides, match", [
    ({"semi.labels_per_class": 7001},
     r"semi.labels_per_class=7001 on 'fashion_mnist': 7001 labels per class asked, but classes "
     r"\[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] hold only"),
    ({"semi.uratio": 0}, r"semi.uratio must be an integer >= 1 .*got 0"),
    ({"loss.threshold": 1.0}, r"loss.threshold must be in \(0, 1\), got 1.0"),
    ({"semi.strong": "flip|randaugment|blurr(3)"}, "semi.strong=.*unknown augmentation op 'blurr'"),
    ({"semi.unlabelled": "some"}, "semi.unlabelled must be one of"),
    ({"semi.strong": "random_resized_crop(24)|flip"},
     r"semi.weak and semi.strong must give views of one size, got \(28, 28\) and \(24, 24\)"),
    ({"data.imbalance_ratio": 10.0},
     r"data.imbalance_ratio=10.0: long-tailed subsets are for self-supervised runs"),
    ({"data.train_split": "train[500:]"},
     r"data.train_split='train\[500:\]': a semi-supervised run draws"),
])
def test_bad_semi_supervised_settings_fail_before_training(fashion_mnist_dir, tmp_path,
                                                           overrides, match):
  config = semi_config("fixmatch", fashion_mnist_dir, **overrides)
  with pytest.raises(ValueError, match=match):
    run.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_a_dataset_without_labels_is_refused(fashion_mnist_dir, tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "split_labels", lambda *a, **k: np.full(100, -1))
  with pytest.raises(ValueError, match="no training example has a label"):
    loop.semi_supervised_split(semi_config("fixmatch", fashion_mnist_dir), str(tmp_path))


def test_the_recorded_split_is_what_a_resumed_run_reads(fashion_mnist_dir, tmp_path, monkeypatch):
  config = semi_config("fixmatch", fashion_mnist_dir, **{"semi.unlabelled": "others"})
  labelled, unlabelled = loop.semi_supervised_split(config, str(tmp_path))
  assert len(labelled) == 40 and len(unlabelled) == 60000 - 40
  assert not np.isin(labelled, unlabelled).any()
  assert json.loads((tmp_path / loop.SPLIT_FILE).read_text())["labelled"] == labelled.tolist()

  def no_new_draw(*args, **kwargs):
    raise AssertionError("the split must be read back, not drawn again")

  monkeypatch.setattr(sources, "labelled_subset", no_new_draw)
  again, unlabelled_again = loop.semi_supervised_split(config, str(tmp_path))
  np.testing.assert_array_equal(again, labelled)
  np.testing.assert_array_equal(unlabelled_again, unlabelled)
