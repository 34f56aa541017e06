// The statistic seam of the tile walk: what a row's (or column's) non-skipped logits fold into,
// how partial states merge, and the upstream rule G_ij = dL/dl_ij of the backward. The walk
// (tile_walk.cuh) is written once against this interface; a new statistic is one more
// specialisation here, one Stat id in csrc/flashnce/spec.h, and one case in each of
// tile_launch.cuh's stat switches. Three instances: lse, pair_sum and masked_sum.
//
// Stat<STAT, Acc>:
//   kLocalGrad                     G_ij depends on the pair alone (no saved statistic), so the
//                                  stat and its gradient come from one walk (tile_fwd_grad)
//   kWidth                         values per row of the state (spec.h kStatStateWidth): row_stat
//                                  [n] (1) or [n, kWidth], and g_row likewise
//   State                          one row's partial state (lane-private during the walk)
//   init(State&)                   the empty state (no pair folded yet)
//   fold(State&, l, positive)      add one non-skipped logit l (positive: the pair's role)
//   merge(State&, const State&)    combine two partial states; commutative, so the xor
//                                  butterfly of warp_merge gives every lane the same value
//   shfl_xor(const State&, off)    the state held by lane ^ off
//   store(out, row, const State&)  write the row's kWidth values at out[row * kWidth + v]
// and the G rule, in one of two forms:
//   kLocalGrad == false (lse, masked_sum):
//   grad(g, l, saved, positive)    this side's term of G_ij, from its upstream gradient g and its
//                                  saved statistic (value 0 of the row's state); exactly 0 when
//                                  g == 0, whatever saved is (row-only columns pass g = 0).
//                                  G_ij = row term + column term.
//   kWidth == 2 (masked_sum) also has a value 1 that is linear in the logits, with no saved
//   statistic in its G term:
//   linear_grad(g1, positive)      g1 [positive] (the two sides' g1 summed first), added to the
//                                  two grad terms.
//   kLocalGrad == true (pair_sum): G_ij = (g_row[i] + g_col[j]) slope(l, positive)
//   slope(l, positive)             f'(l_ij): G per unit of upstream gradient, no saved statistic
//   fold_slope(State&, l, positive)
//                                  fold(st, l, positive) and return slope(l, positive), sharing
//                                  their work (tile_fwd_grad: g_row = 1, g_col = 0, so G = slope
//                                  in both walk directions)
// (The walk writes G = grad(row) + grad(column) at the call site rather than through a helper
// here: that keeps the lse kernels' generated code exactly what it was before the seam grew a
// second form.)
#pragma once

#include "epilogue_device.cuh"
#include "flashnce/spec.h"

namespace flashnce {
namespace cuda {

template <int STAT, class Acc>
struct Stat;

// lse: row_stat[i] = log sum_j exp l_ij (-inf when every pair is skipped); merge = logaddexp;
// G term = g exp(l - saved) per side. The state is an online (max m, sum s of exp(l - m));
// s == 0 means "nothing folded yet". G needs the finished statistic: no one-pass gradient.
template <class Acc>
struct Stat<kStatLse, Acc> {
  static constexpr bool kLocalGrad = false;
  static constexpr int kWidth = 1;
  struct State {
    Acc m, s;
  };
  using M = MathOps<Acc>;

  __device__ __forceinline__ static void init(State& st) {
    st.m = neg_inf<Acc>();
    st.s = Acc(0);
  }
  __device__ __forceinline__ static void fold(State& st, Acc l, bool /*positive*/) {
    if (l > st.m) {
      st.s = st.s * M::exp(st.m - l) + Acc(1);  // s == 0 while m == -inf: exp(-inf) = 0
      st.m = l;
    } else {
      st.s += M::exp(l - st.m);
    }
  }
  __device__ __forceinline__ static void merge(State& st, const State& o) {
    if (o.s == Acc(0)) return;
    if (st.s == Acc(0)) {
      st = o;
      return;
    }
    const Acc mx = st.m > o.m ? st.m : o.m;
    st.s = st.s * M::exp(st.m - mx) + o.s * M::exp(o.m - mx);
    st.m = mx;
  }
  __device__ __forceinline__ static State shfl_xor(const State& st, int off) {
    return {__shfl_xor_sync(0xffffffffu, st.m, off), __shfl_xor_sync(0xffffffffu, st.s, off)};
  }
  __device__ __forceinline__ static Acc value(const State& st) {
    return st.s > Acc(0) ? st.m + dev_log(st.s) : neg_inf<Acc>();
  }
  __device__ __forceinline__ static void store(Acc* out, int64_t row, const State& st) {
    out[row] = value(st);
  }
  __device__ __forceinline__ static Acc grad(Acc g, Acc l, Acc saved, bool /*positive*/) {
    // saved >= l for every non-skipped pair, so the exp never overflows; the select keeps a
    // zero upstream gradient exactly zero even against an unused (e.g. -inf) saved value.
    return g == Acc(0) ? Acc(0) : g * M::exp(l - saved);
  }
};

// pair_sum (SigLIP): row_stat[i] = sum_j f(l_ij, z_ij), f(l, z) = softplus(-z l), z = +1 for
// positives and -1 for negatives; 0 when every pair is skipped; merge = +;
// G_ij = (g_o + g_i) f'(l, z), f'(l, z) = -z sigmoid(-z l). With u = -z l and e = exp(-|u|)
// (the one exp of the pair): f = max(u, 0) + log1p(e), sigmoid(u) = 1 / (1 + e) for u >= 0 and
// e / (1 + e) otherwise, so neither overflows for any finite l.
template <class Acc>
struct Stat<kStatPairSum, Acc> {
  static constexpr bool kLocalGrad = true;
  static constexpr int kWidth = 1;
  struct State {
    Acc s;
  };
  using M = MathOps<Acc>;

