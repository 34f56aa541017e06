// Pair roles of the CPU walks (python/flashnce/core/spec.py, "Relations" and "Flags"): which
// pairs (i, j) of one tile row are skipped, i.e. left out of the statistic and given G = 0.
//
// The relation is a runtime value, read from a few small index tensors; no N x M mask exists.
// Per tile row i and column tile [j0, j0 + bm) the skipped columns come out as a sorted list of
// tile-local indices, built in
//   none / diagonal / targets   O(1): at most one self pair and one positive per row,
//   labels                      O(bm): a_i compared with b[j0 : j0 + bm],
//   csr                         O(log nnz_i + entries in the tile): row i's sorted entries.
// A stat that reads the positive role (pair_sum: z = +1 / -1) also gets the row's positive
// columns of the tile, built the same way (row_positives; skip > positive, so a positive that is
// also skipped is left out); the lse stat never asks for them.
//
// Host only: the view holds raw pointers into the op's (int64, contiguous) relation tensors.
// Column indices read from them are only ever compared with tile ranges, never used as
// addresses, so a bad target or csr index cannot read out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

#include "flashnce/spec.h"

namespace flashnce {
namespace cpu {
namespace FLASHNCE_ISA {

// Sorted tile-local columns of one tile row (its skips or its positives), consumed left to
// right by the row's chunks.
struct RowMarks {
  const int32_t* cols = nullptr;
  int64_t count = 0;
  int64_t next = 0;
  // The marked lanes of the chunk [j, j + width) as a bit mask (width <= 64); chunks must come
  // in increasing, contiguous order.
  uint64_t take(int64_t j, int64_t width) {
    uint64_t bits = 0;
    while (next < count && cols[next] < j + width) bits |= uint64_t(1) << (cols[next++] - j);
    return bits;
  }
  bool done() const { return next >= count; }
};

struct RelationView {
  int64_t relation = kRelNone;
  int64_t flags = 0;
  int64_t offset = 0;                    // self / diagonal pairs: j == i + offset
  const int64_t* targets = nullptr;      // [N]
  const int64_t* row_labels = nullptr;   // [N]
  const int64_t* col_labels = nullptr;   // [M]
  const int64_t* indptr = nullptr;       // [N + 1]
  const int64_t* indices = nullptr;      // [nnz], strictly increasing within a row
  const int64_t* roles = nullptr;        // [nnz], kRoleSkip or kRolePositive
  bool any_skips = false;                // false: no row ever has a skipped pair (fast path)
  bool any_positives = false;            // false: no row ever has a positive pair

  bool skip_self() const { return (flags & kFlagSkipSelf) != 0; }
  bool skip_positives() const { return (flags & kFlagSkipPositives) != 0; }

  // Tile-local column of j == i + offset if it lies in [j0, j0 + bm), else -1. Written so that
  // no sum can overflow for any int64 offset (i, j0, bm < 2^31).
  int64_t self_col(int64_t i, int64_t j0, int64_t bm) const {
    const int64_t lo = j0 - i;
    return offset >= lo && offset < lo + bm ? offset - lo : -1;
  }

  // Writes the skipped tile-local columns of row i in [j0, j0 + bm) to out (room for bm),
  // strictly increasing; returns their number.
  int64_t row_skips(int64_t i, int64_t j0, int64_t bm, int32_t* out) const {
    int64_t ns = 0;
    const bool skip_pos = skip_positives();
    if (relation == kRelLabels && skip_pos) {
      const int64_t a = row_labels[i];
      const int64_t* b = col_labels + j0;
      for (int64_t c = 0; c < bm; ++c)
        if (b[c] == a) out[ns++] = static_cast<int32_t>(c);
    } else if (relation == kRelCsr) {
      const int64_t* first = indices + indptr[i];
      const int64_t* last = indices + indptr[i + 1];
      for (const int64_t* e = std::lower_bound(first, last, j0); e != last && *e < j0 + bm; ++e) {
        const int64_t role = roles[e - indices];
        if (role == kRoleSkip || (skip_pos && role == kRolePositive))
          out[ns++] = static_cast<int32_t>(*e - j0);
      }
    }
    // A diagonal positive is the self pair: skipping either is one insertion.
    if (skip_self() || (skip_pos && relation == kRelDiagonal))
      ns = insert(out, ns, self_col(i, j0, bm));
    if (skip_pos && relation == kRelTargets) {
      const int64_t t = targets[i];
      ns = insert(out, ns, t >= j0 && t < j0 + bm ? t - j0 : -1);
    }
    return ns;
  }

