"""Shared test helpers: inputs per geometry, the float64 oracle, and a verbose comparator.

Every backend's test file builds on these, so that "compared with the float64 reference,
values and gradients" means the same thing everywhere.
"""

from __future__ import annotations

import torch

import flashnce

GEOMETRY_NAMES = tuple(flashnce.GEOMETRIES)
HYPERBOLIC = ("poincare", "lorentz")

# fp32 acceptance bounds against float64 (issue 2): loss relative, gradients max-norm relative.
FP32_LOSS_RTOL = 1e-5
FP32_GRAD_RTOL = 1e-4


def make_features(n, d, *, dtype=torch.float32, seed=0, geometry="cosine", radius=None):
    """Random features suited to a geometry, generated in float64 then rounded to ``dtype``.

    Hyperbolic geometries get tangent vectors whose hyperbolic radius is spread over
    [0.2, 2.5] (or exactly ``radius``); Euclidean ones get moderate norms so distances are O(1).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if geometry in HYPERBOLIC:
        direction = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if radius is None:
            rho = 0.2 + 2.3 * torch.rand(n, 1, generator=g, dtype=torch.float64)
        else:
            rho = torch.full((n, 1), float(radius), dtype=torch.float64)
        # tangent norm r gives radius sqrt(c) r (lorentz) or 2 sqrt(c) r (poincare), c = 1.
        x = direction * (rho if geometry == "lorentz" else rho / 2)
    elif geometry in ("sqeuclidean", "euclidean", "dot"):
        x = x / d**0.5
    return x.to(dtype)


def oracle(x, y, *, params=(), **kwargs):
    """float64 reference infonce and gradients w.r.t. x, y and each tensor in ``params``."""
    x64 = x.detach().double().requires_grad_()
    y64 = y.detach().double().requires_grad_()
    p64 = [p.detach().double().requires_grad_() for p in params]
    names = {0: "scale", 1: "curvature"}
    kw = dict(kwargs)
    for i, p in enumerate(p64):
        kw[names[i]] = p
    loss = flashnce.reference_infonce(x64, y64, **kw)
    grads = torch.autograd.grad(loss, [x64, y64, *p64])
    return loss.detach(), grads


def rel_maxnorm_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (absolute when expected is all zero)."""
    a, e = actual.detach().double(), expected.detach().double()
    scale = e.abs().max().item() if e.numel() else 0.0
    err = (a - e).abs().max().item() if e.numel() else 0.0
    return err / scale if scale > 0 else err


def assert_close(actual, expected, rtol, name=""):
    """Max-norm relative comparison that reports where and how badly it fails."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    a, e = actual.detach().double(), expected.detach().double()
    bad = ~torch.isfinite(a)
    assert not bad.any(), f"{name}: {int(bad.sum())} non-finite values, first at {bad.nonzero()[0].tolist()}"
    err = rel_maxnorm_error(a, e)
    if err > rtol:
        diff = (a - e).abs()
        idx = divmod(int(diff.argmax()), a.shape[-1]) if a.dim() == 2 else int(diff.argmax())
        raise AssertionError(
            f"{name}: relative max-norm error {err:.3e} > {rtol:.1e}; worst at {idx}: "
            f"got {a.flatten()[diff.argmax()].item():.8g}, "
            f"expected {e.flatten()[diff.argmax()].item():.8g}")
