// CPU impl of flashnce::tile_fwd / tile_bwd (schemas in csrc/ops.cpp, semantics in
// python/flashnce/core/spec.py): argument checks, the options vector, the kind and stat
// dispatch, and the registration. The walks are cpu/walk_forward.h and cpu/walk_backward.h,
// the statistics cpu/stats.h, the pair roles cpu/relation.h.
//
// This file is compiled once per ISA (csrc/cpu/isa/*.cpp set FLASHNCE_ISA = avx2 / avx512 and
// setup.py / CMakeLists.txt the matching -m flags) into separate extension modules;
// python/flashnce/_extension.py imports the best one the CPU supports. Each registers the same
// CPU impl of the schemas.
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "flashnce/geometry.h"
#include "flashnce/python_module.h"
#include "flashnce/spec.h"

#ifndef FLASHNCE_ISA
#error "compile with -DFLASHNCE_ISA=<isa> (see setup.py)"
#endif

#include "cpu/problem.h"
#include "cpu/relation.h"
#include "cpu/stats.h"
#include "cpu/walk_backward.h"
#include "cpu/walk_forward.h"

namespace flashnce {
namespace cpu {
namespace FLASHNCE_ISA {
namespace {

at::ScalarType compute_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// The options vector (spec.h kOpt*), checked.
struct Options {
  int64_t kind, stat, relation, flags, diag_offset, m0;
};

Options parse_options(at::IntArrayRef options, int64_t m) {
  TORCH_CHECK(static_cast<int64_t>(options.size()) == kNumOptions, "flashnce: options must have ",
              kNumOptions, " entries (kind, stat, relation, flags, diag_offset, cols_both), got ",
              options.size());
  Options o{options[kOptKind],  options[kOptStat],       options[kOptRelation],
            options[kOptFlags], options[kOptDiagOffset], options[kOptColsBoth]};
  TORCH_CHECK(o.kind >= 0 && o.kind < kNumEpilogueKinds, "flashnce: unknown epilogue kind ",
              o.kind, " (known: 0..", kNumEpilogueKinds - 1, ")");
  TORCH_CHECK(o.stat >= 0 && o.stat < kNumStats, "flashnce: unknown statistic ", o.stat,
              " (known: 0..", kNumStats - 1, ")");
  TORCH_CHECK(o.m0 >= 0 && o.m0 <= m, "flashnce: cols_both must be in [0, M = ", m, "], got ",
              o.m0);
  return o;  // relation and flags are checked by make_relation
}

void check_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& alpha,
                  const at::Tensor& beta, const at::Tensor& theta, int64_t kind) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1),
              "flashnce: x [N, K] and y [M, K] expected, got ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "flashnce: x and y dtypes differ (",
              x.scalar_type(), " and ", y.scalar_type(), ")");
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf,
              "flashnce: unsupported dtype ", st);
  const int64_t r = num_row_scalars(static_cast<int>(kind));
  TORCH_CHECK(alpha.dim() == 2 && alpha.size(0) == x.size(0) && alpha.size(1) == r,
              "flashnce: alpha must be [N, ", r, "], got ", alpha.sizes());
  TORCH_CHECK(beta.dim() == 2 && beta.size(0) == y.size(0) && beta.size(1) == r,
              "flashnce: beta must be [M, ", r, "], got ", beta.sizes());
  TORCH_CHECK(theta.dim() == 1 && theta.numel() == kNumTheta && theta.is_floating_point(),
              "flashnce: theta must be a floating [", kNumTheta,
              "] tensor (scale, inv_sqrt_c, bias), got ", theta.scalar_type(), " of shape ",
              theta.sizes());
  TORCH_CHECK(x.size(0) < (int64_t(1) << 31) && y.size(0) < (int64_t(1) << 31) &&
                  x.size(1) < (int64_t(1) << 31),
              "flashnce: dimensions must fit in int32 (BLAS)");
}

