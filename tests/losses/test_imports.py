"""sslx.losses must stay importable with jax and numpy alone, export what it documents, and
every public loss's docstring example must run."""

import doctest
import os
import pathlib
import subprocess
import sys

import pytest

import sslx.losses

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

HEAVY = ("flax", "optax", "tensorflow_datasets", "grain", "orbax", "tensorflow", "ml_collections")

# A fresh interpreter, so modules other tests imported into this process don't count.
SCRIPT = """
import sys
import sslx.losses
assert callable(sslx.losses.nt_xent)
heavy = {heavy!r}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
print(",".join(loaded))
"""


def test_import_sslx_losses_pulls_in_no_heavy_dependencies():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
  env.setdefault("JAX_PLATFORMS", "cpu")
  result = subprocess.run(
      [sys.executable, "-c", SCRIPT.format(heavy=HEAVY)],
      check=False, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)
  assert result.returncode == 0, result.stderr
  loaded = result.stdout.strip()
  assert loaded == "", f"import sslx.losses loaded {loaded}"


def test_public_names_are_callable_and_documented():
  assert sslx.losses.__all__ == sorted(sslx.losses.__all__)
  for name in sslx.losses.__all__:
    fn = getattr(sslx.losses, name)
    assert callable(fn), name
    assert fn.__doc__ and len(fn.__doc__) > 200, f"{name} needs a docstring"


@pytest.mark.parametrize("name", sslx.losses.__all__)
def test_docstring_example_runs(name):
  fn = getattr(sslx.losses, name)
  tests = doctest.DocTestFinder().find(fn, name, globs={})
  examples = [example for test in tests for example in test.examples]
  assert examples, f"{name}'s docstring has no runnable example"
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  for test in tests:
    runner.run(test)
  assert runner.summarize(verbose=False).failed == 0, f"{name}'s docstring example fails"
