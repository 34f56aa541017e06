// Epilogue math of the pairwise logit tile, shared by the CPU and CUDA kernels.
//
// logit_ij = scale * h_kind(p_ij, alpha_i, beta_j), with p_ij = <X_i, Y_j> the tile's dot product
// and alpha/beta up to three fp32 scalars per row/column. The five kinds and their clamps are the
// executable spec in python/flashnce/geometry.py (tile_logits / tile_logit_grads):
//
//   dot          h = p
//   sqeuclidean  h = -(a_i + b_j - 2p)                          alpha = (a = |x|^2)
//   euclidean    h = -sqrt(max(D, kappa (a_i + b_j))),  D = a_i + b_j - 2p
//   hyperbolic   h = -arcosh(1 + w) k,  k = 1/sqrt(c),          alpha = (n, rho, S = sinh rho)
//                w = 2 sinh^2((rho_i - rho_j)/2) + S_i S_j (1 - p/(n_i n_j)),  w >= kappa S_i S_j
//   cosine       h = p / (n_i n_j)                               alpha = (n = max(|x|, eps))
//
// A clamped entry has exactly zero gradient (strict masks, docs/NUMERICS.md P5): gradients are chosen
// with select(), never multiplied by a mask, so an infinite partial never becomes 0 * inf.
//
// Everything is templated on the value type T. The header ships MathOps for float and double
// (host and device); the CPU kernel adds MathOps for its SIMD vector types, so the same formulas
// run on 8/16 lanes. No torch and no CPU-only code in here.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FLASHNCE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FLASHNCE_HOST_DEVICE inline
#endif

