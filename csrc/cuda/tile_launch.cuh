// Host launchers of the tile kernels (tile_walk.cuh): forward_typed / backward_typed per input
// dtype, instantiated by the per-dtype translation units tile_<dtype>.cu. They switch on the
// epilogue kind and the statistic (an unknown id is an error, never a default); the relation is
// a runtime value of the kernels.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "tile_detail.cuh"
#include "tile_walk.cuh"

namespace flashnce {
namespace cuda {
namespace detail {

// kernel<<<grid, kThreads, 0, stream>>>(args...). The CPU emulation of the tests
// (emulation/cuda_emulation.h, which defines FLASHNCE_CUDA_EMULATION) runs the blocks on host
// threads instead, so that it exercises these launchers too.
template <class... P, class... A>
void launch(void (*kernel)(P...), int64_t grid, cudaStream_t stream, const A&... args) {
#if defined(FLASHNCE_CUDA_EMULATION)
  (void)stream;
  emu::launch(static_cast<unsigned>(grid), kThreads, [&] { kernel(args...); });
#else
  kernel<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(args...);
#endif
}

template <class T, int KIND, int STAT>
cudaError_t forward_impl(const TileProblem& pb, void* row_stat, void* col_stat,
                         cudaStream_t stream) {
  using Acc = typename Convert<T>::Acc;
  constexpr int BM = TileTraits<T>::BM;
  if (pb.n > 0)
    launch(tile_fwd_kernel<T, KIND, STAT, false>, ceil_div(pb.n, BM), stream,
           walk_params<T>(pb, false), static_cast<Acc*>(row_stat));
  if (pb.cols_both > 0) {
    // Only the M0 columns with a statistic are outer rows of the forward column pass.
    WalkParams<T> pr = walk_params<T>(pb, true);
    pr.outer.count = pb.cols_both;
    launch(tile_fwd_kernel<T, KIND, STAT, true>, ceil_div(pb.cols_both, BM), stream, pr,
           static_cast<Acc*>(col_stat));
  }
  return cudaGetLastError();
}

template <class T, int KIND, int STAT>
cudaError_t backward_impl(const TileProblem& pb, const void* row_stat, const void* col_stat,
                          const void* g_row, const void* g_col, const TileGrads& out,
                          void* workspace, cudaStream_t stream) {
  using Acc = typename Convert<T>::Acc;
  constexpr bool kHalf = !std::is_same<T, Acc>::value;
  constexpr int BM = TileTraits<T>::BM;
  const WorkspaceLayout w = workspace_layout(pb);
  char* ws = static_cast<char*>(workspace);
  Acc* dx = kHalf ? reinterpret_cast<Acc*>(ws + w.dx_acc) : static_cast<Acc*>(out.dx);
  Acc* dy = kHalf ? reinterpret_cast<Acc*>(ws + w.dy_acc) : static_cast<Acc*>(out.dy);
  Acc* partials = reinterpret_cast<Acc*>(ws + w.partials);
  const size_t dx_bytes = static_cast<size_t>(pb.n) * pb.k * sizeof(Acc);
  const size_t dy_bytes = static_cast<size_t>(pb.m) * pb.k * sizeof(Acc);
  cudaError_t err;
  if (dx_bytes && (err = cudaMemsetAsync(dx, 0, dx_bytes, stream)) != cudaSuccess) return err;
  if (dy_bytes && (err = cudaMemsetAsync(dy, 0, dy_bytes, stream)) != cudaSuccess) return err;

  const Acc* rs = static_cast<const Acc*>(row_stat);
  const Acc* cs = static_cast<const Acc*>(col_stat);
  const Acc* gr = static_cast<const Acc*>(g_row);
  const Acc* gc = static_cast<const Acc*>(g_col);
  // The row pass visits every pair once, so it alone gives the d_theta partials; the column
  // pass covers all M columns (dy and d_beta of row-only columns included).
  if (pb.n > 0)
    launch(tile_bwd_kernel<T, KIND, STAT, false>, w.row_blocks, stream, walk_params<T>(pb, false),
           rs, cs, gr, gc, dx, static_cast<Acc*>(out.d_alpha), partials);
  if (pb.m > 0)
    launch(tile_bwd_kernel<T, KIND, STAT, true>, ceil_div(pb.m, BM), stream,
           walk_params<T>(pb, true), cs, rs, gc, gr, dy, static_cast<Acc*>(out.d_beta),
           static_cast<Acc*>(nullptr));
  launch(d_theta_kernel<Acc>, 1, stream, static_cast<const Acc*>(partials), w.row_blocks,
         static_cast<const Acc*>(pb.theta), KIND == kHyperbolic,
         static_cast<Acc*>(out.d_theta));
  if constexpr (kHalf) {
    const int64_t nx = pb.n * pb.k, ny = pb.m * pb.k;
    if (nx > 0)
      launch(convert_kernel<T>, std::min<int64_t>(ceil_div(nx, kThreads), 4096), stream,
             static_cast<const float*>(dx), static_cast<T*>(out.dx), nx);
    if (ny > 0)
      launch(convert_kernel<T>, std::min<int64_t>(ceil_div(ny, kThreads), 4096), stream,
             static_cast<const float*>(dy), static_cast<T*>(out.dy), ny);
  }
  return cudaGetLastError();
}

// Statistic switch, then the kind switch; unknown ids return cudaErrorInvalidValue.
template <class T, int KIND>
cudaError_t forward_kind(const TileProblem& pb, void* row_stat, void* col_stat,
                         cudaStream_t stream) {
  switch (pb.stat) {
    case kStatLse: return forward_impl<T, KIND, kStatLse>(pb, row_stat, col_stat, stream);
  }
  return cudaErrorInvalidValue;
}

template <class T, int KIND>
cudaError_t backward_kind(const TileProblem& pb, const void* row_stat, const void* col_stat,
                          const void* g_row, const void* g_col, const TileGrads& out,
                          void* workspace, cudaStream_t stream) {
  switch (pb.stat) {
    case kStatLse:
      return backward_impl<T, KIND, kStatLse>(pb, row_stat, col_stat, g_row, g_col, out,
                                              workspace, stream);
  }
  return cudaErrorInvalidValue;
}

template <class T>
cudaError_t forward_typed(const TileProblem& pb, void* row_stat, void* col_stat,
                          cudaStream_t stream) {
#define FLASHNCE_FWD(KIND) forward_kind<T, KIND>(pb, row_stat, col_stat, stream)
  switch (pb.kind) {
    case kDot: return FLASHNCE_FWD(kDot);
    case kSqEuclidean: return FLASHNCE_FWD(kSqEuclidean);
    case kEuclidean: return FLASHNCE_FWD(kEuclidean);
    case kHyperbolic: return FLASHNCE_FWD(kHyperbolic);
    case kCosine: return FLASHNCE_FWD(kCosine);
  }
#undef FLASHNCE_FWD
  return cudaErrorInvalidValue;
}

template <class T>
cudaError_t backward_typed(const TileProblem& pb, const void* row_stat, const void* col_stat,
                           const void* g_row, const void* g_col, const TileGrads& out,
                           void* workspace, cudaStream_t stream) {
#define FLASHNCE_BWD(KIND) \
  backward_kind<T, KIND>(pb, row_stat, col_stat, g_row, g_col, out, workspace, stream)
  switch (pb.kind) {
    case kDot: return FLASHNCE_BWD(kDot);
    case kSqEuclidean: return FLASHNCE_BWD(kSqEuclidean);
    case kEuclidean: return FLASHNCE_BWD(kEuclidean);
    case kHyperbolic: return FLASHNCE_BWD(kHyperbolic);
    case kCosine: return FLASHNCE_BWD(kCosine);
  }
#undef FLASHNCE_BWD
  return cudaErrorInvalidValue;
}

#define FLASHNCE_INSTANTIATE_TILE(T)                                                        \
  template cudaError_t forward_typed<T>(const TileProblem&, void*, void*, cudaStream_t);    \
  template cudaError_t backward_typed<T>(const TileProblem&, const void*, const void*,      \
                                         const void*, const void*, const TileGrads&, void*, \
                                         cudaStream_t);

}  // namespace detail
}  // namespace cuda
}  // namespace flashnce
