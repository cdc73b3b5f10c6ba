"""sslx.losses must stay importable with jax and numpy alone."""

import os
import pathlib
import subprocess
import sys

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


def test_public_api():
  import sslx.losses

  assert sslx.losses.__all__ == ["nt_xent"]
