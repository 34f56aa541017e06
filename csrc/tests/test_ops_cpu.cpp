// Smoke test of the CPU ops through the dispatcher (libtorch, no Python): the dot kind in
// float64 against the materialised formulas, with and without the diagonal mask.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <limits>
#include <tuple>

int main() {
  using Fwd = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                 const at::Tensor&, const at::Tensor&,
                                                 const at::Tensor&, const at::Tensor&, int64_t,
                                                 bool, double);
  using Bwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      const at::Tensor&, const at::Tensor&, int64_t, bool, double);
  auto fwd = c10::Dispatcher::singleton()
                 .findSchemaOrThrow("flashnce::pairwise_lse_fwd", "")
                 .typed<Fwd>();
  auto bwd = c10::Dispatcher::singleton()
                 .findSchemaOrThrow("flashnce::pairwise_lse_bwd", "")
                 .typed<Bwd>();
  at::manual_seed(0);
  const auto opt = at::TensorOptions().dtype(at::kDouble);
  const int64_t n = 300, m = 517, k = 9;
  at::Tensor x = at::randn({n, k}, opt), y = at::randn({m, k}, opt);
  at::Tensor none_a = at::zeros({n, 0}, opt), none_b = at::zeros({m, 0}, opt);
  at::Tensor s = at::scalar_tensor(1.7, opt), c = at::scalar_tensor(1.0, opt);
  int failures = 0;
  for (bool excl : {false, true}) {
    at::Tensor logits = s * at::mm(x, y.t());
    if (excl) logits.diagonal().fill_(-std::numeric_limits<double>::infinity());
    auto [row, col] = fwd.call(x, y, none_a, none_b, s, c, 0, excl, 1e-14);
    const at::Tensor row_ref = at::logsumexp(logits, {1}), col_ref = at::logsumexp(logits, {0});
    at::Tensor gr = at::rand({n}, opt), gc = at::rand({m}, opt);
    auto out = bwd.call(x, y, none_a, none_b, s, c, row, col, gr, gc, 0, excl, 1e-14);
    at::Tensor g = gr.unsqueeze(1) * at::exp(logits - row_ref.unsqueeze(1)) +
                   gc.unsqueeze(0) * at::exp(logits - col_ref.unsqueeze(0));
    const at::Tensor dx_ref = at::mm(g * s, y), dy_ref = at::mm((g * s).t(), x);
    const at::Tensor gh_ref = (g * logits.masked_fill(logits.isinf(), 0) / s).sum();
    const double errs[] = {(row - row_ref).abs().max().item<double>(),
                           (col - col_ref).abs().max().item<double>(),
                           (std::get<0>(out) - dx_ref).abs().max().item<double>(),
                           (std::get<1>(out) - dy_ref).abs().max().item<double>(),
                           (std::get<4>(out) - gh_ref).abs().item<double>()};
    for (double e : errs) {
      if (!(e < 1e-10)) {
        std::printf("FAIL exclude_diagonal=%d: error %g\n", int(excl), e);
        ++failures;
      }
    }
  }
  if (failures) return 1;
  std::printf("flashnce CPU ops: all checks passed\n");
  return 0;
}
