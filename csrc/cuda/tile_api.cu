// Public entry points of the torch-free CUDA core (tile_api.cuh): validate the problem and
// dispatch on the input dtype to the per-dtype launchers (tile_<dtype>.cu).
#include "tile_api.cuh"

#include "tile_detail.cuh"

namespace flashnce {
namespace cuda {

bool tile_problem_valid(const TileProblem& pb) {
  using detail::ceil_div;
  if (pb.n < 0 || pb.m < 0 || pb.k < 0 || pb.cols_both < 0 || pb.cols_both > pb.m) return false;
  if (ceil_div(pb.n, 32) >= (int64_t{1} << 31) || ceil_div(pb.m, 32) >= (int64_t{1} << 31))
    return false;
  if (pb.kind < 0 || pb.kind >= kNumEpilogueKinds) return false;
  if (pb.stat < 0 || pb.stat >= kNumStats) return false;
  if (pb.stat == kStatCount) return false;  // no CUDA count walk (cpu / torch backends)
  if ((pb.flags & ~kAllFlags) != 0) return false;
  const RelationIndex& ix = pb.index;
  switch (pb.relation) {
    case kRelNone:
    case kRelDiagonal: return true;
    case kRelTargets: return pb.n == 0 || ix.targets != nullptr;
    case kRelLabels:
      return (pb.n == 0 || ix.row_labels != nullptr) && (pb.m == 0 || ix.col_labels != nullptr);
    case kRelCsr:
      // indptr arrays always have n + 1 / m + 1 entries; indices / roles may be empty.
      return ix.indptr != nullptr && ix.t_indptr != nullptr;
  }
  return false;  // unknown relation id
}

cudaError_t tile_forward(const TileProblem& problem, void* row_stat, void* col_stat,
                         cudaStream_t stream) {
  if (!tile_problem_valid(problem)) return cudaErrorInvalidValue;
#define FLASHNCE_FWD(T) detail::forward_typed<T>(problem, row_stat, col_stat, stream)
  switch (problem.dtype) {
    case DType::kFloat32: return FLASHNCE_FWD(float);
    case DType::kFloat64: return FLASHNCE_FWD(double);
    case DType::kBFloat16: return FLASHNCE_FWD(__nv_bfloat16);
    case DType::kFloat16: return FLASHNCE_FWD(__half);
  }
#undef FLASHNCE_FWD
  return cudaErrorInvalidValue;
}

size_t tile_backward_workspace_bytes(const TileProblem& problem) {
  return detail::workspace_layout(problem).total;
}

cudaError_t tile_backward(const TileProblem& problem, const void* row_stat, const void* col_stat,
                          const void* g_row, const void* g_col, const TileGrads& grads,
                          void* workspace, cudaStream_t stream) {
  if (!tile_problem_valid(problem)) return cudaErrorInvalidValue;
#define FLASHNCE_BWD(T) \
  detail::backward_typed<T>(problem, row_stat, col_stat, g_row, g_col, grads, workspace, stream)
  switch (problem.dtype) {
    case DType::kFloat32: return FLASHNCE_BWD(float);
    case DType::kFloat64: return FLASHNCE_BWD(double);
    case DType::kBFloat16: return FLASHNCE_BWD(__nv_bfloat16);
    case DType::kFloat16: return FLASHNCE_BWD(__half);
  }
#undef FLASHNCE_BWD
  return cudaErrorInvalidValue;
}

bool tile_stat_local_grad(int stat) {
  switch (stat) {
    case kStatLse: return false;
    case kStatPairSum: return true;
    case kStatMaskedSum: return false;
    case kStatCount: return false;
  }
  return false;  // unknown stat id
}

cudaError_t tile_forward_grad(const TileProblem& problem, void* row_stat, void* col_stat,
                              const TileGrads& grads, void* workspace, cudaStream_t stream) {
  if (!tile_problem_valid(problem)) return cudaErrorInvalidValue;
  if (!tile_stat_local_grad(problem.stat)) return cudaErrorNotSupported;
#define FLASHNCE_FWD_GRAD(T) \
  detail::forward_grad_typed<T>(problem, row_stat, col_stat, grads, workspace, stream)
  switch (problem.dtype) {
    case DType::kFloat32: return FLASHNCE_FWD_GRAD(float);
    case DType::kFloat64: return FLASHNCE_FWD_GRAD(double);
    case DType::kBFloat16: return FLASHNCE_FWD_GRAD(__nv_bfloat16);
    case DType::kFloat16: return FLASHNCE_FWD_GRAD(__half);
  }
#undef FLASHNCE_FWD_GRAD
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace flashnce
