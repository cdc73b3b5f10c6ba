"""python -m sslx.evaluate: results.json of a checkpoint equals the evaluation functions called
directly on the restored state, with a protocol named for every number; bad flags fail early
with a message naming the flag."""

import json
import os
import subprocess
import sys

import jax
import pytest
from etils import epath

from sslx import sharding
from sslx.data import sources
from sslx.evaluate import cli, offline
from sslx.evaluate import features as features_lib
from sslx.evaluate import monitor as monitor_lib
from sslx.train import loop
from tests.evaluate.test_monitor import monitored_run  # noqa: F401  (the shared smoke run)
from tests.train.helpers import REPO, restore_state, subprocess_env


def test_cli_results_equal_direct_evaluation_of_checkpoint(monitored_run, tmp_path):  # noqa: F811
  config, workdir, _ = monitored_run
  output = tmp_path / "out" / "results.json"
  result = subprocess.run(
      [sys.executable, "-m", "sslx.evaluate", f"--workdir={workdir}", "--step=3",
       "--protocols=knn,linear,rankme,lidar,fewshot,label_fractions", f"--output={output}",
       "--label_fractions=0.3,0.6",  # the smoke run's bank holds ~50 images per class
       "--baselines=",
       "--noplots"], cwd=REPO, env=subprocess_env(8), capture_output=True, text=True,
      timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  results = json.loads(output.read_text())
  assert results["steps"] == 3 and results["experiment"] == "simclr"
  assert list(results["rows"]) == ["SSL encoder"]  # --baselines= : none
  row = results["rows"]["SSL encoder"]
  assert set(results["protocol"]) == {"knn", "linear", "rankme", "lidar", "fewshot",
                                      "label_fractions"}
  assert "offline linear probe" in results["protocol"]["linear"]
  assert "RankMe" in results["protocol"]["rankme"]
  assert "LiDAR" in results["protocol"]["lidar"]

  # The same numbers from the library, on the state restored here.
  _, state = restore_state(workdir, 3)
  variables = {"params": state["params"], **state["model_state"]}
  info = sources.get_dataset_info("fashion_mnist")
  source_kwargs = {"data_dir": config.data.data_dir, "allow_download": False}
  method = loop.get_method(config)
  mesh = sharding.make_mesh(config.mesh)
  train_source, test_source = offline.eval_sources(config, info, source_kwargs)
  with_extras = config.copy_and_resolve_references()
  with with_extras.unlocked():
    with_extras.eval.fewshot = True
    with_extras.eval.label_fractions = (0.3, 0.6)
  expected = offline.evaluate_features(
      with_extras, info, lambda s: features_lib.extract_features(
          method.apply, variables, s, mesh=mesh, batch_size=config.eval.batch_size),
      train_source, test_source)
  assert row["knn_top1"] == pytest.approx(expected["knn_top1"], abs=1e-9)
  assert row["linear_top1"] == pytest.approx(expected["linear_top1"], abs=1e-9)
  extras = [k for k in expected if "@" in k]
  assert set(extras) == {"linear_top1@30%", "linear_top1@60%", "fewshot_top1@1shot",
                         "fewshot_top1@5shot", "fewshot_top1@10shot", "fewshot_top1@25shot"}
  for key in extras:
    assert row[key] == pytest.approx(expected[key], abs=1e-9), key
  label_free = monitor_lib.build(config, method, mesh, info, source_kwargs).metrics(
      jax.device_put(variables))
  for name in ("rankme", "lidar"):
    assert row[name] == pytest.approx(label_free[name], rel=1e-5), name
  assert "alignment" not in row  # only the protocols asked for
  assert "kNN top-1" in result.stdout  # the table printed at the end


def test_cli_flag_errors_name_the_flag(monitored_run, tmp_path, monkeypatch):  # noqa: F811
  _, workdir, _ = monitored_run
  with pytest.raises(ValueError, match=r"--protocols: unknown \['knn2'\]"):
    cli.evaluate_checkpoint(workdir, protocols="knn2,rankme")
  with pytest.raises(ValueError, match="--protocols: expected at least one"):
    cli.evaluate_checkpoint(workdir, protocols="")
  with pytest.raises(ValueError, match="--workdir .* does not exist"):
    cli.evaluate_checkpoint(str(tmp_path / "missing"))
  with pytest.raises(ValueError, match="--workdir .* has no config.json"):
    cli.evaluate_checkpoint(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"experiment": "simclr"}))
  with pytest.raises(ValueError, match="--workdir .* holds no checkpoint"):
    cli.evaluate_checkpoint(str(tmp_path))
  with pytest.raises(ValueError, match=r"--step 5: no such checkpoint .* saved steps: \[3, 6\]"):
    cli.evaluate_checkpoint(workdir, step=5)
  with pytest.raises(ValueError, match="--step must be a checkpoint step >= 0"):
    cli.evaluate_checkpoint(workdir, step=-1)
  with pytest.raises(ValueError, match=r"--baselines: unknown \['pixels'\]"):
    cli.evaluate_checkpoint(workdir, baselines=["pixels"])
  # A run's own eval settings are checked before its checkpoint is restored.
  bad = tmp_path / "bad_fraction"
  bad.mkdir()
  saved = json.loads((epath.Path(workdir) / "config.json").read_text())
  saved["eval"]["train_fraction"] = 2.0
  (bad / "config.json").write_text(json.dumps(saved))
  (bad / "checkpoints").symlink_to(os.path.join(workdir, "checkpoints"))
  monkeypatch.setattr(loop, "restore_onto_mesh", None)  # called: TypeError
  with pytest.raises(ValueError, match=r"eval.train_fraction must be a number in \(0, 1\]"):
    cli.evaluate_checkpoint(str(bad), protocols="knn", plots=False)
  assert not os.path.exists(os.path.join(workdir, "results.json"))


def test_cli_usage_error_from_the_command_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "sslx.evaluate", f"--workdir={tmp_path / 'missing'}"],
      cwd=REPO, env=subprocess_env(1), capture_output=True, text=True, timeout=300,
      check=False)
  assert result.returncode != 0
  assert "--workdir" in result.stderr and "does not exist" in result.stderr
  assert "Traceback" not in result.stderr
