// CUDA tile walk of the tile op family (contract in tile_api.cuh), generic over the epilogue kind
// (template), the statistic (template, tile_stat.cuh) and the relation (runtime value,
// tile_relation.cuh).
//
// One thread block owns BM "outer" rows and walks all "inner" rows in tiles of BN; K is
// consumed in chunks of BK through shared memory (tile_gemm.cuh). The same kernels serve both
// directions:
//   kCols = false: outer = rows of x (alpha, row_stat, g_row), inner = rows of y
//   kCols = true:  outer = rows of y (beta, col_stat, g_col),  inner = rows of x
// and the epilogue is always evaluated as eval(p, alpha_i, beta_j), whatever the direction.
//
// Forward: tile_fwd_kernel<kCols = false> gives row_stat, <true> col_stat for the M0 columns
//   that have one (two launches, the second recomputes the tiles; nothing of size N x M or
//   (N/BM) x M is stored).
// Backward: tile_bwd_kernel<false> gives dx, d_alpha and per-block partials of (sum G h,
//   sum G); <true> gives dy and d_beta for all M columns (row-only columns j >= M0 get G from
//   the row term alone). Each block owns its output rows, so dx/dy accumulate with plain
//   read-modify-writes and no atomics: results are bitwise reproducible.
// Forward + gradient (tile_fwd_grad, stats with Stat::kLocalGrad only): the backward kernels
//   with kFwdGrad = true take g_row = 1, g_col = 0 as constants (G_ij = f'(l_ij) in both
//   directions, no saved statistic) and also fold the pair into the outer row's state, so the
//   row pass gives row_stat with dx, the column pass col_stat with dy: two launches instead of
//   tile_fwd's two plus tile_bwd's two. The folds are tile_fwd_kernel's, in the same order.
//
// Per tile: p = X_o X_i^T in shared memory; each warp then owns BM/8 outer rows and its lanes
// cover the BN inner columns, reading each entry's role (skip / positive / negative) from the
// tile's role pass (tile_relation.cuh) and, if not skipped, the logit l = scale h + bias
// through the shared epilogue (flashnce::Epilogue<KIND, Acc>) in the compute dtype. Per-row
// states are lane-private and merged by warp shuffles once at the end. The backward writes
// g_p = G dl/dp into the same shared tile (0 on skipped entries) and multiplies it by the inner
// operand.
//
// Internal: the kernels and their device helpers; host launchers in tile_launch.cuh.
#pragma once

#include <cstdint>

#include "epilogue_device.cuh"
#include "tile_detail.cuh"
#include "tile_gemm.cuh"
#include "tile_relation.cuh"
#include "tile_stat.cuh"

