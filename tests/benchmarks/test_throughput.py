"""benchmarks/throughput.py: one real measurement on the smoke config (8 fake CPU devices) with
its arithmetic checked, the peak table, and the errors for bad input."""

import math

import pytest

from benchmarks import throughput
from configs import mae


@pytest.fixture(scope="module")
def smoke_config():
  return mae.get_config("smoke")


@pytest.fixture(scope="module")
def measured(smoke_config):
  peaks = throughput.Peaks(num_devices=8)
  return throughput.measure(smoke_config, steps=2, warmup=1, peaks=peaks)


def test_measure_arithmetic(measured, smoke_config):
  r = measured
  assert r["batch_size"] == smoke_config.batch_size and r["num_devices"] == 8
  assert r["timed_steps"] == 2 and r["timed_s"] > 0 and r["compile_s"] > 0
  assert math.isclose(r["images_per_s"], smoke_config.batch_size * 2 / r["timed_s"])
  assert math.isclose(r["step_s"], r["timed_s"] / 2)
  assert r["model_flops_per_step"] > 0
  # The compiled program is one device's share of the global step: at least an eighth of it (the
  # parameter update is repeated on every device), far from all of it.
  assert 0.95 / 8 < r["compiled_flops_per_device"] / r["model_flops_per_step"] < 0.5
  assert math.isclose(r["mfu"], r["model_flops_per_step"] * (2 / r["timed_s"]) / r["peak_flops"])
  assert math.isclose(r["mfu_vs_bf16_peak"],
                      r["model_flops_per_step"] * (2 / r["timed_s"]) / r["bf16_peak_flops"])
  # On CPU the peak is measured at the run's dtype, not taken from the table.
  assert r["peak_source"].startswith("measured") and r["peak_flops"] > 0
  assert r["finite"] and r["dtype"] == "float32" and not r["hlo_has_bf16"]


def test_model_flops_scale_with_batch(smoke_config, measured):
  """The FLOP count is of the whole step: half the batch, about half the FLOPs (the parameter
  update does not halve, hence the tolerance)."""
  half = smoke_config.copy_and_resolve_references()
  with half.unlocked():
    half.batch_size //= 2
  builder = throughput.StepBuilder(half)
  batch = throughput.synthetic_batch(half, builder.info, builder.batch_sharding)
  flops = throughput.model_flops_per_step(half, batch, builder.lower(batch))
  assert flops == pytest.approx(measured["model_flops_per_step"] / 2, rel=0.1)


@pytest.mark.parametrize("kind, name, bf16", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989e12), ("NVIDIA H100 PCIe", "H100 PCIe", 756e12),
    ("NVIDIA H200", "H200", 989e12), ("NVIDIA A100-SXM4-40GB", "A100", 312e12),
    ("TPU v4", "TPU v4", 275e12), ("TPU v5 lite", "TPU v5e", 197e12),
    ("TPU v5", "TPU v5p", 459e12), ("TPU v6 lite", "TPU v6e", 918e12)])
def test_device_peak_table(kind, name, bf16):
  peak = throughput.device_peak(kind)
  assert (peak.name, peak.bfloat16) == (name, bf16)
  assert peak.float32 <= peak.bfloat16


def test_unknown_device_kind_names_the_override():
  with pytest.raises(ValueError, match=r"'Some GPU'.*--peak_flops"):
    throughput.device_peak("Some GPU")


def test_peak_flops_override_scales_with_devices():
  peaks = throughput.Peaks(num_devices=4, override=1e12)
  assert peaks("float32")[0] == peaks("bfloat16")[0] == 4e12


@pytest.mark.parametrize("dtypes, remats, match", [
    (["float16"], ["none"], r"--dtypes .*float16"),
    ([], ["none"], r"--dtypes"),
    (["float32"], ["everything"], r"--remats .*everything"),
])
def test_bad_flags(dtypes, remats, match):
  with pytest.raises(ValueError, match=match):
    throughput.check_runs(dtypes, remats)


def test_bad_config_dtype_fails_before_compute(smoke_config):
  config = throughput.with_model(smoke_config, dtype="float16")
  with pytest.raises(ValueError, match=r"model.dtype .*float16"):
    throughput.measure(config, steps=1, warmup=1, peaks=throughput.Peaks(num_devices=8))


def test_default_name():
  assert throughput.default_name("configs/simclr.py") == "simclr_fashion_mnist"
  assert throughput.default_name("configs/mae.py:imagenet,smoke") == "mae_imagenet_smoke"
