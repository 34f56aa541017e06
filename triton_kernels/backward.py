"""Backward kernel: gradients of the row / column statistic pair, recomputing logit tiles.

With upstream gradients gA [NA] (of stA) and gB [NB] (of stB) and the statistic's rule
(``stats.stat_grad``; lse: G_ij = gA_i exp(l_ij - stA_i) + gB_j exp(l_ij - stB_j); pair_sum:
G_ij = (gA_i + gB_j) f'(l_ij, z_ij), which reads no statistic; masked_sum: lse's G with
gA_i = gA[i, 0], gB_j = gB[j, 0], stA_i = stA[i, 0], stB_j = stB[j, 0], plus gA[i, 1] + gB[j, 1]
on the positives),

    G_ij   = 0 exactly on skipped and out-of-range pairs
    dA_i   = sum_j G_ij dl/dp_ij B_j                                (GEMM on the modified tile)
    dSA_ik = sum_j G_ij dl/dSA_ik                                   (row reductions)
    PART   = per row block (sum_ij G_ij h_ij, sum_ij G_ij)           (theta's partials)

Programs own BLOCK_A rows of A (and one BLOCK_D slice of dA's K columns) and walk all of B;
every output row is written by exactly one program, so the result is deterministic with no
atomics. dY is the same kernel relaunched on the swapped problem (B, A, stB, stA, gB, gA, the
swapped relation): G and every epilogue are symmetric under that swap. Both launches cover
every pair, so either one's PART gives theta's gradient; the launcher sums the first one's.

One-pass forward + gradients (``FWD_GRAD``, stats with a local G only: pair_sum): the same
walk also folds the statistic of A's rows and takes G for unit upstream gradients of the row
statistic, G_ij = f'(l_ij, z_ij) on every kept pair. That one G serves both launches (with
g_row = 1, g_col = 0 the row launch's G is g_row f' and the swapped launch's is again
g_row f', now on its column side), so ST_B, G_A, G_B are not read; ST_A is the output, the
statistic of A rows < NA_STAT (row_stat, then col_stat of the first M0 rows of Y). This is
``triton_tile_fwd_grad``: two launches in place of tile_fwd's two plus tile_bwd's two.

Row-only columns: only A rows < NA_STAT and B rows < NB_STAT have a statistic (the row
launch: NA_STAT = N, NB_STAT = M0; the swapped one: NA_STAT = M0, NB_STAT = N); the others
contribute nothing to G from their side, yet every A row gets its dA.

When K > BLOCK_D, grid axis 1 splits dA's columns; each slice recomputes the logit tile (the
full-K dot), trading extra FLOPs for bounded registers; the default BLOCK_D covers K <= 128 in
one slice. Only slice 0 writes dSA and PART.

Shapes: A [NA, K], B [NB, K] (unit inner stride); SA [NA, NR], SB [NB, NR] fp32; THETA [3];
R0..R2 int64; stA, gA [NA_STAT], stB, gB [NB_STAT] fp32 ([NA_STAT, 2], [NB_STAT, 2] for
masked_sum); DA [NA, K] in A's dtype,
DSA [NA, NR] fp32, PART [cdiv(NA, BLOCK_A), 2] fp32.
"""

import triton
import triton.language as tl

from .epilogue import epilogue_grad, epilogue_h, norm_grad_from_gp
from .relation import relation_rows, tile_roles
from .stats import (LOG2E, stat_fold_grad, stat_grad, stat_init, stat_saved, stat_store,
                    stat_upstream)
from .tiles import column_block, column_tile, mma, row_block


