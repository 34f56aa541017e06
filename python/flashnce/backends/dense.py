"""The tile op contract on the whole materialised N x M matrix: ``backend="reference"``.

``dense_tile_stat(x, y, alpha, beta, theta, relation, kind, stat, kappa)`` returns
(row_stat, col_stat) ([N], [M0]; [N, w], [M0, w] for a state of w values) exactly as ``flashnce::tile_fwd`` defines them
(``flashnce.core.spec``), built from the torch epilogue spec and the dense role matrix, with
autograd for the backward (d_theta = dL/d theta follows from autograd on theta). Memory
O(N M): for tests of the compiled and Triton ops at small sizes, in float64. ``count`` (ranks,
no backward) takes its thresholds and counts from the one materialised matrix.
"""

from __future__ import annotations

import torch

from ..core import spec
from ..core.relation import Relation, dense_roles
from ..core.stats import CountStat, PairSumStat, get_stat
from ..geometry import tile_logits
from .base import Backend, TileSpec


def dense_logits(x, y, alpha, beta, theta, kind: str, kappa: float):
    """l = scale * h + bias, [N, M], in the dtype of alpha (compute dtype)."""
    cd = alpha.dtype
    p = x.to(cd) @ y.to(cd).T
    return (tile_logits(kind, p, alpha, beta, theta[spec.THETA_SCALE],
                        theta[spec.THETA_INV_SQRT_C], kappa) + theta[spec.THETA_BIAS])


def dense_tile_stat(x, y, alpha, beta, theta, relation: Relation, kind: str, stat: str,
                    kappa: float):
    if stat not in spec.STATS:
        raise ValueError(f"unknown statistic {stat!r}")
    n, m = x.shape[0], y.shape[0]
    rel = relation.resolved(m)
    logits = dense_logits(x, y, alpha, beta, theta, kind, kappa)
    roles = dense_roles(rel, n, m, x.device)
    m0 = rel.cols_both
    if stat == "pair_sum":
        f = PairSumStat.values(logits, roles)
        return f.sum(1), f[:, :m0].sum(0)
    if stat == "count":
        return _dense_count(logits.detach(), roles), _dense_count(logits[:, :m0].detach().T,
                                                                  roles[:, :m0].T)
    skip = roles == spec.ROLE_SKIP
    row, col = _masked_lse(logits, skip, 1), _masked_lse(logits[:, :m0], skip[:, :m0], 0)
    if stat == "masked_sum":
        pos = torch.where(roles == spec.ROLE_POSITIVE, logits, 0.0)
        row = torch.stack([row, pos.sum(1)], dim=-1)
        col = torch.stack([col, pos[:, :m0].sum(0)], dim=-1)
    return row, col


def _dense_count(logits, roles):
    """count's rule (``flashnce.core.spec``) on a whole [n, m] matrix, per row."""
    tau, t = CountStat.thresholds(logits, roles, 0)
    return CountStat.finish(CountStat.count(logits, roles, tau, t, 0), t, logits.dtype)


def _masked_lse(logits, skip, dim: int):
    """logsumexp over the non-skipped entries; -inf (with zero gradient, not NaN) where a row
    has none: torch.logsumexp's gradient at an all -inf row is exp(-inf + inf) = NaN."""
    empty = skip.all(dim, keepdim=True)
    safe = torch.where(empty, 0.0, logits.masked_fill(skip, float("-inf")))
    lse = torch.logsumexp(safe, dim)
    return torch.where(empty.squeeze(dim), float("-inf"), lse)


class MaterialisedReference(Backend):
    """``backend="reference"``: the tile op on the materialised N x M logits, with autograd.

    The same epilogue spec and clamps as the kernels (so coincident points keep finite
    gradients), but O(N M) memory: the baseline the memory-linear backends are measured
    against, and an oracle for tests. Runs only when asked for by name.
    """

    name = "reference"
    devices = None

    def tile_stat(self, x, y, alpha, beta, theta, tspec: TileSpec):
        return dense_tile_stat(x, y, alpha, beta, theta, tspec.relation, tspec.kind,
                               tspec.stat, tspec.kappa)

    def forward_raw(self, x, y, alpha, beta, theta, tspec: TileSpec):
        with torch.no_grad():
            return self.tile_stat(x, y, alpha, beta, theta, tspec)

    def backward_raw(self, x, y, alpha, beta, theta, tspec: TileSpec, row_stat, col_stat,
                     g_row, g_col):
        """The contract's backward: G from the *given* statistics (the stat's upstream rule,
        ``flashnce.core.stats``), then the gradients of sum_ij G_ij l_ij by autograd on the
        materialised logits. Recomputing the statistics here instead would be right for a
        whole walk but not for a block of one (``flashnce.core.block_walk``)."""
        inputs = [t.detach().requires_grad_() for t in (x, y, alpha, beta, theta)]
        rel = tspec.relation.resolved(y.shape[0])
        with torch.enable_grad():
            logits = dense_logits(*inputs, tspec.kind, tspec.kappa)
            roles = dense_roles(rel, x.shape[0], y.shape[0], x.device)
            g = get_stat(tspec.stat).upstream(logits.detach(), roles, row_stat, col_stat,
                                              g_row, g_col)
            total = (g * logits.masked_fill(roles == spec.ROLE_SKIP, 0.0)).sum()
            grads = torch.autograd.grad(total, inputs, allow_unused=True)
        return tuple(torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads))


BACKEND = MaterialisedReference()
