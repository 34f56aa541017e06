// Internal declarations shared by the dispatcher (pairwise_lse_kernels.cu) and the per-dtype
// translation units (pairwise_lse_<dtype>.cu) that instantiate the kernels of
// pairwise_lse_tiles.cuh. Splitting by dtype lets the build compile the kernels in parallel.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "flashnce/geometry.h"
#include "pairwise_lse_kernels.cuh"

namespace flashnce {
namespace cuda {
namespace detail {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Tile shapes per input dtype. fp64 uses smaller tiles to stay under 48 KiB of static shared
// memory; the 16-bit types use WMMA and pad rows by 8 elements (16 bytes) as WMMA's ldm needs.
template <class T>
struct TileTraits {
  static constexpr int BM = 64, BN = 64, BK = 32, PAD = 1;
  static constexpr bool kWmma = false;
};
template <>
struct TileTraits<double> {
  static constexpr int BM = 32, BN = 32, BK = 16, PAD = 1;
  static constexpr bool kWmma = false;
};
template <>
struct TileTraits<__half> {
  static constexpr int BM = 64, BN = 64, BK = 32, PAD = 8;
  static constexpr bool kWmma = true;
};
template <>
struct TileTraits<__nv_bfloat16> {
  static constexpr int BM = 64, BN = 64, BK = 32, PAD = 8;
  static constexpr bool kWmma = true;
};

inline size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Backward scratch: fp32 dx/dy accumulators (16-bit inputs only), then per-row-block partials
// of gh. Byte offsets into one 256-byte aligned buffer.
struct WorkspaceLayout {
  size_t dx_acc = 0, dy_acc = 0, partials = 0, total = 0;
};

inline WorkspaceLayout workspace_layout(const PairwiseLseProblem& pb) {
  const bool half = pb.dtype == DType::kBFloat16 || pb.dtype == DType::kFloat16;
  const bool f64 = pb.dtype == DType::kFloat64;
  const size_t acc = f64 ? sizeof(double) : sizeof(float);
  const int64_t row_blocks = ceil_div(pb.n, f64 ? TileTraits<double>::BM : TileTraits<float>::BM);
  WorkspaceLayout w;
  size_t off = 0;
  if (half) {
    w.dx_acc = off;
    off += align_up(static_cast<size_t>(pb.n) * static_cast<size_t>(pb.k) * sizeof(float));
    w.dy_acc = off;
    off += align_up(static_cast<size_t>(pb.m) * static_cast<size_t>(pb.k) * sizeof(float));
  }
  w.partials = off;
  off += align_up(static_cast<size_t>(row_blocks > 0 ? row_blocks : 1) * acc);
  w.total = off;
  return w;
}

// Entry points per input dtype (defined in pairwise_lse_tiles.cuh, instantiated once per dtype
// in pairwise_lse_<dtype>.cu); they dispatch on problem.kind.
template <class T>
cudaError_t forward_typed(const PairwiseLseProblem& pb, void* row_lse, void* col_lse,
                          cudaStream_t stream);
template <class T>
cudaError_t backward_typed(const PairwiseLseProblem& pb, const void* row_lse,
                           const void* col_lse, const void* g_row, const void* g_col,
                           const PairwiseLseGrads& out, void* workspace, cudaStream_t stream);

}  // namespace detail
}  // namespace cuda
}  // namespace flashnce
