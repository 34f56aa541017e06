"""The compiled CPU ops ``flashnce::tile_fwd`` / ``tile_bwd`` / ``tile_fwd_grad``: what is
particular to the CPU walk.

The generated matrix (test_tile_ops.py) compares every backend with the float64 oracle over
kinds x relation cases x dtypes x shapes. Here, called directly (no autograd) against
``flashnce.backends.dense.dense_tile_stat``: float64 shapes that cross the 256 x 512 tile
borders and the per-thread row split with row-only columns, degenerate shapes (1 x 1, 1 x 700,
257 x 513, ...), a logit range wide enough to leave the shared-max fast path, everything
skipped, empty sides, determinism, fresh output tensors, and the op's argument checks. For
``pair_sum``: every relation case of tests/_tile_cases.py and the positive-carrying cases here
x every kind, odd / tile-spanning shapes, fp32 / bf16 / fp16 inputs, a wide logit range,
exact zeros for skipped pairs and empty sides, and ``tile_fwd_grad`` against both the two-pass
ops (g_row = 1, g_col = 0) and the oracle; lse refused by it; determinism and 1 vs 2 threads.
For ``count`` (ranks, cpu/walk_count.h): exact ranks across tiles and thread parts with
duplicated rows in other tiles and row-only columns, every kind x the positive-carrying
relations, 1 vs 2 threads bitwise, empty sides, and its backward / one-pass refusals.

The oracle gets the per-row scalars alpha / beta as leaves, so its d_alpha is the op's d_alpha
(the op never differentiates the prologue q = |x|^2 -> alpha; flashnce.features does).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from flashnce import _extension
from flashnce.backends.dense import dense_tile_stat
from flashnce.core import spec
from flashnce.core.relation import Relation
from flashnce.geometry import GEOMETRIES

from _tile_cases import RELATION_CASES, TOL, make_problem

_extension.load()
pytestmark = pytest.mark.skipif(
    not hasattr(torch.ops.flashnce, "tile_fwd"),
    reason=f"compiled tile ops unavailable: {_extension.why_unavailable()}")

# One geometry per epilogue kind (lorentz for the hyperbolic kind).
KIND_GEOMETRY = {"dot": "dot", "sqeuclidean": "sqeuclidean", "euclidean": "euclidean",
                 "hyperbolic": "lorentz", "cosine": "cosine"}
SCALE = {"dot": 3.0, "sqeuclidean": 2.0, "euclidean": 3.0, "hyperbolic": 1.5, "cosine": 8.0}
BIAS = -0.25
CURVATURE = 0.7


def kappa_for(dtype):
    return 1e-14 if dtype == torch.float64 else 1e-6


def make_inputs(kind, n, m, d, dtype, seed):
    """x, y in ``dtype``; alpha, beta, theta in the compute dtype from the rounded operands."""
    g = torch.Generator().manual_seed(seed)
    cd = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64)
    if kind in ("dot", "sqeuclidean", "euclidean", "hyperbolic"):
        x, y = x / math.sqrt(d), y / math.sqrt(d)
    x, y = x.to(dtype), y.to(dtype)
    geo = GEOMETRIES[KIND_GEOMETRY[kind]]
    c = torch.tensor(CURVATURE, dtype=cd)
    with torch.no_grad():
        alpha = geo.row_scalars(x.to(cd).pow(2).sum(1), c, False).to(cd).contiguous()
        beta = geo.row_scalars(y.to(cd).pow(2).sum(1), c, False).to(cd).contiguous()
    theta = torch.tensor([SCALE[kind], 1.0 / math.sqrt(CURVATURE), BIAS], dtype=cd)
    return x, y, alpha, beta, theta


# ---- relation cases: name -> builder(n, m, generator) -> Relation (cols_both unset) ---------
def _csr_from_mask(mask, roles, m, **kw):
    rows, cols = mask.nonzero(as_tuple=True)  # row-major: columns increasing within a row
    indptr = torch.zeros(mask.shape[0] + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(mask.sum(1), 0)
    return Relation.csr(indptr, cols.contiguous(), roles[rows, cols].contiguous(), m, **kw)


def _csr(n, m, g, full_skip=False, **kw):
    mask = torch.rand(n, m, generator=g) < 0.15
    roles = torch.randint(0, 2, (n, m), generator=g)
    if full_skip:  # row 0 and column 1 entirely skipped
        mask[0, :] = True
        roles[0, :] = spec.ROLE_SKIP
        mask[:, min(1, m - 1)] = True
        roles[:, min(1, m - 1)] = spec.ROLE_SKIP
    return _csr_from_mask(mask, roles, m, **kw)


def _labels(n, m, g, **kw):
    k = 5
    return Relation.labels(torch.randint(0, k, (n,), generator=g),
                           torch.randint(0, k, (m,), generator=g), **kw)


def _targets(n, m, g, **kw):
    return Relation.targets(torch.randint(0, m, (n,), generator=g), **kw)


CASES = {
    "none": lambda n, m, g: Relation.none(),
    "self0": lambda n, m, g: Relation.none(skip_self=True),
    "self+3": lambda n, m, g: Relation.none(skip_self=True, diag_offset=3),
    "self-2": lambda n, m, g: Relation.none(skip_self=True, diag_offset=-2),
    "self_far": lambda n, m, g: Relation.none(skip_self=True, diag_offset=-(2**62)),
    "diagonal": lambda n, m, g: Relation.diagonal(),
    "diagonal_skip_pos+3": lambda n, m, g: Relation.diagonal(diag_offset=3, skip_positives=True),
    "diagonal_pos_and_self": lambda n, m, g: Relation.diagonal(
        diag_offset=-2, skip_positives=True, skip_self=True),
    "targets": lambda n, m, g: _targets(n, m, g),
    "targets_skip_pos": lambda n, m, g: _targets(n, m, g, skip_positives=True),
    "targets_skip_pos_self+3": lambda n, m, g: _targets(n, m, g, skip_positives=True,
                                                         skip_self=True, diag_offset=3),
    "labels": lambda n, m, g: _labels(n, m, g),
    "labels_skip_pos": lambda n, m, g: _labels(n, m, g, skip_positives=True),
    "labels_skip_pos_self0": lambda n, m, g: _labels(n, m, g, skip_positives=True,
                                                      skip_self=True),
    "csr": lambda n, m, g: _csr(n, m, g),
    "csr_skip_pos_self-2": lambda n, m, g: _csr(n, m, g, skip_positives=True, skip_self=True,
                                                diag_offset=-2),
    "csr_full_skip": lambda n, m, g: _csr(n, m, g, full_skip=True),
}
KINDS = spec.KINDS


def run_op(x, y, alpha, beta, theta, rel, kind, kappa, g_row, g_col, stat="lse"):
    opts = rel.options(kind, stat, y.shape[0])
    row, col = torch.ops.flashnce.tile_fwd(x, y, alpha, beta, theta, list(rel.tensors), opts,
                                           kappa)
    grads = torch.ops.flashnce.tile_bwd(x, y, alpha, beta, theta, list(rel.tensors), opts,
                                        kappa, row, col, g_row, g_col)
    return row, col, grads


def run_oracle(x, y, alpha, beta, theta, rel, kind, kappa, g_row, g_col, stat="lse"):
    leaves = [t.detach().to(torch.float64).requires_grad_() for t in (x, y, alpha, beta, theta)]
    # One thread: the oracle's many small elementwise ops gain nothing from more, and lose a
    # lot on a shared machine. The op under test keeps every thread (its per-thread row split).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        row, col = dense_tile_stat(*leaves, rel, kind, stat, kappa)
        # -inf statistics (fully skipped rows / columns) carry no gradient.
        loss = (torch.where(row.isfinite(), row, 0) * g_row.double()).sum() + (
            torch.where(col.isfinite(), col, 0) * g_col.double()).sum()
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    finally:
        torch.set_num_threads(threads)
    grads = [torch.zeros_like(t) if gr is None else gr for t, gr in zip(leaves, grads)]
    return row.detach(), col.detach(), grads


def assert_close(got, ref, rtol, what):
    """|got - ref| <= rtol * (|ref| + max|ref|): relative to each tensor's own magnitude, and
    the same infinities (a fully skipped row / column is -inf on both sides)."""
    got = got.to(torch.float64)
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(ref.shape)}"
    assert not got.isnan().any(), f"{what}: NaN"
    inf = ref.isinf()
    assert torch.equal(got.isinf(), inf) and torch.equal(got[inf], ref[inf]), \
        f"{what}: infinities differ"
    if ref.numel() == 0:
        return
    scale = ref[~inf].abs().max() if (~inf).any() else torch.tensor(0.0, dtype=torch.float64)
    err = (got[~inf] - ref[~inf]).abs()
    bound = rtol * (ref[~inf].abs() + scale + 1e-300)
    worst = int((err - bound).argmax()) if err.numel() else 0
    assert (err <= bound).all(), (f"{what}: max error {float(err.max()):.3e} at flat index "
                                  f"{worst} (ref magnitude {float(scale):.3e}, rtol {rtol})")


def check(kind, case, n, m, d, dtype, m0=None, seed=0, stat_rtol=None, grad_rtol=None,
          stat="lse"):
    x, y, alpha, beta, theta = make_inputs(kind, n, m, d, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    rel = CASES[case](n, m, g)
    rel = Relation(rel.name, rel.tensors, rel.flags, rel.diag_offset, m if m0 is None else m0)
    cd = alpha.dtype
    g_row = torch.rand(n, generator=g, dtype=torch.float64).to(cd)
    g_col = torch.rand(rel.cols_both, generator=g, dtype=torch.float64).to(cd)
    return compare(x, y, alpha, beta, theta, rel, kind, kappa_for(dtype), g_row, g_col, stat,
                   stat_rtol, grad_rtol)


def compare(x, y, alpha, beta, theta, rel, kind, kappa, g_row, g_col, stat="lse",
            stat_rtol=None, grad_rtol=None):
    """tile_fwd + tile_bwd against the float64 oracle; returns the op's outputs."""
    dtype, cd = x.dtype, alpha.dtype
    row, col, grads = run_op(x, y, alpha, beta, theta, rel, kind, kappa, g_row, g_col, stat)
    row_r, col_r, grads_r = run_oracle(x, y, alpha, beta, theta, rel, kind, kappa, g_row, g_col,
                                       stat)
    tight = dtype == torch.float64
    stat_rtol = stat_rtol or (1e-11 if tight else 1e-5)
    grad_rtol = grad_rtol or (1e-9 if tight else 1e-4)
    assert row.dtype == cd and col.dtype == cd
    assert_close(row, row_r, stat_rtol, "row_stat")
    assert_close(col, col_r, stat_rtol, "col_stat")
    names = ("dx", "dy", "d_alpha", "d_beta", "d_theta")
    for name, got, ref in zip(names, grads, grads_r):
        assert got.dtype == (dtype if name in ("dx", "dy") else cd), name
        assert_close(got, ref, grad_rtol, name)
    return row, col, grads


