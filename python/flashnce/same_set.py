"""Same-set contrastive losses: SupCon and NT-Xent, every row against every other row.

Both run one tile walk of the batch against itself with the self pairs skipped and no column
statistic (``cols_both = 0``: the matrix is symmetric, the rows see everything):

* ``supcon`` (Khosla et al. 2020, eq. 2, "L_out"): statistic ``masked_sum`` with the
  ``labels`` relation, so each row's lse and the sum of its positives' logits come from the
  same walk and the same arithmetic:

      L_i = lse_{j != i} l_ij - (1 / |P(i)|) sum_{p in P(i)} l_ip,   P(i) = {j != i: y_j = y_i}

  "L_in" (``variant="in"``) = lse_{j != i} l_ij - log mean_{p in P(i)} exp l_ip needs a second
  lse over the positives alone: one walk per class (block of equal labels), see ``_lse_within``.
  Rows without a positive are left out of the mean and counted (``return_count=True``).
* ``ntxent`` (SimCLR): z = cat(z1, z2) [2N, d], the positive of row i is its partner i +- N:
  three ``lse`` walks over the blocks (z1 x z1 and z2 x z2 with self pairs skipped, z1 x z2
  with the partners skipped, row and column statistics), merged per row by logaddexp, and the
  partner's logit in O(N d): softplus(lse_neg - l_partner) (denominator "all") or
  lse_neg - l_partner ("negatives": the decoupled form, DCL, Yeh et al. 2022). No copy of z.

Memory O(N d): the backward recomputes tiles from the saved (N, 2) states.
"""

from __future__ import annotations

import torch

from . import dispatch
from .core.numerics import MAX_RADIUS
from .core.block_walk import Walk, block_walk
from .core.problem import TileProblem, reduce_losses
from .core.relation import Relation
from .distributed import (_grad_mask, _handshake, all_gather_with_grad, check_group,
                          ddp_reduce, gather_rows)
from .validate import (REDUCTIONS, autocast_off, check_choice, check_features,
                       check_label_tensor, check_positive_number)

VARIANTS = ("out", "in")
DENOMINATORS = ("all", "negatives")


def _temperature_scale(temperature):
    """scale = 1 / temperature (a float, or a 1-element tensor that keeps its gradient)."""
    if isinstance(temperature, torch.Tensor):
        return 1.0 / temperature
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a positive float or tensor, got "
                        f"{type(temperature).__name__}")
    if not temperature > 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite positive number, got {temperature}")
    return 1.0 / float(temperature)


def label_positive_counts(row_labels, col_labels, *, skip_self: bool,
                          diag_offset: int = 0) -> torch.Tensor:
    """|P(i)| = #{j: col_labels[j] == row_labels[i]} minus the self pair (i, i + diag_offset)
    when it is skipped and has equal labels; O(N + M) (labels compacted by torch.unique)."""
    n, m = row_labels.shape[0], col_labels.shape[0]
    _, inverse = torch.unique(torch.cat([row_labels, col_labels]), return_inverse=True)
    rows, cols = inverse[:n], inverse[n:]
    counts = torch.bincount(cols, minlength=int(inverse.max()) + 1 if n + m else 0)[rows]
    if skip_self and n and m:
        j = torch.arange(n, device=counts.device) + diag_offset
        valid = (j >= 0) & (j < m)
        same = valid & (col_labels[j.clamp(0, m - 1)] == row_labels)
        counts = counts - same.to(counts.dtype)
    return counts


