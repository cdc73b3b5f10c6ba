#!/usr/bin/env bash
# sslx (JAX) against PyTorch (timm / torchvision models, lightly's heads and losses) on one GPU:
# images/s, compile seconds, FLOPs and MFU of the same SSL train steps, in ONE device call.
#
# 1. Here, once per checkout (needs PyPI): the wheels the GPU image lacks, for its Python 3.12
#        bash benchmarks/gpu_throughput.sh prepare
#    writes .whl/ (~12 MiB: ml_collections, grain, tensorflow-datasets and their missing
#    dependencies, flax 0.12.12, lightly 1.6.0) and adds /.whl/ to
#    .git/info/exclude. The image already has jax 0.11.2 (CUDA), optax, orbax, chex, torch,
#    torchvision and timm (see the device tool's KINDS.md). Checked on this CPU in a Python 3.12
#    venv with jax 0.11.2 and these wheels: the smoke configs train (flax 0.12.8 fails to
#    import with jax 0.11.2, hence 0.12.12).
# 2. The device tool's run, one call (~9 min of the 15 min lease; the start takes 1-2 more):
#        command:   bash benchmarks/gpu_throughput.sh run
#        carry:     [".whl"]
#        timeout_s: 590
#    Runs go in the priority order of RUNS below until GPU_DEADLINE_S (default 540 s) from the
#    script's start; each has its own time limit; a skipped or failed run is reported and the
#    next one goes on. What comes back under files_at: gpu_throughput.log and
#    throughput_gpu.tgz (benchmarks/results/throughput_gpu_*.json, throughput_torch_gpu.json).
#    Here: tar xzf <files_at>/throughput_gpu.tgz -C benchmarks/results
# 3. Runs that the deadline left out can go in a second call, named:
#        bash benchmarks/gpu_throughput.sh run jax_dino torch_dino jax_mae torch_mae
#
# Batches, shrunk from the imagenet presets to fit one 80 GB H100 without remat and to time in
# seconds: SimCLR ResNet-50 256 (bf16 and f32), MoCo v3 ViT-B/16 128 (2 views), DINO ViT-S/16
# 128 (2x224 + 8x96), MAE ViT-B/16 256 (75% masked). The EMA momentum's reference batch follows
# the batch (no effect on speed). JAX_COMPILATION_CACHE_DIR keeps compiled steps for a second
# call on the same warm machine; a fresh machine starts with an empty cache.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(array_record==0.8.6 dm-tree==0.1.10 grain==0.2.18 simplejpeg==1.9.0
        googleapis-common-protos==1.76.0 immutabledict==4.3.1 importlib_resources==7.1.0
        ml_collections==1.1.0 portpicker==1.6.0 simple-parsing==0.1.9 docstring_parser==0.18.0
        tensorboardX==2.6.5 tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0
        termcolor==3.3.0 toml==0.10.2 flax==0.12.12 lightly==1.6.0)

prepare() {
  mkdir -p .whl .git/info
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
  python3 -m pip wheel -q --no-deps -w .whl promise==2.3  # an sdist only: built here, pure Python
  ls .whl && du -sh .whl
}

COMMON_JAX="--steps=10 --rounds=3 --warmup=2"
COMMON_TORCH="--steps=10 --rounds=3 --warmup=3 --name=gpu"
# name|time limit (s)|command, in priority order: the ViT-B comparison first (issue 18's targets:
# >= 50% MFU, >= 1.3x PyTorch), then ResNet-50 (bf16 >= 1.8x f32, >= 35% MFU), DINO, MAE.
RUNS=(
  "jax_moco|150|python3 benchmarks/throughput.py --config configs/moco_v3.py:imagenet \
    --config.batch_size=128 --config.ema.reference_batch_size=128 --dtypes=bfloat16 \
    --name=gpu_moco_v3_vit_b16 $COMMON_JAX"
  "torch_moco|140|python3 benchmarks/torch_throughput.py --method=moco_v3 --arch=vit_base \
    --batch_size=128 $COMMON_TORCH"
  "jax_simclr|200|python3 benchmarks/throughput.py --config configs/simclr.py:imagenet \
    --config.batch_size=256 --dtypes=bfloat16,float32 --name=gpu_simclr_resnet50 $COMMON_JAX"
  "torch_simclr|120|python3 benchmarks/torch_throughput.py --method=simclr --arch=resnet50 \
    --batch_size=256 $COMMON_TORCH"
  "jax_dino|130|python3 benchmarks/throughput.py --config configs/dino.py:imagenet \
    --config.batch_size=128 --config.ema.reference_batch_size=128 --dtypes=bfloat16 \
    --name=gpu_dino_vit_s16 $COMMON_JAX"
  "torch_dino|120|python3 benchmarks/torch_throughput.py --method=dino --arch=vit_small \
    --batch_size=128 --local_crops=8 $COMMON_TORCH"
  "jax_mae|120|python3 benchmarks/throughput.py --config configs/mae.py:imagenet \
    --config.batch_size=256 --dtypes=bfloat16 --name=gpu_mae_vit_b16 $COMMON_JAX"
  "torch_mae|110|python3 benchmarks/torch_throughput.py --method=mae --arch=vit_base \
    --batch_size=256 $COMMON_TORCH"
)

run() {
  local start=$SECONDS deadline=${GPU_DEADLINE_S:-540} out=${OUT:-/tmp/gpu_throughput_out}
  mkdir -p "$out"
  local log="$out/gpu_throughput.log" dry=${DRY_RUN:-}  # DRY_RUN=1: print the runs, start none
  exec > >(tee "$log") 2>&1
  if [ -n "$dry" ]; then
    :
  elif [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || { echo "wheel install failed"; return 1; }
    export PYTHONPATH=/tmp/site:$PWD
  else
    echo "no .whl/: run 'bash benchmarks/gpu_throughput.sh prepare' here and carry .whl"
    export PYTHONPATH=$PWD
  fi
  export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache PYTHONUNBUFFERED=1
  [ -n "$dry" ] || preflight || return 1
  local wanted=("$@") entry name limit cmd left
  for entry in "${RUNS[@]}"; do
    IFS='|' read -r name limit cmd <<< "$entry"
    if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " == *" $name "* ]]; then continue; fi
    left=$((deadline - (SECONDS - start)))
    if [ "$left" -lt 60 ]; then
      echo "=== $name: skipped, $left s left before the deadline"
      continue
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit $limit s, $((SECONDS - start)) s elapsed): $(echo $cmd)"
    [ -n "$dry" ] && continue
    # shellcheck disable=SC2086
    timeout -k 5 "$limit" $cmd || echo "=== $name: exit $? (124: its time limit)"
  done
  [ -n "$dry" ] && return 0
  tar czf "$out/throughput_gpu.tgz" -C benchmarks/results \
    $(cd benchmarks/results && ls throughput_gpu_*.json throughput_torch_gpu.json 2>/dev/null)
  echo "=== done in $((SECONDS - start)) s; results in $out"
}

preflight() {  # versions, and a GPU that jax sees (else every run would time the CPU)
  nvidia-smi -L
  python3 -c "import jax, flax, optax, torch, timm, torchvision, lightly; print('jax',
jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch',
torch.__version__, 'timm', timm.__version__, 'torchvision', torchvision.__version__, 'lightly',
lightly.__version__)" || return 1
  python3 -c "import jax; assert jax.default_backend() == 'gpu', jax.devices()"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 prepare | run [run names...]"; exit 2 ;;
esac
