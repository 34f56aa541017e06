"""Public losses on the tile walk: argument checks and O(N d) PyTorch around one statistic.

``pairwise_lse`` is the ``lse`` statistic itself; ``infonce`` is lse (relation none: its
positives are added in O(N) from the same epilogue spec) plus the positive logits;
``siglip`` is the ``pair_sum`` statistic with the diagonal (or label) relation.
"""

from __future__ import annotations

import functools

import torch

from . import dispatch
from .core.problem import TileProblem, pair_sum_loss, per_row_losses, reduce_losses
from .core.relation import Relation
from .distributed import GROUP_MODES, distributed_infonce, distributed_siglip
from .validate import (REDUCTIONS, align_autocast_dtypes, check_choice, check_features,
                       check_labels, check_targets)


def _autocast_off(fn):
    """Run a loss with autocast off after aligning the towers' dtypes: the tile walk's math
    is fp32 by contract (16-bit operands, fp32 accumulation and epilogue), and autocast would
    otherwise turn the torch backend's tile GEMMs and the O(N) assembly into 16-bit ops."""
    @functools.wraps(fn)
    def wrapper(x, y, *args, **kwargs):
        x, y = align_autocast_dtypes(x, y)
        device = x.device.type if isinstance(x, torch.Tensor) else "cpu"
        if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return fn(x, y, *args, **kwargs)
        return fn(x, y, *args, **kwargs)

    return wrapper


@_autocast_off
def pairwise_lse(x, y, *, geometry="cosine", scale=1.0, curvature=1.0, on_manifold=False,
                 exclude_diagonal=False, backend="auto"):
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
    prob = TileProblem(x, y, geometry, scale, curvature, on_manifold)
    if exclude_diagonal and y.shape[0] < 2:
        raise ValueError("exclude_diagonal=True needs at least 2 columns (y has 1 row): "
                         "every logit of the first row would be excluded")
    relation = Relation.none(skip_self=exclude_diagonal)
    impl = dispatch.select_backend(backend, prob.x_op, prob.y_op, prob.tspec(relation))
    return prob.stat(impl, relation)


@_autocast_off
def infonce(x, y, *, geometry="cosine", scale=1.0, curvature=1.0, on_manifold=False,
            symmetric=True, targets=None, reduction="mean", backend="auto", group=None,
            group_mode="gather"):
    """InfoNCE / CLIP loss over pairwise logits in any geometry, memory O((N + M) d).

    symmetric=True (CLIP):  x [N, d], y [N, d]; positives are (x_i, y_i);
        L = 1/2 [CE(l, i -> i) + CE(l^T, j -> j)]
          = 1/(2N) sum_i (row_lse_i - l_ii) + 1/(2N) sum_j (col_lse_j - l_jj).
    symmetric=False:  x [N, d], y [M, d], only x -> y; ``targets`` [N] int64 column indices
        (default: i -> i, which needs N <= M); L = 1/N sum_i (row_lse_i - l_{i, t_i}).

    Args:
        geometry: "cosine", "dot", "sqeuclidean", "euclidean", "poincare", "lorentz".
        scale: logit scale s (float or 1-element tensor; a tensor requiring grad gets one).
        curvature: c > 0 of the hyperbolic geometries (float or tensor), ignored otherwise.
        on_manifold: hyperbolic only; inputs are points (ball points / hyperboloid space
            parts) instead of tangent vectors at the origin.
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

    Returns the loss in fp32 (float64 for float64 inputs).
    """
    check_choice(group_mode, "group_mode", GROUP_MODES)  # checked with or without a group
    if group is not None:
        return distributed_infonce(
            x, y, group=group, group_mode=group_mode, geometry=geometry, scale=scale,
            curvature=curvature, on_manifold=on_manifold, symmetric=symmetric,
            targets=targets, reduction=reduction, backend=backend)
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
        if n != m:
            raise ValueError(f"symmetric InfoNCE needs as many x rows as y rows, got {n} and "
                             f"{m} (use symmetric=False for one-way x -> y)")
    else:
        targets = check_targets(targets, n, m, x.device)

    prob = TileProblem(x, y, geometry, scale, curvature, on_manifold, features_checked=True,
                       targets=targets, with_positives=True)
    # The positives join the lse like every other pair (relation none); their logits are
    # added in O(N) by positive_logits().
    impl = dispatch.select_backend(backend, prob.x_op, prob.y_op, prob.tspec())
    row_lse, col_lse = prob.stat(impl)
    per_row = per_row_losses(row_lse, col_lse, prob.positive_logits(), symmetric)
    return reduce_losses(per_row, reduction)


_REQUIRED = object()


@_autocast_off
def siglip(x, y, *, geometry="cosine", scale=_REQUIRED, bias=_REQUIRED, labels=None,
           curvature=1.0, on_manifold=False, reduction="mean", backend="auto", group=None,
           group_mode="gather"):
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
        geometry, curvature, on_manifold, backend, group, group_mode: as for ``infonce``.
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
            reduction=reduction, backend=backend)
    dispatch.check_backend_name(backend)
    check_choice(reduction, "reduction", REDUCTIONS)
    check_features(x, y)
    n, m = x.shape[0], y.shape[0]
    labels = check_labels(labels, n, m, x.device)
    if labels is None and n != m:
        raise ValueError(f"SigLIP's positives (x_i, y_i) need as many x rows as y rows, got "
                         f"{n} and {m} (pass labels= for other positives)")
    prob = TileProblem(x, y, geometry, scale, curvature, on_manifold, bias=bias,
                       features_checked=True)
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
