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

import os
import sys
import warnings

from dataclasses import dataclass
from typing import Callable

import torch

from .core.numerics import MAX_RADIUS, MAX_RADIUS_LIMIT, NORM_EPS

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

    def row_scalars(self, q: torch.Tensor, curvature: torch.Tensor, on_manifold: bool,
                    max_radius: float = MAX_RADIUS) -> torch.Tensor:
        """Per-row scalars [N, r] from squared row norms q [N] (differentiable); hyperbolic
        radii are capped at ``max_radius`` (zero radial gradient past it)."""
        if q.dim() != 1:
            raise ValueError(f"row_scalars takes squared row norms q [N], got shape "
                             f"{tuple(q.shape)}")
        if self.kind != "hyperbolic":
            return self.prologue(q, curvature, on_manifold)
        return self.prologue(q, curvature, on_manifold, max_radius)


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


class RadiusCapWarning(UserWarning):
    """Rows lie past the hyperbolic radius cap (their radius is clamped, radial gradient 0)."""


_warned_cap: set = set()


def _warn_past_cap(rho: torch.Tensor, max_radius: float) -> None:
    """Warn once per cap value when rows exceed it (eager only: it reads the data)."""
    if (max_radius in _warned_cap or torch.compiler.is_compiling() or rho.numel() == 0
            or rho.device.type == "meta" or torch._C._functorch.is_functorch_wrapped_tensor(rho)):
        return
    over = int((rho.detach() > max_radius).sum())
    if over:
        _warned_cap.add(max_radius)
        warnings.warn(
            f"flashnce: {over} of {rho.numel()} rows have a hyperbolic radius above "
            f"max_radius = {max_radius:g} (largest {float(rho.detach().max()):.4g}); they are "
            f"clamped to it with zero radial gradient. Keep parameters inside with "
            f"flashnce.project_radius_(...) after optimizer.step(), or raise max_radius "
            f"(at most {MAX_RADIUS_LIMIT:g}; docs/NUMERICS.md section 6). Shown once.",
            RadiusCapWarning, stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
    """The warnings stacklevel of the first frame outside flashnce and torch (the caller)."""
    roots = (os.path.dirname(os.path.abspath(__file__)),
             os.path.dirname(os.path.abspath(torch.__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(roots):
        frame, level = frame.f_back, level + 1
    return level


def _direction_scalars(r: torch.Tensor, rho: torch.Tensor, max_radius: float) -> torch.Tensor:
    """(n, rho, sinh rho) for the hyperbolic (L3) epilogue.

    L3 only needs the direction of each row and divides by n_i n_j itself; n is floored so
    zero vectors stay finite, rho capped at ``max_radius`` (a warning, once, when exceeded).
    """
    n = r.clamp_min(NORM_EPS)
    _warn_past_cap(rho, max_radius)
    rho = rho.clamp(max=max_radius)
    return torch.stack([n, rho, torch.sinh(rho)], dim=-1)


def _prologue_lorentz(q, curvature, on_manifold, max_radius=MAX_RADIUS):
    """MERU: tangent v at the origin -> rho = sqrt(c)||v||; points: space part u -> asinh."""
    sqrt_c = curvature.to(q.dtype).sqrt()
    r = _norm(q)
    rho = torch.asinh(sqrt_c * r) if on_manifold else sqrt_c * r
    return _direction_scalars(r, rho, max_radius)


def _prologue_poincare(q, curvature, on_manifold, max_radius=MAX_RADIUS):
    """Poincare ball through L3: expmap0(v) sits at radius 2 sqrt(c)||v||; a ball point x at
    2 artanh(sqrt(c)||x||). Isometric to Lorentz(exp_map0(2v)) (docs/NUMERICS.md section 7)."""
    sqrt_c = curvature.to(q.dtype).sqrt()
    r = _norm(q)
    rho = 2.0 * torch.atanh(sqrt_c * r) if on_manifold else 2.0 * sqrt_c * r
    return _direction_scalars(r, rho, max_radius)


def radius_to_norm(rho, geometry: str, curvature=1.0, on_manifold: bool = False):
    """The row norm |x| at which a row of ``geometry`` lies at hyperbolic radius rho (the
    inverse of the prologues): Lorentz tangent rho / sqrt(c), hyperboloid space part
    sinh(rho) / sqrt(c), Poincare tangent rho / (2 sqrt(c)), ball point tanh(rho / 2) / sqrt(c)."""
    geo = get_geometry(geometry)
    if geo.kind != "hyperbolic":
        raise ValueError(f"radius_to_norm needs a hyperbolic geometry, got {geometry!r}")
    rho = torch.as_tensor(rho, dtype=torch.float64)
    sqrt_c = torch.as_tensor(curvature, dtype=torch.float64).sqrt()
    if geo.name == "lorentz":
        return (torch.sinh(rho) if on_manifold else rho) / sqrt_c
    return (torch.tanh(0.5 * rho) if on_manifold else 0.5 * rho) / sqrt_c


@torch.no_grad()
def project_radius_(x: torch.Tensor, *, geometry: str, max_radius: float = MAX_RADIUS,
                    curvature=1.0, on_manifold: bool = False, margin: float = 1e-4):
    """Scale, in place, the rows of x whose hyperbolic radius exceeds ``max_radius - margin``
    back onto that radius (direction kept). Call it on embedding parameters after
    ``optimizer.step()`` so that no row sits past the cap, where the radial gradient is 0.
    Returns x."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 2:
        raise TypeError("project_radius_ takes a floating tensor [N, d]")
    max_radius = check_max_radius(max_radius)
    c = float(curvature.detach()) if isinstance(curvature, torch.Tensor) else float(curvature)
    limit = float(radius_to_norm(max_radius - margin, geometry, c, on_manifold))
    norms = torch.linalg.vector_norm(x.to(torch.float64), dim=-1, keepdim=True)
    factor = torch.where(norms > limit, limit / norms.clamp_min(1e-300), 1.0)
    x.mul_(factor.to(x.dtype))
    return x


def check_max_radius(max_radius) -> float:
    """max_radius: a number in (0, MAX_RADIUS_LIMIT] (past it sinh rho_i sinh rho_j overflows
    fp32 in the L3 epilogue)."""
    if isinstance(max_radius, bool) or not isinstance(max_radius, (int, float)):
        raise TypeError(f"max_radius must be a number, got {type(max_radius).__name__}")
    if not 0 < max_radius <= MAX_RADIUS_LIMIT:
        raise ValueError(f"max_radius must lie in (0, {MAX_RADIUS_LIMIT:g}] (past it the "
                         f"fp32 product sinh rho_i sinh rho_j overflows), got {max_radius!r}")
    return float(max_radius)


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


def _hyperbolic_q(w):
    """q = sqrt(w (w + 2)) without squaring a large w (w^2 overflows fp32 past ~1.8e19, i.e.
    rho_i + rho_j > ~45): past 2^27 q = w + 1 to a relative 1 / (2 (w + 1)^2), below eps."""
    big = w > _Q_SWITCH
    return torch.where(big, w + 1.0, torch.sqrt(torch.where(big, 1.0, w) * (w + 2.0)))


_Q_SWITCH = float(2**27)


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
        return -torch.log1p(w + _hyperbolic_q(w)) * inv_sqrt_c
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
        q = torch.where(active, _hyperbolic_q(w), 1.0)
        # g_w = g * dlogit/dw = -g s k / q on active entries only, never formed alone: at
        # large radii q ~ S_i S_j reaches 1e37 and g_w would be subnormal in fp32 (flushed
        # to 0 on a GPU). r = 1 / q stays normal up to the largest cap (rho = 44), and every
        # factor multiplies r first (S_i S_j r ~ 1 / (1 - cos), sinh(rho_i - rho_j) r, S_j r).
        g_k = torch.where(active, -gs * inv_sqrt_c, 0.0)
        r = 1.0 / q
        (n_i, rho_i, s_i), (n_j, rho_j, s_j) = fa, fb
        g_ss = g_k * (s_i * s_j * r)  # g_w S_i S_j
        g_p = -g_ss / (n_i * n_j)
        g_wc = g_ss * cos  # dw/dn_i = S_i S_j cos / n_i
        g_ws = g_k * (torch.sinh(rho_i - rho_j) * r)
        g_w1c = g_k * (1.0 - cos)  # dw/dS_i = S_j (1 - cos), times S_j r below
        g_a = torch.stack(
            [g_wc.sum(1) / n_i[:, 0], g_ws.sum(1), (g_w1c * (s_j * r)).sum(1)], dim=-1
        )
        g_b = torch.stack(
            [g_wc.sum(0) / n_j, -g_ws.sum(0), (g_w1c * (s_i * r)).sum(0)], dim=-1
        )
        return g_p, g_a, g_b, gh
    raise ValueError(f"unknown epilogue kind {kind!r}")
