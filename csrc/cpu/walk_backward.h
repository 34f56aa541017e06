// Backward tile walk of one tile_bwd call, generic over the epilogue kind and the statistic
// (cpu/stats.h supplies G_ij = dL/dl_ij):
//   dX = (G dl/dp) Y,  dY = (G dl/dp)^T X,  d_alpha / d_beta = row / column sums of
//   G dl/dalpha_i / G dl/dbeta_j (geometry.h Epilogue::grad, finalize),
//   sum_ij G_ij h_ij and sum_ij G_ij (for d_theta), with G = 0 exactly on skipped pairs.
// The same walk is tile_fwd_grad's one pass: with S = OnePass<STAT, T> (S::kForwardSums) the
// stat's G needs no saved statistic and its g hook also folds each pair into the forward sums
// (row_stat / col_stat in BackwardOut), from the same per-entry work.
//
// Each tile is recomputed once (GEMM + epilogue), overwritten with G dl/dp and used by both
// gradient GEMMs. Columns are walked in super-blocks of ~4 MiB of dY (super_block_cols): per
// super-block the parts (row ranges) run in parallel, each accumulating that super-block's dY
// privately, then the copies are reduced in part order; d_beta goes to per-part O(R M)
// accumulators (and, for the one pass, the column sums to per-part O(M) states merged in part
// order). Nothing is atomic, so a run is bitwise reproducible for a given thread count.
// Workspace: (threads - 1) x ~4 MiB dY accumulators, O(threads R M) and one tile per thread.
//
// Same operand (BackwardOut::dy == nullptr, spec.h kFlagSameOperand: y is x, M = N): dY is
// accumulated into dx (dx = dX + dY). dY row j is dx row j, owned by the part whose row range
// holds j, so no part may write it during the parallel region: every part (part 0 too)
// accumulates the super-block's dY privately and the part-order reduction after the region
// adds the copies into dx rows [c0, c1). One part alone owns every row and adds dY straight
// into dx. Workspace: threads x ~4 MiB (none with one part); no N x K dY.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "cpu/problem.h"
#include "cpu/relation.h"
#include "cpu/simd.h"
#include "cpu/stats.h"

