// The statistic seam of the CPU walks: what a tile of logits is folded into, how partial
// states merge, and the backward's upstream rule G_ij = dL/dl_ij (python/flashnce/core/spec.py,
// "Statistic"). The walks (walk_forward.h, walk_backward.h) compute the logits and the skipped
// pairs and know nothing else about the statistic; a new stat is one more TileStat
// specialisation here plus a case in the binding's dispatch_stat.
//
// TileStat<STAT, T> provides
//   traits
//     kNeedsPositives           the stat reads the pairs' positive role (z): the walks then
//                               build each row's positive columns per tile and pass them on
//                               (observe_row's RowMarks, g's PairBits); false (lse): the walks
//                               do no per-entry role work beyond the skips
//     kLocalGrad                G_ij depends on the pair alone: OnePass<STAT, T> exists and
//                               tile_fwd_grad serves the stat
//     kForwardSums              false (see OnePass)
//     kEmpty                    the statistic of a row / column with no pair
//   forward
//     kSkipped                  the value the walk writes over a skipped pair's logit, so
//                               that the fold ignores it without a mask
//     Cols(m0)                  one part's partial column states, columns [0, m0)
//     Rows                      the running states of one row block plus tile scratch;
//                               start() before the block's first tile
//     begin_tile(rows, bc)      before a tile's rows
//     observe_row(rows, row, r, bm, bc)
//                               row r of the tile is final (logits, skips): look at it while
//                               it is in L1 (lse: its max and the column maxima)
//     fold_tile(rows, cols, tile, bn, bm, bc, j0)
//                               fold the bn x bm logits (row-major, ld bm) of the tile at
//                               column j0; only its first bc columns have column states
//     finish_rows(rows, bn, out) the block's finalized row statistics (w = kStatStateWidth
//                               values per row, interleaved: out[w r + v])
//     finish_cols(parts, m0, out) merge the parts' column states in part order, finalize
//   backward (row_stat / col_stat from the forward; col arrays padded to M by the binding:
//             j >= m0 has col_stat = +inf and g_col = 0, so G takes its row term only; a
//             state of two values (masked_sum) arrives split into one array per value)
//     TileG prepare_tile(io, i0, bn, j0, bm, col_factor_scratch)
//     RowG prepare_row(io, tg, i)
//     VT g(io, tg, rg, l, c, j)  G of the entries at tile column c.. / global column j..
//     VT g(io, tg, rg, l, c, j, PairBits, Cols*)
//                               the same for a stat with kNeedsPositives: the chunk's skipped
//                               and positive lanes (Cols: see OnePass; null in tile_bwd)
//   The walk replaces G by exactly 0 on skipped pairs (a select, so an inf or nan in a
//   skipped lane never leaks into a gradient).
//
// OnePass<STAT, T> (stats with kLocalGrad; tile_fwd_grad): the backward hooks above for
// g_row = 1, g_col = 0 with no saved statistics, kForwardSums = true, and the forward sums
// from the same per-entry work: g also folds the pair's value into the row (RowG) and into the
// part's column states (Cols, sized M by the walk; the row-only columns are dropped at the
// end), end_row(rg, row_stat[i]) adds the row's tile sum, finish_cols as in the forward.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/problem.h"
#include "cpu/relation.h"
#include "cpu/simd.h"
#include "flashnce/spec.h"