  struct Pair {
    Acc f, slope;  // f(l, z) and f'(l, z)
  };
  __device__ __forceinline__ static Pair pair(Acc l, bool positive) {
    const Acc u = positive ? -l : l;
    const Acc e = M::exp(u < Acc(0) ? u : -u);
    const Acc inv = Acc(1) / (Acc(1) + e);
    const Acc sig = u >= Acc(0) ? inv : e * inv;  // sigmoid(u)
    return {(u > Acc(0) ? u : Acc(0)) + M::log1p(e), positive ? -sig : sig};
  }
  // f alone (the forward): the division of pair() is dead code here and is dropped.
  __device__ __forceinline__ static Acc softplus(Acc l, bool positive) {
    const Acc u = positive ? -l : l;
    return (u > Acc(0) ? u : Acc(0)) + M::log1p(M::exp(u < Acc(0) ? u : -u));
  }

  __device__ __forceinline__ static void init(State& st) { st.s = Acc(0); }
  __device__ __forceinline__ static void fold(State& st, Acc l, bool positive) {
    st.s += softplus(l, positive);
  }
  __device__ __forceinline__ static void merge(State& st, const State& o) { st.s += o.s; }
  __device__ __forceinline__ static State shfl_xor(const State& st, int off) {
    return {__shfl_xor_sync(0xffffffffu, st.s, off)};
  }
  __device__ __forceinline__ static Acc value(const State& st) { return st.s; }
  __device__ __forceinline__ static void store(Acc* out, int64_t row, const State& st) {
    out[row] = value(st);
  }
  __device__ __forceinline__ static Acc slope(Acc l, bool positive) {
    return pair(l, positive).slope;
  }
  __device__ __forceinline__ static Acc fold_slope(State& st, Acc l, bool positive) {
    const Pair pr = pair(l, positive);
    st.s += pr.f;
    return pr.slope;
  }
};

// masked_sum (SupCon): value 0 = lse's (the same online state, folds and merge: bitwise lse's
// row_stat), value 1 = sum over the positive pairs of l (0 when the row has none); merge =
// (logaddexp, +). G_ij = lse's two terms + (g1_row + g1_col) [positive]: the lse part needs
// the finished statistic, so no one-pass gradient.
template <class Acc>
struct Stat<kStatMaskedSum, Acc> {
  static constexpr bool kLocalGrad = false;
  static constexpr int kWidth = 2;
  using Lse = Stat<kStatLse, Acc>;
  struct State {
    typename Lse::State lse;
    Acc pos;  // sum of the positives' logits
  };

  __device__ __forceinline__ static void init(State& st) {
    Lse::init(st.lse);
    st.pos = Acc(0);
  }
  __device__ __forceinline__ static void fold(State& st, Acc l, bool positive) {
    Lse::fold(st.lse, l, positive);
    if (positive) st.pos += l;
  }
  __device__ __forceinline__ static void merge(State& st, const State& o) {
    st.pos += o.pos;
    Lse::merge(st.lse, o.lse);
  }
  __device__ __forceinline__ static State shfl_xor(const State& st, int off) {
    return {Lse::shfl_xor(st.lse, off), __shfl_xor_sync(0xffffffffu, st.pos, off)};
  }
  __device__ __forceinline__ static void store(Acc* out, int64_t row, const State& st) {
    out[row * kWidth] = Lse::value(st.lse);
    out[row * kWidth + 1] = st.pos;
  }
  __device__ __forceinline__ static Acc grad(Acc g, Acc l, Acc saved, bool positive) {
    return Lse::grad(g, l, saved, positive);
  }
  __device__ __forceinline__ static Acc linear_grad(Acc g1, bool positive) {
    return positive ? g1 : Acc(0);
  }
};

static_assert(Stat<kStatLse, float>::kWidth == kStatStateWidth[kStatLse] &&
                  Stat<kStatPairSum, float>::kWidth == kStatStateWidth[kStatPairSum] &&
                  Stat<kStatMaskedSum, float>::kWidth == kStatStateWidth[kStatMaskedSum],
              "state widths as spec.h");

// All lanes of the warp end with the merge of the 32 lane states (fixed butterfly order).
template <int STAT, class Acc>
__device__ __forceinline__ void warp_merge(typename Stat<STAT, Acc>::State& st) {
  using S = Stat<STAT, Acc>;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) S::merge(st, S::shfl_xor(st, off));
}

}  // namespace cuda
}  // namespace flashnce
