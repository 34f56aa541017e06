// Internal declarations shared by the dispatcher (tile_api.cu) and the per-dtype translation
// units (tile_<dtype>.cu) that instantiate the launchers of tile_launch.cuh: tile shapes,
// workspace layout, and the per-dtype entry points. Splitting by dtype lets the build compile the
// kernels in parallel.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "flashnce/geometry.h"
#include "flashnce/spec.h"
#include "tile_api.cuh"

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

// Number of per-block partial sums the backward reduces into d_theta: sum G h and sum G.
constexpr int kThetaPartials = 2;

// Backward scratch: fp32 dx/dy accumulators (16-bit inputs only), then per-row-block partials
// [kThetaPartials][row_blocks] of d_theta. Byte offsets into one 256-byte aligned buffer.
struct WorkspaceLayout {
  size_t dx_acc = 0, dy_acc = 0, partials = 0, total = 0;
  int64_t row_blocks = 0;
};

inline WorkspaceLayout workspace_layout(const TileProblem& pb) {
  const bool half = pb.dtype == DType::kBFloat16 || pb.dtype == DType::kFloat16;
  const bool f64 = pb.dtype == DType::kFloat64;
  const size_t acc = f64 ? sizeof(double) : sizeof(float);
  WorkspaceLayout w;
  w.row_blocks = ceil_div(pb.n, f64 ? TileTraits<double>::BM : TileTraits<float>::BM);
  size_t off = 0;
  if (half) {
    w.dx_acc = off;
    off += align_up(static_cast<size_t>(pb.n) * static_cast<size_t>(pb.k) * sizeof(float));
    w.dy_acc = off;
    off += align_up(static_cast<size_t>(pb.m) * static_cast<size_t>(pb.k) * sizeof(float));
  }
  w.partials = off;
  const int64_t blocks = w.row_blocks > 0 ? w.row_blocks : 1;
  off += align_up(static_cast<size_t>(blocks) * kThetaPartials * acc);
  w.total = off;
  return w;
}

// Entry points per input dtype (defined in tile_launch.cuh, instantiated once per dtype in
// tile_<dtype>.cu); they dispatch on problem.kind and problem.stat. The problem is valid
// (tile_problem_valid) when they are called.
template <class T>
cudaError_t forward_typed(const TileProblem& pb, void* row_stat, void* col_stat,
                          cudaStream_t stream);
template <class T>
cudaError_t backward_typed(const TileProblem& pb, const void* row_stat, const void* col_stat,
                           const void* g_row, const void* g_col, const TileGrads& out,
                           void* workspace, cudaStream_t stream);
template <class T>
cudaError_t forward_grad_typed(const TileProblem& pb, void* row_stat, void* col_stat,
                               const TileGrads& out, void* workspace, cudaStream_t stream);

}  // namespace detail
}  // namespace cuda
}  // namespace flashnce