// One branch per kind and stat; an unknown id is an error (parse_options checks first, so
// these defaults are a second line for callers that skip it).
template <class F>
void dispatch_kind(int64_t kind, const F& f) {
  switch (kind) {
    case kDot: f(std::integral_constant<int, kDot>{}); break;
    case kSqEuclidean: f(std::integral_constant<int, kSqEuclidean>{}); break;
    case kEuclidean: f(std::integral_constant<int, kEuclidean>{}); break;
    case kHyperbolic: f(std::integral_constant<int, kHyperbolic>{}); break;
    case kCosine: f(std::integral_constant<int, kCosine>{}); break;
    default: TORCH_CHECK(false, "flashnce: unknown epilogue kind ", kind);
  }
}
template <class F>
void dispatch_stat(int64_t stat, const F& f) {
  switch (stat) {
    case kStatLse: f(std::integral_constant<int, kStatLse>{}); break;
    default: TORCH_CHECK(false, "flashnce: unknown statistic ", stat);
  }
}

// Operands widened to the compute dtype cd (bf16 / fp16 exactly, so the tile GEMM accumulates
// in fp32), theta read on the host, and the view of the relation's tensors.
struct Prepared {
  at::Tensor xc, yc, ac, bt;
  Options opt;
  RelationView rel;
  double theta[kNumTheta];
};

Prepared prepare(const at::Tensor& x, const at::Tensor& y, const at::Tensor& alpha,
                 const at::Tensor& beta, const at::Tensor& theta,
                 at::TensorList relation, at::IntArrayRef options) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2, "flashnce: x [N, K] and y [M, K] expected, got ",
              x.sizes(), " and ", y.sizes());
  Prepared p;
  p.opt = parse_options(options, y.size(0));
  check_inputs(x, y, alpha, beta, theta, p.opt.kind);
  p.rel = make_relation(p.opt.relation, p.opt.flags, p.opt.diag_offset, relation, x.size(0),
                        y.size(0));
  const auto cd = compute_dtype(x.scalar_type());
  p.xc = x.to(cd).contiguous();
  p.yc = y.to(cd).contiguous();
  p.ac = alpha.to(cd).contiguous();
  p.bt = beta.to(cd).t().contiguous();
  const at::Tensor th = theta.to(at::kCPU, at::kDouble).contiguous();
  for (int t = 0; t < kNumTheta; ++t) p.theta[t] = th.data_ptr<double>()[t];
  return p;
}

template <class T>
Problem<T> make_problem(const Prepared& p, double kappa) {
  return Problem<T>{p.xc.data_ptr<T>(),
                    p.yc.data_ptr<T>(),
                    p.ac.data_ptr<T>(),
                    p.bt.data_ptr<T>(),
                    p.xc.size(0),
                    p.yc.size(0),
                    p.xc.size(1),
                    p.opt.m0,
                    static_cast<T>(p.theta[kThetaScale]),
                    static_cast<T>(p.theta[kThetaInvSqrtC]),
                    static_cast<T>(p.theta[kThetaBias]),
                    static_cast<T>(kappa)};
}

