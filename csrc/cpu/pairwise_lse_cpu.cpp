// CPU kernel of the pairwise log-sum-exp primitive (python/flashnce/backends/base.py).
//
// forward:  row_lse[i] = log sum_j exp l_ij,  col_lse[j] = log sum_i exp l_ij,
//           l_ij = scale * h_kind(<x_i, y_j>, alpha_i, beta_j)   (csrc/flashnce/geometry.h)
// backward: G_ij = g_row[i] exp(l_ij - row_lse[i]) + g_col[j] exp(l_ij - col_lse[j]);
//           dX = (G dl/dp) Y, dY = (G dl/dp)^T X, d_alpha, d_beta (row/column sums), gh = sum G h.
//
// Tile walk: rows in blocks of kBlockN, columns in tiles of kBlockM. The row blocks are split
// into one contiguous range per thread ("part"). Each tile's dot products come from one
// single-threaded BLAS call into a thread-local buffer; the fp32 epilogue runs on
// at::vec::Vectorized lanes. Forward folds every tile into the row LSE of its block and into
// per-part column partials (max, sum) that are merged in part order at the end. Backward
// recomputes each tile once, overwrites it with G dl/dp and does both gradient GEMMs on it.
// It walks the columns in super-blocks of ~4 MiB of dY (super_block_cols): per super-block the
// parts run in parallel, each accumulating that super-block's dY privately, then the copies are
// reduced in part order; d_beta goes to per-part O(M) accumulators. Nothing is atomic, so a run
// is bitwise reproducible for a given thread count. Memory: O((N + M) K) for inputs and
// outputs plus a workspace of (threads - 1) x ~4 MiB dY accumulators, O(threads M) column
// partials and one 512 KiB tile per thread.
//
// This file is compiled once per ISA (FLASHNCE_ISA = avx2 / avx512, with matching -m flags)
// into separate extension modules; python/flashnce/_extension.py imports the best one the CPU
// supports. Each registers the same CPU impl of the schemas in csrc/ops.cpp.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/Functions.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "flashnce/geometry.h"
#include "flashnce/python_module.h"

#ifndef FLASHNCE_ISA
#error "compile with -DFLASHNCE_ISA=<isa> (see setup.py)"
#endif

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

// SIMD MathOps: the geometry header's formulas on vector lanes.
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
namespace {

using at::vec::Vectorized;

// 256 x 512 fp32 tile = 512 KiB: stays in a core's L2 between the GEMM and the epilogue
// (measured on 2 cores of an EPYC: 256 x 512 beat 256 x 256, 512 x 256 and 128 x 512).
// FLASHNCE_CPU_BLOCK_N / FLASHNCE_CPU_BLOCK_M override them (read once; for tuning).
int64_t env_block(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  const long long parsed = v ? std::atoll(v) : 0;
  return parsed >= 8 && parsed <= 8192 ? parsed : fallback;
}
const int64_t kBlockN = env_block("FLASHNCE_CPU_BLOCK_N", 256);
const int64_t kBlockM = env_block("FLASHNCE_CPU_BLOCK_M", 512);
// Fast path of the tile LSE: one exp(l - tile max) serves rows and columns when every row's
// and column's own max is within this of the tile max (no relevant term underflows).
constexpr double kSharedMaxRange = 60.0;

template <class T>
constexpr T neg_inf() { return -std::numeric_limits<T>::infinity(); }

// Column-major BLAS on row-major buffers (see the three call sites).
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

// Lanes<VT>: load/store/sum for a vector type or a plain scalar (the column tail).
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

// Online LSE merge of a partial (pm, ps) = (max, sum exp(l - max)) into (m, s).
template <class T>
inline void lse_merge(T& m, T& s, T pm, T ps) {
  if (!(ps > T(0))) return;
  if (pm > m) {
    s = s * std::exp(m - pm) + ps;
    m = pm;
  } else {
    s += ps * std::exp(pm - m);
  }
}

template <class T>
inline T lse_value(T m, T s) { return s > T(0) ? m + std::log(s) : neg_inf<T>(); }

template <class T>
struct Problem {
  const T* x;       // [N, K]
  const T* y;       // [M, K]
  const T* alpha;   // [N, R]
  const T* betaT;   // [R, M] (transposed: columns load as vectors)
  int64_t n, m, k;
  T scale, inv_sqrt_c, kappa;
  bool exclude_diagonal;
};

// Split nblocks row blocks into contiguous ranges, one per part; a part is run by one thread.
inline int64_t num_parts(int64_t nblocks) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), nblocks));
}
template <class F>
inline void for_each_part(int64_t nparts, const F& f) {
  at::parallel_for(0, nparts, 1, [&](int64_t b, int64_t e) {
    for (int64_t part = b; part < e; ++part) f(part);
  });
}

