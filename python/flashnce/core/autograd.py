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
them in place by the scalar upstream gradient (no tile is recomputed, nothing of size N x d
allocated); a second backward through the same graph reruns the walk.

The relation's index tensors are passed to ``apply`` as tensors, not hidden inside the spec,
so that ``torch.compile`` sees them as graph inputs.

Same operand (``spec.FLAG_SAME_OPERAND``, set by ``Backend.operand_spec`` when
``same_operand(x, y)`` and the backend supports it): the raw backward returns dX + dY as dX
and an empty dY; these Functions (and ``flashnce.core.library``'s) hand autograd that dX for
x and None for y, so one N x d gradient reaches ``flashnce.features`` instead of two.
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


def same_operand(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether y is x for a tile walk's backward: a gradient of x + the gradient of y may be
    returned as x's alone (``spec.FLAG_SAME_OPERAND``).

    True for one tensor, or for two views of one base with the same geometry (the same-set
    losses: ``flashnce.features`` hands them two views of the batch), both requiring grad:
    both gradients then reach the base through the same view, so their sum is what autograd
    would form. Storage sharing alone is not enough (``y = x.detach()`` shares storage but
    takes no gradient; two leaves may share one storage). Under dynamo tracing only identity
    counts (it cannot read storage offsets); the eager path is the one whose memory matters.
    """
    if y is x:
        return True
    if torch.compiler.is_compiling():
        return False
    base = x._base
    return (base is not None and y._base is base and x.requires_grad and y.requires_grad
            and x.dtype == y.dtype and x.shape == y.shape and x.stride() == y.stride()
            and x.storage_offset() == y.storage_offset())


def with_same_operand(tspec, on: bool = True):
    """tspec with the relation's FLAG_SAME_OPERAND bit set (on) or as it is."""
    if not on:
        return tspec
    rel = tspec.relation
    return replace(tspec, relation=replace(rel, flags=rel.flags | spec.FLAG_SAME_OPERAND))


def is_same_operand(flags: int) -> bool:
    """Whether an options vector's flags ask for the same-operand backward."""
    return bool(flags & spec.FLAG_SAME_OPERAND)


def autograd_grads(grads, flags: int) -> list:
    """A raw backward's (dX, dY, d_alpha, d_beta, d_theta) as autograd's input gradients: dY
    is None when it was merged into dX (FLAG_SAME_OPERAND; the raw dY is empty)."""
    grads = list(grads)
    if is_same_operand(flags):
        grads[1] = None
    return grads


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
        grads = autograd_grads(grads, tspec.relation.flags)
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
        x, y, alpha, beta, theta, tspec, backend, *rel_tensors = inputs
        _, *grads = output
        # The inputs too (references, no copies): a second backward recomputes from them. The
        # gradients are held on ctx, not saved: the first backward scales them in place, which
        # save_for_backward's version check would refuse at a second unpacking.
        ctx.grads = autograd_grads(grads, tspec.relation.flags)
        ctx.save_for_backward(x, y, alpha, beta, theta, *rel_tensors)
        ctx.tspec, ctx.backend, ctx.n_rel = tspec, backend, len(rel_tensors)
        ctx.mark_non_differentiable(*grads)
        ctx.set_materialize_grads(False)  # no zero N x d "gradients" of the gradient outputs

    @staticmethod
    @torch.autograd.function.once_differentiable  # the saved gradients have no derivative
    def backward(ctx, g, *_unused):
        if g is None:  # the loss itself got no gradient
            return (None,) * (7 + ctx.n_rel)
        if ctx.grads is not None:
            # First backward: the saved gradients become the returned ones, scaled in place
            # (flashnce.features then adds into dX in place): nothing of size N x d is
            # allocated here.
            grads, ctx.grads = [None if t is None else t.mul_(g.to(t.dtype))
                                for t in ctx.grads], None
        else:
            # A second backward through the same graph (retain_graph=True, gradcheck): the
            # saved gradients are used up, so the walk runs again.
            x, y, alpha, beta, theta, *rel = ctx.saved_tensors
            tspec = replace(ctx.tspec, relation=replace(ctx.tspec.relation, tensors=tuple(rel)))
            _, _, *fresh = ctx.backend.forward_grad_raw(x, y, alpha, beta, theta, tspec)
            grads = [None if t is None else (t * g).to(t.dtype)
                     for t in autograd_grads(fresh, tspec.relation.flags)]
        return (*grads, None, None, *([None] * ctx.n_rel))


def scale_saved_gradients(ctx, g):
    """The saved one-pass gradients times the scalar upstream gradient g, in place (as the
    first backward of ``_RowSum``), for Functions that cannot rerun their walk (the
    distributed ring: every rank would have to): a second backward is refused."""
    if getattr(ctx, "used_up", False):
        raise RuntimeError(
            "flashnce: the one-pass gradients of this loss were already backpropagated (they "
            "are scaled in place); a second backward through the same graph "
            "(retain_graph=True) needs the recompute path: reduction='none' then .sum()")
    ctx.used_up = True
    return [t.mul_(g.to(t.dtype)) for t in ctx.saved_tensors]


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
