"""The Triton tile ops on CPU tensors through the Triton interpreter, against the float64 oracle.

``torch.ops.flashnce.triton_tile_fwd / triton_tile_bwd`` are compared with
``flashnce.backends.dense.dense_tile_stat`` run in float64 on the same (upcast) operands, per-row
scalars and theta: statistics, and dX, dY, d_alpha, d_beta, d_theta against autograd of
sum(row_stat g_row) + sum(col_stat g_col). The kind x relation x dtype matrix is the generated
one (test_tile_ops.py, which runs a covering subset on Triton); here, what is particular to the
Triton kernels:

* ``test_fully_skipped``: a row and a column with every pair skipped (-inf, zero gradient);
* ``test_row_only_columns_get_gradients``: cols_both = 0 (the swapped backward launch still
  covers every row of Y);
* backend-only concerns: opcheck, every autotune candidate, determinism, a fullgraph compile.

``TRITON_INTERPRET=1`` is set by tests/conftest.py before ``import flashnce`` loads the kernels
(so ``@triton.jit`` builds interpreted kernels); ``backend="auto"`` never picks the
interpreter, so other test modules are not slowed down by it.
"""


import pytest
import torch

from flashnce import dispatch
from flashnce.backends import triton as triton_backend
from flashnce.backends.dense import dense_tile_stat
from flashnce.core import spec
from flashnce.core.relation import Relation
from flashnce.geometry import GEOMETRIES

from _helpers import assert_close, make_features

# tests/conftest.py sets TRITON_INTERPRET=1 before flashnce loads the kernels (at import).
_SKIP = dispatch.BACKENDS["triton"].unavailable()
if _SKIP is None and not triton_backend.INTERPRETED:
    _SKIP = "the Triton kernels were loaded without TRITON_INTERPRET=1 (no GPU here)"
if _SKIP:
    print(f"triton backend unavailable: {_SKIP}")
    pytest.skip(f"triton backend unavailable: {_SKIP}", allow_module_level=True)

from flashnce.triton_kernels import launch  # noqa: E402  (after the availability check)

KAPPA = 1e-6
CURVATURE = 0.8
# Max-norm relative bounds. Statistics and d_theta come from fp32 epilogues and sums on exact
# products (bf16 x bf16 is exact in fp32), so bf16 shares fp32's bounds there; dX and dY leave
# the kernel rounded to the input dtype and their GEMM consumes the G tile rounded to it, as do
# the norm partials of d_alpha / d_beta, hence a few bf16 units (2^-8) for those.
TOLS = {torch.float32: dict(stat=1e-5, grad=1e-4, theta=1e-4),
        torch.bfloat16: dict(stat=1e-5, grad=2.0**-6, theta=1e-4)}


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def make_problem(geometry, n, m, d, dtype, seed=0):
    """x, y in ``dtype``; alpha, beta fp32 from q = |x|^2 of the operands as rounded; theta."""
    x = make_features(n, d, dtype=dtype, seed=seed, geometry=geometry)
    y = make_features(m, d, dtype=dtype, seed=seed + 1000, geometry=geometry, role="y")
    geo = GEOMETRIES[geometry]
    c = torch.tensor(CURVATURE, dtype=torch.float64)
    alpha = geo.row_scalars(x.double().square().sum(-1), c, False).float().contiguous()
    beta = geo.row_scalars(y.double().square().sum(-1), c, False).float().contiguous()
    theta = torch.tensor([2.5, CURVATURE**-0.5, 0.3], dtype=torch.float32)
    return x, y, alpha, beta, theta


def upstream(n, m0, seed=0):
    g = torch.Generator().manual_seed(seed + 7)
    return (torch.rand(n, generator=g) + 0.5, torch.rand(m0, generator=g) * 2.0 - 0.5)


def run_ops(x, y, alpha, beta, theta, rel, kind, g_row=None, g_col=None):
    options = rel.options(kind, "lse", y.shape[0])
    tensors = list(rel.tensors)
    row, col = torch.ops.flashnce.triton_tile_fwd(x, y, alpha, beta, theta, tensors, options,
                                                  KAPPA)
    if g_row is None:
        g_row, g_col = upstream(x.shape[0], options[spec.OPT_COLS_BOTH])
    grads = torch.ops.flashnce.triton_tile_bwd(x, y, alpha, beta, theta, tensors, options,
                                               KAPPA, row, col, g_row, g_col)
    return (row, col), grads, (g_row, g_col)


def oracle(x, y, alpha, beta, theta, rel, kind, g_row, g_col):
    """float64 statistics and the gradients of sum(row g_row) + sum(col g_col)."""
    inputs = [t.detach().double().requires_grad_() for t in (x, y, alpha, beta, theta)]
    row, col = dense_tile_stat(*inputs, rel, kind, "lse", KAPPA)
    # A statistic of -inf (every pair skipped) has no gradient: weight it 0, not 0 * inf.
    loss = (torch.where(torch.isfinite(row), row, 0.0) * g_row.double()).sum() + (
        torch.where(torch.isfinite(col), col, 0.0) * g_col.double()).sum()
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]
    return (row.detach(), col.detach()), grads