def _lse_within(prob, rows_lab, cols_lab, backend, cols=None, row_start=0):
    """log sum_{p in P(i)} exp l_ip per row (-inf without positives).

    Rows and columns are sorted by label (stable), so each class is one contiguous block of
    each; one ``core.block_walk`` node then walks every class's rows against its columns with
    the self pairs skipped (one raw call per class forward and backward, one gradient buffer:
    no autograd node per class). The rows are columns row_start, row_start + 1, ... of the
    columns (y[:N] is x in one process; the local block of the gathered columns across
    ranks), so within a class its rows appear among its columns in the same order, after the
    class's ``before`` columns ahead of row_start: the a-th row's self pair is column
    before + a of the class block. ``cols``: (operand, scalars) of the columns, the problem's y
    by default. Memory: the sorted copies of the operands, O((N + M) d)."""
    y_op, y_scalars = (prob.x_op, prob.x_scalars) if cols is None else cols
    n = prob.x_op.shape[0]
    out = prob.x_scalars.new_full((n,), float("-inf"), dtype=prob.theta.dtype)
    row_lab_s, row_order = torch.sort(rows_lab, stable=True)
    col_lab_s, col_order = torch.sort(cols_lab, stable=True)
    classes, row_counts = torch.unique_consecutive(row_lab_s, return_counts=True)
    col_lo = torch.searchsorted(col_lab_s, classes)
    col_hi = torch.searchsorted(col_lab_s, classes, right=True)
    before = torch.zeros_like(classes)  # class-c columns ahead of row_start
    if row_start:
        ahead = torch.sort(cols_lab[:row_start]).values
        before = (torch.searchsorted(ahead, classes, right=True)
                  - torch.searchsorted(ahead, classes))
    spans = torch.stack([torch.cumsum(row_counts, 0) - row_counts, row_counts, col_lo,
                         col_hi - col_lo, before]).T.tolist()  # one host sync for all classes
    same = cols is None  # one operand: the rows are the columns
    ops = (prob.x_op[row_order],) if same else (prob.x_op[row_order], y_op[col_order])
    scalars = ((prob.x_scalars[row_order],) if same else
               (prob.x_scalars[row_order], y_scalars[col_order]))
    base = prob.tspec(Relation.none(skip_self=True, cols_both=0))
    impl = dispatch.select_backend(backend, ops[0], ops[-1], base)
    walks, starts = [], []
    for r0, nr, c0, nc, bef in spans:
        if nc < 2:  # one column of the class (the row itself, or another rank's): no positive
            continue
        walks.append(Walk(0, 0 if same else 1, base.shifted(bef, 0), impl,
                          rows=(r0, r0 + nr), cols=(c0, c0 + nc)))
        starts.append((r0, nr))
    if not walks:
        return out
    stats = block_walk(walks, ops, scalars, prob.theta)
    pieces, at = [], 0
    for (r0, nr), (row, _) in zip(starts, stats):
        if r0 > at:
            pieces.append(out[at:r0])  # classes without a positive: -inf
        pieces.append(row)
        at = r0 + nr
    pieces.append(out[at:])
    return out.index_put((row_order,), torch.cat(pieces))


def _supcon_rows(x, y, row_lab, col_lab, *, scale, variant, geometry, curvature, on_manifold,
                 backend, max_radius=MAX_RADIUS):
    """Per-row SupCon losses [N] (0 on rows without a positive) and |P(i)| [N]."""
    prob = TileProblem(x, y, geometry, scale, curvature, on_manifold, features_checked=True,
                       max_radius=max_radius)
    counts = label_positive_counts(row_lab, col_lab, skip_self=True)
    has_pos = counts > 0
    if variant == "out":
        relation = Relation.labels(row_lab, col_lab, skip_self=True, cols_both=0)
        tspec = prob.tspec(relation, "masked_sum")
        impl = dispatch.select_backend(backend, prob.x_op, prob.y_op, tspec)
        row, _ = impl.tile_stat(prob.x_op, prob.y_op, prob.x_scalars, prob.y_scalars,
                                prob.theta, tspec)
        mean_pos = row[:, 1] / counts.clamp_min(1).to(row.dtype)
        per_row = row[:, 0] - mean_pos
    else:
        relation = Relation.none(skip_self=True, cols_both=0)
        tspec = prob.tspec(relation)
        impl = dispatch.select_backend(backend, prob.x_op, prob.y_op, tspec)
        lse_all, _ = prob.stat(impl, relation)
        lse_pos = _lse_within(prob, row_lab, col_lab, backend)
        lse_pos = torch.where(has_pos, lse_pos, 0.0)
        per_row = lse_all - lse_pos + counts.clamp_min(1).to(lse_all.dtype).log()
    # Rows without a positive: exactly 0 (a select, so a -inf / NaN there cannot leak).
    return torch.where(has_pos, per_row, 0.0), counts


