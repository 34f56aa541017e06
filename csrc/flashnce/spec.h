// The tile contract's axis tables for the C++ CPU and CUDA kernels: a mirror of
// python/flashnce/core/spec.py (the definition; tests/test_spec.py checks that the two agree).
// Indices are part of the ops' ABI: append, never renumber.
//
//   options[kOptKind]       epilogue kind (EpilogueKind in geometry.h)
//   options[kOptStat]       statistic (Stat)
//   options[kOptRelation]   relation (Relation); its index tensors arrive as Tensor[] relation
//   options[kOptFlags]      kFlagSkipSelf | kFlagSkipPositives (| kFlagSameOperand, CPU)
//   options[kOptDiagOffset] self / diagonal pairs are j == i + offset
//   options[kOptColsBoth]   M0: columns j >= M0 are seen by rows only
//   theta = (scale, inv_sqrt_c, bias); logit = scale * h + bias
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FLASHNCE_SPEC_HD __host__ __device__ __forceinline__
#else
#define FLASHNCE_SPEC_HD inline
#endif

namespace flashnce {

// lse: row / column log-sum-exp; pair_sum: row / column sums of softplus(-z l) (z = +1 for
// positives, -1 for negatives), G local to the pair (tile_fwd_grad); masked_sum: the lse and the
// sum of the positives' logits, a state of two values per row ([N, 2]: lse, masked sum);
// count: the rank of each row's (column's) best positive among its negatives, ties broken by
// index, -1 without a positive (forward only; thresholds found in the op, two phases).
enum Stat : int { kStatLse = 0, kStatPairSum = 1, kStatMaskedSum = 2, kStatCount = 3 };
constexpr int kNumStats = 4;
// Values per row of each stat's state (python: STAT_INFO[stat]["state_width"]): row_stat,
// col_stat, g_row and g_col are [N, w] / [M0, w] row-major (1: [N]).
constexpr int kStatStateWidth[kNumStats] = {1, 1, 2, 1};

enum Relation : int {
  kRelNone = 0,
  kRelDiagonal = 1,
  kRelTargets = 2,
  kRelLabels = 3,
  kRelCsr = 4
};
constexpr int kNumRelations = 5;
// Number of index tensors each relation carries (python: RELATION_TENSORS).
constexpr int kRelationTensors[kNumRelations] = {0, 0, 1, 2, 6};

constexpr int64_t kRoleSkip = 0;
constexpr int64_t kRolePositive = 1;

constexpr int64_t kFlagSkipSelf = 1;
constexpr int64_t kFlagSkipPositives = 2;
constexpr int64_t kAllFlags = kFlagSkipSelf | kFlagSkipPositives;  // the relation flags
// Backward mode, not a relation flag: y is x (M = N, same values); tile_bwd / tile_fwd_grad
// return dX + dY as dx and an empty dy [0, K]; the forward ignores it. Only kernels that
// implement it accept it (CPU); the others refuse it as an unknown flag.
constexpr int64_t kFlagSameOperand = 4;

constexpr int kOptKind = 0;
constexpr int kOptStat = 1;
constexpr int kOptRelation = 2;
constexpr int kOptFlags = 3;
constexpr int kOptDiagOffset = 4;
constexpr int kOptColsBoth = 5;
constexpr int kNumOptions = 6;

constexpr int kThetaScale = 0;
constexpr int kThetaInvSqrtC = 1;
constexpr int kThetaBias = 2;
constexpr int kNumTheta = 3;

}  // namespace flashnce
