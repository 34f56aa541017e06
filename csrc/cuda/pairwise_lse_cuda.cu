// Torch binding of the CUDA core: TORCH_LIBRARY_IMPL(flashnce, CUDA) for the schemas of
// csrc/ops.cpp. Validates, allocates outputs and scratch through the caching allocator, and
// queues the core's kernels (pairwise_lse_kernels.cuh) on the current stream. No host sync:
// scale and inv_sqrt_c stay on the device and are read by the kernels.
// Built into flashnce._C_cuda by setup.py (only for a CUDA torch with a toolkit); the
// torch-free core is also compiled alone by csrc/cuda/CMakeLists.txt for the CI compile check.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "flashnce/geometry.h"
#include "flashnce/python_module.h"
#include "pairwise_lse_kernels.cuh"

namespace flashnce {
namespace cuda {
namespace {

at::ScalarType compute_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

DType core_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default: TORCH_CHECK(false, "flashnce: unsupported dtype ", t);
  }
}

void check_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& alpha,
                  const at::Tensor& beta, int64_t kind) {
  TORCH_CHECK(kind >= 0 && kind < kNumEpilogueKinds, "flashnce: unknown epilogue kind ", kind);
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1),
              "flashnce: x [N, K] and y [M, K] expected, got ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "flashnce: x and y dtypes differ");
  TORCH_CHECK(x.is_cuda() && y.is_cuda() && x.get_device() == y.get_device(),
              "flashnce: x and y must be on the same CUDA device");
  core_dtype(x.scalar_type());
  const int64_t r = num_row_scalars(static_cast<int>(kind));
  TORCH_CHECK(alpha.dim() == 2 && alpha.size(0) == x.size(0) && alpha.size(1) == r,
              "flashnce: alpha must be [N, ", r, "], got ", alpha.sizes());
  TORCH_CHECK(beta.dim() == 2 && beta.size(0) == y.size(0) && beta.size(1) == r,
              "flashnce: beta must be [M, ", r, "], got ", beta.sizes());
  TORCH_CHECK(x.size(0) < (int64_t(1) << 35) && y.size(0) < (int64_t(1) << 35),
              "flashnce: too many rows for the CUDA grid");
}

// A compute-dtype, contiguous copy on x's device (no copy when it already is one).
at::Tensor on_device(const at::Tensor& t, const at::Tensor& x, at::ScalarType cd) {
  return t.to(x.device(), cd).contiguous();
}

