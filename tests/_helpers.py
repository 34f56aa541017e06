"""Shared test helpers: inputs per geometry, the float64 oracle, and a verbose comparator.

Every backend's test file builds on these, so that "compared with the float64 reference,
values and gradients" means the same thing everywhere.
"""

from __future__ import annotations

import pytest
import torch

import flashnce
from flashnce import _extension, dispatch
from flashnce.backends.base import TileSpec
from flashnce.core.relation import Relation

GEOMETRY_NAMES = tuple(flashnce.GEOMETRIES)
HYPERBOLIC = ("poincare", "lorentz")

# Skip marker for tests of the compiled cpu backend, with the extension's own reason.
needs_cpu_kernel = pytest.mark.skipif(
    not _extension.load(), reason=f"cpu backend unavailable: {_extension.why_unavailable()}")


def tile_spec(kind="dot", relation=None, stat="lse", kappa=1e-6):
    """A TileSpec for backend queries (relation none by default)."""
    return TileSpec(kind, stat, relation or Relation.none(), kappa)


def require_backend(name, x=None):
    """Skip (printing the backend's own refusal reasons) unless backend ``name`` takes x."""
    x = torch.empty(1, 1) if x is None else x
    reasons = dispatch.get_backend(name).not_supported_reasons(x, x, tile_spec())
    if reasons:
        pytest.skip(f"backend {name!r} unavailable: {'; '.join(reasons)}")


# fp32 acceptance bounds against float64: loss relative, gradients max-norm relative.
FP32_LOSS_RTOL = 1e-5
FP32_GRAD_RTOL = 1e-4


DISTANCE_GEOMETRIES = ("euclidean", "poincare", "lorentz")
HALF_LINE_IN_1D = DISTANCE_GEOMETRIES + ("cosine",)


def make_features(n, d, *, dtype=torch.float32, seed=0, geometry="cosine", radius=None,
                  role="x"):
    """Random features suited to a geometry, generated in float64 then rounded to ``dtype``.

    Hyperbolic geometries get tangent vectors whose hyperbolic radius is spread over
    [0.2, 2.5] (or exactly ``radius``); Euclidean ones get moderate norms so distances are O(1).

    In d = 1 every point lies on one line, so random x and y would contain pairs closer than
    the fp32 resolution of a GEMM-built distance (docs/NUMERICS.md P3), which the kernels clamp on
    purpose. For the distance geometries, d = 1 therefore puts role "x" on the positive and
    role "y" on the negative half-line: every (x_i, y_j) pair is resolvable. Cosine in d = 1
    has an identically zero true gradient whose rounding grows like 1/|x|, so its norms are
    kept >= 0.5 the same way.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if d == 1 and geometry in HALF_LINE_IN_1D:
        x = (0.5 + x.abs()) * (1.0 if role == "x" else -1.0)
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
    """float64 reference infonce, its gradients w.r.t. x, y and each tensor in ``params``
    (scale, then curvature), and the natural scale of each of those quantities.

    The scales are |mean positive logit| and max|d(mean positive logit)/dt|: the size of the
    terms that cancel in the loss. They are the comparison floor for degenerate cases such as
    N = 1, where the loss is identically zero and its gradient is pure rounding.
    """
    x64 = x.detach().double().requires_grad_()
    y64 = y.detach().double().requires_grad_()
    p64 = [p.detach().double().requires_grad_() for p in params]
    kw = dict(kwargs)
    for name, p in zip(("scale", "curvature"), p64):
        kw[name] = p
    inputs = [x64, y64, *p64]
    loss = flashnce.reference_infonce(x64, y64, **kw)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]
    geo_kw = {k: v for k, v in kw.items() if k not in ("symmetric", "targets", "reduction")}
    logits = flashnce.reference_logits(x64, y64, **geo_kw)
    cols = kw.get("targets")
    cols = torch.arange(logits.shape[0]) if cols is None else cols
    positive = logits[torch.arange(logits.shape[0]), cols].mean()
    pos_grads = torch.autograd.grad(positive, inputs, allow_unused=True)
    # Natural derivative scales: a logit changes by ~|l_pos| per unit change of a feature row
    # (1/N of it in a mean loss), of the scale, or of the curvature.
    pos = abs(positive.item())
    n = logits.shape[0]
    natural = [pos / (n * x64.abs().max().item()), pos / (n * y64.abs().max().item())]
    natural += [pos / max(abs(p.item()), 1e-12) for p in p64]
    floors = [pos] + [max(nat, 0.0 if g is None else g.abs().max().item())
                      for nat, g in zip(natural, pos_grads)]
    return loss.detach(), grads, floors


def rel_maxnorm_error(actual: torch.Tensor, expected: torch.Tensor, floor: float = 0.0) -> float:
    """max |actual - expected| / max(max |expected|, floor).

    ``floor`` only matters when the expected tensor is (nearly) zero, e.g. the gradient of a
    normalisation in d = 1, where any rounding is an "infinite" relative error.
    """
    a, e = actual.detach().double(), expected.detach().double()
    scale = max(e.abs().max().item() if e.numel() else 0.0, floor)
    err = (a - e).abs().max().item() if e.numel() else 0.0
    return err / scale if scale > 0 else err


def assert_close(actual, expected, rtol, name="", floor=1e-3):
    """Max-norm relative comparison that reports where and how badly it fails.

    Passes when max|actual - expected| <= rtol * max(max|expected|, floor).
    """
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    a, e = actual.detach().double(), expected.detach().double()
    bad = ~torch.isfinite(a)
    assert not bad.any(), f"{name}: {int(bad.sum())} non-finite values, first at {bad.nonzero()[0].tolist()}"
    err = rel_maxnorm_error(a, e, floor)
    if err > rtol:
        diff = (a - e).abs()
        idx = divmod(int(diff.argmax()), a.shape[-1]) if a.dim() == 2 else int(diff.argmax())
        raise AssertionError(
            f"{name}: relative max-norm error {err:.3e} > {rtol:.1e}; worst at {idx}: "
            f"got {a.flatten()[diff.argmax()].item():.8g}, "
            f"expected {e.flatten()[diff.argmax()].item():.8g}")


def assert_matches_oracle(geometry, loss, grads, ref_loss, ref_grads, floors, tols, *,
                          grad_dtype=None, device_type=None):
    """Loss and (x, y, scale, curvature) gradients against ``oracle``'s output.

    tols: [loss, dx, dy, dscale, dcurvature] max-norm relative tolerances. A None gradient is
    only allowed for the curvature of a flat geometry, whose true gradient is then zero.
    """
    assert_close(loss.reshape(1).double(), ref_loss.reshape(1), tols[0], f"{geometry} loss",
                 floor=floors[0])
    for name, g, rg, floor, tol in zip(("x", "y", "scale", "curvature"), grads, ref_grads,
                                       floors[1:], tols[1:]):
        if g is None:
            assert name == "curvature" and flashnce.GEOMETRIES[geometry].kind != "hyperbolic"
            assert rg.abs().max() == 0
            continue
        if name in ("x", "y"):
            assert grad_dtype is None or g.dtype == grad_dtype, f"d{name} dtype {g.dtype}"
            assert device_type is None or g.device.type == device_type
        assert_close(g.reshape(rg.shape).double(), rg, tol, f"{geometry} d{name}", floor=floor)