@triton.jit
def _tile_bwd_kernel(
    A, B, SA, SB, THETA, R0, R1, R2, ST_A, ST_B, G_A, G_B, DA, DSA, PART,
    NA, NB, NA_STAT, NB_STAT, K, stride_a, stride_b, stride_da, diag_offset,
    KEY_NA, KEY_NB,  # power-of-two buckets of NA / NB: autotune keys only
    KIND: tl.constexpr, NR: tl.constexpr, STAT: tl.constexpr, RELATION: tl.constexpr,
    SKIP_SELF: tl.constexpr, SKIP_POSITIVES: tl.constexpr, SWAPPED: tl.constexpr,
    POSITIVES: tl.constexpr, FWD_GRAD: tl.constexpr,
    KAPPA: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    SPLIT_GP: tl.constexpr,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    tl.static_assert(BLOCK_K >= 16)
    tl.static_assert(BLOCK_D >= 16)
    rows, row_ok, rows64, a0, a1, a2, scale, inv_sqrt_c, bias = row_block(
        SA, THETA, NA, NR, BLOCK_A)
    f0, f1, n_max = relation_rows(R0, rows64, row_ok, RELATION, SWAPPED)
    qk_scale = scale * LOG2E
    qk_bias = bias * LOG2E
    pid_d = tl.program_id(1)
    dcols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = dcols < K
    a_has = rows < NA_STAT
    if FWD_GRAD:
        s0, s1, s2 = stat_init(BLOCK_A, STAT)
    else:
        st_a = stat_saved(ST_A, rows64, a_has, STAT)[:, None]
        g_a, g_a1 = stat_upstream(G_A, rows64, a_has, STAT)
        g_a = g_a[:, None]
        g_a1 = g_a1[:, None]

    acc = tl.zeros((BLOCK_A, BLOCK_D), tl.float32)
    ds0 = tl.zeros((BLOCK_A,), tl.float32)
    ds1 = tl.zeros((BLOCK_A,), tl.float32)
    ds2 = tl.zeros((BLOCK_A,), tl.float32)
    gh = tl.zeros((BLOCK_A,), tl.float32)
    gs = tl.zeros((BLOCK_A,), tl.float32)
    for start in range(0, NB, BLOCK_B):
        cols, col_ok, cols64 = column_block(start, NB, BLOCK_B)
        p, b0, b1, b2, valid = column_tile(A, B, SB, rows64, row_ok, cols64, col_ok, K,
                                           stride_a, stride_b, NR, BLOCK_A, BLOCK_B, BLOCK_K,
                                           INPUT_PRECISION, UPCAST)
        keep, pos = tile_roles(valid, rows, cols, cols64, col_ok, f0, f1, n_max, R0, R1, R2,
                               diag_offset, RELATION, SKIP_SELF, SKIP_POSITIVES, SWAPPED,
                               POSITIVES)
        h = epilogue_h(p, a0, a1, a2, b0, b1, b2, inv_sqrt_c, KIND, KAPPA)
        if FWD_GRAD:
            s0, s1, s2, g = stat_fold_grad(s0, s1, s2, h * qk_scale + qk_bias, keep, pos,
                                           STAT, POSITIVES)
        else:
            b_has = cols < NB_STAT
            st_b = stat_saved(ST_B, cols64, b_has, STAT)[None, :]
            g_b, g_b1 = stat_upstream(G_B, cols64, b_has, STAT)
            g = stat_grad(h * qk_scale + qk_bias, keep, pos, st_a, g_a, g_a1, st_b,
                          g_b[None, :], g_b1[None, :], STAT, POSITIVES)
        g_p, t0, t1, t2 = epilogue_grad(p, a0, a1, a2, b0, b1, b2, scale, inv_sqrt_c, g,
                                        KIND, KAPPA)
        bd = tl.load(B + cols64[:, None] * stride_b + dcols[None, :],
                     mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        # The modified tile is rounded to the operand dtype for the tensor-core GEMM (as in
        # flash-attention's dQ/dK); accumulation stays fp32. The norm partial is rebuilt from
        # the rounded tile so the terms that cancel in dA see the same values.
        g_hi = g_p.to(bd.dtype)
        acc = mma(g_hi, bd, acc, INPUT_PRECISION, UPCAST)
        g_used = g_hi.to(tl.float32)
        if SPLIT_GP:
            # Cosine in bf16/fp16: g_p = G s / (n_i n_j) is rarely exact in 16 bits even where
            # G s is, and its rounding error does not cancel against the positive logit's
            # gradient (computed from the raw operands). A second MMA on the rounding residual
            # makes the tile effectively ~fp32.
            g_lo = (g_p - g_used).to(bd.dtype)
            acc = mma(g_lo, bd, acc, INPUT_PRECISION, UPCAST)
            g_used += g_lo.to(tl.float32)
        t0 = norm_grad_from_gp(g_used, p, a0, t0, KIND)
        ds0 += tl.sum(t0, 1)
        ds1 += tl.sum(t1, 1)
        ds2 += tl.sum(t2, 1)
        # h is finite on every in-bounds entry; where() keeps padded ones out regardless.
        gh += tl.sum(tl.where(keep, g * h, 0.0), 1)
        gs += tl.sum(g, 1)

    tl.store(DA + rows64[:, None] * stride_da + dcols[None, :],
             acc.to(DA.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    if pid_d == 0:
        if FWD_GRAD:
            stat_store(ST_A, rows64, a_has, s0, s1, s2, STAT)
        if NR >= 1:
            tl.store(DSA + rows64 * NR, ds0, mask=row_ok)
        if NR >= 2:
            tl.store(DSA + rows64 * NR + 1, ds1, mask=row_ok)
        if NR >= 3:
            tl.store(DSA + rows64 * NR + 2, ds2, mask=row_ok)
        pid = tl.program_id(0).to(tl.int64)
        tl.store(PART + 2 * pid, tl.sum(gh, 0))
        tl.store(PART + 2 * pid + 1, tl.sum(gs, 0))
