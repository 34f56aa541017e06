"""The statistics of the tile walk, as torch code: the executable spec of every stat.

A stat says what one tile of logits is folded into, per row and per column:

    identity(n)                  the state of a row that has seen nothing
    fold(logits, skip, dim)      the partial state of a tile along ``dim`` (skip: bool tile of
                                 skipped pairs or None)
    merge(a, b)                  two partial states of the same rows -> one (associative)
    upstream(logits, skip, row_stat, col_stat, g_row, g_col)
                                 G = dL/dl of the tile, given the finished states and the
                                 upstream gradients of the loss w.r.t. them; 0 on skipped pairs

The torch backend and the distributed ring use these directly; the C++, CUDA and Triton walks
implement the same rules (``flashnce.core.spec`` lists the stats they declare).

``lse``: state = log sum exp of the row's (column's) non-skipped logits, -inf when there are
none; merge = logaddexp; G_ij = g_row_i exp(l_ij - row_i) + g_col_j exp(l_ij - col_j).
"""

from __future__ import annotations

import torch


class LseStat:
    name = "lse"

    @staticmethod
    def identity(n: int, dtype, device) -> torch.Tensor:
        return torch.full((n,), float("-inf"), dtype=dtype, device=device)

    @staticmethod
    def fold(logits, skip, dim: int) -> torch.Tensor:
        if skip is not None:
            logits = logits.masked_fill(skip, float("-inf"))
        return torch.logsumexp(logits, dim)

    @staticmethod
    def merge(a, b) -> torch.Tensor:
        return torch.logaddexp(a, b)

    @staticmethod
    def upstream(logits, skip, row_stat, col_stat, g_row, g_col) -> torch.Tensor:
        """G tile [bn, bm]; ``col_stat`` / ``g_col`` may cover only the first columns (the
        others are row-only columns: no column term)."""
        if skip is not None:  # skipped pairs: exp(-inf - lse) = 0 exactly, no NaN
            logits = logits.masked_fill(skip, float("-inf"))
        # A row with every pair skipped has stat -inf: shift by 0 there (its G is 0 anyway).
        row_ref = torch.where(torch.isfinite(row_stat), row_stat, 0.0)
        g = g_row[:, None] * torch.exp(logits - row_ref[:, None])
        mc = col_stat.shape[0]
        if mc:
            col_ref = torch.where(torch.isfinite(col_stat), col_stat, 0.0)
            col_term = g_col[None, :] * torch.exp(logits[:, :mc] - col_ref[None, :])
            g = torch.cat([g[:, :mc] + col_term, g[:, mc:]], dim=1) if mc < g.shape[1] else (
                g + col_term)
        return g


STATS = {"lse": LseStat}


def get_stat(name: str):
    if name not in STATS:
        raise ValueError(f"unknown statistic {name!r} (known: {', '.join(STATS)})")
    return STATS[name]
