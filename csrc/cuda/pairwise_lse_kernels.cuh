// Torch-free CUDA core of the pairwise log-sum-exp primitive: raw device pointers in, a
// cudaError_t out, work queued on the caller's stream. The torch binding
// (pairwise_lse_cuda.cu) is a thin layer over these launchers; CMake builds this core with nvcc
// alone (target flashnce_cuda_core) so the kernels compile on machines whose torch is CPU-only.
//
// Contract (python/flashnce/backends/base.py), logit l_ij = scale * h_kind(<x_i, y_j>, a_i, b_j):
//   forward   row_lse[i] = log sum_j exp l_ij,  col_lse[j] = log sum_i exp l_ij
//   backward  G_ij = g_row[i] exp(l_ij - row_lse[i]) + g_col[j] exp(l_ij - col_lse[j])
//             dx = (G * dl/dp) y,  dy = (G * dl/dp)^T x,  d_alpha / d_beta = row / column sums
//             of G * dl/dalpha / dl/dbeta,  gh = sum_ij G_ij h_ij
// With exclude_diagonal the pairs i == j are skipped entirely (l_ii = -inf, G_ii = 0).
// Results are deterministic: no atomics, every reduction runs in a fixed order.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace flashnce {
namespace cuda {

// Input dtype of x and y. The compute dtype (alpha, beta, scale, inv_sqrt_c, LSEs, g_row,
// g_col, d_alpha, d_beta, gh) is double for kFloat64 and float otherwise.
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

struct PairwiseLseProblem {
  DType dtype = DType::kFloat32;
  const void* x = nullptr;           // [n, k] dtype, row-major, contiguous
  const void* y = nullptr;           // [m, k] dtype
  const void* alpha = nullptr;       // [n, r] compute dtype, r = num_row_scalars(kind)
  const void* beta = nullptr;        // [m, r] compute dtype
  const void* scale = nullptr;       // one compute-dtype value in device memory (no host sync)
  const void* inv_sqrt_c = nullptr;  // one compute-dtype value in device memory
  int64_t n = 0, m = 0, k = 0;
  int kind = 0;  // flashnce::EpilogueKind (csrc/flashnce/geometry.h)
  bool exclude_diagonal = false;
  double kappa = 1e-6;
};

struct PairwiseLseGrads {
  void* dx = nullptr;       // [n, k] dtype
  void* dy = nullptr;       // [m, k] dtype
  void* d_alpha = nullptr;  // [n, r] compute dtype
  void* d_beta = nullptr;   // [m, r] compute dtype
  void* gh = nullptr;       // one compute-dtype value
};

// Row and column LSE (compute dtype, [n] and [m]); -inf for a row with no entries.
cudaError_t pairwise_lse_forward(const PairwiseLseProblem& problem, void* row_lse, void* col_lse,
                                 cudaStream_t stream);

// Bytes of device scratch pairwise_lse_backward needs (fp32 dx/dy accumulators for 16-bit
// inputs, per-block partials of gh). Always > 0.
size_t pairwise_lse_backward_workspace_bytes(const PairwiseLseProblem& problem);

// Gradients; row_lse, col_lse, g_row, g_col in the compute dtype. `workspace` holds at least
// pairwise_lse_backward_workspace_bytes(problem) bytes, 256-byte aligned, contents ignored.
cudaError_t pairwise_lse_backward(const PairwiseLseProblem& problem, const void* row_lse,
                                  const void* col_lse, const void* g_row, const void* g_col,
                                  const PairwiseLseGrads& grads, void* workspace,
                                  cudaStream_t stream);

}  // namespace cuda
}  // namespace flashnce
