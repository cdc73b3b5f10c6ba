"""sslx.evaluate.plots: the PNGs a run writes, their inputs' checks, and the numbers they draw
(covariance spectrum, 2-D map) against NumPy / scikit-learn references."""

import os
import sys

import matplotlib.image
import numpy as np
import pytest

from sslx.evaluate import plots
from tests.evaluate.test_monitor import monitored_run  # noqa: F401  (the shared smoke run)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_bytes=5_000, min_side=200):
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE, path
  assert os.path.getsize(path) > min_bytes, (path, os.path.getsize(path))
  pixels = matplotlib.image.imread(path)
  assert pixels.ndim == 3 and min(pixels.shape[:2]) >= min_side, pixels.shape
  assert pixels[..., :3].std() > 0.01  # not a blank canvas


def test_training_writes_the_three_plots(monitored_run):  # noqa: F811
  _, workdir, _ = monitored_run
  for name in (plots.CURVES, plots.SPECTRUM, plots.EMBEDDING_MAP):
    assert_png(os.path.join(workdir, name))


def test_covariance_eigenvalues_match_numpy():
  z = np.random.default_rng(0).standard_normal((50, 6)) @ np.diag([5, 3, 2, 1, 0.5, 0.1])
  expected = np.sort(np.linalg.eigvalsh(np.cov(z.T, ddof=1)))[::-1]
  np.testing.assert_allclose(plots.covariance_eigenvalues(z), expected, rtol=1e-10)


def test_pca_fallback_without_scikit_learn_matches_sklearn_pca(monkeypatch):
  from sklearn.decomposition import PCA
  x = np.random.default_rng(1).standard_normal((40, 5)) * [4.0, 2.0, 1.0, 0.5, 0.1]
  expected = PCA(n_components=2).fit_transform(x)
  monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # import fails as if uninstalled
  coords, how = plots.embed_2d(x)
  assert how == "PCA"
  np.testing.assert_allclose(np.abs(coords), np.abs(expected), rtol=1e-6, atol=1e-9)


def test_plot_functions_write_pngs_and_check_inputs(tmp_path):
  rng = np.random.default_rng(2)
  z = rng.standard_normal((60, 8)).astype(np.float32)
  labels = rng.integers(0, 3, 60)
  assert_png(plots.plot_spectrum(z, str(tmp_path / "s.png")))
  assert_png(plots.plot_embedding_map(z, labels, str(tmp_path / "m.png")))
  records = [{"step": s, "train/loss": 1.0 / s, "monitor/rankme": float(s)} for s in (1, 2, 3)]
  assert_png(plots.plot_curves(records, str(tmp_path / "c.png")), min_bytes=2_000)

  with pytest.raises(ValueError, match=r"z must be a \[n, d\] array"):
    plots.plot_spectrum(z[0], str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="z must hold finite real numbers"):
    plots.plot_spectrum(np.full((5, 3), np.nan), str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match=r"labels must be integers of shape \(60,\)"):
    plots.plot_embedding_map(z, labels[:10], str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="records must be a non-empty list"):
    plots.plot_curves([], str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="every record must be a dict with a 'step' key"):
    plots.plot_curves([{"loss": 1.0}], str(tmp_path / "x.png"))
  assert not os.path.exists(tmp_path / "x.png")
