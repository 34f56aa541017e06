#!/usr/bin/env bash
# One-shot GPU validation of flashnce: build with CUDA, run the CUDA and Triton test matrices on
# the device (compiled Triton, not the interpreter), then benchmark the GPU backends against the
# materialised loss, torch.compile and Inf-CL, writing JSON / CSV / PNG under bench/results/.
#
#   bash bench/gpu/validate.sh [results-dir]        (default: bench/results)
#
# Needs: a CUDA GPU, a CUDA build of torch (2.13) with triton, nvcc (CUDA_HOME) for the CUDA
# backend, run from the repository root inside that environment. Budget: <= 8 minutes on one
# H100 / H200 (each step prints its time). Without a GPU it stops at once with exit code 2.
#
# FLASHNCE_VALIDATE_SMOKE=1 runs the same steps on the CPU at toy sizes (no build, interpreted
# Triton), to check the script itself on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${1:-bench/results}
SMOKE=${FLASHNCE_VALIDATE_SMOKE:-0}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
START=$SECONDS
step() { echo; echo "== [$((SECONDS - START)) s] $*"; }

if [[ "$SMOKE" != 1 ]]; then
  if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "validate.sh: no CUDA device (torch.cuda.is_available() is False, torch" \
         "$(python -c 'import torch; print(torch.__version__)' 2>/dev/null || echo missing))." \
         "Run it on a GPU machine with a CUDA build of torch, or set FLASHNCE_VALIDATE_SMOKE=1" \
         "to check the script on the CPU." >&2
    exit 2
  fi
  DEVICE=cuda
  NAME=$(python -c 'import torch; print(torch.cuda.get_device_name().replace(" ", "_"))')
  export TRITON_INTERPRET=0
  step "build (FLASHNCE_CUDA=1) on $NAME"
  if command -v nvcc >/dev/null || [[ -n "${CUDA_HOME:-}" ]]; then
    FLASHNCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} pip install --quiet --no-build-isolation -e .
  else
    echo "no nvcc / CUDA_HOME: the CUDA backend is not built (Triton only)" >&2
    pip install --quiet --no-build-isolation -e .
  fi
  python -c 'import flashnce, torch; x = torch.randn(4, 8, device="cuda")
print(flashnce.explain_backends(x, x))'
  TESTS=(tests/test_tile_ops.py tests/test_cuda_backend.py)
  N_MAIN=(16384 65536 262144); N_COMPILED=(16384 65536); DIMS=(512 768)
  LOSSES=(infonce siglip); GEOMS=(cosine lorentz); DTYPES=(bfloat16 float32)
  PROVIDERS=(flashnce-triton flashnce-cuda materialized inf_cl)
else
  DEVICE=cpu
  NAME=smoke-cpu
  export TRITON_INTERPRET=1
  TESTS=(tests/test_tile_ops.py)
  N_MAIN=(256); N_COMPILED=(256); DIMS=(32)
  LOSSES=(infonce); GEOMS=(cosine); DTYPES=(float32)
  PROVIDERS=(flashnce-cpu materialized)
fi

step "test matrices on $DEVICE (triton and cuda backends)"
if [[ "$SMOKE" == 1 ]]; then
  python -m pytest -q -x "${TESTS[@]}" -k "cpu-lse-cosine-none" -p no:cacheprovider
else
  python -m pytest -q -x "${TESTS[@]}" -k "triton or cuda" -p no:cacheprovider
fi

step "benchmark: ${LOSSES[*]}, ${GEOMS[*]}, ${DTYPES[*]}, N ${N_MAIN[*]}, d ${DIMS[*]}"
flashnce-bench --device "$DEVICE" --loss "${LOSSES[@]}" -g "${GEOMS[@]}" \
  --dtype "${DTYPES[@]}" -n "${N_MAIN[@]}" -d "${DIMS[@]}" -p "${PROVIDERS[@]}" \
  --timeout 60 --repeats 3 --plot -q -o "$OUT_DIR" --name "gpu_${NAME}_${STAMP}"

step "benchmark: torch.compile of the materialised loss (${DTYPES[0]}, cosine, d ${DIMS[0]})"
flashnce-bench --device "$DEVICE" --loss infonce -g cosine --dtype "${DTYPES[0]}" \
  -n "${N_COMPILED[@]}" -d "${DIMS[0]}" -p flashnce compiled --timeout 120 --repeats 3 -q \
  -o "$OUT_DIR" --name "gpu_${NAME}_${STAMP}_compiled"

step "done: results in $OUT_DIR/gpu_${NAME}_${STAMP}*"
