// Torch binding of the CUDA core: TORCH_LIBRARY_IMPL(flashnce, CUDA) for the schemas
// flashnce::tile_fwd / tile_bwd / tile_fwd_grad of csrc/ops.cpp (semantics:
// python/flashnce/core/spec.py).
// Validates like the CPU impl (options, shapes, dtypes, the relation's index tensors), moves
// the small operands to x's device in the compute dtype, allocates outputs and scratch through
// the caching allocator, and queues the core's kernels (tile_api.cuh) on the current stream.
// No host sync: theta and the index tensors stay on the device and are read by the kernels.
// Built into flashnce._C_cuda by setup.py (only for a CUDA torch with a toolkit); the
// torch-free core is also compiled alone by csrc/cuda/CMakeLists.txt for the CI compile check.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "flashnce/geometry.h"
#include "flashnce/python_module.h"
#include "flashnce/spec.h"
#include "tile_api.cuh"

namespace flashnce {
namespace cuda {
namespace {

at::ScalarType compute_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

DType core_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default: TORCH_CHECK(false, "flashnce: unsupported dtype ", t);
  }
}

// A compute-dtype, contiguous copy on x's device (no copy when it already is one).
at::Tensor on_device(const at::Tensor& t, const at::Tensor& x, at::ScalarType cd) {
  return t.to(x.device(), cd).contiguous();
}

// Checked inputs and the core problem that points into them (`keep` owns the copies).
struct Prepared {
  TileProblem pb;
  std::vector<at::Tensor> keep;
};

void set_options(TileProblem& pb, at::IntArrayRef options, int64_t m) {
  TORCH_CHECK(static_cast<int64_t>(options.size()) == kNumOptions, "flashnce: options must have ",
              kNumOptions, " entries (kind, stat, relation, flags, diag_offset, cols_both), got ",
              options.size());
  const int64_t kind = options[kOptKind], stat = options[kOptStat];
  const int64_t relation = options[kOptRelation], flags = options[kOptFlags];
  const int64_t m0 = options[kOptColsBoth];
  TORCH_CHECK(kind >= 0 && kind < kNumEpilogueKinds, "flashnce: unknown epilogue kind ", kind,
              " (known: 0..", kNumEpilogueKinds - 1, ")");
  TORCH_CHECK(stat >= 0 && stat < kNumStats, "flashnce: unknown statistic ", stat,
              " (known: 0..", kNumStats - 1, ")");
  TORCH_CHECK(stat != kStatCount,
              "flashnce: statistic 'count' is not implemented by the CUDA kernels (use the "
              "cpu or torch backend)");
  TORCH_CHECK(relation >= 0 && relation < kNumRelations, "flashnce: unknown relation ",
              relation, " (known: 0..", kNumRelations - 1, ")");
  TORCH_CHECK((flags & ~kAllFlags) == 0, "flashnce: unknown relation flags ", flags,
              " (known bits: ", kAllFlags, ")");
  TORCH_CHECK(m0 >= 0 && m0 <= m, "flashnce: cols_both must be in [0, M = ", m, "], got ", m0);
  pb.kind = static_cast<int>(kind);
  pb.stat = static_cast<int>(stat);
  pb.relation = static_cast<int>(relation);
  pb.flags = flags;
  pb.diag_offset = options[kOptDiagOffset];
  pb.cols_both = m0;
}

// The relation's index tensors: count, dtype, layout, device and sizes (spec.h
// kRelationTensors); their values are not read on the host (no sync; the kernels are safe
// against malformed values, tile_api.cuh).
void set_relation(TileProblem& pb, const std::vector<at::Tensor>& t, const at::Tensor& x) {
  const int rel = pb.relation;
  TORCH_CHECK(static_cast<int64_t>(t.size()) == kRelationTensors[rel], "flashnce: relation ",
              rel, " takes ", kRelationTensors[rel], " index tensors, got ", t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    TORCH_CHECK(t[i].scalar_type() == at::kLong && t[i].dim() == 1 && t[i].is_contiguous(),
                "flashnce: relation tensor ", i, " must be a contiguous 1-d int64 tensor, got ",
                t[i].scalar_type(), " of shape ", t[i].sizes());
    TORCH_CHECK(t[i].device() == x.device(), "flashnce: relation tensor ", i, " must be on ",
                x.device(), ", got ", t[i].device());
  }
  auto sized = [&](size_t i, int64_t size, const char* what) {
    TORCH_CHECK(t[i].numel() == size, "flashnce: relation tensor ", i, " (", what,
                ") must have ", size, " elements, got ", t[i].numel());
    return t[i].data_ptr<int64_t>();
  };
  RelationIndex& ix = pb.index;
  switch (rel) {
    case kRelTargets: ix.targets = sized(0, pb.n, "targets [N]"); break;
    case kRelLabels:
      ix.row_labels = sized(0, pb.n, "row_labels [N]");
      ix.col_labels = sized(1, pb.m, "col_labels [M]");
      break;
    case kRelCsr:
      ix.nnz = t[1].numel();
      ix.indptr = sized(0, pb.n + 1, "indptr [N+1]");
      ix.indices = sized(1, ix.nnz, "indices [nnz]");
      ix.roles = sized(2, ix.nnz, "roles [nnz]");
      ix.t_indptr = sized(3, pb.m + 1, "t_indptr [M+1]");
      ix.t_indices = sized(4, ix.nnz, "t_indices [nnz]");
      ix.t_roles = sized(5, ix.nnz, "t_roles [nnz]");
      break;
    default: break;  // none, diagonal: no tensors
  }
}

Prepared prepare(const at::Tensor& x, const at::Tensor& y, const at::Tensor& alpha,
                 const at::Tensor& beta, const at::Tensor& theta, at::TensorList relation,
                 at::IntArrayRef options, double kappa) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1),
              "flashnce: x [N, K] and y [M, K] expected, got ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "flashnce: x and y dtypes differ (",
              x.scalar_type(), " and ", y.scalar_type(), ")");
  TORCH_CHECK(x.is_cuda() && y.device() == x.device(),
              "flashnce: x and y must be on the same CUDA device, got ", x.device(), " and ",
              y.device());
  TORCH_CHECK(x.size(0) < (int64_t(1) << 35) && y.size(0) < (int64_t(1) << 35),
              "flashnce: 2**35 rows or more do not fit the CUDA grid");
  Prepared p;
  TileProblem& pb = p.pb;
  pb.dtype = core_dtype(x.scalar_type());
  pb.n = x.size(0);
  pb.m = y.size(0);
  pb.k = x.size(1);
  pb.kappa = kappa;
  set_options(pb, options, pb.m);
  const int64_t r = num_row_scalars(pb.kind);
  TORCH_CHECK(alpha.dim() == 2 && alpha.size(0) == pb.n && alpha.size(1) == r,
              "flashnce: alpha must be [N, ", r, "], got ", alpha.sizes());
  TORCH_CHECK(beta.dim() == 2 && beta.size(0) == pb.m && beta.size(1) == r,
              "flashnce: beta must be [M, ", r, "], got ", beta.sizes());
  TORCH_CHECK(theta.dim() == 1 && theta.numel() == kNumTheta && theta.is_floating_point(),
              "flashnce: theta must be a floating [", kNumTheta,
              "] tensor (scale, inv_sqrt_c, bias), got ", theta.scalar_type(), " of shape ",
              theta.sizes());
  const auto cd = compute_dtype(x.scalar_type());
  p.keep = {x.contiguous(), y.contiguous(), on_device(alpha, x, cd), on_device(beta, x, cd),
            on_device(theta, x, cd)};
  pb.x = p.keep[0].data_ptr();
  pb.y = p.keep[1].data_ptr();
  pb.alpha = p.keep[2].data_ptr();
  pb.beta = p.keep[3].data_ptr();
  pb.theta = p.keep[4].data_ptr();
  set_relation(pb, relation.vec(), x);
  TORCH_CHECK(tile_problem_valid(pb), "flashnce: the CUDA core refused the problem");
  return p;
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "flashnce: ", what, " failed: ", cudaGetErrorString(err));
}