namespace flashnce {
namespace cpu {
namespace FLASHNCE_ISA {

template <int STAT, class T>
struct TileStat;
template <int STAT, class T>
struct OnePass;

// The skipped and the positive lanes of one chunk (bit l = lane l).
struct PairBits {
  uint64_t skip = 0;
  uint64_t pos = 0;
};

// What the backward reads besides the operands; every pointer has N (row_*) or M (col_*)
// entries (one value per row: a state of several values arrives split, see below).
// masked_sum: row_stat / col_stat / g_row / g_col are its lse values (value 0 of the state,
// split out by the binding) and g_row_pos / g_col_pos the upstream gradients of its masked
// sums (value 1); null for the other stats.
template <class T>
struct BackwardIO {
  const T* row_stat;
  const T* col_stat;
  const T* g_row;
  const T* g_col;
  const T* g_row_pos = nullptr;
  const T* g_col_pos = nullptr;
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

// Fast path of the tile LSE: one exp(l - tile max) serves rows and columns when every row's
// and column's own max is within this of the tile max (no relevant term underflows). The
// backward uses the same test on the saved statistics.
constexpr double kSharedMaxRange = 60.0;

// ---------------------------------------------------------------------------------------------
// lse: row_stat[i] = log sum_j exp l_ij, col_stat[j] = log sum_i exp l_ij over pairs not
// skipped (-inf when all are); G_ij = g_row[i] exp(l_ij - row_stat[i])
//                                     + g_col[j] exp(l_ij - col_stat[j]).
// ---------------------------------------------------------------------------------------------
template <class T>
struct TileStat<kStatLse, T> {
  using V = Vectorized<T>;
  static constexpr int64_t L = V::size();
  static constexpr bool kNeedsPositives = false;
  static constexpr bool kLocalGrad = false;
  static constexpr bool kForwardSums = false;
  static constexpr T kEmpty = neg_inf<T>();
  static constexpr T kSkipped = neg_inf<T>();  // exp(-inf - ref) = 0: out of both sums

  struct Cols {
    std::vector<T> max, sum;  // (max, sum exp(l - max)) per column
    explicit Cols(int64_t m0) : max(m0, neg_inf<T>()), sum(m0, T(0)) {}
  };
  struct Rows {
    std::vector<T> run_max, run_sum;                   // [kBlockN] running (max, sum)
    std::vector<T> tile_rmax, tile_rsum;               // [kBlockN] this tile's rows
    std::vector<T> tile_cmax, tile_csum;               // [kBlockM] this tile's columns
    Rows()
        : run_max(kBlockN), run_sum(kBlockN), tile_rmax(kBlockN), tile_rsum(kBlockN),
          tile_cmax(kBlockM), tile_csum(kBlockM) {}
    void start() {
      std::fill(run_max.begin(), run_max.end(), neg_inf<T>());
      std::fill(run_sum.begin(), run_sum.end(), T(0));
    }
  };

  // Sums of exp over row `row`'s columns [a, b) into the row accumulator and, when COLS, into
  // the column sums. Shared: one exp(l - tmax) for both; else the row's and each column's own
  // max are the references (a -inf max is replaced by 0: its terms are all exp(-inf) = 0).
  template <bool COLS, bool SHARED>
  static T exp_range(const T* row, int64_t a, int64_t b, T rref, Rows& rs) {
    T* csum = rs.tile_csum.data();
    const T* cmax = rs.tile_cmax.data();
    const V vref(rref);
    V acc(T(0));
    T sacc = 0;
    int64_t j = a;
    for (; j + L <= b; j += L) {
      const V l = V::loadu(row + j);
      const V e = (l - vref).exp_u20();
      acc = acc + e;
      if (COLS) {
        V ec = e;
        if (!SHARED) {
          V cref = V::loadu(cmax + j);
          cref = V::blendv(cref, V(T(0)), cref == V(neg_inf<T>()));
          ec = (l - cref).exp_u20();
        }
        (V::loadu(csum + j) + ec).store(csum + j);
      }
    }
    for (; j < b; ++j) {
      const T e = std::exp(row[j] - rref);
      sacc += e;
      if (COLS) {
        const T cref = cmax[j] == neg_inf<T>() ? T(0) : cmax[j];
        csum[j] += SHARED ? e : std::exp(row[j] - cref);
      }
    }
    return sacc + Lanes<V>::sum(acc);
  }

  // Before a tile's rows: reset its column maxima.
  static void begin_tile(Rows& rs, int64_t bc) {
    std::fill(rs.tile_cmax.data(), rs.tile_cmax.data() + bc, neg_inf<T>());
  }

