"""The compiled ``cpu`` backend: what the shared matrices do not cover.

The generated matrices (test_tile_ops.py: the op vs the dense float64 oracle for every kind,
relation and dtype; test_backends.py: the losses vs the textbook oracle) and the op
registration checks (test_op_registration.py: gradcheck, opcheck) cover correctness. Here:
torch.compile(fullgraph=True), bitwise determinism, 1 vs 2 threads, bf16/fp16 inputs against
the materialised loss's own error, the per-tile LSE paths, column super-blocks, and the message
when the extension is missing.
"""

import os
import subprocess
import sys

import pytest
import torch

import flashnce
from flashnce import _extension, dispatch
from flashnce.core.relation import Relation

from _helpers import HYPERBOLIC, assert_close, make_features, needs_cpu_kernel, tile_spec

pytestmark = needs_cpu_kernel

@pytest.mark.parametrize("geometry", ["cosine", "lorentz"])
def test_compile_fullgraph(geometry):
    torch._dynamo.reset()
    x = make_features(33, 16, geometry=geometry, seed=1)
    y = make_features(33, 16, geometry=geometry, seed=2)

    def loss_and_grads(fn, scale):
        xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
        s = torch.tensor(scale, requires_grad=True)
        loss = fn(xx, yy, s)
        return (loss, *torch.autograd.grad(loss, [xx, yy, s]))

    def f(a, b, s):
        return flashnce.infonce(a, b, geometry=geometry, scale=s, backend="cpu")

    # Eager first: dispatch imports backend modules on first use, which dynamo cannot trace.
    want = loss_and_grads(f, 3.0)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for got, want in zip(loss_and_grads(compiled, 3.0), want):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _run_all(geometry, x, y, excl=False):
    xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
    s = torch.tensor(4.0, requires_grad=True)
    c = torch.tensor(0.9, requires_grad=True)
    row, col = flashnce.pairwise_lse(xx, yy, geometry=geometry, scale=s, curvature=c,
                                     exclude_diagonal=excl, backend="cpu")
    w = torch.linspace(0.1, 1.0, row.numel())
    loss = (row * w).sum() + col.square().mean()
    grads = torch.autograd.grad(loss, [xx, yy, s, c], allow_unused=True)
    return [row, col, *(g if g is not None else torch.zeros(()) for g in grads)]


