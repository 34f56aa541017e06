"""The problem builder: validated features of both sides, their per-row scalars, and theta.

``TileProblem`` is what every loss (and the distributed front end) builds once per call:

* the features enter the autograd graph once, through ``flashnce.features.feature_stats``:
  the GEMM operands are its aliases of x and y, the per-row scalars come from its squared
  norms (``Geometry.row_scalars``), and with ``with_positives`` it also returns the
  positive-pair dots <x_i, y_{t_i}> (t = targets, or i), so every N x d gradient term is
  added in place into the kernel's dX / dY;
* theta = (scale, 1/sqrt(c), bias) [3] in the compute dtype, differentiable in the caller's
  tensors;
* ``stat(backend, relation)`` runs one tile statistic; ``positive_logits(margin)`` gives the
  O(N) logits of the positive pairs from the same epilogue spec (with a margin on them:
  ``flashnce.core.margin``).
"""

from __future__ import annotations

import torch

from ..features import feature_stats, rowwise_dot
from ..geometry import check_max_radius, get_geometry, paired_logits
from ..validate import as_param, check_ball, check_features
from . import spec
from .numerics import MAX_RADIUS, clamp_kappa
from .relation import Relation
from .tilespec import TileSpec


class TileProblem:
    def __init__(self, x, y, geometry, scale, curvature, on_manifold, *, bias=0.0,
                 features_checked=False, targets=None, with_positives=False,
                 max_radius=MAX_RADIUS):
        if not features_checked:  # the finite-value scan costs a host sync: do it once
            check_features(x, y)
        self.geo = get_geometry(geometry)
        if not isinstance(on_manifold, bool):
            raise TypeError(f"on_manifold must be a bool, got {type(on_manifold).__name__}")
        if on_manifold and not self.geo.supports_on_manifold:
            raise ValueError(
                f"on_manifold=True is only meaningful for hyperbolic geometries "
                f"(poincare, lorentz), not {self.geo.name!r}")
        self.scale = as_param(scale, "scale", x, positive=False)
        # Geometries that ignore the curvature accept any finite value for it.
        self.curvature = as_param(curvature, "curvature", x, positive=self.geo.uses_curvature)
        self.bias = as_param(bias, "bias", x, positive=False)
        if on_manifold and self.geo.name == "poincare":
            check_ball(x, self.curvature, "x")
            check_ball(y, self.curvature, "y")
        self.x, self.y = x, y
        self.targets = targets
        self.x_op, self.y_op, q_x, q_y, self.positive_dots = feature_stats(
            x, y, targets, with_positives, self.geo.scale_invariant)
        max_radius = check_max_radius(max_radius)
        self.x_scalars = self.geo.row_scalars(q_x, self.curvature, on_manifold, max_radius)
        self.y_scalars = self.geo.row_scalars(q_y, self.curvature, on_manifold, max_radius)
        self.inv_sqrt_c = (self.curvature.rsqrt() if self.geo.uses_curvature
                           else torch.ones_like(self.curvature))
        self.theta = torch.stack([self.scale, self.inv_sqrt_c, self.bias])
        self.kappa = clamp_kappa(x.dtype)

    def tspec(self, relation: Relation | None = None, stat: str = "lse") -> TileSpec:
        return TileSpec(self.geo.kind, stat, relation or Relation.none(), self.kappa)

    def stat(self, backend, relation: Relation | None = None, stat: str = "lse"):
        """(row_stat [N], col_stat [M0]) of x vs y through ``backend`` (differentiable)."""
        return backend.tile_stat(self.x_op, self.y_op, self.x_scalars, self.y_scalars,
                                 self.theta, self.tspec(relation, stat))

    def positive_similarity(self):
        """h(x_i, y_{t_i}) for every row i (t = targets, or i when None), O(N): the positive
        pairs' similarity at scale 1 (logit = scale * h + bias).

        Needs ``with_positives=True``: the dots come from ``feature_stats``.

        When y is x and t = i, every positive pair is a point with itself: the distance
        kinds (euclidean, hyperbolic) then take the exact distance 0 instead of the
        clamp floor that a computed one would hit (docs/NUMERICS.md section 6).
        """
        sy = self.y_scalars
        sy = sy[: self.x_scalars.shape[0]] if self.targets is None else sy[self.targets]
        h = self._similarity(self.positive_dots, self.x_scalars, sy)
        if self.x is self.y and self.targets is None and self.geo.kind in (
                "euclidean", "hyperbolic"):
            h = h.detach() * 0.0
        return h

    def positive_logits(self, margin=None):
        """logit of the positive pairs [N]: scale * h' + bias, h' = margin(h) when a margin
        (``flashnce.core.margin.Margin``) is given, else h."""
        return self.logits_from_similarity(self.positive_similarity(), margin)

    def logits_of_pairs(self, ex, ey, sx, sy, margin=None):
        """logit(ex_i, ey_i) of operand rows paired elementwise, with their per-row scalars."""
        return self.logits_from_similarity(self._similarity(rowwise_dot(ex, ey), sx, sy),
                                           margin)

    def logits_from_similarity(self, h, margin=None):
        if margin is not None:
            h = margin(h)
        return self.theta[spec.THETA_SCALE] * h + self.bias

    def _similarity(self, p, sx, sy):
        return paired_logits(self.geo.kind, p, sx, sy, 1.0, self.theta[spec.THETA_INV_SQRT_C],
                             self.kappa)


def per_row_losses(row_neg, col_neg, positive, symmetric: bool):
    """InfoNCE per row from the lse over the negatives alone (the walk skipped the positives):
    lse - pos = softplus(lse_neg - pos), which is >= 0, exact when the positive dominates and
    0 for a row without negatives (lse_neg = -inf). Symmetric: the mean of both directions."""
    sp = torch.nn.functional.softplus
    if symmetric:
        return 0.5 * sp(row_neg - positive) + 0.5 * sp(col_neg - positive)
    return sp(row_neg - positive)


def reduce_losses(per_row, reduction: str):
    """'mean' | 'sum' | 'none' of per-row losses."""
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    return per_row


def pair_sum_loss(impl, x, y, alpha, beta, theta, tspec: TileSpec, reduction: str, *,
                  rows: int, factor: float = 1.0):
    """A pair_sum loss from its operands: "mean" = factor * total / rows, "sum" = factor *
    total, "none" = the per-row sums. With gradients wanted and a scalar result, the backend's
    one-pass walk (``row_sum``) computes them in the forward."""
    if reduction == "none":
        return impl.tile_stat(x, y, alpha, beta, theta, tspec)[0]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, y, alpha, beta, theta)):
        total = impl.row_sum(x, y, alpha, beta, theta, tspec)
    else:
        total = impl.tile_stat(x, y, alpha, beta, theta, tspec)[0].sum()
    if reduction == "mean":
        factor = factor / max(rows, 1)
    return total * factor