  // One finished row of logits, while it is still in L1: its maximum (all bm columns) and
  // the column maxima (the first bc columns) in one pass.
  static void observe_row(Rows& rs, const T* row, int64_t r, int64_t bm, int64_t bc) {
    T* cmax = rs.tile_cmax.data();
    V vmax(neg_inf<T>());
    T smax = neg_inf<T>();
    int64_t j = 0;
    for (; j + L <= bc; j += L) {
      const V l = V::loadu(row + j);
      vmax = at::vec::maximum(vmax, l);
      at::vec::maximum(V::loadu(cmax + j), l).store(cmax + j);
    }
    for (; j < bc; ++j) {
      smax = std::max(smax, row[j]);
      cmax[j] = std::max(cmax[j], row[j]);
    }
    for (; j + L <= bm; j += L) vmax = at::vec::maximum(vmax, V::loadu(row + j));
    for (; j < bm; ++j) smax = std::max(smax, row[j]);
    rs.tile_rmax[r] = std::max(smax, at::vec::vec_reduce_all<T>(
                                         [](V& u, V& w) { return at::vec::maximum(u, w); },
                                         vmax));
  }

  // The whole tile (every row observed): fold it into the running row and column states.
  static void fold_tile(Rows& rs, Cols& cs, const T* tile, int64_t bn, int64_t bm, int64_t bc,
                        int64_t j0) {
    T* cmax = rs.tile_cmax.data();
    // Tile max and the smallest finite row/column max decide between one shared exp per
    // entry and separate row- and column-referenced exps.
    T tmax = neg_inf<T>(), lo = pos_inf<T>();
    for (int64_t r = 0; r < bn; ++r) {
      tmax = std::max(tmax, rs.tile_rmax[r]);
      if (rs.tile_rmax[r] != neg_inf<T>()) lo = std::min(lo, rs.tile_rmax[r]);
    }
    if (tmax == neg_inf<T>()) return;  // every pair of the tile skipped
    for (int64_t c = 0; c < bc; ++c)
      if (cmax[c] != neg_inf<T>()) lo = std::min(lo, cmax[c]);
    std::fill(rs.tile_csum.begin(), rs.tile_csum.begin() + bc, T(0));
    const bool shared = tmax - lo <= T(kSharedMaxRange);
    for (int64_t r = 0; r < bn; ++r) {
      const T* row = tile + r * bm;
      const T rmax = rs.tile_rmax[r];
      const T rref = shared ? tmax : (rmax == neg_inf<T>() ? T(0) : rmax);
      const T sum = (shared ? exp_range<true, true>(row, 0, bc, rref, rs)
                            : exp_range<true, false>(row, 0, bc, rref, rs)) +
                    (bc < bm ? exp_range<false, true>(row, bc, bm, rref, rs) : T(0));
      lse_merge(rs.run_max[r], rs.run_sum[r], shared ? tmax : rmax, sum);
    }
    for (int64_t c = 0; c < bc; ++c)
      lse_merge(cs.max[j0 + c], cs.sum[j0 + c], shared ? tmax : cmax[c], rs.tile_csum[c]);
  }

  static void finish_rows(const Rows& rs, int64_t bn, T* out) {
    for (int64_t r = 0; r < bn; ++r) out[r] = lse_value(rs.run_max[r], rs.run_sum[r]);
  }

  static void finish_cols(const std::vector<Cols>& parts, int64_t m0, T* out) {
    at::parallel_for(0, m0, 4096, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        T mx = neg_inf<T>(), s = T(0);
        for (const Cols& p : parts) lse_merge(mx, s, p.max[j], p.sum[j]);
        out[j] = lse_value(mx, s);
      }
    });
  }

  // Backward. Every logit l_ij <= row_stat[i], so with ref = max_i row_stat[i] of the tile,
  // G_ij = exp(l_ij - ref) (A_i + B_j), A_i = g_row[i] exp(ref - row_stat[i]),
  // B_j = g_col[j] exp(ref - col_stat[j]): one exp per entry when no factor over- or
  // underflows (all finite stats within kSharedMaxRange of ref).
  struct TileG {
    bool shared;
    T ref;
    const T* col_factor;  // B_j of the tile's columns (shared path)
  };
  struct RowG {
    T coef;  // shared: A_i; else g_row[i]
    T stat;  // row_stat[i]
  };

