// What one tile_fwd / tile_bwd call hands to the CPU walks (python/flashnce/core/spec.py), the
// tile sizes, and the split of the row blocks into per-thread parts.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "cpu/simd.h"

namespace flashnce {
namespace cpu {
namespace FLASHNCE_ISA {

// 256 x 512 fp32 tile = 512 KiB: stays in a core's L2 between the GEMM and the epilogue
// (measured on 2 cores of an EPYC: 256 x 512 beat 256 x 256, 512 x 256 and 128 x 512).
// FLASHNCE_CPU_BLOCK_N / FLASHNCE_CPU_BLOCK_M override them (read once; for tuning).
inline int64_t env_block(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  const long long parsed = v ? std::atoll(v) : 0;
  return parsed >= 8 && parsed <= 8192 ? parsed : fallback;
}
inline const int64_t kBlockN = env_block("FLASHNCE_CPU_BLOCK_N", 256);
inline const int64_t kBlockM = env_block("FLASHNCE_CPU_BLOCK_M", 512);

// The operands in the compute dtype T (bf16 / fp16 inputs are widened once by the binding).
// logit_ij = scale * h_kind(<x_i, y_j>, alpha_i, beta_j) + bias.
template <class T>
struct Problem {
  const T* x;       // [N, K]
  const T* y;       // [M, K]
  const T* alpha;   // [N, R]
  const T* betaT;   // [R, M] (transposed: columns load as vectors)
  int64_t n, m, k;
  int64_t m0;       // columns j < m0 have a column statistic; j >= m0 are seen by rows only
  T scale, inv_sqrt_c, bias, kappa;
};

// Split nblocks row blocks into contiguous ranges, one per part; a part is run by one thread,
// and the parts' partial results are combined in part order (deterministic for a given
// thread count).
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

}  // namespace FLASHNCE_ISA
}  // namespace cpu
}  // namespace flashnce