def _reduce_over_positive_rows(per_row, counts, reduction):
    """'mean' over the rows that have a positive (0 when none has), 'sum', or 'none'."""
    if reduction == "mean":
        k = (counts > 0).sum()
        return per_row.sum() / k.clamp_min(1).to(per_row.dtype)
    return reduce_losses(per_row, reduction)


@autocast_off(towers=1)
def supcon(embeddings, labels, *, temperature=0.1, variant="out", geometry="cosine",
           curvature=1.0, on_manifold=False, reduction="mean", backend="auto",
           return_count=False, max_radius=MAX_RADIUS, group=None):
    """Supervised contrastive loss (Khosla et al. 2020) without the N x N matrix.

    embeddings [N, d], labels [N] (integers); l_ij = h(e_i, e_j) / temperature (h: the
    geometry's similarity -- the cosine by default, as pytorch-metric-learning's SupConLoss;
    minus a distance for the distance geometries), self pairs skipped, P(i) = {j != i :
    labels_j = labels_i}:

        variant "out" (eq. 2, the paper's choice):
            L_i = lse_{j != i} l_ij - (1 / |P(i)|) sum_{p in P(i)} l_ip
        variant "in":
            L_i = lse_{j != i} l_ij - log((1 / |P(i)|) sum_{p in P(i)} exp l_ip)
            (one extra walk per class: slow with many small classes)

    Rows with no positive (a label seen once) have no loss: they are left out of the mean
    (pytorch-metric-learning's convention; SupContrast's code counts them as 0 in its mean,
    its earlier versions returned NaN), give 0
    under reduction="none", and their number is returned with ``return_count=True``
    (``(loss, rows_without_positive)``). A batch with no positive at all gives 0.

    Args: temperature (float or tensor), geometry / curvature / on_manifold / backend /
    max_radius as for ``flashnce.infonce``; reduction "mean" (over rows with a positive), "sum" or "none".
    Returns fp32 (float64 for float64 inputs).

    ``group`` (a torch.distributed process group; gather mode, both variants): each rank
    passes its local rows and their labels (uneven sizes allowed, every rank >= 1 row); the
    global batch is their concatenation in rank order, positives on other ranks count, and
    the returned loss follows the DDP convention of ``flashnce.distributed``: "mean" is
    (W / K) * sum of the local rows' losses (K = global rows with a positive), "sum" W * that
    sum, "none" the local rows' losses; ``return_count`` gives the global count.
    """
    check_choice(variant, "variant", VARIANTS)
    check_choice(reduction, "reduction", REDUCTIONS)
    dispatch.check_backend_name(backend)
    if not isinstance(return_count, bool):
        raise TypeError(f"return_count must be a bool, got {type(return_count).__name__}")
    if group is not None:
        return _distributed_supcon(embeddings, labels, group=group, temperature=temperature,
                                   variant=variant, geometry=geometry, curvature=curvature,
                                   on_manifold=on_manifold, reduction=reduction,
                                   backend=backend, return_count=return_count,
                                   max_radius=max_radius)
    check_features(embeddings, embeddings)
    lab = check_label_tensor(labels, "labels", embeddings.shape[0], embeddings.device)
    per_row, counts = _supcon_rows(
        embeddings, embeddings, lab, lab, scale=_temperature_scale(temperature),
        variant=variant, geometry=geometry, curvature=curvature, on_manifold=on_manifold,
        backend=backend, max_radius=max_radius)
    loss = _reduce_over_positive_rows(per_row, counts, reduction)
    return (loss, int((counts == 0).sum())) if return_count else loss


