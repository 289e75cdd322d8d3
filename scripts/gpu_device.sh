#!/usr/bin/env bash
# The one call on a borrowed GPU machine (Python 3.12 with its own CUDA torch, no gymnasium,
# mujoco, minari or grpc health/reflection): install what `make gpu-wheels` put in
# .gpu-wheels/ and vidt itself into /tmp/site, then run
#   1. scripts/gpu_check.py (the table and gpu_check.json), and
#   2. benchmarks/serve_latency.py's latency and throughput parts on that machine's CPU cores,
#      where the load's client processes do not take the server's cores (SERVE_MODEL: an
#      exported policy; made there when unset).
# Everything it prints also lands in $OUT (default /tmp/gpu-out). Each step has a deadline so
# the call ends inside the device tool's limit; a step that runs out says so and the next runs.
#
#   make gpu-wheels                      # here, once (~20 MB, ignored by git)
#   device run, carrying .gpu-wheels:    bash scripts/gpu_device.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-out}
SITE=${SITE:-/tmp/site}
CHECK_S=${CHECK_S:-300}    # hard deadline for gpu_check (its sections stop starting at 2/3)
SERVE_S=${SERVE_S:-220}    # hard deadline for the serving benchmark
WHEELS=${WHEELS:-.gpu-wheels}
STEPS=${STEPS:-check serve} # either or both
SERVE_ARGS=${SERVE_ARGS:---parts latency,throughput --rounds 2 --requests 1000 --tp-rounds 3 --workers 8}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" && OUT=$(realpath "$OUT")

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if ((${#wheels[@]} == 0)); then
    echo "gpu_device: no wheels in $WHEELS/ (run 'make gpu-wheels' and carry .gpu-wheels)" >&2
    exit 2
fi
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${wheels[@]}" || exit 1
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
    --upgrade --target "$SITE" . || exit 1
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# Run from a copy: in the checkout, its vidt/ (which lacks vidt.serving and vidt.cli: they
# exist only installed) would shadow the installed package for `python -m` and pytest.
[[ -n "${SERVE_MODEL:-}" ]] && SERVE_MODEL=$(realpath "$SERVE_MODEL")
[[ "$PY" == */* ]] && PY=$(realpath -s "$PY")
RUN=$(mktemp -d)
cp -r scripts benchmarks tests pyproject.toml "$RUN"/
cd "$RUN" || exit 1

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    nproc
    "$PY" -c "import torch, onnxruntime, grpc, numpy; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, '| onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers(), \
'| grpcio', grpc.__version__, '| numpy', numpy.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

if [[ " $STEPS " == *" check "* ]]; then
    echo "== gpu_check (deadline ${CHECK_S}s)"
    timeout -k 10 "$CHECK_S" "$PY" scripts/gpu_check.py --out "$OUT" \
        --budget-s $((CHECK_S * 2 / 3)) 2>&1 | tee "$OUT/gpu_check.txt"
    echo "gpu_check exit: ${PIPESTATUS[0]}" | tee -a "$OUT/gpu_check.txt"
fi

if [[ " $STEPS " == *" serve "* ]]; then
    echo "== serve_latency (deadline ${SERVE_S}s)"
    model=()
    [[ -n "${SERVE_MODEL:-}" ]] && model=(--model "$SERVE_MODEL")
    # shellcheck disable=SC2086  # SERVE_ARGS is a list of words
    timeout -k 10 "$SERVE_S" "$PY" benchmarks/serve_latency.py "${model[@]}" $SERVE_ARGS 2>&1 \
        | tee "$OUT/serve_latency.txt"
    echo "serve_latency exit: ${PIPESTATUS[0]}" | tee -a "$OUT/serve_latency.txt"
fi
