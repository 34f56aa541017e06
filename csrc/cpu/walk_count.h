// The count walk (python/flashnce/core/spec.py, "Statistic count"): the 0-based rank of each
// row's and each column's best positive among its negatives, ties broken by index, -1 without
// a positive. Forward only.
//
// A rank compares every logit of a row with the row's best positive tau_i, so tau_i must be
// known first and must be the same bits as the l_ij it is compared with. Both phases walk the
// forward walk's tile grid (kBlockN row blocks, kBlockM column tiles) with its tile_dots /
// row_logits, so a given (i, j) is computed by the same BLAS call and the same epilogue lane
// in both:
//   phase 1  the tiles that hold a positive (for diagonal / targets the one or two column
//            tiles of each row block: O(N kBlockM K) work; for labels / csr those of the
//            tiles whose rows have one), GEMM'd and turned into logits only then; per row
//            (tau_i, t_i) = (max positive logit, smallest column attaining it), per column
//            (tau_j, s_j) likewise over rows, in one part's column arrays, merged in part
//            order (the merge -- larger tau, then smaller index -- is exact and
//            order-free anyway);
//   phase 2  every tile: per row #{c : l > tau_i or (l == tau_i and j < t_i)} over the whole
//            tile row (a compare-and-add loop the compiler vectorises), minus the skipped and
//            positive entries that satisfied it; per column the same with (tau_j, s_j) into
//            the part's int32 column counts, summed over the parts at the end.
// Parallel over row blocks, one contiguous range per thread (for_each_part), deterministic.
// Memory: one tile per thread, O(N + threads M0) thresholds and counts.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/problem.h"
#include "cpu/relation.h"
#include "cpu/simd.h"
#include "cpu/walk_forward.h"
#include "flashnce/spec.h"

