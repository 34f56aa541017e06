// Torch-free CUDA core of the tile op family (flashnce::tile_fwd / tile_bwd / tile_fwd_grad):
// raw device pointers in, a cudaError_t out, work queued on the caller's stream. The torch binding
// (tile_binding.cu) is a thin layer over these launchers; CMake builds this core with nvcc alone
// (target flashnce_cuda_core) so the kernels compile on machines whose torch is CPU-only.
//
// Contract (python/flashnce/core/spec.py, mirrored in csrc/flashnce/spec.h): for pairs (i, j),
//   l_ij = scale * h_kind(p_ij = <x_i, y_j>, alpha_i, beta_j; k) + bias,   theta = (scale, k, bias)
// and each pair has a role from the relation and flags: skip, positive or negative.
//   forward   row_stat[i] = Stat over j of l_ij, col_stat[j] = Stat over i (j < M0 only);
//             skipped pairs enter neither (a fully skipped row / column gets the stat's empty
//             value: -inf for lse).
//   backward  G_ij = dL/dl_ij from g_row, g_col and the saved stats (Stat's rule; the column term
//             only for j < M0), G = 0 exactly on skipped pairs, and
//             dx = (G dl/dp) y,  dy = (G dl/dp)^T x,  d_alpha / d_beta = row / column sums of
//             G dl/dalpha / G dl/dbeta,
//             d_theta = (sum G h, scale sum G h / k for the hyperbolic kind else 0, sum G).
//   forward + gradient (stats whose G is local to the pair: pair_sum) the forward's stats and
//             the backward's gradients for g_row = 1, g_col = 0, from one walk per direction.
// Stats: lse (row / column log-sum-exp; empty: -inf), pair_sum (row / column sums of
// softplus(-z l), z = +1 on positives, -1 on negatives; empty: 0) and masked_sum (two values per
// row: lse's, then the sum of l over the positive pairs; empty: (-inf, 0); G = lse's terms +
// (g_row[i, 1] + g_col[j, 1]) on positives).
// A stat's state has kStatStateWidth[stat] (spec.h) values per row: row_stat, col_stat, g_row
// and g_col are [rows] for lse / pair_sum and row-major [rows, 2] for masked_sum.
// Results are deterministic: no atomics, every reduction runs in a fixed order.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace flashnce {
namespace cuda {

// Input dtype of x and y. The compute dtype (alpha, beta, theta, stats, g_row, g_col, d_alpha,
// d_beta, d_theta) is double for kFloat64 and float otherwise.
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

// The relation's int64 index tensors (device pointers; unused ones null). See spec.py:
//   targets  t [n]                                 (i, j) positive iff j == t[i]
//   labels   a [n], b [m]                          (i, j) positive iff a[i] == b[j]
//   csr      indptr [n+1], indices / roles [nnz]   row i's listed columns, strictly increasing,
//            t_indptr [m+1], t_indices / t_roles   role kRoleSkip or kRolePositive each; the
//                                                  same sets per column (rows increasing)
// The kernels only compare targets and labels, and clamp csr list bounds to [0, nnz] and pass
// over out-of-order indices, so malformed index tensors give wrong roles, never stray reads.
struct RelationIndex {
  const int64_t* targets = nullptr;
  const int64_t* row_labels = nullptr;
  const int64_t* col_labels = nullptr;
  const int64_t* indptr = nullptr;
  const int64_t* indices = nullptr;
  const int64_t* roles = nullptr;
  const int64_t* t_indptr = nullptr;
  const int64_t* t_indices = nullptr;
  const int64_t* t_roles = nullptr;
  int64_t nnz = 0;  // entries of indices / roles (and of t_indices / t_roles)
};

struct TileProblem {
  DType dtype = DType::kFloat32;
  const void* x = nullptr;      // [n, k] dtype, row-major, contiguous
  const void* y = nullptr;      // [m, k] dtype
  const void* alpha = nullptr;  // [n, r] compute dtype, r = num_row_scalars(kind)
  const void* beta = nullptr;   // [m, r] compute dtype
  const void* theta = nullptr;  // [3] compute dtype (scale, inv_sqrt_c, bias), in device memory
                                // (read by the kernels: no host sync)
  int64_t n = 0, m = 0, k = 0;
  int64_t cols_both = 0;        // M0 <= m: columns j >= M0 have no column stat
  int kind = 0;                 // flashnce::EpilogueKind (csrc/flashnce/geometry.h)
  int stat = 0;                 // flashnce::Stat (csrc/flashnce/spec.h)
  int relation = 0;             // flashnce::Relation
  int64_t flags = 0;            // kFlagSkipSelf | kFlagSkipPositives
  int64_t diag_offset = 0;      // self / diagonal pairs are j == i + diag_offset
  RelationIndex index;
  double kappa = 1e-6;
};

struct TileGrads {
  void* dx = nullptr;       // [n, k] dtype
  void* dy = nullptr;       // [m, k] dtype
  void* d_alpha = nullptr;  // [n, r] compute dtype
  void* d_beta = nullptr;   // [m, r] compute dtype
  void* d_theta = nullptr;  // [3] compute dtype
};

// Whether the problem is one the kernels accept (known kind / stat / relation, flags, shapes,
// the relation's index pointers present). Every entry point below checks it and returns
// cudaErrorInvalidValue otherwise.
bool tile_problem_valid(const TileProblem& problem);

// row_stat [n] and col_stat [cols_both] (times the stat's state width), compute dtype.
cudaError_t tile_forward(const TileProblem& problem, void* row_stat, void* col_stat,
                         cudaStream_t stream);

// Bytes of device scratch tile_backward needs (fp32 dx/dy accumulators for 16-bit inputs,
// per-block partials of d_theta). Always > 0.
size_t tile_backward_workspace_bytes(const TileProblem& problem);

// Gradients; row_stat / g_row [n], col_stat / g_col [cols_both] (times the stat's state
// width) in the compute dtype.
// `workspace` holds at least tile_backward_workspace_bytes(problem) bytes, 256-byte aligned,
// contents ignored.
cudaError_t tile_backward(const TileProblem& problem, const void* row_stat, const void* col_stat,
                          const void* g_row, const void* g_col, const TileGrads& grads,
                          void* workspace, cudaStream_t stream);

// Whether statistic `stat` has a one-pass gradient (its G_ij is local to the pair, spec.py
// STAT_INFO[stat]["local_grad"]): true for pair_sum, false for lse, masked_sum and unknown
// ids.
bool tile_stat_local_grad(int stat);

// tile_forward's row_stat / col_stat and tile_backward's gradients for g_row = 1 (all ones),
// g_col = 0, from one walk per direction (the backward's two launches, each also folding the
// statistic; no tile_forward launches, no saved statistics read). Same buffers and workspace
// (tile_backward_workspace_bytes) as those two. A stat without a one-pass gradient (lse
// or masked_sum) returns cudaErrorNotSupported, an invalid problem cudaErrorInvalidValue.
cudaError_t tile_forward_grad(const TileProblem& problem, void* row_stat, void* col_stat,
                              const TileGrads& grads, void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace flashnce