namespace flashnce {
namespace cpu {
namespace FLASHNCE_ISA {

// The walk's outputs (zero-initialised by the binding; d_alpha [N, R], d_betaT [R, M];
// row_stat [N] and col_stat [M0] only for S::kForwardSums).
template <class T>
struct BackwardOut {
  T* dx;
  T* dy;  // nullptr: same operand (y is x), dY accumulated into dx
  T* d_alpha;
  T* d_betaT;
  double sum_gh = 0;  // sum_ij G_ij h_ij
  double sum_g = 0;   // sum_ij G_ij
  T* row_stat = nullptr;
  T* col_stat = nullptr;
};

// One chunk of a tile row: G, then G dl/dp in place of the dot products, row contributions
// into ga_acc / gh_acc / g_acc, column contributions into dbeta (this part's [R, M]
// accumulator). positives and cols are read only by stats with kNeedsPositives.
template <int KIND, class S, class VT, class T>
inline void backward_chunk(const Problem<T>& pb, const BackwardIO<T>& io,
                           const typename S::TileG& tg, typename S::RowG& rg, T* row, int64_t j,
                           int64_t j_global, const RowScalars<VT>& a, RowMarks& skips,
                           RowMarks& positives, typename S::Cols* cols, RowScalars<VT>& ga_acc,
                           VT& gh_acc, VT& g_acc, T* dbeta) {
  using E = Epilogue<KIND, VT>;
  constexpr int R = E::kR;
  constexpr int64_t L = Lanes<VT>::kSize;
  const VT p = Lanes<VT>::load(row + j);
  const RowScalars<VT> b = col_scalars<VT, R>(pb.betaT, pb.m, j_global);
  const VT k(pb.inv_sqrt_c), s(pb.scale);
  const auto st = E::eval(p, a, b, k, VT(pb.kappa));
  const VT l = s * st.h + VT(pb.bias);
  const uint64_t skip_bits = skips.done() ? 0 : skips.take(j, L);
  VT g;
  if constexpr (S::kNeedsPositives) {
    const uint64_t pos_bits = positives.done() ? 0 : positives.take(j, L);
    g = S::template g<VT>(io, tg, rg, l, j, j_global, PairBits{skip_bits, pos_bits}, cols);
  } else {
    g = S::template g<VT>(io, tg, rg, l, j, j_global);
  }
  // Skipped pair: G = 0 exactly (overwritten, not multiplied), so every contribution below is
  // 0 whatever the stat's formula gave there.
  if (skip_bits) g = zero_lanes(g, skip_bits);
  RowScalars<VT> ga{}, gb{};
  const VT gp = E::grad(st, p, a, b, k, g * s, ga, gb);
  Lanes<VT>::store(gp, row + j);
  gh_acc = gh_acc + g * st.h;
  g_acc = g_acc + g;
  for (int r = 0; r < R; ++r) {
    ga_acc.v[r] = ga_acc.v[r] + ga.v[r];
    T* db = dbeta + r * pb.m + j_global;
    Lanes<VT>::store(Lanes<VT>::load(db) + gb.v[r], db);
  }
}

// Columns per super-block of the backward walk: sized so one part's private dY accumulator
// (super_m x K) is about kSuperBlockBytes, a multiple of kBlockM, at least one tile.
// FLASHNCE_CPU_SUPER_BYTES overrides the byte budget (read once; for tuning).
inline const int64_t kSuperBlockBytes = [] {
  const char* v = std::getenv("FLASHNCE_CPU_SUPER_BYTES");
  const long long parsed = v ? std::atoll(v) : 0;
  return parsed >= 4096 ? int64_t(parsed) : int64_t(4) << 20;
}();
template <class T>
int64_t super_block_cols(int64_t kdim) {
  const int64_t cols = kSuperBlockBytes / (std::max<int64_t>(kdim, 1) * int64_t(sizeof(T)));
  return std::max(kBlockM, cols / kBlockM * kBlockM);
}

// S = TileStat<STAT, T> (tile_bwd) or OnePass<STAT, T> (tile_fwd_grad).
template <int KIND, class S, class T>
void backward_walk(const Problem<T>& pb, const RelationView& rel, const BackwardIO<T>& io,
                   BackwardOut<T>& out) {
  using V = Vectorized<T>;
  using Cols = typename S::Cols;
  constexpr int R = Epilogue<KIND, T>::kR;
  constexpr int64_t L = V::size();
  static_assert(L <= 64, "RowMarks masks hold 64 lanes");
  const int64_t n = pb.n, m = pb.m, kdim = pb.k;
  const int64_t nblocks = (n + kBlockN - 1) / kBlockN;
  const int64_t nparts = num_parts(nblocks);
  const bool same = out.dy == nullptr;
  // Where the reduced dY goes: dx itself for the same operand (its M = N rows are x's).
  T* const dy = same ? out.dx : out.dy;
  T* const d_alpha = out.d_alpha;
  T* const d_betaT = out.d_betaT;
  // Columns are walked in super-blocks; within one, the parts (row ranges) run in parallel and
  // each accumulates the super-block's dY privately: part 0 straight into dy, the others into
  // a super_m x K buffer that is reduced into dy in part order before the next super-block.
  // Workspace O(threads super_m K), not O(threads M K). dX rows and d_alpha stay owned by one
  // part; d_beta (O(R M) per part) keeps whole-M per-part accumulators. Same operand with
  // several parts: part 0 has a buffer too (its dy is dx, whose rows other parts own).
  const int64_t super_m = nparts > 1 ? std::min(m, super_block_cols<T>(kdim)) : m;
  const int64_t first_buffered = same && nparts > 1 ? 0 : 1;  // parts >= this use a buffer
  std::vector<std::vector<T>> dy_extra(nparts - first_buffered);
  std::vector<T> dbeta_parts((nparts - 1) * R * m, T(0));
  std::vector<double> gh_parts(nparts, 0.0), g_parts(nparts, 0.0);
  // One pass: per-part column sums over all M columns (row-only ones dropped at the end).
  std::vector<Cols> col_parts;
  if constexpr (S::kForwardSums) col_parts.assign(nparts, Cols(m));

  for (int64_t c0 = 0; c0 < m; c0 += super_m) {
    const int64_t c1 = std::min(m, c0 + super_m), mc = c1 - c0;
    for_each_part(nparts, [&](int64_t part) {
      T* dy_part = dy + c0 * kdim;
      T* dbeta = part > 0 ? dbeta_parts.data() + (part - 1) * R * m : d_betaT;
      if (part >= first_buffered) {
        std::vector<T>& buf = dy_extra[part - first_buffered];
        if (buf.empty())
          buf.assign(super_m * kdim, T(0));  // first touch by the part's own thread
        else
          std::fill(buf.begin(), buf.begin() + mc * kdim, T(0));
        dy_part = buf.data();
      }
      std::vector<T> tile(kBlockN * kBlockM), col_factor(kBlockM);
      std::vector<int32_t> skip_cols(kBlockM), pos_cols(S::kNeedsPositives ? kBlockM : 0);
      Cols* cols = S::kForwardSums ? &col_parts[part] : nullptr;
      double gh_part = 0, g_part = 0;
      for (int64_t blk = part * nblocks / nparts; blk < (part + 1) * nblocks / nparts; ++blk) {
        const int64_t i0 = blk * kBlockN, bn = std::min(kBlockN, n - i0);
        for (int64_t j0 = c0; j0 < c1; j0 += kBlockM) {
          const int64_t bm = std::min(kBlockM, c1 - j0);
          gemm('T', 'N', bm, bn, kdim, T(1), pb.y + j0 * kdim, kdim, pb.x + i0 * kdim, kdim,
               T(0), tile.data(), bm);
          const auto tg = S::prepare_tile(io, i0, bn, j0, bm, col_factor.data());
          for (int64_t r = 0; r < bn; ++r) {
            const int64_t i = i0 + r;
            T* row = tile.data() + r * bm;
            const auto av = row_scalars<V, R>(pb.alpha, i);
            const auto as = row_scalars<T, R>(pb.alpha, i);
            auto rg = S::prepare_row(io, tg, i);
            const int64_t ns = rel.any_skips ? rel.row_skips(i, j0, bm, skip_cols.data()) : 0;
            RowMarks skips{skip_cols.data(), ns};
            RowMarks positives;
            if constexpr (S::kNeedsPositives) {
              if (rel.any_positives)
                positives = RowMarks{pos_cols.data(),
                                     rel.row_positives(i, j0, bm, skip_cols.data(), ns,
                                                       pos_cols.data())};
            }
            RowScalars<V> gav{};
            for (int q = 0; q < R; ++q) gav.v[q] = V(T(0));
            RowScalars<T> gas{};
            V ghv(T(0)), gv(T(0));
            T ghs = 0, gs = 0;
            int64_t j = 0;
            for (; j + L <= bm; j += L)
              backward_chunk<KIND, S>(pb, io, tg, rg, row, j, j0 + j, av, skips, positives, cols,
                                      gav, ghv, gv, dbeta);
            for (; j < bm; ++j)
              backward_chunk<KIND, S>(pb, io, tg, rg, row, j, j0 + j, as, skips, positives, cols,
                                      gas, ghs, gs, dbeta);
            if constexpr (S::kForwardSums) S::end_row(rg, out.row_stat[i]);
            // Raw (unfinalized) row sums accumulate in d_alpha across tiles and super-blocks.
            for (int q = 0; q < R; ++q) d_alpha[i * R + q] += gas.v[q] + Lanes<V>::sum(gav.v[q]);
            gh_part += double(ghs + Lanes<V>::sum(ghv));
            g_part += double(gs + Lanes<V>::sum(gv));
          }
          // dX[i0:i0+bn] += Gp Y[j0:j0+bm];  dY[j0:j0+bm] += Gp^T X[i0:i0+bn].
          gemm('N', 'N', kdim, bn, bm, T(1), pb.y + j0 * kdim, kdim, tile.data(), bm, T(1),
               out.dx + i0 * kdim, kdim);
          gemm('N', 'T', kdim, bm, bn, T(1), pb.x + i0 * kdim, kdim, tile.data(), bm, T(1),
               dy_part + (j0 - c0) * kdim, kdim);
        }
      }
      gh_parts[part] += gh_part;
      g_parts[part] += g_part;
    });
    // Reduce this super-block's per-part dY in part order (deterministic, no atomics); for
    // the same operand into dx rows [c0, c1), which the region above has finished writing.
    if (nparts > 1) {
      at::parallel_for(0, mc, 256, [&](int64_t b, int64_t e) {
        T* dst = dy + c0 * kdim;
        for (int64_t part = first_buffered; part < nparts; ++part) {
          const T* src = dy_extra[part - first_buffered].data();
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
  for (int64_t part = 0; part < nparts; ++part) {
    out.sum_gh += gh_parts[part];
    out.sum_g += g_parts[part];
  }
  if constexpr (S::kForwardSums) S::finish_cols(col_parts, pb.m0, out.col_stat);
}

}  // namespace FLASHNCE_ISA
}  // namespace cpu
}  // namespace flashnce
