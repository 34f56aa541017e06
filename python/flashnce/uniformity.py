"""Alignment and uniformity (Wang & Isola 2020, "Understanding Contrastive Representation
Learning through Alignment and Uniformity on the Hypersphere"), without the N x N distances.

* ``uniformity(x, t)`` = log mean_{i != j} exp(t h(x_i, x_j)), h the geometry's similarity;
  with the default (L2-normalised x, ``sqeuclidean``: h = -|x_i - x_j|^2) this is the paper's
  ``torch.pdist(x).pow(2).mul(-t).exp().mean().log()``. It is one global log-sum-exp: the
  ``lse`` statistic of x against itself (self pairs skipped, no column statistic), whose row
  values merge into one number, minus log(N (N - 1)). Memory O(N d); torch.pdist needs
  N (N - 1) / 2 floats (20 GB at N = 10^5).
* ``alignment(x, y, alpha)`` = mean_i d(x_i, y_i)^alpha, O(N d): the distance of each pair
  computed from the pair itself (|x_i - y_i| directly for the flat geometries, so coincident
  pairs give exactly 0 and a zero gradient).

Both take ``group=`` (torch.distributed, gather mode; uneven local batches, every rank >= 1
row): the global batch is the concatenation of the ranks' rows in rank order, and **every rank
returns the global value** U (or A). Its gradient follows the DDP convention of
``flashnce.distributed``: every rank backpropagates its (identical) loss and the collectives'
backwards sum what the W losses send to each row, so x_r.grad = W dU/dx_r and
mean_r t.grad_r = dU/dt (per-rank t / curvature gradients are partial sums), i.e. after DDP
averages over ranks they equal the single-process gradients.
"""

from __future__ import annotations

import math

import torch

from . import dispatch
from .core.numerics import MAX_RADIUS
from .core.problem import TileProblem
from .core.relation import Relation
from .distributed import (_grad_mask, _handshake, all_gather_with_grad,
                          all_reduce_with_grad, check_group, grad_mask_of)
from .validate import autocast_off, check_features, check_positive_number

_ALIGN_GEOMETRIES = ("euclidean", "sqeuclidean", "poincare", "lorentz")


@autocast_off(towers=1)
def uniformity(x, *, t=2.0, geometry="sqeuclidean", normalize=True, curvature=1.0,
               on_manifold=False, backend="auto", max_radius=MAX_RADIUS, group=None):
    """log mean_{i != j} exp(t h(x_i, x_j)) over the N (N - 1) ordered pairs, O(N d) memory.

    x [N, d] (N >= 2). ``normalize=True`` (default) puts the rows on the unit hypersphere
    first, as the paper does; with geometry "sqeuclidean" h = -|x_i - x_j|^2 (the Gaussian
    potential). Other geometries use their own similarity h (e.g. minus the hyperbolic
    distance for "poincare" / "lorentz", where you usually want ``normalize=False``).
    Differentiable in x (and t when it is a tensor). Returns fp32 (float64 for float64 x).

    ``group``: x is this rank's rows x_r [n_r, d] (N = sum n_r >= 2 globally). Rank r walks
    its rows against the all-gathered rows (self pairs at global indices skipped); the row
    lse values are all-gathered with autograd and merged into the global logsumexp, so every
    rank returns the same U, with x_r.grad = W dU/dx_r and mean_r t.grad_r = dU/dt (module
    docstring). Communication: one all-gather of N d + N elements forward, the matching
    reduce-scatters backward.
    """
    if group is not None:
        return _distributed_uniformity(x, group=group, t=t, geometry=geometry,
                                       normalize=normalize, curvature=curvature,
                                       on_manifold=on_manifold, backend=backend,
                                       max_radius=max_radius)
    t = _check_uniformity_args(backend, normalize, t)
    check_features(x, x)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 rows (pairs i != j), got {n}")
    prob, relation = _uniformity_problem(x, t, geometry, normalize, curvature, on_manifold,
                                         max_radius)
    impl = dispatch.select_backend(backend, prob.x_op, prob.y_op, prob.tspec(relation))
    row, _ = prob.stat(impl, relation)
    return torch.logsumexp(row, 0) - math.log(n * (n - 1))


def _check_uniformity_args(backend, normalize, t):
    dispatch.check_backend_name(backend)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    return t if isinstance(t, torch.Tensor) else check_positive_number(t, "t")


def _uniformity_problem(x, t, geometry, normalize, curvature, on_manifold, max_radius):
    """x (normalised when asked) against itself at scale t, and the self-skipping relation
    without a column statistic (the matrix is symmetric: the rows see every pair)."""
    if normalize:
        x = torch.nn.functional.normalize(x, dim=-1)
    prob = TileProblem(x, x, geometry, t, curvature, on_manifold, features_checked=True,
                       max_radius=max_radius)
    return prob, Relation.none(skip_self=True, cols_both=0)