namespace flashnce {
namespace cpu {
namespace FLASHNCE_ISA {

constexpr int32_t kCountNoIndex = std::numeric_limits<int32_t>::max();  // no positive (yet)

// Whether (l, idx) beats the threshold (tau, t): a larger logit, or the same and a smaller
// index. The phase-1 update and the phase-2 count are the same predicate.
template <class T>
inline bool count_above(T l, int64_t idx, T tau, int64_t t) {
  return l > tau || (l == tau && idx < t);
}

// Row i's positive tile-local columns in [j0, j0 + bm) (skips removed), into pos; skips gets
// the row's skipped columns (ns of them).
inline int64_t count_marks(const RelationView& rel, int64_t i, int64_t j0, int64_t bm,
                           int32_t* skips, int64_t& ns, int32_t* pos) {
  ns = rel.any_skips ? rel.row_skips(i, j0, bm, skips) : 0;
  return rel.any_positives ? rel.row_positives(i, j0, bm, skips, ns, pos) : 0;
}

template <int KIND, class T>
void count_walk(const Problem<T>& pb, const RelationView& rel, T* row_stat, T* col_stat) {
  const int64_t n = pb.n, m = pb.m, m0 = pb.m0;
  const int64_t nblocks = (n + kBlockN - 1) / kBlockN;
  const int64_t nparts = num_parts(nblocks);
  std::vector<T> row_tau(n, neg_inf<T>()), col_tau(m0, neg_inf<T>());
  std::vector<int32_t> row_t(n, kCountNoIndex), col_s(m0, kCountNoIndex);
  std::vector<int64_t> row_count(n, 0);
  std::vector<int32_t> col_count(m0, 0);

  if (rel.any_positives) {
    // ---- phase 1: thresholds ------------------------------------------------------------
    std::vector<std::vector<T>> part_tau(nparts);
    std::vector<std::vector<int32_t>> part_s(nparts);
    for_each_part(nparts, [&](int64_t part) {
      std::vector<T> tile(kBlockN * kBlockM);
      std::vector<int32_t> skips(kBlockM), pos(kBlockM);
      std::vector<T>& ctau = part_tau[part];
      std::vector<int32_t>& cs = part_s[part];
      ctau.assign(m0, neg_inf<T>());
      cs.assign(m0, kCountNoIndex);
      for (int64_t blk = part * nblocks / nparts; blk < (part + 1) * nblocks / nparts; ++blk) {
        const int64_t i0 = blk * kBlockN, bn = std::min(kBlockN, n - i0);
        for (int64_t j0 = 0; j0 < m; j0 += kBlockM) {
          const int64_t bm = std::min(kBlockM, m - j0);
          const int64_t bc = std::clamp<int64_t>(m0 - j0, 0, bm);
          int64_t ns = 0;
          bool any = false;  // no GEMM for a tile without positives
          for (int64_t r = 0; r < bn && !any; ++r)
            any = count_marks(rel, i0 + r, j0, bm, skips.data(), ns, pos.data()) > 0;
          if (!any) continue;
          tile_dots(pb, i0, bn, j0, bm, tile.data());
          for (int64_t r = 0; r < bn; ++r) {
            const int64_t i = i0 + r;
            const int64_t np = count_marks(rel, i, j0, bm, skips.data(), ns, pos.data());
            if (np == 0) continue;
            T* row = tile.data() + r * bm;
            row_logits<KIND>(pb, row, i, j0, bm);
            for (int64_t q = 0; q < np; ++q) {
              const int64_t c = pos[q], j = j0 + c;
              const T l = row[c];
              if (count_above(l, j, row_tau[i], int64_t(row_t[i]))) {
                row_tau[i] = l;
                row_t[i] = static_cast<int32_t>(j);
              }
              if (c < bc && count_above(l, i, ctau[j], int64_t(cs[j]))) {
                ctau[j] = l;
                cs[j] = static_cast<int32_t>(i);
              }
            }
          }
        }
      }
    });
    for (int64_t p = 0; p < nparts; ++p)
      for (int64_t j = 0; j < m0; ++j)
        if (count_above(part_tau[p][j], int64_t(part_s[p][j]), col_tau[j], int64_t(col_s[j]))) {
          col_tau[j] = part_tau[p][j];
          col_s[j] = part_s[p][j];
        }

    // ---- phase 2: counts ------------------------------------------------------------------
    std::vector<std::vector<int32_t>> part_count(nparts);
    for_each_part(nparts, [&](int64_t part) {
      std::vector<T> tile(kBlockN * kBlockM);
      std::vector<int32_t> skips(kBlockM), pos(kBlockM);
      std::vector<int32_t>& cc = part_count[part];
      cc.assign(m0, 0);
      for (int64_t blk = part * nblocks / nparts; blk < (part + 1) * nblocks / nparts; ++blk) {
        const int64_t i0 = blk * kBlockN, bn = std::min(kBlockN, n - i0);
        for (int64_t j0 = 0; j0 < m; j0 += kBlockM) {
          const int64_t bm = std::min(kBlockM, m - j0);
          const int64_t bc = std::clamp<int64_t>(m0 - j0, 0, bm);
          tile_dots(pb, i0, bn, j0, bm, tile.data());
          const T* ctau = col_tau.data() + j0;
          const int32_t* cs = col_s.data() + j0;
          int32_t* cnt = cc.data() + j0;
          for (int64_t r = 0; r < bn; ++r) {
            const int64_t i = i0 + r;
            T* row = tile.data() + r * bm;
            row_logits<KIND>(pb, row, i, j0, bm);
            int64_t ns = 0;
            const int64_t np = count_marks(rel, i, j0, bm, skips.data(), ns, pos.data());
            const bool has_row = row_t[i] != kCountNoIndex;
            const T tau = row_tau[i];
            const int64_t tl = int64_t(row_t[i]) - j0;  // the threshold's tile-local column
            if (has_row) {
              int64_t k = 0;
              for (int64_t c = 0; c < bm; ++c)
                k += (row[c] > tau) | ((row[c] == tau) & (c < tl));
              row_count[i] += k;
            }
            const int32_t ii = static_cast<int32_t>(i);
            for (int64_t c = 0; c < bc; ++c)
              cnt[c] += (row[c] > ctau[c]) | ((row[c] == ctau[c]) & (ii < cs[c]));
            // Skipped and positive entries are not negatives: take back what they added.
            auto take_back = [&](const int32_t* cols, int64_t count) {
              for (int64_t q = 0; q < count; ++q) {
                const int64_t c = cols[q];
                if (has_row && count_above(row[c], c, tau, tl)) --row_count[i];
                if (c < bc && count_above(row[c], i, ctau[c], int64_t(cs[c]))) --cnt[c];
              }
            };
            take_back(skips.data(), ns);
            take_back(pos.data(), np);
          }
        }
      }
    });
    for (int64_t p = 0; p < nparts; ++p)
      for (int64_t j = 0; j < m0; ++j) col_count[j] += part_count[p][j];
  }

  for (int64_t i = 0; i < n; ++i)
    row_stat[i] = row_t[i] == kCountNoIndex ? T(-1) : static_cast<T>(row_count[i]);
  for (int64_t j = 0; j < m0; ++j)
    col_stat[j] = col_s[j] == kCountNoIndex ? T(-1) : static_cast<T>(col_count[j]);
}

}  // namespace FLASHNCE_ISA
}  // namespace cpu
}  // namespace flashnce
