// Device-side helpers around the shared epilogue (csrc/flashnce/geometry.h): dtype conversion
// to the fp32/fp64 compute type, -inf, log, and warp sums for the gradient reductions (the
// statistics' own states and merges are in tile_stat.cuh).
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

}  // namespace cuda
}  // namespace flashnce
