// Test of the epilogue header (csrc/flashnce/geometry.h) in plain C++: no torch.
//
// For every kind, in double: the partial derivatives returned by grad() (with G * scale = 1,
// after finalize()) match central differences of h; clamped entries get exactly zero gradient;
// the float instantiation agrees with double; the hyperbolic radial term is exact in fp32.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "flashnce/geometry.h"

using flashnce::Epilogue;
using flashnce::RowScalars;

static int failures = 0;

#define CHECK(cond, ...)                        \
  do {                                          \
    if (!(cond)) {                              \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                 \
      std::printf("\n");                        \
      ++failures;                               \
    }                                           \
  } while (0)

template <int KIND>
double h_of(double p, RowScalars<double> a, RowScalars<double> b, double k, double kappa) {
  return Epilogue<KIND, double>::eval(p, a, b, k, kappa).h;
}

// Per-row scalars consistent with the kind (hyperbolic: S = sinh rho).
template <int KIND>
RowScalars<double> scalars(std::mt19937& rng) {
  std::uniform_real_distribution<double> u(0.3, 2.0);
  RowScalars<double> r{};
  if (KIND == flashnce::kHyperbolic) {
    r.v[0] = u(rng);
    r.v[1] = u(rng);
    r.v[2] = std::sinh(r.v[1]);
  } else {
    r.v[0] = u(rng);
  }
  return r;
}

template <int KIND>
void check_derivatives(const char* name) {
  using E = Epilogue<KIND, double>;
  std::mt19937 rng(1234 + KIND);
  std::uniform_real_distribution<double> cosd(-0.9, 0.9);
  const double k = 0.8, kappa = 1e-14, eps = 1e-6;
  for (int trial = 0; trial < 200; ++trial) {
    RowScalars<double> a = scalars<KIND>(rng), b = scalars<KIND>(rng);
    // p in the interior of its valid range: |p| < sqrt(a b) (euclidean), n_i n_j (hyperbolic).
    double p = cosd(rng);
    if (KIND == flashnce::kHyperbolic || KIND == flashnce::kCosine) p *= a.v[0] * b.v[0];
    if (KIND == flashnce::kSqEuclidean || KIND == flashnce::kEuclidean)
      p *= std::sqrt(a.v[0] * b.v[0]);
    const auto st = E::eval(p, a, b, k, kappa);
    RowScalars<double> ga{}, gb{};
    const double gp = E::grad(st, p, a, b, k, 1.0, ga, gb);
    E::finalize(a, ga);
    E::finalize(b, gb);
    const double fd_p = (h_of<KIND>(p + eps, a, b, k, kappa) - h_of<KIND>(p - eps, a, b, k, kappa)) / (2 * eps);
    CHECK(std::fabs(gp - fd_p) <= 1e-6 * (1 + std::fabs(fd_p)), "%s dh/dp %g vs %g", name, gp, fd_p);
    for (int r = 0; r < E::kR; ++r) {
      // S = sinh(rho) is an independent input of the epilogue (its chain to rho is outside).
      RowScalars<double> ap = a, am = a, bp = b, bm = b;
      ap.v[r] += eps;
      am.v[r] -= eps;
      bp.v[r] += eps;
      bm.v[r] -= eps;
      const double fa = (h_of<KIND>(p, ap, b, k, kappa) - h_of<KIND>(p, am, b, k, kappa)) / (2 * eps);
      const double fb = (h_of<KIND>(p, a, bp, k, kappa) - h_of<KIND>(p, a, bm, k, kappa)) / (2 * eps);
      CHECK(std::fabs(ga.v[r] - fa) <= 1e-6 * (1 + std::fabs(fa)), "%s dh/da%d %g vs %g", name, r, ga.v[r], fa);
      CHECK(std::fabs(gb.v[r] - fb) <= 1e-6 * (1 + std::fabs(fb)), "%s dh/db%d %g vs %g", name, r, gb.v[r], fb);
    }
    // float instantiation agrees with double.
    RowScalars<float> af{}, bf{};
    for (int r = 0; r < flashnce::kMaxRowScalars; ++r) {
      af.v[r] = static_cast<float>(a.v[r]);
      bf.v[r] = static_cast<float>(b.v[r]);
    }
    const float hf = Epilogue<KIND, float>::eval(static_cast<float>(p), af, bf, 0.8f, 1e-6f).h;
    CHECK(std::fabs(hf - st.h) <= 1e-4 * (1 + std::fabs(st.h)), "%s float h %g vs %g", name, hf, st.h);
  }
}

