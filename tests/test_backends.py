"""The losses through every backend that runs CPU tensors here, against the textbook oracle.

Backends and dtypes come from the backends' declared capabilities (``dispatch.BACKENDS``):
torch, cpu and reference (the materialised N x M logits) run the full matrix, triton (the
interpreter: slow) a subset of shapes. geometry x {float32, float64} x shapes (N in
{1, 7, 64, 300}, d in {1, 3, 64}), symmetric and one-way (N != M), learnable scale and
curvature: loss and gradients (x, y, scale, curvature) against ``flashnce.reference_infonce``
in float64 (explicit hyperboloid / ball points: different algebra from the kernels);
hyperbolic inputs given as manifold points (on_manifold=True) as well as tangent vectors.
A backend that refuses these inputs is skipped with its own refusal reason.
"""

import pytest
import torch

import flashnce
from flashnce import dispatch

from _helpers import (FP32_GRAD_RTOL, FP32_LOSS_RTOL, GEOMETRY_NAMES, assert_close,
                      assert_matches_oracle, make_features, oracle, rel_maxnorm_error,
                      require_backend)

CPU_BACKENDS = tuple(name for name, b in dispatch.BACKENDS.items()
                     if b.devices is None or "cpu" in b.devices)
DTYPES = (torch.float32, torch.float64)
# The Triton interpreter takes ~1 s per call: a subset of the shapes.
SLOW = {"triton": dict(n=(1, 64), d=(3,), nmd=((7, 13, 3),))}


def _skip_slow(backend, dtype, **shape):
    if dtype not in dispatch.BACKENDS[backend].dtypes:
        pytest.skip(f"{backend} does not declare {dtype}")
    subset = SLOW.get(backend)
    if subset and any(v not in subset[k] for k, v in shape.items()):
        pytest.skip(f"{backend}: covered by a subset of the shapes (the interpreter is slow)")
TOL = {  # (loss relative, gradient max-norm relative) against float64
    torch.float32: (FP32_LOSS_RTOL, FP32_GRAD_RTOL),
    torch.float64: (1e-10, 1e-9),
}


def run_case(backend, geometry, x, y, **kwargs):
    """Loss and grads (x, y, scale, curvature) from flashnce and from the float64 oracle."""
    dtype = x.dtype
    x = x.clone().requires_grad_()
    y = y.clone().requires_grad_()
    scale = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    curv = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    loss = flashnce.infonce(x, y, geometry=geometry, scale=scale, curvature=curv,
                            backend=backend, **kwargs)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    grads = torch.autograd.grad(loss, [x, y, scale, curv], allow_unused=True)
    ref_loss, ref_grads, floors = oracle(x, y, params=(scale.detach(), curv.detach()),
                                         geometry=geometry, **kwargs)
    return loss, grads, ref_loss, ref_grads, floors


