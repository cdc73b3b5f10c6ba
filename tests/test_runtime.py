"""The start-up log of what a run executes on, and `require_accelerator` refusing a CPU backend
(the tests run on 8 fake CPU devices, so the CPU side is what they can see)."""

import logging

import pytest

from configs import common
from configs import simclr as simclr_config
from sslx import run, runtime


def test_runtime_info_describes_the_fake_cpu_devices():
  info = runtime.runtime_info()
  assert (info["backend"], info["device_kind"]) == ("cpu", "cpu")
  assert (info["local_devices"], info["global_devices"]) == (8, 8)
  assert (info["process_index"], info["process_count"]) == (0, 1)


def test_start_up_log_names_backend_devices_and_processes(caplog):
  with caplog.at_level(logging.INFO):
    info = runtime.log_and_check_runtime(require_accelerator=False)
  assert info["backend"] == "cpu"
  assert "backend 'cpu' (cpu): 8 local / 8 global devices, process 0 of 1" in caplog.text


def test_require_accelerator_on_cpu_gives_the_install_commands():
  with pytest.raises(RuntimeError, match="require_accelerator") as error:
    runtime.log_and_check_runtime(require_accelerator=True)
  for command in ("ACCELERATOR=cuda12 bash scripts/setup.sh", "pip install -e '.[cuda12]'",
                  "ACCELERATOR=tpu bash scripts/setup.sh", "--config.require_accelerator=False"):
    assert command in str(error.value)


def test_a_run_requiring_an_accelerator_stops_before_anything_else(tmp_path):
  config = simclr_config.get_config("smoke")
  config.require_accelerator = True
  with pytest.raises(RuntimeError, match="require_accelerator"):
    run.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # not even the workdir was made


def test_gpu_presets_require_an_accelerator_and_cpu_ones_do_not():
  assert {d: common.method_config("simclr", d).require_accelerator for d in common.DATASETS} == {
      "fashion_mnist": False, "cifar10": True, "imagenet": True}
  assert not simclr_config.get_config("cifar10,smoke").require_accelerator
