// Smoke test of the CPU tile ops through the dispatcher (libtorch, no Python): the dot kind in
// float64 against the materialised formulas, for relation none, skip_self with an offset and
// labels with skipped positives plus row-only columns (cols_both < M), across tile borders;
// and one malformed options vector. The full matrix is tests/test_tile_ops_cpu.py.
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

}  // namespace

int main() {
  using namespace flashnce;
  auto fwd = c10::Dispatcher::singleton().findSchemaOrThrow("flashnce::tile_fwd", "").typed<Fwd>();
  auto bwd = c10::Dispatcher::singleton().findSchemaOrThrow("flashnce::tile_bwd", "").typed<Bwd>();
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
