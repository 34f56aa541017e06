"""Backward kernel: gradients of the row/column LSE pair, recomputing logit tiles.

With upstream gradients gA [NA] (of lse_A) and gB [NB] (of lse_B),

    G_ij   = gA_i exp(l_ij - lseA_i) + gB_j exp(l_ij - lseB_j)      (0 on masked entries)
    dA_i   = sum_j G_ij dl/dp_ij B_j                                (GEMM on the modified tile)
    dSA_ik = sum_j G_ij dl/dSA_ik                                   (row reductions)
    gh     = sum_ij G_ij h_ij                                       (per-program partials)

Programs own BLOCK_A rows of A (and one BLOCK_D slice of dA's K columns) and walk all of B;
every output row is written by exactly one program, so the result is deterministic with no
atomics. dY is the same kernel relaunched on the swapped problem (B, A, lseB, lseA, gB, gA):
G and every epilogue are symmetric under that swap (see lse_forward.py). gh is written only
by the first launch, as one fp32 partial per row block, summed by the launcher.

When K > BLOCK_D, grid axis 1 splits dA's columns; each slice recomputes the logit tile (the
full-K dot), trading extra FLOPs for bounded registers; the default BLOCK_D covers K <= 128 in
one slice. Only slice 0 writes dSA and the gh partial.

Shapes: A [NA, K], B [NB, K] (unit inner stride); SA [NA, NR], SB [NB, NR], lseA, gA [NA],
lseB, gB [NB] fp32; DA [NA, K] in A's dtype, DSA [NA, NR] fp32, GH [cdiv(NA, BLOCK_A)] fp32.
"""

import triton
import triton.language as tl

from .epilogue import epilogue_grad, epilogue_h, norm_grad_from_gp
from .tiles import column_tile, mma, row_block

LOG2E = 1.4426950408889634


@triton.jit
def _lse_bwd_kernel(
    A, B, SA, SB, scale_ptr, isc_ptr, LSE_A, LSE_B, G_A, G_B, DA, DSA, GH,
    NA, NB, K, stride_a, stride_b, stride_da,
    KEY_NA, KEY_NB,  # power-of-two buckets of NA / NB: autotune keys only
    KIND: tl.constexpr, NR: tl.constexpr, EXCLUDE_DIAG: tl.constexpr, KAPPA: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, WRITE_GH: tl.constexpr,
    SPLIT_GP: tl.constexpr,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    tl.static_assert(BLOCK_K >= 16)
    tl.static_assert(BLOCK_D >= 16)
    rows, row_ok, rows64, a0, a1, a2, scale, inv_sqrt_c = row_block(
        SA, scale_ptr, isc_ptr, NA, NR, BLOCK_A)
    pid_d = tl.program_id(1)
    dcols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = dcols < K
    lse_a = tl.load(LSE_A + rows64, mask=row_ok, other=0.0)[:, None] * LOG2E
    g_a = tl.load(G_A + rows64, mask=row_ok, other=0.0)[:, None]

    acc = tl.zeros((BLOCK_A, BLOCK_D), tl.float32)
    ds0 = tl.zeros((BLOCK_A,), tl.float32)
    ds1 = tl.zeros((BLOCK_A,), tl.float32)
    ds2 = tl.zeros((BLOCK_A,), tl.float32)
    gh = tl.zeros((BLOCK_A,), tl.float32)
    for start in range(0, NB, BLOCK_B):
        cols64, col_ok, p, b0, b1, b2, valid = column_tile(
            A, B, SB, rows, rows64, row_ok, start, NB, K, stride_a, stride_b, NR, EXCLUDE_DIAG,
            BLOCK_A, BLOCK_B, BLOCK_K, INPUT_PRECISION, UPCAST)
        h = epilogue_h(p, a0, a1, a2, b0, b1, b2, inv_sqrt_c, KIND, KAPPA)
        l2 = h * (scale * LOG2E)
        lse_b = tl.load(LSE_B + cols64, mask=col_ok, other=0.0)[None, :] * LOG2E
        g_b = tl.load(G_B + cols64, mask=col_ok, other=0.0)[None, :]
        # Masked / padded entries may overflow exp2 (their lse reads 0): where() drops them.
        g = tl.where(valid, g_a * tl.exp2(l2 - lse_a) + g_b * tl.exp2(l2 - lse_b), 0.0)
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
        if WRITE_GH:
            gh += tl.sum(tl.where(valid, g * h, 0.0), 1)

    tl.store(DA + rows64[:, None] * stride_da + dcols[None, :],
             acc.to(DA.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    if pid_d == 0:
        if NR >= 1:
            tl.store(DSA + rows64 * NR, ds0, mask=row_ok)
        if NR >= 2:
            tl.store(DSA + rows64 * NR + 1, ds1, mask=row_ok)
        if NR >= 3:
            tl.store(DSA + rows64 * NR + 2, ds2, mask=row_ok)
        if WRITE_GH:
            tl.store(GH + tl.program_id(0), tl.sum(gh, 0))
