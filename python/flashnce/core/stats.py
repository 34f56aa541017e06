"""The statistics of the tile walk, as torch code: the executable spec of every stat.

A stat says what one tile of logits is folded into, per row and per column:

    identity(n)                  the state of a row that has seen nothing
    fold(logits, roles, dim)     the partial state of a tile along ``dim`` (roles: the tile's
                                 int8 pair roles from ``flashnce.core.relation.tile_roles``,
                                 or None when every pair is a negative)
    merge(a, b)                  two partial states of the same rows -> one (associative)
    upstream(logits, roles, row_stat, col_stat, g_row, g_col)
                                 G = dL/dl of the tile, given the finished states and the
                                 upstream gradients of the loss w.r.t. them; 0 on skipped pairs

The torch backend and the distributed ring use these directly; the C++, CUDA and Triton walks
implement the same rules (``flashnce.core.spec`` lists the stats they declare).

``lse``: state = log sum exp of the row's (column's) non-skipped logits, -inf when there are
none; merge = logaddexp; G_ij = g_row_i exp(l_ij - row_i) + g_col_j exp(l_ij - col_j).

``pair_sum``: state = sum of softplus(-z l) over the row's (column's) non-skipped pairs
(z = +1 positive, -1 negative), 0 when there are none; merge = +;
G_ij = (g_row_i + g_col_j) * -z sigmoid(-z l_ij). G is local to the pair, so
``local_grad(logits, roles)`` gives the forward value and G for g = 1 from one tile.

``masked_sum``: state [n, 2] = (the lse above, the sum of the positives' logits); merge =
(logaddexp, +); G_ij = g_row_i0 exp(l_ij - row_i0) + g_row_i1 [ij positive] + the same for
the column. One walk and one arithmetic give a loss both, so lse - positive >= 0 always.

``count`` (retrieval ranks, forward only): not a fold / merge stat -- a rank needs the row's
threshold before its first comparison -- but two folds over the same tiles, run by the
walk as two phases:

    thresholds(logits, roles, j0)       phase 1: per row of the tile, the best positive logit
                                        tau (-inf without one) and the smallest global column
                                        index t attaining it (NO_INDEX without one)
    merge_thresholds(a, b)              larger tau wins, equal tau: smaller index
    count(logits, roles, tau, t, j0)    phase 2: per row, #{negatives with l > tau} +
                                        #{negatives with l == tau and j < t} (int64)
    finish(counts, t, dtype)            the state: the count, -1 where t is NO_INDEX

Columns use the same functions on the transposed tile (rows' global offset as j0).
"""

from __future__ import annotations

import torch

from . import spec
from .relation import NEGATIVE


def _skip(roles):
    return None if roles is None else roles == spec.ROLE_SKIP


def _cols_term(g, col_term):
    """g + col_term on the first columns (the rest are row-only columns: no column term)."""
    mc = col_term.shape[1]
    if mc == 0:
        return g
    if mc == g.shape[1]:
        return g + col_term
    return torch.cat([g[:, :mc] + col_term, g[:, mc:]], dim=1)


class LseStat:
    name = "lse"

    @staticmethod
    def identity(n: int, dtype, device) -> torch.Tensor:
        return torch.full((n,), float("-inf"), dtype=dtype, device=device)

    @staticmethod
    def fold(logits, roles, dim: int) -> torch.Tensor:
        skip = _skip(roles)
        if skip is not None:
            logits = logits.masked_fill(skip, float("-inf"))
        return torch.logsumexp(logits, dim)

    @staticmethod
    def merge(a, b) -> torch.Tensor:
        return torch.logaddexp(a, b)

    @staticmethod
    def upstream(logits, roles, row_stat, col_stat, g_row, g_col) -> torch.Tensor:
        """G tile [bn, bm]; ``col_stat`` / ``g_col`` may cover only the first columns (the
        others are row-only columns: no column term)."""
        skip = _skip(roles)
        if skip is not None:  # skipped pairs: exp(-inf - lse) = 0 exactly, no NaN
            logits = logits.masked_fill(skip, float("-inf"))
        # A row with every pair skipped has stat -inf: shift by 0 there (its G is 0 anyway).
        row_ref = torch.where(torch.isfinite(row_stat), row_stat, 0.0)
        g = g_row[:, None] * torch.exp(logits - row_ref[:, None])
        mc = col_stat.shape[0]
        col_ref = torch.where(torch.isfinite(col_stat), col_stat, 0.0)
        return _cols_term(g, g_col[None, :] * torch.exp(logits[:, :mc] - col_ref[None, :]))