// Scalars of row i broadcast to VT, and of columns j.. loaded as VT.
template <class VT, int R, class T>
inline RowScalars<VT> row_scalars(const T* alpha, int64_t i) {
  RowScalars<VT> a{};
  for (int r = 0; r < R; ++r) a.v[r] = VT(alpha[i * R + r]);
  return a;
}
template <class VT, int R, class T>
inline RowScalars<VT> col_scalars(const T* betaT, int64_t m, int64_t j) {
  RowScalars<VT> b{};
  for (int r = 0; r < R; ++r) b.v[r] = Lanes<VT>::load(betaT + r * m + j);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

// Logits of tile row `row` (in place over its dot products), returns the row max.
template <int KIND, class VT, class T>
inline void logits_chunk(const Problem<T>& pb, T* row, int64_t j, const RowScalars<VT>& a,
                         int64_t j_global, VT& vmax) {
  using E = Epilogue<KIND, VT>;
  const VT p = Lanes<VT>::load(row + j);
  const RowScalars<VT> b = col_scalars<VT, E::kR>(pb.betaT, pb.m, j_global);
  const VT l = VT(pb.scale) * E::eval(p, a, b, VT(pb.inv_sqrt_c), VT(pb.kappa)).h;
  Lanes<VT>::store(l, row + j);
  vmax = Lanes<VT>::max(vmax, l);
}

template <int KIND, class T>
void forward_kernel(const Problem<T>& pb, T* row_lse, T* col_lse) {
  using V = Vectorized<T>;
  constexpr int R = Epilogue<KIND, T>::kR;
  constexpr int64_t L = V::size();
  const int64_t n = pb.n, m = pb.m;
  const int64_t nblocks = (n + kBlockN - 1) / kBlockN;
  const int64_t nparts = num_parts(nblocks);
  std::vector<T> part_cmax(nparts * m, neg_inf<T>()), part_csum(nparts * m, T(0));

  for_each_part(nparts, [&](int64_t part) {
    std::vector<T> tile(kBlockN * kBlockM), tile_rmax(kBlockN), tile_rsum(kBlockN);
    std::vector<T> tile_cmax(kBlockM), tile_csum(kBlockM), run_max(kBlockN), run_sum(kBlockN);
    T* cmax = part_cmax.data() + part * m;
    T* csum = part_csum.data() + part * m;
    for (int64_t blk = part * nblocks / nparts; blk < (part + 1) * nblocks / nparts; ++blk) {
      const int64_t i0 = blk * kBlockN, bn = std::min(kBlockN, n - i0);
      std::fill(run_max.begin(), run_max.end(), neg_inf<T>());
      std::fill(run_sum.begin(), run_sum.end(), T(0));
      for (int64_t j0 = 0; j0 < m; j0 += kBlockM) {
        const int64_t bm = std::min(kBlockM, m - j0);
        // tile[r, c] = <x_{i0+r}, y_{j0+c}>, row-major with leading dimension bm.
        gemm('T', 'N', bm, bn, pb.k, T(1), pb.y + j0 * pb.k, pb.k, pb.x + i0 * pb.k, pb.k, T(0),
             tile.data(), bm);
        std::fill(tile_cmax.begin(), tile_cmax.begin() + bm, neg_inf<T>());
        for (int64_t r = 0; r < bn; ++r) {
          const int64_t i = i0 + r;
          T* row = tile.data() + r * bm;
          V vmax(neg_inf<T>());
          T smax = neg_inf<T>();
          const auto av = row_scalars<V, R>(pb.alpha, i);
          const auto as = row_scalars<T, R>(pb.alpha, i);
          int64_t j = 0;
          for (; j + L <= bm; j += L) logits_chunk<KIND>(pb, row, j, av, j0 + j, vmax);
          for (; j < bm; ++j) logits_chunk<KIND>(pb, row, j, as, j0 + j, smax);
          smax = std::max(smax, at::vec::vec_reduce_all<T>(
                                    [](V& u, V& w) { return at::vec::maximum(u, w); }, vmax));
          if (pb.exclude_diagonal && i >= j0 && i < j0 + bm) {
            row[i - j0] = neg_inf<T>();
            smax = *std::max_element(row, row + bm);
          }
          tile_rmax[r] = smax;
          for (j = 0; j + L <= bm; j += L)
            at::vec::maximum(V::loadu(tile_cmax.data() + j), V::loadu(row + j))
                .store(tile_cmax.data() + j);
          for (; j < bm; ++j) tile_cmax[j] = std::max(tile_cmax[j], row[j]);
        }
        // Tile max and the smallest finite row/column max decide between one shared exp per
        // entry and separate row- and column-referenced exps.
        T tmax = neg_inf<T>(), lo = std::numeric_limits<T>::infinity();
        for (int64_t r = 0; r < bn; ++r) {
          tmax = std::max(tmax, tile_rmax[r]);
          if (tile_rmax[r] != neg_inf<T>()) lo = std::min(lo, tile_rmax[r]);
        }
        if (tmax == neg_inf<T>()) continue;  // fully masked tile
        for (int64_t c = 0; c < bm; ++c)
          if (tile_cmax[c] != neg_inf<T>()) lo = std::min(lo, tile_cmax[c]);
        std::fill(tile_csum.begin(), tile_csum.begin() + bm, T(0));
        const bool shared = tmax - lo <= T(kSharedMaxRange);
        for (int64_t r = 0; r < bn; ++r) {
          const T* row = tile.data() + r * bm;
          const T rref = shared ? tmax : (tile_rmax[r] == neg_inf<T>() ? T(0) : tile_rmax[r]);
          V acc(T(0));
          T sacc = 0;
          int64_t j = 0;
          if (shared) {
            const V vref(tmax);
            for (; j + L <= bm; j += L) {
              const V e = (V::loadu(row + j) - vref).exp_u20();
              acc = acc + e;
              (V::loadu(tile_csum.data() + j) + e).store(tile_csum.data() + j);
            }
            for (; j < bm; ++j) {
              const T e = std::exp(row[j] - tmax);
              sacc += e;
              tile_csum[j] += e;
            }
          } else {
            const V vref(rref);
            for (; j + L <= bm; j += L) {
              const V l = V::loadu(row + j);
              acc = acc + (l - vref).exp_u20();
              V cref = V::loadu(tile_cmax.data() + j);
              cref = V::blendv(cref, V(T(0)), cref == V(neg_inf<T>()));
              (V::loadu(tile_csum.data() + j) + (l - cref).exp_u20()).store(tile_csum.data() + j);
            }
            for (; j < bm; ++j) {
              sacc += std::exp(row[j] - rref);
              const T cref = tile_cmax[j] == neg_inf<T>() ? T(0) : tile_cmax[j];
              tile_csum[j] += std::exp(row[j] - cref);
            }
          }
          tile_rsum[r] = sacc + Lanes<V>::sum(acc);
          lse_merge(run_max[r], run_sum[r], shared ? tmax : tile_rmax[r], tile_rsum[r]);
        }
        for (int64_t c = 0; c < bm; ++c)
          lse_merge(cmax[j0 + c], csum[j0 + c], shared ? tmax : tile_cmax[c], tile_csum[c]);
      }
      for (int64_t r = 0; r < bn; ++r) row_lse[i0 + r] = lse_value(run_max[r], run_sum[r]);
    }
  });

  // Merge the per-part column partials in part order (deterministic).
  at::parallel_for(0, m, 4096, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      T cm = neg_inf<T>(), cs = 0;
      for (int64_t part = 0; part < nparts; ++part)
        lse_merge(cm, cs, part_cmax[part * m + j], part_csum[part * m + j]);
      col_lse[j] = lse_value(cm, cs);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------

template <class T>
struct BackwardIO {
  const T* row_lse;
  const T* col_lse;
  const T* g_row;
  const T* g_col;
};

// G of one tile. Shared path: with C >= every logit of the tile (the largest row LSE),
// G = exp(l - C) (A_i + B_j), A_i = g_row[i] exp(C - row_lse[i]), B_j = g_col[j] exp(C - col_lse[j]):
// one exp per entry instead of two. Taken when every LSE of the tile is within
// kSharedMaxRange of C, so no term that matters underflows and A, B stay finite.
template <class T>
struct TileG {
  bool shared;
  T ref;
  const T* col_factor;  // B_j of the tile's columns (shared path)
};

// One chunk of a tile row: G, then G dl/dp in place of the dot products, row contributions into
// ga_acc / gh_acc, column contributions into dbeta (this part's [R, M] accumulator).
template <int KIND, class VT, class T>
inline void backward_chunk(const Problem<T>& pb, const BackwardIO<T>& io, T* row, int64_t j,
                           int64_t j_global, int64_t i, const RowScalars<VT>& a, VT gr, VT lr,
                           const TileG<T>& tg, RowScalars<VT>& ga_acc, VT& gh_acc, T* dbeta) {
  using E = Epilogue<KIND, VT>;
  constexpr int R = E::kR;
  constexpr int64_t L = Lanes<VT>::kSize;
  const VT p = Lanes<VT>::load(row + j);
  const RowScalars<VT> b = col_scalars<VT, R>(pb.betaT, pb.m, j_global);
  const VT k(pb.inv_sqrt_c), s(pb.scale);
  const auto st = E::eval(p, a, b, k, VT(pb.kappa));
  const VT l = s * st.h;
  // Shared path: gr is A_i and the column factors are B_j (see TileG).
  VT g = tg.shared
             ? MathOps<VT>::exp(l - VT(tg.ref)) * (gr + Lanes<VT>::load(tg.col_factor + j))
             : gr * MathOps<VT>::exp(l - lr) + Lanes<VT>::load(io.g_col + j_global) *
                                                   MathOps<VT>::exp(l - Lanes<VT>::load(io.col_lse + j_global));
  if (pb.exclude_diagonal && i >= j_global && i < j_global + L) {
    // Masked pair: G = 0 exactly, so every contribution below is 0 (the partials are finite
    // or selected away), whatever exp(l - lse) was.
    T buf[L];
    Lanes<VT>::store(g, buf);
    buf[i - j_global] = T(0);
    g = Lanes<VT>::load(buf);
  }
  RowScalars<VT> ga{}, gb{};
  const VT gp = E::grad(st, p, a, b, k, g * s, ga, gb);
  Lanes<VT>::store(gp, row + j);
  gh_acc = gh_acc + g * st.h;
  for (int r = 0; r < R; ++r) {
    ga_acc.v[r] = ga_acc.v[r] + ga.v[r];
    T* db = dbeta + r * pb.m + j_global;
    Lanes<VT>::store(Lanes<VT>::load(db) + gb.v[r], db);
  }
}

// Columns per super-block of the backward walk: sized so one part's private dY accumulator
// (super_m x K) is about kSuperBlockBytes, a multiple of kBlockM, at least one tile.
// FLASHNCE_CPU_SUPER_BYTES overrides the byte budget (read once; for tuning).
const int64_t kSuperBlockBytes = [] {
  const char* v = std::getenv("FLASHNCE_CPU_SUPER_BYTES");
  const long long parsed = v ? std::atoll(v) : 0;
  return parsed >= 4096 ? int64_t(parsed) : int64_t(4) << 20;
}();
template <class T>
int64_t super_block_cols(int64_t kdim) {
  const int64_t cols = kSuperBlockBytes / (std::max<int64_t>(kdim, 1) * int64_t(sizeof(T)));
  return std::max(kBlockM, cols / kBlockM * kBlockM);
}

template <int KIND, class T>
void backward_kernel(const Problem<T>& pb, const BackwardIO<T>& io, T* dx, T* dy, T* d_alpha,
                     T* d_betaT, T* gh_out) {
  using V = Vectorized<T>;
  constexpr int R = Epilogue<KIND, T>::kR;
  constexpr int64_t L = V::size();
  const int64_t n = pb.n, m = pb.m, kdim = pb.k;
  const int64_t nblocks = (n + kBlockN - 1) / kBlockN;
  const int64_t nparts = num_parts(nblocks);
  // Columns are walked in super-blocks; within one, the parts (row ranges) run in parallel and
  // each accumulates the super-block's dY privately: part 0 straight into dy, the others into
  // a super_m x K buffer that is reduced into dy in part order before the next super-block.
  // Workspace O(threads super_m K), not O(threads M K). dX rows and d_alpha stay owned by one
  // part; d_beta (O(R M) per part) keeps whole-M per-part accumulators.
  const int64_t super_m = nparts > 1 ? std::min(m, super_block_cols<T>(kdim)) : m;
  std::vector<std::vector<T>> dy_extra(nparts - 1);
  std::vector<T> dbeta_parts((nparts - 1) * R * m, T(0));
  std::vector<double> gh_parts(nparts, 0.0);

  for (int64_t c0 = 0; c0 < m; c0 += super_m) {
    const int64_t c1 = std::min(m, c0 + super_m), mc = c1 - c0;
    for_each_part(nparts, [&](int64_t part) {
      T* dy_part = dy + c0 * kdim;
      T* dbeta = d_betaT;
      if (part > 0) {
        std::vector<T>& buf = dy_extra[part - 1];
        if (buf.empty())
          buf.assign(super_m * kdim, T(0));  // first touch by the part's own thread
        else
          std::fill(buf.begin(), buf.begin() + mc * kdim, T(0));
        dy_part = buf.data();
        dbeta = dbeta_parts.data() + (part - 1) * R * m;
      }
      std::vector<T> tile(kBlockN * kBlockM), col_factor(kBlockM);
      double gh_part = 0;
      for (int64_t blk = part * nblocks / nparts; blk < (part + 1) * nblocks / nparts; ++blk) {
        const int64_t i0 = blk * kBlockN, bn = std::min(kBlockN, n - i0);
        for (int64_t j0 = c0; j0 < c1; j0 += kBlockM) {
          const int64_t bm = std::min(kBlockM, c1 - j0);
          gemm('T', 'N', bm, bn, kdim, T(1), pb.y + j0 * kdim, kdim, pb.x + i0 * kdim, kdim,
               T(0), tile.data(), bm);
          // Every logit l_ij <= row_lse[i] <= C (masked entries get G = 0 regardless).
          TileG<T> tg{false, neg_inf<T>(), col_factor.data()};
          T lo = std::numeric_limits<T>::infinity();
          for (int64_t r = 0; r < bn; ++r) {
            const T v = io.row_lse[i0 + r];
            if (v != neg_inf<T>()) {
              tg.ref = std::max(tg.ref, v);
              lo = std::min(lo, v);
            }
          }
          for (int64_t c = 0; c < bm; ++c) {
            const T v = io.col_lse[j0 + c];
            if (v != neg_inf<T>()) lo = std::min(lo, v);
          }
          tg.shared = tg.ref != neg_inf<T>() && tg.ref - lo <= T(kSharedMaxRange);
          if (tg.shared) {
            for (int64_t c = 0; c < bm; ++c) {
              const T v = io.col_lse[j0 + c];
              col_factor[c] = v == neg_inf<T>() ? T(0) : io.g_col[j0 + c] * std::exp(tg.ref - v);
            }
          }
          T gh_tile = 0;
          for (int64_t r = 0; r < bn; ++r) {
            const int64_t i = i0 + r;
            T* row = tile.data() + r * bm;
            const auto av = row_scalars<V, R>(pb.alpha, i);
            const auto as = row_scalars<T, R>(pb.alpha, i);
            const T lr = io.row_lse[i];
            const T gr = tg.shared
                             ? (lr == neg_inf<T>() ? T(0) : io.g_row[i] * std::exp(tg.ref - lr))
                             : io.g_row[i];
            RowScalars<V> gav{};
            for (int q = 0; q < R; ++q) gav.v[q] = V(T(0));
            RowScalars<T> gas{};
            V ghv(T(0));
            T ghs = 0;
            int64_t j = 0;
            for (; j + L <= bm; j += L)
              backward_chunk<KIND>(pb, io, row, j, j0 + j, i, av, V(gr), V(lr), tg, gav, ghv,
                                   dbeta);
            for (; j < bm; ++j)
              backward_chunk<KIND>(pb, io, row, j, j0 + j, i, as, gr, lr, tg, gas, ghs, dbeta);
            // Raw (unfinalized) row sums accumulate in d_alpha across tiles and super-blocks.
            for (int q = 0; q < R; ++q) d_alpha[i * R + q] += gas.v[q] + Lanes<V>::sum(gav.v[q]);
            gh_tile += ghs + Lanes<V>::sum(ghv);
          }
          gh_part += gh_tile;
          // dX[i0:i0+bn] += Gp Y[j0:j0+bm];  dY[j0:j0+bm] += Gp^T X[i0:i0+bn].
          gemm('N', 'N', kdim, bn, bm, T(1), pb.y + j0 * kdim, kdim, tile.data(), bm, T(1),
               dx + i0 * kdim, kdim);
          gemm('N', 'T', kdim, bm, bn, T(1), pb.x + i0 * kdim, kdim, tile.data(), bm, T(1),
               dy_part + (j0 - c0) * kdim, kdim);
        }
      }
      gh_parts[part] += gh_part;
    });
    // Reduce this super-block's per-part dY in part order (deterministic, no atomics).
    if (nparts > 1) {
      at::parallel_for(0, mc, 256, [&](int64_t b, int64_t e) {
        T* dst = dy + c0 * kdim;
        for (int64_t part = 1; part < nparts; ++part) {
          const T* src = dy_extra[part - 1].data();
          for (int64_t idx = b * kdim; idx < e * kdim; ++idx) dst[idx] += src[idx];
        }
      });
    }
  }

  if (R > 0) {
    at::parallel_for(0, n, 1024, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        RowScalars<T> a = row_scalars<T, R>(pb.alpha, i), g{};
        for (int q = 0; q < R; ++q) g.v[q] = d_alpha[i * R + q];
        Epilogue<KIND, T>::finalize(a, g);
        for (int q = 0; q < R; ++q) d_alpha[i * R + q] = g.v[q];
      }
    });
  }
  // Reduce the per-part d_beta accumulators in part order, then finalize.
  at::parallel_for(0, m, 256, [&](int64_t b, int64_t e) {
    for (int64_t part = 1; part < nparts; ++part)
      for (int q = 0; q < R; ++q)
        for (int64_t j = b; j < e; ++j)
          d_betaT[q * m + j] += dbeta_parts[(part - 1) * R * m + q * m + j];
    for (int64_t j = b; j < e; ++j) {
      RowScalars<T> bs{}, g{};
      for (int q = 0; q < R; ++q) {
        bs.v[q] = pb.betaT[q * m + j];
        g.v[q] = d_betaT[q * m + j];
      }
      Epilogue<KIND, T>::finalize(bs, g);
      for (int q = 0; q < R; ++q) d_betaT[q * m + j] = g.v[q];
    }
  });
  double gh = 0;
  for (double v : gh_parts) gh += v;
  *gh_out = T(gh);
}

// ---------------------------------------------------------------------------------------------
// Op impls
// ---------------------------------------------------------------------------------------------

at::ScalarType compute_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

void check_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& alpha,
                  const at::Tensor& beta, int64_t kind) {
  TORCH_CHECK(kind >= 0 && kind < kNumEpilogueKinds, "flashnce: unknown epilogue kind ", kind);
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1),
              "flashnce: x [N, K] and y [M, K] expected, got ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "flashnce: x and y dtypes differ");
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf,
              "flashnce: unsupported dtype ", st);
  const int64_t r = num_row_scalars(static_cast<int>(kind));
  TORCH_CHECK(alpha.dim() == 2 && alpha.size(0) == x.size(0) && alpha.size(1) == r,
              "flashnce: alpha must be [N, ", r, "], got ", alpha.sizes());
  TORCH_CHECK(beta.dim() == 2 && beta.size(0) == y.size(0) && beta.size(1) == r,
              "flashnce: beta must be [M, ", r, "], got ", beta.sizes());
  TORCH_CHECK(x.size(0) < (int64_t(1) << 31) && y.size(0) < (int64_t(1) << 31) &&
                  x.size(1) < (int64_t(1) << 31),
              "flashnce: dimensions must fit in int32 (BLAS)");
}

