// Smoke test of the CPU tile ops through the dispatcher (libtorch, no Python): the dot kind in
// float64 against the materialised formulas, for relation none, skip_self with an offset and
// labels with skipped positives plus row-only columns (cols_both < M), across tile borders;
// pair_sum with diagonal positives and a skip_self offset, and its one-pass tile_fwd_grad;
// masked_sum with label positives, skipped self pairs and row-only columns; malformed options
// vectors and lse / masked_sum refused by tile_fwd_grad. The full matrix is
// tests/test_tile_ops_cpu.py.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <limits>
#include <tuple>
#include <vector>

#include "flashnce/geometry.h"
#include "flashnce/spec.h"

namespace {

using Fwd = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, at::TensorList,
                                               at::IntArrayRef, double);
using Bwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, at::TensorList, at::IntArrayRef, double, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&);
using FwdGrad = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                           at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       const at::Tensor&, const at::Tensor&, at::TensorList,
                                       at::IntArrayRef, double);

struct Case {
  const char* name;
  int64_t relation, flags, offset, m0;
  std::vector<at::Tensor> tensors;
  at::Tensor skip;  // [N, M] bool: the pairs the case skips
};

double max_err(const at::Tensor& a, const at::Tensor& b) {
  // -inf == -inf counts as equal (fully skipped rows / columns).
  const at::Tensor both_inf = a.isinf() & b.isinf() & (a == b);
  return (a - b).masked_fill(both_inf, 0).abs().max().item<double>();
}

// Relative to the reference's magnitude (sums of hundreds of O(10) terms).
double rel_err(const at::Tensor& a, const at::Tensor& b) {
  return max_err(a, b) / (1.0 + b.abs().max().item<double>());
}

}  // namespace

