// CPU impl of flashnce::tile_fwd / tile_bwd / tile_fwd_grad (schemas in csrc/ops.cpp,
// semantics in python/flashnce/core/spec.py): argument checks, the options vector, the kind
// and stat dispatch, and the registration. The walks are cpu/walk_forward.h and
// cpu/walk_backward.h (tile_fwd_grad is the backward walk with the stat's OnePass hooks), the
// statistics cpu/stats.h, the pair roles cpu/relation.h. The count statistic (ranks, forward
// only) is not a fold / merge stat: its two-phase walk is cpu/walk_count.h.
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
#include "cpu/walk_count.h"
#include "cpu/walk_forward.h"

namespace flashnce {
namespace cpu {
namespace FLASHNCE_ISA {
namespace {

at::ScalarType compute_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// The options vector (spec.h kOpt*), checked. flags holds the relation flags only; the
// backward-mode bit kFlagSameOperand is split off into same_operand.
struct Options {
  int64_t kind, stat, relation, flags, diag_offset, m0;
  bool same_operand;
};

Options parse_options(at::IntArrayRef options, int64_t m) {
  TORCH_CHECK(static_cast<int64_t>(options.size()) == kNumOptions, "flashnce: options must have ",
              kNumOptions, " entries (kind, stat, relation, flags, diag_offset, cols_both), got ",
              options.size());
  const int64_t flags = options[kOptFlags];
  Options o{options[kOptKind],         options[kOptStat],       options[kOptRelation],
            flags & ~kFlagSameOperand, options[kOptDiagOffset], options[kOptColsBoth],
            (flags & kFlagSameOperand) != 0};
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

// One branch per kind and fold / merge stat (TileStat); an unknown id is an error
// (parse_options checks first, so these defaults are a second line for callers that skip it).
// count has its own walk and is branched on before (tile_fwd_cpu), refused by the others.
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
    case kStatPairSum: f(std::integral_constant<int, kStatPairSum>{}); break;
    case kStatMaskedSum: f(std::integral_constant<int, kStatMaskedSum>{}); break;
    case kStatCount:
      TORCH_CHECK(false, "flashnce: statistic count is forward only (tile_fwd): it has no "
                  "backward and no one-pass gradient");
      break;
    default: TORCH_CHECK(false, "flashnce: unknown statistic ", stat);
  }
}

const char* stat_name(int64_t stat) {
  static const char* const names[kNumStats] = {"lse", "pair_sum", "masked_sum", "count"};
  return stat >= 0 && stat < kNumStats ? names[stat] : "?";
}

// The statistic of a row / column that has seen no pair (N = 0 or M = 0).
double stat_empty(int64_t stat) {
  if (stat == kStatCount) return -1.0;  // no positive
  double v = 0;
  dispatch_stat(stat, [&](auto sc) { v = TileStat<decltype(sc)::value, double>::kEmpty; });
  return v;
}

// Values per row of the stat's state (parse_options has checked the id).
int64_t stat_width(int64_t stat) { return kStatStateWidth[stat]; }

// The state tensor of `rows` rows: [rows] or [rows, w].
at::Tensor empty_state(int64_t stat, int64_t rows, const at::TensorOptions& opt) {
  const int64_t w = stat_width(stat);
  return w == 1 ? at::empty({rows}, opt) : at::empty({rows, w}, opt);
}

// Fills a state tensor with the empty statistic: (-inf, 0) for masked_sum.
void fill_empty(at::Tensor& state, int64_t stat) {
  if (stat == kStatMaskedSum) {
    state.select(1, 0).fill_(-std::numeric_limits<double>::infinity());
    state.select(1, 1).fill_(0.0);
  } else {
    state.fill_(stat_empty(stat));
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
  // Same operand: the caller vouches that y is x; the shapes are what can be checked here.
  TORCH_CHECK(!p.opt.same_operand || x.sizes() == y.sizes(),
              "flashnce: the same-operand flag needs y of x's shape, got ", x.sizes(), " and ",
              y.sizes());
  const auto cd = compute_dtype(x.scalar_type());
  p.xc = x.to(cd).contiguous();
  p.yc = p.opt.same_operand ? p.xc : y.to(cd).contiguous();  // one widened copy for y is x
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
  at::Tensor row_stat = empty_state(p.opt.stat, n, fopt),
             col_stat = empty_state(p.opt.stat, p.opt.m0, fopt);
  if (m == 0) fill_empty(row_stat, p.opt.stat);
  if (n == 0) fill_empty(col_stat, p.opt.stat);
  if (n == 0 || m == 0) return {row_stat, col_stat};
  AT_DISPATCH_FLOATING_TYPES(row_stat.scalar_type(), "tile_fwd_cpu", [&] {
    const auto pb = make_problem<scalar_t>(p, kappa);
    dispatch_kind(p.opt.kind, [&](auto kc) {
      if (p.opt.stat == kStatCount) {
        count_walk<decltype(kc)::value, scalar_t>(pb, p.rel, row_stat.data_ptr<scalar_t>(),
                                                  col_stat.data_ptr<scalar_t>());
        return;
      }
      dispatch_stat(p.opt.stat, [&](auto sc) {
        forward_walk<decltype(kc)::value, decltype(sc)::value, scalar_t>(
            pb, p.rel, row_stat.data_ptr<scalar_t>(), col_stat.data_ptr<scalar_t>());
      });
    });
  });
  return {row_stat, col_stat};
}

// The gradients of one backward walk: zero-initialised in the compute dtype (dX, dY converted
// back to the input dtype by finish()), d_theta written from the walk's sums. Same operand:
// dy is empty [0, K] and the walk accumulates dY into dx (dx = dX + dY, converted once).
struct Grads {
  at::Tensor dx, dy, d_alpha, d_betaT, d_theta;
  bool same_operand;

  Grads(const Prepared& p, int64_t n, int64_t m, int64_t r)
      : dx(at::zeros_like(p.xc)),
        dy(p.opt.same_operand ? at::empty({0, p.yc.size(1)}, p.yc.options())
                              : at::zeros_like(p.yc)),
        d_alpha(at::zeros({n, r}, p.xc.options())),
        d_betaT(at::zeros({r, m}, p.xc.options())),
        d_theta(at::zeros({kNumTheta}, p.xc.options())),
        same_operand(p.opt.same_operand) {}

  template <class T>
  BackwardOut<T> out() {
    return BackwardOut<T>{dx.data_ptr<T>(), same_operand ? nullptr : dy.data_ptr<T>(),
                          d_alpha.data_ptr<T>(), d_betaT.data_ptr<T>()};
  }

  // d_theta = (d scale, d inv_sqrt_c, d bias): l = scale h + bias and, for the hyperbolic
  // kind, h is linear in k = inv_sqrt_c, so dl/dk = scale h / k.
  template <class T>
  void write_d_theta(const Prepared& p, const BackwardOut<T>& o) {
    T* dt = d_theta.data_ptr<T>();
    dt[kThetaScale] = static_cast<T>(o.sum_gh);
    dt[kThetaInvSqrtC] =
        p.opt.kind == kHyperbolic
            ? static_cast<T>(p.theta[kThetaScale] * o.sum_gh / p.theta[kThetaInvSqrtC])
            : T(0);
    dt[kThetaBias] = static_cast<T>(o.sum_g);
  }

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> finish(
      const at::Tensor& x, const at::Tensor& y) const {
    return {dx.to(x.scalar_type()), dy.to(y.scalar_type()), d_alpha, d_betaT.t().contiguous(),
            d_theta};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tile_bwd_cpu(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& alpha, const at::Tensor& beta,
    const at::Tensor& theta, at::TensorList relation, at::IntArrayRef options, double kappa,
    const at::Tensor& row_stat, const at::Tensor& col_stat, const at::Tensor& g_row,
    const at::Tensor& g_col) {
  const Prepared p = prepare(x, y, alpha, beta, theta, relation, options);
  TORCH_CHECK(p.opt.stat != kStatCount,
              "flashnce: statistic count has no backward (ranks are piecewise constant)");
  const auto cd = compute_dtype(x.scalar_type());
  const int64_t n = x.size(0), m = y.size(0), m0 = p.opt.m0, r = alpha.size(1);
  const int64_t w = stat_width(p.opt.stat);
  TORCH_CHECK(row_stat.numel() == n * w && g_row.numel() == n * w,
              "flashnce: row_stat and g_row must have N * ", w, " = ", n * w,
              " elements (the ", stat_name(p.opt.stat), " state: ", w,
              " value(s) per row), got ", row_stat.numel(), " and ", g_row.numel());
  TORCH_CHECK(col_stat.numel() == m0 * w && g_col.numel() == m0 * w,
              "flashnce: col_stat and g_col must have M0 * ", w, " = cols_both * ", w, " = ",
              m0 * w, " elements, got ", col_stat.numel(), " and ", g_col.numel());
  // One value per row for the walk: a state of w values arrives as w contiguous arrays
  // (masked_sum: value 0, the lse, in rs / cs / gr / gc; value 1's upstream gradients in
  // gr_pos / gc_pos; its forward values are not read).
  at::Tensor rs, gr, cs, gc, gr_pos, gc_pos;
  if (w == 1) {
    rs = row_stat.to(cd).contiguous();
    gr = g_row.to(cd).contiguous();
    cs = col_stat.to(cd).contiguous();
    gc = g_col.to(cd).contiguous();
  } else {
    const at::Tensor rs2 = row_stat.reshape({n, w}).to(cd), gr2 = g_row.reshape({n, w}).to(cd);
    const at::Tensor cs2 = col_stat.reshape({m0, w}).to(cd), gc2 = g_col.reshape({m0, w}).to(cd);
    rs = rs2.select(1, 0).contiguous();
    gr = gr2.select(1, 0).contiguous();
    gr_pos = gr2.select(1, 1).contiguous();
    cs = cs2.select(1, 0).contiguous();
    gc = gc2.select(1, 0).contiguous();
    gc_pos = gc2.select(1, 1).contiguous();
  }
  // Column arrays padded to M: a row-only column (j >= M0) has col_stat = +inf and g_col = 0
  // (and g_col_pos = 0), so its column term (lse: g_col exp(l - col_stat), pair_sum: g_col
  // f', masked_sum: both of those) is exactly 0 and the walk needs no M0 test.
  if (m0 < m) {
    auto pad = [&](at::Tensor& t, double fill) {
      at::Tensor full = at::full({m}, fill, rs.options());
      full.narrow(0, 0, m0).copy_(t);
      t = full;
    };
    pad(cs, std::numeric_limits<double>::infinity());
    pad(gc, 0.0);
    if (gc_pos.defined()) pad(gc_pos, 0.0);
  }
  Grads grads(p, n, m, r);
  if (n > 0 && m > 0) {
    AT_DISPATCH_FLOATING_TYPES(cd, "tile_bwd_cpu", [&] {
      const auto pb = make_problem<scalar_t>(p, kappa);
      BackwardIO<scalar_t> io{rs.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(),
                              gr.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>()};
      if (gr_pos.defined()) {
        io.g_row_pos = gr_pos.data_ptr<scalar_t>();
        io.g_col_pos = gc_pos.data_ptr<scalar_t>();
      }
      BackwardOut<scalar_t> out = grads.out<scalar_t>();
      dispatch_kind(p.opt.kind, [&](auto kc) {
        dispatch_stat(p.opt.stat, [&](auto sc) {
          backward_walk<decltype(kc)::value, TileStat<decltype(sc)::value, scalar_t>, scalar_t>(
              pb, p.rel, io, out);
        });
      });
      grads.write_d_theta(p, out);
    });
  }
  return grads.finish(x, y);
}

// tile_fwd's statistics and tile_bwd's gradients for g_row = 1, g_col = 0 from one backward
// walk (the stat's OnePass hooks); only for a stat whose G is local to the pair.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
tile_fwd_grad_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& alpha,
                  const at::Tensor& beta, const at::Tensor& theta, at::TensorList relation,
                  at::IntArrayRef options, double kappa) {
  const Prepared p = prepare(x, y, alpha, beta, theta, relation, options);
  TORCH_CHECK(p.opt.stat != kStatCount, "flashnce: statistic count has no one-pass gradient "
              "(it is forward only: use tile_fwd)");
  bool local = false;
  dispatch_stat(p.opt.stat,
                [&](auto sc) { local = TileStat<decltype(sc)::value, double>::kLocalGrad; });
  TORCH_CHECK(local, "flashnce: statistic ", stat_name(p.opt.stat),
              " has no one-pass gradient: its G is not local to the pair (tile_fwd_grad "
              "serves pair_sum); use tile_fwd and tile_bwd");
  const int64_t n = x.size(0), m = y.size(0), r = alpha.size(1);
  // Every stat with a local G merges by + from 0 (its empty value): the walk adds into these.
  const auto fopt = x.options().dtype(compute_dtype(x.scalar_type()));
  at::Tensor row_stat = at::zeros({n}, fopt), col_stat = at::zeros({p.opt.m0}, fopt);
  Grads grads(p, n, m, r);
  if (n > 0 && m > 0) {
    AT_DISPATCH_FLOATING_TYPES(row_stat.scalar_type(), "tile_fwd_grad_cpu", [&] {
      const auto pb = make_problem<scalar_t>(p, kappa);
      const BackwardIO<scalar_t> io{nullptr, nullptr, nullptr, nullptr};  // none needed
      BackwardOut<scalar_t> out = grads.out<scalar_t>();
      out.row_stat = row_stat.data_ptr<scalar_t>();
      out.col_stat = col_stat.data_ptr<scalar_t>();
      dispatch_kind(p.opt.kind, [&](auto kc) {
        dispatch_stat(p.opt.stat, [&](auto sc) {
          constexpr int STAT = decltype(sc)::value;
          if constexpr (TileStat<STAT, scalar_t>::kLocalGrad)
            backward_walk<decltype(kc)::value, OnePass<STAT, scalar_t>, scalar_t>(pb, p.rel, io,
                                                                                  out);
        });
      });
      grads.write_d_theta(p, out);
    });
  }
  auto [dx, dy, d_alpha, d_beta, d_theta] = grads.finish(x, y);
  return {row_stat, col_stat, dx, dy, d_alpha, d_beta, d_theta};
}

}  // namespace
}  // namespace FLASHNCE_ISA
}  // namespace cpu
}  // namespace flashnce

TORCH_LIBRARY_IMPL(flashnce, CPU, m) {
  m.impl("tile_fwd", &flashnce::cpu::FLASHNCE_ISA::tile_fwd_cpu);
  m.impl("tile_bwd", &flashnce::cpu::FLASHNCE_ISA::tile_bwd_cpu);
  m.impl("tile_fwd_grad", &flashnce::cpu::FLASHNCE_ISA::tile_fwd_grad_cpu);
}

#ifdef FLASHNCE_MODULE_NAME
FLASHNCE_PYTHON_MODULE(FLASHNCE_MODULE_NAME)
#endif