// Names of the stats (python: spec.STATS), for messages.
const char* stat_name(int stat) {
  static const char* const names[] = {"lse", "pair_sum", "masked_sum", "count"};
  static_assert(sizeof(names) / sizeof(names[0]) == kNumStats, "one name per stat");
  return stat >= 0 && stat < kNumStats ? names[stat] : "?";
}

// A stat's state for `rows` rows: [rows] for one value per row, [rows, width] otherwise
// (spec.py state_shape).
at::Tensor stat_state(int stat, int64_t rows, const at::TensorOptions& opt) {
  const int64_t w = kStatStateWidth[stat];
  return w == 1 ? at::empty({rows}, opt) : at::empty({rows, w}, opt);
}

// Gradient outputs of tile_bwd / tile_fwd_grad: dx / dy in the input dtype, the rest in the
// compute dtype; every element is written by the kernels (dx / dy are zeroed by the launcher).
struct GradOutputs {
  at::Tensor dx, dy, d_alpha, d_beta, d_theta, workspace;
  TileGrads grads;
};

GradOutputs grad_outputs(const Prepared& p, const at::Tensor& x, const at::Tensor& y,
                         int64_t r) {
  const int64_t n = p.pb.n, m = p.pb.m;
  GradOutputs o;
  o.dx = at::empty({n, p.pb.k}, x.options().memory_format(at::MemoryFormat::Contiguous));
  o.dy = at::empty({m, p.pb.k}, y.options().memory_format(at::MemoryFormat::Contiguous));
  const auto fopt = x.options().dtype(compute_dtype(x.scalar_type()));
  o.d_alpha = at::empty({n, r}, fopt);
  o.d_beta = at::empty({m, r}, fopt);
  o.d_theta = at::empty({kNumTheta}, fopt);
  o.workspace = at::empty({static_cast<int64_t>(tile_backward_workspace_bytes(p.pb))},
                          x.options().dtype(at::kByte));
  o.grads.dx = o.dx.data_ptr();
  o.grads.dy = o.dy.data_ptr();
  o.grads.d_alpha = o.d_alpha.data_ptr();
  o.grads.d_beta = o.d_beta.data_ptr();
  o.grads.d_theta = o.d_theta.data_ptr();
  return o;
}

