"""core.block_walk: several walks over one operand set in one node, the backward cut into
chunk pairs. Against the same walks run one by one through each backend's own autograd
(values and gradients in float64), with chunks small enough that every walk is cut in both
directions (odd sizes, N != M, a last chunk shorter than the rest); then NT-Xent through it
against the float64 oracle, and the relations it refuses."""

import pytest
import torch

import flashnce
from flashnce import dispatch
from flashnce.core import block_walk as bw
from flashnce.core.problem import TileProblem
from flashnce.core.relation import Relation

from _helpers import GEOMETRY_NAMES, assert_close, make_features, tile_spec

CPU_BACKENDS = tuple(name for name, b in dispatch.BACKENDS.items()
                     if b.devices is None or "cpu" in b.devices)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 4 rows: an 11 x 9 walk becomes 3 x 3 chunk pairs, the last ones short."""
    monkeypatch.setattr(bw, "chunk_rows", lambda d, device: 4)


def _require(backend, x):
    reasons = dispatch.get_backend(backend).not_supported_reasons(x, x, tile_spec())
    if reasons:
        pytest.skip(f"backend {backend!r} refuses: {'; '.join(reasons)}")
    if backend == "triton":
        pytest.skip("triton: the interpreter runs a chunk pair per call, too slow for this "
                    "matrix (tests/test_triton.py covers its walks)")


WALKS = (  # (row operand, column operand, relation, row slice, column slice)
    (0, 1, Relation.diagonal(skip_positives=True), None, None),     # row + column statistics
    (0, 0, Relation.none(skip_self=True, cols_both=0), None, None),  # self block, rows only
    (1, 1, Relation.none(skip_self=True, cols_both=0), None, None),
    (1, 0, Relation.diagonal(diag_offset=-2), None, None),  # an offset diagonal, positives in
    (0, 1, Relation.none(), None, None),
    (0, 0, Relation.none(skip_self=True, diag_offset=1, cols_both=0), (2, 9), (1, 10)),  # slices
    (1, 0, Relation.diagonal(), (3, 4), (0, 11)),                    # a one-row slice
)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
def test_chunked_walks_equal_separate_walks(small_chunks, backend, geometry):
    x = make_features(11, 5, dtype=torch.float64, geometry=geometry, seed=3)
    y = make_features(9, 5, dtype=torch.float64, geometry=geometry, seed=4, role="y")
    _require(backend, x)
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(0)

    def run(chunked):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        prob = TileProblem(a, b, geometry, scale, 1.0, False)
        ops, sc = (prob.x_op, prob.y_op), (prob.x_scalars, prob.y_scalars)
        impl = dispatch.get_backend(backend)
        walks = [bw.Walk(r, c, prob.tspec(rel), impl, rows=rs, cols=cs)
                 for r, c, rel, rs, cs in WALKS]
        if chunked:
            stats = bw.block_walk(walks, ops, sc, prob.theta)
        else:
            stats = []
            for w in walks:
                (r0, r1), (c0, c1) = w.row_range(ops), w.col_range(ops)
                stats.append(impl.tile_stat(ops[w.row][r0:r1], ops[w.col][c0:c1],
                                            sc[w.row][r0:r1], sc[w.col][c0:c1], prob.theta,
                                            w.tspec))
        flat = [s for pair in stats for s in pair]
        return flat, (a, b)

    got, got_in = run(True)
    want, want_in = run(False)
    weights = [torch.rand(t.shape, dtype=torch.float64, generator=g) for t in want]
    for k, (s, t) in enumerate(zip(got, want)):
        assert_close(s.detach(), t.detach(), 1e-12, f"statistic {k}")

    def loss(stats):  # finite terms only (a skipped-out row is -inf)
        return sum((w * torch.where(torch.isfinite(s), s, 0.0)).sum()
                   for w, s in zip(weights, stats))

    dg = torch.autograd.grad(loss(got), [*got_in, scale])
    dw = torch.autograd.grad(loss(want), [*want_in, scale])
    for k, (a, b) in enumerate(zip(dg, dw)):
        assert_close(a, b, 1e-10, f"gradient {k}")


@pytest.mark.parametrize("backend", ("cpu", "torch"))
@pytest.mark.parametrize("geometry", ("cosine", "sqeuclidean", "lorentz"))
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16))
@pytest.mark.parametrize("denominator", ("all", "negatives"))
def test_ntxent_with_chunked_backward_matches_oracle(small_chunks, backend, geometry, dtype,
                                                     denominator):
    n, d = 13, 6
    z1 = make_features(n, d, dtype=dtype, geometry=geometry, seed=5)
    z2 = make_features(n, d, dtype=dtype, geometry=geometry, seed=6, role="y")
    reasons = dispatch.get_backend(backend).not_supported_reasons(z1, z1, tile_spec())
    if reasons:
        pytest.skip(f"backend {backend!r} refuses: {'; '.join(reasons)}")
    z1, z2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    got = flashnce.ntxent(z1, z2, geometry=geometry, denominator=denominator, backend=backend,
                          reduction="sum")
    a, b = (t.detach().double().requires_grad_() for t in (z1, z2))
    want = flashnce.reference_ntxent(a, b, geometry=geometry, denominator=denominator,
                                     reduction="sum")
    rtol = {torch.float64: (1e-10, 1e-9), torch.float32: (1e-5, 1e-4),
            torch.bfloat16: (2e-2, 6e-2)}[dtype]
    assert_close(got.detach().double(), want.detach(), rtol[0], "loss")
    for k, (gg, gw) in enumerate(zip(torch.autograd.grad(got, [z1, z2]),
                                     torch.autograd.grad(want, [a, b]))):
        assert gg.dtype == dtype
        assert_close(gg.double(), gw, rtol[1], f"grad {k}")


def test_refuses_relations_it_cannot_cut():
    x = torch.randn(5, 3)
    t = torch.arange(5)
    for rel in (Relation.targets(t), Relation.labels(t, t),
                Relation.none(cols_both=2)):
        walk = bw.Walk(0, 0, tile_spec(relation=rel), dispatch.get_backend("torch"))
        with pytest.raises(ValueError, match="cannot be cut into chunks"):
            bw.block_walk([walk], (x,), (x.new_zeros(5, 0),), torch.ones(3))


def test_chunk_rows_bounds_the_transients():
    # CPU: a chunk's fp32 dX is at most 2 MiB once rows exceed the 256-row floor.
    assert bw.chunk_rows(512, torch.device("cpu")) * 512 * 4 <= 2 << 20
    assert bw.chunk_rows(1 << 20, torch.device("cpu")) == 256
    assert bw.chunk_rows(512, torch.device("cuda")) > bw.chunk_rows(512, torch.device("cpu"))


@pytest.mark.parametrize("geometry", ("cosine", "lorentz"))
def test_ntxent_backward_allocates_one_gradient_per_view(monkeypatch, geometry):
    """NT-Xent forward + backward on the CPU kernel: the only feature-sized allocations are the
    two gradients block_walk accumulates into (one per view); each chunk pair's dX / dY and the
    row-dot temporaries stay below a quarter of a view. This is what keeps NT-Xent at
    N = 32768, d = 512 within 16 MiB of its inputs and gradients (same_set_cpu_memory_amd)."""
    from flashnce import features
    from test_memory import FreshAllocations

    n, d = 512, 32
    reasons = dispatch.get_backend("cpu").not_supported_reasons(
        torch.empty(1, 1), torch.empty(1, 1), tile_spec())
    if reasons:
        pytest.skip(f"cpu backend unavailable: {'; '.join(reasons)}")
    monkeypatch.setattr(bw, "chunk_rows", lambda d, device: n // 8)
    monkeypatch.setattr(features, "_CHUNK_ELEMENTS", n * d // 16)
    z1 = make_features(n, d, seed=1, geometry=geometry).requires_grad_()
    z2 = make_features(n, d, seed=2, geometry=geometry, role="y").requires_grad_()
    with FreshAllocations(min_bytes=n * d * 4 // 4) as mode:
        loss = flashnce.ntxent(z1, z2, geometry=geometry, backend="cpu")
        loss.backward()
    assert torch.isfinite(loss) and z1.grad is not None and z2.grad is not None
    assert [shape for _, shape in mode.fresh] == [(n, d)] * 2, mode.fresh
