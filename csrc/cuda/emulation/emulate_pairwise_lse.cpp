// Executes the CUDA tile kernels (pairwise_lse_tiles.cuh) on the CPU through cuda_emulation.h
// and compares them with a naive float64 evaluation of the same contract (shared epilogue,
// plain loops): row/column LSE, dx, dy, d_alpha, d_beta, gh, for every dtype and epilogue
// kind, with shapes that are not multiples of the tiles and with/without the diagonal mask.
// It checks the walk (indices, masks, shared-memory phases, reductions, finalize), not the
// GPU itself. Build and run (tests/test_cuda_backend.py does this when g++ and the CUDA
// headers are present):
//   g++ -std=c++20 -O1 -pthread -Icsrc -Icsrc/cuda -I$CUDA_HOME/include \
//       csrc/cuda/emulation/emulate_pairwise_lse.cpp -o emulate && ./emulate
#include "cuda_emulation.h"
// (the emulation header must come first)
#include "pairwise_lse_tiles.cuh"

#include <cstdio>
#include <random>
#include <string>

using namespace flashnce;
using namespace flashnce::cuda;
using namespace flashnce::cuda::detail;

namespace {

struct Case {
  int64_t n, m, k;
  bool excl;
};

template <class T>
DType dtype_of() {
  if (std::is_same<T, float>::value) return DType::kFloat32;
  if (std::is_same<T, double>::value) return DType::kFloat64;
  if (std::is_same<T, __nv_bfloat16>::value) return DType::kBFloat16;
  return DType::kFloat16;
}

template <class T>
T from_double(double v) {
  if constexpr (std::is_same<T, __half>::value) return __float2half_rn(static_cast<float>(v));
  else if constexpr (std::is_same<T, __nv_bfloat16>::value) return __float2bfloat16_rn(static_cast<float>(v));
  else return static_cast<T>(v);
}
template <class T>
double to_double(T v) {
  if constexpr (std::is_same<T, __half>::value) return __half2float(v);
  else if constexpr (std::is_same<T, __nv_bfloat16>::value) return __bfloat162float(v);
  else return static_cast<double>(v);
}

// Max-norm relative error, with a floor on the scale.
double rel_err(const std::vector<double>& a, const std::vector<double>& e, double floor = 1e-6) {
  double err = 0, scale = floor;
  for (size_t i = 0; i < e.size(); ++i) {
    if (std::isinf(e[i]) || std::isinf(a[i])) {
      if (a[i] != e[i]) return INFINITY;
      continue;
    }
    err = std::max(err, std::fabs(a[i] - e[i]));
    scale = std::max(scale, std::fabs(e[i]));
  }
  return std::isnan(err) ? INFINITY : err / scale;
}

template <class T, int KIND>
int run_case(const Case& cs, double tol, std::mt19937_64& rng) {
  using Acc = typename Convert<T>::Acc;
  using E64 = Epilogue<KIND, double>;
  constexpr int R = E64::kR;
  const int64_t n = cs.n, m = cs.m, K = cs.k;
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> unif(0.2, 2.0);

  // Inputs rounded to T; per-row scalars from the rounded operands (P1).
  std::vector<T> x(n * K), y(m * K);
  std::vector<double> xd(n * K), yd(m * K);
  for (int64_t i = 0; i < n * K; ++i) { x[i] = from_double<T>(normal(rng) / std::sqrt(double(K))); xd[i] = to_double(x[i]); }
  for (int64_t i = 0; i < m * K; ++i) { y[i] = from_double<T>(normal(rng) / std::sqrt(double(K))); yd[i] = to_double(y[i]); }
  auto scalars = [&](const std::vector<double>& f, int64_t rows) {
    std::vector<double> s(rows * (R > 0 ? R : 1));
    for (int64_t i = 0; i < rows; ++i) {
      double sq = 0;
      for (int64_t k = 0; k < K; ++k) sq += f[i * K + k] * f[i * K + k];
      if (R == 1) s[i] = KIND == kCosine ? std::max(std::sqrt(sq), 1e-12) : sq;
      if (R == 3) {
        const double rho = unif(rng);
        s[i * 3] = std::max(std::sqrt(sq), 1e-12);
        s[i * 3 + 1] = rho;
        s[i * 3 + 2] = std::sinh(rho);
      }
    }
    return s;
  };
  const std::vector<double> ad = scalars(xd, n), bd = scalars(yd, m);
  std::vector<Acc> a(ad.begin(), ad.end()), b(bd.begin(), bd.end());
  for (auto& v : a) v = static_cast<Acc>(v);
  const double scale = 1.7, ksc = 0.9, kappa = std::is_same<T, double>::value ? 1e-14 : 1e-6;
  std::vector<double> g_row(n), g_col(m);
  for (auto& v : g_row) v = unif(rng) - 1.0;
  for (auto& v : g_col) v = unif(rng) - 1.0;

  // Reference: materialised float64 tile of the contract.
  auto sc = [&](const std::vector<double>& s, int64_t i) {
    RowScalars<double> r{};
    for (int t = 0; t < R; ++t) r.v[t] = s[i * R + t];
    return r;
  };
  std::vector<double> L(n * m, -INFINITY), P(n * m, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      double p = 0;
      for (int64_t k = 0; k < K; ++k) p += xd[i * K + k] * yd[j * K + k];
      P[i * m + j] = p;
      if (cs.excl && i == j) continue;
      L[i * m + j] = scale * E64::eval(p, sc(ad, i), sc(bd, j), ksc, kappa).h;
    }
  std::vector<double> rl(n, -INFINITY), cl(m, -INFINITY);
  for (int64_t i = 0; i < n; ++i) {
    double mx = -INFINITY, s = 0;
    for (int64_t j = 0; j < m; ++j) mx = std::max(mx, L[i * m + j]);
    for (int64_t j = 0; j < m; ++j) s += std::isinf(L[i * m + j]) ? 0.0 : std::exp(L[i * m + j] - mx);
    if (s > 0) rl[i] = mx + std::log(s);
  }
  for (int64_t j = 0; j < m; ++j) {
    double mx = -INFINITY, s = 0;
    for (int64_t i = 0; i < n; ++i) mx = std::max(mx, L[i * m + j]);
    for (int64_t i = 0; i < n; ++i) s += std::isinf(L[i * m + j]) ? 0.0 : std::exp(L[i * m + j] - mx);
    if (s > 0) cl[j] = mx + std::log(s);
  }
  std::vector<double> dx(n * K, 0), dy(m * K, 0), da(n * R, 0), db(m * R, 0);
  double gh = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      if (cs.excl && i == j) continue;
      const auto ai = sc(ad, i), bj = sc(bd, j);
      const auto ev = E64::eval(P[i * m + j], ai, bj, ksc, kappa);
      const double l = scale * ev.h;
      const double g = g_row[i] * std::exp(l - rl[i]) + g_col[j] * std::exp(l - cl[j]);
      RowScalars<double> ga{}, gb{};
      const double gp = E64::grad(ev, P[i * m + j], ai, bj, ksc, g * scale, ga, gb);
      gh += g * ev.h;
      for (int t = 0; t < R; ++t) { da[i * R + t] += ga.v[t]; db[j * R + t] += gb.v[t]; }
      for (int64_t k = 0; k < K; ++k) {
        dx[i * K + k] += gp * yd[j * K + k];
        dy[j * K + k] += gp * xd[i * K + k];
      }
    }
  for (int64_t i = 0; i < n; ++i) { RowScalars<double> g{}; for (int t = 0; t < R; ++t) g.v[t] = da[i * R + t]; E64::finalize(sc(ad, i), g); for (int t = 0; t < R; ++t) da[i * R + t] = g.v[t]; }
  for (int64_t j = 0; j < m; ++j) { RowScalars<double> g{}; for (int t = 0; t < R; ++t) g.v[t] = db[j * R + t]; E64::finalize(sc(bd, j), g); for (int t = 0; t < R; ++t) db[j * R + t] = g.v[t]; }