  // Writes the positive (not skipped) tile-local columns of row i in [j0, j0 + bm) to out (room
  // for bm), strictly increasing; returns their number. skips[0:ns] is row_skips' list for the
  // same row and tile (empty when the relation has no skips).
  int64_t row_positives(int64_t i, int64_t j0, int64_t bm, const int32_t* skips, int64_t ns,
                        int32_t* out) const {
    if (skip_positives()) return 0;  // every positive is a skip
    int64_t np = 0;
    switch (relation) {
      case kRelDiagonal: {
        const int64_t c = self_col(i, j0, bm);
        if (c >= 0) out[np++] = static_cast<int32_t>(c);
        break;
      }
      case kRelTargets: {
        const int64_t t = targets[i];
        if (t >= j0 && t < j0 + bm) out[np++] = static_cast<int32_t>(t - j0);
        break;
      }
      case kRelLabels: {
        const int64_t a = row_labels[i];
        const int64_t* b = col_labels + j0;
        for (int64_t c = 0; c < bm; ++c)
          if (b[c] == a) out[np++] = static_cast<int32_t>(c);
        break;
      }
      case kRelCsr: {
        const int64_t* first = indices + indptr[i];
        const int64_t* last = indices + indptr[i + 1];
        for (const int64_t* e = std::lower_bound(first, last, j0); e != last && *e < j0 + bm; ++e)
          if (roles[e - indices] == kRolePositive) out[np++] = static_cast<int32_t>(*e - j0);
        break;
      }
      default:
        break;
    }
    if (ns == 0 || np == 0) return np;
    // Drop the skipped ones (skip > positive): both lists are sorted.
    int64_t w = 0, q = 0;
    for (int64_t r = 0; r < np; ++r) {
      while (q < ns && skips[q] < out[r]) ++q;
      if (q < ns && skips[q] == out[r]) continue;
      out[w++] = out[r];
    }
    return w;
  }

