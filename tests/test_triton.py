"""Triton kernels on CPU tensors through the Triton interpreter, against the float64 reference.

every geometry x {float32, bfloat16} x N in {1, 17, 64, 130} x d in {3, 32, 48} (symmetric),
N != M one-way (both directions), the diagonal mask, learnable scale and curvature: loss and
every gradient. float32 uses the fixed bounds of issue 2; bfloat16 is held to twice the error
of the materialised reference run in bfloat16 (STYLE.md practice 6), plus bf16's unit roundoff.

``TRITON_INTERPRET=1`` is set while the kernels are imported (so ``@triton.jit`` builds
interpreted kernels) and during each test here, and restored otherwise: other test modules must
not see ``backend="auto"`` pick the interpreter for their CPU tensors.
"""

import os

import pytest
import torch

import flashnce
from flashnce import dispatch
from flashnce.backends.base import TileSpec

from _helpers import (FP32_GRAD_RTOL, FP32_LOSS_RTOL, GEOMETRY_NAMES, assert_close,
                      assert_matches_oracle, make_features, oracle, rel_maxnorm_error)

_prev_interpret = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    import triton  # noqa: F401

    from flashnce.triton_kernels import ops as triton_ops
    _SKIP = None
except ImportError as exc:
    _SKIP = f"triton is not importable ({exc}); install flashnce[triton] to run these tests"
finally:
    if _prev_interpret is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _prev_interpret

if _SKIP:
    print(_SKIP)
    pytest.skip(_SKIP, allow_module_level=True)

DTYPES = (torch.float32, torch.bfloat16)
# Slack on top of 2x the reference error: two bf16 roundings (2^-8 each, relative) that the
# materialised bf16 loss can happen to avoid, e.g. when its terms cancel exactly at N = 1:
# dX leaves the kernel rounded to bf16 and is then summed with the positive-logit gradient.
BF16_UNIT = 2.0**-7


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _bf16_reference(x, y, scale, curv, **kwargs):
    """The materialised loss run entirely in bfloat16: its error sets the bf16 tolerance."""
    xb = x.detach().clone().requires_grad_()
    yb = y.detach().clone().requires_grad_()
    sb = scale.detach().to(torch.bfloat16).requires_grad_()
    cb = curv.detach().to(torch.bfloat16).requires_grad_()
    loss = flashnce.reference_infonce(xb, yb, scale=sb, curvature=cb, **kwargs)
    grads = torch.autograd.grad(loss, [xb, yb, sb, cb], allow_unused=True)
    return loss, [torch.zeros_like(t) if g is None else g for t, g in zip((xb, yb, sb, cb), grads)]