def _assert_stat(actual, expected, tol, name):
    assert actual.dtype == torch.float32, name
    inf = torch.isinf(expected)
    assert torch.equal(torch.isinf(actual), inf), f"{name}: -inf at different entries"
    assert torch.all(actual[inf] == expected[inf]), f"{name}: wrong infinite values"
    if (~inf).any():
        assert_close(actual[~inf], expected[~inf], tol, name, floor=1.0)


def check(geometry, x, y, alpha, beta, theta, rel, label=""):
    kind = GEOMETRIES[geometry].kind
    stats, grads, (g_row, g_col) = run_ops(x, y, alpha, beta, theta, rel, kind)
    ref_stats, ref_grads = oracle(x, y, alpha, beta, theta, rel, kind, g_row, g_col)
    tol = TOLS[x.dtype]
    tag = f"{geometry} {rel.name} flags={rel.flags} off={rel.diag_offset} {label}"
    for name, a, e in zip(("row_stat", "col_stat"), stats, ref_stats):
        _assert_stat(a, e, tol["stat"], f"{tag} {name}")
    for name, g, e, src in zip(("dx", "dy", "d_alpha", "d_beta", "d_theta"), grads, ref_grads,
                               (x, y, alpha, beta, theta)):
        assert g.shape == src.shape and g.dtype == src.dtype, f"{tag} {name} {g.dtype}"
        assert_close(g, e, tol["theta" if name == "d_theta" else "grad"], f"{tag} {name}")
    if kind != "hyperbolic":
        assert grads[4][spec.THETA_INV_SQRT_C] == 0


def _csr(n, m, seed, *, full_row=None, full_col=None):
    """Random strictly increasing column sets (0 to 5 per row) with random roles; optionally a
    row and / or a column listing every pair as ROLE_SKIP."""
    g = torch.Generator().manual_seed(seed)
    sets = []
    for i in range(n):
        k = int(torch.randint(0, 6, (1,), generator=g))
        cols = torch.randperm(m, generator=g)[:k].tolist()
        sets.append({c: int(torch.randint(0, 2, (1,), generator=g)) for c in cols})
        if full_col is not None:
            sets[-1][full_col] = spec.ROLE_SKIP
    if full_row is not None:
        sets[full_row] = {c: spec.ROLE_SKIP for c in range(m)}
    indptr, indices, roles = [0], [], []
    for s in sets:
        for c in sorted(s):
            indices.append(c)
            roles.append(s[c])
        indptr.append(len(indices))
    return (torch.tensor(indptr), torch.tensor(indices, dtype=torch.int64),
            torch.tensor(roles, dtype=torch.int64))


@pytest.mark.parametrize("geometry", ["cosine", "poincare"])
def test_fully_skipped(geometry):
    """Row 3 and column 5 have every pair skipped: -inf statistics, no NaN anywhere, and no
    gradient reaches row 3 of X or column 5 of Y from the statistics they lost."""
    n, m = 9, 12
    x, y, alpha, beta, theta = make_problem(geometry, n, m, 16, torch.float32, seed=3)
    rel = Relation.csr(*_csr(n, m, seed=5, full_row=3, full_col=5), m)
    kind = GEOMETRIES[geometry].kind
    (row, col), grads, _ = run_ops(x, y, alpha, beta, theta, rel, kind)
    assert row[3] == float("-inf") and col[5] == float("-inf")
    assert torch.isfinite(row[torch.arange(n) != 3]).all()
    for g in grads:
        assert torch.isfinite(g).all()
    assert torch.all(grads[0][3] == 0) and torch.all(grads[1][5] == 0)
    check(geometry, x, y, alpha, beta, theta, rel)


def test_row_only_columns_get_gradients():
    """cols_both = 0: no column statistic at all, yet dY covers every row of Y."""
    x, y, alpha, beta, theta = make_problem("lorentz", 20, 30, 8, torch.float32)
    check("lorentz", x, y, alpha, beta, theta, Relation.none(cols_both=0))


def _opcheck_args():
    x, y, alpha, beta, theta = make_problem("euclidean", 9, 6, 5, torch.float32)
    rel = Relation.labels(torch.arange(9) % 3, torch.arange(6) % 3, skip_positives=True,
                          cols_both=4)
    options = rel.options("euclidean", "lse", 6)
    return (x, y, alpha, beta, theta, list(rel.tensors), options, KAPPA), options


