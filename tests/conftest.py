"""Eight fake CPU devices for every test, so mesh and sharding code runs as on a pod slice."""

import os

# Must happen before jax is imported anywhere in the test session.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