def check_case(geometry, x, y, **kwargs):
    """infonce through backend='triton' vs the float64 oracle: loss, dx, dy, dscale, dcurv."""
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    scale = torch.tensor(2.5, dtype=torch.float32, requires_grad=True)
    curv = torch.tensor(0.8, dtype=torch.float32, requires_grad=True)
    loss = flashnce.infonce(xr, yr, geometry=geometry, scale=scale, curvature=curv,
                            backend="triton", **kwargs)
    assert loss.dtype == torch.float32
    grads = torch.autograd.grad(loss, [xr, yr, scale, curv], allow_unused=True)
    ref_loss, ref_grads, floors = oracle(x, y, params=(scale.detach(), curv.detach()),
                                         geometry=geometry, **kwargs)
    if x.dtype == torch.bfloat16:
        b_loss, b_grads = _bf16_reference(x, y, scale, curv, geometry=geometry, **kwargs)
        tols = [2 * rel_maxnorm_error(b.float(), r, f) + BF16_UNIT
                for b, r, f in zip([b_loss] + b_grads, [ref_loss] + list(ref_grads), floors)]
    else:
        tols = [FP32_LOSS_RTOL] + [FP32_GRAD_RTOL] * 4
    assert_matches_oracle(geometry, loss, grads, ref_loss, ref_grads, floors, tols,
                          grad_dtype=x.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("n", [1, 17, 64, 130])
@pytest.mark.parametrize("d", [3, 32, 48])
def test_symmetric_matches_reference(dtype, geometry, n, d):
    x = make_features(n, d, dtype=dtype, seed=n + d, geometry=geometry)
    y = make_features(n, d, dtype=dtype, seed=n + d + 1000, geometry=geometry, role="y")
    check_case(geometry, x, y)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("n,m,d", [(17, 130, 48), (130, 17, 3)])
def test_one_way_matches_reference(dtype, geometry, n, m, d):
    x = make_features(n, d, dtype=dtype, seed=n, geometry=geometry)
    y = make_features(m, d, dtype=dtype, seed=m + 7, geometry=geometry, role="y")
    targets = None if n <= m else torch.arange(n) % m
    check_case(geometry, x, y, symmetric=False, targets=targets)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("n,m,d", [(2, 2, 3), (70, 66, 32), (66, 130, 48)])
def test_pairwise_lse_exclude_diagonal(dtype, geometry, n, m, d):
    """Same-set mask: row and column LSE and their gradients (random upstream weights)."""
    x = make_features(n, d, dtype=dtype, seed=n, geometry=geometry)
    y = make_features(m, d, dtype=dtype, seed=m + 50, geometry=geometry)
    kw = dict(geometry=geometry, scale=1.7, curvature=1.3, exclude_diagonal=True)
    w_row = torch.linspace(0.5, 1.5, n, dtype=torch.float64)
    w_col = torch.linspace(-1.0, 1.0, m, dtype=torch.float64)

    def run(xx, yy, fn, **extra):
        xr, yr = xx.clone().requires_grad_(), yy.clone().requires_grad_()
        row, col = fn(xr, yr, **kw, **extra)
        out = (row.double() * w_row).sum() + (col.double() * w_col).sum()
        return (row, col, *torch.autograd.grad(out, [xr, yr]))

    ours = run(x, y, flashnce.pairwise_lse, backend="triton")
    ref = run(x.double(), y.double(), flashnce.reference_pairwise_lse)
    if dtype == torch.bfloat16:
        low = run(x, y, flashnce.reference_pairwise_lse)
        tols = [2 * rel_maxnorm_error(lo.double(), r) + BF16_UNIT for lo, r in zip(low, ref)]
    else:
        tols = [FP32_LOSS_RTOL, FP32_LOSS_RTOL, FP32_GRAD_RTOL, FP32_GRAD_RTOL]
    for name, a, r, tol in zip(("row_lse", "col_lse", "dx", "dy"), ours, ref, tols):
        assert_close(a.float(), r, tol, f"{geometry} {name}")


def test_compile_fullgraph():
    """The registered op, forward and backward, under torch.compile(fullgraph=True).

    Under the interpreter the op is an opaque custom_op (see triton_kernels/ops.py), so this
    checks schema, fake functions and register_autograd, not Inductor's triton_op lowering.
    """
    x = make_features(33, 20, geometry="lorentz")
    y = make_features(33, 20, geometry="lorentz", seed=1)
    geo = flashnce.get_geometry("lorentz")
    c = torch.tensor(0.8)
    px, py = geo.prepare(x, c, False), geo.prepare(y, c, False)

    def f(a, b, s):
        row, col = triton_ops.pairwise_lse(a, b, px.scalars, py.scalars, s, c.rsqrt(),
                                           "hyperbolic")
        return row.sum() + 0.5 * col.sum()

    results = []
    for fn in (f, torch.compile(f, fullgraph=True, backend="aot_eager")):
        a, b = px.operand.clone().requires_grad_(), py.operand.clone().requires_grad_()
        s = torch.tensor(1.5, requires_grad=True)
        out = fn(a, b, s)
        results.append((out, *torch.autograd.grad(out, [a, b, s])))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)


