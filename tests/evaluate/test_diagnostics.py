"""The risk decomposition and SSLMem on constructed features whose answer is known."""

import numpy as np
import pytest

from sslx.evaluate import diagnostics

C = 4
PROBE = {"weight_decays": (0.0,), "max_iters": 200}  # no hold-out fit: the cases are exact


def clustered(n, seed, noise=0.05):
  """Features that are the class's one-hot code plus a little noise: linearly separable."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % C
  return np.eye(C)[labels] * 3 + noise * rng.normal(size=(n, C)), labels


def test_separable_everywhere_has_no_error():
  (x, y), (xt, yt) = clustered(400, 0), clustered(100, 1)
  terms = diagnostics.risk_decomposition(x, y, xt, yt, num_classes=C, **PROBE)
  assert terms["total"] == 0 and terms["usability"] == 0
  assert terms["probe_generalization"] == 0 and terms["encoder_generalization"] == 0
  assert terms["approximation"] is None


def test_an_encoder_that_does_not_generalise():
  # Its training images are separable, unseen images come out as noise: all of the error is
  # the encoder's generalisation (chance is 1 - 1/C).
  (x, y), (_, yt) = clustered(400, 0), clustered(200, 1)
  xt = np.random.default_rng(2).normal(size=(200, C))
  terms = diagnostics.risk_decomposition(x, y, xt, yt, num_classes=C, **PROBE)
  assert terms["usability"] == 0 and terms["probe_generalization"] == 0
  assert terms["encoder_generalization"] == pytest.approx(1 - 1 / C, abs=0.1)


def test_a_probe_that_memorises_its_labels():
  # Random features of more dimensions than images, random labels: a linear probe fits any
  # labelling of its training images, predicts held-out ones at chance, and the test images
  # behave like held-out training ones (no encoder generalisation gap).
  rng = np.random.default_rng(3)
  x, xt = rng.normal(size=(300, 400)), rng.normal(size=(100, 400))
  y, yt = rng.integers(0, C, 300), rng.integers(0, C, 100)
  terms = diagnostics.risk_decomposition(x, y, xt, yt, num_classes=C, **PROBE)
  assert terms["usability"] == 0
  assert terms["probe_generalization"] == pytest.approx(1 - 1 / C, abs=0.12)
  assert terms["encoder_generalization"] == pytest.approx(0, abs=0.12)
  total = sum(terms[k] for k in diagnostics.RISK_TERMS if terms[k] is not None)
  assert total == pytest.approx(terms["total"])

  given = diagnostics.risk_decomposition(x, y, xt, yt, num_classes=C,
                                         supervised_train_error=0.0, **PROBE)
  assert given["approximation"] == 0.0 and given["usability"] == terms["usability"]
  with pytest.raises(ValueError, match=r"supervised_train_error must be in \[0, 1\]"):
    diagnostics.risk_decomposition(x, y, xt, yt, num_classes=C, supervised_train_error=2.0)
  with pytest.raises(ValueError, match=r"the test split \(300 images\) must be smaller"):
    diagnostics.risk_decomposition(x, y, x, y, num_classes=C)


def test_sslmem_on_known_encoders():
  rng = np.random.default_rng(4)
  centres = rng.normal(size=(5, 1, 3))
  tight = centres + 0.01 * rng.normal(size=(5, 6, 3))  # f: an image's 6 views nearly one point
  loose = centres + 1.0 * rng.normal(size=(5, 6, 3))  # g: spread out
  scores = diagnostics.sslmem(tight, loose)
  np.testing.assert_allclose(scores, diagnostics.alignment(loose) - diagnostics.alignment(tight))
  assert np.all(scores > 0.5)
  np.testing.assert_allclose(diagnostics.sslmem(loose, tight), -scores)
  np.testing.assert_array_equal(diagnostics.sslmem(loose, loose), np.zeros(5))
  # Two views: the alignment is their distance.
  two = np.array([[[0.0, 0.0], [3.0, 4.0]]])
  np.testing.assert_allclose(diagnostics.alignment(two), [5.0])
  np.testing.assert_allclose(diagnostics.alignment(two * 7, normalize=True), [1.0])
  with pytest.raises(ValueError, match="one shape"):
    diagnostics.sslmem(tight, loose[:, :4])
  with pytest.raises(ValueError, match=r"views >= 2"):
    diagnostics.alignment(tight[:, :1])
