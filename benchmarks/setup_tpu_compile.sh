#!/usr/bin/env bash
# A separate venv with jax[tpu] (libtpu), only for benchmarks/compile_check.py's ahead-of-time
# compiles for TPU topologies on a machine without a TPU: libtpu is never a dependency of sslx.
# jax and every other package are pinned to .venv's versions, so the TPU compile sees the same
# jax and sslx as the tests. Needs .venv (scripts/setup.sh) and uv (which it puts in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=$( [ -x .venv/bin/uv ] && echo .venv/bin/uv || command -v uv )
JAX_VERSION=$(.venv/bin/python -c "import jax; print(jax.__version__)")
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
"$UV" pip freeze -p .venv/bin/python | grep -v -e '^-e ' -e '^sslx' > "$CONSTRAINTS"
"$UV" venv -q -p "$(.venv/bin/python -c 'import sys; print(sys.executable)')" .venv-tpu
"$UV" pip install -q -p .venv-tpu/bin/python -c "$CONSTRAINTS" "jax[tpu]==$JAX_VERSION" -e .
.venv-tpu/bin/python -c "import jax, libtpu; from jax.experimental import topologies; \
print('jax', jax.__version__, 'libtpu', getattr(libtpu, '__version__', '?'))"
