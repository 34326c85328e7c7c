#!/usr/bin/env bash
# LeCam regularisation and adaptive pseudo augmentation (APA) against ADA alone, on small data: the study of
# docs/BENCHMARKS.md "Convergence: LeCam and APA on small data".
#
#   bench/study_lecam_apa.sh [DIR]      # DIR (default ./study-lecam-apa) holds the datasets, runs and results
#
# Arms, all on the tiny preset at 32 px with x-flips (--mirror 1):
#   ada          the preset as it is (ADA alone)
#   ada+lecam    --lecam 0.3
#   ada+apa      --apa 1           (APA target 0.6, ADA's speed: p can go from 0 to 1 in 500 kimg)
#   ada+both     --lecam 0.3 --apa 1
# on sub1k (a 1,000-image subset of the emoji: the limited-data case) all four, on full (all 4,009 emoji) ada and
# ada+both. Every arm trains SEEDS training seeds for KIMG kimg with bench/convergence.py (the real trainer), which
# evaluates the untrained network and POINTS later snapshots: KID and FID of IMAGES generated images against 500
# real emoji (emoji32-ref500.zip, the reference of the earlier convergence studies).
#
# Two lanes run side by side, one thread each (OMP_NUM_THREADS=1), each a sequence of bench/convergence.py calls;
# seed 0 of every arm comes before seed 1, so a study cut short still compares every arm. Each arm keeps its own
# study folder (DIR/arms/<set>-<arm>: no two processes write one curve file); at the end the arms of each set are
# merged into DIR/<set>/curve.jsonl and drawn (curves.png, summary.md) with bench/convergence.py --plot-only.
# Redraw at any time, also while the study runs (from the arms finished so far): bench/study_lecam_apa.sh DIR --plot
#
# Environment: KIMG (18), POINTS (3), IMAGES (200), SEEDS ("0 1"), PYTHON (python3), and the jobs of the two lanes,
# LANE_A ("sub1k:ada sub1k:ada+lecam full:ada") and LANE_B ("sub1k:ada+apa sub1k:ada+both full:ada+both"), each a
# list of SET:ARM; e.g. a longer study of two arms: KIMG=100 POINTS=5 LANE_A=sub1k:ada LANE_B=sub1k:ada+both
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$(realpath -m "${1:-study-lecam-apa}")"
MODE="${2:-run}"
KIMG="${KIMG:-18}"
POINTS="${POINTS:-3}"
IMAGES="${IMAGES:-200}"
SEEDS="${SEEDS:-0 1}"
PYTHON="${PYTHON:-python3}"
ARMS_SUB1K="ada ada+lecam ada+apa ada+both"
ARMS_FULL="ada ada+both"

flags_of() {  # the trainer flags of an arm
    case "$1" in
        ada) echo "" ;;
        ada+lecam) echo "--lecam 0.3" ;;
        ada+apa) echo "--apa 1" ;;
        ada+both) echo "--lecam 0.3 --apa 1" ;;
        *) echo "unknown arm $1" >&2; exit 2 ;;
    esac
}

merge_and_plot() {  # merge each set's arm folders (in the arms' order) and draw its curves and summary
    local set arms arm found
    for set in sub1k full; do
        arms="$ARMS_SUB1K"; [ "$set" = full ] && arms="$ARMS_FULL"
        mkdir -p "$DIR/$set"
        : > "$DIR/$set/curve.jsonl.tmp"
        found=0
        for arm in $arms; do
            if [ -s "$DIR/arms/$set-$arm/curve.jsonl" ]; then
                cat "$DIR/arms/$set-$arm/curve.jsonl" >> "$DIR/$set/curve.jsonl.tmp"
                found=1
            fi
        done
        mv "$DIR/$set/curve.jsonl.tmp" "$DIR/$set/curve.jsonl"
        if [ "$found" = 1 ]; then
            (cd "$ROOT" && "$PYTHON" bench/convergence.py --plot-only --out "$DIR/$set")
        fi
    done
}

if [ "$MODE" = "--plot" ]; then
    merge_and_plot
    exit 0
fi

mkdir -p "$DIR/arms"
cd "$ROOT"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# -- the datasets (the project's own tool; the commands of the earlier convergence studies, plus the subset) ----
prepare() {  # dest, then prepare's extra flags
    local dest="$DIR/$1"; shift
    [ -s "$dest" ] || "$PYTHON" -m engine prepare --source emoji --dest "$dest" --resolution 32 --no-progress "$@"
}
prepare emoji32.zip
prepare emoji32-ref500.zip --max-images 500 --shuffle-seed 1
prepare emoji32-sub1k.zip --max-images 1000 --shuffle-seed 2
# Inception features of the 500 real images, computed once (cached on disk) before the two lanes would both do it.
"$PYTHON" -c "
import sys; sys.path.insert(0, 'bench')
from convergence import Evaluator
Evaluator('$DIR/emoji32-ref500.zip', 500, 2, 'cpu')"

one() {  # set, arm, seed: one training seed of one arm, evaluated
    local set="$1" arm="$2" seed="$3" data
    data="$DIR/emoji32-sub1k.zip"; [ "$set" = full ] && data="$DIR/emoji32.zip"
    echo "$(date '+%F %T') start $set $arm seed $seed"
    # shellcheck disable=SC2046  # the arm's flags are words
    "$PYTHON" bench/convergence.py --data "$data" --ref "$DIR/emoji32-ref500.zip" --real 500 --cfg tiny --mirror 1 \
        --kimg "$KIMG" --points "$POINTS" --images "$IMAGES" --seeds "$seed," --name "$arm" \
        --out "$DIR/arms/$set-$arm" $(flags_of "$arm") > "$DIR/arms/$set-$arm.seed$seed.log" 2>&1 \
        || echo "$(date '+%F %T') FAILED $set $arm seed $seed: see $DIR/arms/$set-$arm.seed$seed.log"
    echo "$(date '+%F %T') done  $set $arm seed $seed"
}

lane() {  # the arms of one lane, seed 0 of each first
    local seed job
    for seed in $SEEDS; do
        for job in "$@"; do
            one ${job/:/ } "$seed"
        done
    done
}

echo "$(date '+%F %T') study in $DIR: $KIMG kimg, $POINTS points, $IMAGES images, seeds $SEEDS; lanes: ${LANE_A:-default} | ${LANE_B:-default}"
# shellcheck disable=SC2086  # each lane's jobs are words
lane ${LANE_A:-sub1k:ada sub1k:ada+lecam full:ada} &
LANE_A=$!
# shellcheck disable=SC2086
lane ${LANE_B:-sub1k:ada+apa sub1k:ada+both full:ada+both} &
LANE_B=$!
stop_lanes() {  # each lane's running bench/convergence.py stops its trainer on SIGTERM (a snapshot first)
    local lane kids
    for lane in $LANE_A $LANE_B; do
        kids="$(pgrep -P "$lane" || true)"
        kill "$lane" 2>/dev/null || true
        [ -z "$kids" ] || kill $kids 2>/dev/null || true
    done
    wait
    exit 143
}
trap stop_lanes INT TERM
wait $LANE_A $LANE_B
merge_and_plot
echo "$(date '+%F %T') finished: $DIR/sub1k/summary.md, $DIR/full/summary.md (curves.png beside each)"