def _supcon_walk_spec(prob, row_lab, col_lab, variant):
    """The walk of every row against all columns: "out" masked_sum over the labels relation
    (lse and the positives' logit sum), "in" the plain lse (self pairs skipped)."""
    if variant == "out":
        return prob.tspec(Relation.labels(row_lab, col_lab, skip_self=True, cols_both=0),
                          "masked_sum")
    return prob.tspec(Relation.none(skip_self=True, cols_both=0))


def _distributed_supcon(e, labels, *, group, temperature, variant, geometry, curvature,
                        on_manifold, reduction, backend, return_count, max_radius,
                        pending=None):
    """SupCon across ranks: local rows against the all-gathered embeddings (gather). "in"
    adds, per class of the local rows, the lse of its local rows against the gathered columns
    of that class (``_lse_within`` on the gathered block, self pairs at global indices).
    ``pending``: an error the caller met while preparing this rank's inputs, raised here after
    the handshake like any other (so the other ranks raise too instead of hanging)."""
    check_group(group)
    error, prob, impl, grad_mask, lab = None, None, None, 0, None
    try:
        if pending is not None:
            raise pending
        check_features(e, e)
        lab = check_label_tensor(labels, "labels", e.shape[0], e.device)
        prob = TileProblem(e, e, geometry, _temperature_scale(temperature), curvature,
                           on_manifold, features_checked=True, max_radius=max_radius)
        impl = dispatch.select_backend(backend, prob.x_op, prob.y_op,
                                       _supcon_walk_spec(prob, lab, lab, variant))
        grad_mask = _grad_mask(e, e, prob)
    except Exception as exc:  # re-raised on this rank after the handshake: no hang
        error = exc
    comm, _ = _handshake(group, e, e, None, error, grad_mask)
    y_all = all_gather_with_grad(prob.y_op, comm)
    b_all = all_gather_with_grad(prob.y_scalars, comm)
    lab_all = gather_rows(lab, comm)
    # Local row i is global row offset + i: its self pair is column i + offset.
    tspec = _supcon_walk_spec(prob, lab, lab_all, variant).shifted(comm.offset, 0)
    row, _ = impl.tile_stat(prob.x_op, y_all, prob.x_scalars, b_all, prob.theta, tspec)
    counts = label_positive_counts(lab, lab_all, skip_self=True, diag_offset=comm.offset)
    has_pos = counts > 0
    n_pos = counts.clamp_min(1).to(row.dtype)
    if variant == "out":
        per_row = row[:, 0] - row[:, 1] / n_pos
    else:
        lse_pos = _lse_within(prob, lab, lab_all, backend, cols=(y_all, b_all),
                              row_start=comm.offset)
        per_row = row - torch.where(has_pos, lse_pos, 0.0) + n_pos.log()
    # Rows without a positive: exactly 0 (a select, so a -inf / NaN there cannot leak).
    per_row = torch.where(has_pos, per_row, 0.0)
    kept = has_pos.sum().reshape(1).to(torch.int64)
    torch.distributed.all_reduce(kept, group=group)
    if reduction == "none":
        loss = per_row
    elif reduction == "sum":
        loss = per_row.sum() * comm.world
    else:
        loss = per_row.sum() * (comm.world / max(int(kept), 1))
    missing = comm.total - int(kept)
    return (loss, missing) if return_count else loss


CONTRAST_MODES = ("all", "one")


