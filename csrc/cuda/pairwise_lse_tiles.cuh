// CUDA tile walk of the pairwise LSE primitive (see pairwise_lse_kernels.cuh for the contract).
//
// One thread block owns BM "outer" rows and walks all "inner" rows in tiles of BN; K is
// consumed in chunks of BK through shared memory. The same kernels serve both directions:
//   kCols = false: outer = rows of x (alpha, row_lse, g_row), inner = rows of y
//   kCols = true:  outer = rows of y (beta, col_lse, g_col),  inner = rows of x
// and the epilogue is always evaluated as eval(p, alpha_i, beta_j), whatever the direction.
//
// Forward: lse_fwd_kernel<kCols=false> gives row_lse, <true> col_lse (two launches, the second
//   recomputes the tiles; no N x M or (N/BM) x M partials are stored).
// Backward: lse_bwd_kernel<false> gives dx, d_alpha and per-block partials of gh;
//   <true> gives dy and d_beta. Each block owns its output rows, so dx/dy accumulate with plain
//   read-modify-writes (fp32/fp64) and no atomics: results are bitwise reproducible.
//
// Per tile: p = X_o X_i^T (tensor cores through WMMA 16x16x16 with fp32 accumulation for
// bf16/fp16; scalar FMA for fp32/fp64), stored to shared memory; each warp then owns BM/8 outer
// rows and its lanes cover the BN inner columns, applying the shared epilogue
// (flashnce::Epilogue<KIND, Acc>) in the compute dtype. Per-row sums are per-lane partials
// merged by warp shuffles once at the end. The backward writes g_p = G dl/dp into the same
// shared tile and multiplies it by the inner operand in fp32 (fp64 for fp64 inputs).
//
// Internal: the kernels and their device helpers; host launchers in pairwise_lse_launch.cuh.
#pragma once

#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "epilogue_device.cuh"
#include "pairwise_lse_detail.cuh"

