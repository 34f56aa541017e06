"""``torch`` backend: the tile walk in plain PyTorch, on any device, generic over the stat.

Rows are walked in blocks of ``BLOCK_N`` and columns in blocks of ``BLOCK_M``; the largest
tensor that ever exists is one BLOCK_N x BLOCK_M tile (plus O((N + M) K) operand copies), so
memory is linear in the batch. Per tile: p = X_blk Y_blk^T, the epilogue (``flashnce.geometry``),
the relation's roles (``flashnce.core.relation.tile_roles``), then the stat
(``flashnce.core.stats``) folds it into the rows' running state and the columns' running state
(columns >= M0 are row-only). Backward recomputes each tile once from the saved states, forms
G with the stat's rule and does both gradient GEMMs on it. A stat whose G is local to the
pair (``pair_sum``) also has a one-pass ``forward_grad_raw``: each tile folded and turned into
G while it exists (3 GEMMs per tile instead of 1 + 3).

``count`` (ranks, forward only) walks twice over the same tile grid, so each logit is the same
bits in both phases: phase 1 only the tiles that can hold a positive (for ``diagonal`` the
diagonal band of tiles, for ``targets`` the tiles holding a target, else those whose roles
have one), folding the thresholds (``CountStat.thresholds``); phase 2 every tile, counting.
"""

from __future__ import annotations

import torch

from ..core import spec
from ..core.autograd import theta_grad
from ..core.numerics import compute_dtype
from ..core.relation import Relation, tile_roles
from ..core.stats import CountStat, get_stat
from ..geometry import tile_logit_grads, tile_logits
from .base import Backend, TileSpec

# 512 x 512 fp32 = 1 MiB per tile: fits a core's L2 on most CPUs, and is far below N*M/4
# for any batch where memory matters.
BLOCK_N = 512
BLOCK_M = 512


