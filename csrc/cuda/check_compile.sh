#!/usr/bin/env bash
# Compile check of the torch-free CUDA core (csrc/cuda/tile_*.cu) with nvcc alone, for
# sm_80 and sm_90: no torch, no GPU needed. CI runs it so a broken .cu never lands.
#
#   csrc/cuda/check_compile.sh [BUILD_DIR]
#
# Uses CMake + Ninja (target flashnce_cuda_core of csrc/cuda/CMakeLists.txt) when both are
# found, else plain nvcc invocations, in parallel either way (CMake: FLASHNCE_JOBS, default nproc).
# NVCC (default: nvcc on PATH) and CUDA_ARCHS (default "80;90") can be overridden.
# ptxas reports every kernel's registers, spills and shared memory (-Xptxas -v) into
# BUILD_DIR/ptxas.log; tests/test_cuda_backend.py checks them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
csrc="$(dirname "$here")"
build="${1:-$(mktemp -d "${TMPDIR:-/tmp}/flashnce-cuda-check.XXXXXX")}"
nvcc="${NVCC:-$(command -v nvcc || true)}"
archs="${CUDA_ARCHS:-80;90}"
jobs="${FLASHNCE_JOBS:-$(nproc 2>/dev/null || echo 2)}"

if [[ -z "$nvcc" ]]; then
  echo "check_compile: nvcc not found (set NVCC or put it on PATH)" >&2
  exit 2
fi
"$nvcc" --version | tail -n 2
mkdir -p "$build"

if command -v cmake >/dev/null && command -v ninja >/dev/null; then
  cmake -S "$here" -B "$build" -G Ninja -DCMAKE_CUDA_COMPILER="$nvcc" \
    -DCMAKE_CUDA_ARCHITECTURES="$archs" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_FLAGS="-Xptxas=-v" >"$build/configure.log" ||
    { cat "$build/configure.log"; exit 1; }
  # ninja prints each job's output in one piece: the ptxas reports of one source stay together
  cmake --build "$build" --target flashnce_cuda_core -j "$jobs" >"$build/ptxas.log" 2>&1 ||
    { tail -c 20000 "$build/ptxas.log"; exit 1; }
else
  gencode=()
  IFS=';' read -ra arch_list <<<"$archs"
  for a in "${arch_list[@]}"; do gencode+=("-gencode=arch=compute_${a},code=sm_${a}"); done
  # every core source; tile_binding.cu is the torch binding (built by setup.py)
  pids=()
  for src in "$here"/tile_*.cu; do
    [[ "$src" == */tile_binding.cu ]] && continue
    "$nvcc" -std=c++17 -O3 -I"$csrc" -I"$here" "${gencode[@]}" -Werror all-warnings \
      -Xptxas=-v -c "$src" -o "$build/$(basename "$src").o" \
      >"$build/$(basename "$src").ptxas.log" 2>&1 &
    pids+=($!)
  done
  status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  exit_if_failed=$status
  cat "$build"/*.ptxas.log >"$build/ptxas.log"
  [[ $exit_if_failed -eq 0 ]] || { tail -c 20000 "$build/ptxas.log"; echo "check_compile: nvcc failed" >&2; exit 1; }
fi
echo "check_compile: CUDA core compiled for sm_${archs//;/, sm_} in $build"