 private:
  // Inserts c (ignored when negative) into the sorted list out[0:ns], keeping it strictly
  // increasing.
  static int64_t insert(int32_t* out, int64_t ns, int64_t c) {
    if (c < 0) return ns;
    int32_t* pos = std::lower_bound(out, out + ns, static_cast<int32_t>(c));
    if (pos != out + ns && *pos == c) return ns;
    std::copy_backward(pos, out + ns, out + ns + 1);
    *pos = static_cast<int32_t>(c);
    return ns + 1;
  }
};

// Checks the relation's tensors against python/flashnce/core/spec.py (RELATION_TENSORS, int64,
// contiguous, sizes) and returns a view into them (valid while the op's arguments live).
inline RelationView make_relation(int64_t relation, int64_t flags, int64_t offset,
                                  at::TensorList tensors, int64_t n, int64_t m) {
  TORCH_CHECK(relation >= 0 && relation < kNumRelations, "flashnce: unknown relation ",
              relation, " (known: 0..", kNumRelations - 1, ")");
  TORCH_CHECK((flags & ~kAllFlags) == 0, "flashnce: unknown relation flags ", flags,
              " (known bits: ", kAllFlags, ")");
  TORCH_CHECK(static_cast<int64_t>(tensors.size()) == kRelationTensors[relation],
              "flashnce: relation ", relation, " takes ", kRelationTensors[relation],
              " index tensors, got ", tensors.size());
  for (size_t t = 0; t < tensors.size(); ++t) {
    const at::Tensor& v = tensors[t];
    TORCH_CHECK(v.scalar_type() == at::kLong && v.dim() == 1 && v.is_contiguous(),
                "flashnce: relation tensor ", t, " must be a contiguous 1-d int64 tensor, got ",
                v.scalar_type(), " of shape ", v.sizes());
    TORCH_CHECK(v.device().is_cpu(), "flashnce: relation tensor ", t, " must be on the CPU");
  }
  auto check_size = [&](int64_t t, int64_t size, const char* what) {
    TORCH_CHECK(tensors[t].numel() == size, "flashnce: relation tensor ", t, " (", what,
                ") must have ", size, " elements, got ", tensors[t].numel());
  };
  RelationView rel;
  rel.relation = relation;
  rel.flags = flags;
  rel.offset = offset;
  const bool skip_pos = rel.skip_positives();
  switch (relation) {
    case kRelNone:
      rel.any_skips = rel.skip_self();
      break;
    case kRelDiagonal:
      rel.any_skips = rel.skip_self() || skip_pos;
      rel.any_positives = !skip_pos;
      break;
    case kRelTargets:
      check_size(0, n, "targets [N]");
      rel.targets = tensors[0].data_ptr<int64_t>();
      rel.any_skips = rel.skip_self() || skip_pos;
      rel.any_positives = !skip_pos;
      break;
    case kRelLabels:
      check_size(0, n, "row_labels [N]");
      check_size(1, m, "col_labels [M]");
      rel.row_labels = tensors[0].data_ptr<int64_t>();
      rel.col_labels = tensors[1].data_ptr<int64_t>();
      rel.any_skips = rel.skip_self() || skip_pos;
      rel.any_positives = !skip_pos;
      break;
    case kRelCsr: {
      check_size(0, n + 1, "indptr [N+1]");
      const int64_t nnz = tensors[1].numel();
      check_size(2, nnz, "roles [nnz]");
      check_size(3, m + 1, "t_indptr [M+1]");
      check_size(4, nnz, "t_indices [nnz]");
      check_size(5, nnz, "t_roles [nnz]");
      rel.indptr = tensors[0].data_ptr<int64_t>();
      rel.indices = tensors[1].data_ptr<int64_t>();
      rel.roles = tensors[2].data_ptr<int64_t>();
      // O(N + nnz) host checks: every later read of indices / roles is in bounds.
      TORCH_CHECK(rel.indptr[0] == 0 && rel.indptr[n] == nnz,
                  "flashnce: csr indptr must start at 0 and end at nnz = ", nnz);
      bool any_skip_role = false, any_positive_role = false;
      for (int64_t i = 0; i < n; ++i) {
        TORCH_CHECK(rel.indptr[i] <= rel.indptr[i + 1], "flashnce: csr indptr decreases at row ",
                    i);
        for (int64_t e = rel.indptr[i]; e < rel.indptr[i + 1]; ++e) {
          const int64_t j = rel.indices[e];
          TORCH_CHECK(j >= 0 && j < m && (e == rel.indptr[i] || j > rel.indices[e - 1]),
                      "flashnce: csr indices of row ", i,
                      " must be strictly increasing column indices in [0, ", m, ")");
          TORCH_CHECK(rel.roles[e] == kRoleSkip || rel.roles[e] == kRolePositive,
                      "flashnce: csr roles must be ", kRoleSkip, " (skip) or ", kRolePositive,
                      " (positive), got ", rel.roles[e]);
          any_skip_role |= rel.roles[e] == kRoleSkip || skip_pos;
          any_positive_role |= rel.roles[e] == kRolePositive;
        }
      }
      rel.any_skips = rel.skip_self() || any_skip_role;
      rel.any_positives = any_positive_role && !skip_pos;
      break;
    }
    default:
      TORCH_CHECK(false, "flashnce: unknown relation ", relation);
  }
  return rel;
}

}  // namespace FLASHNCE_ISA
}  // namespace cpu
}  // namespace flashnce
