"""benchmarks/compile_check.py on 8 fake CPU devices (the path the TPU topologies take, without
libtpu): the report's arithmetic, the preset table against the configs' docstrings, and the
errors for bad input."""

import math

import pytest

from benchmarks import compile_check
from configs import simclr


@pytest.fixture(scope="module")
def smoke_row():
  config = simclr.get_config("smoke")
  with config.unlocked():
    config.mesh.axes, config.mesh.shape = ("data",), (-1,)
  return compile_check.compile_check(config, compile_check.get_topology("cpu-8"))


def test_report_arithmetic(smoke_row):
  r = smoke_row
  assert r["chips"] == 8 and r["mesh"] == {"data": 8} and r["batch_per_chip"] == 32 / 8
  assert r["peak_estimate_bytes"] == (r["argument_bytes"] + r["output_bytes"]
                                      - r["alias_bytes"] + r["temp_bytes"])
  # The state is donated: every state byte is an argument aliased by an output.
  state = sum(r["state_bytes_per_chip"].values())
  assert 0 < state <= r["alias_bytes"] <= r["argument_bytes"]
  assert r["fits"] == (r["peak_estimate_bytes"] <= 0.9 * r["hbm_bytes"])
  assert math.isclose(r["peak_fraction_of_hbm"], r["peak_estimate_bytes"] / r["hbm_bytes"])
  assert r["flops_per_chip"] > 0 and r["flops_per_step"] == r["flops_per_chip"] * 8
  # CPU: no roofline estimate and no peak FLOP/s, so no MFU (rather than a made-up one).
  assert r["estimated_step_s"] is None and r["mfu"] is None
  assert r["compile_s"] > 0 and r["lower_s"] > 0


def test_verdict_follows_the_chip_table(smoke_row):
  """The same measured row judged against the TPU chips' HBM and peaks."""
  for chip in compile_check.CHIPS.values():
    row = {**smoke_row, "estimated_step_s": 0.5}
    row["peak_estimate_bytes"] = int(0.9 * chip.hbm_bytes)  # exactly the 10% headroom: fits
    compile_check.add_verdict(row, chip)
    assert row["fits"]
    assert math.isclose(row["mfu"], row["flops_per_chip"] / (0.5 * chip.peak_bf16_flops))
    assert math.isclose(row["images_per_s"], row["global_batch"] / 0.5)
    row["peak_estimate_bytes"] += 1
    compile_check.add_verdict(row, chip)
    assert not row["fits"]


def test_presets_document_their_slice():
  """Each preset's config docstring names the slice the benchmark checks it on."""
  import importlib
  for name, preset in compile_check.PRESETS.items():
    doc = importlib.import_module(f"configs.{preset.method}").__doc__
    assert f"{preset.documented} " in doc and "compile_check" in doc, (name, preset.documented)
    compile_check.preset_config(name)  # builds, with its overrides


def test_bad_input_is_named():
  with pytest.raises(ValueError, match=r"preset 'resnet9'.*known presets"):
    compile_check.preset_config("resnet9")
  with pytest.raises(ValueError, match=r"topology 'v9-32'.*v5p-32"):
    compile_check.get_topology("v9-32")
  with pytest.raises(ValueError, match=r"topology 'v5p-6'.*sizes"):
    compile_check.get_topology("v5p-6")
  with pytest.raises(ValueError, match=r"topology 'cpu-64' needs 64 CPU devices"):
    compile_check.get_topology("cpu-64")
  with pytest.raises(ValueError, match=r"model\.nope"):
    compile_check.preset_config("simclr_r50", {"model.nope": 1})
  with pytest.raises(ValueError, match=r"--set 'remat'.*FIELD=VALUE"):
    compile_check.parse_overrides(["remat"])
  config = simclr.get_config("smoke")
  with config.unlocked():
    config.mesh.axes, config.mesh.shape = ("data", "fsdp"), (3, -1)
  with pytest.raises(ValueError, match=r"mesh\.shape \(3, -1\) does not fit the 8 chips"):
    compile_check.slice_mesh(config, compile_check.get_topology("cpu-8"))


def test_a_multi_crop_step_is_data_parallel():
  """iBOT's step (multi-crop views, per-image masks) on 8 devices runs an eighth of the
  one-device step's FLOPs per device: the views are flattened image-major, so each device
  encodes only its own rows. (Flattened view-major, XLA computed the whole global batch on
  every device: the 8-device step then counted as many FLOPs per device as one device's.)"""
  from configs import ibot
  config = ibot.get_config("smoke")
  with config.unlocked():
    config.mesh.axes, config.mesh.shape = ("data",), (-1,)
    config.batch_size = 16
    config.multicrop["local"]["number"] = 0  # the global crops and their masks suffice
  one = compile_check.compile_check(config, compile_check.get_topology("cpu-1"))
  eight = compile_check.compile_check(config, compile_check.get_topology("cpu-8"))
  assert eight["flops_per_chip"] < 0.2 * one["flops_per_chip"], (eight["flops_per_chip"],
                                                                  one["flops_per_chip"])
