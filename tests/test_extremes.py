"""The extremes of docs/NUMERICS.md: coincident points, large hyperbolic radius, large scale."""

import pytest
import torch

import flashnce
from flashnce.core.numerics import clamp_kappa

from _helpers import (FP32_GRAD_RTOL, FP32_LOSS_RTOL, GEOMETRY_NAMES, assert_close,
                      make_features, oracle)

DISTANCE = ("sqeuclidean", "euclidean", "poincare", "lorentz")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("geometry", DISTANCE)
def test_coincident_points_have_finite_gradients(geometry, dtype):
    """x_i == y_i exactly (and a zero vector): the distance logit's 1/d singularity is clamped."""
    x = make_features(16, 8, dtype=dtype, seed=5, geometry=geometry)
    x[3] = 0.0  # a point at the origin, paired with itself
    y = x.clone()
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    scale = torch.tensor(4.0, requires_grad=True)
    curv = torch.tensor(1.0, requires_grad=True)
    for symmetric in (True, False):
        loss = flashnce.infonce(xr, yr, geometry=geometry, scale=scale, curvature=curv,
                                symmetric=symmetric, backend="torch")
        grads = torch.autograd.grad(loss, [xr, yr, scale, curv], allow_unused=True)
        assert torch.isfinite(loss)
        for g in grads:
            assert g is None or torch.isfinite(g).all()
        ref = flashnce.reference_infonce(x.double(), y.double(), geometry=geometry, scale=4.0,
                                         symmetric=symmetric)
        assert abs(loss.item() - ref.item()) <= clamp_bound(x, geometry, 4.0) + 1e-6


def clamp_bound(x, geometry, scale):
    """Largest logit change the distance clamp may cause for a coincident pair.

    euclidean: d >= sqrt(kappa (a + b)) <= sqrt(2 kappa) max|x|; hyperbolic (c = 1):
    w >= kappa S^2, so d >= arcosh(1 + kappa S^2) ~ sqrt(2 kappa) S. sqeuclidean is unclamped.
    """
    kappa = clamp_kappa(x.dtype)
    if geometry == "sqeuclidean":
        return 0.0
    if geometry == "euclidean":
        radius = x.double().norm(dim=-1).max().item()
    else:
        tangent = x.double().norm(dim=-1).max().item()
        radius = torch.sinh(torch.tensor(tangent * (2.0 if geometry == "poincare" else 1.0)))
    return scale * (2 * kappa) ** 0.5 * float(radius)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_coincident_pairs_under_exclude_diagonal(dtype):
    """Same-set losses mask the exactly coincident diagonal: no NaN from G = 0 times 1/d."""
    for geometry in ("euclidean", "lorentz", "poincare"):
        x = make_features(9, 5, dtype=dtype, seed=8, geometry=geometry).requires_grad_()
        row, col = flashnce.pairwise_lse(x, x, geometry=geometry, exclude_diagonal=True,
                                         backend="torch")
        (gx,) = torch.autograd.grad(row.sum() + col.sum(), [x])
        assert torch.isfinite(row).all() and torch.isfinite(gx).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("geometry", ["poincare", "lorentz"])
@pytest.mark.parametrize("radius", [4.0, 8.0])
def test_large_hyperbolic_radius(geometry, radius, dtype):
    """Radius up to 8: finite, and in float64 equal to the oracle; fp32 within P3's noise."""
    x = make_features(24, 16, dtype=dtype, seed=1, geometry=geometry, radius=radius)
    y = make_features(24, 16, dtype=dtype, seed=2, geometry=geometry, radius=radius)
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    loss = flashnce.infonce(xr, yr, geometry=geometry, scale=1.0, backend="torch")
    gx, gy = torch.autograd.grad(loss, [xr, yr])
    ref_loss, (rgx, rgy), floors = oracle(x, y, geometry=geometry, scale=1.0)
    # fp32 resolution in hyperbolic space degrades like cosh^2(rho) (docs/NUMERICS.md P3).
    loss_tol, grad_tol = (1e-10, 1e-8) if dtype == torch.float64 else (1e-5, 1e-3)
    assert_close(loss.reshape(1), ref_loss.reshape(1), loss_tol, "loss", floor=floors[0])
    assert_close(gx, rgx, grad_tol, "dx", floor=floors[1])
    assert_close(gy, rgy, grad_tol, "dy", floor=floors[2])


@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
def test_scale_100(geometry):
    x = make_features(50, 32, seed=3, geometry=geometry)
    y = make_features(50, 32, seed=4, geometry=geometry, role="y")
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    loss = flashnce.infonce(xr, yr, geometry=geometry, scale=100.0, backend="torch")
    gx, gy = torch.autograd.grad(loss, [xr, yr])
    ref_loss, (rgx, rgy), floors = oracle(x, y, geometry=geometry, scale=100.0)
    assert_close(loss.reshape(1), ref_loss.reshape(1), FP32_LOSS_RTOL, "loss", floor=floors[0])
    assert_close(gx, rgx, FP32_GRAD_RTOL, "dx", floor=floors[1])
    assert_close(gy, rgy, FP32_GRAD_RTOL, "dy", floor=floors[2])
