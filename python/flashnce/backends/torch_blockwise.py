"""``torch`` backend: the tile walk in plain PyTorch, on any device.

Rows are walked in blocks of ``BLOCK_N`` and columns in blocks of ``BLOCK_M``; the largest
tensor that ever exists is one BLOCK_N x BLOCK_M tile (plus O((N + M) K) operand copies), so
memory is linear in the batch. Forward folds each tile into a running row LSE (per row block)
and a running column LSE (all M columns, merged with logaddexp). Backward recomputes each tile
once from the saved LSEs and does both gradient GEMMs on it.
"""

from __future__ import annotations

import torch

from ..geometry import compute_dtype, tile_logit_grads, tile_logits
from .base import Backend, TileSpec

# 512 x 512 fp32 = 1 MiB per tile: fits a core's L2 on most CPUs, and is far below N*M/4
# for any batch where memory matters.
BLOCK_N = 512
BLOCK_M = 512


def _diag_mask(i0, i1, j0, j1, device):
    """Boolean [i1-i0, j1-j0] mask of global diagonal entries, or None if the tile has none."""
    if i1 <= j0 or j1 <= i0:
        return None
    rows = torch.arange(i0, i1, device=device)[:, None]
    cols = torch.arange(j0, j1, device=device)[None, :]
    return rows == cols


class TorchBlockwise(Backend):
    name = "torch"

    def not_supported_reasons(self, x, y, spec):
        return []  # runs anywhere PyTorch runs

    @staticmethod
    def _tiles(n, m):
        for i0 in range(0, n, BLOCK_N):
            for j0 in range(0, m, BLOCK_M):
                yield i0, min(i0 + BLOCK_N, n), j0, min(j0 + BLOCK_M, m)

    @staticmethod
    def _tile(xc, yc, alpha, beta, scale, inv_sqrt_c, spec, i0, i1, j0, j1):
        """Recompute one logit tile (masked diagonal set to -inf) and its dot products."""
        p = xc[i0:i1] @ yc[j0:j1].T
        logits = tile_logits(spec.kind, p, alpha[i0:i1], beta[j0:j1], scale, inv_sqrt_c, spec.kappa)
        if spec.exclude_diagonal:
            mask = _diag_mask(i0, i1, j0, j1, p.device)
            if mask is not None:
                logits = logits.masked_fill(mask, float("-inf"))
        return p, logits

    def forward(self, x, y, alpha, beta, scale, inv_sqrt_c, spec: TileSpec):
        cd = compute_dtype(x.dtype)
        xc, yc = x.to(cd), y.to(cd)
        n, m = x.shape[0], y.shape[0]
        row_lse = torch.full((n,), float("-inf"), dtype=cd, device=x.device)
        col_lse = torch.full((m,), float("-inf"), dtype=cd, device=x.device)
        for i0, i1, j0, j1 in self._tiles(n, m):
            _, logits = self._tile(xc, yc, alpha, beta, scale, inv_sqrt_c, spec, i0, i1, j0, j1)
            row_lse[i0:i1] = torch.logaddexp(row_lse[i0:i1], torch.logsumexp(logits, 1))
            col_lse[j0:j1] = torch.logaddexp(col_lse[j0:j1], torch.logsumexp(logits, 0))
        return row_lse, col_lse

    def backward(self, x, y, alpha, beta, scale, inv_sqrt_c, spec: TileSpec,
                 row_lse, col_lse, g_row, g_col):
        cd = compute_dtype(x.dtype)
        xc, yc = x.to(cd), y.to(cd)
        n, m = x.shape[0], y.shape[0]
        dx, dy = torch.zeros_like(xc), torch.zeros_like(yc)
        d_alpha, d_beta = torch.zeros_like(alpha), torch.zeros_like(beta)
        gh = torch.zeros((), dtype=cd, device=x.device)
        for i0, i1, j0, j1 in self._tiles(n, m):
            p, logits = self._tile(xc, yc, alpha, beta, scale, inv_sqrt_c, spec, i0, i1, j0, j1)
            # G = dL/dlogit; masked entries have logit -inf, hence G = 0 exactly.
            g = (g_row[i0:i1, None] * torch.exp(logits - row_lse[i0:i1, None])
                 + g_col[None, j0:j1] * torch.exp(logits - col_lse[None, j0:j1]))
            g_p, g_a, g_b, gh_t = tile_logit_grads(
                spec.kind, p, alpha[i0:i1], beta[j0:j1], scale, inv_sqrt_c, spec.kappa, g)
            dx[i0:i1] += g_p @ yc[j0:j1]
            dy[j0:j1] += g_p.T @ xc[i0:i1]
            d_alpha[i0:i1] += g_a
            d_beta[j0:j1] += g_b
            gh += gh_t
        return dx.to(x.dtype), dy.to(y.dtype), d_alpha, d_beta, gh
BACKEND = TorchBlockwise()