PairwiseLseProblem make_problem(const at::Tensor& x, const at::Tensor& y, const at::Tensor& a,
                                const at::Tensor& b, const at::Tensor& scale,
                                const at::Tensor& inv_sqrt_c, int64_t kind,
                                bool exclude_diagonal, double kappa) {
  PairwiseLseProblem pb;
  pb.dtype = core_dtype(x.scalar_type());
  pb.x = x.data_ptr();
  pb.y = y.data_ptr();
  pb.alpha = a.data_ptr();
  pb.beta = b.data_ptr();
  pb.scale = scale.data_ptr();
  pb.inv_sqrt_c = inv_sqrt_c.data_ptr();
  pb.n = x.size(0);
  pb.m = y.size(0);
  pb.k = x.size(1);
  pb.kind = static_cast<int>(kind);
  pb.exclude_diagonal = exclude_diagonal;
  pb.kappa = kappa;
  return pb;
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "flashnce: ", what, " failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> pairwise_lse_fwd_cuda(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& alpha, const at::Tensor& beta,
    const at::Tensor& scale, const at::Tensor& inv_sqrt_c, int64_t kind, bool exclude_diagonal,
    double kappa) {
  check_inputs(x, y, alpha, beta, kind);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto cd = compute_dtype(x.scalar_type());
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  const at::Tensor ac = on_device(alpha, x, cd), bc = on_device(beta, x, cd);
  const at::Tensor sc = on_device(scale, x, cd), kc = on_device(inv_sqrt_c, x, cd);
  TORCH_CHECK(sc.numel() == 1 && kc.numel() == 1, "flashnce: scale and inv_sqrt_c must be scalars");
  at::Tensor row_lse = at::empty({x.size(0)}, x.options().dtype(cd));
  at::Tensor col_lse = at::empty({y.size(0)}, x.options().dtype(cd));
  const auto pb = make_problem(xc, yc, ac, bc, sc, kc, kind, exclude_diagonal, kappa);
  check_cuda(pairwise_lse_forward(pb, row_lse.data_ptr(), col_lse.data_ptr(),
                                  c10::cuda::getCurrentCUDAStream().stream()),
             "pairwise_lse_fwd launch");
  return {row_lse, col_lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pairwise_lse_bwd_cuda(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& alpha, const at::Tensor& beta,
    const at::Tensor& scale, const at::Tensor& inv_sqrt_c, const at::Tensor& row_lse,
    const at::Tensor& col_lse, const at::Tensor& g_row, const at::Tensor& g_col, int64_t kind,
    bool exclude_diagonal, double kappa) {
  check_inputs(x, y, alpha, beta, kind);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto cd = compute_dtype(x.scalar_type());
  const int64_t n = x.size(0), m = y.size(0), r = alpha.size(1);
  TORCH_CHECK(row_lse.numel() == n && g_row.numel() == n && col_lse.numel() == m &&
                  g_col.numel() == m,
              "flashnce: row_lse/g_row must have N elements and col_lse/g_col M");
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  const at::Tensor ac = on_device(alpha, x, cd), bc = on_device(beta, x, cd);
  const at::Tensor sc = on_device(scale, x, cd), kc = on_device(inv_sqrt_c, x, cd);
  TORCH_CHECK(sc.numel() == 1 && kc.numel() == 1, "flashnce: scale and inv_sqrt_c must be scalars");
  const at::Tensor rl = on_device(row_lse, x, cd), cl = on_device(col_lse, x, cd);
  const at::Tensor gr = on_device(g_row, x, cd), gc = on_device(g_col, x, cd);
  at::Tensor dx = at::empty_like(xc, at::MemoryFormat::Contiguous);
  at::Tensor dy = at::empty_like(yc, at::MemoryFormat::Contiguous);
  at::Tensor d_alpha = at::empty({n, r}, x.options().dtype(cd));
  at::Tensor d_beta = at::empty({m, r}, x.options().dtype(cd));
  at::Tensor gh = at::empty({}, x.options().dtype(cd));
  const auto pb = make_problem(xc, yc, ac, bc, sc, kc, kind, exclude_diagonal, kappa);
  at::Tensor workspace = at::empty({static_cast<int64_t>(pairwise_lse_backward_workspace_bytes(pb))},
                                   x.options().dtype(at::kByte));
  PairwiseLseGrads grads;
  grads.dx = dx.data_ptr();
  grads.dy = dy.data_ptr();
  grads.d_alpha = d_alpha.data_ptr();
  grads.d_beta = d_beta.data_ptr();
  grads.gh = gh.data_ptr();
  check_cuda(pairwise_lse_backward(pb, rl.data_ptr(), cl.data_ptr(), gr.data_ptr(),
                                   gc.data_ptr(), grads, workspace.data_ptr(),
                                   c10::cuda::getCurrentCUDAStream().stream()),
             "pairwise_lse_bwd launch");
  return {dx, dy, d_alpha, d_beta, gh};
}

}  // namespace
}  // namespace cuda
}  // namespace flashnce

TORCH_LIBRARY_IMPL(flashnce, CUDA, m) {
  m.impl("pairwise_lse_fwd", &flashnce::cuda::pairwise_lse_fwd_cuda);
  m.impl("pairwise_lse_bwd", &flashnce::cuda::pairwise_lse_bwd_cuda);
}

FLASHNCE_PYTHON_MODULE(_C_cuda)
