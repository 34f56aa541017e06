"""Forward kernel: log-sum-exp of every row of the logit matrix, never materialising it.

    lse[i] = log sum_j exp(scale * h_KIND(<A_i, B_j>, SA_i, SB_j))     (j != i if EXCLUDE_DIAG)

Programs own BLOCK_A rows of A and walk all of B in BLOCK_B column blocks: tl.dot with fp32
accumulation (bf16/fp16 operands on tensor cores; fp32 as IEEE unless the caller allows TF32),
the geometry epilogue in fp32, and an online max/sum in base 2 (exp2 with scale * log2(e)
folded into one multiplier).

Row and column LSE: **two launches of this one kernel** (A, B) = (X, Y) then (Y, X). Every
epilogue kind is symmetric under swapping (x, alpha) with (y, beta), and so is the diagonal
mask, so the column LSE is the row LSE of the transposed problem. Why not one pass: a one-pass
kernel must merge column partials across row programs, either with atomics (float max/sum
atomics are not deterministic) or through a [N / BLOCK_A, M] buffer of partial (max, sum)
pairs, which grows like N * M / BLOCK_A, defeating the memory-linear point at large N. Two
launches cost a second GEMM (2x forward FLOPs), keep memory O(N + M), and are deterministic.

Shapes: A [NA, K], B [NB, K] (row-major, unit inner stride, any K); SA [NA, NR], SB [NB, NR]
fp32; scale, inv_sqrt_c 0-d fp32 tensors loaded in-kernel (no host sync). Output LSE [NA] fp32
(-inf for a row with no admissible column). Saved for backward by the caller: both LSEs only.
"""

import triton
import triton.language as tl

from .epilogue import epilogue_h
from .tiles import column_tile, row_block

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _lse_fwd_kernel(
    A, B, SA, SB, scale_ptr, isc_ptr, LSE,
    NA, NB, K, stride_a, stride_b,
    KEY_NA, KEY_NB,  # power-of-two buckets of NA / NB: autotune keys only
    KIND: tl.constexpr, NR: tl.constexpr, EXCLUDE_DIAG: tl.constexpr, KAPPA: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    tl.static_assert(BLOCK_K >= 16)
    rows, row_ok, rows64, a0, a1, a2, scale, inv_sqrt_c = row_block(
        SA, scale_ptr, isc_ptr, NA, NR, BLOCK_A)
    qk_scale = scale * LOG2E

    m_i = tl.full((BLOCK_A,), float("-inf"), tl.float32)
    s_i = tl.zeros((BLOCK_A,), tl.float32)
    for start in range(0, NB, BLOCK_B):
        cols64, col_ok, p, b0, b1, b2, valid = column_tile(
            A, B, SB, rows, rows64, row_ok, start, NB, K, stride_a, stride_b, NR, EXCLUDE_DIAG,
            BLOCK_A, BLOCK_B, BLOCK_K, INPUT_PRECISION, UPCAST)
        h = epilogue_h(p, a0, a1, a2, b0, b1, b2, inv_sqrt_c, KIND, KAPPA)
        l2 = tl.where(valid, h * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(l2, 1))
        # A row whose admissible entries so far are all -inf keeps m = -inf; shift by 0 there
        # so exp2(-inf - (-inf)) = nan never appears.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s_i = s_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(l2 - m_safe[:, None]), 1)
        m_i = m_new
    # No admissible column (or a padded row): -inf, without evaluating log2(0).
    lse = tl.where(s_i > 0.0, (m_i + tl.log2(tl.where(s_i > 0.0, s_i, 1.0))) * LN2,
                   float("-inf"))
    tl.store(LSE + rows64, lse, mask=row_ok)