void check_clamps() {
  // Euclidean: coincident points (D = 0) are clamped: zero gradient, finite value.
  {
    using E = Epilogue<flashnce::kEuclidean, double>;
    RowScalars<double> a{{2.0, 0, 0}}, b{{2.0, 0, 0}}, ga{}, gb{};
    const auto st = E::eval(2.0, a, b, 1.0, 1e-14);
    const double gp = E::grad(st, 2.0, a, b, 1.0, 1.0, ga, gb);
    CHECK(std::isfinite(st.h) && gp == 0.0 && ga.v[0] == 0.0 && gb.v[0] == 0.0,
          "euclidean clamp: h %g gp %g", st.h, gp);
    // All-zero vectors: floor 0, still zero gradient (no 0 * inf).
    RowScalars<double> z{{0.0, 0, 0}};
    const auto s0 = E::eval(0.0, z, z, 1.0, 1e-14);
    const double g0 = E::grad(s0, 0.0, z, z, 1.0, 1.0, ga, gb);
    CHECK(s0.h == 0.0 && g0 == 0.0 && ga.v[0] == 0.0, "euclidean zero vectors");
  }
  // Hyperbolic: the same point (w = 0 <= kappa S S) is clamped: zero gradient everywhere.
  {
    using E = Epilogue<flashnce::kHyperbolic, float>;
    const float rho = 1.3f;
    RowScalars<float> a{{1.0f, rho, std::sinh(rho)}}, ga{}, gb{};
    const auto st = E::eval(1.0f, a, a, 1.0f, 1e-6f);
    const float gp = E::grad(st, 1.0f, a, a, 1.0f, 1.0f, ga, gb);
    CHECK(std::isfinite(st.h) && gp == 0.0f && ga.v[0] == 0.0f && ga.v[1] == 0.0f &&
              ga.v[2] == 0.0f && gb.v[1] == 0.0f,
          "hyperbolic clamp: h %g gp %g", st.h, gp);
  }
  // Cosine: a zero feature has n = eps and p = 0: h = 0 and every gradient finite.
  {
    using E = Epilogue<flashnce::kCosine, float>;
    RowScalars<float> z{{1e-12f, 0, 0}}, a{{2.0f, 0, 0}}, ga{}, gb{};
    const auto st = E::eval(0.0f, z, a, 1.0f, 1e-6f);
    const float gp = E::grad(st, 0.0f, z, a, 1.0f, 1.0f, ga, gb);
    E::finalize(z, ga);
    E::finalize(a, gb);
    CHECK(st.h == 0.0f && std::isfinite(gp) && ga.v[0] == 0.0f && gb.v[0] == 0.0f,
          "cosine zero vector: h %g gp %g", st.h, gp);
  }
  // L3's radial term is exact in fp32: same direction, rho 8 vs 8.001 gives d = 1e-3.
  {
    using E = Epilogue<flashnce::kHyperbolic, float>;
    RowScalars<float> a{{1.0f, 8.0f, std::sinh(8.0f)}}, b{{1.0f, 8.001f, std::sinh(8.001f)}};
    const float d = -E::eval(1.0f, a, b, 1.0f, 0.0f).h;
    CHECK(std::fabs(d - 1e-3f) < 2e-6f, "hyperbolic radial exactness: d = %g", d);
  }
}

int main() {
  check_derivatives<flashnce::kDot>("dot");
  check_derivatives<flashnce::kSqEuclidean>("sqeuclidean");
  check_derivatives<flashnce::kEuclidean>("euclidean");
  check_derivatives<flashnce::kHyperbolic>("hyperbolic");
  check_derivatives<flashnce::kCosine>("cosine");
  check_clamps();
  CHECK(flashnce::num_row_scalars(flashnce::kHyperbolic) == 3 &&
            flashnce::num_row_scalars(flashnce::kEuclidean) == 1 &&
            flashnce::num_row_scalars(flashnce::kDot) == 0 &&
            flashnce::num_row_scalars(flashnce::kCosine) == 1 && flashnce::kCosine == 4 &&
            flashnce::kNumEpilogueKinds == 5,
        "num_row_scalars");
  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("geometry.h: all checks passed\n");
  return 0;
}