class PairSumStat:
    name = "pair_sum"

    @staticmethod
    def identity(n: int, dtype, device) -> torch.Tensor:
        return torch.zeros((n,), dtype=dtype, device=device)

    @staticmethod
    def _signs(logits, roles):
        """z = +1 on positives, -1 elsewhere (skipped pairs are masked by the callers)."""
        if roles is None:
            return -torch.ones_like(logits)
        return torch.where(roles == spec.ROLE_POSITIVE, 1.0, -1.0).to(logits.dtype)

    @staticmethod
    def values(logits, roles) -> torch.Tensor:
        """f = softplus(-z l) per pair, exactly 0 on skipped pairs (a select: no NaN leaks)."""
        f = torch.nn.functional.softplus(-PairSumStat._signs(logits, roles) * logits)
        skip = _skip(roles)
        return f if skip is None else torch.where(skip, 0.0, f)

    @staticmethod
    def slopes(logits, roles) -> torch.Tensor:
        """f'(l, z) = -z sigmoid(-z l) per pair, exactly 0 on skipped pairs."""
        z = PairSumStat._signs(logits, roles)
        d = -z * torch.sigmoid(-z * logits)
        skip = _skip(roles)
        return d if skip is None else torch.where(skip, 0.0, d)

    @staticmethod
    def fold(logits, roles, dim: int) -> torch.Tensor:
        return PairSumStat.values(logits, roles).sum(dim)

    @staticmethod
    def merge(a, b) -> torch.Tensor:
        return a + b

    @staticmethod
    def upstream(logits, roles, row_stat, col_stat, g_row, g_col) -> torch.Tensor:
        slope = PairSumStat.slopes(logits, roles)
        mc = col_stat.shape[0]
        return _cols_term(g_row[:, None] * slope, g_col[None, :] * slope[:, :mc])


class MaskedSumStat:
    name = "masked_sum"

    @staticmethod
    def identity(n: int, dtype, device) -> torch.Tensor:
        state = torch.zeros((n, 2), dtype=dtype, device=device)
        state[:, 0] = float("-inf")
        return state

    @staticmethod
    def _positive_logits(logits, roles):
        """l on positive pairs, exactly 0 elsewhere (a select: inf / nan elsewhere stay out)."""
        if roles is None:
            return torch.zeros_like(logits)
        return torch.where(roles == spec.ROLE_POSITIVE, logits, 0.0)

    @staticmethod
    def fold(logits, roles, dim: int) -> torch.Tensor:
        return torch.stack([LseStat.fold(logits, roles, dim),
                            MaskedSumStat._positive_logits(logits, roles).sum(dim)], dim=-1)

    @staticmethod
    def merge(a, b) -> torch.Tensor:
        return torch.stack([torch.logaddexp(a[:, 0], b[:, 0]), a[:, 1] + b[:, 1]], dim=-1)

    @staticmethod
    def upstream(logits, roles, row_stat, col_stat, g_row, g_col) -> torch.Tensor:
        g = LseStat.upstream(logits, roles, row_stat[:, 0], col_stat[:, 0], g_row[:, 0],
                             g_col[:, 0])
        if roles is None:
            return g
        g_pos = _cols_term(g_row[:, 1:2].expand_as(logits), g_col[None, :, 1])
        return g + torch.where(roles == spec.ROLE_POSITIVE, g_pos, 0.0)


class CountStat:
    name = "count"
    NO_INDEX = torch.iinfo(torch.int64).max  # t of a row without a positive

    @staticmethod
    def identity(n: int, dtype, device) -> torch.Tensor:
        return torch.full((n,), -1.0, dtype=dtype, device=device)

    @staticmethod
    def threshold_identity(n: int, dtype, device):
        return (torch.full((n,), float("-inf"), dtype=dtype, device=device),
                torch.full((n,), CountStat.NO_INDEX, dtype=torch.int64, device=device))

    @staticmethod
    def thresholds(logits, roles, j0: int):
        """(tau [bn], t [bn]) of one tile [bn, bm] whose first column is global column j0."""
        bn, bm = logits.shape
        if roles is None:  # no positives anywhere
            return CountStat.threshold_identity(bn, logits.dtype, logits.device)
        pos = roles == spec.ROLE_POSITIVE
        tau = torch.where(pos, logits, float("-inf")).amax(1)
        cols = torch.arange(j0, j0 + bm, device=logits.device).expand(bn, bm)
        hit = pos & (logits == tau[:, None])
        t = torch.where(hit, cols, CountStat.NO_INDEX).amin(1)
        return torch.where(t == CountStat.NO_INDEX, float("-inf"), tau), t

    @staticmethod
    def merge_thresholds(a, b):
        (tau_a, t_a), (tau_b, t_b) = a, b
        take_b = (tau_b > tau_a) | ((tau_b == tau_a) & (t_b < t_a))
        return torch.where(take_b, tau_b, tau_a), torch.where(take_b, t_b, t_a)

    @staticmethod
    def count(logits, roles, tau, t, j0: int) -> torch.Tensor:
        """#{negatives j: l_ij > tau_i, or l_ij == tau_i and j < t_i} per row (int64)."""
        bn, bm = logits.shape
        cols = torch.arange(j0, j0 + bm, device=logits.device)[None, :]
        above = (logits > tau[:, None]) | ((logits == tau[:, None]) & (cols < t[:, None]))
        if roles is not None:
            above = above & (roles == NEGATIVE)
        return above.sum(1)

    @staticmethod
    def finish(counts, t, dtype) -> torch.Tensor:
        return torch.where(t == CountStat.NO_INDEX, -1.0, counts.to(dtype)).to(dtype)

    @staticmethod
    def upstream(*args):
        raise ValueError("statistic 'count' has no backward (ranks are piecewise constant)")


STATS = {"lse": LseStat, "pair_sum": PairSumStat, "masked_sum": MaskedSumStat,
         "count": CountStat}


def get_stat(name: str):
    if name not in STATS:
        raise ValueError(f"unknown statistic {name!r} (known: {', '.join(STATS)})")
    return STATS[name]