  // The kernels, emulated.
  PairwiseLseProblem pb;
  pb.dtype = dtype_of<T>();
  pb.x = x.data(); pb.y = y.data(); pb.alpha = a.data(); pb.beta = b.data();
  const Acc scale_a = static_cast<Acc>(scale), ksc_a = static_cast<Acc>(ksc);
  pb.scale = &scale_a; pb.inv_sqrt_c = &ksc_a;
  pb.n = n; pb.m = m; pb.k = K; pb.kind = KIND; pb.exclude_diagonal = cs.excl; pb.kappa = kappa;
  constexpr int BM = TileTraits<T>::BM;
  std::vector<Acc> row_lse(n), col_lse(m);
  emu::launch(ceil_div(n, BM), kThreads, [&] { lse_fwd_kernel<T, KIND, false>(walk_params<T>(pb, false), row_lse.data()); });
  emu::launch(ceil_div(m, BM), kThreads, [&] { lse_fwd_kernel<T, KIND, true>(walk_params<T>(pb, true), col_lse.data()); });

  std::vector<Acc> rla(rl.begin(), rl.end()), cla(cl.begin(), cl.end());
  std::vector<Acc> gra(g_row.begin(), g_row.end()), gca(g_col.begin(), g_col.end());
  std::vector<Acc> dxa(n * K, Acc(0)), dya(m * K, Acc(0)), daa(n * R + 1), dba(m * R + 1);
  std::vector<Acc> partials(ceil_div(n, BM) + 1, Acc(0));
  Acc gha = 0;
  emu::launch(ceil_div(n, BM), kThreads, [&] {
    lse_bwd_kernel<T, KIND, false>(walk_params<T>(pb, false), rla.data(), cla.data(), gra.data(), gca.data(), dxa.data(), daa.data(), partials.data());
  });
  emu::launch(ceil_div(m, BM), kThreads, [&] {
    lse_bwd_kernel<T, KIND, true>(walk_params<T>(pb, true), cla.data(), rla.data(), gca.data(), gra.data(), dya.data(), dba.data(), nullptr);
  });
  emu::launch(1, kThreads, [&] { sum_partials_kernel<Acc>(partials.data(), ceil_div(n, BM), &gha); });

