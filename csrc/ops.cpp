// The op schemas, defined once for every device (the CPU and CUDA kernels only register impls).
// Semantics, shapes and dtypes: python/flashnce/core/spec.py (mirrored in csrc/flashnce/spec.h).
//
// flashnce::tile_fwd -> (row_stat [N], col_stat [M0]; [N, w], [M0, w] for a stat whose state
//   has w > 1 values per row: masked_sum, w = 2, (lse, masked sum))
// flashnce::tile_bwd -> (dx [N, K], dy [M, K], d_alpha [N, r], d_beta [M, r], d_theta [3])
// flashnce::tile_fwd_grad -> tile_fwd's stats and tile_bwd's gradients for g_row = 1,
//   g_col = 0, from one walk; only for stats whose G is local to the pair (pair_sum).
//
// x [N, K], y [M, K]: fp32, fp64, bf16 or fp16, same dtype, contiguous. alpha [N, r],
// beta [M, r], theta [3] = (scale, inv_sqrt_c, bias), row_stat, col_stat, g_row, g_col: compute
// dtype (fp64 for fp64 inputs, else fp32), N * w / M0 * w elements (w: the stat's state
// width, spec.h kStatStateWidth). relation: the relation's int64 index tensors.
// options [6] = (kind, stat, relation, flags, diag_offset, cols_both = M0); kappa: the distance
// clamp constant. The logits are l_ij = scale * h_kind(<x_i, y_j>, alpha_i, beta_j) + bias;
// d_theta = (sum G h, scale * sum G h / inv_sqrt_c for the hyperbolic kind else 0, sum G).
// flags may carry kFlagSameOperand (y is x; CPU kernel only): tile_bwd / tile_fwd_grad then
// return dx = dX + dY and an empty dy [0, K].
// Autograd and fake (meta) functions are registered from Python once this library is loaded.
#include <torch/library.h>

#include "flashnce/python_module.h"

TORCH_LIBRARY(flashnce, m) {
  m.def(
      "tile_fwd(Tensor x, Tensor y, Tensor alpha, Tensor beta, Tensor theta, "
      "Tensor[] relation, int[] options, float kappa) -> (Tensor row_stat, Tensor col_stat)");
  m.def(
      "tile_bwd(Tensor x, Tensor y, Tensor alpha, Tensor beta, Tensor theta, "
      "Tensor[] relation, int[] options, float kappa, Tensor row_stat, Tensor col_stat, "
      "Tensor g_row, Tensor g_col) "
      "-> (Tensor dx, Tensor dy, Tensor d_alpha, Tensor d_beta, Tensor d_theta)");
  m.def(
      "tile_fwd_grad(Tensor x, Tensor y, Tensor alpha, Tensor beta, Tensor theta, "
      "Tensor[] relation, int[] options, float kappa) -> (Tensor row_stat, Tensor col_stat, "
      "Tensor dx, Tensor dy, Tensor d_alpha, Tensor d_beta, Tensor d_theta)");
}

FLASHNCE_PYTHON_MODULE(_C)