# ---- tile borders and the per-thread row split, with row-only columns ---------------------
@pytest.mark.parametrize("case", ["none", "self+3", "labels_skip_pos_self0", "csr_full_skip",
                                  "targets_skip_pos"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("m0", [700, 600, 300])
def test_fp64_large(kind, case, m0):
    check(kind, case, 300, 700, 6, torch.float64, m0=m0, seed=3)


# ---- fp32 against the float64 oracle ---------------------------------------------------------
@pytest.mark.parametrize("n,m", [(1, 1), (1, 700), (300, 1), (5, 3), (3, 5), (257, 513)])
@pytest.mark.parametrize("case", ["none", "self0", "csr_full_skip", "labels_skip_pos"])
def test_shapes(n, m, case):
    check("cosine", case, n, m, 5, torch.float64, seed=11)


def test_wide_logit_range():
    """Logits spread far beyond the shared-max range: the separately referenced LSE paths."""
    for case in ("none", "self0", "csr_full_skip"):
        x, y, alpha, beta, theta = make_inputs("dot", 300, 700, 8, torch.float64, 13)
        x = x * torch.linspace(0.1, 30.0, 300, dtype=torch.float64)[:, None]
        rel = CASES[case](300, 700, torch.Generator().manual_seed(2)).resolved(700)
        g_row, g_col = torch.rand(300, dtype=torch.float64), torch.rand(700, dtype=torch.float64)
        got = run_op(x, y, alpha, beta, theta * 8, rel, "dot", 1e-14, g_row, g_col)
        ref = run_oracle(x, y, alpha, beta, theta * 8, rel, "dot", 1e-14, g_row, g_col)
        assert_close(got[0], ref[0], 1e-11, f"{case} row_stat")
        assert_close(got[1], ref[1], 1e-11, f"{case} col_stat")
        for name, a, b in zip(("dx", "dy", "d_alpha", "d_beta", "d_theta"), got[2], ref[2]):
            assert_close(a, b, 1e-8, f"{case} {name}")


def test_everything_skipped():
    """N = M = 1 with its only pair skipped: -inf statistics, all-zero gradients, no NaN."""
    for kind in KINDS:
        x, y, alpha, beta, theta = make_inputs(kind, 1, 1, 4, torch.float32, 0)
        rel = Relation.none(skip_self=True).resolved(1)
        g = torch.ones(1)
        row, col, grads = run_op(x, y, alpha, beta, theta, rel, kind, 1e-6, g, g)
        assert row.item() == -math.inf and col.item() == -math.inf
        for t in grads:
            assert not t.isnan().any() and (t == 0).all()


def test_empty_sides():
    x, y, alpha, beta, theta = make_inputs("cosine", 4, 3, 5, torch.float32, 0)
    rel = Relation.none()
    row, col = torch.ops.flashnce.tile_fwd(x[:0], y, alpha[:0], beta, theta, [],
                                           rel.options("cosine", "lse", 3), 1e-6)
    assert row.shape == (0,) and (col == -math.inf).all()
    row, col = torch.ops.flashnce.tile_fwd(x, y[:0], alpha, beta[:0], theta, [],
                                           rel.options("cosine", "lse", 0), 1e-6)
    assert (row == -math.inf).all() and col.shape == (0,)


def test_deterministic():
    """Bitwise equal outputs for the same inputs and thread count (no atomics)."""
    x, y, alpha, beta, theta = make_inputs("hyperbolic", 600, 900, 16, torch.float32, 1)
    rel = CASES["labels_skip_pos_self0"](600, 900, torch.Generator().manual_seed(0)).resolved(800)
    g_row, g_col = torch.rand(600), torch.rand(800)
    a = run_op(x, y, alpha, beta, theta, rel, "hyperbolic", 1e-6, g_row, g_col)
    b = run_op(x, y, alpha, beta, theta, rel, "hyperbolic", 1e-6, g_row, g_col)
    for u, v in zip((a[0], a[1], *a[2]), (b[0], b[1], *b[2])):
        assert torch.equal(u, v)


def test_fresh_gradients():
    """dX and dY are fresh tensors: they alias neither the inputs nor each other."""
    x, y, alpha, beta, theta = make_inputs("dot", 8, 8, 4, torch.float32, 0)
    rel = Relation.none().resolved(8)
    dx, dy = run_op(x, y, alpha, beta, theta, rel, "dot", 1e-6, torch.ones(8), torch.ones(8))[2][:2]
    ptrs = {x.data_ptr(), y.data_ptr()}
    assert dx.data_ptr() not in ptrs and dy.data_ptr() not in ptrs
    assert dx.data_ptr() != dy.data_ptr()


# ---- argument checks -------------------------------------------------------------------------
def _args(kind="cosine", n=6, m=5):
    x, y, alpha, beta, theta = make_inputs(kind, n, m, 4, torch.float32, 0)
    opts = Relation.none().options(kind, "lse", m)
    return x, y, alpha, beta, theta, opts


def _opts(**changes):
    x, y, alpha, beta, theta, opts = _args()
    names = {"kind": spec.OPT_KIND, "stat": spec.OPT_STAT, "relation": spec.OPT_RELATION,
             "flags": spec.OPT_FLAGS, "cols_both": spec.OPT_COLS_BOTH}
    for k, v in changes.items():
        opts[names[k]] = v
    return opts


@pytest.mark.parametrize("opts,tensors,match", [
    ([4, 0, 0, 0, 0], [], "options must have 6"),
    ([4, 0, 0, 0, 0, 5, 0], [], "options must have 6"),
    (_opts(kind=5), [], "unknown epilogue kind"),
    (_opts(kind=-1), [], "unknown epilogue kind"),
    (_opts(stat=len(spec.STATS)), [], "unknown statistic"),
    (_opts(stat=-1), [], "unknown statistic"),
    (_opts(relation=5), [], "unknown relation"),
    (_opts(flags=8), [], "unknown relation flags"),
    (_opts(cols_both=6), [], "cols_both"),
    (_opts(cols_both=-1), [], "cols_both"),
    (_opts(relation=spec.relation_id("none")), [torch.zeros(6, dtype=torch.int64)],
     "takes 0 index tensors"),
    (_opts(relation=spec.relation_id("targets")), [], "takes 1 index tensors"),
    (_opts(relation=spec.relation_id("targets")), [torch.zeros(6, dtype=torch.int32)],
     "int64"),
    (_opts(relation=spec.relation_id("targets")), [torch.zeros(5, dtype=torch.int64)],
     "must have 6 elements"),
    (_opts(relation=spec.relation_id("targets")), [torch.zeros(6, 1, dtype=torch.int64)],
     "1-d int64"),
    (_opts(relation=spec.relation_id("labels")),
     [torch.zeros(6, dtype=torch.int64), torch.zeros(6, dtype=torch.int64)],
     "must have 5 elements"),
])
@pytest.mark.parametrize("op", ["tile_fwd", "tile_fwd_grad"])
def test_bad_options(opts, tensors, match, op):
    """tile_fwd_grad shares tile_fwd's checks (with stat = pair_sum where the stat is valid)."""
    x, y, alpha, beta, theta, _ = _args()
    if op == "tile_fwd_grad" and opts[spec.OPT_STAT:spec.OPT_STAT + 1] == [0]:
        opts = list(opts)
        opts[spec.OPT_STAT] = spec.stat_id("pair_sum")
    with pytest.raises(RuntimeError, match="flashnce: .*" + match):
        getattr(torch.ops.flashnce, op)(x, y, alpha, beta, theta, tensors, opts, 1e-6)


def _csr_tensors(indptr, indices, roles, m=5):
    i64 = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    nnz = len(indices)
    return [i64(indptr), i64(indices), i64(roles), torch.zeros(m + 1, dtype=torch.int64),
            torch.zeros(nnz, dtype=torch.int64), torch.zeros(nnz, dtype=torch.int64)]


@pytest.mark.parametrize("tensors,match", [
    (_csr_tensors([0, 1, 2, 2, 2, 2, 2], [0, 1], [0, 0])[:5], "takes 6 index tensors"),
    (_csr_tensors([0, 1, 2, 2, 2, 2], [0, 1], [0, 0]), "must have 7 elements"),
    (_csr_tensors([0, 1, 2, 2, 2, 2, 3], [0, 1], [0, 0]), "end at nnz"),
    (_csr_tensors([0, 2, 1, 2, 2, 2, 2], [0, 1], [0, 0]), "indptr decreases"),
    (_csr_tensors([0, 2, 2, 2, 2, 2, 2], [1, 1], [0, 0]), "strictly increasing"),
    (_csr_tensors([0, 2, 2, 2, 2, 2, 2], [1, 5], [0, 0]), "strictly increasing"),
    (_csr_tensors([0, 2, 2, 2, 2, 2, 2], [0, 1], [0, 2]), "roles must be"),
    (_csr_tensors([0, 2, 2, 2, 2, 2, 2], [0, 1], [0]), "roles \\[nnz\\]"),
])
def test_bad_csr(tensors, match):
    x, y, alpha, beta, theta, _ = _args()
    opts = _opts(relation=spec.relation_id("csr"))
    with pytest.raises(RuntimeError, match="flashnce: .*" + match):
        torch.ops.flashnce.tile_fwd(x, y, alpha, beta, theta, tensors, opts, 1e-6)


def test_bad_tensors():
    x, y, alpha, beta, theta, opts = _args()
    op = torch.ops.flashnce.tile_fwd
    with pytest.raises(RuntimeError, match="flashnce: theta"):
        op(x, y, alpha, beta, theta[:2], [], opts, 1e-6)
    with pytest.raises(RuntimeError, match="flashnce: alpha"):
        op(x, y, alpha[:, :0], beta, theta, [], opts, 1e-6)
    with pytest.raises(RuntimeError, match="flashnce: x and y dtypes"):
        op(x, y.double(), alpha, beta, theta, [], opts, 1e-6)
    with pytest.raises(RuntimeError, match="flashnce: x \\[N, K\\]"):
        op(x, y[:, :2], alpha, beta, theta, [], opts, 1e-6)
    # tile_bwd: col_stat / g_col have M0 = cols_both entries, not M.
    opts = _opts(cols_both=3)
    row, col = op(x, y, alpha, beta, theta, [], opts, 1e-6)
    assert col.shape == (3,)
    bwd = torch.ops.flashnce.tile_bwd
    with pytest.raises(RuntimeError, match="flashnce: col_stat and g_col"):
        bwd(x, y, alpha, beta, theta, [], opts, 1e-6, row, col, torch.ones(6), torch.ones(5))
    with pytest.raises(RuntimeError, match="flashnce: row_stat and g_row"):
        bwd(x, y, alpha, beta, theta, [], opts, 1e-6, row[:5], col, torch.ones(6), torch.ones(3))


# ---- pair_sum (the sigmoid family) and the one-pass tile_fwd_grad ------------------------------
PS = "pair_sum"
# Relations with positive pairs (z = +1) that are not all skipped, from this file's cases.
PS_LOCAL_CASES = ["diagonal", "diagonal_pos_and_self", "targets", "targets_skip_pos_self+3",
                  "labels", "csr", "csr_full_skip"]


def _problem(kind, case, dtype, shape, seed=0):
    """tests/_tile_cases.py's problem: operands, relation and upstream gradients."""
    x, y, alpha, beta, theta, tspec, g_row, g_col = make_problem(kind, case, dtype, shape,
                                                                 seed=seed)
    rel = tspec.relation.resolved(y.shape[0])
    kappa = 1e-14 if dtype == torch.float64 else tspec.kappa
    return x, y, alpha, beta, theta, rel, kappa, g_row, g_col


def run_fwd_grad(x, y, alpha, beta, theta, rel, kind, kappa, stat=PS):
    return torch.ops.flashnce.tile_fwd_grad(x, y, alpha, beta, theta, list(rel.tensors),
                                            rel.options(kind, stat, y.shape[0]), kappa)


def check_fwd_grad(x, y, alpha, beta, theta, rel, kind, kappa, rtol=None, oracle_rtol=None):
    """tile_fwd_grad == (tile_fwd, tile_bwd with g_row = 1, g_col = 0) to a tight tolerance,
    with tile_bwd's dtypes and shapes, and against the oracle."""
    dtype, cd = x.dtype, alpha.dtype
    n, m0 = x.shape[0], rel.cols_both
    ones, zeros = torch.ones(n, dtype=cd), torch.zeros(m0, dtype=cd)
    got = run_fwd_grad(x, y, alpha, beta, theta, rel, kind, kappa)
    assert len(got) == 7
    row, col, grads = run_op(x, y, alpha, beta, theta, rel, kind, kappa, ones, zeros, PS)
    tight = dtype == torch.float64
    rtol = rtol or (1e-12 if tight else 1e-6)
    names = ("row_stat", "col_stat", "dx", "dy", "d_alpha", "d_beta", "d_theta")
    for name, a, b in zip(names, got, (row, col, *grads)):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert_close(a, b.to(torch.float64), rtol, f"fwd_grad vs two-pass {name}")
    ref_row, ref_col, ref_grads = run_oracle(x, y, alpha, beta, theta, rel, kind, kappa, ones,
                                             zeros, PS)
    s_rtol, g_rtol = oracle_rtol or ((1e-11, 1e-9) if tight else (1e-5, 1e-4))
    assert_close(got[0], ref_row, s_rtol, "fwd_grad row_stat")
    assert_close(got[1], ref_col, s_rtol, "fwd_grad col_stat")
    for name, a, b in zip(names[2:], got[2:], ref_grads):
        assert_close(a, b, g_rtol, f"fwd_grad {name}")
    return got


@pytest.mark.parametrize("case", RELATION_CASES)
@pytest.mark.parametrize("kind", KINDS)
def test_pair_sum_relations(kind, case):
    """Every relation case of the generated matrix; 600 columns cross a column tile."""
    prob = _problem(kind, case, torch.float64, (37, 600, 8), seed=5)
    compare(*prob[:6], kind, *prob[6:], stat=PS)
    check_fwd_grad(*prob[:6], kind, prob[6])


@pytest.mark.parametrize("case", PS_LOCAL_CASES)
@pytest.mark.parametrize("kind", KINDS)
def test_pair_sum_positives(kind, case):
    """Relations whose positives are not skipped (diagonal, targets, labels, csr), across the
    256 x 512 tile borders, the per-thread row split and row-only columns."""
    row, col, _ = check(kind, case, 300, 700, 6, torch.float64, m0=600, seed=7, stat=PS)
    assert (row >= 0).all() and (col >= 0).all()
    x, y, alpha, beta, theta = make_inputs(kind, 300, 700, 6, torch.float64, 7)
    rel = CASES[case](300, 700, torch.Generator().manual_seed(8)).resolved(600)
    check_fwd_grad(x, y, alpha, beta, theta, rel, kind, 1e-14)


@pytest.mark.parametrize("n,m", [(1, 1), (1, 700), (300, 1), (5, 3), (3, 5), (257, 513),
                                 (513, 1030)])
@pytest.mark.parametrize("case", ["labels_self", "csr", "row_only_self", "targets_skip"])
@pytest.mark.parametrize("kind", ["cosine", "hyperbolic"])
def test_pair_sum_shapes(kind, case, n, m):
    prob = _problem(kind, case, torch.float64, (n, m, 5), seed=11)
    compare(*prob[:6], kind, *prob[6:], stat=PS)
    check_fwd_grad(*prob[:6], kind, prob[6])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", KINDS)
def test_pair_sum_dtypes(kind, dtype):
    """fp32 / bf16 / fp16 inputs (fp32 compute) against the float64 oracle on the rounded
    inputs; 16-bit dX / dY carry their own rounding."""
    t_stat, t_grad = TOL[dtype]
    for case in ("labels_self", "csr", "row_only"):
        prob = _problem(kind, case, dtype, (70, 530, 16), seed=3)
        compare(*prob[:6], kind, *prob[6:], stat=PS, stat_rtol=t_stat, grad_rtol=t_grad)
        check_fwd_grad(*prob[:6], kind, prob[6], rtol=1e-5 if dtype == torch.float32 else 1e-2,
                       oracle_rtol=(t_stat, t_grad))


def test_pair_sum_wide_logit_range():
    """|l| up to ~1e3: f = max(u, 0) + log1p(exp(-|u|)) neither overflows nor cancels, and
    f' saturates at exactly 0 / -1 without NaN."""
    for case in ("none", "labels", "csr_full_skip"):
        x, y, alpha, beta, theta = make_inputs("dot", 300, 700, 8, torch.float64, 13)
        x = x * torch.linspace(0.1, 300.0, 300, dtype=torch.float64)[:, None]
        rel = CASES[case](300, 700, torch.Generator().manual_seed(2)).resolved(700)
        g_row, g_col = torch.rand(300, dtype=torch.float64), torch.rand(700, dtype=torch.float64)
        compare(x, y, alpha, beta, theta * 8, rel, "dot", 1e-14, g_row, g_col, PS, 1e-11, 1e-9)
        check_fwd_grad(x, y, alpha, beta, theta * 8, rel, "dot", 1e-14)
        for dt in (torch.float32,):
            got = run_fwd_grad(x.to(dt), y.to(dt), alpha.float(), beta.float(),
                               (theta * 8).float(), rel, "dot", 1e-6)
            assert all(not t.isnan().any() and not t.isinf().any() for t in got)


def test_pair_sum_everything_skipped():
    """N = M = 1 with its only pair skipped: statistics exactly 0 (not -inf), gradients 0."""
    for kind in KINDS:
        x, y, alpha, beta, theta = make_inputs(kind, 1, 1, 4, torch.float32, 0)
        rel = Relation.diagonal(skip_self=True).resolved(1)
        g = torch.ones(1)
        row, col, grads = run_op(x, y, alpha, beta, theta, rel, kind, 1e-6, g, g, PS)
        assert row.item() == 0 and col.item() == 0
        out = run_fwd_grad(x, y, alpha, beta, theta, rel, kind, 1e-6)
        for t in (*grads, *out):
            assert not t.isnan().any() and (t == 0).all()


def test_pair_sum_skipped_rows_exact_zero():
    """A fully skipped row / column has statistic exactly 0 and contributes exactly 0."""
    x, y, alpha, beta, theta = make_inputs("cosine", 300, 700, 6, torch.float64, 1)
    rel = CASES["csr_full_skip"](300, 700, torch.Generator().manual_seed(0)).resolved(700)
    row, col, dx, *_ = run_fwd_grad(x, y, alpha, beta, theta, rel, "cosine", 1e-14)
    assert row[0].item() == 0 and col[1].item() == 0 and (dx[0] == 0).all()


def test_pair_sum_empty_sides():
    x, y, alpha, beta, theta = make_inputs("cosine", 4, 3, 5, torch.float32, 0)
    rel = Relation.diagonal()
    for n, m in ((0, 3), (4, 0), (0, 0)):
        args = (x[:n], y[:m], alpha[:n], beta[:m], theta, [], rel.options("cosine", PS, m), 1e-6)
        row, col = torch.ops.flashnce.tile_fwd(*args)
        assert row.shape == (n,) and col.shape == (m,)
        assert (row == 0).all() and (col == 0).all()
        out = torch.ops.flashnce.tile_fwd_grad(*args)
        shapes = [(n,), (m,), (n, 5), (m, 5), (n, 1), (m, 1), (3,)]
        assert [tuple(t.shape) for t in out] == shapes
        assert all((t == 0).all() for t in out)
        grads = torch.ops.flashnce.tile_bwd(*args, row, col, torch.ones(n), torch.ones(m))
        assert all((t == 0).all() for t in grads)


def test_fwd_grad_refuses_lse():
    x, y, alpha, beta, theta, opts = _args()
    with pytest.raises(RuntimeError, match="flashnce: statistic lse has no one-pass gradient"):
        torch.ops.flashnce.tile_fwd_grad(x, y, alpha, beta, theta, [], opts, 1e-6)


def test_fwd_grad_fresh_outputs():
    x, y, alpha, beta, theta = make_inputs("dot", 8, 8, 4, torch.float32, 0)
    out = run_fwd_grad(x, y, alpha, beta, theta, Relation.diagonal().resolved(8), "dot", 1e-6)
    ptrs = [t.data_ptr() for t in out if t.numel()]
    assert len(set(ptrs)) == len(ptrs) and not {x.data_ptr(), y.data_ptr()} & set(ptrs)
    assert out[2].dtype == torch.float32 and out[0].dtype == torch.float32


def _ps_all(x, y, alpha, beta, theta, rel, kind, g_row, g_col):
    row, col, grads = run_op(x, y, alpha, beta, theta, rel, kind, 1e-6, g_row, g_col, PS)
    return (row, col, *grads, *run_fwd_grad(x, y, alpha, beta, theta, rel, kind, 1e-6))


def test_pair_sum_deterministic():
    """Bitwise equal outputs for the same inputs and thread count (no atomics)."""
    x, y, alpha, beta, theta = make_inputs("hyperbolic", 600, 900, 16, torch.float32, 1)
    rel = CASES["labels"](600, 900, torch.Generator().manual_seed(0)).resolved(800)
    g_row, g_col = torch.rand(600), torch.rand(800)
    a = _ps_all(x, y, alpha, beta, theta, rel, "hyperbolic", g_row, g_col)
    b = _ps_all(x, y, alpha, beta, theta, rel, "hyperbolic", g_row, g_col)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_pair_sum_threads_agree():
    """1 and 2 threads (a different row split and column-state merge) agree closely."""
    x, y, alpha, beta, theta = make_inputs("cosine", 600, 1100, 16, torch.float32, 2)
    rel = CASES["targets_skip_pos_self+3"](600, 1100, torch.Generator().manual_seed(1))
    rel = rel.resolved(900)
    g_row, g_col = torch.rand(600), torch.rand(900)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _ps_all(x, y, alpha, beta, theta, rel, "cosine", g_row, g_col)
        torch.set_num_threads(2)
        two = _ps_all(x, y, alpha, beta, theta, rel, "cosine", g_row, g_col)
    finally:
        torch.set_num_threads(threads)
    for i, (u, v) in enumerate(zip(one, two)):
        assert_close(u, v.to(torch.float64), 1e-5, f"output {i}")


# ---- count: ranks, forward only (cpu/walk_count.h) ------------------------------------------
COUNT_CASES = ("none", "diagonal", "diagonal_pos_and_self", "targets", "labels",
               "labels_skip_pos_self0", "csr", "csr_full_skip")


def _count_problem(kind, dtype, case, n=600, m=1100, m0=900, seed=2):
    """3 row blocks (2 thread parts on 2 threads), 3 column tiles, row-only columns, and
    duplicated rows of both operands in other tiles (exact ties across tiles)."""
    x, y, alpha, beta, theta = make_inputs(kind, n, m, 8, dtype, seed)
    for t, s, dst, src in ((y, beta, m - 70, 5), (x, alpha, n - 200, 7), (y, beta, 2, 600)):
        t[dst], s[dst] = t[src], s[src]
    rel = CASES[case](n, m, torch.Generator().manual_seed(seed))
    return x, y, alpha, beta, theta, replace(rel, cols_both=m0)


def _count(x, y, alpha, beta, theta, rel, kind, kappa=1e-6):
    return torch.ops.flashnce.tile_fwd(x, y, alpha, beta, theta, list(rel.tensors),
                                       rel.options(kind, "count", y.shape[0]), kappa)


@pytest.mark.parametrize("kind,case", [(k, c) for k in KINDS for c in ("diagonal", "labels",
                                                                        "csr_full_skip")]
                         + [("cosine", c) for c in COUNT_CASES
                            if c not in ("diagonal", "labels", "csr_full_skip")])
def test_count_tiles_and_parts(kind, case):
    """fp64 ranks across tiles and thread parts equal the materialised rule exactly."""
    x, y, alpha, beta, theta, rel = _count_problem(kind, torch.float64, case)
    row, col = _count(x, y, alpha, beta, theta, rel, kind, kappa_for(torch.float64))
    want_row, want_col = dense_tile_stat(x, y, alpha, beta, theta, rel, kind, "count",
                                         kappa_for(torch.float64))
    assert row.dtype == torch.float64 and col.shape == (900,)
    assert torch.equal(row, want_row), (row - want_row).abs().max()
    assert torch.equal(col, want_col), (col - want_col).abs().max()
    if case == "none" or rel.skip_positives:  # no positive pair anywhere
        assert (row == -1).all() and (col == -1).all()
    else:
        assert row.max() > 0 and col.max() > 0  # the ranks are not all trivial


def test_count_threads_agree():
    """fp32: bitwise the same ranks on 1 and 2 threads (the column thresholds and counts of
    the parts are merged in part order)."""
    x, y, alpha, beta, theta, rel = _count_problem("hyperbolic", torch.float32, "labels")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _count(x, y, alpha, beta, theta, rel, "hyperbolic")
        torch.set_num_threads(2)
        two = _count(x, y, alpha, beta, theta, rel, "hyperbolic")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_count_empty_sides_and_refusals():
    x, y, alpha, beta, theta = make_inputs("cosine", 4, 3, 5, torch.float32, 0)
    rel = Relation.diagonal()
    row, col = _count(x[:0], y, alpha[:0], beta, theta, rel, "cosine")
    assert row.shape == (0,) and (col == -1).all()
    row, col = torch.ops.flashnce.tile_fwd(x, y[:0], alpha, beta[:0], theta, [],
                                           rel.options("cosine", "count", 0), 1e-6)
    assert (row == -1).all() and col.shape == (0,)
    row, col = _count(x, y, alpha, beta, theta, rel, "cosine")
    opts = rel.options("cosine", "count", 3)
    with pytest.raises(RuntimeError, match="count has no backward"):
        torch.ops.flashnce.tile_bwd(x, y, alpha, beta, theta, [], opts, 1e-6, row, col,
                                    torch.zeros_like(row), torch.zeros_like(col))
    with pytest.raises(RuntimeError, match="count has no one-pass gradient"):
        torch.ops.flashnce.tile_fwd_grad(x, y, alpha, beta, theta, [], opts, 1e-6)
