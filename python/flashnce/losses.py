"""Public losses on the tile walk: argument checks and O(N d) PyTorch around one statistic.

``pairwise_lse`` is the ``lse`` statistic itself; ``infonce`` is lse over the negatives (the
diagonal / targets / exclusion relation with the positives skipped) and softplus(lse_neg -
l_pos) per row, the positives' logits added in O(N) from the same epilogue spec;
``siglip`` is the ``pair_sum`` statistic with the diagonal (or label) relation.
"""

from __future__ import annotations

import torch

from . import dispatch
from .core.margin import check_margin
from .core.numerics import MAX_RADIUS
from .core.problem import TileProblem, pair_sum_loss, per_row_losses, reduce_losses
from .core.relation import Relation
from .distributed import GROUP_MODES, distributed_infonce, distributed_siglip
from .core.relation import exclusion_relation
from .validate import (REDUCTIONS, autocast_off, check_choice, check_csr, check_features,
                       check_labels, check_negatives, check_target_labels, check_targets)


@autocast_off
def pairwise_lse(x, y, *, geometry="cosine", scale=1.0, curvature=1.0, on_manifold=False,
                 exclude_diagonal=False, backend="auto", max_radius=MAX_RADIUS):
    """Row and column log-sum-exp of the pairwise logits, never materialising them.

    ``row_lse[i] = log sum_j exp l(x_i, y_j)`` and ``col_lse[j] = log sum_i exp l(x_i, y_j)``,
    with ``l`` the geometry's logit (see ``flashnce.GEOMETRIES``). ``exclude_diagonal`` drops
    the pairs i == j (same-set losses; needs at least 2 columns).

    Shapes: x [N, d], y [M, d] -> ([N], [M]) in fp32 (float64 for float64 inputs).
    Differentiable in x, y, and in scale / curvature when they are tensors requiring grad.
    """
    dispatch.check_backend_name(backend)
    if not isinstance(exclude_diagonal, bool):
        raise TypeError(f"exclude_diagonal must be a bool, got {type(exclude_diagonal).__name__}")
    prob = TileProblem(x, y, geometry, scale, curvature, on_manifold, max_radius=max_radius)
    if exclude_diagonal and y.shape[0] < 2:
        raise ValueError("exclude_diagonal=True needs at least 2 columns (y has 1 row): "
                         "every logit of the first row would be excluded")
    relation = Relation.none(skip_self=exclude_diagonal)
    impl = dispatch.select_backend(backend, prob.x_op, prob.y_op, prob.tspec(relation))
    return prob.stat(impl, relation)


