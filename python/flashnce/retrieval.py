"""Retrieval metrics at scale: recall@K and mean / median rank in both directions, exact, with
memory O((N + M) d) -- one tile walk of the ``count`` statistic, never the N x M logits.

For logits l_ij (the geometry's similarity of x_i and y_j; scale and bias do not change a
ranking) and each query row i with its positives P(i) (paired: j == i; grouped: the y_j with
y_groups[j] == x_groups[i]):

    tau_i  = max_{j in P(i)} l_ij              the best positive
    t_i    = min {j in P(i): l_ij == tau_i}    its index (the smallest, on ties)
    rank_i = #{j not in P(i): l_ij > tau_i} + #{j not in P(i): j < t_i, l_ij == tau_i}

i.e. the 0-based position of the best positive in the row sorted by decreasing logit, the other
positives left out, ties with a negative broken by index (a negative with the same logit
counts against the positive only when it comes first). The y -> x direction is the same rule
on the columns of l. Then

    recall@K = mean_i [rank_i < K]      mean rank = mean_i (rank_i + 1)
    median rank = floor(median_i rank_i) + 1   (open_clip's convention; numpy's median)

On tie-free data this is open_clip's argsort rank (paired) and clip_benchmark's COCO recall@K
(grouped: a query counts as retrieved when any of its positives is in the top K). Both
directions come from one walk, and the thresholds tau are computed inside the walk by the same
arithmetic as the logits they are compared with, so exact duplicates rank exactly as ties.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from . import dispatch
from .core.problem import TileProblem
from .core.relation import Relation
from .validate import autocast_off, check_features, check_label_tensor

__all__ = ["RetrievalMetrics", "retrieval_metrics"]


@dataclass(frozen=True)
class RetrievalMetrics:
    """Retrieval metrics of both directions.

    x_to_y_recall / y_to_x_recall: {k: recall@k} for each requested k (floats in [0, 1]).
    x_to_y_mean_rank, x_to_y_median_rank, y_to_x_*: 1-based mean and median ranks (floats).
    x_to_y_ranks [N], y_to_x_ranks [M]: the 0-based rank of every query (int64, on the
    features' device).
    """

    x_to_y_recall: dict
    y_to_x_recall: dict
    x_to_y_mean_rank: float
    x_to_y_median_rank: float
    y_to_x_mean_rank: float
    y_to_x_median_rank: float
    x_to_y_ranks: torch.Tensor
    y_to_x_ranks: torch.Tensor


@autocast_off
def retrieval_metrics(x, y, *, geometry="cosine", ks=(1, 5, 10), x_groups=None, y_groups=None,
                      curvature=1.0, on_manifold=False, backend="auto") -> RetrievalMetrics:
    """Exact recall@K and mean / median rank of x -> y and y -> x retrieval, memory linear.

    x [N, d] are one side's embeddings (e.g. images), y [M, d] the other's (e.g. captions);
    the rule (module docstring) ranks each query's best positive among its non-positives,
    ties broken by index.

    Args:
        geometry: "cosine" (default), "dot", "sqeuclidean", "euclidean", "poincare",
            "lorentz": the similarity that ranks (minus the distance for the distances).
        ks: the K of recall@K, positive ints, each at most the number of candidates of both
            directions (M for x -> y, N for y -> x).
        x_groups, y_groups: None (paired: x_i matches y_i only, needs N == M), or both as
            integer tensors [N] and [M] on the features' device: x_i and y_j match iff
            x_groups[i] == y_groups[j] (COCO: an image id per image and per caption). Every
            query needs at least one match.
        curvature: c > 0 of the hyperbolic geometries (float), ignored otherwise.
        on_manifold: hyperbolic only; inputs are points instead of tangent vectors.
        backend: "auto", "cpu", "torch" or "reference" (the backends that declare the
            ``count`` statistic; "auto" takes the fastest that does).

    Returns a ``RetrievalMetrics``. Runs without autograd and leaves its inputs untouched.
    fp32 / bf16 / fp16 inputs rank in fp32 and need N, M < 2**24 (the ranks are held as
    fp32 numbers); fp64 inputs rank in fp64.
    """
    dispatch.check_backend_name(backend)
    check_features(x, y)
    n, m = x.shape[0], y.shape[0]
    ks = _check_ks(ks, n, m)
    relation = _relation(x_groups, y_groups, n, m, x.device)
    with torch.no_grad():
        prob = TileProblem(x, y, geometry, 1.0, curvature, on_manifold, features_checked=True)
        tspec = prob.tspec(relation, "count")
        impl = dispatch.select_backend(backend, prob.x_op, prob.y_op, tspec)
        row, col = prob.stat(impl, relation, "count")
    row_ranks, col_ranks = row.to(torch.int64), col.to(torch.int64)
    # Validation guarantees a positive per query; -1 here would be a backend bug.
    if bool((row_ranks < 0).any()) or bool((col_ranks < 0).any()):
        raise RuntimeError(f"backend {impl.name!r} returned a rank of -1 for a query that has "
                           f"a match")
    xr, xm, xmed = _summary(row_ranks, ks)
    yr, ym, ymed = _summary(col_ranks, ks)
    return RetrievalMetrics(xr, yr, xm, xmed, ym, ymed, row_ranks, col_ranks)


def _check_ks(ks, n: int, m: int) -> tuple:
    if isinstance(ks, numbers.Integral) and not isinstance(ks, bool):
        ks = (ks,)
    if not isinstance(ks, (tuple, list)) or len(ks) == 0:
        raise TypeError(f"ks must be a non-empty tuple or list of ints, got {ks!r}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise TypeError(f"ks must hold ints, got {k!r} ({type(k).__name__})")
        if k <= 0:
            raise ValueError(f"ks must be positive, got {k}")
        if k > min(n, m):
            raise ValueError(f"ks: k={k} exceeds the number of candidates (M={m} for x -> y, "
                             f"N={n} for y -> x)")
    return tuple(int(k) for k in ks)


def _relation(x_groups, y_groups, n: int, m: int, device) -> Relation:
    if x_groups is None and y_groups is None:
        if n != m:
            raise ValueError(f"paired retrieval (no groups) matches x_i with y_i and needs N == "
                             f"M, got N={n}, M={m}: pass x_groups= and y_groups=")
        return Relation.diagonal()
    if x_groups is None or y_groups is None:
        missing = "x_groups" if x_groups is None else "y_groups"
        raise ValueError(f"pass both x_groups= and y_groups= (or neither); {missing} is None")
    xg = check_label_tensor(x_groups, "x_groups", n, device)
    yg = check_label_tensor(y_groups, "y_groups", m, device)
    for name, a, b, side in (("x_groups", xg, yg, "y"), ("y_groups", yg, xg, "x")):
        lonely = ~torch.isin(a, b)
        if bool(lonely.any()):
            i = int(lonely.nonzero()[0])
            raise ValueError(f"{name}[{i}] = {int(a[i])} matches no {side} row: every query "
                             f"needs at least one match ({int(lonely.sum())} do not)")
    return Relation.labels(xg, yg)


def _summary(ranks: torch.Tensor, ks: tuple):
    """({k: recall@k}, mean rank, median rank) of 0-based ranks."""
    r = ranks.double()
    recall = {k: float((r < k).double().mean()) for k in ks}
    mean_rank = float(r.mean()) + 1.0
    # numpy's median (the mean of the two middle values for an even count), floored.
    s = r.sort().values
    q = s.numel()
    median = float(s[q // 2]) if q % 2 else 0.5 * float(s[q // 2 - 1] + s[q // 2])
    return recall, mean_rank, math.floor(median) + 1.0
