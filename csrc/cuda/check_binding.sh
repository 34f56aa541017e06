#!/usr/bin/env bash
# Compile the torch binding (csrc/cuda/tile_binding.cu) with nvcc against the headers of a
# CUDA build of torch, on a machine whose torch is a CPU build (no GPU, no CUDA torch
# installed). Not part of CI: it needs the CUDA wheel's headers, fetched once, e.g.
#
#   PIP_FIND_LINKS= PIP_CONFIG_FILE=/dev/null pip download torch==2.13.0 --no-deps \
#       --only-binary=:all: --index-url https://pypi.org/simple -d /tmp/torchcuda
#   unzip -q /tmp/torchcuda/torch-2.13.0-*.whl 'torch/include/*' 'torch/version.py' -d /tmp/torchcuda/ex
#   csrc/cuda/check_binding.sh /tmp/torchcuda/ex/torch/include
#
# NVCC (default: nvcc on PATH), CUDA_ARCH (default 90) and PYTHON (default python3) can be
# overridden. Prints the object's path on success.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
csrc="$(dirname "$here")"
inc="${1:?usage: check_binding.sh TORCH_INCLUDE_DIR [OUT_DIR]}"
out="${2:-$(mktemp -d "${TMPDIR:-/tmp}/flashnce-binding.XXXXXX")}"
nvcc="${NVCC:-nvcc}"
arch="${CUDA_ARCH:-90}"
pyinc="$("${PYTHON:-python3}" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
[[ -f "$inc/torch/extension.h" ]] || { echo "check_binding: no torch/extension.h under $inc" >&2; exit 2; }
mkdir -p "$out"
# The flags setup.py's CUDAExtension passes (limited API, extension name, C++17, new ABI).
"$nvcc" -std=c++17 -O3 -DPy_LIMITED_API=0x030A0000 -DTORCH_EXTENSION_NAME=_C_cuda \
  -DTORCH_API_INCLUDE_EXTENSION_H -D_GLIBCXX_USE_CXX11_ABI=1 -I"$csrc" -I"$here" \
  -isystem "$inc" -isystem "$inc/torch/csrc/api/include" -isystem "$pyinc" \
  -gencode="arch=compute_${arch},code=sm_${arch}" -Xcompiler -fPIC \
  -c "$here/tile_binding.cu" -o "$out/tile_binding.o"
echo "check_binding: tile_binding.cu compiled against $inc for sm_${arch}: $out/tile_binding.o"
