"""Geometry registry: prologues (squared row norms -> per-row scalars) and epilogues.

Every geometry is written as ``logit = s * h(p, alpha_i, beta_j; c)`` where ``p = <X_i, Y_j>``
is the tile's dot product, ``alpha``/``beta`` are a few fp32 scalars per row/column and ``s`` is
the logit scale. The scale-free part ``h`` is one of five **epilogue kinds**; a geometry is a
prologue that feeds one of them (see ``docs/NUMERICS.md``). The operands X, Y are the
features as given; the prologue maps each row's squared norm |x|^2 (``flashnce.features``)
to the per-row scalars, so a geometry may depend on a row beyond the dot products only
through its norm:

=============  ==========================================  ===============================
kind           h(p, alpha_i, beta_j)                       per-row scalars (alpha = beta)
=============  ==========================================  ===============================
dot            p                                           none
sqeuclidean    -(a_i + b_j - 2p)                           a = ||x||^2
euclidean      -sqrt(max(D, kappa (a_i + b_j)))            a = ||x||^2
hyperbolic     -arcosh(1 + w) / sqrt(c),                   (n, rho, S): operand norm,
               w = 2 sinh^2((rho_i - rho_j)/2)             radius, sinh(radius)
                   + S_i S_j (1 - p / (n_i n_j))
cosine         p / (n_i n_j)                               n = max(||x||, eps)
=============  ==========================================  ===============================

The cosine kind normalises inside the kernel (docs/NUMERICS.md section 2): the operand is the
feature tensor as given and n its row norm, so no normalised N x d copy is ever made.
Partials: dh/dp = 1/(n_i n_j), dh/dn_i = -h/n_i, dh/dn_j = -h/n_j.

The hyperbolic kind is docs/NUMERICS.md's form L3 (direction + radius, hyperbolic law of cosines),
shared by the Lorentz hyperboloid and the Poincare ball, which differ only in how the radius is
computed from the features. Its only explicit dependence on the curvature is the ``1/sqrt(c)``
factor: kernels return ``gh = sum_ij G_ij h_ij`` and both the scale gradient (``gh``) and the
explicit gradient of ``k = 1/sqrt(c)`` (``scale * gh / k``) follow from that one number.

Clamps (docs/NUMERICS.md section 10): the euclidean distance uses ``D >= kappa (a_i + b_j)`` and the
hyperbolic distance ``w >= kappa S_i S_j``, with kappa = 1e-6 for fp32 accumulation and 1e-14
for float64; a clamped entry has exactly zero gradient (strict masks, P5).

The torch functions here operate on one tile and are the executable spec of the epilogue that
the compiled kernels mirror: ``tile_logits`` gives the logits, ``tile_logit_grads`` contracts an
upstream tile ``G = dL/dlogit`` with the partial derivatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .core.numerics import MAX_RADIUS, NORM_EPS

@dataclass(frozen=True)
class Geometry:
    """A registered geometry: an epilogue kind plus the prologue that feeds it.

    The prologue maps the squared row norms q = |x|^2 [N] (compute dtype, taken from the
    operand as rounded) to the per-row scalars [N, r]; every registered geometry depends on a
    feature row only through its norm, so the O(N d) part of the prologue and of its gradient
    is shared by all of them (``flashnce.features``).
    """

    name: str
    kind: str
    uses_curvature: bool
    supports_on_manifold: bool
    prologue: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]
    formula: str

    @property
    def scale_invariant(self) -> bool:
        """Logits depend on each row only through its direction (cosine, for |x| > eps)."""
        return self.kind == "cosine"

    def row_scalars(self, q: torch.Tensor, curvature: torch.Tensor,
                    on_manifold: bool) -> torch.Tensor:
        """Per-row scalars [N, r] from squared row norms q [N] (differentiable)."""
        if q.dim() != 1:
            raise ValueError(f"row_scalars takes squared row norms q [N], got shape "
                             f"{tuple(q.shape)}")
        return self.prologue(q, curvature, on_manifold)


# --------------------------------------------------------------------------------------------
# Prologues: O(N) PyTorch with autograd, from q = |x|^2; the operand is always x as given
# (cosine and the hyperbolic kind normalise inside the kernel), so no N x d copy is made.
# --------------------------------------------------------------------------------------------


def _norm(q: torch.Tensor) -> torch.Tensor:
    """sqrt(q) with gradient 0 at q = 0 (torch.norm's convention at the zero vector), never
    0 * inf = nan: the inner where keeps sqrt's backward away from q = 0."""
    positive = q > 0
    # NaN q (a NaN feature) stays NaN: clamping it to 0 would hide it behind the distance
    # floors and give a finite loss (value checks are skipped under torch.compile).
    return torch.where(positive, torch.where(positive, q, 1.0).sqrt(), q * 0.0)


def _prologue_dot(q, curvature, on_manifold):
    return q.new_zeros((q.shape[0], 0))


def _prologue_cosine(q, curvature, on_manifold):
    """n = max(|x|, eps) (F.normalize's eps: a zero feature has cosine 0 to everything)."""
    return _norm(q).clamp_min(NORM_EPS).unsqueeze(-1)


def _prologue_sqnorm(q, curvature, on_manifold):
    """a = |x|^2, the squared-distance expansion's per-row term."""
    return q.unsqueeze(-1)


def _direction_scalars(r: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """(n, rho, sinh rho) for the hyperbolic (L3) epilogue.

    L3 only needs the direction of each row and divides by n_i n_j itself; n is floored so
    zero vectors stay finite, rho capped at MAX_RADIUS.
    """
    n = r.clamp_min(NORM_EPS)
    rho = rho.clamp(max=MAX_RADIUS)
    return torch.stack([n, rho, torch.sinh(rho)], dim=-1)


def _prologue_lorentz(q, curvature, on_manifold):
    """MERU: tangent v at the origin -> rho = sqrt(c)||v||; points: space part u -> asinh."""
    sqrt_c = curvature.to(q.dtype).sqrt()
    r = _norm(q)
    rho = torch.asinh(sqrt_c * r) if on_manifold else sqrt_c * r
    return _direction_scalars(r, rho)


def _prologue_poincare(q, curvature, on_manifold):
    """Poincare ball through L3: expmap0(v) sits at radius 2 sqrt(c)||v||; a ball point x at
    2 artanh(sqrt(c)||x||). Isometric to Lorentz(exp_map0(2v)) (docs/NUMERICS.md section 7)."""
    sqrt_c = curvature.to(q.dtype).sqrt()
    r = _norm(q)
    rho = 2.0 * torch.atanh(sqrt_c * r) if on_manifold else 2.0 * sqrt_c * r
    return _direction_scalars(r, rho)


GEOMETRIES: dict[str, Geometry] = {
    g.name: g
    for g in (
        Geometry("cosine", "cosine", False, False, _prologue_cosine, "s * <x/|x|, y/|y|>"),
        Geometry("dot", "dot", False, False, _prologue_dot, "s * <x, y>"),
        Geometry("sqeuclidean", "sqeuclidean", False, False, _prologue_sqnorm, "-s * |x - y|^2"),
        Geometry("euclidean", "euclidean", False, False, _prologue_sqnorm, "-s * |x - y|"),
        Geometry(
            "poincare", "hyperbolic", True, True, _prologue_poincare,
            "-s * arcosh(1 + 2c|x-y|^2 / ((1-c|x|^2)(1-c|y|^2))) / sqrt(c)",
        ),
        Geometry(
            "lorentz", "hyperbolic", True, True, _prologue_lorentz,
            "-s * arcosh(c (t t' - <u, u'>)) / sqrt(c)",
        ),
    )
}


def get_geometry(name: str) -> Geometry:
    if not isinstance(name, str) or name not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {sorted(GEOMETRIES)}, got {name!r}")
    return GEOMETRIES[name]


# --------------------------------------------------------------------------------------------
# Epilogue on a tile: the executable spec of the kernels' epilogue.
#   p: [bn, bm] compute dtype; a: [bn, r]; b: [bm, r]; scale, inv_sqrt_c: 0-d tensors.
# --------------------------------------------------------------------------------------------


def _tile_fields(a, b):
    """Per-row scalars as broadcastable fields of a [bn, bm] tile: a_k[:, None], b_k[None, :]."""
    return [a[:, k:k + 1] for k in range(a.shape[1])], [b[:, k] for k in range(b.shape[1])]


def _paired_fields(a, b):
    """Per-row scalars of paired rows (x_i, y_i): elementwise vectors."""
    return [a[:, k] for k in range(a.shape[1])], [b[:, k] for k in range(b.shape[1])]


def _hyperbolic_w(p, fa, fb, kappa):
    """w = z - 1 by the hyperbolic law of cosines (L3), its clamp floor and the cosine."""
    (n_i, rho_i, s_i), (n_j, rho_j, s_j) = fa, fb
    cos = p / (n_i * n_j)
    ss = s_i * s_j
    w = 2.0 * torch.sinh(0.5 * (rho_i - rho_j)).square() + ss * (1.0 - cos)
    return w, kappa * ss, cos


def _scale_free(kind: str, p, fa, fb, inv_sqrt_c, kappa: float):
    """h from broadcastable fields. Autograd-safe: a clamped entry takes the (detached) floor,
    so its gradient is exactly zero and no 0 * inf appears (strict masks, docs/NUMERICS.md P5)."""
    if kind == "dot":
        return p
    if kind in ("sqeuclidean", "euclidean"):
        dist2 = fa[0] + fb[0] - 2.0 * p
        if kind == "sqeuclidean":
            return -dist2
        floor = kappa * (fa[0] + fb[0])
        return -torch.sqrt(torch.where(dist2 > floor, dist2, floor.detach()))
    if kind == "cosine":
        return p / (fa[0] * fb[0])
    if kind == "hyperbolic":
        w, w_min, _ = _hyperbolic_w(p, fa, fb, kappa)
        w = torch.where(w > w_min, w, w_min.detach())
        # arcosh(1 + w) = log1p(w + sqrt(w (w + 2))): never form z = 1 + w (P4).
        return -torch.log1p(w + torch.sqrt(w * (w + 2.0))) * inv_sqrt_c
    raise ValueError(f"unknown epilogue kind {kind!r}")


def tile_logits(kind: str, p, a, b, scale, inv_sqrt_c, kappa: float):
    """logit tile [bn, bm] = scale * h(p_ij, a_i, b_j); p [bn, bm], a [bn, r], b [bm, r]."""
    return scale * _scale_free(kind, p, *_tile_fields(a, b), inv_sqrt_c, kappa)


def paired_logits(kind: str, p, a, b, scale, inv_sqrt_c, kappa: float):
    """logits [n] of paired rows: scale * h(p_i, a_i, b_i); p [n], a [n, r], b [n, r]."""
    return scale * _scale_free(kind, p, *_paired_fields(a, b), inv_sqrt_c, kappa)


def tile_logit_grads(kind: str, p, a, b, scale, inv_sqrt_c, kappa: float, g):
    """Contract an upstream tile g = dL/dlogit with the epilogue's partial derivatives.

    Returns (g_p, g_a, g_b, gh) where
      g_p[i, j] = g_ij * dlogit/dp_ij          (the tile fed to the two gradient GEMMs)
      g_a[i, k] = sum_j g_ij * dlogit/da_ik     g_b[j, k] = sum_i g_ij * dlogit/db_jk
      gh        = sum_ij g_ij * h_ij            (= dL/dscale)
    Entries where ``g`` is zero contribute nothing even if a partial is infinite there.
    """
    fa, fb = _tile_fields(a, b)
    h = _scale_free(kind, p, fa, fb, inv_sqrt_c, kappa)
    gh = (g * h).sum()
    gs = g * scale
    if kind == "dot":
        return gs, a.new_zeros(a.shape), b.new_zeros(b.shape), gh
    if kind == "sqeuclidean":
        return 2.0 * gs, -gs.sum(1, keepdim=True), -gs.sum(0).unsqueeze(1), gh
    if kind == "euclidean":
        dist2 = fa[0] + fb[0] - 2.0 * p
        active = dist2 > kappa * (fa[0] + fb[0])
        # dh/dD = -1/(2d); zero where clamped (coincident pairs), never 0 * inf.
        g_dist2 = torch.where(active, gs * 0.5 / h, torch.zeros_like(gs))
        return -2.0 * g_dist2, g_dist2.sum(1, keepdim=True), g_dist2.sum(0).unsqueeze(1), gh
    if kind == "cosine":
        # dh/dp = 1/(n_i n_j); dh/dn_i = -h/n_i, dh/dn_j = -h/n_j.
        g_h = gs * h
        return (gs / (fa[0] * fb[0]), -(g_h.sum(1, keepdim=True) / fa[0]),
                -(g_h.sum(0) / fb[0]).unsqueeze(1), gh)
    if kind == "hyperbolic":
        w, w_min, cos = _hyperbolic_w(p, fa, fb, kappa)
        active = w > w_min
        q = torch.sqrt(w * (w + 2.0))
        # g_w = g * dlogit/dw = -g s / (sqrt(c) q) on active entries only.
        g_w = torch.where(active, -gs * inv_sqrt_c / torch.where(active, q, 1.0), 0.0)
        (n_i, rho_i, s_i), (n_j, rho_j, s_j) = fa, fb
        ss = s_i * s_j
        g_p = -g_w * ss / (n_i * n_j)
        sinh_d = torch.sinh(rho_i - rho_j)
        g_wc = g_w * ss * cos  # dw/dn_i = S_i S_j cos / n_i
        g_w1c = g_w * (1.0 - cos)  # dw/dS_i = S_j (1 - cos)
        g_a = torch.stack(
            [g_wc.sum(1) / n_i[:, 0], (g_w * sinh_d).sum(1), (g_w1c * s_j).sum(1)], dim=-1
        )
        g_b = torch.stack(
            [g_wc.sum(0) / n_j, -(g_w * sinh_d).sum(0), (g_w1c * s_i).sum(0)], dim=-1
        )
        return g_p, g_a, g_b, gh
    raise ValueError(f"unknown epilogue kind {kind!r}")