  static TileG prepare_tile(const BackwardIO<T>& io, int64_t i0, int64_t bn, int64_t j0,
                            int64_t bm, T* col_factor) {
    TileG tg{false, neg_inf<T>(), col_factor};
    T lo = pos_inf<T>();
    for (int64_t r = 0; r < bn; ++r) {
      const T v = io.row_stat[i0 + r];
      if (v != neg_inf<T>()) {
        tg.ref = std::max(tg.ref, v);
        lo = std::min(lo, v);
      }
    }
    // Row-only columns carry col_stat = +inf: they never lower lo and get B_j = 0.
    for (int64_t c = 0; c < bm; ++c) {
      const T v = io.col_stat[j0 + c];
      if (v != neg_inf<T>()) lo = std::min(lo, v);
    }
    tg.shared = tg.ref != neg_inf<T>() && tg.ref - lo <= T(kSharedMaxRange);
    if (tg.shared) {
      for (int64_t c = 0; c < bm; ++c) {
        const T v = io.col_stat[j0 + c];
        col_factor[c] = v == neg_inf<T>() ? T(0) : io.g_col[j0 + c] * std::exp(tg.ref - v);
      }
    }
    return tg;
  }

  static RowG prepare_row(const BackwardIO<T>& io, const TileG& tg, int64_t i) {
    const T lr = io.row_stat[i];
    if (!tg.shared) return {io.g_row[i], lr};
    return {lr == neg_inf<T>() ? T(0) : io.g_row[i] * std::exp(tg.ref - lr), lr};
  }

  template <class VT>
  static VT g(const BackwardIO<T>& io, const TileG& tg, const RowG& rg, VT l, int64_t c,
              int64_t j) {
    using Mo = MathOps<VT>;
    if (tg.shared)
      return Mo::exp(l - VT(tg.ref)) * (VT(rg.coef) + Lanes<VT>::load(tg.col_factor + c));
    return VT(rg.coef) * Mo::exp(l - VT(rg.stat)) +
           Lanes<VT>::load(io.g_col + j) * Mo::exp(l - Lanes<VT>::load(io.col_stat + j));
  }
};

// ---------------------------------------------------------------------------------------------
// pair_sum: row_stat[i] = sum_j f(l_ij, z_ij), col_stat[j] = sum_i f(l_ij, z_ij) over pairs
// not skipped (0 when all are), f(l, z) = softplus(-z l); G_ij = (g_row[i] + g_col[j]) f'(l_ij,
// z_ij), f'(l, z) = -z sigmoid(-z l). With s = -z (+1 negative, -1 positive) and u = s l:
// e = exp(-|l|) (|u| = |l|) gives f = max(u, 0) + log1p(e) and f' = s sigmoid(u) with
// sigmoid(u) = (u >= 0 ? 1 : e) / (1 + e): one exp per pair for both (log1p of e in [0, 1]:
// PairOps::log1p_unit).
// ---------------------------------------------------------------------------------------------
template <class T>
struct TileStat<kStatPairSum, T> {
  using V = Vectorized<T>;
  static constexpr int64_t L = V::size();
  static constexpr bool kNeedsPositives = true;
  static constexpr bool kLocalGrad = true;
  static constexpr bool kForwardSums = false;
  static constexpr T kEmpty = T(0);
  // A skipped pair is never a positive (skip > positive), so its f is that of a negative at
  // l = -inf: max(-inf, 0) + log1p(exp(-inf)) = 0 exactly.
  static constexpr T kSkipped = neg_inf<T>();

