"""Eight fake CPU devices for every test, so mesh and sharding code runs as on a pod slice."""

import os
import shutil
import tempfile

# Must happen before jax is imported anywhere in the test session.
# --xla_backend_optimization_level=0: XLA's CPU backend spends most of a test's time in LLVM's
# optimisation passes, not in running the program (a test runs a handful of steps of a small
# model). Measured on this 2-core machine: the SimCLRv2 smoke run's init compiled in 6.5 s at
# the default level and 0.8 s at level 0; pre-train plus fine-tune took 80 s of CPU, 37 s at
# level 0. The optimisation level changes how fast the compiled code runs, not what it computes.
# Subprocesses inherit the flags (tests/train/helpers.py: xla_flags changes only the count).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the whole test run: the controller makes it before the
# pytest-xdist workers start, and they and every subprocess they launch (the multi-process and
# fault tests' training runs) inherit the variable. Many tests compile the same step (the
# Fashion-MNIST smoke config in training, fault, notebook and CLI tests; a straight run and its
# restart): after the first, XLA's executable is read back instead of compiled again. A fresh
# directory per run, so a run never reads a cache another version of the code wrote; removed
# when the run ends.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sslx-test-jax-cache-")
  os.environ["SSLX_TEST_CACHE_OWNER"] = str(os.getpid())
  # Programs that compile in over 0.1 s, not only jax's default of over 1 s: the many small
  # eager programs of a model's initialisation (one random draw per parameter shape) are shared
  # too (about 12% less CPU measured on test_methods.py with two workers).
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory):
  """A data dir holding the real Fashion-MNIST, prepared once per session from the Debian
  package's idx files (which scripts/setup.sh installs); never downloads."""
  from sslx.data import sources
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  info = sources.get_dataset_info("fashion_mnist")
  sources.load_source("fashion_mnist", info.train_split, data_dir=data_dir, allow_download=False)
  return data_dir


def pytest_unconfigure(config):
  """The process that made the run's compilation cache removes it."""
  del config
  if os.environ.get("SSLX_TEST_CACHE_OWNER") == str(os.getpid()):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  """The slow end-to-end tests first (stable otherwise): pytest-xdist hands tests out in this
  order, and a four-minute multi-process test started last would leave the other worker idle
  while it runs. Longest first keeps both CPUs busy to the end of the run."""
  del config
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)
