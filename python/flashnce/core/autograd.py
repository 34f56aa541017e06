"""The one autograd path of the Python backends, and the theta-gradient rule they share.

``tile_stat_function(backend, x, y, alpha, beta, theta, tspec)`` wraps a backend's
``forward_raw`` / ``backward_raw`` (contract in ``flashnce.core.spec``) in one
``torch.autograd.Function``. Saved for backward: x, y, alpha, beta, theta, row_stat,
col_stat and the relation's index tensors; no N x M tensor (the backward recomputes tiles).
The compiled ops get the equivalent registration in ``flashnce.core.library``.

``row_sum_function(backend, ...)`` is the one-pass path of a stat whose G is local to the
pair (``spec.STAT_INFO[stat]["local_grad"]``, e.g. ``pair_sum``): the total sum_i row_stat[i]
as a 0-d tensor whose gradients the backend's ``forward_grad_raw`` computed in the same walk
as the forward. Saved for backward: those gradients (O((N + M) d)); the backward only scales
them by the scalar upstream gradient, so no tile is recomputed.

The relation's index tensors are passed to ``apply`` as tensors, not hidden inside the spec,
so that ``torch.compile`` sees them as graph inputs.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from . import spec


def theta_grad(sum_gh, sum_g, theta, kind: str):
    """dL/dtheta [3] from the tile sums sum_ij G_ij h_ij and sum_ij G_ij.

    l = scale * h + bias, so dL/dscale = sum G h and dL/dbias = sum G; the hyperbolic h is
    proportional to k = 1/sqrt(c) (its only explicit curvature dependence), so
    dL/dk = scale * sum G h / k. Other kinds do not read k: 0.
    """
    scale, k = theta[spec.THETA_SCALE], theta[spec.THETA_INV_SQRT_C]
    d_k = scale * sum_gh / k if kind == "hyperbolic" else torch.zeros_like(sum_gh)
    return torch.stack([sum_gh, d_k, sum_g]).to(theta.dtype)


class _TileStat(torch.autograd.Function):
    @staticmethod
    def forward(x, y, alpha, beta, theta, tspec, backend, *rel_tensors):
        tspec = replace(tspec, relation=replace(tspec.relation, tensors=tuple(rel_tensors)))
        return backend.forward_raw(x, y, alpha, beta, theta, tspec)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, alpha, beta, theta, tspec, backend, *rel_tensors = inputs
        row, col = output
        ctx.save_for_backward(x, y, alpha, beta, theta, row, col, *rel_tensors)
        ctx.tspec, ctx.backend = tspec, backend
        ctx.set_materialize_grads(False)

    @staticmethod
    @torch.autograd.function.once_differentiable  # the raw backward has no derivative
    def backward(ctx, g_row, g_col):
        x, y, alpha, beta, theta, row, col, *rel_tensors = ctx.saved_tensors
        tspec = replace(ctx.tspec, relation=replace(ctx.tspec.relation,
                                                    tensors=tuple(rel_tensors)))
        g_row = torch.zeros_like(row) if g_row is None else g_row.contiguous()
        g_col = torch.zeros_like(col) if g_col is None else g_col.contiguous()
        grads = ctx.backend.backward_raw(x, y, alpha, beta, theta, tspec, row, col, g_row, g_col)
        return (*grads, None, None, *([None] * len(rel_tensors)))


def tile_stat_function(backend, x, y, alpha, beta, theta, tspec):
    """Differentiable (row_stat, col_stat) through ``backend``'s raw forward / backward."""
    rel = tspec.relation
    return _TileStat.apply(x, y, alpha, beta, theta, replace(tspec, relation=replace(
        rel, tensors=())), backend, *rel.tensors)


class _RowSum(torch.autograd.Function):
    @staticmethod
    def forward(x, y, alpha, beta, theta, tspec, backend, *rel_tensors):
        tspec = replace(tspec, relation=replace(tspec.relation, tensors=tuple(rel_tensors)))
        row, _, dx, dy, d_alpha, d_beta, d_theta = backend.forward_grad_raw(
            x, y, alpha, beta, theta, tspec)
        return row.sum(), dx, dy, d_alpha, d_beta, d_theta

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, *grads = output
        ctx.save_for_backward(*grads)
        ctx.n_rel = len(inputs) - 7
        ctx.mark_non_differentiable(*grads)

    @staticmethod
    @torch.autograd.function.once_differentiable  # the saved gradients have no derivative
    def backward(ctx, g, *_unused):
        # A product, never the saved tensor itself: flashnce.features adds into dX in place.
        grads = [(t * g).to(t.dtype) for t in ctx.saved_tensors]
        return (*grads, None, None, *([None] * ctx.n_rel))


def row_sum_function(backend, x, y, alpha, beta, theta, tspec):
    """sum_i row_stat[i] (0-d, compute dtype), differentiable through the gradients that
    ``backend.forward_grad_raw`` computes in its forward walk (stats with a local G only)."""
    if not spec.STAT_INFO[tspec.stat]["local_grad"]:
        raise ValueError(f"statistic {tspec.stat!r} has no one-pass gradient (its G needs the "
                         f"finished row / column states)")
    rel = tspec.relation
    total, *_ = _RowSum.apply(x, y, alpha, beta, theta, replace(tspec, relation=replace(
        rel, tensors=())), backend, *rel.tensors)
    return total