def check_case(backend, geometry, x, y, **kwargs):
    loss, grads, ref_loss, ref_grads, floors = run_case(backend, geometry, x, y, **kwargs)
    loss_tol, grad_tol = TOL[x.dtype]
    assert_matches_oracle(geometry, loss, grads, ref_loss, ref_grads, floors,
                          [loss_tol] + [grad_tol] * 4, grad_dtype=x.dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("n", [1, 7, 64, 300])
@pytest.mark.parametrize("d", [1, 3, 64])
def test_symmetric_matches_reference(backend, dtype, geometry, n, d):
    _skip_slow(backend, dtype, n=n, d=d)
    x = make_features(n, d, dtype=dtype, seed=n * 100 + d, geometry=geometry)
    y = make_features(n, d, dtype=dtype, seed=n * 100 + d + 1, geometry=geometry, role="y")
    require_backend(backend, x)
    check_case(backend, geometry, x, y)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("n,m,d", [(1, 5, 3), (7, 13, 3), (64, 30, 64), (300, 257, 64)])
def test_one_way_matches_reference(backend, dtype, geometry, n, m, d):
    _skip_slow(backend, dtype, nmd=(n, m, d))
    x = make_features(n, d, dtype=dtype, seed=n + m, geometry=geometry)
    y = make_features(m, d, dtype=dtype, seed=n + m + 7, geometry=geometry, role="y")
    require_backend(backend, x)
    targets = torch.randint(0, m, (n,), generator=torch.Generator().manual_seed(n))
    check_case(backend, geometry, x, y, symmetric=False, targets=targets)
    if n <= m:  # default targets: row i -> column i
        check_case(backend, geometry, x, y, symmetric=False)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("n,m", [(2, 2), (9, 5), (5, 9), (70, 70)])
def test_pairwise_lse_exclude_diagonal(backend, geometry, n, m):
    _skip_slow(backend, torch.float64)
    x = make_features(n, 4, dtype=torch.float64, seed=n, geometry=geometry)
    y = make_features(m, 4, dtype=torch.float64, seed=m + 50, geometry=geometry)
    require_backend(backend, x)
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    row, col = flashnce.pairwise_lse(xr, yr, geometry=geometry, scale=1.7, curvature=1.3,
                                     exclude_diagonal=True, backend=backend)
    ref_row, ref_col = flashnce.reference_pairwise_lse(
        x, y, geometry=geometry, scale=1.7, curvature=1.3, exclude_diagonal=True)
    assert_close(row, ref_row, 1e-12, "row_lse")
    assert_close(col, ref_col, 1e-12, "col_lse")
    w_row = torch.linspace(0.5, 1.5, n, dtype=torch.float64)
    w_col = torch.linspace(-1.0, 1.0, m, dtype=torch.float64)
    gx, gy = torch.autograd.grad((row * w_row).sum() + (col * w_col).sum(), [xr, yr])
    xr2, yr2 = x.clone().requires_grad_(), y.clone().requires_grad_()
    r2, c2 = flashnce.reference_pairwise_lse(
        xr2, yr2, geometry=geometry, scale=1.7, curvature=1.3, exclude_diagonal=True)
    rgx, rgy = torch.autograd.grad((r2 * w_row).sum() + (c2 * w_col).sum(), [xr2, yr2])
    assert_close(gx, rgx, 1e-9, "dx")
    assert_close(gy, rgy, 1e-9, "dy")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions(backend, reduction):
    _skip_slow(backend, torch.float64)
    x = make_features(33, 8, dtype=torch.float64, seed=1)
    y = make_features(33, 8, dtype=torch.float64, seed=2)
    require_backend(backend, x)
    for symmetric in (True, False):
        got = flashnce.infonce(x, y, scale=3.0, symmetric=symmetric, reduction=reduction,
                               backend=backend)
        ref = flashnce.reference_infonce(x, y, scale=3.0, symmetric=symmetric,
                                         reduction=reduction)
        assert got.shape == ref.shape
        assert rel_maxnorm_error(got, ref) < 1e-12


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_inputs_not_modified(backend):
    x = make_features(20, 6, seed=3, geometry="lorentz").requires_grad_()
    y = make_features(20, 6, seed=4, geometry="lorentz").requires_grad_()
    require_backend(backend, x)
    scale = torch.tensor(5.0, requires_grad=True)
    before = [t.detach().clone() for t in (x, y, scale)]
    flashnce.infonce(x, y, geometry="lorentz", scale=scale, backend=backend).backward()
    for t, b in zip((x, y, scale), before):
        assert torch.equal(t.detach(), b)


def manifold_points(n, d, geometry, curvature, dtype, seed):
    """Points given on the manifold: Lorentz space parts (any vector), or Poincare ball points
    with |x| in [0.05, 0.9] / sqrt(c) (hyperbolic radius up to 2 artanh(0.9) ~ 2.9)."""
    v = make_features(n, d, dtype=torch.float64, seed=seed, geometry="lorentz")
    if geometry == "poincare":
        g = torch.Generator().manual_seed(seed + 1)
        r = (0.05 + 0.85 * torch.rand(n, 1, generator=g, dtype=torch.float64)) / curvature**0.5
        v = v / v.norm(dim=-1, keepdim=True) * r
    return v.to(dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", ["poincare", "lorentz"])
@pytest.mark.parametrize("n,m,d", [(1, 1, 3), (7, 7, 3), (64, 64, 64), (300, 257, 64)])
def test_on_manifold_matches_reference(backend, dtype, geometry, n, m, d):
    """on_manifold=True: inputs are points (ball points / hyperboloid space parts), mapped to
    the L3 radius by artanh / asinh in the prologue; the oracle builds the explicit points."""
    _skip_slow(backend, dtype, nmd=(n, m, d))
    x = manifold_points(n, d, geometry, 0.8, dtype, seed=n + d)  # run_case uses c = 0.8
    y = manifold_points(m, d, geometry, 0.8, dtype, seed=n + d + 5)
    require_backend(backend, x)
    if n == m:
        check_case(backend, geometry, x, y, on_manifold=True)
    targets = torch.randint(0, m, (n,), generator=torch.Generator().manual_seed(n))
    check_case(backend, geometry, x, y, on_manifold=True, symmetric=False, targets=targets)
