// Host launchers of the tile kernels (tile_walk.cuh): forward_typed / backward_typed /
// forward_grad_typed per input dtype, instantiated by the per-dtype translation units
// tile_<dtype>.cu. They switch on the epilogue kind and the statistic (an unknown id is an
// error, never a default); the relation is a runtime value of the kernels.
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

// The backward's gradient buffers: dx / dy accumulators (the fp32 workspace for 16-bit inputs,
// else the outputs themselves), zeroed on the stream, and the d_theta partials.
template <class T>
struct GradBuffers {
  using Acc = typename Convert<T>::Acc;
  WorkspaceLayout w;
  Acc *dx = nullptr, *dy = nullptr, *partials = nullptr;
};

template <class T>
cudaError_t grad_buffers(const TileProblem& pb, const TileGrads& out, void* workspace,
                         cudaStream_t stream, GradBuffers<T>& b) {
  using Acc = typename Convert<T>::Acc;
  constexpr bool kHalf = !std::is_same<T, Acc>::value;
  b.w = workspace_layout(pb);
  char* ws = static_cast<char*>(workspace);
  b.dx = kHalf ? reinterpret_cast<Acc*>(ws + b.w.dx_acc) : static_cast<Acc*>(out.dx);
  b.dy = kHalf ? reinterpret_cast<Acc*>(ws + b.w.dy_acc) : static_cast<Acc*>(out.dy);
  b.partials = reinterpret_cast<Acc*>(ws + b.w.partials);
  const size_t dx_bytes = static_cast<size_t>(pb.n) * pb.k * sizeof(Acc);
  const size_t dy_bytes = static_cast<size_t>(pb.m) * pb.k * sizeof(Acc);
  cudaError_t err;
  if (dx_bytes && (err = cudaMemsetAsync(b.dx, 0, dx_bytes, stream)) != cudaSuccess) return err;
  if (dy_bytes && (err = cudaMemsetAsync(b.dy, 0, dy_bytes, stream)) != cudaSuccess) return err;
  return cudaSuccess;
}

// After the walks: d_theta from the row pass's partials, and dx / dy rounded to 16-bit inputs.
template <class T, int KIND>
cudaError_t finish_grads(const TileProblem& pb, const GradBuffers<T>& b, const TileGrads& out,
                         cudaStream_t stream) {
  using Acc = typename Convert<T>::Acc;
  constexpr bool kHalf = !std::is_same<T, Acc>::value;
  launch(d_theta_kernel<Acc>, 1, stream, static_cast<const Acc*>(b.partials), b.w.row_blocks,
         static_cast<const Acc*>(pb.theta), KIND == kHyperbolic,
         static_cast<Acc*>(out.d_theta));
  if constexpr (kHalf) {
    const int64_t nx = pb.n * pb.k, ny = pb.m * pb.k;
    if (nx > 0)
      launch(convert_kernel<T>, std::min<int64_t>(ceil_div(nx, kThreads), 4096), stream,
             static_cast<const float*>(b.dx), static_cast<T*>(out.dx), nx);
    if (ny > 0)
      launch(convert_kernel<T>, std::min<int64_t>(ceil_div(ny, kThreads), 4096), stream,
             static_cast<const float*>(b.dy), static_cast<T*>(out.dy), ny);
  }
  return cudaGetLastError();
}

template <class T, int KIND, int STAT>
cudaError_t backward_impl(const TileProblem& pb, const void* row_stat, const void* col_stat,
                          const void* g_row, const void* g_col, const TileGrads& out,
                          void* workspace, cudaStream_t stream) {
  using Acc = typename Convert<T>::Acc;
  constexpr int BM = TileTraits<T>::BM;
  GradBuffers<T> b;
  cudaError_t err = grad_buffers<T>(pb, out, workspace, stream, b);
  if (err != cudaSuccess) return err;

  const Acc* rs = static_cast<const Acc*>(row_stat);
  const Acc* cs = static_cast<const Acc*>(col_stat);
  const Acc* gr = static_cast<const Acc*>(g_row);
  const Acc* gc = static_cast<const Acc*>(g_col);
  Acc* const no_stat = nullptr;  // stat_out: only the forward + gradient kernels write it
  // The row pass visits every pair once, so it alone gives the d_theta partials; the column
  // pass covers all M columns (dy and d_beta of row-only columns included).
  if (pb.n > 0)
    launch(tile_bwd_kernel<T, KIND, STAT, false, false>, b.w.row_blocks, stream,
           walk_params<T>(pb, false), rs, cs, gr, gc, b.dx, static_cast<Acc*>(out.d_alpha),
           b.partials, no_stat);
  if (pb.m > 0)
    launch(tile_bwd_kernel<T, KIND, STAT, true, false>, ceil_div(pb.m, BM), stream,
           walk_params<T>(pb, true), cs, rs, gc, gr, b.dy, static_cast<Acc*>(out.d_beta),
           static_cast<Acc*>(nullptr), no_stat);
  return finish_grads<T, KIND>(pb, b, out, stream);
}