def _distributed_uniformity(x, *, group, t, geometry, normalize, curvature, on_manifold,
                            backend, max_radius):
    """Uniformity across ranks (gather); see ``uniformity``."""
    check_group(group)
    error, prob, impl, relation, grad_mask = None, None, None, None, 0
    try:
        t = _check_uniformity_args(backend, normalize, t)
        check_features(x, x)
        prob, relation = _uniformity_problem(x, t, geometry, normalize, curvature,
                                             on_manifold, max_radius)
        impl = dispatch.select_backend(backend, prob.x_op, prob.y_op, prob.tspec(relation))
        grad_mask = _grad_mask(x, x, prob)
    except Exception as exc:  # re-raised on this rank after the handshake: no hang
        error = exc
    comm, _ = _handshake(group, x, x, None, error, grad_mask)
    n = comm.total
    if n < 2:  # every rank knows the sizes: all raise
        raise ValueError(f"uniformity needs at least 2 rows over all ranks (pairs i != j), "
                         f"got {n}")
    y_all = all_gather_with_grad(prob.y_op, comm)
    b_all = all_gather_with_grad(prob.y_scalars, comm)
    # Local row i is global row offset + i: its self pair is gathered column offset + i.
    row, _ = impl.tile_stat(prob.x_op, y_all, prob.x_scalars, b_all, prob.theta,
                            prob.tspec(relation).shifted(comm.offset, 0))
    # Every rank merges all N row lse into the same U; the gather's backward sums the W
    # ranks' gradients of U into each row (hence W dU/dx_r).
    return torch.logsumexp(all_gather_with_grad(row, comm), 0) - math.log(n * (n - 1))


@autocast_off
def alignment(x, y, *, alpha=2.0, geometry="euclidean", curvature=1.0, on_manifold=False,
              max_radius=MAX_RADIUS, group=None):
    """mean_i d(x_i, y_i)^alpha for paired rows x [N, d], y [N, d] (the paper: alpha = 2,
    Euclidean distance of normalised features -- normalise them yourself, as the paper's
    encoder does). Geometries: "euclidean" / "sqeuclidean" (d = |x_i - y_i|), "poincare",
    "lorentz" (the geodesic distance, inputs as for ``flashnce.infonce``). O(N d).

    ``group``: x, y are this rank's pairs [n_r, d]; the local sum of d^alpha is all-reduced
    with autograd and divided by N = sum n_r (from the handshake), so every rank returns the
    global mean A, with x_r.grad = W dA/dx_r and mean_r curvature.grad_r = dA/dcurvature
    (module docstring). Communication: one scalar all-reduce forward, one backward.
    """
    if group is not None:
        return _distributed_alignment(x, y, group=group, alpha=alpha, geometry=geometry,
                                      curvature=curvature, on_manifold=on_manifold,
                                      max_radius=max_radius)
    return _alignment_powers(x, y, alpha, geometry, curvature, on_manifold, max_radius)[0].mean()


def _alignment_powers(x, y, alpha, geometry, curvature, on_manifold, max_radius):
    """(d(x_i, y_i)^alpha [N], the TileProblem or None) after validating the arguments."""
    alpha = check_positive_number(alpha, "alpha")
    if geometry not in _ALIGN_GEOMETRIES:
        raise ValueError(f"alignment needs a distance geometry ({', '.join(_ALIGN_GEOMETRIES)}),"
                         f" got {geometry!r}")
    check_features(x, y)
    if x.shape != y.shape:
        raise ValueError(f"alignment pairs x_i with y_i: x and y must have the same shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if geometry in ("euclidean", "sqeuclidean"):
        d = torch.linalg.vector_norm((x - y).to(torch.promote_types(x.dtype, torch.float32)),
                                     dim=-1)
        return d.pow(alpha), None
    prob = TileProblem(x, y, geometry, 1.0, curvature, on_manifold, features_checked=True,
                       with_positives=True, max_radius=max_radius)
    d = -prob.positive_logits()  # h = -distance at scale 1, bias 0
    return d.pow(alpha), prob


def _distributed_alignment(x, y, *, group, alpha, geometry, curvature, on_manifold,
                           max_radius):
    """Alignment across ranks: an all-reduce (with autograd) of the local sum; see
    ``alignment``."""
    check_group(group)
    error, local_sum, grad_mask = None, None, 0
    try:
        powers, prob = _alignment_powers(x, y, alpha, geometry, curvature, on_manifold,
                                         max_radius)
        local_sum = powers.sum()
        # The flat geometries have no parameter (no scale / curvature / bias flags).
        grad_mask = _grad_mask(x, y, prob) if prob is not None else grad_mask_of(x, y)
    except Exception as exc:  # re-raised on this rank after the handshake: no hang
        error = exc
    comm, _ = _handshake(group, x, y, None, error, grad_mask)
    return all_reduce_with_grad(local_sum, group) / comm.total