def test_opcheck():
    """torch.library.opcheck on both ops: schema and fake functions (autograd lives in core)."""
    args, options = _opcheck_args()
    row, col = torch.ops.flashnce.triton_tile_fwd(*args)
    assert col.shape == (options[spec.OPT_COLS_BOTH],)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.flashnce.triton_tile_fwd.default, args, test_utils=utils)
    g_row, g_col = upstream(9, 4)
    torch.library.opcheck(torch.ops.flashnce.triton_tile_bwd.default,
                          args + (row, col, g_row, g_col), test_utils=utils)


def test_compile_fullgraph():
    """Both ops under torch.compile(fullgraph=True): under the interpreter they are opaque
    custom_ops (see triton_kernels/ops.py), so this checks schema and fakes, not Inductor's
    triton_op lowering."""
    args, options = _opcheck_args()
    g_row, g_col = upstream(9, 4)

    def f(x, y, alpha, beta, theta):
        row, col = torch.ops.flashnce.triton_tile_fwd(x, y, alpha, beta, theta, *args[5:])
        return row, col, torch.ops.flashnce.triton_tile_bwd(
            x, y, alpha, beta, theta, *args[5:], row, col, g_row, g_col)

    eager = f(*args[:5])
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(*args[:5])
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_autotune_configs(monkeypatch):
    """Every autotune candidate gives the default config's results; keys are bucketed.

    The autotuner itself benchmarks on a GPU driver, so under the interpreter
    FLASHNCE_TRITON_AUTOTUNE=1 is ignored; the candidates are launched one by one instead.
    """
    monkeypatch.setenv(launch.AUTOTUNE_ENV, "1")
    assert not launch.autotune_enabled()
    assert launch._bucket(100) == launch._bucket(128) == 128
    assert {"KEY_NA", "KEY_NB", "RELATION"} <= set(launch._autotuned_kernel("fwd").keys)
    x, y, alpha, beta, theta = make_problem("lorentz", 70, 45, 20, torch.float32)
    rel = Relation.targets(torch.arange(70) % 45, skip_self=True, skip_positives=True,
                           diag_offset=1, cols_both=40)
    args = (x, y, alpha, beta, theta, list(rel.tensors), rel.options("hyperbolic", "lse", 45),
            KAPPA)
    g_row, g_col = upstream(70, 40)
    fwd = launch.tile_forward(*args)
    bwd = launch.tile_backward(*args, *fwd, g_row, g_col)
    for cfg in launch.AUTOTUNE_FWD_CONFIGS:
        kw = cfg.kwargs
        out = launch.tile_forward(*args, config=(kw["BLOCK_A"], kw["BLOCK_B"], kw["BLOCK_K"],
                                                 cfg.num_warps, cfg.num_stages))
        for a, b in zip(out, fwd):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    bwd_configs = [(c.kwargs["BLOCK_A"], c.kwargs["BLOCK_B"], c.kwargs["BLOCK_K"],
                    c.kwargs["BLOCK_D"], c.num_warps, c.num_stages)
                   for c in launch.AUTOTUNE_BWD_CONFIGS]
    # BLOCK_D = 16 < K = 20: dX split over two column slices (grid axis 1).
    for cfg in bwd_configs + [(32, 32, 16, 16, 4, 1)]:
        out = launch.tile_backward(*args, *fwd, g_row, g_col, config=cfg)
        for a, b in zip(out, bwd):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_backward_deterministic():
    x, y, alpha, beta, theta = make_problem("poincare", 130, 70, 48, torch.float32)
    rel = Relation.diagonal(skip_self=True, diag_offset=-3)
    runs = [run_ops(x, y, alpha, beta, theta, rel, "hyperbolic") for _ in range(2)]
    for a, b in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1]):
        assert torch.equal(a, b)


# ---- pair_sum (SigLIP): the raw ops and the one-pass triton_tile_fwd_grad ---------------------
#
# Every relation case of tests/_tile_cases.py x every kind in fp32, each relation case once in
# bf16 and in fp16 (kinds rotating), over shapes with N != M, N = 1, odd sizes and K not a
# multiple of 16; the row_only cases have M0 < M. Each run checks tile_fwd and tile_bwd (random
# g_row, g_col) and tile_fwd_grad (g_row = 1, g_col = 0) against the float64 dense oracle.

from _tile_cases import RELATION_CASES, TOL, check_grad, check_stat  # noqa: E402
from _tile_cases import make_problem as make_tile_problem  # noqa: E402

PAIR_SHAPES = ((5, 7, 8), (1, 6, 3), (9, 4, 17), (6, 6, 5))
_PAIR_CASES = [(kind, case, torch.float32, PAIR_SHAPES[(i + j) % len(PAIR_SHAPES)])
               for i, case in enumerate(RELATION_CASES) for j, kind in enumerate(spec.KINDS)]
_PAIR_CASES += [(spec.KINDS[(i + s) % len(spec.KINDS)], case, dtype,
                 PAIR_SHAPES[(i + 2 * s) % len(PAIR_SHAPES)])
                for s, dtype in enumerate((torch.bfloat16, torch.float16))
                for i, case in enumerate(RELATION_CASES)]


