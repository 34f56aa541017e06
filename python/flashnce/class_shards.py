"""Model-parallel classes: ``margin_softmax(..., group=)`` with the centres sharded over ranks.

Face recognition at 10^6 - 10^7 classes does not fit one device's centres, so each rank r
holds a contiguous shard W_r [C_r, d] of the classes [o_r, o_r + C_r) (o_r = sum of the
earlier ranks' C_q) and its local batch x_r [n_r, d] with global labels. Per step:

1. the features (and their per-row scalars, and the labels) are all-gathered: X [N, d];
2. rank r walks X against its own shard only, with each row's target skipped when it lies in
   the shard: lse_r [N] (the target is -1, i.e. no positive, for rows whose class lives
   elsewhere); the owner of row i's class also computes its margin logit l'_i (O(N d));
3. two floats per row are reduced over the ranks: lse_neg = log sum_r exp(lse_r) (an
   all-reduce of the max, then of the shifted sums, packed with the positive logits);
4. each rank keeps its own rows: per_row_i = softplus(lse_neg_i - l'_i).

No rank ever holds an N x C or N x C_r tensor (insightface's Partial FC materialises
N x C_r logits and samples classes to fit them). Traffic per step: an all-gather of N (d + r)
elements, two all-reduces of N and 2 N floats forward and one of 2 N backward, and the
gather's reduce-scatter.

Gradient convention (DDP's, as ``flashnce.distributed``): rank r returns
(W / N) * sum_{i in rank r} per_row_i ("mean"), so the mean over ranks is the global loss;
x_r.grad = W * dL/dx_r and the per-rank scale gradients average to dL/dscale (what DDP's
averaging needs). The centres are not replicated -- keep them out of DDP, as Partial FC does
-- so their gradient is exact on its own: W_r.grad = dL/dW_r (the W ranks' losses each send
it a share; it is scaled by 1 / W on the way in).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import dispatch
from .core.margin import check_margin
from .core.numerics import MAX_RADIUS
from .core.problem import TileProblem
from .core.relation import Relation
from .distributed import (_grad_mask, _handshake, all_gather_with_grad, check_group,
                          ddp_reduce, gather_rows)
from .validate import REDUCTIONS, check_choice, check_class_labels, check_features


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times ``factor``. In place: the gradient is the fresh
    dY of flashnce's own feature node, the only consumer of this output (2 GB of centres'
    gradient at C = 10^6, d = 512 must not be copied)."""

    @staticmethod
    def forward(ctx, t, factor: float):
        ctx.factor = factor
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g):
        if torch.compiler.is_compiling() or not g.is_contiguous() or g._is_view():
            return g * ctx.factor, None
        return g.mul_(ctx.factor), None


class _MergeShards(torch.autograd.Function):
    """(lse_r [N], pos_r [N]) on every rank -> (log sum_r exp lse_r, sum_r pos_r), the same
    on every rank. Backward: each rank's losses send gradients to every row, so the upstream
    gradients are summed over ranks (one all-reduce of 2 N floats), then
    d lse / d lse_r = exp(lse_r - lse) (0 where lse_r = -inf: that shard had no negative)."""

    @staticmethod
    def forward(ctx, lse_r, pos_r, group):
        n = lse_r.shape[0]
        peak = lse_r.clone()
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
        # A row with no negative on any rank (C = 1): peak -inf; shift by 0, its lse is -inf.
        peak = torch.where(torch.isfinite(peak), peak, 0.0)
        packed = torch.cat([torch.exp(lse_r - peak), pos_r])
        dist.all_reduce(packed, group=group)
        lse = peak + torch.log(packed[:n])
        ctx.group = group
        ctx.save_for_backward(lse_r, lse)
        return lse, packed[n:]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lse, g_pos):
        lse_r, lse = ctx.saved_tensors
        n = lse_r.shape[0]
        packed = torch.cat([g_lse, g_pos]).contiguous()
        dist.all_reduce(packed, group=ctx.group)
        live = lse_r > float("-inf")
        weight = torch.where(live, torch.exp(torch.where(live, lse_r - lse, 0.0)), 0.0)
        return packed[:n] * weight, packed[n:], None


def sharded_margin_softmax(x, centres, labels, *, group, margin_type, scale, margin, geometry,
                           curvature, on_manifold, reduction, backend, max_radius=MAX_RADIUS):
    """``flashnce.margin_softmax(..., group=)``; see the module docstring."""
    check_group(group)
    world = dist.get_world_size(group)
    error, prob, impl, grad_mask, lab, margin_fn = None, None, None, 0, None, None
    try:
        dispatch.check_backend_name(backend)
        check_choice(reduction, "reduction", REDUCTIONS)
        margin_fn = check_margin(margin, margin_type, geometry, allow_zero=False)
        check_features(x, centres)
        # The range of the global labels is checked against the total C by the handshake.
        lab = check_class_labels(labels, x.shape[0], 0, x.device, check_range=False)
        prob = TileProblem(x, _ScaleGrad.apply(centres, 1.0 / world), geometry, scale,
                           curvature, on_manifold, features_checked=True,
                           max_radius=max_radius)
        tspec = prob.tspec(Relation.targets(lab, skip_positives=True, cols_both=0))
        impl = dispatch.select_backend(backend, prob.x_op, prob.y_op, tspec)
        grad_mask = _grad_mask(x, centres, prob)
    except Exception as exc:  # re-raised on this rank after the handshake: no hang
        error = exc
    comm, class_sizes = _handshake(group, x, centres, lab, error, grad_mask,
                                   targets_name="labels (global class ids)")
    x_all = all_gather_with_grad(prob.x_op, comm)
    a_all = all_gather_with_grad(prob.x_scalars, comm)
    lab_all = gather_rows(lab, comm)

    first = sum(class_sizes[: comm.rank])
    local = lab_all - first
    owned = (local >= 0) & (local < class_sizes[comm.rank])
    # Rows whose class lives on another rank have no positive here: target -1 never matches.
    targets = torch.where(owned, local, -1)
    relation = Relation.targets(targets, skip_positives=True, cols_both=0)
    lse_r, _ = impl.tile_stat(x_all, prob.y_op, a_all, prob.y_scalars, prob.theta,
                              prob.tspec(relation))
    rows = owned.nonzero().squeeze(1)
    cols = targets[rows]
    pos_owned = prob.logits_of_pairs(x_all[rows], prob.y_op[cols], a_all[rows],
                                     prob.y_scalars[cols], margin_fn)
    pos_r = lse_r.new_zeros(lse_r.shape).index_put((rows,), pos_owned.to(lse_r.dtype))
    lse_neg, positive = _MergeShards.apply(lse_r, pos_r, group)

    mine = slice(comm.offset, comm.offset + comm.n_local)
    return ddp_reduce(torch.nn.functional.softplus(lse_neg[mine] - positive[mine]), comm,
                      reduction)