class TorchBlockwise(Backend):
    name = "torch"
    devices = None  # any device PyTorch runs on
    supports_same_operand = True  # the column GEMM then adds into dX (y is x)

    @staticmethod
    def _tiles(n, m):
        for i0 in range(0, n, BLOCK_N):
            for j0 in range(0, m, BLOCK_M):
                yield i0, min(i0 + BLOCK_N, n), j0, min(j0 + BLOCK_M, m)

    @staticmethod
    def _tile(xc, yc, alpha, beta, theta, tspec, i0, i1, j0, j1):
        """One tile: dot products, logits (scale * h + bias) and the pair roles (or None)."""
        p = xc[i0:i1] @ yc[j0:j1].T
        logits = tile_logits(tspec.kind, p, alpha[i0:i1], beta[j0:j1],
                             theta[spec.THETA_SCALE], theta[spec.THETA_INV_SQRT_C], tspec.kappa)
        logits = logits + theta[spec.THETA_BIAS]
        return p, logits, tile_roles(tspec.relation, i0, i1, j0, j1, p.device)

    def forward_raw(self, x, y, alpha, beta, theta, tspec: TileSpec):
        if tspec.stat == "count":
            return self._count_walk(x, y, alpha, beta, theta, tspec)
        stat = get_stat(tspec.stat)
        cd = compute_dtype(x.dtype)
        xc, yc = x.to(cd), y.to(cd)
        n, m = x.shape[0], y.shape[0]
        m0 = tspec.cols_both(m)
        row = stat.identity(n, cd, x.device)
        col = stat.identity(m0, cd, x.device)
        for i0, i1, j0, j1 in self._tiles(n, m):
            _, logits, roles = self._tile(xc, yc, alpha, beta, theta, tspec, i0, i1, j0, j1)
            self._fold(stat, row, col, logits, roles, i0, i1, j0, max(j0, min(j1, m0)))
        return row, col

    def _count_walk(self, x, y, alpha, beta, theta, tspec: TileSpec):
        """The two phases of ``count`` (module docstring): thresholds, then counts."""
        cd = compute_dtype(x.dtype)
        xc, yc = x.to(cd), y.to(cd)
        n, m = x.shape[0], y.shape[0]
        m0 = tspec.cols_both(m)
        rel = tspec.relation
        row_th = CountStat.threshold_identity(n, cd, x.device)
        col_th = CountStat.threshold_identity(m0, cd, x.device)
        tiles = list(self._tiles(n, m))
        for i0, i1, j0, j1 in tiles:
            if not _may_hold_positives(rel, i0, i1, j0, j1):
                continue
            _, logits, roles = self._tile(xc, yc, alpha, beta, theta, tspec, i0, i1, j0, j1)
            if roles is None:
                continue
            row_th = _merge_into(row_th, i0, i1, CountStat.thresholds(logits, roles, j0))
            c1 = max(j0, min(j1, m0))
            if c1 > j0:
                col_part = CountStat.thresholds(logits[:, : c1 - j0].T, roles[:, : c1 - j0].T, i0)
                col_th = _merge_into(col_th, j0, c1, col_part)
        row_n = torch.zeros(n, dtype=torch.int64, device=x.device)
        col_n = torch.zeros(m0, dtype=torch.int64, device=x.device)
        for i0, i1, j0, j1 in tiles:
            _, logits, roles = self._tile(xc, yc, alpha, beta, theta, tspec, i0, i1, j0, j1)
            row_n[i0:i1] += CountStat.count(logits, roles, row_th[0][i0:i1], row_th[1][i0:i1],
                                            j0)
            c1 = max(j0, min(j1, m0))
            if c1 > j0:
                col_n[j0:c1] += CountStat.count(
                    logits[:, : c1 - j0].T, None if roles is None else roles[:, : c1 - j0].T,
                    col_th[0][j0:c1], col_th[1][j0:c1], i0)
        return CountStat.finish(row_n, row_th[1], cd), CountStat.finish(col_n, col_th[1], cd)

    @staticmethod
    def _fold(stat, row, col, logits, roles, i0, i1, j0, c1):
        """Merge one tile into the row states and the column states of columns [j0, c1)."""
        row[i0:i1] = stat.merge(row[i0:i1], stat.fold(logits, roles, 1))
        if c1 > j0:
            col_part = stat.fold(logits[:, : c1 - j0],
                                 None if roles is None else roles[:, : c1 - j0], 0)
            col[j0:c1] = stat.merge(col[j0:c1], col_part)

    def backward_raw(self, x, y, alpha, beta, theta, tspec: TileSpec, row_stat, col_stat,
                     g_row, g_col):
        stat = get_stat(tspec.stat)

        def tile_g(logits, roles, i0, i1, j0, c1):
            return stat.upstream(logits, roles, row_stat[i0:i1], col_stat[j0:c1], g_row[i0:i1],
                                 g_col[j0:c1])

        return self._gradient_walk(x, y, alpha, beta, theta, tspec, tile_g)

    def forward_grad_raw(self, x, y, alpha, beta, theta, tspec: TileSpec):
        """One walk for a stat with a local G: each tile is folded into the states and turned
        into G (g_row = 1, g_col = 0) for both gradient GEMMs while it exists."""
        stat = get_stat(tspec.stat)
        if not spec.STAT_INFO[tspec.stat]["local_grad"]:
            raise ValueError(f"statistic {tspec.stat!r} has no one-pass gradient")
        cd = compute_dtype(x.dtype)
        m0 = tspec.cols_both(y.shape[0])
        row = stat.identity(x.shape[0], cd, x.device)
        col = stat.identity(m0, cd, x.device)
        ones = torch.ones_like(row)
        zeros = torch.zeros_like(col)

        def tile_g(logits, roles, i0, i1, j0, c1):
            self._fold(stat, row, col, logits, roles, i0, i1, j0, c1)
            return stat.upstream(logits, roles, row[i0:i1], col[j0:c1], ones[i0:i1],
                                 zeros[j0:c1])

        grads = self._gradient_walk(x, y, alpha, beta, theta, tspec, tile_g)
        return (row, col, *grads)

    def _gradient_walk(self, x, y, alpha, beta, theta, tspec: TileSpec, tile_g):
        """dX, dY, d_alpha, d_beta, d_theta from each tile's G = tile_g(logits, roles, i0, i1,
        j0, c1) (c1: end of the tile's columns that have a column state). Same operand
        (spec.FLAG_SAME_OPERAND, y is x): the columns' gradient goes into dX too and dY is
        empty."""
        cd = compute_dtype(x.dtype)
        same = bool(tspec.relation.flags & spec.FLAG_SAME_OPERAND)
        xc = x.to(cd)
        yc = xc if same else y.to(cd)
        n, m = x.shape[0], y.shape[0]
        m0 = tspec.cols_both(m)
        dx = torch.zeros_like(xc)
        dy = dx if same else torch.zeros_like(yc)
        d_alpha, d_beta = torch.zeros_like(alpha), torch.zeros_like(beta)
        sum_gh = torch.zeros((), dtype=cd, device=x.device)
        sum_g = torch.zeros((), dtype=cd, device=x.device)
        for i0, i1, j0, j1 in self._tiles(n, m):
            p, logits, roles = self._tile(xc, yc, alpha, beta, theta, tspec, i0, i1, j0, j1)
            g = tile_g(logits, roles, i0, i1, j0, max(j0, min(j1, m0)))
            g_p, g_a, g_b, gh_t = tile_logit_grads(
                tspec.kind, p, alpha[i0:i1], beta[j0:j1], theta[spec.THETA_SCALE],
                theta[spec.THETA_INV_SQRT_C], tspec.kappa, g)
            dx[i0:i1] += g_p @ yc[j0:j1]
            dy[j0:j1] += g_p.T @ xc[i0:i1]
            d_alpha[i0:i1] += g_a
            d_beta[j0:j1] += g_b
            sum_gh += gh_t
            sum_g += g.sum()
        d_theta = theta_grad(sum_gh, sum_g, theta, tspec.kind)
        dy = y.new_empty((0, y.shape[1])) if same else dy.to(y.dtype)
        return dx.to(x.dtype), dy, d_alpha, d_beta, d_theta


def _may_hold_positives(rel: Relation, i0, i1, j0, j1) -> bool:
    """Whether tile [i0, i1) x [j0, j1) can hold a positive pair, without its GEMM (False only
    when it certainly holds none)."""
    if rel.name == "none" or rel.skip_positives:
        return False
    if rel.name == "diagonal":  # j = i + offset for some i in [i0, i1)
        return i0 + rel.diag_offset < j1 and i1 - 1 + rel.diag_offset >= j0
    if rel.name == "targets":
        t = rel.tensors[0][i0:i1]
        return bool(((t >= j0) & (t < j1)).any())
    return True  # labels / csr: the tile's roles decide


def _merge_into(th, a0, a1, part):
    """th (tau, t) with rows [a0, a1) merged with part (thresholds of those rows)."""
    tau, t = CountStat.merge_thresholds((th[0][a0:a1], th[1][a0:a1]), part)
    th[0][a0:a1], th[1][a0:a1] = tau, t
    return th


BACKEND = TorchBlockwise()