@autocast_off
def infonce(x, y, *, geometry="cosine", scale=1.0, curvature=1.0, on_manifold=False,
            symmetric=True, targets=None, negatives=None, exclude=None, exclude_labels=None,
            margin=0.0, margin_type="cosface", reduction="mean", backend="auto", group=None,
            group_mode="gather", max_radius=MAX_RADIUS):
    """InfoNCE / CLIP loss over pairwise logits in any geometry, memory O((N + M) d).

    symmetric=True (CLIP):  x [N, d], y [N, d]; positives are (x_i, y_i);
        L = 1/2 [CE(l, i -> i) + CE(l^T, j -> j)]
          = 1/(2N) sum_i (row_lse_i - l_ii) + 1/(2N) sum_j (col_lse_j - l_jj).
    symmetric=False:  x [N, d], y [M, d], only x -> y; ``targets`` [N] int64 column indices
        (default: i -> i, which needs N <= M); L = 1/N sum_i (row_lse_i - l_{i, t_i}).

    Numerics: the walk skips the positive pairs and returns the lse over the negatives; each
    row's loss is softplus(lse_neg - l_pos) = lse - l_pos, so it is never negative and stays
    exact when the positive dominates (large logits), and a row with no negative gives 0.

    Args:
        geometry: "cosine", "dot", "sqeuclidean", "euclidean", "poincare", "lorentz".
        scale: logit scale s (float or 1-element tensor; a tensor requiring grad gets one).
        curvature: c > 0 of the hyperbolic geometries (float or tensor), ignored otherwise.
        on_manifold: hyperbolic only; inputs are points (ball points / hyperboloid space
            parts) instead of tangent vectors at the origin.
        negatives: extra columns [K, d] (same dtype and width as y) that join the x -> y
            softmax only (a MoCo queue, NegCLIP hard-negative captions): they have no column
            loss; they get a gradient when they require one.
        exclude: one-way only; columns to leave out of each row's softmax, as CSR
            ``(indptr [N + 1], indices [nnz])`` int64 (row i's columns are
            indices[indptr[i]:indptr[i + 1]], any order, duplicates allowed). The row's target
            always counts. E.g. hierarchy embeddings: a node's own column and its other true
            ancestors are not negatives.
        exclude_labels: one-way only; ``(x_labels [N], y_labels [M])`` or one tensor when
            N == M: columns sharing the row's label are left out, except the target (whose
            label must be the row's).
        margin, margin_type: a margin on every positive logit, l' = scale * h' + bias:
            "cosface" h' = h - margin (any geometry), "arcface" h' = cos(theta + margin)
            (cosine only, 0 < margin < pi); 0 (default) is no margin. Both directions of the
            symmetric loss see the same l'_ii. See ``flashnce.core.margin`` (and
            ``flashnce.margin_softmax`` for class centres).
        reduction: "mean" (default), "sum", or "none" (per-row losses [N]).
        backend: "auto", "triton", "cuda", "cpu", "torch" or "reference" (materialised
            N x M logits, O(N M) memory: a baseline and oracle, never picked by "auto").
        group: a torch.distributed ProcessGroup: each rank passes its local rows (sizes may
            differ); the global batch is their concatenation in rank order (targets, if
            given, are global column indices). DDP convention: rank r returns
            (W / N) * sum of its rows' losses ("mean"), so the mean over ranks is the global
            loss, and gradients averaged over ranks (features through the model, scale,
            curvature) equal the single-process gradients (open_clip ClipLoss with
            local_loss=True, gather_with_grad=True). See ``flashnce.distributed``.
        group_mode: "gather" (all-gather columns, memory O(N d)) or "ring" (pass column
            blocks rank to rank, Inf-CL style, memory O(N_local d)).
        max_radius: hyperbolic only; the cap of each row's radius rho (default 40, at most 44:
            docs/NUMERICS.md section 6). Rows past it are clamped (zero radial gradient) and
            a warning is shown once; ``flashnce.project_radius_`` keeps parameters inside.

    Returns the loss in fp32 (float64 for float64 inputs).
    """
    check_choice(group_mode, "group_mode", GROUP_MODES)  # checked with or without a group
    margin_fn = check_margin(margin, margin_type, geometry, allow_zero=True)
    if group is not None:
        for name, value in (("negatives", negatives), ("exclude", exclude),
                            ("exclude_labels", exclude_labels)):
            if value is not None:
                raise ValueError(f"{name}= is not supported with group= yet (single process "
                                 f"only)")
        return distributed_infonce(
            x, y, group=group, group_mode=group_mode, geometry=geometry, scale=scale,
            curvature=curvature, on_manifold=on_manifold, symmetric=symmetric,
            targets=targets, reduction=reduction, backend=backend, max_radius=max_radius,
            margin=margin_fn)
    dispatch.check_backend_name(backend)
    check_choice(reduction, "reduction", REDUCTIONS)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
    check_features(x, y)
    n, m = x.shape[0], y.shape[0]
    if symmetric:
        if targets is not None:
            raise ValueError("targets are only used with symmetric=False (symmetric InfoNCE "
                             "pairs x_i with y_i)")
        if exclude is not None or exclude_labels is not None:
            raise ValueError("exclude= / exclude_labels= need symmetric=False (they leave "
                             "columns out of the rows' softmax only)")
        if n != m:
            raise ValueError(f"symmetric InfoNCE needs as many x rows as y rows, got {n} and "
                             f"{m} (use symmetric=False for one-way x -> y)")
    else:
        targets = check_targets(targets, n, m, x.device)
    if exclude is not None and exclude_labels is not None:
        raise ValueError("pass exclude= or exclude_labels=, not both")
    columns = y
    if negatives is not None:
        check_negatives(negatives, y)
        columns = torch.cat([y, negatives])
    cols_both = m if negatives is not None else None
    if exclude is not None:
        relation = exclusion_relation(check_csr(exclude, n, m, "exclude"), targets, n, m,
                                      cols_both)
    elif exclude_labels is not None:
        labels = check_labels(exclude_labels, n, m, x.device)
        check_target_labels(labels, targets)
        relation = Relation.labels(*labels, skip_positives=True, cols_both=cols_both)
    elif targets is not None:
        relation = Relation.targets(targets, skip_positives=True, cols_both=cols_both)
    else:
        relation = Relation.diagonal(skip_positives=True, cols_both=cols_both)

    prob = TileProblem(x, columns, geometry, scale, curvature, on_manifold,
                       features_checked=True, targets=targets, with_positives=True,
                       max_radius=max_radius)
    impl = dispatch.select_backend(backend, prob.x_op, prob.y_op, prob.tspec(relation))
    row_neg, col_neg = prob.stat(impl, relation)
    per_row = per_row_losses(row_neg, col_neg, prob.positive_logits(margin_fn), symmetric)
    return reduce_losses(per_row, reduction)