  // u = -z l: l with the positive lanes' sign flipped (exact).
  template <class VT>
  static VT signed_logit(VT l, uint64_t pos) {
    return pos ? lanes_from_bits<VT>(pos, T(-1), T(1)) * l : l;
  }
  template <class VT>
  static VT neg_abs_exp(VT l) {  // e = exp(-|l|)
    return MathOps<VT>::exp(VT(T(0)) - PairOps<VT>::abs(l));
  }
  template <class VT>
  static VT value(VT l, uint64_t pos) {
    return PairOps<VT>::relu(signed_logit(l, pos)) + PairOps<VT>::log1p_unit(neg_abs_exp(l));
  }
  template <class VT>
  static VT slope(VT l, uint64_t pos) {
    const VT e = neg_abs_exp(l);
    if (!pos) return PairOps<VT>::sigmoid(l, e);
    const VT s = lanes_from_bits<VT>(pos, T(-1), T(1));
    return s * PairOps<VT>::sigmoid(s * l, e);
  }
  // f' returned, f into `f`, from one exp.
  template <class VT>
  static VT value_slope(VT l, uint64_t pos, VT& f) {
    const VT e = neg_abs_exp(l);
    if (!pos) {
      f = PairOps<VT>::relu(l) + PairOps<VT>::log1p_unit(e);
      return PairOps<VT>::sigmoid(l, e);
    }
    const VT s = lanes_from_bits<VT>(pos, T(-1), T(1));
    const VT u = s * l;
    f = PairOps<VT>::relu(u) + PairOps<VT>::log1p_unit(e);
    return s * PairOps<VT>::sigmoid(u, e);
  }

  struct Cols {
    std::vector<T> sum;
    explicit Cols(int64_t m0) : sum(m0, T(0)) {}
  };
  struct Rows {
    std::vector<T> run;        // [kBlockN] running row sums
    std::vector<T> tile_csum;  // [kBlockM] this tile's column sums
    Rows() : run(kBlockN), tile_csum(kBlockM) {}
    void start() { std::fill(run.begin(), run.end(), T(0)); }
  };

  static void begin_tile(Rows& rs, int64_t bc) {
    std::fill(rs.tile_csum.data(), rs.tile_csum.data() + bc, T(0));
  }

  // f of the chunk at column j into acc and, when COLS, into the tile's column sums.
  template <bool COLS, class VT>
  static void fold_chunk(const T* row, int64_t j, RowMarks& pos, VT& acc, T* csum) {
    constexpr int64_t W = Lanes<VT>::kSize;
    const uint64_t bits = pos.done() ? 0 : pos.take(j, W);
    const VT f = value(Lanes<VT>::load(row + j), bits);
    acc = acc + f;
    if (COLS) Lanes<VT>::store(Lanes<VT>::load(csum + j) + f, csum + j);
  }

  // One finished row of logits (skipped pairs at -inf), while it is in L1: its f summed into
  // the row's running sum (all bm columns) and the tile's column sums (the first bc).
  static void observe_row(Rows& rs, const T* row, int64_t r, int64_t bm, int64_t bc,
                          RowMarks pos) {
    T* csum = rs.tile_csum.data();
    V acc(T(0));
    T sacc = 0;
    int64_t j = 0;
    for (; j + L <= bc; j += L) fold_chunk<true>(row, j, pos, acc, csum);
    for (; j < bc; ++j) fold_chunk<true>(row, j, pos, sacc, csum);
    for (; j + L <= bm; j += L) fold_chunk<false>(row, j, pos, acc, csum);
    for (; j < bm; ++j) fold_chunk<false>(row, j, pos, sacc, csum);
    rs.run[r] += sacc + Lanes<V>::sum(acc);
  }

  static void fold_tile(Rows& rs, Cols& cs, const T*, int64_t, int64_t, int64_t bc,
                        int64_t j0) {
    for (int64_t c = 0; c < bc; ++c) cs.sum[j0 + c] += rs.tile_csum[c];
  }

  static void finish_rows(const Rows& rs, int64_t bn, T* out) {
    std::copy(rs.run.begin(), rs.run.begin() + bn, out);
  }

