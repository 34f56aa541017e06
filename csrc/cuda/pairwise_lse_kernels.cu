// Public entry points of the torch-free CUDA core (pairwise_lse_kernels.cuh): validate the
// problem and dispatch on the input dtype to the per-dtype kernels (pairwise_lse_<dtype>.cu).
#include "pairwise_lse_kernels.cuh"

#include "pairwise_lse_detail.cuh"

namespace flashnce {
namespace cuda {
namespace {

bool valid_problem(const PairwiseLseProblem& pb) {
  using detail::ceil_div;
  return pb.n >= 0 && pb.m >= 0 && pb.k >= 0 && pb.kind >= 0 && pb.kind < kNumEpilogueKinds &&
         ceil_div(pb.n, 32) < (int64_t{1} << 31) && ceil_div(pb.m, 32) < (int64_t{1} << 31);
}

}  // namespace

cudaError_t pairwise_lse_forward(const PairwiseLseProblem& problem, void* row_lse, void* col_lse,
                                 cudaStream_t stream) {
  if (!valid_problem(problem)) return cudaErrorInvalidValue;
  switch (problem.dtype) {
    case DType::kFloat32: return detail::forward_typed<float>(problem, row_lse, col_lse, stream);
    case DType::kFloat64: return detail::forward_typed<double>(problem, row_lse, col_lse, stream);
    case DType::kBFloat16:
      return detail::forward_typed<__nv_bfloat16>(problem, row_lse, col_lse, stream);
    case DType::kFloat16: return detail::forward_typed<__half>(problem, row_lse, col_lse, stream);
  }
  return cudaErrorInvalidValue;
}

size_t pairwise_lse_backward_workspace_bytes(const PairwiseLseProblem& problem) {
  return detail::workspace_layout(problem).total;
}

cudaError_t pairwise_lse_backward(const PairwiseLseProblem& problem, const void* row_lse,
                                  const void* col_lse, const void* g_row, const void* g_col,
                                  const PairwiseLseGrads& grads, void* workspace,
                                  cudaStream_t stream) {
  if (!valid_problem(problem)) return cudaErrorInvalidValue;
#define FLASHNCE_BWD(T) \
  detail::backward_typed<T>(problem, row_lse, col_lse, g_row, g_col, grads, workspace, stream)
  switch (problem.dtype) {
    case DType::kFloat32: return FLASHNCE_BWD(float);
    case DType::kFloat64: return FLASHNCE_BWD(double);
    case DType::kBFloat16: return FLASHNCE_BWD(__nv_bfloat16);
    case DType::kFloat16: return FLASHNCE_BWD(__half);
  }
#undef FLASHNCE_BWD
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace flashnce
