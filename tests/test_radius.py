"""The hyperbolic radius cap: large radii are exact up to the cap, the cap is a parameter, rows
past it warn once, and ``project_radius_`` keeps parameters inside.

Before: radii were capped at asinh(2^15) ~ 11.09 with zero radial gradient, so a Poincare pair
at tangent norms 10 came out at distance ~11 where the truth is ~20 (the triangle inequality
failed). Now the default cap is 40 (the fp32 L3 epilogue is finite up to ~44: its
q = sqrt(w (w + 2)) no longer squares a large w) on every backend.
"""

import math
import warnings

import pytest
import torch

import flashnce
from flashnce import dispatch
from flashnce.geometry import radius_to_norm

from _helpers import require_backend

CPU_BACKENDS = tuple(name for name, b in dispatch.BACKENDS.items()
                     if b.devices is None or "cpu" in b.devices)


def _l3_distance(rho_i, rho_j, cos):
    """float64 hyperbolic distance at curvature 1 from radii and the angle (law of cosines)."""
    w = 2 * math.sinh((rho_i - rho_j) / 2) ** 2 + math.sinh(rho_i) * math.sinh(rho_j) * (1 - cos)
    return math.log1p(w + math.sqrt(w * (w + 2))) if w < 1e150 else math.log(2 * w)


def _pair(rho_i, rho_j, angle, geometry):
    """Two tangent vectors in R^2 at radii rho_i, rho_j (curvature 1) and the given angle."""
    k = 2.0 if geometry == "poincare" else 1.0  # Poincare: radius = 2 |v|
    a = torch.tensor([[rho_i / k, 0.0]], dtype=torch.float64)
    b = torch.tensor([[rho_j / k * math.cos(angle), rho_j / k * math.sin(angle)]],
                     dtype=torch.float64)
    return a, b


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("geometry", ("poincare", "lorentz"))
@pytest.mark.parametrize("rho_i,rho_j,angle", (
    (20.0, 20.0, 1.0), (15.0, 30.0, 0.3), (38.0, 39.5, 2.0), (39.9, 39.9, 3.0),
    (12.0, 25.0, 0.05)))
def test_large_radii_give_true_distances(backend, geometry, rho_i, rho_j, angle):
    a, b = _pair(rho_i, rho_j, angle, geometry)
    dtype = torch.float32 if backend == "triton" else torch.float64
    require_backend(backend, a.to(dtype))
    for dt in {dtype, torch.float32}:
        if backend == "triton" and dt == torch.float64:
            continue
        x, y = a.to(dt).requires_grad_(), b.to(dt).requires_grad_()
        row, _ = flashnce.pairwise_lse(x, y, geometry=geometry, backend=backend)
        want = -_l3_distance(rho_i, rho_j, math.cos(angle))
        rtol = 1e-10 if dt == torch.float64 else 2e-6
        assert abs(float(row.detach()) - want) <= rtol * abs(want), (float(row.detach()), want)
        (gx,) = torch.autograd.grad(row.sum(), x)
        assert torch.isfinite(gx).all() and gx.abs().sum() > 0


