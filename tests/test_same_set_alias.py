"""The same-operand backward (spec.FLAG_SAME_OPERAND): y is x, dX + dY come back as dX.

Same-set losses walk a batch against itself; a backend that declares
``supports_same_operand`` (cpu, torch) then returns one N x d gradient instead of dX and dY
alive at once. Checked here: the raw op (dX + dY merged, dY empty, the other outputs
bit-identical, several parts and super-blocks), the losses against float64 and against the
path with the flag off, bf16, a float64 gradcheck, and the allocations of a backward.
"""

import pytest
import torch

import flashnce
from flashnce import dispatch, features
from flashnce.core import spec
from flashnce.core.autograd import same_operand
from flashnce.core.numerics import clamp_kappa
from flashnce.core.problem import TileProblem
from flashnce.core.relation import Relation
from flashnce.core.tilespec import TileSpec

from _helpers import make_features, needs_cpu_kernel
from test_memory import FreshAllocations

BACKENDS = [pytest.param("cpu", marks=needs_cpu_kernel), "torch"]


def _labels(n, classes=5, seed=0):
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


LOSSES = {
    "supcon": (lambda e, be: flashnce.supcon(e, _labels(e.shape[0]), backend=be),
               lambda e: flashnce.reference_supcon(e, _labels(e.shape[0]))),
    "ntxent": (lambda e, be: flashnce.ntxent(e[: e.shape[0] // 2], e[e.shape[0] // 2:],
                                             backend=be),
               lambda e: flashnce.reference_ntxent(e[: e.shape[0] // 2], e[e.shape[0] // 2:])),
    "uniformity": (lambda e, be: flashnce.uniformity(e, backend=be),
                   lambda e: flashnce.reference_uniformity(e, geometry="sqeuclidean")),
}


def _value_and_grad(fn, e):
    e = e.detach().clone().requires_grad_()
    loss = fn(e)
    loss.backward()
    return loss.detach(), e.grad


def _flag_off(monkeypatch, backend):
    """Run ``backend`` as if it did not support the same-operand backward (Python add)."""
    b = dispatch.get_backend(backend)
    monkeypatch.setattr(b, "supports_same_operand", False)


def test_detection():
    x = torch.randn(6, 3, requires_grad=True)
    prob = TileProblem(x, x, "cosine", 1.0, 1.0, False)
    assert same_operand(prob.x_op, prob.y_op)
    assert same_operand(x, x)
    # Shared storage is not enough: no gradient path, another leaf, another geometry.
    assert not same_operand(x, x.detach())
    assert not same_operand(x.view_as(x), x.detach().view_as(x))
    assert not same_operand(x[:3], x[3:])
    assert not same_operand(x, torch.randn(6, 3, requires_grad=True))
    other = TileProblem(x, x.detach().clone().requires_grad_(), "cosine", 1.0, 1.0, False)
    assert not same_operand(other.x_op, other.y_op)


@needs_cpu_kernel
@pytest.mark.parametrize("stat, n, k, threads", [
    ("masked_sum", 600, 2048, 2), ("lse", 300, 16, 1), ("lse", 300, 16, 2),
    ("pair_sum", 257, 8, 1), ("pair_sum", 257, 8, 2)])
def test_cpu_op_merges_dy_into_dx(stat, n, k, threads):
    """tile_bwd (and tile_fwd_grad) with the flag: dX + dY as dX (to fp32 rounding: another
    summation order), an empty dY, the other outputs bit-identical; the forward ignores the
    flag. One thread: one part, dY straight into dX. Two: every part's dY buffered; 600 x 2048
    fp32 has two column super-blocks of 4 MiB (512 and 88 columns) over three row blocks."""
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, k, generator=gen) / k**0.5
    alpha = x.norm(dim=1, keepdim=True)
    theta = torch.tensor([2.0, 1.0, 0.0])
    labels = _labels(n)
    rel = Relation.labels(labels, labels, skip_self=True, cols_both=0)
    opts = rel.options("cosine", stat, n)
    same = list(opts)
    same[spec.OPT_FLAGS] |= spec.FLAG_SAME_OPERAND
    args = (x, x, alpha, alpha, theta, list(rel.tensors))
    kappa = clamp_kappa(x.dtype)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fwd = [torch.ops.flashnce.tile_fwd(*args, o, kappa) for o in (opts, same)]
        for a, b in zip(*fwd):
            assert torch.equal(a, b)
        row, col = fwd[0]
        g_row = torch.randn(row.shape, generator=gen)
        g_col = torch.zeros_like(col)
        pairs = [[torch.ops.flashnce.tile_bwd(*args, o, kappa, row, col, g_row, g_col)
                  for o in (opts, same)]]
        if stat == "pair_sum":  # the one pass: (row, col, dx, dy, ...) from the same walk
            pairs += [[torch.ops.flashnce.tile_fwd_grad(*args, o, kappa)[2:]
                       for o in (opts, same)]]
    finally:
        torch.set_num_threads(old)
    for ref, got in pairs:
        assert got[1].shape == (0, k)
        total = ref[0].double() + ref[1].double()
        torch.testing.assert_close(got[0].double(), total, rtol=0,
                                   atol=1e-6 * total.abs().max())
        for a, b in zip(ref[2:], got[2:]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_losses_match_float64_and_the_unmerged_path(monkeypatch, backend, loss):
    fn, ref_fn = LOSSES[loss]
    e = make_features(96, 7, seed=3)
    value, grad = _value_and_grad(lambda t: fn(t, backend), e)
    ref_value, ref_grad = _value_and_grad(ref_fn, e.double())
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)
    _flag_off(monkeypatch, backend)
    value_off, grad_off = _value_and_grad(lambda t: fn(t, backend), e)
    assert torch.equal(value, value_off)  # the forward does not see the flag
    torch.testing.assert_close(grad, grad_off, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_supcon(backend):
    """bf16: the kernel's fp32 dX + dY is rounded to bf16 once (dX converted back)."""
    e = make_features(64, 16, seed=5, dtype=torch.bfloat16)
    value, grad = _value_and_grad(lambda t: LOSSES["supcon"][0](t, backend), e)
    ref_value, ref_grad = _value_and_grad(LOSSES["supcon"][1], e.double())
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=2e-2,
                               atol=2e-2 * ref_grad.abs().max().item())


@needs_cpu_kernel
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_gradcheck_float64_cpu(loss):
    e = make_features(10, 4, seed=7, dtype=torch.float64).requires_grad_()
    fn = LOSSES[loss][0]
    assert torch.autograd.gradcheck(lambda t: fn(t, "cpu"), (e,), eps=1e-6, atol=1e-7)


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_same_set_backward_allocates_one_gradient(monkeypatch, dtype):
    """SupCon forward + backward on cpu: the kernel's dX is the only feature-sized tensor (the
    flag off: dX and dY, both alive until the add)."""
    n, d = 512, 32
    monkeypatch.setattr(features, "_CHUNK_ELEMENTS", n * d // 16)
    e = make_features(n, d, seed=1, dtype=dtype)

    def fresh():
        x = e.clone().requires_grad_()
        with FreshAllocations(min_bytes=n * d * e.element_size() // 4) as mode:
            flashnce.supcon(x, _labels(n), backend="cpu").backward()
        assert x.grad is not None and x.grad.shape == (n, d)
        return [f for f in mode.fresh if len(f[1]) == 2]  # not the labels' O(N) int64 tensors

    assert fresh() == [("flashnce.tile_bwd.default", (n, d))]
    _flag_off(monkeypatch, "cpu")
    assert fresh() == [("flashnce.tile_bwd.default", (n, d))] * 2


@needs_cpu_kernel
def test_compiled_op_with_the_flag_under_torch_compile():
    """One tensor as both operands sets the flag under dynamo too: the fake's empty dY and the
    registered backward's None for y give the eager gradient (the lse over j != i of 2 x_i.x_j)."""
    cpu = dispatch.get_backend("cpu")
    tspec = TileSpec("dot", "lse", Relation.none(skip_self=True), 1e-6)
    a = torch.zeros(40, 0, dtype=torch.float64)
    theta = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)

    def f(x):
        return cpu.tile_stat(x, x, a, a, theta, tspec)[0].sum()

    x = torch.randn(40, 6, dtype=torch.float64, requires_grad=True)
    want, = torch.autograd.grad(torch.logsumexp(
        (2 * x @ x.T).masked_fill(torch.eye(40, dtype=torch.bool), float("-inf")), 1).sum(), x)
    eager, = torch.autograd.grad(f(x), x)
    compiled, = torch.autograd.grad(torch.compile(f, fullgraph=True, backend="aot_eager")(x), x)
    torch.testing.assert_close(eager, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(compiled, eager)
