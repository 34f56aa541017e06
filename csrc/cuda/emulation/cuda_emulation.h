// A CPU stand-in for the few CUDA features the tile kernels use, so that their index math,
// masks, shared-memory phases and reductions can be executed on a machine without a GPU:
// one std::thread per CUDA thread, a std::barrier for __syncthreads, shuffles through a
// block-wide buffer (valid because every shuffle in the kernels is reached by all threads),
// and WMMA fragments held whole by every lane. Test-only; never part of the extension.
// Include before pairwise_lse_tiles.cuh and compile with a C++20 host compiler.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace emu {
inline thread_local uint3 tid{0, 0, 0};
inline thread_local uint3 bid{0, 0, 0};
inline thread_local dim3 grid_dim{1, 1, 1};
inline std::barrier<>* block_barrier = nullptr;
template <class T>
inline T shfl_buf[1024];

// Run kernel() as `grid` blocks of `block` threads, one block after another.
template <class F>
void launch(unsigned grid, unsigned block, F kernel) {
  for (unsigned b = 0; b < grid; ++b) {
    std::barrier<> bar(block);
    block_barrier = &bar;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t)
      threads.emplace_back([&, t, b] {
        tid = uint3{t, 0, 0};
        bid = uint3{b, 0, 0};
        grid_dim = dim3(grid, 1, 1);
        kernel();
      });
    for (auto& th : threads) th.join();
  }
}
}  // namespace emu

#define threadIdx emu::tid
#define blockIdx emu::bid
#define gridDim emu::grid_dim

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  emu::shfl_buf<T>[threadIdx.x] = v;
  __syncthreads();
  const T r = emu::shfl_buf<T>[threadIdx.x ^ static_cast<unsigned>(lane_mask)];
  __syncthreads();
  return r;
}

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Every lane holds the whole 16 x 16 fragment (element (r, c) at x[16 r + c]).
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  T x[256];
};

template <class T>
void fill_fragment(fragment<accumulator, 16, 16, 16, T>& f, T v) {
  for (auto& e : f.x) e = v;
}
template <class T>
void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, row_major>& f, const T* p, unsigned ldm) {
  for (int r = 0; r < 16; ++r)
    for (int k = 0; k < 16; ++k) f.x[16 * r + k] = p[r * ldm + k];
}
template <class T>
void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, col_major>& f, const T* p, unsigned ldm) {
  for (int k = 0; k < 16; ++k)
    for (int c = 0; c < 16; ++c) f.x[16 * k + c] = p[c * ldm + k];
}
template <class T>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, T, row_major>& a,
              const fragment<matrix_b, 16, 16, 16, T, col_major>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[256];
  for (int r = 0; r < 16; ++r)
    for (int col = 0; col < 16; ++col) {
      float s = c.x[16 * r + col];
      for (int k = 0; k < 16; ++k) s += to_float(a.x[16 * r + k]) * to_float(b.x[16 * k + col]);
      out[16 * r + col] = s;
    }
  std::memcpy(d.x, out, sizeof(out));
}
// Lane L stores the elements e with e % 32 == L (the real layout differs; the result doesn't).
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t) {
  for (int e = static_cast<int>(threadIdx.x % 32); e < 256; e += 32)
    p[(e / 16) * ldm + e % 16] = f.x[e];
}
}  // namespace wmma
}  // namespace nvcuda