def pair_oracle(x, y, alpha, beta, theta, rel, kind, kappa, g_row, g_col):
    """float64 pair_sum statistics and the gradients of sum(row g_row) + sum(col g_col)."""
    inputs = [t.detach().double().requires_grad_() for t in (x, y, alpha, beta, theta)]
    row, col = dense_tile_stat(*inputs, rel, kind, "pair_sum", kappa)
    loss = (row * g_row.double()).sum() + (col * g_col.double()).sum()
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]
    return row.detach(), col.detach(), grads


def _check_pair(tag, stats, grads, ref, dtype):
    t_stat, t_grad = TOL[dtype]
    for name, got, want in zip(("row_stat", "col_stat"), stats, ref[:2]):
        assert got.dtype == torch.float32, f"{tag} {name} {got.dtype}"
        check_stat(f"{tag} {name}", got, want, t_stat)
    for name, got, want, src_dtype in zip(("dx", "dy", "d_alpha", "d_beta", "d_theta"), grads,
                                          ref[2], (dtype, dtype) + (torch.float32,) * 3):
        assert got.dtype == src_dtype, f"{tag} {name} {got.dtype}"
        check_grad(f"{tag} {name}", got, want, t_grad)


@pytest.mark.parametrize("kind,case,dtype,shape", _PAIR_CASES,
                         ids=[f"{k}-{c}-{str(d)[6:]}-{'x'.join(map(str, s))}"
                              for k, c, d, s in _PAIR_CASES])
def test_pair_sum_ops(kind, case, dtype, shape):
    x, y, alpha, beta, theta, tspec, g_row, g_col = make_tile_problem(kind, case, dtype, shape)
    theta = theta.float()
    rel, kappa = tspec.relation, tspec.kappa
    options = rel.options(kind, "pair_sum", y.shape[0])
    tensors = list(rel.tensors)
    args = (x, y, alpha, beta, theta, tensors, options, kappa)
    row, col = torch.ops.flashnce.triton_tile_fwd(*args)
    grads = torch.ops.flashnce.triton_tile_bwd(*args, row, col, g_row, g_col)
    tag = f"{kind} {case} {dtype} {shape}"
    _check_pair(tag, (row, col), grads,
                pair_oracle(x, y, alpha, beta, theta, rel, kind, kappa, g_row, g_col), dtype)

    out = torch.ops.flashnce.triton_tile_fwd_grad(*args)
    ones, zeros = torch.ones_like(g_row), torch.zeros_like(g_col)
    _check_pair(f"{tag} fwd_grad", out[:2], out[2:],
                pair_oracle(x, y, alpha, beta, theta, rel, kind, kappa, ones, zeros), dtype)
    # The same statistics as tile_fwd (the same fold; the block configs, hence the order of
    # the sums, may differ).
    torch.testing.assert_close(out[:2], (row, col), rtol=1e-6, atol=1e-6)
    if case == "csr":  # row 0 and column 1 are fully skipped: 0, not -inf, and no gradient
        assert row[0] == 0 and out[0][0] == 0 and torch.all(out[2][0] == 0)
        if x.shape[0] > 1 and y.shape[0] > 1:
            assert col[1] == 0 and out[1][1] == 0


def test_pair_sum_fwd_grad_matches_bwd():
    """tile_fwd_grad = tile_bwd with g_row = 1, g_col = 0, including a K split of dX
    (BLOCK_D < K) and several row blocks (the fixed-order d_theta sum)."""
    x, y, alpha, beta, theta = make_problem("lorentz", 70, 45, 20, torch.float32)
    rel = Relation.targets(torch.arange(70) % 45, skip_self=True, diag_offset=1, cols_both=40)
    args = (x, y, alpha, beta, theta, list(rel.tensors),
            rel.options("hyperbolic", "pair_sum", 45), KAPPA)
    row, col = launch.tile_forward(*args)
    for cfg in (None, (32, 32, 16, 16, 4, 1)):
        bwd = launch.tile_backward(*args, row, col, torch.ones(70), torch.zeros(40),
                                   config=cfg)
        out = launch.tile_forward_grad(*args, config=cfg)
        torch.testing.assert_close(out[:2], (row, col), rtol=1e-6, atol=1e-6)
        for a, b in zip(out[2:], bwd):  # the same kernel, config and walk: bitwise
            assert torch.equal(a, b)


