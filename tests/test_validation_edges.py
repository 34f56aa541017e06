"""Validation edges found by trying the API as a new (or hostile) user would.

Each case failed before: a curvature that a flat geometry ignores was still required to be
> 0; numpy.float32 scales were refused (numpy.float64 worked); ``group_mode`` was not checked
without a group; ``ContrastiveLoss`` checked ``backend`` / ``group_mode`` / a malformed
``curvature_range`` only at its first forward, or with "too many values to unpack";
``backend="reference"`` gave NaN gradients at coincident points.
"""

import numpy as np
import pytest
import torch

import flashnce
from flashnce.nn import ContrastiveLoss

X = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
Y = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("geometry", ["cosine", "dot", "sqeuclidean", "euclidean"])
def test_flat_geometries_ignore_curvature(geometry):
    want = flashnce.infonce(X, Y, geometry=geometry, backend="torch")
    got = flashnce.infonce(X, Y, geometry=geometry, curvature=-1.0, backend="torch")
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="curvature must be finite"):
        flashnce.infonce(X, Y, geometry=geometry, curvature=float("nan"))


def test_hyperbolic_still_needs_positive_curvature():
    with pytest.raises(ValueError, match="curvature must be > 0"):
        flashnce.infonce(X, Y, geometry="lorentz", curvature=-1.0)


@pytest.mark.parametrize("value", [np.float32(2.5), np.float64(2.5), np.int64(2)])
def test_numpy_scalars_are_accepted(value):
    got = flashnce.infonce(X, Y, scale=value, backend="torch")
    assert torch.allclose(got, flashnce.infonce(X, Y, scale=float(value), backend="torch"))


def test_group_mode_checked_without_group():
    with pytest.raises(ValueError, match="group_mode"):
        flashnce.infonce(X, Y, group_mode="bogus")


