#!/usr/bin/env bash
# A separate venv with torch, torchvision, timm and lightly, only for the PyTorch comparisons
# (benchmarks/losses.py's column, benchmarks/torch_throughput.py): torch is never a dependency
# of sslx. Needs uv (scripts/setup.sh puts one in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=$( [ -x .venv/bin/uv ] && echo .venv/bin/uv || command -v uv )
"$UV" venv -q -p "${PYTHON:-python3}" .venv-lightly
"$UV" pip install -q -p .venv-lightly/bin/python torch==2.14.1 torchvision==0.29.1 timm lightly numpy
.venv-lightly/bin/python -c "import lightly, timm, torch; print('lightly', lightly.__version__, 'timm', timm.__version__, 'torch', torch.__version__)"