// tile_fwd_grad for a stat with a pair-local G: the backward's two walks with g_row = 1,
// g_col = 0 built in, each also folding its outer rows' statistic (tile_walk.cuh, kFwdGrad).
// The row pass writes row_stat [n], the column pass col_stat for its first cols_both outer rows;
// an empty side gives the stat's empty value (0 for pair_sum) through an inner count of 0.
template <class T, int KIND, int STAT>
cudaError_t forward_grad_impl(const TileProblem& pb, void* row_stat, void* col_stat,
                              const TileGrads& out, void* workspace, cudaStream_t stream) {
  using Acc = typename Convert<T>::Acc;
  constexpr int BM = TileTraits<T>::BM;
  GradBuffers<T> b;
  cudaError_t err = grad_buffers<T>(pb, out, workspace, stream, b);
  if (err != cudaSuccess) return err;
  const Acc* const none = nullptr;  // no saved statistics, no upstream gradients
  if (pb.n > 0)
    launch(tile_bwd_kernel<T, KIND, STAT, false, true>, b.w.row_blocks, stream,
           walk_params<T>(pb, false), none, none, none, none, b.dx,
           static_cast<Acc*>(out.d_alpha), b.partials, static_cast<Acc*>(row_stat));
  if (pb.m > 0)
    launch(tile_bwd_kernel<T, KIND, STAT, true, true>, ceil_div(pb.m, BM), stream,
           walk_params<T>(pb, true), none, none, none, none, b.dy,
           static_cast<Acc*>(out.d_beta), static_cast<Acc*>(nullptr),
           static_cast<Acc*>(col_stat));
  return finish_grads<T, KIND>(pb, b, out, stream);
}

// Statistic switch, then the kind switch; unknown ids return cudaErrorInvalidValue.
template <class T, int KIND>
cudaError_t forward_kind(const TileProblem& pb, void* row_stat, void* col_stat,
                         cudaStream_t stream) {
  switch (pb.stat) {
    case kStatLse: return forward_impl<T, KIND, kStatLse>(pb, row_stat, col_stat, stream);
    case kStatPairSum:
      return forward_impl<T, KIND, kStatPairSum>(pb, row_stat, col_stat, stream);
    case kStatMaskedSum:
      return forward_impl<T, KIND, kStatMaskedSum>(pb, row_stat, col_stat, stream);
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
    case kStatPairSum:
      return backward_impl<T, KIND, kStatPairSum>(pb, row_stat, col_stat, g_row, g_col, out,
                                                  workspace, stream);
    case kStatMaskedSum:
      return backward_impl<T, KIND, kStatMaskedSum>(pb, row_stat, col_stat, g_row, g_col, out,
                                                    workspace, stream);
  }
  return cudaErrorInvalidValue;
}

// Only stats with a pair-local G (Stat::kLocalGrad) have a one-pass gradient; the others
// (lse, masked_sum) are refused with cudaErrorNotSupported (tile_api.cu checks this first, with
// tile_stat_local_grad).
template <class T, int KIND>
cudaError_t forward_grad_kind(const TileProblem& pb, void* row_stat, void* col_stat,
                              const TileGrads& out, void* workspace, cudaStream_t stream) {
  switch (pb.stat) {
    case kStatLse: return cudaErrorNotSupported;
    case kStatMaskedSum: return cudaErrorNotSupported;
    case kStatPairSum:
      return forward_grad_impl<T, KIND, kStatPairSum>(pb, row_stat, col_stat, out, workspace,
                                                      stream);
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

template <class T>
cudaError_t forward_grad_typed(const TileProblem& pb, void* row_stat, void* col_stat,
                               const TileGrads& out, void* workspace, cudaStream_t stream) {
#define FLASHNCE_FWD_GRAD(KIND) \
  forward_grad_kind<T, KIND>(pb, row_stat, col_stat, out, workspace, stream)
  switch (pb.kind) {
    case kDot: return FLASHNCE_FWD_GRAD(kDot);
    case kSqEuclidean: return FLASHNCE_FWD_GRAD(kSqEuclidean);
    case kEuclidean: return FLASHNCE_FWD_GRAD(kEuclidean);
    case kHyperbolic: return FLASHNCE_FWD_GRAD(kHyperbolic);
    case kCosine: return FLASHNCE_FWD_GRAD(kCosine);
  }
#undef FLASHNCE_FWD_GRAD
  return cudaErrorInvalidValue;
}

#define FLASHNCE_INSTANTIATE_TILE(T)                                                        \
  template cudaError_t forward_typed<T>(const TileProblem&, void*, void*, cudaStream_t);    \
  template cudaError_t backward_typed<T>(const TileProblem&, const void*, const void*,      \
                                         const void*, const void*, const TileGrads&, void*, \
                                         cudaStream_t);                                     \
  template cudaError_t forward_grad_typed<T>(const TileProblem&, void*, void*,              \
                                             const TileGrads&, void*, cudaStream_t);

}  // namespace detail
}  // namespace cuda
}  // namespace flashnce