@pytest.mark.parametrize("kwargs, match", [
    (dict(backend="bogus"), "backend"),
    (dict(group_mode="bogus"), "group_mode"),
    (dict(on_manifold="yes"), "on_manifold"),
    (dict(geometry="lorentz", curvature_range=(0.1, 1.0, 10.0)), "curvature_range"),
    (dict(geometry="lorentz", curvature_range=5.0), "curvature_range"),
    (dict(geometry="lorentz", curvature_range=(10.0, 0.1), curvature_init=1.0),
     "curvature_range|outside"),
])
def test_contrastive_loss_checks_at_construction(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ContrastiveLoss(**kwargs)


@pytest.mark.parametrize("geometry", ["euclidean", "poincare", "lorentz"])
def test_reference_backend_finite_at_coincident_points(geometry):
    """The materialised backend follows the kernels' clamps, so it stays a usable oracle where
    pairs coincide (y is a copy of x: every positive pair has distance 0)."""
    x = (X / 3).clone().requires_grad_()
    y = (X / 3).clone().requires_grad_()
    loss = flashnce.infonce(x, y, geometry=geometry, backend="reference")
    gx, gy = torch.autograd.grad(loss, [x, y])
    assert torch.isfinite(loss) and torch.isfinite(gx).all() and torch.isfinite(gy).all()
    xt, yt = (X / 3).clone().requires_grad_(), (X / 3).clone().requires_grad_()
    lt = flashnce.infonce(xt, yt, geometry=geometry, backend="torch")
    tx, ty = torch.autograd.grad(lt, [xt, yt])
    assert torch.allclose(loss, lt, atol=1e-5)
    assert torch.allclose(gx, tx, atol=1e-4) and torch.allclose(gy, ty, atol=1e-4)


def test_autocast_mixed_tower_dtypes():
    """One bf16 tower and cached fp32 embeddings under autocast: promoted to fp32 (the
    materialised loss works there too); outside autocast the mismatch is a clear TypeError."""
    xb = X.to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = flashnce.infonce(xb, Y, backend="torch")
    (gx,) = torch.autograd.grad(loss, [xb])
    assert loss.dtype == torch.float32 and gx.dtype == torch.bfloat16
    want = flashnce.infonce(X.to(torch.bfloat16).float(), Y, backend="torch")
    assert torch.allclose(loss, want)
    with pytest.raises(TypeError, match="same dtype"):
        flashnce.infonce(xb, Y)


def test_meta_tensors_give_shapes():
    """Meta tensors (shape inference, model surgery) run through the torch backend's walk."""
    xm = X.to("meta").requires_grad_()
    loss = flashnce.infonce(xm, Y.to("meta"), geometry="lorentz")
    loss.backward()
    assert loss.device.type == "meta" and loss.shape == ()
    assert xm.grad.shape == X.shape and xm.grad.device.type == "meta"


def test_torch_func_grad_supported_vmap_refused():
    y = Y
    for geometry in ("cosine", "lorentz"):
        g = torch.func.grad(lambda a: flashnce.infonce(a, y, geometry=geometry))(X)
        xr = X.clone().requires_grad_()
        (want,) = torch.autograd.grad(flashnce.infonce(xr, y, geometry=geometry), [xr])
        assert torch.allclose(g, want, atol=1e-6)
    with pytest.raises(ValueError, match="torch.func.grad"):
        torch.func.grad(lambda a: flashnce.infonce(a, y, backend="cpu"))(X)
    with pytest.raises(RuntimeError, match="do not support torch.func.vmap"):
        torch.func.vmap(lambda a: flashnce.infonce(a, y))(X.expand(3, 6, 4))


NAN_BACKENDS = [b for b in ("torch", "cpu", "triton")
                if flashnce.dispatch.BACKENDS[b].unavailable() is None]


@pytest.mark.parametrize("backend", NAN_BACKENDS)
@pytest.mark.parametrize("geometry", sorted(flashnce.GEOMETRIES))
def test_nan_feature_gives_nan_loss_without_value_checks(monkeypatch, geometry, backend):
    """Value checks are skipped under torch.compile; a NaN feature must still reach the loss
    (it used to be clamped into the hyperbolic distance floor: a finite loss, NaN grads)."""
    from flashnce import validate

    monkeypatch.setattr(validate, "_tracing", lambda: True)
    x = X.clone()
    x[2, 1] = float("nan")
    assert torch.isnan(flashnce.infonce(x, Y, geometry=geometry, backend=backend))


def test_nan_feature_gives_nan_loss_under_compile():
    torch._dynamo.reset()
    x = X.clone()
    x[3, 0] = float("nan")
    fn = torch.compile(lambda a, b: flashnce.infonce(a, b, geometry="poincare"),
                       fullgraph=True, backend="aot_eager")
    assert torch.isnan(fn(x, Y))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_features_whose_squared_norms_overflow_are_refused(dtype):
    big = 1e20 if dtype != torch.float64 else 1e160
    with pytest.raises(ValueError, match="squared row norms could overflow"):
        flashnce.infonce(X.to(dtype) * big, Y.to(dtype), geometry="cosine")
    # Large but safe entries keep cosine scale invariant.
    a = flashnce.infonce((X * 1e15).to(dtype), Y.to(dtype), backend="torch")
    b = flashnce.infonce(X.to(dtype), Y.to(dtype), backend="torch")
    assert torch.allclose(a, b, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5)


def test_poincare_boundary_checked_in_the_kernels_precision():
    """c |x|^2 = 0.99999998 passes a float64 check but is 1.0 in fp32: refused, not NaN."""
    direction = torch.tensor([[0.6, 0.8, 0.0]], dtype=torch.float64)
    x = (direction * 0.99999999).float().repeat(4, 1)
    x[1:] *= 0.5
    y = x.flip(0).clone()
    assert float(x.double()[0].square().sum()) < 1.0  # inside in float64
    with pytest.raises(ValueError, match="outside the Poincare ball"):
        flashnce.infonce(x, y, geometry="poincare", on_manifold=True)
    inside = x * 0.999
    xx = inside.clone().requires_grad_()
    loss = flashnce.infonce(xx, y * 0.999, geometry="poincare", on_manifold=True)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(xx.grad).all()
