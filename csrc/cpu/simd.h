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
#include <cstdint>
#include <limits>

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
  static constexpr int64_t kSize = 1;
  static VT load(const VT* p) { return *p; }
  static void store(VT v, VT* p) { *p = v; }
  static VT sum(VT v) { return v; }
  static VT max(VT a, VT b) { return a > b ? a : b; }
};
template <class S>
struct Lanes<Vectorized<S>> {
  using V = Vectorized<S>;
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

}  // namespace FLASHNCE_ISA
}  // namespace cpu
}  // namespace flashnce