@pytest.mark.parametrize("n,m", [(0, 5), (4, 0), (0, 0)])
def test_pair_sum_empty(n, m):
    """N = 0 or M = 0: statistics 0 (a sum over nothing), gradients 0."""
    x, y, alpha, beta, theta = make_problem("cosine", max(n, 1), max(m, 1), 8, torch.float32)
    x, y, alpha, beta = x[:n], y[:m], alpha[:n], beta[:m]
    rel = Relation.diagonal()
    args = (x, y, alpha, beta, theta, [], rel.options("cosine", "pair_sum", m), KAPPA)
    row, col = torch.ops.flashnce.triton_tile_fwd(*args)
    assert row.shape == (n,) and col.shape == (m,)
    assert torch.all(row == 0) and torch.all(col == 0)
    out = torch.ops.flashnce.triton_tile_fwd_grad(*args)
    assert torch.all(out[0] == 0) and torch.all(out[1] == 0)
    for g, src in zip(out[2:], (x, y, alpha, beta, theta)):
        assert g.shape == src.shape and torch.all(g == 0)


def test_pair_sum_large_logits():
    """|l| up to ~200 (exp(|l|) overflows fp32): softplus and its slope stay finite and exact
    to fp32 (the one e = exp(-|u|) never overflows)."""
    x, y, alpha, beta, theta = make_problem("cosine", 9, 11, 8, torch.float32)
    theta = torch.tensor([200.0, 1.0, -3.0])
    rel = Relation.labels(torch.arange(9) % 3, torch.arange(11) % 3)
    g_row, g_col = upstream(9, 11)
    args = (x, y, alpha, beta, theta, list(rel.tensors), rel.options("cosine", "pair_sum", 11),
            KAPPA)
    row, col = torch.ops.flashnce.triton_tile_fwd(*args)
    grads = torch.ops.flashnce.triton_tile_bwd(*args, row, col, g_row, g_col)
    _check_pair("large", (row, col), grads,
                pair_oracle(x, y, alpha, beta, theta, rel, "cosine", KAPPA, g_row, g_col),
                torch.float32)


def test_fwd_grad_refuses_lse_and_fp64():
    x, y, alpha, beta, theta = make_problem("cosine", 4, 5, 8, torch.float32)
    rel = Relation.none()
    args = (x, y, alpha, beta, theta, [], rel.options("cosine", "lse", 5), KAPPA)
    with pytest.raises(ValueError, match="statistic lse has no one-pass gradient"):
        torch.ops.flashnce.triton_tile_fwd_grad(*args)
    with pytest.raises(ValueError, match="statistic lse has no one-pass gradient"):
        launch.tile_forward_grad(*args)
    pair = rel.options("cosine", "pair_sum", 5)
    with pytest.raises(ValueError, match="float64"):
        torch.ops.flashnce.triton_tile_fwd_grad(x.double(), y.double(), alpha, beta, theta, [],
                                                pair, KAPPA)


def test_fwd_grad_opcheck_and_compile():
    """Schema and fake of triton_tile_fwd_grad (opcheck), and a fullgraph compile."""
    args, options = _opcheck_args()
    options = list(options)
    options[spec.OPT_STAT] = spec.stat_id("pair_sum")
    args = args[:6] + (options, KAPPA)
    out = torch.ops.flashnce.triton_tile_fwd_grad(*args)
    assert out[1].shape == (options[spec.OPT_COLS_BOTH],)
    torch.library.opcheck(torch.ops.flashnce.triton_tile_fwd_grad.default, args,
                          test_utils=("test_schema", "test_faketensor"))

    def f(x, y, alpha, beta, theta):
        return torch.ops.flashnce.triton_tile_fwd_grad(x, y, alpha, beta, theta, *args[5:])

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(*args[:5])
    torch.testing.assert_close(compiled, out, rtol=0, atol=0)


# ---- masked_sum (SupCon): state [N, 2] = (lse, sum of the positives' logits) ------------------
#
# Every relation case of tests/_tile_cases.py plus cases whose positives are kept (diagonal,
# targets, labels, with self skips overlapping the positives, and row-only columns) x every
# kind in fp32, each case once in bf16 (kinds rotating); random g_row [N, 2], g_col [M0, 2]
# against autograd of the float64 oracle.

from dataclasses import replace  # noqa: E402

from _tile_cases import oracle as tile_oracle  # noqa: E402
from _tile_cases import relation_case  # noqa: E402


