// Test of the epilogue header (csrc/flashnce/geometry.h) in plain C++: no torch.
//
// For every kind, in double: the partial derivatives returned by grad() (with G * scale = 1,
// after finalize()) match central differences of h; clamped entries get exactly zero gradient;
// the float instantiation agrees with double; the hyperbolic radial term is exact in fp32;
// the hyperbolic kind at radii up to 44 in fp32 (no overflow, no flushed gradient).
#include <algorithm>
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

// Hyperbolic at large radii (rho up to 44, S_i S_j up to ~4e37) in fp32: h within 1e-6
// (relative) of the fp64 value, finite, and log1p(w + q) finite at rho_i = rho_j = 44 antipodal;
// the gradients finite and within 1e-4 of fp64 even for a small upstream G (g_w ~ G / q would
// be subnormal there without the scaled factors). q = w + 1 past w = 2^27 is continuous.
void check_hyperbolic_large_radii() {
  using Ef = Epilogue<flashnce::kHyperbolic, float>;
  using Ed = Epilogue<flashnce::kHyperbolic, double>;
  const double rhos[][2] = {{20, 20}, {30, 29.5}, {40, 40}, {42, 41}, {44, 44}, {44, 0.5},
                            {44, 1e-3}, {11, 12}, {10.4, 10.4}};
  // cos away from 1: there 1 - cos itself carries fp32's rounding of cos (input conditioning).
  const double coss[] = {-1.0, -0.3, 0.0, 0.5, 0.9};
  const double gss[] = {1.0, 1e-6};
  for (const auto& rr : rhos) {
    for (double c : coss) {
      for (double gsv : gss) {
        const double ni = 1.3, nj = 0.7, k = 0.9;
        RowScalars<double> ad{{ni, rr[0], std::sinh(rr[0])}}, bd{{nj, rr[1], std::sinh(rr[1])}};
        RowScalars<float> af{}, bf{};
        for (int r = 0; r < 3; ++r) {
          af.v[r] = static_cast<float>(ad.v[r]);
          bf.v[r] = static_cast<float>(bd.v[r]);
        }
        // The fp64 reference from the fp32-rounded scalars (what the fp32 kernel sees).
        for (int r = 0; r < 3; ++r) {
          ad.v[r] = af.v[r];
          bd.v[r] = bf.v[r];
        }
        const double p = static_cast<float>(c * ad.v[0] * bd.v[0]);
        const auto sd = Ed::eval(p, ad, bd, k, 1e-14);
        const auto sf = Ef::eval(static_cast<float>(p), af, bf, static_cast<float>(k), 1e-6f);
        CHECK(std::isfinite(sf.h) && std::isfinite(sd.h), "large radii h %g (rho %g %g cos %g)",
              sf.h, rr[0], rr[1], c);
        CHECK(std::fabs(sf.h - sd.h) <= 1e-6 * std::fabs(sd.h) + 1e-6,
              "large radii h %.9g vs %.9g (rho %g %g cos %g)", sf.h, sd.h, rr[0], rr[1], c);
        RowScalars<double> gad{}, gbd{};
        RowScalars<float> gaf{}, gbf{};
        const double gpd = Ed::grad(sd, p, ad, bd, k, gsv, gad, gbd);
        const float gpf = Ef::grad(sf, static_cast<float>(p), af, bf, static_cast<float>(k),
                                   static_cast<float>(gsv), gaf, gbf);
        Ed::finalize(ad, gad);
        Ed::finalize(bd, gbd);
        Ef::finalize(af, gaf);
        Ef::finalize(bf, gbf);
        // dh/dp, dh/dn scale with S_i S_j / q and 1/n: compare relative to the largest of the
        // entry's gradients (a component can be a cancellation-sized difference).
        double big = std::fabs(gpd);
        for (int r = 0; r < 3; ++r) big = std::max({big, std::fabs(gad.v[r]), std::fabs(gbd.v[r])});
        auto near = [&](float f, double d) {
          return std::isfinite(f) && std::fabs(f - d) <= 1e-4 * std::fabs(d) + 1e-5 * big;
        };
        CHECK(near(gpf, gpd), "large radii dh/dp %g vs %g (rho %g %g cos %g G %g)", gpf, gpd,
              rr[0], rr[1], c, gsv);
        for (int r = 0; r < 3; ++r) {
          CHECK(near(gaf.v[r], gad.v[r]), "large radii dh/da%d %g vs %g (rho %g %g cos %g G %g)",
                r, gaf.v[r], gad.v[r], rr[0], rr[1], c, gsv);
          CHECK(near(gbf.v[r], gbd.v[r]), "large radii dh/db%d %g vs %g (rho %g %g cos %g G %g)",
                r, gbf.v[r], gbd.v[r], rr[0], rr[1], c, gsv);
        }
      }
    }
  }
  // Across the q = w + 1 switch (w = 2^27): h continuous in fp64 (relative 1e-15).
  {
    RowScalars<double> a{{1.0, 0.0, 0.0}}, b{{1.0, 0.0, 0.0}};
    const double w0 = 134217728.0;
    for (double w : {w0 * (1 - 1e-12), w0, w0 * (1 + 1e-12)}) {
      // Pure radial w = 2 sinh^2(d/2): d = 2 asinh(sqrt(w / 2)).
      a.v[1] = 2 * std::asinh(std::sqrt(w / 2));
      const double h = Ed::eval(0.0, a, b, 1.0, 0.0).h;
      const double want = -std::log1p(w + std::sqrt(w * (w + 2)));
      CHECK(std::fabs(h - want) <= 1e-14 * std::fabs(want), "q switch: h %.17g vs %.17g", h,
            want);
    }
  }
}

int main() {
  check_derivatives<flashnce::kDot>("dot");
  check_derivatives<flashnce::kSqEuclidean>("sqeuclidean");
  check_derivatives<flashnce::kEuclidean>("euclidean");
  check_derivatives<flashnce::kHyperbolic>("hyperbolic");
  check_derivatives<flashnce::kCosine>("cosine");
  check_clamps();
  check_hyperbolic_large_radii();
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
