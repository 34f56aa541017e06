// Forward tile walk: row_stat [N] and col_stat [M0] of one tile_fwd call ([N, w] / [M0, w],
// row-major, for a stat whose state has w = kStatStateWidth values per row), generic over the
// epilogue kind and the statistic (cpu/stats.h).
//
// Rows go in blocks of kBlockN, columns in tiles of kBlockM; the row blocks are split into one
// contiguous range per thread ("part"). Per tile: one single-threaded BLAS call writes the dot
// products into a thread-local buffer, the epilogue overwrites them with the logits
// l = scale * h + bias on at::vec::Vectorized lanes, the relation's skipped pairs get the
// stat's kSkipped value, the stat observes each finished row while it is in L1 (the lse
// stat: row and column maxima; a stat with kNeedsPositives, pair_sum, also gets the row's
// positive columns and folds the row right there), and then folds the tile into the block's
// row states and the
// part's column states. The parts' column states are merged in part order at the end, so a run
// is bitwise reproducible for a given thread count. Memory: one tile per thread plus
// O(threads M0) column states.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/problem.h"
#include "cpu/relation.h"
#include "cpu/simd.h"
#include "cpu/stats.h"
#include "flashnce/spec.h"

namespace flashnce {
namespace cpu {
namespace FLASHNCE_ISA {

// Logits of one chunk of a tile row, in place over its dot products.
template <int KIND, class VT, class T>
inline void logits_chunk(const Problem<T>& pb, T* row, int64_t j, const RowScalars<VT>& a,
                         int64_t j_global) {
  using E = Epilogue<KIND, VT>;
  const VT p = Lanes<VT>::load(row + j);
  const RowScalars<VT> b = col_scalars<VT, E::kR>(pb.betaT, pb.m, j_global);
  const VT h = E::eval(p, a, b, VT(pb.inv_sqrt_c), VT(pb.kappa)).h;
  Lanes<VT>::store(VT(pb.scale) * h + VT(pb.bias), row + j);
}

// tile[r, c] = <x_{i0+r}, y_{j0+c}>, row-major with leading dimension bm: one single-threaded
// BLAS call. The same call for the same tile gives the same bits (walk_count.h relies on it).
template <class T>
inline void tile_dots(const Problem<T>& pb, int64_t i0, int64_t bn, int64_t j0, int64_t bm,
                      T* tile) {
  gemm('T', 'N', bm, bn, pb.k, T(1), pb.y + j0 * pb.k, pb.k, pb.x + i0 * pb.k, pb.k, T(0), tile,
       bm);
}

// Row i of a tile at column j0 (bm entries), in place: dot products -> logits, in vector
// chunks from the tile's first column and a scalar tail (so a given (i, j) of a given tile grid
// always takes the same path).
template <int KIND, class T>
inline void row_logits(const Problem<T>& pb, T* row, int64_t i, int64_t j0, int64_t bm) {
  using V = Vectorized<T>;
  constexpr int R = Epilogue<KIND, T>::kR;
  constexpr int64_t L = V::size();
  const auto av = row_scalars<V, R>(pb.alpha, i);
  const auto as = row_scalars<T, R>(pb.alpha, i);
  int64_t j = 0;
  for (; j + L <= bm; j += L) logits_chunk<KIND>(pb, row, j, av, j0 + j);
  for (; j < bm; ++j) logits_chunk<KIND>(pb, row, j, as, j0 + j);
}

template <int KIND, int STAT, class T>
void forward_walk(const Problem<T>& pb, const RelationView& rel, T* row_stat, T* col_stat) {
  using S = TileStat<STAT, T>;
  const int64_t n = pb.n, m = pb.m, m0 = pb.m0;
  const int64_t nblocks = (n + kBlockN - 1) / kBlockN;
  const int64_t nparts = num_parts(nblocks);
  std::vector<typename S::Cols> cols(nparts, typename S::Cols(m0));

  for_each_part(nparts, [&](int64_t part) {
    std::vector<T> tile(kBlockN * kBlockM);
    std::vector<int32_t> skips(kBlockM), positives(S::kNeedsPositives ? kBlockM : 0);
    typename S::Rows rows;
    typename S::Cols& cs = cols[part];
    for (int64_t blk = part * nblocks / nparts; blk < (part + 1) * nblocks / nparts; ++blk) {
      const int64_t i0 = blk * kBlockN, bn = std::min(kBlockN, n - i0);
      rows.start();
      for (int64_t j0 = 0; j0 < m; j0 += kBlockM) {
        const int64_t bm = std::min(kBlockM, m - j0);
        const int64_t bc = std::clamp<int64_t>(m0 - j0, 0, bm);
        tile_dots(pb, i0, bn, j0, bm, tile.data());
        S::begin_tile(rows, bc);
        for (int64_t r = 0; r < bn; ++r) {
          const int64_t i = i0 + r;
          T* row = tile.data() + r * bm;
          row_logits<KIND>(pb, row, i, j0, bm);
          int64_t ns = 0;
          if (rel.any_skips) {
            ns = rel.row_skips(i, j0, bm, skips.data());
            for (int64_t q = 0; q < ns; ++q) row[skips[q]] = S::kSkipped;
          }
          // While the row is in L1.
          if constexpr (S::kNeedsPositives) {
            RowMarks pos;
            if (rel.any_positives)
              pos = RowMarks{positives.data(), rel.row_positives(i, j0, bm, skips.data(), ns,
                                                                 positives.data())};
            S::observe_row(rows, row, r, bm, bc, pos);
          } else {
            S::observe_row(rows, row, r, bm, bc);
          }
        }
        S::fold_tile(rows, cs, tile.data(), bn, bm, bc, j0);
      }
      S::finish_rows(rows, bn, row_stat + i0 * kStatStateWidth[STAT]);
    }
  });
  S::finish_cols(cols, m0, col_stat);
}

}  // namespace FLASHNCE_ISA
}  // namespace cpu
}  // namespace flashnce