namespace flashnce {

// Order matches python/flashnce/geometry.py EPILOGUE_KINDS; the ops take the index.
// New kinds are appended: the index is part of the op's ABI.
enum EpilogueKind : int {
  kDot = 0, kSqEuclidean = 1, kEuclidean = 2, kHyperbolic = 3, kCosine = 4
};
constexpr int kNumEpilogueKinds = 5;
constexpr int kMaxRowScalars = 3;

FLASHNCE_HOST_DEVICE constexpr int num_row_scalars(int kind) {
  return kind == kHyperbolic                                           ? 3
         : (kind == kSqEuclidean || kind == kEuclidean || kind == kCosine) ? 1
                                                                            : 0;
}

// Elementwise operations the epilogue needs. Mask is what comparisons return (bool for
// scalars, an all-ones-lane vector for SIMD types); select(m, a, b) = m ? a : b.
template <class T>
struct MathOps;

template <>
struct MathOps<float> {
  using Mask = bool;
  FLASHNCE_HOST_DEVICE static float sqrt(float x) { return ::sqrtf(x); }
  FLASHNCE_HOST_DEVICE static float log1p(float x) { return ::log1pf(x); }
  FLASHNCE_HOST_DEVICE static float sinh(float x) { return ::sinhf(x); }
  FLASHNCE_HOST_DEVICE static float exp(float x) { return ::expf(x); }
  FLASHNCE_HOST_DEVICE static Mask gt(float a, float b) { return a > b; }
  FLASHNCE_HOST_DEVICE static float select(Mask m, float a, float b) { return m ? a : b; }
};

template <>
struct MathOps<double> {
  using Mask = bool;
  FLASHNCE_HOST_DEVICE static double sqrt(double x) { return ::sqrt(x); }
  FLASHNCE_HOST_DEVICE static double log1p(double x) { return ::log1p(x); }
  FLASHNCE_HOST_DEVICE static double sinh(double x) { return ::sinh(x); }
  FLASHNCE_HOST_DEVICE static double exp(double x) { return ::exp(x); }
  FLASHNCE_HOST_DEVICE static Mask gt(double a, double b) { return a > b; }
  FLASHNCE_HOST_DEVICE static double select(Mask m, double a, double b) { return m ? a : b; }
};

// Per-row (or per-column) scalars of one entry: the first num_row_scalars(kind) are used.
template <class T>
struct RowScalars {
  T v[kMaxRowScalars];
};

// Epilogue<KIND, T>:
//   State eval(p, a, b, k, kappa)   scale-free logit h (State::h) plus what grad() reuses
//   T grad(st, p, a, b, k, gs, ga, gb)
//       gs = G_ij * scale (G = dL/dlogit); returns g_p = G dlogit/dp and writes this entry's
//       contributions ga = G dlogit/dalpha_i, gb = G dlogit/dbeta_j (before finalize()).
//   finalize(a, g)                  applied once to a row's (column's) summed contributions
//       (the hyperbolic dn contribution is summed undivided and divided by n here).
template <int KIND, class T>
struct Epilogue;

template <class T>
struct Epilogue<kDot, T> {
  static constexpr int kR = 0;
  struct State { T h; };
  FLASHNCE_HOST_DEVICE static State eval(T p, const RowScalars<T>&, const RowScalars<T>&, T, T) {
    return {p};
  }
  FLASHNCE_HOST_DEVICE static T grad(const State&, T, const RowScalars<T>&, const RowScalars<T>&,
                                     T, T gs, RowScalars<T>&, RowScalars<T>&) {
    return gs;
  }
  template <class S>
  FLASHNCE_HOST_DEVICE static void finalize(const RowScalars<S>&, RowScalars<S>&) {}
};

template <class T>
struct Epilogue<kSqEuclidean, T> {
  static constexpr int kR = 1;
  struct State { T h; };
  FLASHNCE_HOST_DEVICE static State eval(T p, const RowScalars<T>& a, const RowScalars<T>& b, T,
                                         T) {
    return {T(2) * p - (a.v[0] + b.v[0])};
  }
  FLASHNCE_HOST_DEVICE static T grad(const State&, T, const RowScalars<T>&, const RowScalars<T>&,
                                     T, T gs, RowScalars<T>& ga, RowScalars<T>& gb) {
    ga.v[0] = T(0) - gs;
    gb.v[0] = T(0) - gs;
    return T(2) * gs;
  }
  template <class S>
  FLASHNCE_HOST_DEVICE static void finalize(const RowScalars<S>&, RowScalars<S>&) {}
};

template <class T>
struct Epilogue<kEuclidean, T> {
  using M = MathOps<T>;
  static constexpr int kR = 1;
  struct State { T h; typename M::Mask active; };
  FLASHNCE_HOST_DEVICE static State eval(T p, const RowScalars<T>& a, const RowScalars<T>& b, T,
                                         T kappa) {
    const T ab = a.v[0] + b.v[0];
    const T dist2 = ab - T(2) * p;
    const T floor = kappa * ab;
    const typename M::Mask active = M::gt(dist2, floor);
    return {T(0) - M::sqrt(M::select(active, dist2, floor)), active};
  }
  FLASHNCE_HOST_DEVICE static T grad(const State& st, T, const RowScalars<T>&,
                                     const RowScalars<T>&, T, T gs, RowScalars<T>& ga,
                                     RowScalars<T>& gb) {
    // dh/dD = -1/(2 d) = 1/(2 h); zero where clamped (coincident pairs).
    const T g_dist2 = M::select(st.active, gs * T(0.5) / st.h, T(0));
    ga.v[0] = g_dist2;
    gb.v[0] = g_dist2;
    return T(-2) * g_dist2;
  }
  template <class S>
  FLASHNCE_HOST_DEVICE static void finalize(const RowScalars<S>&, RowScalars<S>&) {}
};

template <class T>
struct Epilogue<kHyperbolic, T> {
  using M = MathOps<T>;
  static constexpr int kR = 3;
  // Large radii (rho_i + rho_j up to ~88, S_i S_j up to ~1e38 in fp32): w (w + 2) overflows
  // fp32 once w > ~1.8e19, so past w = 2^27 q = sqrt(w (w + 2)) is taken as w + 1 (relative
  // error 1 / (2 (w + 1)^2) < 2^-55: below fp32 and fp64 rounding). And the gradient's
  // g_w = -G s k / q (~1e-38 there) would be subnormal, or flushed to 0 under FTZ, before it is
  // multiplied back by S_i S_j, sinh(rho_i - rho_j) or S: on those entries q and the factors
  // it multiplies are carried scaled by sig = 2^-64 (sig = 1 elsewhere), and a power of 2 is
  // exact, so every product is the unscaled one rounded the same way.
  // State: q and ss are scaled by sig; everything else as is.
  struct State { T h, q, cos, ss, inv_nn, sh, sig; typename M::Mask active; };
  static constexpr double kLinearQ = 134217728.0;                // 2^27
  static constexpr double kGradScale = 5.42101086242752217e-20;  // 2^-64
  // a = (n_i, rho_i, S_i), b = (n_j, rho_j, S_j); docs/NUMERICS.md section 6, form L3.
  FLASHNCE_HOST_DEVICE static State eval(T p, const RowScalars<T>& a, const RowScalars<T>& b, T k,
                                         T kappa) {
    State st;
    st.inv_nn = T(1) / (a.v[0] * b.v[0]);
    st.cos = p * st.inv_nn;
    const T ss = a.v[2] * b.v[2];
    st.sh = M::sinh(T(0.5) * (a.v[1] - b.v[1]));
    const T w = T(2) * st.sh * st.sh + ss * (T(1) - st.cos);
    const T floor = kappa * ss;
    st.active = M::gt(w, floor);
    const T wc = M::select(st.active, w, floor);
    const typename M::Mask big = M::gt(wc, T(kLinearQ));
    const T q = M::select(big, wc + T(1), M::sqrt(wc * (wc + T(2))));
    // arcosh(1 + w) = log1p(w + sqrt(w (w + 2))): never form z = 1 + w (P4).
    st.h = T(0) - M::log1p(wc + q) * k;
    st.sig = M::select(big, T(kGradScale), T(1));
    st.q = q * st.sig;
    st.ss = ss * st.sig;
    return st;
  }
  FLASHNCE_HOST_DEVICE static T grad(const State& st, T, const RowScalars<T>& a,
                                     const RowScalars<T>& b, T k, T gs, RowScalars<T>& ga,
                                     RowScalars<T>& gb) {
    // g_w = G dlogit/dw = -G s k / q on active entries only (q > 0 there); here g_w / sig,
    // against factors scaled by sig (st.q, st.ss and the sig below; see State).
    const T g_w = M::select(st.active, (T(0) - gs * k) / st.q, T(0));
    // sinh(rho_i - rho_j) = 2 sinh(d/2) cosh(d/2), cosh = sqrt(1 + sinh^2).
    const T sinh_d = T(2) * st.sh * M::sqrt(T(1) + st.sh * st.sh);
    const T g_wc = g_w * st.ss * st.cos;  // dw/dn_i = S_i S_j cos / n_i (divided in finalize)
    const T g_w1c = g_w * (T(1) - st.cos);  // dw/dS_i = S_j (1 - cos)
    const T g_ws = g_w * (sinh_d * st.sig);
    ga.v[0] = g_wc;
    ga.v[1] = g_ws;
    ga.v[2] = g_w1c * (b.v[2] * st.sig);
    gb.v[0] = g_wc;
    gb.v[1] = T(0) - g_ws;
    gb.v[2] = g_w1c * (a.v[2] * st.sig);
    return T(0) - g_w * st.ss * st.inv_nn;
  }
  template <class S>
  FLASHNCE_HOST_DEVICE static void finalize(const RowScalars<S>& a, RowScalars<S>& g) {
    g.v[0] = g.v[0] / a.v[0];
  }
};

// Cosine normalised inside the kernel (docs/NUMERICS.md section 2): a = (n_i), b = (n_j).
// dh/dp = 1/(n_i n_j); dh/dn_i = -h/n_i, summed undivided (-G s h) and divided in finalize.
template <class T>
struct Epilogue<kCosine, T> {
  static constexpr int kR = 1;
  struct State { T h, inv_nn; };
  FLASHNCE_HOST_DEVICE static State eval(T p, const RowScalars<T>& a, const RowScalars<T>& b, T,
                                         T) {
    State st;
    st.inv_nn = T(1) / (a.v[0] * b.v[0]);
    st.h = p * st.inv_nn;
    return st;
  }
  FLASHNCE_HOST_DEVICE static T grad(const State& st, T, const RowScalars<T>&,
                                     const RowScalars<T>&, T, T gs, RowScalars<T>& ga,
                                     RowScalars<T>& gb) {
    const T g_n = T(0) - gs * st.h;
    ga.v[0] = g_n;
    gb.v[0] = g_n;
    return gs * st.inv_nn;
  }
  template <class S>
  FLASHNCE_HOST_DEVICE static void finalize(const RowScalars<S>& a, RowScalars<S>& g) {
    g.v[0] = g.v[0] / a.v[0];
  }
};

}  // namespace flashnce
