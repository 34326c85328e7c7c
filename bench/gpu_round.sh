#!/usr/bin/env bash
# The checks and figures that need a CUDA GPU, in the order docs/BENCHMARKS.md reports them.
#
#   bash bench/gpu_round.sh [STAGE ...]      stages: env check tests ops speed kimg (default: all of them)
#
# Every stage prints what it ran; results also go to $OUT (default ./gpu-round), one file per stage.
# Each stage fits in a few minutes on one H100; `kimg` is the longest (three resolutions).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-round}
mkdir -p "$OUT"
STAGES=${*:-env check tests ops speed kimg}
export PYTHONUNBUFFERED=1

run() {  # run NAME CMD...: echo, run, keep the output
  local name=$1; shift
  echo "### $*" | tee -a "$OUT/$name.txt"
  "$@" 2>&1 | tee -a "$OUT/$name.txt"
}

for stage in $STAGES; do
  case $stage in
    env)
      run env nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
      run env python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
      run env python3 -m engine info ;;
    check)
      # The dispatch's check of every CUDA kernel and dtype against the reference (a child process each), the
      # verdicts it stores, and what each costs in a fresh process.
      run check python3 -m engine info --check
      run check python3 bench/ops_check.py --device cuda --repeat 2 ;;
    tests)
      # CUDA kernels against the reference (the dispatch's check included: sound kernels pass in every dtype, a
      # wrong one and a device-side assert are caught in the child), fp16/bf16 training, fp16 layers.
      run tests python3 -m pytest -q -rs tests/test_extensions_cuda.py tests/test_ops_verify.py \
        tests/test_train_gpu.py tests/test_nets.py ;;
    ops)
      run ops python3 bench/ops.py --device cuda
      run ops python3 bench/ops.py --device cuda --dtype float16 ;;
    speed)
      for r in 64 256; do
        run speed python3 bench/generate_speed.py --device cuda --res $r --cbase 16384 --cmax 512 --batch 32
      done
      run speed python3 bench/train_speed.py --device cuda --res 64 --batch 32 --cbase 16384 --cmax 512 --steps 20 ;;
    kimg)
      run kimg python3 bench/train_kimg.py --device cuda --res 64,128,256 --kimg 2 --tick 0.4 ;;
    *)
      echo "unknown stage $stage (env check tests ops speed kimg)"; exit 2 ;;
  esac
done
