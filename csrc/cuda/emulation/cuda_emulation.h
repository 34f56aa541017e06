// A CPU stand-in for the few CUDA features the tile kernels use, so that their index math,
// roles, shared-memory phases and reductions can be executed on a machine without a GPU:
// one fiber (ucontext) per CUDA thread on a single host thread, __syncthreads as a switch back
// to a round-robin scheduler (every fiber runs to its next barrier in each round, which is a
// block barrier because the kernels reach every barrier with all threads), shuffles through a
// block-wide buffer between two barriers (valid for the same reason), and WMMA fragments held
// whole by every lane; the few runtime calls the launchers make (cudaMemsetAsync,
// cudaGetLastError) act on host memory. Test-only; never part of the extension. Include before
// tile_launch.cuh (it defines FLASHNCE_CUDA_EMULATION, which routes the launchers' kernel
// launches to emu::launch) and compile with a C++20 host compiler.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <ucontext.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#define FLASHNCE_CUDA_EMULATION 1

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
inline uint3 tid{0, 0, 0};  // of the fiber running now (set by the scheduler)
inline uint3 bid{0, 0, 0};
inline dim3 grid_dim{1, 1, 1};
template <class T>
inline T shfl_buf[1024];

struct Fibers {
  static constexpr size_t kStack = 256 * 1024;
  ucontext_t scheduler;
  std::vector<ucontext_t> ctx;
  std::vector<std::vector<char>> stacks;  // kept across launches
  std::vector<char> done;
  unsigned current = 0;
  std::function<void()> body;
};
inline Fibers fibers;

inline void fiber_main() {
  fibers.body();
  fibers.done[fibers.current] = 1;  // returning resumes uc_link (the scheduler)
}

// Run kernel() as `grid` blocks of `block` threads, one block after another.
template <class F>
void launch(unsigned grid, unsigned block, F kernel) {
  Fibers& fb = fibers;
  fb.body = kernel;
  fb.ctx.resize(block);
  fb.done.assign(block, 0);
  while (fb.stacks.size() < block) fb.stacks.emplace_back(Fibers::kStack);
  grid_dim = dim3(grid, 1, 1);
  for (unsigned b = 0; b < grid; ++b) {
    for (unsigned t = 0; t < block; ++t) {
      getcontext(&fb.ctx[t]);
      fb.ctx[t].uc_stack.ss_sp = fb.stacks[t].data();
      fb.ctx[t].uc_stack.ss_size = Fibers::kStack;
      fb.ctx[t].uc_link = &fb.scheduler;
      makecontext(&fb.ctx[t], fiber_main, 0);
      fb.done[t] = 0;
    }
    for (bool running = true; running;) {  // one round = every live fiber to its next barrier
      running = false;
      for (unsigned t = 0; t < block; ++t) {
        if (fb.done[t]) continue;
        running = true;
        fb.current = t;
        tid = uint3{t, 0, 0};
        bid = uint3{b, 0, 0};
        swapcontext(&fb.scheduler, &fb.ctx[t]);
      }
    }
  }
}
}  // namespace emu

// The launchers' runtime calls, on host memory; kernels run synchronously, so no error is pending.
extern "C" cudaError_t cudaMemsetAsync(void* p, int value, size_t count, cudaStream_t) {
  std::memset(p, value, count);
  return cudaSuccess;
}
extern "C" cudaError_t cudaGetLastError(void) { return cudaSuccess; }

#define threadIdx emu::tid
#define blockIdx emu::bid
#define gridDim emu::grid_dim

inline void __syncthreads() {
  swapcontext(&emu::fibers.ctx[emu::fibers.current], &emu::fibers.scheduler);
}

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
