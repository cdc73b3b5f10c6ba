"""What a run executes on: the start-up log line (JAX backend, device kind, device and process
counts) and the check that a run meant for accelerators did not fall back to the CPU.
"""

import jax
from absl import logging

# How to get an accelerator build of jax (setup.cfg's extras map to jax's own).
INSTALL_HELP = (
    "on a GPU node: `ACCELERATOR=cuda12 bash scripts/setup.sh` (or `pip install -e '.[cuda12]'`; "
    "cuda13 for CUDA 13 drivers); on a TPU VM: `ACCELERATOR=tpu bash scripts/setup.sh` (or "
    "`pip install -e '.[tpu]'`)")


def runtime_info() -> dict:
  """The JAX backend, device kind(s), local / global device counts and this process's place."""
  kinds = sorted({d.device_kind for d in jax.devices()})
  return {
      "jax_version": jax.__version__,
      "backend": jax.default_backend(),
      "device_kind": ", ".join(kinds),
      "local_devices": jax.local_device_count(),
      "global_devices": jax.device_count(),
      "process_index": jax.process_index(),
      "process_count": jax.process_count(),
  }


def log_and_check_runtime(*, require_accelerator: bool) -> dict:
  """Logs `runtime_info()` and returns it. With `require_accelerator`, a CPU backend is a
  RuntimeError saying how to install jax for GPUs or TPUs: jax quietly falls back to the CPU
  when it has no accelerator support, and a GPU preset would then train for days on the CPU.

  Call it after `sharding.initialize_distributed` (the process counts are only known then) and
  before anything compiles.
  """
  info = runtime_info()
  logging.info("JAX %s on backend %r (%s): %d local / %d global devices, process %d of %d",
               info["jax_version"], info["backend"], info["device_kind"], info["local_devices"],
               info["global_devices"], info["process_index"], info["process_count"])
  if require_accelerator and info["backend"] == "cpu":
    raise RuntimeError(
        f"config.require_accelerator=True, but JAX's backend is 'cpu' ({info['global_devices']} "
        f"{info['device_kind']} devices): this jax has no GPU / TPU support, or found no "
        f"accelerator. Install it {INSTALL_HELP}; if it is installed, check that the "
        "accelerator is visible (nvidia-smi, and JAX_PLATFORMS unset or naming it). To train on "
        "the CPU anyway, pass --config.require_accelerator=False.")
  return info
