"""Forward kernel: one statistic per row of the logit matrix, never materialising it.

    l_ij     = scale * h_KIND(<A_i, B_j>, SA_i, SB_j) + bias
    OUT[i]   = STAT over the kept j of l_ij          (lse: log sum_j exp l_ij, -inf if none;
                                                      pair_sum: sum_j softplus(-z_ij l_ij);
                                                      masked_sum: the pair (lse, sum of the
                                                      positives' l_ij), OUT [NA, 2])

Programs own BLOCK_A rows of A and walk all NB rows of B in BLOCK_B column blocks: tl.dot with
fp32 accumulation (bf16/fp16 operands on tensor cores; fp32 as IEEE unless the caller allows
TF32), the geometry epilogue in fp32 (``epilogue.py``), the relation's skip mask
(``relation.py``; with ``POSITIVES`` also the positive role, for pair_sum's z and
masked_sum's sum) and the
statistic's fold in base 2 (``stats.py``).

Row and column statistics: **two launches of this one kernel**, (A, B) = (X, Y) then (Y, X).
Every epilogue kind is symmetric under swapping (x, alpha) with (y, beta) and the relation is
swapped by the launcher, so the column statistic is the row statistic of the transposed
problem. Why not one pass: a one-pass kernel must merge column partials across row programs,
with atomics (float max/sum atomics are not deterministic) or a [N / BLOCK_A, M] buffer of
partial states, which grows like N * M / BLOCK_A. Two launches cost a second GEMM, keep memory
O(N + M) and are deterministic. Row-only columns (j >= M0) need no flag: the column launch
simply has NA = M0 rows.

Shapes: A [NA, K], B [NB, K] (row-major, unit inner stride, any K); SA [NA, NR], SB [NB, NR]
fp32; THETA [3] fp32 (scale, 1/sqrt(c), bias), loaded in-kernel; R0..R2 the relation's int64
tensors. Output OUT [NA] fp32 ([NA, 2] for masked_sum). Saved for backward by the caller: both
statistics only.
"""

import triton
import triton.language as tl

from .epilogue import epilogue_h
from .relation import relation_rows, tile_roles
from .stats import LOG2E, stat_fold, stat_init, stat_store
from .tiles import column_block, column_tile, row_block


@triton.jit
def _tile_fwd_kernel(
    A, B, SA, SB, THETA, R0, R1, R2, OUT,
    NA, NB, K, stride_a, stride_b, diag_offset,
    KEY_NA, KEY_NB,  # power-of-two buckets of NA / NB: autotune keys only
    KIND: tl.constexpr, NR: tl.constexpr, STAT: tl.constexpr, RELATION: tl.constexpr,
    SKIP_SELF: tl.constexpr, SKIP_POSITIVES: tl.constexpr, SWAPPED: tl.constexpr,
    POSITIVES: tl.constexpr,
    KAPPA: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    tl.static_assert(BLOCK_K >= 16)
    rows, row_ok, rows64, a0, a1, a2, scale, inv_sqrt_c, bias = row_block(
        SA, THETA, NA, NR, BLOCK_A)
    f0, f1, n_max = relation_rows(R0, rows64, row_ok, RELATION, SWAPPED)
    # l2 = l log2(e) = h (scale log2 e) + bias log2 e: one FMA per entry.
    qk_scale = scale * LOG2E
    qk_bias = bias * LOG2E

    s0, s1, s2 = stat_init(BLOCK_A, STAT)
    for start in range(0, NB, BLOCK_B):
        cols, col_ok, cols64 = column_block(start, NB, BLOCK_B)
        p, b0, b1, b2, valid = column_tile(A, B, SB, rows64, row_ok, cols64, col_ok, K,
                                           stride_a, stride_b, NR, BLOCK_A, BLOCK_B, BLOCK_K,
                                           INPUT_PRECISION, UPCAST)
        keep, pos = tile_roles(valid, rows, cols, cols64, col_ok, f0, f1, n_max, R0, R1, R2,
                               diag_offset, RELATION, SKIP_SELF, SKIP_POSITIVES, SWAPPED,
                               POSITIVES)
        h = epilogue_h(p, a0, a1, a2, b0, b1, b2, inv_sqrt_c, KIND, KAPPA)
        s0, s1, s2 = stat_fold(s0, s1, s2, h * qk_scale + qk_bias, keep, pos, STAT,
                               POSITIVES)
    stat_store(OUT, rows64, row_ok, s0, s1, s2, STAT)
