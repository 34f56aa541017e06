// The p tile of the walk, p = X_outer X_inner^T for BM outer rows and BN inner rows, through
// shared memory: scalar FMA in the compute dtype for fp32 / fp64, tensor cores (WMMA 16x16x16,
// fp32 accumulate) for bf16 / fp16. Independent of the kind, the stat and the relation.
#pragma once

#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "epilogue_device.cuh"
#include "tile_detail.cuh"

namespace flashnce {
namespace cuda {
namespace detail {

constexpr int kSPad = 4;  // S rows stay 16-byte multiples (WMMA float store: ldm % 4 == 0)

// Operand chunks and the p tile (which the backward overwrites with g_p = G dl/dp).
template <class T>
struct GemmTiles {
  using TT = TileTraits<T>;
  using Acc = typename Convert<T>::Acc;
  alignas(128) T outer[TT::BM][TT::BK + TT::PAD];
  alignas(128) T inner[TT::BN][TT::BK + TT::PAD];
  alignas(128) Acc s[TT::BM][TT::BN + kSPad];
};

// dst[r][c] = src[row0 + r][k0 + c], zero outside [0, nrows) x [0, K).
template <class T, int ROWS, int BK, int LD>
__device__ __forceinline__ void load_tile(T (*dst)[LD], const T* __restrict__ src, int64_t row0,
                                          int64_t nrows, int64_t k0, int64_t K) {
  for (int idx = threadIdx.x; idx < ROWS * BK; idx += kThreads) {
    const int r = idx / BK, c = idx % BK;
    const int64_t gr = row0 + r, gc = k0 + c;
    dst[r][c] = (gr < nrows && gc < K) ? src[gr * K + gc] : Convert<T>::from_acc(0);
  }
}

// p tile by scalar FMA: a 16 x 16 thread grid, each thread a (BM/16) x (BN/16) strided
// micro-tile (rows ty + 16u, columns tx + 16v), accumulated in the compute dtype.
template <class T>
struct ScalarGemm {
  using TT = TileTraits<T>;
  using Acc = typename Convert<T>::Acc;
  static constexpr int TM = TT::BM / 16, TN = TT::BN / 16;
  Acc acc[TM][TN];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int u = 0; u < TM; ++u)
#pragma unroll
      for (int v = 0; v < TN; ++v) acc[u][v] = Acc(0);
  }
  __device__ __forceinline__ void step(const GemmTiles<T>& sm) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll 4
    for (int kk = 0; kk < TT::BK; ++kk) {
      Acc a[TM], b[TN];
#pragma unroll
      for (int u = 0; u < TM; ++u) a[u] = Convert<T>::to_acc(sm.outer[ty + 16 * u][kk]);
#pragma unroll
      for (int v = 0; v < TN; ++v) b[v] = Convert<T>::to_acc(sm.inner[tx + 16 * v][kk]);
#pragma unroll
      for (int u = 0; u < TM; ++u)
#pragma unroll
        for (int v = 0; v < TN; ++v) acc[u][v] = fma(a[u], b[v], acc[u][v]);
    }
  }
  __device__ __forceinline__ void store(GemmTiles<T>& sm) const {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int u = 0; u < TM; ++u)
#pragma unroll
      for (int v = 0; v < TN; ++v) sm.s[ty + 16 * u][tx + 16 * v] = acc[u][v];
  }
};

// p tile on tensor cores: 4 x 4 WMMA 16x16x16 fragments of the 64 x 64 tile, two per warp
// (fragment row warp / 2, fragment columns 2 (warp % 2) and 2 (warp % 2) + 1), fp32 accumulate.
// B = X_inner^T is read column-major straight from the row-major inner tile.
template <class T>
struct WmmaGemm {
  using TT = TileTraits<T>;
  static_assert(TT::BM == 64 && TT::BN == 64 && TT::BK % 16 == 0 && kWarps == 8,
                "WMMA tiling assumes 64 x 64 tiles and 8 warps");
  static constexpr int LDA = TT::BK + TT::PAD;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> c[2];

  __device__ __forceinline__ void zero() {
    nvcuda::wmma::fill_fragment(c[0], 0.0f);
    nvcuda::wmma::fill_fragment(c[1], 0.0f);
  }
  __device__ __forceinline__ void step(const GemmTiles<T>& sm) {
    const int warp = threadIdx.x / 32, fr = warp / 2, fc = (warp % 2) * 2;
#pragma unroll
    for (int kk = 0; kk < TT::BK; kk += 16) {
      nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, T, nvcuda::wmma::row_major> a;
      nvcuda::wmma::load_matrix_sync(a, &sm.outer[fr * 16][kk], LDA);
#pragma unroll
      for (int f = 0; f < 2; ++f) {
        nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T, nvcuda::wmma::col_major> b;
        nvcuda::wmma::load_matrix_sync(b, &sm.inner[(fc + f) * 16][kk], LDA);
        nvcuda::wmma::mma_sync(c[f], a, b, c[f]);
      }
    }
  }
  __device__ __forceinline__ void store(GemmTiles<T>& sm) const {
    const int warp = threadIdx.x / 32, fr = warp / 2, fc = (warp % 2) * 2;
#pragma unroll
    for (int f = 0; f < 2; ++f)
      nvcuda::wmma::store_matrix_sync(&sm.s[fr * 16][(fc + f) * 16], c[f], TT::BN + kSPad,
                                      nvcuda::wmma::mem_row_major);
  }
};

// WMMA for half needs sm_70+, for bf16 sm_80+; older targets (only reachable through a wider
// TORCH_CUDA_ARCH_LIST) fall back to the scalar tile.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
template <class T>
constexpr bool kArchWmma = std::is_same<T, __half>::value && __CUDA_ARCH__ >= 700;
#else
template <class T>
constexpr bool kArchWmma = true;
#endif

template <class T>
using TileGemm =
    std::conditional_t<TileTraits<T>::kWmma && kArchWmma<T>, WmmaGemm<T>, ScalarGemm<T>>;

// sm.s = X_outer[o0 : o0 + BM] X_inner[i0 : i0 + BN]^T (zero outside the matrices), over K in
// chunks of BK. Starts and ends with every thread in step (ends with __syncthreads()).
template <class T>
__device__ __forceinline__ void compute_p_tile(GemmTiles<T>& sm, const T* __restrict__ outer,
                                               int64_t n_outer, const T* __restrict__ inner,
                                               int64_t n_inner, int64_t K, int64_t o0,
                                               int64_t i0) {
  using TT = TileTraits<T>;
  TileGemm<T> gemm;
  gemm.zero();
  for (int64_t k0 = 0; k0 < K; k0 += TT::BK) {
    load_tile<T, TT::BM, TT::BK>(sm.outer, outer, o0, n_outer, k0, K);
    load_tile<T, TT::BN, TT::BK>(sm.inner, inner, i0, n_inner, k0, K);
    __syncthreads();
    gemm.step(sm);
    __syncthreads();
  }
  gemm.store(sm);
  __syncthreads();
}

}  // namespace detail
}  // namespace cuda
}  // namespace flashnce