@pytest.mark.parametrize("geometry", ["cosine", "euclidean", "poincare"])
def test_deterministic_bitwise(geometry):
    # 700 rows: three row blocks split over the threads; the same run twice is bit-identical.
    x = make_features(700, 24, geometry=geometry, seed=3)
    y = make_features(650, 24, geometry=geometry, seed=4)
    first, second = _run_all(geometry, x, y, True), _run_all(geometry, x, y, True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("geometry", ["dot", "lorentz"])
def test_one_vs_two_threads(geometry):
    x = make_features(600, 32, geometry=geometry, seed=5)
    y = make_features(530, 32, geometry=geometry, seed=6)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run_all(geometry, x, y)
        torch.set_num_threads(2)
        two = _run_all(geometry, x, y)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert_close(a.reshape(-1), b.reshape(-1), 1e-5, f"{geometry} 1 vs 2 threads")


def _materialised_infonce(x, y, geometry, scale):
    """The naive loss in the input dtype (what a user would write): its error is the bar."""
    logits = flashnce.reference_logits(x, y, geometry=geometry, scale=scale)
    target = torch.arange(x.shape[0])
    ce = torch.nn.functional.cross_entropy
    return 0.5 * (ce(logits, target) + ce(logits.T, target))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("geometry", ["cosine", "lorentz"])
def test_low_precision_inputs(geometry, dtype):
    x = make_features(300, 64, geometry=geometry, seed=7, dtype=dtype)
    y = make_features(300, 64, geometry=geometry, seed=8, dtype=dtype)
    xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
    loss = flashnce.infonce(xx, yy, geometry=geometry, scale=10.0, backend="cpu")
    assert loss.dtype == torch.float32
    gx, gy = torch.autograd.grad(loss, [xx, yy])
    assert gx.dtype == dtype and gy.dtype == dtype
    # Ground truth: float64 on the same (rounded) inputs; bar: the materialised loss in dtype.
    x64, y64 = x.double().requires_grad_(), y.double().requires_grad_()
    gt = flashnce.reference_infonce(x64, y64, geometry=geometry, scale=10.0)
    gt_gx, gt_gy = torch.autograd.grad(gt, [x64, y64])
    xl, yl = x.clone().requires_grad_(), y.clone().requires_grad_()
    naive = _materialised_infonce(xl, yl, geometry, 10.0)
    nx, ny = torch.autograd.grad(naive, [xl, yl])
    naive_err = abs(naive.double().item() - gt.item())
    assert abs(loss.double().item() - gt.item()) <= 2 * naive_err + 1e-5 * abs(gt.item())
    for ours, ref, truth in ((gx, nx, gt_gx), (gy, ny, gt_gy)):
        bar = (ref.double() - truth).abs().max().item()
        err = (ours.double() - truth).abs().max().item()
        assert err <= 2 * bar + 1e-6 * truth.abs().max().item(), (err, bar)


@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("geometry", ["cosine", "euclidean", "lorentz"])
def test_lse_paths_fp32(geometry, scale):
    # scale 100 spreads a tile's logits over ~200 nats: the per-row/per-column exp path.
    x = make_features(520, 16, geometry=geometry, seed=9)
    y = make_features(300, 16, geometry=geometry, seed=10)
    row, col = flashnce.pairwise_lse(x, y, geometry=geometry, scale=scale, backend="cpu")
    r64, c64 = flashnce.reference_pairwise_lse(x.double(), y.double(), geometry=geometry,
                                               scale=scale)
    assert_close(row, r64, 1e-5, "row_lse")
    assert_close(col, c64, 1e-5, "col_lse")


def test_fully_masked_column():
    # One row and exclude_diagonal: column 0 has no terms, col_lse[0] = -inf, no NaN anywhere.
    x = make_features(1, 8, seed=11, dtype=torch.float64).requires_grad_()
    y = make_features(3, 8, seed=12, dtype=torch.float64).requires_grad_()
    row, col = flashnce.pairwise_lse(x, y, exclude_diagonal=True, backend="cpu")
    r_t, c_t = flashnce.pairwise_lse(x, y, exclude_diagonal=True, backend="torch")
    assert col[0] == float("-inf") and torch.allclose(col[1:], c_t[1:])
    assert torch.allclose(row, r_t)
    gx, gy = torch.autograd.grad(row.sum() + col[1:].sum(), [x, y])
    assert torch.isfinite(gx).all() and torch.isfinite(gy).all()


def test_auto_picks_cpu_for_cpu_tensors():
    x = make_features(4, 8, seed=13)
    tspec = tile_spec("dot")
    assert dispatch.get_backend("cpu").not_supported_reasons(x, x, tspec) == []
    # triton (interpreter) and cuda never take CPU tensors under auto: cpu is the first.
    assert dispatch.select_backend("auto", x, x, tspec).name == "cpu"


def test_extension_missing_message(tmp_path):
    # Hide flashnce._C: import still works, the cpu backend refuses saying how to build it,
    # and backend="auto" falls back to the torch backend, warning once that it is slow.
    code = (
        "import sys; sys.modules['flashnce._C'] = None\n"
        "import torch, flashnce\n"
        "from flashnce import dispatch\n"
        "from flashnce.backends.base import TileSpec\n"
        "from flashnce.core.relation import Relation\n"
        "x = torch.randn(5, 4)\n"
        "r = dispatch.get_backend('cpu').not_supported_reasons(\n"
        "    x, x, TileSpec('dot', 'lse', Relation.none(), 1e-6))\n"
        "assert len(r) == 1 and 'pip install --no-build-isolation' in r[0], r\n"
        "assert 'flashnce._C' in r[0], r\n"
        "try:\n"
        "    flashnce.infonce(x, x, backend='cpu')\n"
        "except ValueError as e:\n"
        "    assert 'pip install --no-build-isolation' in str(e)\n"
        "else:\n"
        "    raise AssertionError('cpu backend ran without its extension')\n"
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    flashnce.infonce(x, x, backend='auto'); flashnce.infonce(x, x, backend='auto')\n"
        "slow = [m for m in w if 'pure-PyTorch' in str(m.message)]\n"
        "assert len(slow) == 1 and 'pip install --no-build-isolation' in str(slow[0].message)\n"
        "assert dispatch.select_backend('auto', x, x, TileSpec('dot', 'lse', Relation.none(),\n"
        "                               1e-6)).name == 'torch'\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('error')\n"
        "    print(float(flashnce.infonce(x, x, backend='torch')))\n"
    )
    env = dict(os.environ, FLASHNCE_BACKEND="")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr


def test_cpu_variant_matches_capability():
    cap = torch.backends.cpu.get_cpu_capability()
    variant = _extension.cpu_variant()
    assert variant == ("_C_cpu_avx512" if cap.startswith("AVX512") or cap == "AMX"
                       else "_C_cpu_avx2")


@pytest.mark.parametrize("geometry", sorted(HYPERBOLIC))
def test_hyperbolic_clamp_zero_gradient(geometry):
    # Coincident pairs sit on the clamp: zero gradient there (strict mask), finite everywhere.
    x = make_features(20, 8, geometry=geometry, seed=14)
    xx, yy = x.clone().requires_grad_(), x.clone().requires_grad_()
    row, col = flashnce.pairwise_lse(xx, yy, geometry=geometry, scale=2.0, backend="cpu")
    gx, gy = torch.autograd.grad(row.sum() + col.sum(), [xx, yy])
    xt, yt = x.clone().requires_grad_(), x.clone().requires_grad_()
    rt, ct = flashnce.pairwise_lse(xt, yt, geometry=geometry, scale=2.0, backend="torch")
    tx, ty = torch.autograd.grad(rt.sum() + ct.sum(), [xt, yt])
    assert_close(gx, tx, 1e-4, "dx")
    assert_close(gy, ty, 1e-4, "dy")


@pytest.mark.parametrize("excl", [False, True])
def test_cosine_kind_is_normalised_dot(excl):
    """The cosine kind on raw operands + norms == the dot kind on normalised copies (float64),
    forward and every gradient (through the norms, chained by autograd)."""
    g = torch.Generator().manual_seed(21)
    x = torch.randn(37, 9, generator=g, dtype=torch.float64).requires_grad_()
    y = torch.randn(41, 9, generator=g, dtype=torch.float64).requires_grad_()
    s, k = torch.tensor(3.1, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    w_r, w_c = torch.rand(37, generator=g, dtype=torch.float64), torch.rand(41, generator=g,
                                                                            dtype=torch.float64)
    theta = torch.stack([s, k, torch.zeros_like(s)])
    rel = Relation.none(skip_self=excl)

    def op(kind, a, b, sa, sb):
        opts = rel.options(kind, "lse", b.shape[0])
        return torch.ops.flashnce.tile_fwd(a, b, sa, sb, theta, [], opts, 1e-14)

    nx, ny = x.norm(dim=-1, keepdim=True), y.norm(dim=-1, keepdim=True)
    ours = op("cosine", x, y, nx, ny)
    ref = op("dot", x / nx, y / ny, x.new_zeros(37, 0), y.new_zeros(41, 0))
    grads = [torch.autograd.grad((r * w_r).sum() + (c * w_c).sum(), [x, y], retain_graph=True)
             for r, c in (ours, ref)]
    for a, b in zip([*ours, *grads[0]], [*ref, *grads[1]]):
        assert_close(a.detach(), b.detach(), 1e-12, "cosine kind vs normalised dot")


def test_backward_column_super_blocks():
    """Backward with many column super-blocks (tiny FLASHNCE_CPU_SUPER_BYTES and tiles, read
    at load, hence a subprocess), 1 and 2 threads: matches the torch backend in float64 and
    the 2-thread run is bitwise reproducible."""
    code = (
        "import sys, torch, flashnce; sys.path.insert(0, %r)\n"
        "from _helpers import make_features, assert_close\n"
        "for geometry in ('cosine', 'lorentz', 'euclidean'):\n"
        "    x = make_features(300, 13, geometry=geometry, seed=1, dtype=torch.float64)\n"
        "    y = make_features(270, 13, geometry=geometry, seed=2, dtype=torch.float64)\n"
        "    outs = []\n"
        "    for backend, threads in (('torch', 2), ('cpu', 1), ('cpu', 2), ('cpu', 2)):\n"
        "        torch.set_num_threads(threads)\n"
        "        xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()\n"
        "        s = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)\n"
        "        r, c = flashnce.pairwise_lse(xx, yy, geometry=geometry, scale=s,\n"
        "                                     exclude_diagonal=True, backend=backend)\n"
        "        w = torch.linspace(0.1, 1.0, 300, dtype=torch.float64)\n"
        "        loss = (r * w).sum() + c.square().mean()\n"
        "        outs.append([r, c, *torch.autograd.grad(loss, [xx, yy, s])])\n"
        "    for got in outs[1:]:\n"
        "        for a, b in zip(got, outs[0]):\n"
        "            assert_close(a.detach().reshape(-1), b.detach().reshape(-1), 1e-10, geometry)\n"
        "    assert all(torch.equal(a, b) for a, b in zip(outs[2], outs[3])), geometry\n"
        "print('ok')\n" % os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, FLASHNCE_CPU_SUPER_BYTES="4096", FLASHNCE_CPU_BLOCK_N="32",
               FLASHNCE_CPU_BLOCK_M="48")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