_REQUIRED = object()


@autocast_off
def siglip(x, y, *, geometry="cosine", scale=_REQUIRED, bias=_REQUIRED, labels=None,
           curvature=1.0, on_manifold=False, reduction="mean", backend="auto", group=None,
           group_mode="gather", max_radius=MAX_RADIUS):
    """SigLIP (sigmoid) loss over pairwise logits in any geometry, memory O((N + M) d).

    l_ij = scale * h(x_i, y_j) + bias (h: the geometry's similarity, e.g. the cosine, or
    minus a distance), z_ij = +1 for positives and -1 otherwise,

        L = 1/N sum_i sum_j -log sigmoid(z_ij l_ij)      ("mean": over the N rows, as in
                                                          open_clip and big_vision)

    Positives: (x_i, y_i) (needs N == M), or with ``labels`` every pair with equal labels
    (multi-positive SigLIP): one integer tensor [N] for both sides, or (x_labels [N],
    y_labels [M]).

    Args:
        scale, bias: the logit scale t = exp(t') and bias b (floats or 1-element tensors; a
            tensor requiring grad gets one). The paper's initialisation is t = 10, b = -10
            (``flashnce.nn.SigLipLoss`` holds them as parameters).
        reduction: "mean" (sum / N), "sum", or "none" (per-row sums [N]).
        geometry, curvature, on_manifold, backend, group, group_mode, max_radius: as for
            ``infonce``.
            With ``group=``, each rank passes its local rows; the DDP convention of
            ``flashnce.distributed`` holds (mean over ranks of the returned losses = the
            loss on the concatenated batch, with N the global batch).

    Gradients: with "mean" / "sum", the forward walk also computes every gradient (G depends
    on the pair alone), the backward only scales them: 3 GEMM-equivalents in one pass. Under
    ``torch.no_grad()`` or with "none", the forward is one GEMM per tile and the backward
    recomputes the tiles. Returns fp32 (float64 for float64 inputs).
    """
    if scale is _REQUIRED or bias is _REQUIRED:
        raise TypeError("siglip() needs scale= and bias= (the paper initialises them to "
                        "scale = 10, bias = -10; flashnce.nn.SigLipLoss learns them)")
    check_choice(group_mode, "group_mode", GROUP_MODES)
    if group is not None:
        return distributed_siglip(
            x, y, group=group, group_mode=group_mode, geometry=geometry, scale=scale,
            bias=bias, labels=labels, curvature=curvature, on_manifold=on_manifold,
            reduction=reduction, backend=backend, max_radius=max_radius)
    dispatch.check_backend_name(backend)
    check_choice(reduction, "reduction", REDUCTIONS)
    check_features(x, y)
    n, m = x.shape[0], y.shape[0]
    labels = check_labels(labels, n, m, x.device)
    if labels is None and n != m:
        raise ValueError(f"SigLIP's positives (x_i, y_i) need as many x rows as y rows, got "
                         f"{n} and {m} (pass labels= for other positives)")
    prob = TileProblem(x, y, geometry, scale, curvature, on_manifold, bias=bias,
                       features_checked=True, max_radius=max_radius)
    relation = Relation.diagonal() if labels is None else Relation.labels(*labels)
    tspec = prob.tspec(relation, "pair_sum")
    impl = dispatch.select_backend(backend, prob.x_op, prob.y_op, tspec)
    return pair_sum_loss(impl, prob.x_op, prob.y_op, prob.x_scalars, prob.y_scalars,
                         prob.theta, tspec, reduction, rows=n)


def explain_backends(x, y, *, geometry="cosine") -> dict[str, list[str]]:
    """Why each backend would refuse ``infonce(x, y, geometry=...)``: {name: reasons}, an
    empty list for a backend that accepts. Nothing is computed (no kernel runs)."""
    check_features(x, y)
    prob = TileProblem(x.detach(), y.detach(), geometry, 1.0, 1.0, False, features_checked=True)
    return dispatch.explain(prob.x_op, prob.y_op, prob.tspec())
