"""End-to-end training on the real Fashion-MNIST (smoke config): logging, checkpoints, results,
sharding rules, and bad settings refused before any compute (faults: test_faults.py; several
processes: test_multihost.py; 1 vs 8 devices and exact resume through the loop:
tests/experiments/test_semisup.py, FlexMatch with its EMA model and per-image state)."""

import json
import os
import struct
import subprocess

import jax
import numpy as np
import pytest

from sslx import run
from sslx.train import loop
from sslx.train.metrics import read_metrics
from tests.train.helpers import REPO, main_command, smoke_config, subprocess_env

pytestmark = pytest.mark.slow


def _losses(workdir):
  return [r["train/loss"] for r in read_metrics(str(workdir))]


def _read_tensorboard_scalars(tb_dir, tag):
  """Parses TensorBoard event files by hand (TFRecord framing + Event protos), no TensorFlow."""
  from tensorboardX.proto import event_pb2
  values = {}
  for name in sorted(os.listdir(tb_dir)):
    with open(os.path.join(tb_dir, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        if v.tag == tag:
          values[event.step] = v.simple_value
  return values


def test_smoke_run_trains_checkpoints_logs_and_evaluates(fashion_mnist_dir, tmp_path):
  config = smoke_config(fashion_mnist_dir)
  out = run.train_and_evaluate(config, str(tmp_path))

  records = read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == list(range(1, config.total_steps + 1))
  assert all(np.isfinite(r["train/loss"]) and r["train/loss"] > 0 for r in records)
  assert records[-1]["train/learning_rate"] < records[2]["train/learning_rate"]  # cosine decay
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
  assert int(out["state"].step) == config.total_steps

  tb = _read_tensorboard_scalars(str(tmp_path / "tb"), "train/loss")
  assert sorted(tb) == [r["step"] for r in records]
  np.testing.assert_allclose([tb[r["step"]] for r in records], _losses(tmp_path), rtol=1e-6)

  results = json.loads((tmp_path / "results.json").read_text())
  assert set(results["rows"]) == {"SSL encoder", "random encoder", "raw pixels"}
  for row in results["rows"].values():
    assert 0.1 < row["knn_top1"] <= 1 and 0.1 < row["linear_top1"] <= 1
  # Real images: raw pixels are far above chance (10%) even on this small subset.
  assert results["rows"]["raw pixels"]["knn_top1"] > 0.6
  assert results["rows"]["raw pixels"]["feature_dim"] == 28 * 28
  assert results["rows"]["SSL encoder"]["feature_dim"] == 16


def test_vit_backbone_sharded_by_fsdp_rules_matches_replicated(fashion_mnist_dir, tmp_path):
  """Any backbone by config: SimCLR with a ViT; `mesh.rules=fsdp` on a (data 2, fsdp 4) mesh
  stores each ViT weight in quarters and follows the replicated run's losses."""
  runs = {}
  for rules in ("replicated", "fsdp"):
    config = smoke_config(fashion_mnist_dir, **{
        "model.name": "vit", "mesh.axes": ("data", "fsdp"), "mesh.shape": (2, 4),
        "mesh.rules": rules, "eval.enabled": False, "total_steps": 3})
    runs[rules] = loop.train(config, str(tmp_path / rules))["state"]
    np.testing.assert_allclose(_losses(tmp_path / rules), _losses(tmp_path / "replicated"),
                               rtol=1e-5)
  vit_params = runs["fsdp"].params["encoder"]["net"]
  kernel = vit_params["blocks"][0]["fc1"]["kernel"]  # [width 16, mlp 64], "embed" over fsdp
  assert kernel.shape == (16, 64)
  assert {s.data.shape for s in kernel.addressable_shards} == {(4, 64)}
  momentum = runs["fsdp"].opt_state  # optimizer moments are sharded like the parameters
  assert any(getattr(x, "shape", None) == (16, 64) and x.addressable_shards[0].data.shape
             == (4, 64) for x in jax.tree.leaves(momentum))
  replicated = runs["replicated"].params["encoder"]["net"]["blocks"][0]["fc1"]["kernel"]
  assert replicated.addressable_shards[0].data.shape == (16, 64)
  np.testing.assert_allclose(np.asarray(kernel), np.asarray(replicated), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("overrides, match", [
    ({"batch_size": 12}, "batch_size=12 must be divisible by the 8 devices"),
    ({"data.name": "imagenet3000"}, "imagenet3000"),
    ({"experiment": "nosuchmethod"}, "nosuchmethod"),
    ({"total_steps": 0}, "total_steps"),
    ({"mesh.num_devices": 9}, "mesh.num_devices"),
    ({"log_every": 0}, "log_every must be >= 1"),
    ({"checkpoint_every": -1}, "checkpoint_every must be >= 1"),
    ({"eval.batch_size": 100}, "eval.batch_size=100 must be divisible by the 8 devices"),
    ({"mesh.rules": "zero3"}, "mesh.rules must be one of"),
    ({"mesh.rules": "fsdp"}, r"mesh axes \['fsdp'\], but mesh.axes is \('data',\)"),
    ({"mesh.axes": ("data", "model"), "mesh.shape": (4, 2)}, "shard nothing over it"),
    ({"model.name": "convnext"}, "model.name must be one of"),
    # Images the model cannot take: 28-pixel Fashion-MNIST crops into 5-pixel ViT patches.
    ({"model.name": "vit", "model.vit.patch_size": 5},
     r"patch_size must be positive and divide image_size; got patch_size=5, "
     r"image_size=\(28, 28\)"),
    ({"optim.name": "lamb"}, "optim.name must be one of"),
    ({"optim.lr": 0.0}, "optim.lr must be > 0, got 0.0"),
    ({"optim.warmup_steps": 6}, r"optim.warmup_steps must be in \[0, total_steps\), got 6"),
    ({"optim.momentum": 1.0}, r"optim.momentum must be in \[0, 1\)"),
    ({"nonfinite_policy": "ignore"}, "nonfinite_policy must be one of"),
    ({"eval.train_fraction": 0.0}, r"eval.train_fraction must be a number in \(0, 1\]"),
    ({"eval.train_fraction": 1.5}, r"eval.train_fraction must be a number in \(0, 1\]"),
    ({"model.name": "vit", "model.vit.scan": True}, "optim.name='lars' needs model.vit.scan=False"),
    ({"model.dtype": "float16"}, "model.dtype must be one of"),
    ({"data.imbalance_ratio": 0.5},
     r"data.imbalance_ratio=0.5 on 'fashion_mnist': imbalance_ratio: expected a number >= 1"),
    ({"data.train_split": "trian[500:]"},
     r"data.train_split='trian\[500:\]' could not be read from 'fashion_mnist'.*Unknown split"),
])
def test_bad_config_values_fail_before_training(fashion_mnist_dir, tmp_path, overrides, match):
  config = smoke_config(fashion_mnist_dir, **overrides)
  with pytest.raises(ValueError, match=match):
    run.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


def test_unwritable_workdir_is_reported(fashion_mnist_dir, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises((PermissionError, FileExistsError, NotADirectoryError), match="file"):
    loop.train(smoke_config(fashion_mnist_dir), str(blocker / "run"))
  # URL workdirs: test_remote_paths.py.


def test_unknown_config_key_is_named_on_the_command_line(fashion_mnist_dir, tmp_path):
  result = subprocess.run(main_command(tmp_path, fashion_mnist_dir, "--config.optim.lrr=0.1"),
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
  assert result.returncode != 0
  assert "lrr" in result.stderr


def test_resuming_with_changed_settings_is_refused(fashion_mnist_dir, tmp_path):
  loop.train(smoke_config(fashion_mnist_dir, **{"total_steps": 3, "eval.enabled": False}),
             str(tmp_path))
  changed = smoke_config(fashion_mnist_dir, **{"total_steps": 3, "eval.enabled": False,
                                               "optim.lr": 0.5})
  with pytest.raises(ValueError, match=r"optim.lr: 1.0 -> 0.5"):
    loop.train(changed, str(tmp_path))
  # Settings that do not change the trajectory (logging, evaluation) may change on resume.
  same = smoke_config(fashion_mnist_dir, **{"total_steps": 3, "eval.enabled": False,
                                            "log_every": 3})
  assert int(loop.train(same, str(tmp_path))["state"].step) == 3
  # A run saved before a field existed resumes (sslx upgraded mid-run); settings that only trade
  # memory for compute (remat, gradient-cache micro-batches) may change.
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["optim"]["grad_cache_chunks"], saved["projector"]["norm"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  remat = smoke_config(fashion_mnist_dir, **{"total_steps": 3, "eval.enabled": False,
                                             "model.remat": "block"})
  assert int(loop.train(remat, str(tmp_path))["state"].step) == 3


def test_online_probe_run_restores_onto_a_mesh_for_evaluation(fashion_mnist_dir, tmp_path):
  """The probe's classifier is part of the state: `restore_onto_mesh` (what the evaluation CLI
  uses) must rebuild the method with it."""
  from sslx import sharding
  from sslx.train.checkpoint import Checkpointer
  config = smoke_config(fashion_mnist_dir, **{"total_steps": 3, "eval.enabled": False,
                                              "eval.online_probe": True})
  out = loop.train(config, str(tmp_path))
  checkpointer = Checkpointer(str(tmp_path))
  restored = loop.restore_onto_mesh(config, loop.build_method(config), checkpointer,
                                    sharding.make_mesh(config.mesh))
  checkpointer.close()
  assert "online_probe" in restored.model_state
  for x, y in zip(jax.tree.leaves(out["state"]), jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
