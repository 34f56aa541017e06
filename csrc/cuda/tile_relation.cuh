// The relation seam of the tile walk: the role (skip / positive / negative) of each tile entry,
// computed from its global (row i, column j) and the relation's small index tensors, never from
// an N x M mask. The relation is a runtime value: one more template axis per relation would
// multiply the kernels. Per tile, one pass (fill_roles, a plain loop compiled once) writes the
// roles into a shared [BM][BN] byte tile that the epilogue reads; for "none, no flags"
// (RelationWalk::active == false) the pass, the key loads and the barrier are skipped and the
// epilogue treats every in-range entry as a negative, so the epilogue itself is compiled once.
//
// The walk runs in two directions (tile_walk.cuh): outer = rows of x / inner = rows of y, or
// outer = rows of y / inner = rows of x (kCols). The host resolves the index tensors into the
// walk's outer / inner sides (relation_walk below), and entry_role maps (outer, inner) back to
// (i, j), so the column pass uses the mirrored tests:
//   diagonal / skip-self  j == i + offset         (column pass: outer == inner + offset)
//   targets               j == t[i]               (row pass: t of the outer row; column pass:
//                                                  t of the inner row == the outer column)
//   labels                a[i] == b[j]            (outer / inner label, whichever side is which)
//   csr                   row i's sorted list     (column pass: the transposed t_* lists)
// Precedence: skip > positive > negative; FLAG_SKIP_POSITIVES turns positives into skips.
#pragma once

#include <cstdint>

#include "flashnce/spec.h"
#include "tile_detail.cuh"