def _masked_relation(case, n, m, g):
    """The _tile_cases relation cases, and ones whose positives are (partly) kept."""
    if case == "diagonal":
        return Relation.diagonal(diag_offset=1)
    if case == "diagonal_self":  # positives j = i - 1 and self pairs j = i - 1: all skipped
        return Relation.diagonal(diag_offset=-1, skip_self=True)
    if case == "targets":
        return Relation.targets(torch.randint(0, m, (n,), generator=g))
    if case == "targets_self":  # t_i == i is skipped (skip wins), the other targets count
        t = torch.randint(0, m, (n,), generator=g)
        t[: min(n, m) : 2] = torch.arange(min(n, m))[::2]
        return Relation.targets(t, skip_self=True)
    if case == "labels":
        return Relation.labels(torch.randint(0, 2, (n,), generator=g),
                               torch.randint(0, 2, (m,), generator=g))
    if case == "labels_row_only":  # positives among the row-only columns too
        return Relation.labels(torch.randint(0, 2, (n,), generator=g),
                               torch.randint(0, 2, (m,), generator=g), skip_self=True,
                               diag_offset=1, cols_both=m // 2)
    return relation_case(case, n, m, g)


MASKED_CASES = RELATION_CASES + ("diagonal", "diagonal_self", "targets", "targets_self",
                                 "labels", "labels_row_only")
_MASKED = [(kind, case, torch.float32, PAIR_SHAPES[(i + j) % len(PAIR_SHAPES)])
           for i, case in enumerate(MASKED_CASES) for j, kind in enumerate(spec.KINDS)]
_MASKED += [(spec.KINDS[(i + 2) % len(spec.KINDS)], case, torch.bfloat16,
             PAIR_SHAPES[(i + 1) % len(PAIR_SHAPES)]) for i, case in enumerate(MASKED_CASES)]


def masked_problem(kind, case, dtype, shape, seed=0):
    """Operands from _tile_cases.make_problem, the relation of ``case`` and random upstream
    gradients of both values of each row's state."""
    x, y, alpha, beta, theta, tspec, _, _ = make_tile_problem(kind, "none", dtype, shape,
                                                              seed=seed, stat="masked_sum")
    n, m = x.shape[0], y.shape[0]
    g = torch.Generator().manual_seed(seed + 11)
    rel = _masked_relation(case, n, m, g)
    g_row = torch.randn(n, 2, generator=g)
    g_col = torch.randn(rel.m0(m), 2, generator=g)
    return x, y, alpha, beta, theta.float(), replace(tspec, relation=rel), g_row, g_col


def masked_args(x, y, alpha, beta, theta, tspec):
    rel = tspec.relation
    return (x, y, alpha, beta, theta, list(rel.tensors),
            rel.options(tspec.kind, "masked_sum", y.shape[0]), tspec.kappa)


@pytest.mark.parametrize("kind,case,dtype,shape", _MASKED,
                         ids=[f"{k}-{c}-{str(d)[6:]}-{'x'.join(map(str, s))}"
                              for k, c, d, s in _MASKED])
def test_masked_sum_ops(kind, case, dtype, shape):
    x, y, alpha, beta, theta, tspec, g_row, g_col = masked_problem(kind, case, dtype, shape)
    args = masked_args(x, y, alpha, beta, theta, tspec)
    n, m0 = x.shape[0], tspec.relation.m0(y.shape[0])
    row, col = torch.ops.flashnce.triton_tile_fwd(*args)
    assert row.shape == (n, 2) and col.shape == (m0, 2)
    assert row.dtype == col.dtype == torch.float32
    grads = torch.ops.flashnce.triton_tile_bwd(*args, row, col, g_row, g_col)
    want_row, want_col, want_grads = tile_oracle(x, y, alpha, beta, theta, tspec, g_row, g_col)
    tag = f"{kind} {case} {dtype} {shape}"
    t_stat, t_grad = TOL[dtype]
    check_stat(f"{tag} row_stat", row, want_row, t_stat)
    check_stat(f"{tag} col_stat", col, want_col, t_stat)
    for name, got, want, src in zip(("dx", "dy", "d_alpha", "d_beta", "d_theta"), grads,
                                    want_grads, (x, y, alpha, beta, theta)):
        assert got.shape == src.shape and got.dtype == src.dtype, f"{tag} {name} {got.dtype}"
        check_grad(f"{tag} {name}", got, want, t_grad)

    # Value 0 is the lse statistic from the same fold: bitwise equal to stat lse's, and so is
    # the backward when the masked sums get no upstream gradient (G gains + 0 exactly).
    lse_opts = list(args[6])
    lse_opts[spec.OPT_STAT] = spec.stat_id("lse")
    lse_args = args[:6] + (lse_opts, args[7])
    lse_row, lse_col = torch.ops.flashnce.triton_tile_fwd(*lse_args)
    assert torch.equal(row[:, 0], lse_row) and torch.equal(col[:, 0], lse_col), tag
    zero_sum = torch.stack([g_row[:, 0], torch.zeros(n)], 1)
    zero_sum_col = torch.stack([g_col[:, 0], torch.zeros(m0)], 1)
    masked = torch.ops.flashnce.triton_tile_bwd(*args, row, col, zero_sum, zero_sum_col)
    lse = torch.ops.flashnce.triton_tile_bwd(*lse_args, lse_row, lse_col,
                                             g_row[:, 0].contiguous(), g_col[:, 0].contiguous())
    for a, b in zip(masked, lse):
        assert torch.equal(a, b), tag

    if case in ("diagonal_self", "diagonal_skip", "diagonal_skip_self", "targets_skip",
                "targets_skip_self", "labels_skip") or CASE_RELATION.get(case) == "none":
        # No kept positive: every masked sum is exactly 0.
        assert torch.all(row[:, 1] == 0) and torch.all(col[:, 1] == 0), tag
    if (case in ("diagonal", "targets") or (case == "targets_self" and n > 1)
            or (case in ("labels", "labels_self", "labels_row_only") and n >= 5)):
        assert torch.any(row[:, 1] != 0), f"{tag}: no kept positive (the test needs some)"
    if case.startswith("csr"):  # row 0 is fully skipped: (-inf, 0) and no gradient
        assert row[0, 0] == float("-inf") and row[0, 1] == 0, tag
        assert torch.all(grads[0][0] == 0) and torch.all(grads[2][0] == 0), tag


from _tile_cases import CASE_RELATION  # noqa: E402


def test_masked_sum_row_only_and_offsets():
    """Several row blocks and column blocks (N, M > the 64-wide tiles), a diagonal offset, a
    row-only tail with positives, and a K split of dX (BLOCK_D < K) in the backward."""
    x, y, alpha, beta, theta = make_problem("cosine", 70, 83, 20, torch.float32)
    g = torch.Generator().manual_seed(3)
    rel = Relation.labels(torch.randint(0, 4, (70,), generator=g),
                          torch.randint(0, 4, (83,), generator=g), skip_self=True,
                          diag_offset=-5, cols_both=60)
    tspec = replace(make_tile_problem("cosine", "none", torch.float32, (2, 2, 2),
                                      stat="masked_sum")[5], relation=rel, kappa=KAPPA)
    args = masked_args(x, y, alpha, beta, theta, tspec)
    g_row, g_col = torch.randn(70, 2, generator=g), torch.randn(60, 2, generator=g)
    row, col = launch.tile_forward(*args)
    want_row, want_col, want_grads = tile_oracle(x, y, alpha, beta, theta, tspec, g_row, g_col)
    check_stat("row_stat", row, want_row, 2e-5)
    check_stat("col_stat", col, want_col, 2e-5)
    for cfg in (None, (32, 32, 16, 16, 4, 1)):
        grads = launch.tile_backward(*args, row, col, g_row, g_col, config=cfg)
        for name, got, want in zip(("dx", "dy", "d_alpha", "d_beta", "d_theta"), grads,
                                   want_grads):
            check_grad(f"{cfg} {name}", got, want, 2e-4)


@pytest.mark.parametrize("n,m", [(0, 5), (4, 0), (0, 0)])
def test_masked_sum_empty(n, m):
    """N = 0 or M = 0: states [N, 2], [M, 2]; a row with no column is (-inf, 0)."""
    x, y, alpha, beta, theta = make_problem("cosine", max(n, 1), max(m, 1), 8, torch.float32)
    x, y, alpha, beta = x[:n], y[:m], alpha[:n], beta[:m]
    args = (x, y, alpha, beta, theta, [], Relation.diagonal().options("cosine", "masked_sum", m),
            KAPPA)
    row, col = torch.ops.flashnce.triton_tile_fwd(*args)
    assert row.shape == (n, 2) and col.shape == (m, 2)
    assert torch.all(row[:, 0] == float("-inf")) and torch.all(row[:, 1] == 0)
    grads = torch.ops.flashnce.triton_tile_bwd(*args, row, col, torch.ones(n, 2),
                                               torch.ones(m, 2))
    for g, src in zip(grads, (x, y, alpha, beta, theta)):
        assert g.shape == src.shape and torch.all(g == 0)


def test_masked_sum_refusals_and_shapes():
    """No one-pass op for masked_sum (op, fake and launcher), and states of the wrong size
    are refused by name."""
    x, y, alpha, beta, theta = make_problem("cosine", 4, 5, 8, torch.float32)
    rel = Relation.diagonal()
    args = (x, y, alpha, beta, theta, [], rel.options("cosine", "masked_sum", 5), KAPPA)
    for f in (torch.ops.flashnce.triton_tile_fwd_grad, launch.tile_forward_grad):
        with pytest.raises(ValueError, match="statistic masked_sum has no one-pass gradient"):
            f(*args)
    with pytest.raises(ValueError, match="masked_sum has no one-pass gradient"):
        launch.specialisation("fwd_grad", 0, spec.stat_id("masked_sum"), 0, 0, False,
                              torch.float32, KAPPA)
    row, col = torch.ops.flashnce.triton_tile_fwd(*args)
    good = (row, col, torch.ones(4, 2), torch.ones(5, 2))
    torch.ops.flashnce.triton_tile_bwd(*args, *good)
    for i, bad in enumerate((row[:, 0].contiguous(), col[:3], torch.ones(4), torch.ones(5, 1))):
        states = list(good)
        states[i] = bad
        name = ("row_stat", "col_stat", "g_row", "g_col")[i]
        with pytest.raises(ValueError, match=f"{name} must have"):
            torch.ops.flashnce.triton_tile_bwd(*args, *states)


def test_masked_sum_specialisation():
    """masked_sum reads the positive role where a relation keeps positives (POSITIVES), and
    not for relation none or with skipped positives."""
    ms, lse = spec.stat_id("masked_sum"), spec.stat_id("lse")
    for rel in range(len(spec.RELATIONS)):
        for flags in range(spec.ALL_FLAGS + 1):
            meta = launch.specialisation("fwd", 0, ms, rel, flags, False, torch.float32, KAPPA)
            keeps = rel != spec.relation_id("none") and not flags & spec.FLAG_SKIP_POSITIVES
            assert meta["POSITIVES"] == keeps
            assert not launch.specialisation("bwd", 0, lse, rel, flags, False, torch.float32,
                                             KAPPA)["POSITIVES"]


def test_masked_sum_opcheck_and_compile():
    """Schema and fakes ([N, 2], [M0, 2]) of both ops (opcheck), and a fullgraph compile."""
    args, options = _opcheck_args()
    options = list(options)
    options[spec.OPT_STAT] = spec.stat_id("masked_sum")
    options[spec.OPT_FLAGS] = spec.FLAG_SKIP_SELF  # keep the labels' positives
    args = args[:6] + (options, KAPPA)
    row, col = torch.ops.flashnce.triton_tile_fwd(*args)
    assert row.shape == (9, 2) and col.shape == (options[spec.OPT_COLS_BOTH], 2)
    assert torch.any(row[:, 1] != 0)
    g = torch.Generator().manual_seed(0)
    g_row, g_col = torch.randn(9, 2, generator=g), torch.randn(4, 2, generator=g)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.flashnce.triton_tile_fwd.default, args, test_utils=utils)
    torch.library.opcheck(torch.ops.flashnce.triton_tile_bwd.default,
                          args + (row, col, g_row, g_col), test_utils=utils)

    def f(x, y, alpha, beta, theta):
        r, c = torch.ops.flashnce.triton_tile_fwd(x, y, alpha, beta, theta, *args[5:])
        return r, c, torch.ops.flashnce.triton_tile_bwd(x, y, alpha, beta, theta, *args[5:],
                                                        r, c, g_row, g_col)

    eager = f(*args[:5])
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(*args[:5])
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


