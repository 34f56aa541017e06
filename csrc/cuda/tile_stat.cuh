// The statistic seam of the tile walk: what a row's (or column's) non-skipped logits fold into,
// how partial states merge, and the upstream rule G_ij = dL/dl_ij of the backward. The walk
// (tile_walk.cuh) is written once against this interface; a new statistic is one more
// specialisation here, one Stat id in csrc/flashnce/spec.h, and one case in
// tile_launch.cuh's stat switch.
//
// Stat<STAT, Acc>:
//   State                          one row's partial state (lane-private during the walk)
//   init(State&)                   the empty state (no pair folded yet)
//   fold(State&, l, positive)      add one non-skipped logit l (positive: the pair's role)
//   merge(State&, const State&)    combine two partial states; commutative, so the xor
//                                  butterfly of warp_merge gives every lane the same value
//   shfl_xor(const State&, off)    the state held by lane ^ off
//   value(const State&)            the statistic stored in row_stat / col_stat
//   grad(g, l, saved, positive)    this side's term of G_ij, from its upstream gradient g and its
//                                  saved statistic; exactly 0 when g == 0, whatever saved is
//                                  (row-only columns pass g = 0)
#pragma once

#include "epilogue_device.cuh"
#include "flashnce/spec.h"

namespace flashnce {
namespace cuda {

template <int STAT, class Acc>
struct Stat;

// lse: row_stat[i] = log sum_j exp l_ij (-inf when every pair is skipped); merge = logaddexp;
// G term = g exp(l - saved). The state is an online (max m, sum s of exp(l - m)); s == 0 means
// "nothing folded yet".
template <class Acc>
struct Stat<kStatLse, Acc> {
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
  __device__ __forceinline__ static Acc grad(Acc g, Acc l, Acc saved, bool /*positive*/) {
    // saved >= l for every non-skipped pair, so the exp never overflows; the select keeps a
    // zero upstream gradient exactly zero even against an unused (e.g. -inf) saved value.
    return g == Acc(0) ? Acc(0) : g * M::exp(l - saved);
  }
};

// All lanes of the warp end with the merge of the 32 lane states (fixed butterfly order).
template <int STAT, class Acc>
__device__ __forceinline__ void warp_merge(typename Stat<STAT, Acc>::State& st) {
  using S = Stat<STAT, Acc>;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) S::merge(st, S::shfl_xor(st, off));
}

}  // namespace cuda
}  // namespace flashnce
