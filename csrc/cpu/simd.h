// Vector and BLAS primitives of the CPU tile walk: the geometry header's MathOps on
// at::vec::Vectorized lanes, Lanes<VT> (one interface for a vector and for the scalar column
// tail) and a row-major view of the Fortran GEMM that libtorch_cpu exports.
//
// Included by csrc/cpu/binding.cpp inside the per-ISA build (FLASHNCE_ISA, see
// csrc/cpu/isa/): everything below the MathOps specialisation lives in the ISA namespace.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "flashnce/geometry.h"

// Fortran BLAS exported by libtorch_cpu (MKL or OpenBLAS): called inside the parallel region,
// where the BLAS runs single-threaded.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc);
}

namespace flashnce {

// SIMD MathOps: the geometry header's formulas on vector lanes. exp is exp_u20 (ULP 20; it
// returns exactly 0 below log(FLT_MIN), so exp(-inf) = 0 as the skipped pairs need).
template <class S>
struct MathOps<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  using Mask = V;
  static V sqrt(V x) { return x.sqrt(); }
  static V log1p(V x) { return x.log1p(); }
  static V sinh(V x) { return x.sinh(); }
  static V exp(V x) { return x.exp_u20(); }
  static Mask gt(V a, V b) { return a > b; }
  static V select(Mask m, V a, V b) { return V::blendv(b, a, m); }
};

namespace cpu {
namespace FLASHNCE_ISA {

using at::vec::Vectorized;

template <class T>
constexpr T neg_inf() { return -std::numeric_limits<T>::infinity(); }
template <class T>
constexpr T pos_inf() { return std::numeric_limits<T>::infinity(); }

// Column-major BLAS on row-major buffers: C^T = op(A)^T op(B)^T, so each call site passes its
// operands swapped (see the walks).
inline void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  int im = m, in = n, ik = k, ila = std::max<int64_t>(lda, 1), ilb = std::max<int64_t>(ldb, 1),
      ilc = std::max<int64_t>(ldc, 1);
  sgemm_(&ta, &tb, &im, &in, &ik, &alpha, a, &ila, b, &ilb, &beta, c, &ilc);
}
inline void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, double alpha,
                 const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                 double* c, int64_t ldc) {
  int im = m, in = n, ik = k, ila = std::max<int64_t>(lda, 1), ilb = std::max<int64_t>(ldb, 1),
      ilc = std::max<int64_t>(ldc, 1);
  dgemm_(&ta, &tb, &im, &in, &ik, &alpha, a, &ila, b, &ilb, &beta, c, &ilc);
}

// Lanes<VT>: load / store / horizontal sum / max / "zero these lanes" for a vector type or a
// plain scalar (the column tail), so one chunk function serves both.
template <class VT>
struct Lanes {
  using Scalar = VT;
  static constexpr int64_t kSize = 1;
  static VT load(const VT* p) { return *p; }
  static void store(VT v, VT* p) { *p = v; }
  static VT sum(VT v) { return v; }
  static VT max(VT a, VT b) { return a > b ? a : b; }
};
template <class S>
struct Lanes<Vectorized<S>> {
  using V = Vectorized<S>;
  using Scalar = S;
  static constexpr int64_t kSize = V::size();
  static V load(const S* p) { return V::loadu(p); }
  static void store(V v, S* p) { v.store(p); }
  static S sum(V v) {
    S buf[V::size()];
    v.store(buf);
    S acc = 0;
    for (int64_t l = 0; l < V::size(); ++l) acc += buf[l];
    return acc;
  }
  static V max(V a, V b) { return at::vec::maximum(a, b); }
};

// Lane-bit masks (bit l = lane l) of a chunk, for the rare chunks with marked lanes (skipped
// or positive pairs). zero_lanes: the marked lanes of v replaced by exactly 0 (a select, not a
// multiply, so an inf or nan there never leaks); lanes_from_bits: `on` on the marked lanes,
// `off` elsewhere.
template <class VT>
inline VT zero_lanes(VT v, uint64_t bits) {
  constexpr int64_t L = Lanes<VT>::kSize;
  typename Lanes<VT>::Scalar buf[L];
  Lanes<VT>::store(v, buf);
  for (int64_t l = 0; l < L; ++l)
    if (bits >> l & 1) buf[l] = 0;
  return Lanes<VT>::load(buf);
}
template <class VT>
inline VT lanes_from_bits(uint64_t bits, typename Lanes<VT>::Scalar on,
                          typename Lanes<VT>::Scalar off) {
  constexpr int64_t L = Lanes<VT>::kSize;
  typename Lanes<VT>::Scalar buf[L];
  for (int64_t l = 0; l < L; ++l) buf[l] = (bits >> l & 1) ? on : off;
  return Lanes<VT>::load(buf);
}

// Elementwise helpers the statistics need beyond MathOps, for a vector or the scalar tail.
// log1p_unit(e): log1p for e in [0, 1] (e = exp(-|u|)); fp32 vectors use 2 atanh(t),
// t = e / (2 + e) in [0, 1/3], a 7-term odd series (truncation < 2e-8 relative, measured max
// error 2e-7 relative, exact 0 at e = 0): about a third of Sleef's log1p on AVX2.
template <class VT>
struct PairOps {  // scalar
  static VT abs(VT x) { return std::abs(x); }
  static VT log1p_unit(VT e) { return std::log1p(e); }
  static VT relu(VT x) { return x > VT(0) ? x : VT(0); }
  // (u >= 0 ? 1 : e) / (1 + e): sigmoid(u) from e = exp(-|u|).
  static VT sigmoid(VT u, VT e) { return (u >= VT(0) ? VT(1) : e) / (VT(1) + e); }
};
template <class S>
struct PairOps<Vectorized<S>> {
  using V = Vectorized<S>;
  static V abs(V x) { return x.abs(); }
  static V log1p_unit(V e) {
    if constexpr (std::is_same<S, float>::value) {
      const V t = e / (V(2.f) + e);
      const V t2 = t * t;
      V q = V(2.f / 13);
      q = at::vec::fmadd(q, t2, V(2.f / 11));
      q = at::vec::fmadd(q, t2, V(2.f / 9));
      q = at::vec::fmadd(q, t2, V(2.f / 7));
      q = at::vec::fmadd(q, t2, V(2.f / 5));
      q = at::vec::fmadd(q, t2, V(2.f / 3));
      q = at::vec::fmadd(q, t2, V(2.f));
      return q * t;
    } else {
      return e.log1p();
    }
  }
  static V relu(V x) { return at::vec::maximum(x, V(S(0))); }
  static V sigmoid(V u, V e) {
    return V::blendv(e, V(S(1)), u >= V(S(0))) / (V(S(1)) + e);
  }
};

}  // namespace FLASHNCE_ISA
}  // namespace cpu
}  // namespace flashnce
