// The op schemas, defined once for every device (the CPU and CUDA kernels only register impls).
//
// flashnce::pairwise_lse_fwd -> (row_lse [N], col_lse [M])
// flashnce::pairwise_lse_bwd -> (dx [N, K], dy [M, K], d_alpha [N, r], d_beta [M, r], gh [])
//
// Arguments follow python/flashnce/backends/base.py: x [N, K], y [M, K] (fp32, fp64, bf16 or
// fp16, same dtype, contiguous); alpha [N, r], beta [M, r], scale and inv_sqrt_c 0-d, row_lse,
// col_lse, g_row, g_col, all in the compute dtype (fp64 for fp64 inputs, else fp32).
// kind: epilogue kind index (csrc/flashnce/geometry.h EpilogueKind); exclude_diagonal drops the
// pairs i == j; kappa is the distance clamp constant. Autograd and fake (meta) functions are
// registered from Python (python/flashnce/ops.py) once this library is loaded.
#include <torch/library.h>

#include "flashnce/python_module.h"

TORCH_LIBRARY(flashnce, m) {
  m.def(
      "pairwise_lse_fwd(Tensor x, Tensor y, Tensor alpha, Tensor beta, Tensor scale, "
      "Tensor inv_sqrt_c, int kind, bool exclude_diagonal, float kappa) "
      "-> (Tensor row_lse, Tensor col_lse)");
  m.def(
      "pairwise_lse_bwd(Tensor x, Tensor y, Tensor alpha, Tensor beta, Tensor scale, "
      "Tensor inv_sqrt_c, Tensor row_lse, Tensor col_lse, Tensor g_row, Tensor g_col, "
      "int kind, bool exclude_diagonal, float kappa) "
      "-> (Tensor dx, Tensor dy, Tensor d_alpha, Tensor d_beta, Tensor gh)");
}

FLASHNCE_PYTHON_MODULE(_C)