def test_opcheck():
    """torch.library.opcheck on the forward op (schema, fake, autograd registration)."""
    x = make_features(9, 5, geometry="euclidean")
    y = make_features(6, 5, geometry="euclidean", seed=3)
    a = x.square().sum(-1, keepdim=True)
    b = y.square().sum(-1, keepdim=True)
    args = (x.requires_grad_(), y, a, b, torch.tensor(1.3), torch.tensor(1.0), "euclidean",
            False, 1e-6)
    torch.library.opcheck(torch.ops.flashnce.triton_lse_fwd.default, args,
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


def test_dispatch_reasons(monkeypatch):
    backend = dispatch.get_backend("triton")
    spec = TileSpec("dot", False, 1e-6)
    x = torch.randn(4, 3)
    assert backend.not_supported_reasons(x, x, spec) == []
    reasons = backend.not_supported_reasons(x.double(), x.double(), spec)
    assert any("float64" in r for r in reasons)
    monkeypatch.delenv("TRITON_INTERPRET")
    reasons = backend.not_supported_reasons(x, x, spec)
    assert any("TRITON_INTERPRET=1" in r for r in reasons)
    assert dispatch.select_backend("auto", x, x, spec).name != "triton"
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        flashnce.infonce(x, x, backend="triton")


def test_autotune_configs(monkeypatch):
    """Every autotune candidate gives the default config's results; keys are bucketed.

    The autotuner itself benchmarks on a GPU driver, so under the interpreter
    FLASHNCE_TRITON_AUTOTUNE=1 is ignored; the candidates are launched one by one instead.
    """
    from flashnce.triton_kernels import launch

    monkeypatch.setenv(launch.AUTOTUNE_ENV, "1")
    assert not launch.autotune_enabled()
    assert launch._bucket(100) == launch._bucket(128) == 128
    assert {"KEY_NA", "KEY_NB"} <= set(launch._autotuned_kernel("fwd").keys)
    geo = flashnce.get_geometry("lorentz")
    c = torch.tensor(1.0)
    px = geo.prepare(make_features(70, 20, geometry="lorentz"), c, False)
    py = geo.prepare(make_features(45, 20, geometry="lorentz", seed=4), c, False)
    args = (px.operand, py.operand, px.scalars, py.scalars, torch.tensor(2.0), c.rsqrt(),
            "hyperbolic", True, 1e-6)
    g_row, g_col = torch.linspace(-1, 1, 70), torch.linspace(0.5, 1, 45)
    fwd = launch.lse_forward(*args)
    bwd = launch.lse_backward(*args, *fwd, g_row, g_col)
    for cfg in launch.AUTOTUNE_FWD_CONFIGS:
        kw = cfg.kwargs
        out = launch.lse_forward(*args, config=(kw["BLOCK_A"], kw["BLOCK_B"], kw["BLOCK_K"],
                                                cfg.num_warps, cfg.num_stages))
        for a, b in zip(out, fwd):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    bwd_configs = [(c.kwargs["BLOCK_A"], c.kwargs["BLOCK_B"], c.kwargs["BLOCK_K"],
                    c.kwargs["BLOCK_D"], c.num_warps, c.num_stages)
                   for c in launch.AUTOTUNE_BWD_CONFIGS]
    # BLOCK_D = 16 < K = 20: dX split over two column slices (grid axis 1).
    for cfg in bwd_configs + [(32, 32, 16, 16, 4, 1)]:
        out = launch.lse_backward(*args, *fwd, g_row, g_col, config=cfg)
        for a, b in zip(out, bwd):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_backward_deterministic():
    x = make_features(130, 48, geometry="poincare")
    y = make_features(130, 48, geometry="poincare", seed=5)
    outs = []
    for _ in range(2):
        xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
        loss = flashnce.infonce(xr, yr, geometry="poincare", backend="triton")
        outs.append((loss, *torch.autograd.grad(loss, [xr, yr])))
    for a, b in zip(*outs):
        assert torch.equal(a, b)
