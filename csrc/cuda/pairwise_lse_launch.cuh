// Host launchers of the tile kernels (pairwise_lse_tiles.cuh): forward_typed / backward_typed
// per input dtype, instantiated by the per-dtype translation units pairwise_lse_<dtype>.cu.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "pairwise_lse_detail.cuh"
#include "pairwise_lse_tiles.cuh"

namespace flashnce {
namespace cuda {
namespace detail {

template <class T, int KIND>
cudaError_t forward_impl(const PairwiseLseProblem& pb, void* row_lse, void* col_lse,
                         cudaStream_t stream) {
  using Acc = typename Convert<T>::Acc;
  constexpr int BM = TileTraits<T>::BM;
  if (pb.n > 0)
    lse_fwd_kernel<T, KIND, false><<<static_cast<unsigned>(ceil_div(pb.n, BM)), kThreads, 0,
                                     stream>>>(walk_params<T>(pb, false),
                                               static_cast<Acc*>(row_lse));
  if (pb.m > 0)
    lse_fwd_kernel<T, KIND, true><<<static_cast<unsigned>(ceil_div(pb.m, BM)), kThreads, 0,
                                    stream>>>(walk_params<T>(pb, true),
                                              static_cast<Acc*>(col_lse));
  return cudaGetLastError();
}

template <class T, int KIND>
cudaError_t backward_impl(const PairwiseLseProblem& pb, const void* row_lse, const void* col_lse,
                          const void* g_row, const void* g_col, const PairwiseLseGrads& out,
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
  // gh = 0 when there are no rows; d_alpha / d_beta rows are all written by the kernels.
  if ((err = cudaMemsetAsync(partials, 0, sizeof(Acc), stream)) != cudaSuccess) return err;

  const Acc* rl = static_cast<const Acc*>(row_lse);
  const Acc* cl = static_cast<const Acc*>(col_lse);
  const Acc* gr = static_cast<const Acc*>(g_row);
  const Acc* gc = static_cast<const Acc*>(g_col);
  const int64_t row_blocks = ceil_div(pb.n, BM);
  if (pb.n > 0)
    lse_bwd_kernel<T, KIND, false><<<static_cast<unsigned>(row_blocks), kThreads, 0, stream>>>(
        walk_params<T>(pb, false), rl, cl, gr, gc, dx, static_cast<Acc*>(out.d_alpha), partials);
  if (pb.m > 0)
    lse_bwd_kernel<T, KIND, true><<<static_cast<unsigned>(ceil_div(pb.m, BM)), kThreads, 0,
                                    stream>>>(walk_params<T>(pb, true), cl, rl, gc, gr, dy,
                                              static_cast<Acc*>(out.d_beta), nullptr);
  sum_partials_kernel<Acc><<<1, kThreads, 0, stream>>>(
      partials, row_blocks > 0 ? row_blocks : 1, static_cast<Acc*>(out.gh));
  if constexpr (kHalf) {
    const int64_t nx = pb.n * pb.k, ny = pb.m * pb.k;
    if (nx > 0)
      convert_kernel<T><<<static_cast<unsigned>(std::min<int64_t>(ceil_div(nx, kThreads), 4096)),
                          kThreads, 0, stream>>>(dx, static_cast<T*>(out.dx), nx);
    if (ny > 0)
      convert_kernel<T><<<static_cast<unsigned>(std::min<int64_t>(ceil_div(ny, kThreads), 4096)),
                          kThreads, 0, stream>>>(dy, static_cast<T*>(out.dy), ny);
  }
  return cudaGetLastError();
}

template <class T>
cudaError_t forward_typed(const PairwiseLseProblem& pb, void* row_lse, void* col_lse,
                          cudaStream_t stream) {
  switch (pb.kind) {
    case kDot: return forward_impl<T, kDot>(pb, row_lse, col_lse, stream);
    case kSqEuclidean: return forward_impl<T, kSqEuclidean>(pb, row_lse, col_lse, stream);
    case kEuclidean: return forward_impl<T, kEuclidean>(pb, row_lse, col_lse, stream);
    case kHyperbolic: return forward_impl<T, kHyperbolic>(pb, row_lse, col_lse, stream);
    case kCosine: return forward_impl<T, kCosine>(pb, row_lse, col_lse, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <class T>
cudaError_t backward_typed(const PairwiseLseProblem& pb, const void* row_lse,
                           const void* col_lse, const void* g_row, const void* g_col,
                           const PairwiseLseGrads& out, void* workspace, cudaStream_t stream) {
#define FLASHNCE_BWD(KIND) \
  backward_impl<T, KIND>(pb, row_lse, col_lse, g_row, g_col, out, workspace, stream)
  switch (pb.kind) {
    case kDot: return FLASHNCE_BWD(kDot);
    case kSqEuclidean: return FLASHNCE_BWD(kSqEuclidean);
    case kEuclidean: return FLASHNCE_BWD(kEuclidean);
    case kHyperbolic: return FLASHNCE_BWD(kHyperbolic);
    case kCosine: return FLASHNCE_BWD(kCosine);
    default: return cudaErrorInvalidValue;
  }
#undef FLASHNCE_BWD
}

#define FLASHNCE_INSTANTIATE_PAIRWISE_LSE(T)                                                   \
  template cudaError_t forward_typed<T>(const PairwiseLseProblem&, void*, void*, cudaStream_t); \
  template cudaError_t backward_typed<T>(const PairwiseLseProblem&, const void*, const void*,   \
                                         const void*, const void*, const PairwiseLseGrads&,     \
                                         void*, cudaStream_t);

}  // namespace detail
}  // namespace cuda
}  // namespace flashnce