@autocast_off(towers=1)
def supcon_views(features, labels=None, *, temperature=0.07, base_temperature=0.07,
                 contrast_mode="all", geometry="dot", curvature=1.0, on_manifold=False,
                 backend="auto", return_count=False, group=None):
    """SupContrast's multi-view form (HobbitLong/SupContrast ``SupConLoss.forward``).

    features [bsz, n_views, ...] (flattened to [bsz, n_views, d]); labels [bsz] or None
    (SimCLR: the views of one sample are its positives). The contrast set is every view,
    view-major (view 0 of every sample, then view 1, ...); anchors are every view
    (``contrast_mode="all"``) or view 0 (``"one"``). The loss is (temperature /
    base_temperature) times the mean of the "out" row losses over anchors with a positive.
    geometry "dot" as the reference code (it expects L2-normalised features).

    ``group`` (torch.distributed, ``contrast_mode="all"``): each rank passes its samples'
    views and labels; the contrast set is every rank's views (the loss does not depend on
    their order), and the result follows ``supcon(group=)``'s DDP convention. labels=None
    means every sample is its own class across ranks too (label i * W + rank).
    """
    check_choice(contrast_mode, "contrast_mode", CONTRAST_MODES)
    dispatch.check_backend_name(backend)
    factor = float(temperature) / check_positive_number(base_temperature, "base_temperature")
    if group is not None:
        return _distributed_supcon_views(features, labels, group=group, factor=factor,
                                         temperature=temperature, contrast_mode=contrast_mode,
                                         geometry=geometry, curvature=curvature,
                                         on_manifold=on_manifold, backend=backend,
                                         return_count=return_count)
    contrast, lab, views = _contrast_set(features, labels)
    col_lab = lab.repeat(views)
    anchors, row_lab = (contrast, col_lab) if contrast_mode == "all" else (features[:, 0], lab)
    per_row, counts = _supcon_rows(
        anchors, contrast, row_lab, col_lab, scale=_temperature_scale(temperature),
        variant="out", geometry=geometry, curvature=curvature, on_manifold=on_manifold,
        backend=backend)
    loss = factor * _reduce_over_positive_rows(per_row, counts, "mean")
    return (loss, int((counts == 0).sum())) if return_count else loss


def _contrast_set(features, labels, label_of_sample=None):
    """(contrast [n_views * bsz, d] view-major, labels [bsz], n_views) of SupContrast's
    features [bsz, n_views, ...]; labels None: ``label_of_sample(bsz)`` (arange by default)."""
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a tensor, got {type(features).__name__}")
    if features.dim() < 3:
        raise ValueError(f"features must be [bsz, n_views, ...] (at least 3 dimensions), got "
                         f"shape {tuple(features.shape)}")
    bsz, views = features.shape[:2]
    features = features.reshape(bsz, views, -1)
    contrast = torch.cat(torch.unbind(features, dim=1))  # [views * bsz, d], view-major
    check_features(contrast, contrast)
    if labels is None:
        labels = (label_of_sample or (lambda n: torch.arange(n)))(bsz).to(features.device)
    return contrast, check_label_tensor(labels, "labels", bsz, features.device), views


def _distributed_supcon_views(features, labels, *, group, factor, contrast_mode, **kw):
    """supcon_views across ranks: every rank's contrast rows against the gathered ones is
    ``supcon(variant="out", group=)`` on the contrast set with each view's labels."""
    check_group(group)
    contrast, col_lab, pending = features, labels, None
    try:
        if contrast_mode != "all":
            raise ValueError(f"supcon_views(group=...) supports contrast_mode='all' only, got "
                             f"{contrast_mode!r}")
        world, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
        contrast, lab, views = _contrast_set(
            features, labels, lambda n: torch.arange(n) * world + rank)
        col_lab = lab.repeat(views)
    except (TypeError, ValueError) as exc:  # raised after the handshake, on every rank
        pending = exc
        if not isinstance(contrast, torch.Tensor) or contrast.dim() != 2:
            contrast = torch.zeros(1, 1)
    out = _distributed_supcon(contrast, col_lab, variant="out", reduction="mean",
                              max_radius=MAX_RADIUS, pending=pending, group=group, **kw)
    if kw["return_count"]:
        return factor * out[0], out[1]
    return factor * out


