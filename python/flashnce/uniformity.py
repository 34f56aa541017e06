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
"""

from __future__ import annotations

import math

import torch

from . import dispatch
from .core.numerics import MAX_RADIUS
from .core.problem import TileProblem
from .core.relation import Relation
from .validate import autocast_off, check_features, check_positive_number

_ALIGN_GEOMETRIES = ("euclidean", "sqeuclidean", "poincare", "lorentz")


@autocast_off(towers=1)
def uniformity(x, *, t=2.0, geometry="sqeuclidean", normalize=True, curvature=1.0,
               on_manifold=False, backend="auto", max_radius=MAX_RADIUS):
    """log mean_{i != j} exp(t h(x_i, x_j)) over the N (N - 1) ordered pairs, O(N d) memory.

    x [N, d] (N >= 2). ``normalize=True`` (default) puts the rows on the unit hypersphere
    first, as the paper does; with geometry "sqeuclidean" h = -|x_i - x_j|^2 (the Gaussian
    potential). Other geometries use their own similarity h (e.g. minus the hyperbolic
    distance for "poincare" / "lorentz", where you usually want ``normalize=False``).
    Differentiable in x (and t when it is a tensor). Returns fp32 (float64 for float64 x).
    """
    dispatch.check_backend_name(backend)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    if not isinstance(t, torch.Tensor):
        t = check_positive_number(t, "t")
    check_features(x, x)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 rows (pairs i != j), got {n}")
    if normalize:
        x = torch.nn.functional.normalize(x, dim=-1)
    prob = TileProblem(x, x, geometry, t, curvature, on_manifold, features_checked=True,
                       max_radius=max_radius)
    relation = Relation.none(skip_self=True, cols_both=0)
    impl = dispatch.select_backend(backend, prob.x_op, prob.y_op, prob.tspec(relation))
    row, _ = prob.stat(impl, relation)
    return torch.logsumexp(row, 0) - math.log(n * (n - 1))


@autocast_off
def alignment(x, y, *, alpha=2.0, geometry="euclidean", curvature=1.0, on_manifold=False,
              max_radius=MAX_RADIUS):
    """mean_i d(x_i, y_i)^alpha for paired rows x [N, d], y [N, d] (the paper: alpha = 2,
    Euclidean distance of normalised features -- normalise them yourself, as the paper's
    encoder does). Geometries: "euclidean" / "sqeuclidean" (d = |x_i - y_i|), "poincare",
    "lorentz" (the geodesic distance, inputs as for ``flashnce.infonce``). O(N d)."""
    alpha = check_positive_number(alpha, "alpha")
    if geometry not in _ALIGN_GEOMETRIES:
        raise ValueError(f"alignment needs a distance geometry ({', '.join(_ALIGN_GEOMETRIES)}),"
                         f" got {geometry!r}")
    check_features(x, y)
    if x.shape != y.shape:
        raise ValueError(f"alignment pairs x_i with y_i: x and y must have the same shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("alignment of an empty batch is undefined (x has 0 rows)")
    if geometry in ("euclidean", "sqeuclidean"):
        d = torch.linalg.vector_norm((x - y).to(torch.promote_types(x.dtype, torch.float32)),
                                     dim=-1)
    else:
        prob = TileProblem(x, y, geometry, 1.0, curvature, on_manifold, features_checked=True,
                           with_positives=True, max_radius=max_radius)
        d = -prob.positive_logits()  # h = -distance at scale 1, bias 0
    return d.pow(alpha).mean()