  static void finish_cols(const std::vector<Cols>& parts, int64_t m0, T* out) {
    at::parallel_for(0, m0, 4096, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        T s = T(0);
        for (const Cols& p : parts) s += p.sum[j];
        out[j] = s;
      }
    });
  }

  // Backward: no saved statistic is needed (G is local to the pair).
  struct TileG {};
  struct RowG {
    T coef;  // g_row[i]
  };
  static TileG prepare_tile(const BackwardIO<T>&, int64_t, int64_t, int64_t, int64_t, T*) {
    return {};
  }
  static RowG prepare_row(const BackwardIO<T>& io, const TileG&, int64_t i) {
    return {io.g_row[i]};
  }
  template <class VT>
  static VT g(const BackwardIO<T>& io, const TileG&, const RowG& rg, VT l, int64_t, int64_t j,
              PairBits bits, Cols*) {
    return (VT(rg.coef) + Lanes<VT>::load(io.g_col + j)) * slope(l, bits.pos);
  }
};

// ---------------------------------------------------------------------------------------------
// masked_sum: a state of two values per row / column (spec.h kStatStateWidth): value 0 the lse
// stat exactly (its fold, merge and finalize are TileStat<kStatLse>'s, on the same logits),
// value 1 the sum of the positives' logits, m_i = sum_{j positive} l_ij, merged by +; outputs
// interleaved, out[2 r] = lse, out[2 r + 1] = m (row-major [N, 2]). The positives of a row come
// from the walk (RowMarks: positive and not skipped), so the masked sums cost O(positives)
// scalar adds per row while the row is in L1; nothing per entry beyond the lse's work.
// G_ij = lse's G (g_row / g_col / row_stat / col_stat of value 0) + [ij positive]
// (g_row_pos[i] + g_col_pos[j]) (g_col_pos padded with 0 past M0 by the binding).
// ---------------------------------------------------------------------------------------------
template <class T>
struct TileStat<kStatMaskedSum, T> {
  using Lse = TileStat<kStatLse, T>;
  using V = Vectorized<T>;
  static constexpr int64_t L = V::size();
  static constexpr bool kNeedsPositives = true;
  static constexpr bool kLocalGrad = false;
  static constexpr bool kForwardSums = false;
  static constexpr T kEmpty = neg_inf<T>();     // value 0 of an empty row; value 1 is 0
  static constexpr T kSkipped = Lse::kSkipped;  // skipped pairs are never positives

  struct Cols {
    typename Lse::Cols lse;
    std::vector<T> msum;  // per column: sum of its positives' logits
    explicit Cols(int64_t m0) : lse(m0), msum(m0, T(0)) {}
  };
  struct Rows {
    typename Lse::Rows lse;
    std::vector<T> run_msum;    // [kBlockN] running masked sums of the block's rows
    std::vector<T> tile_cmsum;  // [kBlockM] this tile's column masked sums
    Rows() : run_msum(kBlockN), tile_cmsum(kBlockM) {}
    void start() {
      lse.start();
      std::fill(run_msum.begin(), run_msum.end(), T(0));
    }
  };

  static void begin_tile(Rows& rs, int64_t bc) {
    Lse::begin_tile(rs.lse, bc);
    std::fill(rs.tile_cmsum.data(), rs.tile_cmsum.data() + bc, T(0));
  }

  static void observe_row(Rows& rs, const T* row, int64_t r, int64_t bm, int64_t bc,
                          RowMarks pos) {
    Lse::observe_row(rs.lse, row, r, bm, bc);
    T s = T(0);
    T* cms = rs.tile_cmsum.data();
    for (int64_t q = 0; q < pos.count; ++q) {
      const int64_t c = pos.cols[q];
      s += row[c];
      if (c < bc) cms[c] += row[c];
    }
    rs.run_msum[r] += s;
  }

  static void fold_tile(Rows& rs, Cols& cs, const T* tile, int64_t bn, int64_t bm, int64_t bc,
                        int64_t j0) {
    Lse::fold_tile(rs.lse, cs.lse, tile, bn, bm, bc, j0);
    for (int64_t c = 0; c < bc; ++c) cs.msum[j0 + c] += rs.tile_cmsum[c];
  }

