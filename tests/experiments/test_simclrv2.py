"""SimCLRv2's three stages (configs/simclrv2.py) through the loop on real Fashion-MNIST: the
fine-tuning run starts from the pre-trained encoder and the head's first layer, the distillation
run from the fine-tuned teacher, which stays frozen and is checkpointed with the student; a
resumed stage restores its own checkpoint, not the previous stage; a stage pointed at the wrong
run fails naming the field."""

import json
import os

import jax
import numpy as np
import pytest

from configs import simclrv2
from sslx import sharding
from sslx.train import loop
from sslx.train.metrics import read_metrics
from tests.train.helpers import set_fields


def stage_config(stage, data_dir, **overrides):
  config = simclrv2.get_config(f"{stage},fashion_mnist,smoke")
  # One device: the stages' hand-over is under test here; the mesh paths are the loop's own.
  return set_fields(config, {"data.data_dir": data_dir, "data.allow_download": False,
                             "total_steps": 4, "checkpoint_every": 4, "mesh.num_devices": 1,
                             **overrides})


def leaves_equal(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.slow  # three short training runs: started first (tests/conftest.py)
def test_three_stages_start_from_the_previous_one(fashion_mnist_dir, tmp_path):
  pretrain = loop.train(stage_config("pretrain", fashion_mnist_dir), str(tmp_path / "pretrain"))
  encoder = pretrain["state"].params["encoder"]
  first_layer = pretrain["state"].params["projector"]["hidden_linears"][0]

  finetune_config = stage_config("finetune", fashion_mnist_dir,
                                 **{"simclrv2.pretrained": str(tmp_path / "pretrain")})
  method = loop.build_method(finetune_config)
  mesh = sharding.make_mesh(finetune_config.mesh)
  fresh = jax.jit(lambda: method.init(jax.random.PRNGKey(1), None))()
  started = method.warm_start(fresh, mesh)
  assert leaves_equal(started["params"]["encoder"], encoder)
  assert leaves_equal(started["params"]["projector_linear"], first_layer)
  assert leaves_equal(started["batch_stats"]["projector_norm"],
                      pretrain["state"].model_state["batch_stats"]["projector"]["hidden_norms"][0])
  assert leaves_equal(started["params"]["head"], fresh["params"]["head"])  # a new classifier
  assert leaves_equal(started["ema"]["params"], started["params"])

  finetuned = loop.train(finetune_config, str(tmp_path / "finetune"))
  state = finetuned["state"]
  assert int(state.step) == 4
  # Fine-tuned from the pre-trained encoder (a fresh one would be as far from it as its norm).
  flat = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
          for t in (encoder, state.params["encoder"])]
  assert 0 < np.linalg.norm(flat[1] - flat[0]) < 0.05 * np.linalg.norm(flat[0])
  # No EMA in SimCLRv2: the evaluated model is the trained one.
  assert leaves_equal(state.model_state["ema"]["params"], state.params)
  # A resumed run restores its own checkpoint: the pre-trained run is not read again.
  os.rename(tmp_path / "pretrain", tmp_path / "pretrain_moved")
  again = loop.train(finetune_config, str(tmp_path / "finetune"))["state"]
  assert leaves_equal(again.params, state.params)
  os.rename(tmp_path / "pretrain_moved", tmp_path / "pretrain")

  # With the labelled cross-entropy too (eq. 3): both terms of the loss run.
  distill_config = stage_config("distill", fashion_mnist_dir,
                                **{"simclrv2.teacher": str(tmp_path / "finetune"),
                                   "loss.distill_weight": 0.5})
  distilled = loop.train(distill_config, str(tmp_path / "distill"))
  logged = read_metrics(str(tmp_path / "distill"))[-1]
  assert np.isfinite([logged["train/kd_loss"], logged["train/sup_loss"]]).all()
  teacher = distilled["state"].model_state["teacher"]
  assert leaves_equal(teacher, state.model_state["ema"])  # frozen, the teacher's evaluated model
  images = jax.numpy.zeros((4, 28, 28, 1))
  logits = distilled["method"].predict(distilled["state"].variables, images)
  assert logits.shape == (4, 10) and np.all(np.isfinite(np.asarray(logits)))

  # Each stage pointed at the wrong run, or at a run with another model, names the field
  # (before reading its checkpoint).
  wrong = stage_config("distill", fashion_mnist_dir,
                       **{"simclrv2.teacher": str(tmp_path / "pretrain")})
  with pytest.raises(ValueError, match=r"simclrv2.teacher=.*'simclr' run; expected a "
                                       r"'simclrv2_finetune'"):
    loop.build_method(wrong).warm_start({}, mesh)
  wider = stage_config("finetune", fashion_mnist_dir,
                       **{"simclrv2.pretrained": str(tmp_path / "pretrain"),
                          "model.resnet.width": 16})
  with pytest.raises(ValueError, match=r"simclrv2.pretrained=.*model.resnet.width: 8 there, "
                                       r"16 here"):
    loop.build_method(wider).warm_start({}, mesh)
  more_labels = stage_config("distill", fashion_mnist_dir,
                             **{"simclrv2.teacher": str(tmp_path / "finetune"),
                                "semi.labels_per_class": 5})
  with pytest.raises(ValueError, match=r"simclrv2.teacher=.*semi.labels_per_class: 4 there, "
                                       r"5 here"):
    loop.build_method(more_labels).warm_start({}, mesh)
  # A stage that has not finished (preempted, or still running) is not started from.
  config_path = tmp_path / "pretrain" / "config.json"
  saved = json.loads(config_path.read_text())
  config_path.write_text(json.dumps({**saved, "total_steps": 8}))
  with pytest.raises(ValueError, match=r"simclrv2.pretrained=.* has not finished: its last "
                                       r"checkpoint is step 4 of 8"):
    loop.build_method(finetune_config).warm_start(fresh, mesh)


def test_stages_refuse_a_missing_previous_run(fashion_mnist_dir, tmp_path):
  with pytest.raises(ValueError, match="simclrv2.pretrained must be the workdir"):
    loop.build_method(stage_config("finetune", fashion_mnist_dir))
  with pytest.raises(ValueError, match=r"simclrv2.teacher .*does not exist"):
    loop.build_method(stage_config("distill", fashion_mnist_dir,
                                   **{"simclrv2.teacher": str(tmp_path / "none")})
                      ).warm_start({}, None)
  with pytest.raises(ValueError, match="loss.distill_weight must be in"):
    loop.build_method(stage_config("distill", fashion_mnist_dir,
                                   **{"simclrv2.teacher": "x", "loss.distill_weight": 0.0}))
  with pytest.raises(ValueError, match="name one stage"):
    simclrv2.get_config("mnist")
  with pytest.raises(ValueError, match="pretrain stage uses no labels"):
    simclrv2.get_config("pretrain,labels=4")