int main() {
  using namespace flashnce;
  auto fwd = c10::Dispatcher::singleton().findSchemaOrThrow("flashnce::tile_fwd", "").typed<Fwd>();
  auto bwd = c10::Dispatcher::singleton().findSchemaOrThrow("flashnce::tile_bwd", "").typed<Bwd>();
  auto fwd_grad = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("flashnce::tile_fwd_grad", "")
                      .typed<FwdGrad>();
  at::manual_seed(0);
  const auto opt = at::TensorOptions().dtype(at::kDouble);
  const auto iopt = at::TensorOptions().dtype(at::kLong);
  const int64_t n = 300, m = 517, k = 9;
  const double scale = 1.7, bias = -0.3;
  at::Tensor x = at::randn({n, k}, opt), y = at::randn({m, k}, opt);
  at::Tensor none_a = at::zeros({n, 0}, opt), none_b = at::zeros({m, 0}, opt);
  at::Tensor theta = at::tensor({scale, 1.0, bias}, opt);
  const at::Tensor rows = at::arange(n, iopt).unsqueeze(1), cols = at::arange(m, iopt).unsqueeze(0);
  at::Tensor a = at::randint(0, 7, {n}, iopt), b = at::randint(0, 7, {m}, iopt);
  b.narrow(0, 0, 5).fill_(-1);  // columns 0..4 match no row: only their self pair (if any)
  a.narrow(0, 0, 1).fill_(-1);
  std::vector<Case> cases = {
      {"none", kRelNone, 0, 0, m, {}, at::zeros({n, m}, at::kBool)},
      {"skip_self offset 3", kRelNone, kFlagSkipSelf, 3, m, {}, cols == rows + 3},
      {"labels skip_positives, cols_both 400", kRelLabels, kFlagSkipPositives, 0, 400, {a, b},
       a.unsqueeze(1) == b.unsqueeze(0)},
  };
  int failures = 0;
  for (const Case& c : cases) {
    const std::vector<int64_t> options = {kDot, kStatLse, c.relation, c.flags, c.offset, c.m0};
    const double inf = std::numeric_limits<double>::infinity();
    const at::Tensor logits = (scale * at::mm(x, y.t()) + bias).masked_fill(c.skip, -inf);
    auto [row, col] = fwd.call(x, y, none_a, none_b, theta, c.tensors, options, 1e-14);
    const at::Tensor row_ref = at::logsumexp(logits, {1});
    const at::Tensor col_ref = at::logsumexp(logits.narrow(1, 0, c.m0), {0});
    at::Tensor gr = at::rand({n}, opt), gc = at::rand({c.m0}, opt);
    auto out = bwd.call(x, y, none_a, none_b, theta, c.tensors, options, 1e-14, row, col, gr, gc);
    at::Tensor g = gr.unsqueeze(1) * at::exp(logits - row_ref.unsqueeze(1));
    g.narrow(1, 0, c.m0).add_(gc.unsqueeze(0) * at::exp(logits.narrow(1, 0, c.m0) - col_ref));
    g = g.masked_fill(c.skip, 0);  // also clears the nan of fully skipped rows / columns
    const at::Tensor h = at::mm(x, y.t());
    const at::Tensor dx_ref = at::mm(g * scale, y), dy_ref = at::mm((g * scale).t(), x);
    const at::Tensor dtheta_ref = at::stack({(g * h).sum(), at::zeros({}, opt), g.sum()});
    const double errs[] = {max_err(row, row_ref), max_err(col, col_ref),
                           max_err(std::get<0>(out), dx_ref), max_err(std::get<1>(out), dy_ref),
                           max_err(std::get<4>(out), dtheta_ref)};
    for (double e : errs) {
      if (!(e < 1e-10)) {
        std::printf("FAIL %s: error %g\n", c.name, e);
        ++failures;
      }
    }
  }
  // pair_sum: target positives (j == t_i, t_i = 7 i mod M, some of them i + 3) with the pairs
  // j == i + 3 skipped (skip > positive), cols_both 400. f = softplus(-z l),
  // G = (g_row + g_col) f', f' = -z sigmoid(-z l); 0 on skipped pairs.
  {
    const int64_t m0 = 400;
    const std::vector<int64_t> options = {kDot, kStatPairSum, kRelTargets, kFlagSkipSelf, 3, m0};
    at::Tensor t = at::arange(n, iopt).mul(7).remainder(m);
    t.narrow(0, 10, 5).copy_(at::arange(13, 18, iopt));  // rows 10..14: target == i + 3
    const std::vector<at::Tensor> rel = {t};
    const at::Tensor skip = cols == rows + 3;
    const at::Tensor z =
        at::where((cols == t.unsqueeze(1)) & ~skip, 1.0, -1.0).to(at::kDouble);
    const at::Tensor logits = scale * at::mm(x, y.t()) + bias;
    const at::Tensor f = at::softplus(-z * logits).masked_fill(skip, 0);
    const at::Tensor fp = (-z * at::sigmoid(-z * logits)).masked_fill(skip, 0);
    auto [row, col] = fwd.call(x, y, none_a, none_b, theta, rel, options, 1e-14);
    at::Tensor gr = at::rand({n}, opt), gc = at::zeros({m}, opt);
    gc.narrow(0, 0, m0).copy_(at::rand({m0}, opt));
    auto out = bwd.call(x, y, none_a, none_b, theta, rel, options, 1e-14, row, col, gr,
                        gc.narrow(0, 0, m0).contiguous());
    const at::Tensor g = (gr.unsqueeze(1) + gc.unsqueeze(0)) * fp;
    const at::Tensor h = at::mm(x, y.t());
    auto [row1, col1, dx1, dy1, da1, db1, dt1] =
        fwd_grad.call(x, y, none_a, none_b, theta, rel, options, 1e-14);
    const double errs[] = {rel_err(row, f.sum(1)), rel_err(col, f.narrow(1, 0, m0).sum(0)),
                           rel_err(std::get<0>(out), at::mm(g * scale, y)),
                           rel_err(std::get<1>(out), at::mm((g * scale).t(), x)),
                           rel_err(std::get<4>(out), at::stack({(g * h).sum(), at::zeros({}, opt),
                                                                g.sum()})),
                           rel_err(row1, row), rel_err(col1, col),
                           rel_err(dx1, at::mm(fp * scale, y)),
                           rel_err(dy1, at::mm((fp * scale).t(), x)),
                           rel_err(dt1, at::stack({(fp * h).sum(), at::zeros({}, opt), fp.sum()}))};
    for (size_t q = 0; q < sizeof(errs) / sizeof(errs[0]); ++q) {
      if (!(errs[q] < 1e-10)) {
        std::printf("FAIL pair_sum targets skip_self+3: output %zu error %g\n", q, errs[q]);
        ++failures;
      }
    }
    try {
      fwd_grad.call(x, y, none_a, none_b, theta, {},
                    std::vector<int64_t>{kDot, kStatLse, kRelNone, 0, 0, m}, 1e-14);
      std::printf("FAIL: tile_fwd_grad accepted lse\n");
      ++failures;
    } catch (const c10::Error&) {
    }
  }
  // masked_sum: label positives with self pairs skipped, cols_both 400; state [N, 2] / [M0, 2]
  // = (lse, sum of the positives' logits), G = g0 softmax + g1 [positive] on both sides.
  {
    const int64_t m0 = 400;
    const std::vector<int64_t> options = {kDot, kStatMaskedSum, kRelLabels, kFlagSkipSelf, 0, m0};
    const std::vector<at::Tensor> rel = {a, b};
    const double inf = std::numeric_limits<double>::infinity();
    const at::Tensor skip = cols == rows;
    const at::Tensor pos = (a.unsqueeze(1) == b.unsqueeze(0)) & ~skip;
    const at::Tensor logits = scale * at::mm(x, y.t()) + bias;
    const at::Tensor masked = logits.masked_fill(skip, -inf);
    const at::Tensor lse_r = at::logsumexp(masked, {1});
    const at::Tensor lse_c = at::logsumexp(masked.narrow(1, 0, m0), {0});
    const at::Tensor pl = logits.masked_fill(~pos, 0);
    const at::Tensor row_ref = at::stack({lse_r, pl.sum(1)}, 1);
    const at::Tensor col_ref = at::stack({lse_c, pl.narrow(1, 0, m0).sum(0)}, 1);
    auto [row, col] = fwd.call(x, y, none_a, none_b, theta, rel, options, 1e-14);
    const at::Tensor gr = at::rand({n, 2}, opt), gc = at::rand({m0, 2}, opt);
    auto out = bwd.call(x, y, none_a, none_b, theta, rel, options, 1e-14, row, col, gr, gc);
    const at::Tensor pd = pos.to(at::kDouble);
    at::Tensor g = gr.select(1, 0).unsqueeze(1) * at::exp(masked - lse_r.unsqueeze(1)) +
                   gr.select(1, 1).unsqueeze(1) * pd;
    g.narrow(1, 0, m0).add_(gc.select(1, 0).unsqueeze(0) * at::exp(masked.narrow(1, 0, m0) - lse_c) +
                            gc.select(1, 1).unsqueeze(0) * pd.narrow(1, 0, m0));
    g = g.masked_fill(skip, 0);
    const at::Tensor h = at::mm(x, y.t());
    const bool shapes = row.dim() == 2 && row.size(0) == n && row.size(1) == 2 &&
                        col.dim() == 2 && col.size(0) == m0 && col.size(1) == 2;
    if (!shapes) {
      std::printf("FAIL masked_sum: state shapes\n");
      ++failures;
    } else {
      const double errs[] = {rel_err(row, row_ref), rel_err(col, col_ref),
                             rel_err(std::get<0>(out), at::mm(g * scale, y)),
                             rel_err(std::get<1>(out), at::mm((g * scale).t(), x)),
                             rel_err(std::get<4>(out),
                                     at::stack({(g * h).sum(), at::zeros({}, opt), g.sum()}))};
      for (size_t q = 0; q < sizeof(errs) / sizeof(errs[0]); ++q) {
        if (!(errs[q] < 1e-10)) {
          std::printf("FAIL masked_sum labels skip_self: output %zu error %g\n", q, errs[q]);
          ++failures;
        }
      }
    }
    try {
      fwd_grad.call(x, y, none_a, none_b, theta, rel, options, 1e-14);
      std::printf("FAIL: tile_fwd_grad accepted masked_sum\n");
      ++failures;
    } catch (const c10::Error&) {
    }
  }
  // A malformed options vector is an error, not a silent default.
  try {
    fwd.call(x, y, none_a, none_b, theta, {}, std::vector<int64_t>{kDot, kStatLse}, 1e-14);
    std::printf("FAIL: short options vector accepted\n");
    ++failures;
  } catch (const c10::Error&) {
  }
  try {
    fwd.call(x, y, none_a, none_b, theta, {}, std::vector<int64_t>{99, kStatLse, 0, 0, 0, m},
             1e-14);
    std::printf("FAIL: unknown kind accepted\n");
    ++failures;
  } catch (const c10::Error&) {
  }
  if (failures) return 1;
  std::printf("flashnce CPU tile ops: all checks passed\n");
  return 0;
}
