"""Several tile walks over the blocks of one operand set, with one gradient per operand.

A loss whose batch is made of parts -- NT-Xent's two views z = [z1; z2] -- walks the blocks of
the big matrix without concatenating the parts: z1 x z2, z1 x z1, z2 x z2 are three walks
over two operands. Left to autograd, each walk's backward returns a full dX and dY for its
operands, and autograd holds them until it adds them into the operand's gradient: one
[N, d] tensor or more beyond the gradients themselves (at N = 16384, d = 512, fp32: 64 MiB).

``block_walk`` is one autograd node for all the walks. Its forward runs each walk once
(statistics only). Its backward allocates **one gradient per operand** and recomputes each
walk in chunk pairs (rows R x columns C of at most ``chunk_rows`` rows each): the backend's
raw backward of the (R, C) block returns gradients of R's rows and C's rows only, which are
added into the operands' gradients at once. The transient memory is that of one chunk pair
(a few MiB), not of a walk; the arithmetic is the same walk's, cut into blocks (the statistics
and upstream gradients are sliced, and the diagonal / self pairs move by R.start - C.start,
as in the distributed ring).

Gradients are summed in the compute dtype (fp32 for bf16 / fp16 operands, converted once at
the end); d_alpha / d_beta / d_theta are summed too. Saved for backward: the operands, their
per-row scalars, theta and each walk's statistics -- O((N + M) d), no N x M tensor.

Relations: ``none`` and ``diagonal`` (their pair roles follow from the offset alone), with
the columns all seen from both sides or none of them (``cols_both`` None or 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .numerics import compute_dtype
from .tilespec import TileSpec

# Rows per chunk of the backward: each chunk's dX and dY (and the CPU kernel's fp32 copies and
# per-thread column accumulators of them) are about 2 MiB of fp32 per 512 features, so a
# chunk pair's transients stay well under 16 MiB. Accelerators get large chunks: their walks
# need many tiles in flight, and their memory is not the bottleneck one [N, d] tensor is here.
_CPU_CHUNK_ELEMENTS = 1 << 19
_DEVICE_CHUNK_ELEMENTS = 1 << 26
CHUNKED_RELATIONS = ("none", "diagonal")


@dataclass(frozen=True)
class Walk:
    """One walk: rows = operand ``row`` (its rows ``rows[0]:rows[1]``, all when None),
    columns = operand ``col`` (its rows ``cols[0]:cols[1]``), under ``tspec`` run by
    ``backend`` (a ``flashnce.backends.base.Backend``). The statistics cover the slices."""

    row: int
    col: int
    tspec: TileSpec
    backend: object
    rows: tuple | None = None
    cols: tuple | None = None

    def row_range(self, ops) -> tuple:
        return self.rows or (0, ops[self.row].shape[0])

    def col_range(self, ops) -> tuple:
        return self.cols or (0, ops[self.col].shape[0])


def check_walk(walk: Walk) -> None:
    rel = walk.tspec.relation
    if rel.name not in CHUNKED_RELATIONS or rel.cols_both not in (None, 0):
        raise ValueError(f"block_walk: relation {rel.name!r} with cols_both={rel.cols_both} "
                         f"cannot be cut into chunks (needs one of {CHUNKED_RELATIONS}, "
                         f"cols_both None or 0)")


def chunk_rows(n_features: int, device: torch.device) -> int:
    """Rows per chunk of the chunked backward (at least 256)."""
    budget = _CPU_CHUNK_ELEMENTS if device.type == "cpu" else _DEVICE_CHUNK_ELEMENTS
    return max(256, budget // max(1, n_features))


def _ranges(n: int, step: int):
    return [(s, min(s + step, n)) for s in range(0, n, step)] or [(0, 0)]


class _BlockWalk(torch.autograd.Function):
    @staticmethod
    def forward(walks, n_ops, theta, *tensors):
        ops, scalars = tensors[:n_ops], tensors[n_ops:]
        out = []
        for w in walks:
            (r0, r1), (c0, c1) = w.row_range(ops), w.col_range(ops)
            out.extend(w.backend.forward_raw(ops[w.row][r0:r1], ops[w.col][c0:c1],
                                             scalars[w.row][r0:r1], scalars[w.col][c0:c1],
                                             theta, w.tspec))
        return tuple(out)

    @staticmethod
    def setup_context(ctx, inputs, output):
        walks, n_ops, theta, *tensors = inputs
        ctx.save_for_backward(theta, *tensors, *output)
        ctx.walks, ctx.n_ops = walks, n_ops
        ctx.set_materialize_grads(False)

    @staticmethod
    @torch.autograd.function.once_differentiable  # the raw backwards have no derivative
    def backward(ctx, *g_stats):
        theta, *saved = ctx.saved_tensors
        n_ops, walks = ctx.n_ops, ctx.walks
        ops, scalars, stats = saved[:n_ops], saved[n_ops:2 * n_ops], saved[2 * n_ops:]
        need = ctx.needs_input_grad[3:]
        cd = theta.dtype
        d_ops = [torch.zeros(op.shape, dtype=cd, device=op.device) if need[k] else None
                 for k, op in enumerate(ops)]
        d_sc = [torch.zeros_like(s) for s in scalars]
        d_theta = torch.zeros_like(theta)
        step = 0 if torch.compiler.is_compiling() else chunk_rows(ops[0].shape[1],
                                                                  ops[0].device)
        for k, w in enumerate(walks):
            row, col = stats[2 * k], stats[2 * k + 1]
            g_row, g_col = g_stats[2 * k], g_stats[2 * k + 1]
            if g_row is None and g_col is None:
                continue  # this walk's statistics do not reach the loss
            g_row = torch.zeros_like(row) if g_row is None else g_row.contiguous()
            g_col = torch.zeros_like(col) if g_col is None else g_col.contiguous()
            (r0, r1), (c0, c1) = w.row_range(ops), w.col_range(ops)
            x, y = ops[w.row][r0:r1], ops[w.col][c0:c1]
            a, b = scalars[w.row][r0:r1], scalars[w.col][c0:c1]
            d_x = None if d_ops[w.row] is None else d_ops[w.row][r0:r1]
            d_y = None if d_ops[w.col] is None else d_ops[w.col][c0:c1]
            d_a, d_b = d_sc[w.row][r0:r1], d_sc[w.col][c0:c1]
            cols_both = w.tspec.relation.cols_both is None
            n, m = x.shape[0], y.shape[0]
            for i0, i1 in _ranges(n, step or n):
                for j0, j1 in _ranges(m, step or m):
                    cs = slice(j0, j1) if cols_both else slice(0, 0)
                    dx, dy, da, db, dt = w.backend.backward_raw(
                        x[i0:i1], y[j0:j1], a[i0:i1], b[j0:j1], theta,
                        w.tspec.shifted(i0, j0), row[i0:i1],
                        col[cs], g_row[i0:i1], g_col[cs])
                    if d_x is not None:
                        d_x[i0:i1] += dx
                    if d_y is not None:
                        d_y[j0:j1] += dy
                    d_a[i0:i1] += da
                    d_b[j0:j1] += db
                    d_theta += dt
        d_ops = [None if d is None else d.to(op.dtype) for d, op in zip(d_ops, ops)]
        return (None, None, d_theta, *d_ops, *d_sc)


def block_walk(walks, operands, scalars, theta):
    """[(row_stat, col_stat) per walk], differentiable in the operands, their per-row scalars
    and theta (see the module docstring). ``operands`` [K_i, d] share dtype and device;
    ``scalars[i]`` are operand i's per-row scalars (compute dtype)."""
    walks = tuple(walks)
    for w in walks:
        check_walk(w)
    if any(op.dtype != operands[0].dtype for op in operands):
        raise ValueError("block_walk: the operands must share one dtype")
    if compute_dtype(operands[0].dtype) != theta.dtype:
        raise ValueError("block_walk: theta must be in the operands' compute dtype")
    out = _BlockWalk.apply(walks, len(operands), theta, *operands, *scalars)
    return [(out[2 * k], out[2 * k + 1]) for k in range(len(walks))]