template <class T>
Problem<T> make_problem(const at::Tensor& xc, const at::Tensor& yc, const at::Tensor& ac,
                        const at::Tensor& bt, const at::Tensor& scale,
                        const at::Tensor& inv_sqrt_c, double kappa, bool exclude_diagonal) {
  return Problem<T>{xc.data_ptr<T>(), yc.data_ptr<T>(), ac.data_ptr<T>(), bt.data_ptr<T>(),
                    xc.size(0), yc.size(0), xc.size(1),
                    scale.item<T>(), inv_sqrt_c.item<T>(), static_cast<T>(kappa),
                    exclude_diagonal};
}

template <class F>
void dispatch_kind(int64_t kind, const F& f) {
  switch (kind) {
    case kDot: f(std::integral_constant<int, kDot>{}); break;
    case kSqEuclidean: f(std::integral_constant<int, kSqEuclidean>{}); break;
    case kEuclidean: f(std::integral_constant<int, kEuclidean>{}); break;
    case kCosine: f(std::integral_constant<int, kCosine>{}); break;
    default: f(std::integral_constant<int, kHyperbolic>{}); break;
  }
}

std::tuple<at::Tensor, at::Tensor> pairwise_lse_fwd_cpu(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& alpha, const at::Tensor& beta,
    const at::Tensor& scale, const at::Tensor& inv_sqrt_c, int64_t kind, bool exclude_diagonal,
    double kappa) {
  check_inputs(x, y, alpha, beta, kind);
  const auto cd = compute_dtype(x.scalar_type());
  // bf16 / fp16 operands are widened once (exact), so the tile GEMM accumulates in fp32.
  const at::Tensor xc = x.to(cd).contiguous(), yc = y.to(cd).contiguous();
  const at::Tensor ac = alpha.to(cd).contiguous(), bt = beta.to(cd).t().contiguous();
  at::Tensor row_lse = at::empty({x.size(0)}, x.options().dtype(cd));
  at::Tensor col_lse = at::empty({y.size(0)}, x.options().dtype(cd));
  if (y.size(0) == 0) row_lse.fill_(-std::numeric_limits<double>::infinity());
  if (x.size(0) == 0) col_lse.fill_(-std::numeric_limits<double>::infinity());
  if (x.size(0) == 0 || y.size(0) == 0) return {row_lse, col_lse};
  AT_DISPATCH_FLOATING_TYPES(cd, "pairwise_lse_fwd_cpu", [&] {
    const auto pb = make_problem<scalar_t>(xc, yc, ac, bt, scale, inv_sqrt_c, kappa,
                                           exclude_diagonal);
    dispatch_kind(kind, [&](auto kc) {
      forward_kernel<decltype(kc)::value, scalar_t>(pb, row_lse.data_ptr<scalar_t>(),
                                                    col_lse.data_ptr<scalar_t>());
    });
  });
  return {row_lse, col_lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pairwise_lse_bwd_cpu(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& alpha, const at::Tensor& beta,
    const at::Tensor& scale, const at::Tensor& inv_sqrt_c, const at::Tensor& row_lse,
    const at::Tensor& col_lse, const at::Tensor& g_row, const at::Tensor& g_col, int64_t kind,
    bool exclude_diagonal, double kappa) {
  check_inputs(x, y, alpha, beta, kind);
  const auto cd = compute_dtype(x.scalar_type());
  const int64_t n = x.size(0), m = y.size(0), r = alpha.size(1);
  TORCH_CHECK(row_lse.numel() == n && g_row.numel() == n && col_lse.numel() == m &&
                  g_col.numel() == m,
              "flashnce: row_lse/g_row must have N elements and col_lse/g_col M");
  const at::Tensor xc = x.to(cd).contiguous(), yc = y.to(cd).contiguous();
  const at::Tensor ac = alpha.to(cd).contiguous(), bt = beta.to(cd).t().contiguous();
  const at::Tensor rl = row_lse.to(cd).contiguous(), cl = col_lse.to(cd).contiguous();
  const at::Tensor gr = g_row.to(cd).contiguous(), gc = g_col.to(cd).contiguous();
  at::Tensor dx = at::zeros_like(xc), dy = at::zeros_like(yc);
  at::Tensor d_alpha = at::zeros({n, r}, xc.options());
  at::Tensor d_betaT = at::zeros({r, m}, xc.options());
  at::Tensor gh = at::zeros({}, xc.options());
  if (n > 0 && m > 0) {
    AT_DISPATCH_FLOATING_TYPES(cd, "pairwise_lse_bwd_cpu", [&] {
      const auto pb = make_problem<scalar_t>(xc, yc, ac, bt, scale, inv_sqrt_c, kappa,
                                             exclude_diagonal);
      const BackwardIO<scalar_t> io{rl.data_ptr<scalar_t>(), cl.data_ptr<scalar_t>(),
                                    gr.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>()};
      dispatch_kind(kind, [&](auto kc) {
        backward_kernel<decltype(kc)::value, scalar_t>(
            pb, io, dx.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(),
            d_alpha.data_ptr<scalar_t>(), d_betaT.data_ptr<scalar_t>(), gh.data_ptr<scalar_t>());
      });
    });
  }
  return {dx.to(x.scalar_type()), dy.to(y.scalar_type()), d_alpha, d_betaT.t().contiguous(), gh};
}

}  // namespace
}  // namespace FLASHNCE_ISA
}  // namespace cpu
}  // namespace flashnce

TORCH_LIBRARY_IMPL(flashnce, CPU, m) {
  m.impl("pairwise_lse_fwd", &flashnce::cpu::FLASHNCE_ISA::pairwise_lse_fwd_cpu);
  m.impl("pairwise_lse_bwd", &flashnce::cpu::FLASHNCE_ISA::pairwise_lse_bwd_cpu);
}

#ifdef FLASHNCE_MODULE_NAME
FLASHNCE_PYTHON_MODULE(FLASHNCE_MODULE_NAME)
#endif