namespace flashnce {
namespace cuda {
namespace detail {

template <class T>
struct SharedTiles {
  using TT = TileTraits<T>;
  using Acc = typename Convert<T>::Acc;
  GemmTiles<T> g;                      // operand chunks, p (then g_p)
  RelationTile<TT::BM, TT::BN> rel;    // keys and roles of the current tile
  Acc outer_scalars[TT::BM][kMaxRowScalars];
  Acc inner_scalars[TT::BN][kMaxRowScalars];
  Acc inner_saved[TT::BN];             // backward: the inner rows' saved statistic
  Acc inner_g[TT::BN];                 // backward: their upstream gradient (0: no statistic)
  Acc warp_partial[kWarps][kThetaPartials];
};

// The backward's shared tiles: for a stat of two values per row (masked_sum) also the inner
// rows' upstream gradient of value 1 (value 0's is inner_g). Width 1 adds nothing, so the lse /
// pair_sum kernels keep SharedTiles' layout.
template <class T, int W>
struct BwdShared : SharedTiles<T> {};
template <class T>
struct BwdShared<T, 2> : SharedTiles<T> {
  typename Convert<T>::Acc inner_g1[TileTraits<T>::BN];
};

// One side of the walk: features [count, K], per-row scalars [count, R], and how many of its
// rows (a prefix) have a statistic: all for x, the first M0 for y.
template <class T>
struct Side {
  const T* feat;
  const typename Convert<T>::Acc* scalars;
  int64_t count;
  int64_t stat_count;
};

template <class T>
struct WalkParams {
  using Acc = typename Convert<T>::Acc;
  Side<T> outer, inner;
  int64_t k;
  const Acc* theta;  // (scale, inv_sqrt_c, bias), device memory
  Acc kappa;
  RelationWalk rel;
};

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

template <class Acc, int R>
__device__ __forceinline__ RowScalars<Acc> scalars_at(const Acc (*scal)[kMaxRowScalars],
                                                      int r) {
  RowScalars<Acc> s;
#pragma unroll
  for (int t = 0; t < kMaxRowScalars; ++t) s.v[t] = t < R ? scal[r][t] : Acc(0);
  return s;
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

// Block start: the outer rows' scalars and relation keys, and this thread's csr cursor.
template <int R, class T>
__device__ __forceinline__ CsrCursor begin_outer(SharedTiles<T>& sm, const WalkParams<T>& pr,
                                                 int64_t o0) {
  using TT = TileTraits<T>;
  load_scalars<typename Convert<T>::Acc, TT::BM, R>(sm.outer_scalars, pr.outer.scalars, o0,
                                                    pr.outer.count);
  if (!pr.rel.active) return CsrCursor{};
  load_keys<TT::BM>(sm.rel.outer_key, pr.rel.outer_key, o0, pr.outer.count);
  return csr_begin<TT::BM>(pr.rel, o0, pr.outer.count);
}

// Tile start: the inner rows' scalars and, when the relation is active, its keys and the
// tile's roles (visible to the epilogue after compute_p_tile's barriers).
template <int R, bool kCols, class T>
__device__ __forceinline__ void begin_inner(SharedTiles<T>& sm, const WalkParams<T>& pr,
                                            CsrCursor& cs, int64_t o0, int64_t i0) {
  using TT = TileTraits<T>;
  load_scalars<typename Convert<T>::Acc, TT::BN, R>(sm.inner_scalars, pr.inner.scalars, i0,
                                                    pr.inner.count);
  if (!pr.rel.active) return;  // block-uniform
  load_keys<TT::BN>(sm.rel.inner_key, pr.rel.inner_key, i0, pr.inner.count);
  csr_fill(sm.rel, cs, pr.rel, i0);
  __syncthreads();
  fill_roles<kCols>(sm.rel, pr.rel, o0, pr.outer.count, i0, pr.inner.count);
}

// Calls f(q, r, c, role) for this thread's entries of the tile: the warp's outer rows
// r = warp * RPW + q and the lane's inner columns c = lane + 32 u. role is kEntrySkip outside
// the matrices, else the tile's role (every pair a negative when the relation is inactive).
template <class T, class F>
__device__ __forceinline__ void for_each_entry(const WalkParams<T>& pr, const SharedTiles<T>& sm,
                                               int64_t o0, int64_t i0, F&& f) {
  using TT = TileTraits<T>;
  constexpr int RPW = TT::BM / kWarps;  // outer rows per warp
  constexpr int CPL = TT::BN / 32;      // inner columns per lane
  static_assert(TT::BM % kWarps == 0 && TT::BN % 32 == 0, "tile / warp mismatch");
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const bool active = pr.rel.active;
#pragma unroll
  for (int q = 0; q < RPW; ++q) {
    const int r = warp * RPW + q;
    const int64_t go = o0 + r;
#pragma unroll
    for (int u = 0; u < CPL; ++u) {
      const int c = lane + 32 * u;
      const int64_t gi = i0 + c;
      const unsigned char role = !(go < pr.outer.count && gi < pr.inner.count) ? kEntrySkip
                                 : active ? sm.rel.role[r][c]
                                          : kEntryNegative;
      f(q, r, c, role);
    }
  }
}

// Forward: stat_out[o] = Stat over the inner rows of the non-skipped logits, for the block's BM
// outer rows (stat_out[o * W + v] for a stat of W = Stat::kWidth values per row). At least 4
// blocks per SM (64 registers, the budget ptxas picks for the relation-free walk): left free,
// the role pass leads it to ~96 registers and half the blocks.
template <class T, int KIND, int STAT, bool kCols>
__global__ void __launch_bounds__(kThreads, 4)
    tile_fwd_kernel(WalkParams<T> pr, typename Convert<T>::Acc* __restrict__ stat_out) {
  using TT = TileTraits<T>;
  using Acc = typename Convert<T>::Acc;
  using E = Epilogue<KIND, Acc>;
  using S = Stat<STAT, Acc>;
  constexpr int R = E::kR;
  constexpr int RPW = TT::BM / kWarps;  // outer rows per warp

  __shared__ __align__(128) unsigned char smem_raw[sizeof(SharedTiles<T>)];
  SharedTiles<T>& sm = *reinterpret_cast<SharedTiles<T>*>(smem_raw);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * TT::BM;
  const Acc scale = pr.theta[kThetaScale], ksc = pr.theta[kThetaInvSqrtC];
  const Acc bias = pr.theta[kThetaBias];

  CsrCursor cs = begin_outer<R>(sm, pr, o0);
  typename S::State st[RPW];
#pragma unroll
  for (int q = 0; q < RPW; ++q) S::init(st[q]);

  for (int64_t i0 = 0; i0 < pr.inner.count; i0 += TT::BN) {
    begin_inner<R, kCols>(sm, pr, cs, o0, i0);
    compute_p_tile(sm.g, pr.outer.feat, pr.outer.count, pr.inner.feat, pr.inner.count, pr.k, o0,
                   i0);  // ends with __syncthreads()
    for_each_entry(pr, sm, o0, i0, [&](int q, int r, int c, unsigned char role) {
      if (role == kEntrySkip) return;
      RowScalars<Acc> a, b;
      entry_scalars<R, kCols>(sm, r, c, a, b);
      const Acc h = E::eval(sm.g.s[r][c], a, b, ksc, pr.kappa).h;
      S::fold(st[q], scale * h + bias, role == kEntryPositive);
    });
    __syncthreads();  // shared tiles, scalars and relation keys are rewritten by the next tile
  }

#pragma unroll
  for (int q = 0; q < RPW; ++q) {
    warp_merge<STAT, Acc>(st[q]);
    const int64_t go = o0 + warp * RPW + q;
    if (lane == 0 && go < pr.outer.count) S::store(stat_out, go, st[q]);
  }
}

// Backward for the block's outer rows: d_outer (fp32/fp64 accumulator, zeroed by the launcher)
// += g_p X_inner, d_scalars = finalized row sums of G dl/d(outer scalars), and, when
// theta_partials is set, this block's (sum G h, sum G) at [blockIdx.x] and
// [gridDim.x + blockIdx.x]. saved_* and g_* hold W = Stat::kWidth values per row (row-major
// [rows, W]); G reads value 0 of the saved stats and, for W == 2, both upstream gradients.
// kFwdGrad (tile_fwd_grad): g_row = 1, g_col = 0 and no saved statistics (saved_* and g_* are
// not read), and stat_out[o] = the outer row's statistic for the rows that have one
// (o < outer.stat_count). Without kFwdGrad, stat_out is not read and the code is the plain
// backward's.
template <class T, int KIND, int STAT, bool kCols, bool kFwdGrad>
__global__ void __launch_bounds__(kThreads)
    tile_bwd_kernel(WalkParams<T> pr, const typename Convert<T>::Acc* __restrict__ saved_outer,
                    const typename Convert<T>::Acc* __restrict__ saved_inner,
                    const typename Convert<T>::Acc* __restrict__ g_outer,
                    const typename Convert<T>::Acc* __restrict__ g_inner,
                    typename Convert<T>::Acc* __restrict__ d_outer,
                    typename Convert<T>::Acc* __restrict__ d_scalars,
                    typename Convert<T>::Acc* __restrict__ theta_partials,
                    typename Convert<T>::Acc* __restrict__ stat_out) {
  using TT = TileTraits<T>;
  using Acc = typename Convert<T>::Acc;
  using E = Epilogue<KIND, Acc>;
  using S = Stat<STAT, Acc>;
  constexpr int R = E::kR;
  constexpr int RS = R > 0 ? R : 1;
  constexpr int RPW = TT::BM / kWarps;
  constexpr int P = kThreads / TT::BK;  // outer rows per pass of the gradient GEMM
  static_assert(kThreads % TT::BK == 0 && TT::BM % P == 0, "gradient GEMM mapping");
  constexpr int W = S::kWidth;  // values per row of the saved stats and upstream gradients
  static_assert(!kFwdGrad || S::kLocalGrad, "a one-pass gradient needs a pair-local G");
  static_assert(W == 1 || (W == 2 && !S::kLocalGrad), "two values: grad + linear_grad");

  __shared__ __align__(128) unsigned char smem_raw[sizeof(BwdShared<T, W>)];
  BwdShared<T, W>& sm = *reinterpret_cast<BwdShared<T, W>*>(smem_raw);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * TT::BM;
  const int64_t K = pr.k;
  const Acc scale = pr.theta[kThetaScale], ksc = pr.theta[kThetaInvSqrtC];
  const Acc bias = pr.theta[kThetaBias];

  CsrCursor cs = begin_outer<R>(sm, pr, o0);
  // Outer rows without a statistic (row-only columns) get g = 0: no term of their own.
  // saved_o / g_o: value 0's saved stat and upstream gradient; g1_o: value 1's (W == 2).
  Acc saved_o[RPW], g_o[RPW], gsum[RPW][RS];
  Acc g1_o[W == 2 ? RPW : 1];
  typename S::State st[kFwdGrad ? RPW : 1];  // kFwdGrad: the outer rows' statistics
#pragma unroll
  for (int q = 0; q < RPW; ++q) {
    if constexpr (kFwdGrad) {
      S::init(st[q]);
    } else {
      const int64_t go = o0 + warp * RPW + q;
      const bool has = go < pr.outer.stat_count;
      saved_o[q] = has ? saved_outer[go * W] : Acc(0);
      g_o[q] = has ? g_outer[go * W] : Acc(0);
      if constexpr (W == 2) g1_o[q] = has ? g_outer[go * W + 1] : Acc(0);
    }
#pragma unroll
    for (int t = 0; t < RS; ++t) gsum[q][t] = Acc(0);
  }
  Acc gh = Acc(0), gs = Acc(0);  // this thread's sums of G h and G

  for (int64_t i0 = 0; i0 < pr.inner.count; i0 += TT::BN) {
    begin_inner<R, kCols>(sm, pr, cs, o0, i0);
    if constexpr (!kFwdGrad) {
      for (int c = threadIdx.x; c < TT::BN; c += kThreads) {
        const int64_t gi = i0 + c;
        const bool has = gi < pr.inner.stat_count;
        sm.inner_saved[c] = has ? saved_inner[gi * W] : Acc(0);
        sm.inner_g[c] = has ? g_inner[gi * W] : Acc(0);
        if constexpr (W == 2) sm.inner_g1[c] = has ? g_inner[gi * W + 1] : Acc(0);
      }
    }
    compute_p_tile(sm.g, pr.outer.feat, pr.outer.count, pr.inner.feat, pr.inner.count, K, o0,
                   i0);  // ends with __syncthreads()

    // Epilogue: sm.g.s[r][c] <- g_p = G dl/dp (0 for skipped / out-of-range entries).
    for_each_entry(pr, sm, o0, i0, [&](int q, int r, int c, unsigned char role) {
      Acc gp = Acc(0);
      if (role != kEntrySkip) {
        RowScalars<Acc> a, b;  // alpha_i (rows of x), beta_j (rows of y)
        entry_scalars<R, kCols>(sm, r, c, a, b);
        const Acc p = sm.g.s[r][c];
        const auto ev = E::eval(p, a, b, ksc, pr.kappa);
        const Acc l = scale * ev.h + bias;
        const bool pos = role == kEntryPositive;
        Acc g;  // G_ij (tile_stat.cuh)
        if constexpr (kFwdGrad)
          g = S::fold_slope(st[q], l, pos);  // g_row = 1, g_col = 0
        else if constexpr (S::kLocalGrad)
          g = (g_o[q] + sm.inner_g[c]) * S::slope(l, pos);
        else if constexpr (W == 1)
          g = S::grad(g_o[q], l, saved_o[q], pos) +
              S::grad(sm.inner_g[c], l, sm.inner_saved[c], pos);
        else  // masked_sum: lse's two terms + the masked sum's
          g = S::grad(g_o[q], l, saved_o[q], pos) +
              S::grad(sm.inner_g[c], l, sm.inner_saved[c], pos) +
              S::linear_grad(g1_o[q] + sm.inner_g1[c], pos);
        RowScalars<Acc> ga = scalars_at<Acc, 0>(sm.outer_scalars, 0);  // zeros
        RowScalars<Acc> gb = ga;
        gp = E::grad(ev, p, a, b, ksc, g * scale, ga, gb);
        gh += g * ev.h;
        gs += g;
#pragma unroll
        for (int t = 0; t < R; ++t) gsum[q][t] += kCols ? gb.v[t] : ga.v[t];
      }
      sm.g.s[r][c] = gp;
    });
    __syncthreads();

    // d_outer[o0 + r, k] += sum_c g_p[r][c] X_inner[i0 + c, k], one BK-wide chunk of k at a time.
    // Thread (rb, kc) owns rows rb + P w and column kc of the chunk: the same thread updates
    // the same elements on every tile, so the read-modify-write needs no atomics.
    const int kc = threadIdx.x % TT::BK, rb = threadIdx.x / TT::BK;
    for (int64_t k0 = 0; k0 < K; k0 += TT::BK) {
      load_tile<T, TT::BN, TT::BK>(sm.g.inner, pr.inner.feat, i0, pr.inner.count, k0, K);
      __syncthreads();
      Acc acc[TT::BM / P];
#pragma unroll
      for (int w = 0; w < TT::BM / P; ++w) acc[w] = Acc(0);
#pragma unroll 8
      for (int c = 0; c < TT::BN; ++c) {
        const Acc xv = Convert<T>::to_acc(sm.g.inner[c][kc]);
#pragma unroll
        for (int w = 0; w < TT::BM / P; ++w) acc[w] = fma(sm.g.s[rb + P * w][c], xv, acc[w]);
      }
      const int64_t gk = k0 + kc;
      if (gk < K) {
#pragma unroll
        for (int w = 0; w < TT::BM / P; ++w) {
          const int64_t go = o0 + rb + P * w;
          if (go < pr.outer.count) d_outer[go * K + gk] += acc[w];
        }
      }
      __syncthreads();  // sm.g.inner is reloaded by the next chunk
    }
  }

  if constexpr (kFwdGrad) {  // as tile_fwd_kernel's end
#pragma unroll
    for (int q = 0; q < RPW; ++q) {
      warp_merge<STAT, Acc>(st[q]);
      const int64_t go = o0 + warp * RPW + q;
      if (lane == 0 && go < pr.outer.stat_count) S::store(stat_out, go, st[q]);
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

  if (theta_partials != nullptr) {
    gh = warp_sum(gh);
    gs = warp_sum(gs);
    if (lane == 0) {
      sm.warp_partial[warp][0] = gh;
      sm.warp_partial[warp][1] = gs;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      Acc total_h = Acc(0), total_g = Acc(0);
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        total_h += sm.warp_partial[w][0];
        total_g += sm.warp_partial[w][1];
      }
      theta_partials[blockIdx.x] = total_h;
      theta_partials[gridDim.x + blockIdx.x] = total_g;
    }
  }
}

// d_theta from the row pass's block partials [2][count] (sum G h, then sum G), each summed in a
// fixed order (strided per-thread sums in double, then a fixed tree), so it is reproducible:
//   d_theta = (sum G h, scale sum G h / k if hyperbolic else 0, sum G).
template <class Acc>
__global__ void __launch_bounds__(kThreads)
    d_theta_kernel(const Acc* __restrict__ partials, int64_t count,
                   const Acc* __restrict__ theta, bool hyperbolic, Acc* __restrict__ d_theta) {
  __shared__ double buf[kThetaPartials][kThreads];
#pragma unroll
  for (int s = 0; s < kThetaPartials; ++s) {
    double v = 0.0;
    for (int64_t i = threadIdx.x; i < count; i += kThreads)
      v += static_cast<double>(partials[s * count + i]);
    buf[s][threadIdx.x] = v;
  }
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
#pragma unroll
      for (int s = 0; s < kThetaPartials; ++s) buf[s][threadIdx.x] += buf[s][threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double gh = buf[0][0];
    const double k = static_cast<double>(theta[kThetaInvSqrtC]);
    d_theta[kThetaScale] = static_cast<Acc>(gh);
    d_theta[kThetaInvSqrtC] =
        hyperbolic ? static_cast<Acc>(static_cast<double>(theta[kThetaScale]) * gh / k) : Acc(0);
    d_theta[kThetaBias] = static_cast<Acc>(buf[1][0]);
  }
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
WalkParams<T> walk_params(const TileProblem& pb, bool cols) {
  using Acc = typename Convert<T>::Acc;
  const Side<T> xs{static_cast<const T*>(pb.x), static_cast<const Acc*>(pb.alpha), pb.n, pb.n};
  const Side<T> ys{static_cast<const T*>(pb.y), static_cast<const Acc*>(pb.beta), pb.m,
                   pb.cols_both};
  WalkParams<T> pr;
  pr.outer = cols ? ys : xs;
  pr.inner = cols ? xs : ys;
  pr.k = pb.k;
  pr.theta = static_cast<const Acc*>(pb.theta);
  pr.kappa = static_cast<Acc>(pb.kappa);
  pr.rel = relation_walk(pb, cols);
  return pr;
}

}  // namespace detail
}  // namespace cuda
}  // namespace flashnce