std::tuple<at::Tensor, at::Tensor> tile_fwd_cuda(const at::Tensor& x, const at::Tensor& y,
                                                 const at::Tensor& alpha, const at::Tensor& beta,
                                                 const at::Tensor& theta,
                                                 at::TensorList relation,
                                                 at::IntArrayRef options, double kappa) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Prepared p = prepare(x, y, alpha, beta, theta, relation, options, kappa);
  const auto fopt = x.options().dtype(compute_dtype(x.scalar_type()));
  at::Tensor row_stat = stat_state(p.pb.stat, p.pb.n, fopt);
  at::Tensor col_stat = stat_state(p.pb.stat, p.pb.cols_both, fopt);
  check_cuda(tile_forward(p.pb, row_stat.data_ptr(), col_stat.data_ptr(),
                          c10::cuda::getCurrentCUDAStream().stream()),
             "tile_fwd launch");
  return {row_stat, col_stat};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tile_bwd_cuda(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& alpha, const at::Tensor& beta,
    const at::Tensor& theta, at::TensorList relation, at::IntArrayRef options, double kappa,
    const at::Tensor& row_stat, const at::Tensor& col_stat, const at::Tensor& g_row,
    const at::Tensor& g_col) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Prepared p = prepare(x, y, alpha, beta, theta, relation, options, kappa);
  const int64_t n = p.pb.n, m0 = p.pb.cols_both, r = alpha.size(1);
  const int64_t w = kStatStateWidth[p.pb.stat];  // values per row of the stat's state
  TORCH_CHECK(row_stat.numel() == n * w && g_row.numel() == n * w,
              "flashnce: row_stat and g_row must have N * width = ", n, " * ", w,
              " elements (statistic ", stat_name(p.pb.stat), "), got ", row_stat.numel(),
              " and ", g_row.numel());
  TORCH_CHECK(col_stat.numel() == m0 * w && g_col.numel() == m0 * w,
              "flashnce: col_stat and g_col must have M0 * width = cols_both * width = ", m0,
              " * ", w, " elements (statistic ", stat_name(p.pb.stat), "), got ",
              col_stat.numel(), " and ", g_col.numel());
  const auto cd = compute_dtype(x.scalar_type());
  const at::Tensor rs = on_device(row_stat, x, cd), cs = on_device(col_stat, x, cd);
  const at::Tensor gr = on_device(g_row, x, cd), gc = on_device(g_col, x, cd);
  GradOutputs o = grad_outputs(p, x, y, r);
  check_cuda(tile_backward(p.pb, rs.data_ptr(), cs.data_ptr(), gr.data_ptr(), gc.data_ptr(),
                           o.grads, o.workspace.data_ptr(),
                           c10::cuda::getCurrentCUDAStream().stream()),
             "tile_bwd launch");
  return {o.dx, o.dy, o.d_alpha, o.d_beta, o.d_theta};
}

// tile_fwd's stats and tile_bwd's gradients for g_row = 1, g_col = 0, from the backward's two
// walks, each also folding the statistic (tile_api.cuh tile_forward_grad): stats whose G is
// local to the pair only (pair_sum).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
tile_fwd_grad_cuda(const at::Tensor& x, const at::Tensor& y, const at::Tensor& alpha,
                   const at::Tensor& beta, const at::Tensor& theta, at::TensorList relation,
                   at::IntArrayRef options, double kappa) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Prepared p = prepare(x, y, alpha, beta, theta, relation, options, kappa);
  TORCH_CHECK(tile_stat_local_grad(p.pb.stat), "flashnce: statistic ", stat_name(p.pb.stat),
              " has no one-pass gradient: its G is not local to the pair (tile_fwd_grad "
              "serves pair_sum); use tile_fwd and tile_bwd");
  const auto fopt = x.options().dtype(compute_dtype(x.scalar_type()));
  at::Tensor row_stat = stat_state(p.pb.stat, p.pb.n, fopt);
  at::Tensor col_stat = stat_state(p.pb.stat, p.pb.cols_both, fopt);
  GradOutputs o = grad_outputs(p, x, y, alpha.size(1));
  check_cuda(tile_forward_grad(p.pb, row_stat.data_ptr(), col_stat.data_ptr(), o.grads,
                               o.workspace.data_ptr(),
                               c10::cuda::getCurrentCUDAStream().stream()),
             "tile_fwd_grad launch");
  return {row_stat, col_stat, o.dx, o.dy, o.d_alpha, o.d_beta, o.d_theta};
}

}  // namespace
}  // namespace cuda
}  // namespace flashnce

TORCH_LIBRARY_IMPL(flashnce, CUDA, m) {
  m.impl("tile_fwd", &flashnce::cuda::tile_fwd_cuda);
  m.impl("tile_bwd", &flashnce::cuda::tile_bwd_cuda);
  m.impl("tile_fwd_grad", &flashnce::cuda::tile_fwd_grad_cuda);
}

FLASHNCE_PYTHON_MODULE(_C_cuda)