namespace flashnce {
namespace cuda {
namespace detail {

constexpr int kSPad = 4;  // S rows stay 16-byte multiples (WMMA float store: ldm % 4 == 0)

template <class T>
struct SharedTiles {
  using TT = TileTraits<T>;
  using Acc = typename Convert<T>::Acc;
  alignas(128) T outer[TT::BM][TT::BK + TT::PAD];
  alignas(128) T inner[TT::BN][TT::BK + TT::PAD];
  alignas(128) Acc s[TT::BM][TT::BN + kSPad];  // p, then (backward) g_p
  Acc outer_scalars[TT::BM][kMaxRowScalars];
  Acc inner_scalars[TT::BN][kMaxRowScalars];
  Acc inner_lse[TT::BN];
  Acc inner_g[TT::BN];
  Acc warp_partial[kWarps];
};

// One side of the walk: features [count, K] and per-row scalars [count, R].
template <class T>
struct Side {
  const T* feat;
  const typename Convert<T>::Acc* scalars;
  int64_t count;
};

template <class T>
struct WalkParams {
  using Acc = typename Convert<T>::Acc;
  Side<T> outer, inner;
  int64_t k;
  const Acc* scale;
  const Acc* inv_sqrt_c;
  Acc kappa;
  bool exclude_diagonal;
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

// scal[r][t] = src[(row0 + r) * R + t]; rows past the end get 1 (finite, never used).
template <class Acc, int ROWS, int R>
__device__ __forceinline__ void load_scalars(Acc (*scal)[kMaxRowScalars],
                                             const Acc* __restrict__ src, int64_t row0,
                                             int64_t nrows) {
  if constexpr (R > 0) {
    for (int idx = threadIdx.x; idx < ROWS * R; idx += kThreads) {
      const int r = idx / R, t = idx % R;
      const int64_t gr = row0 + r;
      scal[r][t] = gr < nrows ? src[gr * R + t] : Acc(1);
    }
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
  __device__ __forceinline__ void step(const SharedTiles<T>& sm) {
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
  __device__ __forceinline__ void store(SharedTiles<T>& sm) const {
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
  __device__ __forceinline__ void step(const SharedTiles<T>& sm) {
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
  __device__ __forceinline__ void store(SharedTiles<T>& sm) const {
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

// sm.s = X_outer[o0 : o0 + BM] X_inner[i0 : i0 + BN]^T (zero outside the matrices).
template <class T>
__device__ __forceinline__ void compute_p_tile(SharedTiles<T>& sm, const WalkParams<T>& pr,
                                               int64_t o0, int64_t i0) {
  using TT = TileTraits<T>;
  TileGemm<T> gemm;
  gemm.zero();
  for (int64_t k0 = 0; k0 < pr.k; k0 += TT::BK) {
    load_tile<T, TT::BM, TT::BK>(sm.outer, pr.outer.feat, o0, pr.outer.count, k0, pr.k);
    load_tile<T, TT::BN, TT::BK>(sm.inner, pr.inner.feat, i0, pr.inner.count, k0, pr.k);
    __syncthreads();
    gemm.step(sm);
    __syncthreads();
  }
  gemm.store(sm);
  __syncthreads();
}

template <class Acc, int R>
__device__ __forceinline__ RowScalars<Acc> scalars_at(const Acc (*scal)[kMaxRowScalars],
                                                      int r) {
  RowScalars<Acc> s;
#pragma unroll
  for (int t = 0; t < kMaxRowScalars; ++t) s.v[t] = t < R ? scal[r][t] : Acc(0);
  return s;
}

// Calls f(q, r, c, valid) for this thread's entries of the tile in shared memory: the warp's
// outer rows r = warp * RPW + q and the lane's inner columns c = lane + 32 u. valid is false
// outside the matrices and on the masked diagonal (global outer index == inner index).
template <class T, class F>
__device__ __forceinline__ void for_each_entry(const WalkParams<T>& pr, int64_t o0, int64_t i0,
                                               F&& f) {
  using TT = TileTraits<T>;
  constexpr int RPW = TT::BM / kWarps;  // outer rows per warp
  constexpr int CPL = TT::BN / 32;      // inner columns per lane
  static_assert(TT::BM % kWarps == 0 && TT::BN % 32 == 0, "tile / warp mismatch");
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int q = 0; q < RPW; ++q) {
    const int r = warp * RPW + q;
    const int64_t go = o0 + r;
#pragma unroll
    for (int u = 0; u < CPL; ++u) {
      const int c = lane + 32 * u;
      const int64_t gi = i0 + c;
      f(q, r, c,
        go < pr.outer.count && gi < pr.inner.count && !(pr.exclude_diagonal && go == gi));
    }
  }
}

// (alpha_i, beta_j) of tile entry (outer r, inner c), in x / y order whatever the direction.
template <int R, bool kCols, class T, class Acc>
__device__ __forceinline__ void entry_scalars(const SharedTiles<T>& sm, int r, int c,
                                              RowScalars<Acc>& a, RowScalars<Acc>& b) {
  const RowScalars<Acc> so = scalars_at<Acc, R>(sm.outer_scalars, r);
  const RowScalars<Acc> si = scalars_at<Acc, R>(sm.inner_scalars, c);
  a = kCols ? si : so;
  b = kCols ? so : si;
}

// Forward: lse_out[o] = log sum over inner rows of exp(logit) for the block's BM outer rows.
template <class T, int KIND, bool kCols>
__global__ void __launch_bounds__(kThreads)
    lse_fwd_kernel(WalkParams<T> pr, typename Convert<T>::Acc* __restrict__ lse_out) {
  using TT = TileTraits<T>;
  using Acc = typename Convert<T>::Acc;
  using E = Epilogue<KIND, Acc>;
  constexpr int R = E::kR;
  constexpr int RPW = TT::BM / kWarps;  // outer rows per warp

  __shared__ __align__(128) unsigned char smem_raw[sizeof(SharedTiles<T>)];
  SharedTiles<T>& sm = *reinterpret_cast<SharedTiles<T>*>(smem_raw);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * TT::BM;
  const Acc scale = *pr.scale, ksc = *pr.inv_sqrt_c;

  load_scalars<Acc, TT::BM, R>(sm.outer_scalars, pr.outer.scalars, o0, pr.outer.count);
  LseState<Acc> st[RPW];
#pragma unroll
  for (int q = 0; q < RPW; ++q) st[q].init();

  for (int64_t i0 = 0; i0 < pr.inner.count; i0 += TT::BN) {
    load_scalars<Acc, TT::BN, R>(sm.inner_scalars, pr.inner.scalars, i0, pr.inner.count);
    compute_p_tile(sm, pr, o0, i0);  // ends with __syncthreads()
    for_each_entry(pr, o0, i0, [&](int q, int r, int c, bool valid) {
      if (!valid) return;
      RowScalars<Acc> a, b;
      entry_scalars<R, kCols>(sm, r, c, a, b);
      st[q].add(scale * E::eval(sm.s[r][c], a, b, ksc, pr.kappa).h);
    });
    __syncthreads();  // sm.s and sm.inner_scalars are rewritten by the next tile
  }

#pragma unroll
  for (int q = 0; q < RPW; ++q) {
    st[q].warp_merge();
    const int64_t go = o0 + warp * RPW + q;
    if (lane == 0 && go < pr.outer.count) lse_out[go] = st[q].value();
  }
}

// Backward for the block's outer rows: d_outer (fp32/fp64 accumulator, zeroed by the launcher)
// += g_p X_inner, d_scalars = finalized row sums of G dl/d(outer scalars), and, when
// gh_partial is set, this block's sum of G h.
template <class T, int KIND, bool kCols>
__global__ void __launch_bounds__(kThreads)
    lse_bwd_kernel(WalkParams<T> pr, const typename Convert<T>::Acc* __restrict__ lse_outer,
                   const typename Convert<T>::Acc* __restrict__ lse_inner,
                   const typename Convert<T>::Acc* __restrict__ g_outer,
                   const typename Convert<T>::Acc* __restrict__ g_inner,
                   typename Convert<T>::Acc* __restrict__ d_outer,
                   typename Convert<T>::Acc* __restrict__ d_scalars,
                   typename Convert<T>::Acc* __restrict__ gh_partial) {
  using TT = TileTraits<T>;
  using Acc = typename Convert<T>::Acc;
  using E = Epilogue<KIND, Acc>;
  using MO = MathOps<Acc>;
  constexpr int R = E::kR;
  constexpr int RS = R > 0 ? R : 1;
  constexpr int RPW = TT::BM / kWarps;
  constexpr int P = kThreads / TT::BK;  // outer rows per pass of the gradient GEMM
  static_assert(kThreads % TT::BK == 0 && TT::BM % P == 0, "gradient GEMM mapping");

  __shared__ __align__(128) unsigned char smem_raw[sizeof(SharedTiles<T>)];
  SharedTiles<T>& sm = *reinterpret_cast<SharedTiles<T>*>(smem_raw);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * TT::BM;
  const int64_t K = pr.k;
  const Acc scale = *pr.scale, ksc = *pr.inv_sqrt_c;

  load_scalars<Acc, TT::BM, R>(sm.outer_scalars, pr.outer.scalars, o0, pr.outer.count);
  Acc lse_o[RPW], g_o[RPW], gsum[RPW][RS];
#pragma unroll
  for (int q = 0; q < RPW; ++q) {
    const int64_t go = o0 + warp * RPW + q;
    lse_o[q] = go < pr.outer.count ? lse_outer[go] : Acc(0);
    g_o[q] = go < pr.outer.count ? g_outer[go] : Acc(0);
#pragma unroll
    for (int t = 0; t < RS; ++t) gsum[q][t] = Acc(0);
  }
  Acc gh = Acc(0);

  for (int64_t i0 = 0; i0 < pr.inner.count; i0 += TT::BN) {
    load_scalars<Acc, TT::BN, R>(sm.inner_scalars, pr.inner.scalars, i0, pr.inner.count);
    for (int c = threadIdx.x; c < TT::BN; c += kThreads) {
      const int64_t gi = i0 + c;
      sm.inner_lse[c] = gi < pr.inner.count ? lse_inner[gi] : Acc(0);
      sm.inner_g[c] = gi < pr.inner.count ? g_inner[gi] : Acc(0);
    }
    compute_p_tile(sm, pr, o0, i0);  // ends with __syncthreads()

    // Epilogue: sm.s[r][c] <- g_p = G dl/dp (0 for masked / out-of-range entries).
    for_each_entry(pr, o0, i0, [&](int q, int r, int c, bool valid) {
      Acc gp = Acc(0);
      if (valid) {
        RowScalars<Acc> a, b;  // alpha_i (rows of x), beta_j (rows of y)
        entry_scalars<R, kCols>(sm, r, c, a, b);
        const Acc p = sm.s[r][c];
        const auto ev = E::eval(p, a, b, ksc, pr.kappa);
        const Acc l = scale * ev.h;
        const Acc g =
            g_o[q] * MO::exp(l - lse_o[q]) + sm.inner_g[c] * MO::exp(l - sm.inner_lse[c]);
        RowScalars<Acc> ga = scalars_at<Acc, 0>(sm.outer_scalars, 0);  // zeros
        RowScalars<Acc> gb = ga;
        gp = E::grad(ev, p, a, b, ksc, g * scale, ga, gb);
        gh += g * ev.h;
#pragma unroll
        for (int t = 0; t < R; ++t) gsum[q][t] += kCols ? gb.v[t] : ga.v[t];
      }
      sm.s[r][c] = gp;
    });
    __syncthreads();

    // d_outer[o0 + r, k] += sum_c g_p[r][c] X_inner[i0 + c, k], one BK-wide chunk of k at a time.
    // Thread (rb, kc) owns rows rb + P w and column kc of the chunk: the same thread updates
    // the same elements on every tile, so the read-modify-write needs no atomics.
    const int kc = threadIdx.x % TT::BK, rb = threadIdx.x / TT::BK;
    for (int64_t k0 = 0; k0 < K; k0 += TT::BK) {
      load_tile<T, TT::BN, TT::BK>(sm.inner, pr.inner.feat, i0, pr.inner.count, k0, K);
      __syncthreads();
      Acc acc[TT::BM / P];
#pragma unroll
      for (int w = 0; w < TT::BM / P; ++w) acc[w] = Acc(0);
#pragma unroll 8
      for (int c = 0; c < TT::BN; ++c) {
        const Acc xv = Convert<T>::to_acc(sm.inner[c][kc]);
#pragma unroll
        for (int w = 0; w < TT::BM / P; ++w) acc[w] = fma(sm.s[rb + P * w][c], xv, acc[w]);
      }
      const int64_t gk = k0 + kc;
      if (gk < K) {
#pragma unroll
        for (int w = 0; w < TT::BM / P; ++w) {
          const int64_t go = o0 + rb + P * w;
          if (go < pr.outer.count) d_outer[go * K + gk] += acc[w];
        }
      }
      __syncthreads();  // sm.inner is reloaded by the next chunk
    }
  }

  // Per-row scalar gradients: lane partials -> warp sums (fixed butterfly order) -> finalize.
#pragma unroll
  for (int q = 0; q < RPW; ++q) {
    RowScalars<Acc> g = scalars_at<Acc, 0>(sm.outer_scalars, 0);
#pragma unroll
    for (int t = 0; t < R; ++t) g.v[t] = warp_sum(gsum[q][t]);
    const int r = warp * RPW + q;
    const int64_t go = o0 + r;
    if (R > 0 && lane == 0 && go < pr.outer.count) {
      const RowScalars<Acc> so = scalars_at<Acc, R>(sm.outer_scalars, r);
      E::finalize(so, g);
#pragma unroll
      for (int t = 0; t < R; ++t) d_scalars[go * R + t] = g.v[t];
    }
  }

  if (gh_partial != nullptr) {
    gh = warp_sum(gh);
    if (lane == 0) sm.warp_partial[warp] = gh;
    __syncthreads();
    if (threadIdx.x == 0) {
      Acc total = Acc(0);
#pragma unroll
      for (int w = 0; w < kWarps; ++w) total += sm.warp_partial[w];
      gh_partial[blockIdx.x] = total;
    }
  }
}

// out[0] = sum of partials[0 : count], in a fixed order (strided per-thread sums in double,
// then a fixed tree), so gh is reproducible.
template <class Acc>
__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(const Acc* __restrict__ partials, int64_t count, Acc* __restrict__ out) {
  __shared__ double buf[kThreads];
  double v = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) v += static_cast<double>(partials[i]);
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) buf[threadIdx.x] += buf[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = static_cast<Acc>(buf[0]);
}

// dst = src rounded to the input dtype (16-bit inputs; fp32/fp64 accumulate in place).
template <class T>
__global__ void __launch_bounds__(kThreads)
    convert_kernel(const float* __restrict__ src, T* __restrict__ dst, int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < count;
       i += stride)
    dst[i] = Convert<T>::from_acc(src[i]);
}

// ------------------------------------------------------------------------------------------
// Host side: the walk parameters of each direction.
// ------------------------------------------------------------------------------------------

template <class T>
WalkParams<T> walk_params(const PairwiseLseProblem& pb, bool cols) {
  using Acc = typename Convert<T>::Acc;
  const Side<T> xs{static_cast<const T*>(pb.x), static_cast<const Acc*>(pb.alpha), pb.n};
  const Side<T> ys{static_cast<const T*>(pb.y), static_cast<const Acc*>(pb.beta), pb.m};
  WalkParams<T> pr;
  pr.outer = cols ? ys : xs;
  pr.inner = cols ? xs : ys;
  pr.k = pb.k;
  pr.scale = static_cast<const Acc*>(pb.scale);
  pr.inv_sqrt_c = static_cast<const Acc*>(pb.inv_sqrt_c);
  pr.kappa = static_cast<Acc>(pb.kappa);
  pr.exclude_diagonal = pb.exclude_diagonal;
  return pr;
}

}  // namespace detail
}  // namespace cuda
}  // namespace flashnce