  auto dbl = [](const std::vector<Acc>& v, size_t count) { return std::vector<double>(v.begin(), v.begin() + count); };
  const double errs[] = {rel_err(dbl(row_lse, n), rl), rel_err(dbl(col_lse, m), cl),
                         rel_err(dbl(dxa, n * K), dx), rel_err(dbl(dya, m * K), dy),
                         rel_err(dbl(daa, n * R), da), rel_err(dbl(dba, m * R), db),
                         rel_err({double(gha)}, {gh})};
  const char* names[] = {"row_lse", "col_lse", "dx", "dy", "d_alpha", "d_beta", "gh"};
  int failures = 0;
  for (int q = 0; q < 7; ++q) {
    if (!(errs[q] <= tol)) {
      std::printf("FAIL dtype=%d kind=%d n=%lld m=%lld k=%lld excl=%d %s: rel err %.3e > %.1e\n",
                  int(pb.dtype), KIND, (long long)n, (long long)m, (long long)K, int(cs.excl),
                  names[q], errs[q], tol);
      ++failures;
    }
  }
  return failures;
}

template <class T>
int run_dtype(double tol, std::mt19937_64& rng) {
  const Case cases[] = {{70, 130, 37, true}, {130, 70, 37, false}, {1, 5, 3, false},
                        {9, 9, 0, false}, {33, 2, 17, true}};
  int f = 0;
  for (const Case& c : cases) {
    f += run_case<T, kDot>(c, tol, rng);
    f += run_case<T, kSqEuclidean>(c, tol, rng);
    f += run_case<T, kEuclidean>(c, tol, rng);
    f += run_case<T, kHyperbolic>(c, tol, rng);
    f += run_case<T, kCosine>(c, tol, rng);
  }
  return f;
}

}  // namespace

int main() {
  std::mt19937_64 rng(1234);
  int failures = 0;
  failures += run_dtype<double>(1e-10, rng);
  failures += run_dtype<float>(2e-4, rng);
  failures += run_dtype<__nv_bfloat16>(2e-2, rng);
  failures += run_dtype<__half>(5e-3, rng);
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
