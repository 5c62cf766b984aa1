#!/usr/bin/env bash
# Reproduces the table of docs/results.md: a resnet20 teacher and a resnet8 student on Fashion-MNIST (the settings
# of the shipped `demo` configuration: 8000-image class-balanced training subset, full 10k test set), the student
# trained with ce, kd, dkd and ukd for 3 seeds each, from one teacher (seed 0).
#
#   bash scripts/results.sh [OUT]          # default OUT=runs/results; about 30-40 minutes on 2 CPU cores
#
# Re-running continues where it stopped (--resume; finished runs are only re-evaluated). Environment knobs:
# SEEDS="0 1 2", METHODS="ce kd dkd ukd", ABF=1 (also ukd with the paper's attention-based fusion instead of the
# demo's pooled stages, as ukd_abf), TEACHER=resnet20, TEACHER_EPOCHS=8, EXTRA="--set key=value ...".
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/results}
SEEDS=${SEEDS:-"0 1 2"}
METHODS=${METHODS:-"ce kd dkd ukd"}
ABF=${ABF:-1}
TEACHER=${TEACHER:-resnet20}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-8}
EXTRA=${EXTRA:-}
UKD=(python -m ukd)

start=$(date +%s)
echo "== teacher $TEACHER ($TEACHER_EPOCHS epochs) -> $OUT/teacher"
# shellcheck disable=SC2086
"${UKD[@]}" train-teacher --config demo --model "$TEACHER" --epochs "$TEACHER_EPOCHS" --seed 0 \
    -o "$OUT/teacher" --resume --quiet $EXTRA
for seed in $SEEDS; do
    for method in $METHODS; do
        echo "== $method seed $seed -> $OUT/${method}_seed$seed"
        # shellcheck disable=SC2086
        "${UKD[@]}" distill --config demo --method "$method" --seed "$seed" -t "$OUT/teacher/last.pt" \
            -o "$OUT/${method}_seed$seed" --resume --quiet $EXTRA
    done
    if [ "$ABF" = "1" ]; then
        echo "== ukd (fusion abf) seed $seed -> $OUT/ukd_abf_seed$seed"
        # shellcheck disable=SC2086
        "${UKD[@]}" distill --config demo --method ukd --set distill.ukd.fusion=abf --seed "$seed" \
            -t "$OUT/teacher/last.pt" -o "$OUT/ukd_abf_seed$seed" --resume --quiet $EXTRA
    fi
done
end=$(date +%s)
echo "== wall time: $((end - start)) s"
python scripts/results.py "$OUT" --wall-time "$((end - start))"
