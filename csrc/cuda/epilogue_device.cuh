// Device-side helpers around the shared epilogue (csrc/flashnce/geometry.h): dtype conversion
// to the fp32/fp64 compute type, -inf, log, and warp reductions for the LSE and gradient sums.
// Everything here is deterministic: butterfly (xor) shuffles give every lane the same,
// order-fixed result, because each step adds a commutative pair.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "flashnce/geometry.h"

namespace flashnce {
namespace cuda {

// Input dtype T -> compute dtype (Acc) and back.
template <class T>
struct Convert;

template <>
struct Convert<float> {
  using Acc = float;
  __device__ __forceinline__ static float to_acc(float v) { return v; }
  __device__ __forceinline__ static float from_acc(float v) { return v; }
};

template <>
struct Convert<double> {
  using Acc = double;
  __device__ __forceinline__ static double to_acc(double v) { return v; }
  __device__ __forceinline__ static double from_acc(double v) { return v; }
};

template <>
struct Convert<__half> {
  using Acc = float;
  __device__ __forceinline__ static float to_acc(__half v) { return __half2float(v); }
  __device__ __forceinline__ static __half from_acc(float v) { return __float2half_rn(v); }
};

template <>
struct Convert<__nv_bfloat16> {
  using Acc = float;
  __device__ __forceinline__ static float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ __forceinline__ static __nv_bfloat16 from_acc(float v) {
    return __float2bfloat16_rn(v);
  }
};

template <class Acc>
__device__ __forceinline__ Acc neg_inf() {
  return Acc(-INFINITY);
}

__device__ __forceinline__ float dev_log(float v) { return ::logf(v); }
__device__ __forceinline__ double dev_log(double v) { return ::log(v); }

template <class Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Online LSE state (running max m, sum s of exp(l - m)); s == 0 means "no entries yet".
template <class Acc>
struct LseState {
  Acc m, s;

  __device__ __forceinline__ void init() {
    m = neg_inf<Acc>();
    s = Acc(0);
  }
  // Fold one finite logit.
  __device__ __forceinline__ void add(Acc l) {
    using M = MathOps<Acc>;
    if (l > m) {
      s = s * M::exp(m - l) + Acc(1);  // s == 0 while m == -inf: exp(-inf) = 0 is harmless
      m = l;
    } else {
      s += M::exp(l - m);
    }
  }
  // Merge another state (commutative, so the xor butterfly is lane-symmetric).
  __device__ __forceinline__ void merge(Acc om, Acc os) {
    using M = MathOps<Acc>;
    if (os == Acc(0)) return;
    if (s == Acc(0)) {
      m = om;
      s = os;
      return;
    }
    const Acc mx = m > om ? m : om;
    s = s * M::exp(m - mx) + os * M::exp(om - mx);
    m = mx;
  }
  __device__ __forceinline__ void warp_merge() {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const Acc om = __shfl_xor_sync(0xffffffffu, m, off);
      const Acc os = __shfl_xor_sync(0xffffffffu, s, off);
      merge(om, os);
    }
  }
  __device__ __forceinline__ Acc value() const {
    return s > Acc(0) ? m + dev_log(s) : neg_inf<Acc>();
  }
};

}  // namespace cuda
}  // namespace flashnce