@pytest.mark.parametrize("geometry", ("poincare", "lorentz"))
def test_radius_past_the_cap_warns_once_and_is_clamped(geometry):
    a, b = _pair(30.0, 10.0, 1.0, geometry)
    flashnce.geometry._warned_cap.discard(25.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row, _ = flashnce.pairwise_lse(a, b, geometry=geometry, backend="torch",
                                       max_radius=25.0)
        flashnce.pairwise_lse(a, b, geometry=geometry, backend="torch", max_radius=25.0)
    cap = [w for w in caught if issubclass(w.category, flashnce.RadiusCapWarning)]
    assert len(cap) == 1 and "max_radius = 25" in str(cap[0].message)
    assert cap[0].filename == __file__  # points at the caller
    assert abs(float(row.detach()) + _l3_distance(25.0, 10.0, math.cos(1.0))) < 1e-9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flashnce.pairwise_lse(a, b, geometry=geometry, backend="torch")  # 30 < 40: silent


def test_max_radius_is_validated_everywhere():
    x = torch.randn(3, 2)
    for bad, err in ((0.0, ValueError), (45.0, ValueError), ("40", TypeError)):
        with pytest.raises(err, match="max_radius"):
            flashnce.infonce(x, x, geometry="lorentz", max_radius=bad)
        with pytest.raises(err, match="max_radius"):
            flashnce.nn.ContrastiveLoss("poincare", max_radius=bad)


@pytest.mark.parametrize("geometry,on_manifold", (("poincare", False), ("lorentz", False),
                                                  ("lorentz", True), ("poincare", True)))
def test_project_radius_keeps_rows_inside(geometry, on_manifold):
    g = torch.Generator().manual_seed(0)
    cap = 5.0 if on_manifold and geometry == "poincare" else 12.0
    limit = float(radius_to_norm(cap, geometry, 0.5, on_manifold))
    x = torch.randn(50, 4, dtype=torch.float64, generator=g)
    x = x / x.norm(dim=1, keepdim=True) * torch.linspace(0.1, 2.0, 50)[:, None] * limit
    inside = x.norm(dim=1) < limit * (1 - 1e-3)
    before = x.clone()
    out = flashnce.project_radius_(x, geometry=geometry, max_radius=cap, curvature=0.5,
                                   on_manifold=on_manifold)
    assert out is x
    assert torch.equal(x[inside], before[inside])  # rows inside are untouched
    assert (x.norm(dim=1) <= limit * (1 + 1e-12)).all()
    cos = torch.nn.functional.cosine_similarity(x, before, dim=1)
    assert torch.allclose(cos, torch.ones_like(cos))  # directions kept
    with pytest.raises(ValueError, match="hyperbolic"):
        flashnce.project_radius_(x, geometry="cosine")


def test_wordnet_style_pair_is_no_longer_distorted():
    """The issue's case: Poincare tangent norms past 5.55 (radius past 11.09) were clamped; a
    pair at |v| = 10 (radius 20) now has its true distance."""
    a, b = _pair(20.0, 20.0, 2.5, "poincare")
    row, _ = flashnce.pairwise_lse(a, b, geometry="poincare", backend="torch")
    want = _l3_distance(20.0, 20.0, math.cos(2.5))
    assert want > 38 and abs(-float(row.detach()) - want) < 1e-9


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("geometry", ("euclidean", "poincare", "lorentz"))
def test_points_paired_with_themselves_have_distance_zero(backend, geometry):
    """y is x: the positive pairs are coincident by index, so their distance is exactly 0
    (before: the clamp floor, 1.2 at radius 7.5 in fp32, biased the loss)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(24, 8, generator=g)
    if geometry == "euclidean":  # far from the origin, close to each other: a large floor
        x = x * 0.5
        x[:, 0] += 100.0
    else:  # radius 7.5: the fp32 floor puts a point at distance ~1.2 from itself
        k = 2.0 if geometry == "poincare" else 1.0
        x = x / x.norm(dim=1, keepdim=True) * 7.5 / k
    require_backend(backend, x)
    x = x.requires_grad_()
    per_row = flashnce.infonce(x, x, geometry=geometry, scale=0.5, backend=backend,
                               reduction="none")
    x64 = x.detach().double()
    logits = flashnce.reference_logits(x64, x64, geometry=geometry, scale=0.5)
    logits.fill_diagonal_(0.0)  # the exact self distance
    want = 0.5 * (torch.logsumexp(logits, 1) + torch.logsumexp(logits, 0))
    err = (per_row.detach().double() - want).abs().max().item()
    assert err < 1e-4 * max(1.0, want.abs().max().item()), err
    (gx,) = torch.autograd.grad(per_row.sum(), x)
    assert torch.isfinite(gx).all()
