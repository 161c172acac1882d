#!/usr/bin/env bash
# The Multi30k distillation table on one GPU, in one time-boxed call: every student recipe of
# model_zoo/multi30k for the given seeds, several runs side by side on the one GPU (the models are
# small, so one run leaves the GPU mostly idle), each taught by a finished teacher run.
#
#   bash tools/gpu_multi30k.sh TEACHER_RUN OUT_DIR [SECONDS]
#
# TEACHER_RUN   a finished run of model_zoo/multi30k/transformer.json (its models/ are enough)
# OUT_DIR       gets runs.tar.gz (every run directory without weights or caches: config, metrics,
#               summary, plots, logs) and report.md (tools/zoo_measure.py --report over them)
# SECONDS       stop launching after this long, kill what still runs (default 480); runs that
#               finished are in the report, the others are named in OUT_DIR/unfinished.txt
# JOBS (distilled runs at a time), SEEDS, SCRATCH and KD (recipe names) override the defaults below.
#
# Measured on an H200 (docs/results.md section 9): one epoch of transformer_small.json with its
# evaluations takes about 28 s alone, so 12 epochs take about 6 minutes alone.
set -u
TEACHER_RUN=${1:?usage: bash tools/gpu_multi30k.sh TEACHER_RUN OUT_DIR [SECONDS]}
OUT_DIR=${2:?usage: bash tools/gpu_multi30k.sh TEACHER_RUN OUT_DIR [SECONDS]}
LIMIT=${3:-480}
JOBS=${JOBS:-15}
SEEDS=${SEEDS:-1 2 3}
SCRATCH=${SCRATCH:-transformer_small transformer_fast gru_attention}
KD=${KD:-word_kd_transformer_small seqkd_transformer_small seqkd_word_transformer_small imitkd_transformer_small \
imitkd_full_transformer_small imitkd_star_transformer_small seqkd_transformer_fast}
cd "$(dirname "$0")/.."
mkdir -p "$OUT_DIR"
RUNS=$(mktemp -d /tmp/gpu-multi30k-XXXX)
measure() {  # measure LOG RECIPES... [--set ...]: zoo_measure over the recipes, all seeds
    local log=$1
    shift
    # shellcheck disable=SC2086
    timeout --kill-after=15 "$LIMIT" python3 tools/zoo_measure.py "$@" --seeds $SEEDS --threads 1 --out "$RUNS" \
        > "$OUT_DIR/$log" 2>&1
    echo "zoo_measure: exit $? (124: stopped at the limit of $LIMIT s)" >> "$OUT_DIR/$log"
}
scratch=() kd=()
for recipe in $SCRATCH; do scratch+=("model_zoo/multi30k/$recipe.json"); done
for recipe in $KD; do kd+=("model_zoo/multi30k/$recipe.json"); done
seeds=$(echo $SEEDS | wc -w)
# the students from scratch need no teacher; the distilled ones read TEACHER_RUN
measure scratch.log "${scratch[@]}" --jobs $(( ${#scratch[@]} * seeds )) &
# one shared cache folder: the teacher's translations (SeqKD) and outputs are made once, under a lock
measure kd.log "${kd[@]}" --jobs "$JOBS" --set "models.teacher.run=$(realpath "$TEACHER_RUN")" \
    --set "cache_dir=$RUNS/cache" &
wait
pkill -f -- "-m blocks train" 2>/dev/null  # runs that outlived the limit
for log in "$RUNS"/*.log; do
    run=${log%.log}
    [ -f "$run/summary.json" ] || echo "$(basename "$run")" >> "$OUT_DIR/unfinished.txt"
done
python3 tools/zoo_measure.py --report "$RUNS" > "$OUT_DIR/report.md" 2>&1
tar czf "$OUT_DIR/runs.tar.gz" -C "$RUNS" --exclude='*.safetensors' --exclude='cache' --exclude='tensorboard' .
ls -la "$OUT_DIR"