namespace flashnce {
namespace cuda {
namespace detail {

// Entry roles; skip and positive share the values of kRoleSkip / kRolePositive.
constexpr unsigned char kEntrySkip = static_cast<unsigned char>(kRoleSkip);
constexpr unsigned char kEntryPositive = static_cast<unsigned char>(kRolePositive);
constexpr unsigned char kEntryNegative = 2;

// The relation as one walk direction sees it.
struct RelationWalk {
  bool active = false;  // false: relation none without flags (every pair a negative)
  int relation = kRelNone;
  int64_t flags = 0;
  int64_t diag_offset = 0;
  const int64_t* outer_key = nullptr;  // targets (row pass) or the outer side's labels
  const int64_t* inner_key = nullptr;  // targets (column pass) or the inner side's labels
  const int64_t* indptr = nullptr;     // csr lists of the outer side [outer + 1]
  const int64_t* indices = nullptr;    // inner indices, increasing within an outer row
  const int64_t* roles = nullptr;
  int64_t nnz = 0;                     // list bounds are clamped to [0, nnz]
};

inline RelationWalk relation_walk(const TileProblem& pb, bool cols) {
  RelationWalk w;
  w.active = pb.relation != kRelNone || pb.flags != 0;
  w.relation = pb.relation;
  w.flags = pb.flags;
  w.diag_offset = pb.diag_offset;
  const RelationIndex& ix = pb.index;
  if (pb.relation == kRelTargets) {
    (cols ? w.inner_key : w.outer_key) = ix.targets;
  } else if (pb.relation == kRelLabels) {
    w.outer_key = cols ? ix.col_labels : ix.row_labels;
    w.inner_key = cols ? ix.row_labels : ix.col_labels;
  } else if (pb.relation == kRelCsr) {
    w.indptr = cols ? ix.t_indptr : ix.indptr;
    w.indices = cols ? ix.t_indices : ix.indices;
    w.roles = cols ? ix.t_roles : ix.roles;
    w.nnz = ix.nnz;
  }
  return w;
}

// Shared-memory part of the relation for one block: keys of its outer rows, keys of the current
// inner tile, and the current tile's roles (csr_fill writes the listed csr roles first).
template <int BM, int BN>
struct RelationTile {
  int64_t outer_key[BM];
  int64_t inner_key[BN];
  unsigned char role[BM][BN];
};

// keys[r] = src[row0 + r] for the rows inside [0, count) (others are never read).
template <int ROWS>
__device__ __forceinline__ void load_keys(int64_t* keys, const int64_t* __restrict__ src,
                                          int64_t row0, int64_t count) {
  if (src == nullptr) return;
  for (int r = threadIdx.x; r < ROWS; r += kThreads)
    if (row0 + r < count) keys[r] = src[row0 + r];
}

// The csr list of one outer row, consumed tile by tile as the walk moves right. Thread r < BM
// owns outer row r (registers persist across the block's tiles).
struct CsrCursor {
  int64_t cur = 0, end = 0;
};

template <int BM>
__device__ __forceinline__ CsrCursor csr_begin(const RelationWalk& rel, int64_t o0,
                                               int64_t count) {
  CsrCursor cs;
  const int64_t go = o0 + static_cast<int64_t>(threadIdx.x);
  if (rel.relation == kRelCsr && threadIdx.x < BM && go < count) {
    const int64_t lo = rel.indptr[go], hi = rel.indptr[go + 1];
    cs.cur = lo < 0 ? 0 : lo > rel.nnz ? rel.nnz : lo;
    cs.end = hi < cs.cur ? cs.cur : hi > rel.nnz ? rel.nnz : hi;
  }
  return cs;
}

// rt.role[r][c] = csr role of (outer o0 + r, inner i0 + c): the listed role, else negative.
// Entries outside [i0, i0 + BN) are left for other tiles; out-of-order or negative indices are
// passed over (treated as negatives) rather than written out of bounds.
template <int BM, int BN>
__device__ __forceinline__ void csr_fill(RelationTile<BM, BN>& rt, CsrCursor& cs,
                                         const RelationWalk& rel, int64_t i0) {
  const int r = static_cast<int>(threadIdx.x);
  if (rel.relation != kRelCsr || r >= BM) return;
  for (int c = 0; c < BN; ++c) rt.role[r][c] = kEntryNegative;
  for (; cs.cur < cs.end; ++cs.cur) {
    const int64_t col = rel.indices[cs.cur];
    if (col >= i0 + BN) break;
    if (col < i0) continue;
    const int64_t role = rel.roles[cs.cur];
    rt.role[r][col - i0] = role == kRoleSkip       ? kEntrySkip
                          : role == kRolePositive ? kEntryPositive
                                                  : kEntryNegative;
  }
}

// Role of tile entry (outer row r = global go, inner column c = global gi).
template <bool kCols, int BM, int BN>
__device__ __forceinline__ unsigned char entry_role(const RelationWalk& rel,
                                                    const RelationTile<BM, BN>& rt, int r, int c,
                                                    int64_t go, int64_t gi) {
  const int64_t i = kCols ? gi : go, j = kCols ? go : gi;
  const bool on_diagonal = j == i + rel.diag_offset;
  bool positive = false, skip = false;
  switch (rel.relation) {
    case kRelDiagonal: positive = on_diagonal; break;
    case kRelTargets: positive = kCols ? go == rt.inner_key[c] : gi == rt.outer_key[r]; break;
    case kRelLabels: positive = rt.outer_key[r] == rt.inner_key[c]; break;
    case kRelCsr: {
      const unsigned char role = rt.role[r][c];  // from csr_fill
      positive = role == kEntryPositive;
      skip = role == kEntrySkip;
      break;
    }
    default: break;  // kRelNone; unknown ids never get here (tile_problem_valid)
  }
  if ((rel.flags & kFlagSkipSelf) && on_diagonal) skip = true;
  if ((rel.flags & kFlagSkipPositives) && positive) skip = true;
  return skip ? kEntrySkip : positive ? kEntryPositive : kEntryNegative;
}

// rt.role[r][c] = entry_role(...) for the tile's in-range entries, every thread a strided share
// (the csr roles of csr_fill are read and overwritten by the thread owning the entry). Needs the
// keys and csr_fill's writes visible (a barrier before); the epilogue reads after the next one.
template <bool kCols, int BM, int BN>
__device__ __forceinline__ void fill_roles(RelationTile<BM, BN>& rt, const RelationWalk& rel,
                                           int64_t o0, int64_t n_outer, int64_t i0,
                                           int64_t n_inner) {
#pragma unroll 1
  for (int idx = threadIdx.x; idx < BM * BN; idx += kThreads) {
    const int r = idx / BN, c = idx % BN;
    const int64_t go = o0 + r, gi = i0 + c;
    if (go < n_outer && gi < n_inner) rt.role[r][c] = entry_role<kCols>(rel, rt, r, c, go, gi);
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace flashnce