@autocast_off
def ntxent(z1, z2, *, temperature=0.5, geometry="cosine", denominator="all", curvature=1.0,
           on_manifold=False, reduction="mean", backend="auto", max_radius=MAX_RADIUS,
           group=None):
    """NT-Xent (SimCLR) over two views z1, z2 [N, d] without the 2N x 2N matrix.

    z = cat(z1, z2); row i's positive is its partner p(i) = i +- N, self pairs are skipped;
    l_ij = h(z_i, z_j) / temperature (cosine by default):

        denominator "all" (SimCLR, lightly, pytorch-metric-learning's NTXentLoss with the two
        views as labels):  L_i = lse_{j != i} l_ij - l_{i, p(i)}
        denominator "negatives" (decoupled, DCL):  L_i = lse_{j != i, p(i)} l_ij - l_{i, p(i)}

    reduction "mean" over the 2N rows (default), "sum", or "none" ([2N]: rows of z1 then z2).
    temperature: lightly's default 0.5; SimCLR used 0.1 - 0.5, pytorch-metric-learning 0.07.

    ``group`` (a torch.distributed process group; gather mode): each rank passes its local
    views z1_r, z2_r [n_r, d] (uneven n_r allowed, every rank >= 1 row); the global batch is
    z1 = cat_r z1_r, z2 = cat_r z2_r (rank order, N = sum n_r), so row i's partner is i +- N
    globally. Rank r's 2 n_r rows (z1_r then z2_r) run against the all-gathered views, and it
    returns, under the DDP convention of ``flashnce.distributed``, "mean": (W / 2N) * sum of
    its rows' losses, "sum": W * that sum, "none": its rows' losses [2 n_r] (z1_r rows then
    z2_r rows, each its single-process value). mean_r loss_r is the single-process loss,
    z.grad_r = W dL/dz_r and mean_r temperature.grad_r = dL/dtemperature.
    """
    if group is not None:
        return _distributed_ntxent(z1, z2, group=group, temperature=temperature,
                                   geometry=geometry, denominator=denominator,
                                   curvature=curvature, on_manifold=on_manifold,
                                   reduction=reduction, backend=backend, max_radius=max_radius)
    check_choice(denominator, "denominator", DENOMINATORS)
    check_choice(reduction, "reduction", REDUCTIONS)
    dispatch.check_backend_name(backend)
    check_features(z1, z2)
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape (two views of the same batch), "
                         f"got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    scale = _temperature_scale(temperature)
    kw = dict(features_checked=True, max_radius=max_radius)
    # Three walks over the blocks of the 2N x 2N matrix, no copy of cat(z1, z2): z1 x z2 with
    # its diagonal (the partners) skipped, whose row statistic is z1's side and column
    # statistic z2's (the logits are symmetric in their two arguments), then z1 x z1 and
    # z2 x z2 with the self pairs skipped (row statistics): 3 N^2 pairs instead of the 4 N^2 of
    # one walk over z. One node for the three (core.block_walk), so its backward holds one
    # gradient per view plus a chunk pair's transients, not a walk's dX and dY each.
    prob = TileProblem(z1, z2, geometry, scale, curvature, on_manifold, with_positives=True,
                       **kw)
    cross_rel = Relation.diagonal(skip_positives=True)
    self_rel = Relation.none(skip_self=True, cols_both=0)
    ops, scalars = (prob.x_op, prob.y_op), (prob.x_scalars, prob.y_scalars)
    walks = [Walk(r, c, prob.tspec(rel), dispatch.select_backend(
        backend, ops[r], ops[c], prob.tspec(rel)))
        for r, c, rel in ((0, 1, cross_rel), (0, 0, self_rel), (1, 1, self_rel))]
    (row_12, col_12), (within_1, _), (within_2, _) = block_walk(walks, ops, scalars,
                                                                prob.theta)
    lse_neg = [_logaddexp(within_1, row_12), _logaddexp(within_2, col_12)]
    lse_neg = torch.cat(lse_neg)
    positive = prob.positive_logits().repeat(2)
    if denominator == "all":  # lse over j != i (partner included) - l_partner, >= 0
        per_row = torch.nn.functional.softplus(lse_neg - positive)
    else:
        per_row = lse_neg - positive
    if n == 1 and denominator == "negatives":  # no negative at all: nothing to contrast
        per_row = torch.where(torch.isfinite(per_row), per_row, 0.0)
    return reduce_losses(per_row, reduction)


