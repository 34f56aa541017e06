"""Tile loaders shared by the forward and backward kernels (int64 offsets, boundary masks)."""

import triton
import triton.language as tl

from flashnce.core import spec

THETA_SCALE = tl.constexpr(spec.THETA_SCALE)
THETA_INV_SQRT_C = tl.constexpr(spec.THETA_INV_SQRT_C)
THETA_BIAS = tl.constexpr(spec.THETA_BIAS)


@triton.jit
def load_row_scalars(S, idx64, ok, NR: tl.constexpr):
    """The first NR (<= 3) fp32 per-row scalars of rows ``idx64`` as three vectors.

    Out-of-range rows read (1, 0, 0): a unit norm keeps the hyperbolic cosine p / (n_i n_j)
    finite on masked entries, so masked gradients are 0, never 0 * nan.
    """
    one = tl.full(idx64.shape, 1.0, tl.float32)
    zero = tl.zeros(idx64.shape, tl.float32)
    s0 = one
    s1 = zero
    s2 = zero
    if NR >= 1:
        s0 = tl.load(S + idx64 * NR, mask=ok, other=1.0).to(tl.float32)
    if NR >= 2:
        s1 = tl.load(S + idx64 * NR + 1, mask=ok, other=0.0).to(tl.float32)
    if NR >= 3:
        s2 = tl.load(S + idx64 * NR + 2, mask=ok, other=0.0).to(tl.float32)
    return s0, s1, s2


@triton.jit
def mma(a, b, acc, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with fp32 accumulation.

    UPCAST is set only under the Triton interpreter, whose tl.dot multiplies bfloat16 operands
    as their raw uint16 bit patterns. bf16/fp16 -> fp32 is exact, so the upcast dot reproduces
    a tensor-core dot (exact products, fp32 accumulation) up to summation order.
    """
    if UPCAST:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def tile_dot(A, B, rows64, cols64, row_ok, col_ok, K, stride_a, stride_b,
             BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
             INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """p = A[rows] @ B[cols]^T as a [BLOCK_A, BLOCK_B] fp32 tile, looping over K in BLOCK_K
    chunks (any K: the last chunk is masked with zeros, which add nothing to the dot)."""
    acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
    a_base = A + rows64[:, None] * stride_a
    b_base = B + cols64[:, None] * stride_b
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(a_base + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_base + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc = mma(a, tl.trans(b), acc, INPUT_PRECISION, UPCAST)
    return acc


@triton.jit
def row_block(SA, THETA, NA, NR: tl.constexpr, BLOCK_A: tl.constexpr):
    """This program's BLOCK_A rows: indices, bounds mask, int64 offsets, per-row scalars as
    [BLOCK_A, 1] fields, and theta = (scale, 1/sqrt(c), bias) loaded in-kernel (no host sync)."""
    rows = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
    row_ok = rows < NA
    rows64 = rows.to(tl.int64)
    a0, a1, a2 = load_row_scalars(SA, rows64, row_ok, NR)
    scale = tl.load(THETA + THETA_SCALE).to(tl.float32)
    inv_sqrt_c = tl.load(THETA + THETA_INV_SQRT_C).to(tl.float32)
    bias = tl.load(THETA + THETA_BIAS).to(tl.float32)
    return (rows, row_ok, rows64, a0[:, None], a1[:, None], a2[:, None], scale, inv_sqrt_c,
            bias)


@triton.jit
def column_block(start, NB, BLOCK_B: tl.constexpr):
    """The walk's next BLOCK_B columns: indices, bounds mask and int64 offsets."""
    cols = start + tl.arange(0, BLOCK_B)
    col_ok = cols < NB
    return cols, col_ok, cols.to(tl.int64)


@triton.jit
def column_tile(A, B, SB, rows64, row_ok, cols64, col_ok, K, stride_a, stride_b,
                NR: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
                BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """One step of the column walk: the dot-product tile p, the columns' scalars as
    [1, BLOCK_B] fields and the in-bounds mask of the tile (the relation's skips are applied
    on top of it by ``relation.tile_keep``). The mask is formed after the dot: formed before,
    it stays live through the K loop (measured: 3-4x the spills of the plain backward)."""
    p = tile_dot(A, B, rows64, cols64, row_ok, col_ok, K, stride_a, stride_b,
                 BLOCK_A, BLOCK_B, BLOCK_K, INPUT_PRECISION, UPCAST)
    b0, b1, b2 = load_row_scalars(SB, cols64, col_ok, NR)
    valid = row_ok[:, None] & col_ok[None, :]
    return p, b0[None, :], b1[None, :], b2[None, :], valid