# ---- hyperbolic radii far past the old cap (asinh(2^15) = 11.09) -------------------------------


@pytest.mark.parametrize("relation", ["none", "labels"])
def test_hyperbolic_large_radii(relation):
    """rho in [20, 42] (S_i S_j up to ~8e35, w up to ~1.5e36): q = sqrt(w (w + 2)) would
    overflow fp32 from w ~ 1.8e19; as w + 1 past 2^27 the row / column lse match a float64
    evaluation of the same L3 formula to ~1e-6 relative, with finite gradients (also of the
    radial term sinh(rho_i - rho_j), |rho_i - rho_j| up to 22) that match the oracle's."""
    n, m, d = 7, 10, 16
    g = torch.Generator().manual_seed(5)

    def points(k):
        x = torch.randn(k, d, generator=g)
        rho = 20.0 + 22.0 * torch.rand(k, generator=g, dtype=torch.float64)
        rho[0] = 42.0
        scalars = torch.stack([x.double().norm(dim=1), rho, torch.sinh(rho)], 1)
        return x, scalars.float().contiguous()

    x, alpha = points(n)
    y, beta = points(m)
    theta = torch.tensor([2.5, CURVATURE**-0.5, 0.3])
    if relation == "none":
        rel = Relation.none()
    else:
        rel = Relation.labels(torch.arange(n) % 3, torch.arange(m) % 3, skip_self=True)
    g_row, g_col = upstream(n, m)
    stats, grads, _ = run_ops(x, y, alpha, beta, theta, rel, "hyperbolic", g_row, g_col)
    ref_stats, ref_grads = oracle(x, y, alpha, beta, theta, rel, "hyperbolic", g_row, g_col)
    for name, got, want in zip(("row_stat", "col_stat"), stats, ref_stats):
        assert torch.isfinite(got).all(), name
        assert want.abs().min() > 50  # distances ~ rho_i + rho_j: far from the old range
        rel_err = ((got.double() - want) / want).abs().max().item()
        assert rel_err < 2e-6, f"{name}: relative error {rel_err:.2e}"
    for name, got, want in zip(("dx", "dy", "d_alpha", "d_beta", "d_theta"), grads, ref_grads):
        assert torch.isfinite(got).all(), name
        check_grad(name, got, want, 1e-4)
    for k in range(3):  # each per-row scalar's column on its own scale
        check_grad(f"d_alpha[:, {k}]", grads[2][:, k], ref_grads[2][:, k], 1e-4)
        check_grad(f"d_beta[:, {k}]", grads[3][:, k], ref_grads[3][:, k], 1e-4)