def _logaddexp(a, b):
    """logaddexp with a zero gradient (not 0/0) where both sides are -inf (N = 1: a row with
    no pair left in either block)."""
    live = torch.maximum(a, b) > float("-inf")
    merged = torch.logaddexp(torch.where(live, a, 0.0), torch.where(live, b, 0.0))
    return torch.where(live, merged, float("-inf"))


def _distributed_ntxent(z1, z2, *, group, temperature, geometry, denominator, curvature,
                        on_manifold, reduction, backend, max_radius):
    """NT-Xent across ranks (gather): local rows z_r = cat(z1_r, z2_r) against the gathered
    z_q of every rank. The gathered columns are ordered rank by rank ([z1_0; z2_0; z1_1; ...],
    not cat(z1, z2)): a row's lse and positive do not depend on the column order, and this
    order makes z_r one block of the gather (global column 2 offset + i is local row i, and
    row i's partner is column 2 offset + (i +- n_r))."""
    check_group(group)
    error, prob, impl, grad_mask, z, relation = None, None, None, 0, z1, None
    try:
        dispatch.check_backend_name(backend)
        check_choice(denominator, "denominator", DENOMINATORS)
        check_choice(reduction, "reduction", REDUCTIONS)
        check_features(z1, z2)
        if z1.shape != z2.shape:
            raise ValueError(f"z1 and z2 must have the same shape on each rank (two views of "
                             f"its rows), got {tuple(z1.shape)} and {tuple(z2.shape)}")
        n = z1.shape[0]
        z = torch.cat([z1, z2])
        partner = ((torch.arange(2 * n) + n) % (2 * n)).to(z.device)  # local indices
        negatives = denominator == "negatives"
        # "negatives": the partner's logit comes from the local pair (O(n d)), as in one process.
        prob = TileProblem(z, z, geometry, _temperature_scale(temperature), curvature,
                           on_manifold, features_checked=True,
                           targets=partner if negatives else None, with_positives=negatives,
                           max_radius=max_radius)
        relation = _ntxent_relation(partner, negatives)
        impl = dispatch.select_backend(backend, prob.x_op, prob.y_op,
                                       prob.tspec(relation, _ntxent_stat(negatives)))
        grad_mask = _grad_mask(z1, z2, prob)
    except Exception as exc:  # re-raised on this rank after the handshake: no hang
        error = exc
    comm, _ = _handshake(group, z, z, None, error, grad_mask)  # sizes 2 n_r
    y_all = all_gather_with_grad(prob.y_op, comm)
    b_all = all_gather_with_grad(prob.y_scalars, comm)
    # Local row i is gathered column comm.offset + i (its self pair); partners likewise.
    relation = _ntxent_relation(relation.tensors[0] + comm.offset, negatives)
    tspec = prob.tspec(relation, _ntxent_stat(negatives)).shifted(comm.offset, 0)
    row, _ = impl.tile_stat(prob.x_op, y_all, prob.x_scalars, b_all, prob.theta, tspec)
    if negatives:
        per_row = row - prob.positive_logits()
        if comm.total == 2:  # one pair in the whole batch: nothing to contrast
            per_row = torch.where(torch.isfinite(per_row), per_row, 0.0)
    else:
        per_row = row[:, 0] - row[:, 1]
    return ddp_reduce(per_row, comm, reduction)


def _ntxent_stat(negatives: bool) -> str:
    return "lse" if negatives else "masked_sum"


def _ntxent_relation(partner, negatives: bool) -> Relation:
    """Self pairs skipped; the partner is the positive of "all" (masked_sum: lse and the
    partner's logit in one walk) or skipped too for "negatives" (lse over the negatives)."""
    return Relation.targets(partner, skip_self=True, skip_positives=negatives, cols_both=0)