  static void finish_rows(const Rows& rs, int64_t bn, T* out) {
    for (int64_t r = 0; r < bn; ++r) {
      out[2 * r] = lse_value(rs.lse.run_max[r], rs.lse.run_sum[r]);
      out[2 * r + 1] = rs.run_msum[r];
    }
  }

  static void finish_cols(const std::vector<Cols>& parts, int64_t m0, T* out) {
    at::parallel_for(0, m0, 4096, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        T mx = neg_inf<T>(), s = T(0), ms = T(0);
        for (const Cols& p : parts) {
          lse_merge(mx, s, p.lse.max[j], p.lse.sum[j]);
          ms += p.msum[j];
        }
        out[2 * j] = lse_value(mx, s);
        out[2 * j + 1] = ms;
      }
    });
  }

  // Backward: lse's G plus the positives' constant term.
  using TileG = typename Lse::TileG;
  struct RowG {
    typename Lse::RowG lse;
    T pos;  // g_row_pos[i]
  };
  static TileG prepare_tile(const BackwardIO<T>& io, int64_t i0, int64_t bn, int64_t j0,
                            int64_t bm, T* col_factor) {
    return Lse::prepare_tile(io, i0, bn, j0, bm, col_factor);
  }
  static RowG prepare_row(const BackwardIO<T>& io, const TileG& tg, int64_t i) {
    return {Lse::prepare_row(io, tg, i), io.g_row_pos[i]};
  }
  template <class VT>
  static VT g(const BackwardIO<T>& io, const TileG& tg, const RowG& rg, VT l, int64_t c,
              int64_t j, PairBits bits, Cols*) {
    const VT g = Lse::template g<VT>(io, tg, rg.lse, l, c, j);
    if (!bits.pos) return g;
    // + (g_row_pos[i] + g_col_pos[j]) on the positive lanes only (the others: + 0 exactly).
    const VT add = VT(rg.pos) + Lanes<VT>::load(io.g_col_pos + j);
    return g + zero_lanes(add, ~bits.pos);
  }
};

// tile_fwd_grad of pair_sum: G = f' (g_row = 1, g_col = 0) and the forward sums of f, both
// from value_slope's one exp.
template <class T>
struct OnePass<kStatPairSum, T> {
  using Base = TileStat<kStatPairSum, T>;
  using V = Vectorized<T>;
  static constexpr bool kNeedsPositives = true;
  static constexpr bool kForwardSums = true;
  using Cols = typename Base::Cols;

  struct TileG {};
  struct RowG {
    V fv;  // the row's f over this tile: vector chunks
    T fs;  // and the scalar tail
  };
  static TileG prepare_tile(const BackwardIO<T>&, int64_t, int64_t, int64_t, int64_t, T*) {
    return {};
  }
  static RowG prepare_row(const BackwardIO<T>&, const TileG&, int64_t) {
    return {V(T(0)), T(0)};
  }
  template <class VT>
  static VT g(const BackwardIO<T>&, const TileG&, RowG& rg, VT l, int64_t, int64_t j,
              PairBits bits, Cols* cols) {
    VT f;
    const VT d = Base::value_slope(l, bits.pos, f);
    if (bits.skip) f = zero_lanes(f, bits.skip);  // G is zeroed there by the walk
    if constexpr (std::is_same<VT, T>::value)
      rg.fs += f;
    else
      rg.fv = rg.fv + f;
    T* cs = cols->sum.data() + j;
    Lanes<VT>::store(Lanes<VT>::load(cs) + f, cs);
    return d;
  }
  static void end_row(const RowG& rg, T& row_stat) { row_stat += rg.fs + Lanes<V>::sum(rg.fv); }
  static void finish_cols(const std::vector<Cols>& parts, int64_t m0, T* out) {
    Base::finish_cols(parts, m0, out);
  }
};

}  // namespace FLASHNCE_ISA
}  // namespace cpu
}  // namespace flashnce