std::tuple<at::Tensor, at::Tensor> tile_fwd_cpu(const at::Tensor& x, const at::Tensor& y,
                                                const at::Tensor& alpha, const at::Tensor& beta,
                                                const at::Tensor& theta,
                                                at::TensorList relation,
                                                at::IntArrayRef options, double kappa) {
  const Prepared p = prepare(x, y, alpha, beta, theta, relation, options);
  const int64_t n = x.size(0), m = y.size(0);
  const auto fopt = x.options().dtype(compute_dtype(x.scalar_type()));
  at::Tensor row_stat = at::empty({n}, fopt), col_stat = at::empty({p.opt.m0}, fopt);
  if (m == 0) row_stat.fill_(-std::numeric_limits<double>::infinity());
  if (n == 0) col_stat.fill_(-std::numeric_limits<double>::infinity());
  if (n == 0 || m == 0) return {row_stat, col_stat};
  AT_DISPATCH_FLOATING_TYPES(row_stat.scalar_type(), "tile_fwd_cpu", [&] {
    const auto pb = make_problem<scalar_t>(p, kappa);
    dispatch_kind(p.opt.kind, [&](auto kc) {
      dispatch_stat(p.opt.stat, [&](auto sc) {
        forward_walk<decltype(kc)::value, decltype(sc)::value, scalar_t>(
            pb, p.rel, row_stat.data_ptr<scalar_t>(), col_stat.data_ptr<scalar_t>());
      });
    });
  });
  return {row_stat, col_stat};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tile_bwd_cpu(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& alpha, const at::Tensor& beta,
    const at::Tensor& theta, at::TensorList relation, at::IntArrayRef options, double kappa,
    const at::Tensor& row_stat, const at::Tensor& col_stat, const at::Tensor& g_row,
    const at::Tensor& g_col) {
  const Prepared p = prepare(x, y, alpha, beta, theta, relation, options);
  const auto cd = compute_dtype(x.scalar_type());
  const int64_t n = x.size(0), m = y.size(0), m0 = p.opt.m0, r = alpha.size(1);
  TORCH_CHECK(row_stat.numel() == n && g_row.numel() == n,
              "flashnce: row_stat and g_row must have N = ", n, " elements, got ",
              row_stat.numel(), " and ", g_row.numel());
  TORCH_CHECK(col_stat.numel() == m0 && g_col.numel() == m0,
              "flashnce: col_stat and g_col must have M0 = cols_both = ", m0,
              " elements, got ", col_stat.numel(), " and ", g_col.numel());
  const at::Tensor rs = row_stat.to(cd).contiguous(), gr = g_row.to(cd).contiguous();
  // Column arrays padded to M: a row-only column (j >= M0) has col_stat = +inf and g_col = 0,
  // so its column term g_col exp(l - col_stat) is exactly 0 and the walk needs no M0 test.
  at::Tensor cs = col_stat.to(cd).contiguous(), gc = g_col.to(cd).contiguous();
  if (m0 < m) {
    at::Tensor cs_full = at::full({m}, std::numeric_limits<double>::infinity(), rs.options());
    at::Tensor gc_full = at::zeros({m}, rs.options());
    cs_full.narrow(0, 0, m0).copy_(cs);
    gc_full.narrow(0, 0, m0).copy_(gc);
    cs = cs_full;
    gc = gc_full;
  }
  at::Tensor dx = at::zeros_like(p.xc), dy = at::zeros_like(p.yc);
  at::Tensor d_alpha = at::zeros({n, r}, p.xc.options());
  at::Tensor d_betaT = at::zeros({r, m}, p.xc.options());
  at::Tensor d_theta = at::zeros({kNumTheta}, p.xc.options());
  if (n > 0 && m > 0) {
    AT_DISPATCH_FLOATING_TYPES(cd, "tile_bwd_cpu", [&] {
      const auto pb = make_problem<scalar_t>(p, kappa);
      const BackwardIO<scalar_t> io{rs.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(),
                                    gr.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>()};
      BackwardOut<scalar_t> out{dx.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(),
                                d_alpha.data_ptr<scalar_t>(), d_betaT.data_ptr<scalar_t>()};
      dispatch_kind(p.opt.kind, [&](auto kc) {
        dispatch_stat(p.opt.stat, [&](auto sc) {
          backward_walk<decltype(kc)::value, decltype(sc)::value, scalar_t>(pb, p.rel, io, out);
        });
      });
      // d_theta = (d scale, d inv_sqrt_c, d bias): l = scale h + bias and, for the hyperbolic
      // kind, h is linear in k = inv_sqrt_c, so dl/dk = scale h / k.
      scalar_t* dt = d_theta.data_ptr<scalar_t>();
      dt[kThetaScale] = static_cast<scalar_t>(out.sum_gh);
      dt[kThetaInvSqrtC] =
          p.opt.kind == kHyperbolic
              ? static_cast<scalar_t>(p.theta[kThetaScale] * out.sum_gh / p.theta[kThetaInvSqrtC])
              : scalar_t(0);
      dt[kThetaBias] = static_cast<scalar_t>(out.sum_g);
    });
  }
  return {dx.to(x.scalar_type()), dy.to(y.scalar_type()), d_alpha, d_betaT.t().contiguous(),
          d_theta};
}

}  // namespace
}  // namespace FLASHNCE_ISA
}  // namespace cpu
}  // namespace flashnce

TORCH_LIBRARY_IMPL(flashnce, CPU, m) {
  m.impl("tile_fwd", &flashnce::cpu::FLASHNCE_ISA::tile_fwd_cpu);
  m.impl("tile_bwd", &flashnce::cpu::FLASHNCE_ISA::tile_bwd_cpu);
}

#ifdef FLASHNCE_MODULE_NAME
FLASHNCE_PYTHON_MODULE(FLASHNCE_MODULE_NAME)
#endif
