"""The compiled CPU ops with ``stat="masked_sum"`` (SupCon: the lse and the sum of the positives'
logits, a state of two values per row), and the hyperbolic kind at large radii.

Called directly (``torch.ops.flashnce.tile_fwd`` / ``tile_bwd``, no autograd) against the
float64 dense oracle (``flashnce.backends.dense.dense_tile_stat``): every kind x the relation
cases of tests/_tile_cases.py plus positive-carrying cases here (diagonal / targets / labels
without skipped positives, with offsets and row-only columns), float64 / fp32 / bf16, tile-
spanning, odd and degenerate shapes (N = 1, N != M, M = 0, N = 0), fully skipped rows
((-inf, 0)), relation none and skipped positives (masked sum exactly 0); random upstream
gradients g_row [N, 2], g_col [M0, 2]. Value 0 and the gradients of value 0 are bitwise those of
the lse stat; tile_fwd_grad refuses the stat; the state-shape checks.

Hyperbolic at radii 20..42 (alpha = (n, rho, sinh rho) built by hand, fp32): the lse stat's row
values within ~1e-6 (relative) of a float64 evaluation of the same L3 formula, no inf / nan,
gradients finite and close to float64 autograd.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from flashnce import _extension
from flashnce.core import spec
from flashnce.core.relation import Relation

from _tile_cases import (RELATION_CASES, TOL, check_grad, check_stat, make_problem, oracle,
                         relation_case)

_extension.load()
pytestmark = pytest.mark.skipif(
    not hasattr(torch.ops.flashnce, "tile_fwd"),
    reason=f"compiled tile ops unavailable: {_extension.why_unavailable()}")

STAT = "masked_sum"
GRAD_NAMES = ("dx", "dy", "d_alpha", "d_beta", "d_theta")


# Positive-carrying cases beyond _tile_cases (there, diagonal / targets come with skipped
# positives only).
def extra_case(name, n, m, g):
    if name == "diagonal0":  # positives j = i
        return Relation.diagonal()
    if name == "diagonal+3":  # positives j = i + 3
        return Relation.diagonal(diag_offset=3)
    if name == "diagonal_self":  # the positive is the self pair and skipped: masked sum 0
        return Relation.diagonal(skip_self=True)
    if name == "targets_keep":
        return Relation.targets(torch.randint(0, m, (n,), generator=g))
    if name == "targets_self+2":
        return Relation.targets(torch.randint(0, m, (n,), generator=g), skip_self=True,
                                diag_offset=2)
    if name == "labels":
        return Relation.labels(torch.randint(0, 4, (n,), generator=g),
                               torch.randint(0, 4, (m,), generator=g))
    if name == "labels_row_only":
        lab = torch.randint(0, 3, (max(n, m),), generator=g)
        return Relation.labels(lab[:n], lab[:m], skip_self=True, cols_both=max(m * 2 // 3, 0))
    if name == "csr_row_only":
        return replace(relation_case("csr", n, m, g), cols_both=max(m - 3, 0))
    return relation_case(name, n, m, g)


EXTRA_CASES = ("diagonal0", "diagonal+3", "diagonal_self", "targets_keep", "targets_self+2",
               "labels", "labels_row_only", "csr_row_only")
ALL_CASES = RELATION_CASES + tuple(c for c in EXTRA_CASES if c not in RELATION_CASES)


def problem(kind, case, dtype, shape, seed=0):
    """make_problem's operands with the case's relation and [N, 2] / [M0, 2] upstream
    gradients."""
    n, m, _ = shape
    x, y, alpha, beta, theta, tspec, _, _ = make_problem(kind, "none", dtype, shape, seed=seed,
                                                         stat=STAT)
    g = torch.Generator().manual_seed(seed + 101)
    rel = extra_case(case, n, m, g).resolved(m)
    tspec = replace(tspec, relation=rel)
    cd = alpha.dtype
    g_row = torch.randn(n, 2, generator=g, dtype=torch.float64).to(cd)
    g_col = torch.randn(rel.cols_both, 2, generator=g, dtype=torch.float64).to(cd)
    return x, y, alpha, beta, theta, tspec, g_row, g_col


def op_fwd(x, y, alpha, beta, theta, tspec, stat=STAT):
    rel = tspec.relation
    opts = rel.options(tspec.kind, stat, y.shape[0])
    return torch.ops.flashnce.tile_fwd(x, y, alpha, beta, theta, list(rel.tensors), opts,
                                       tspec.kappa)


def op_bwd(x, y, alpha, beta, theta, tspec, row, col, g_row, g_col, stat=STAT):
    rel = tspec.relation
    opts = rel.options(tspec.kind, stat, y.shape[0])
    return torch.ops.flashnce.tile_bwd(x, y, alpha, beta, theta, list(rel.tensors), opts,
                                       tspec.kappa, row, col, g_row, g_col)


def check_case(kind, case, dtype, shape, seed=0, tol=None):
    x, y, alpha, beta, theta, tspec, g_row, g_col = problem(kind, case, dtype, shape, seed)
    n, m = x.shape[0], y.shape[0]
    m0 = tspec.relation.cols_both
    row, col = op_fwd(x, y, alpha, beta, theta, tspec)
    cd = alpha.dtype
    assert row.shape == (n, 2) and col.shape == (m0, 2)
    assert row.dtype == cd and col.dtype == cd and row.is_contiguous() and col.is_contiguous()
    want_row, want_col, want_grads = oracle(x, y, alpha, beta, theta, tspec, g_row, g_col)
    t_stat, t_grad = tol or TOL[dtype]
    check_stat("row_stat", row, want_row, t_stat)
    check_stat("col_stat", col, want_col, t_stat)
    # An empty row / column is (-inf, 0); a row without positives has masked sum exactly 0.
    for got, want in ((row, want_row), (col, want_col)):
        empty = torch.isinf(want[:, 0])
        assert bool((got[empty, 1] == 0).all())
        assert bool((got[want[:, 1] == 0, 1] == 0).all()) or case.startswith("csr")
    grads = op_bwd(x, y, alpha, beta, theta, tspec, row, col, g_row, g_col)
    assert grads[0].dtype == dtype and grads[1].dtype == dtype
    for name, got, want in zip(GRAD_NAMES, grads, want_grads):
        check_grad(name, got, want, t_grad)
    return row, col, grads


# ---- every kind x every relation case, float64 and fp32, a tile-spanning shape ---------------
@pytest.mark.parametrize("case", ALL_CASES)
@pytest.mark.parametrize("kind", spec.KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_oracle_small(kind, case, dtype):
    check_case(kind, case, dtype, (37, 53, 8), seed=1)


@pytest.mark.parametrize("case", ["none", "labels_self", "labels", "labels_row_only", "csr",
                                  "csr_self", "targets_self+2", "diagonal+3",
                                  "row_only_self", "labels_skip"])
@pytest.mark.parametrize("kind", spec.KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_oracle_tiles(kind, case, dtype):
    """Crosses the 256 x 512 tiles and the per-thread row split."""
    check_case(kind, case, dtype, (300, 700, 16), seed=2)


@pytest.mark.parametrize("shape", [(1, 1, 4), (1, 9, 4), (9, 1, 4), (5, 3, 3), (3, 5, 3),
                                   (257, 513, 5), (1, 700, 6)])
@pytest.mark.parametrize("case", ["labels", "csr", "diagonal0", "targets_self+2"])
def test_odd_shapes(shape, case):
    check_case("cosine", case, torch.float64, shape, seed=3)


@pytest.mark.parametrize("case", ["labels", "csr", "targets_keep"])
@pytest.mark.parametrize("kind", spec.KINDS)
def test_bf16(kind, case):
    check_case(kind, case, torch.bfloat16, (40, 70, 16), seed=4)


# ---- value 0 is the lse stat; relation none / skipped positives give masked sum 0 -------------
@pytest.mark.parametrize("case", ["none", "labels_self", "csr", "labels_row_only", "targets_keep"])
@pytest.mark.parametrize("kind", ["hyperbolic", "cosine", "euclidean"])
def test_value0_is_lse(kind, case):
    """Value 0 of the state, and the gradients from g = (g0, 0), are bitwise the lse stat's."""
    x, y, alpha, beta, theta, tspec, g_row, g_col = problem(kind, case, torch.float32,
                                                            (300, 600, 16), seed=5)
    row, col = op_fwd(x, y, alpha, beta, theta, tspec)
    lrow, lcol = op_fwd(x, y, alpha, beta, theta, tspec, stat="lse")
    assert torch.equal(row[:, 0], lrow) and torch.equal(col[:, 0], lcol)
    g_row[:, 1] = 0
    g_col[:, 1] = 0
    got = op_bwd(x, y, alpha, beta, theta, tspec, row, col, g_row, g_col)
    want = op_bwd(x, y, alpha, beta, theta, tspec, lrow, lcol, g_row[:, 0].contiguous(),
                  g_col[:, 0].contiguous(), stat="lse")
    for name, a, b in zip(GRAD_NAMES, got, want):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("case", ["none", "self0", "diagonal_skip", "targets_skip",
                                  "labels_skip", "diagonal_self"])
def test_no_positives(case):
    x, y, alpha, beta, theta, tspec, g_row, g_col = problem("dot", case, torch.float32,
                                                            (40, 50, 8), seed=6)
    row, col = op_fwd(x, y, alpha, beta, theta, tspec)
    assert bool((row[:, 1] == 0).all()) and bool((col[:, 1] == 0).all())
    # g on the masked sums then changes nothing.
    base = op_bwd(x, y, alpha, beta, theta, tspec, row, col, g_row * torch.tensor([1.0, 0.0]),
                  g_col * torch.tensor([1.0, 0.0]))
    got = op_bwd(x, y, alpha, beta, theta, tspec, row, col, g_row, g_col)
    for name, a, b in zip(GRAD_NAMES, got, base):
        assert torch.equal(a, b), name


def test_masked_sum_only_gradient():
    """g = (0, 1) on the rows: G = [ij positive], so d bias = the number of positives."""
    x, y, alpha, beta, theta, tspec, _, _ = problem("dot", "labels", torch.float64,
                                                    (300, 700, 8), seed=7)
    row, col = op_fwd(x, y, alpha, beta, theta, tspec)
    g_row = torch.zeros(300, 2, dtype=torch.float64)
    g_row[:, 1] = 1
    g_col = torch.zeros(700, 2, dtype=torch.float64)
    grads = op_bwd(x, y, alpha, beta, theta, tspec, row, col, g_row, g_col)
    a, b = tspec.relation.tensors
    npos = int((a[:, None] == b[None, :]).sum())
    assert grads[4][spec.THETA_BIAS].item() == npos
    # dX = scale * P Y with P the positive mask.
    pmask = (a[:, None] == b[None, :]).double()
    assert torch.allclose(grads[0], theta[spec.THETA_SCALE] * pmask @ y, rtol=1e-12, atol=1e-12)


# ---- fully skipped rows, empty sides -----------------------------------------------------------
def test_fully_skipped():
    """N = M = 1 with its pair skipped, and csr row 0 fully skipped: (-inf, 0), zero or finite
    gradients."""
    for kind in spec.KINDS:
        x, y, alpha, beta, theta, tspec, _, _ = problem(kind, "self0", torch.float32, (1, 1, 4))
        row, col = op_fwd(x, y, alpha, beta, theta, tspec)
        assert row.tolist() == [[-math.inf, 0.0]] and col.tolist() == [[-math.inf, 0.0]]
        g = torch.ones(1, 2)
        for t in op_bwd(x, y, alpha, beta, theta, tspec, row, col, g, g):
            assert not t.isnan().any() and bool((t == 0).all())
    x, y, alpha, beta, theta, tspec, g_row, g_col = problem("cosine", "csr", torch.float32,
                                                            (20, 30, 8))
    row, col = op_fwd(x, y, alpha, beta, theta, tspec)
    assert row[0].tolist() == [-math.inf, 0.0]
    assert col[1].tolist() == [-math.inf, 0.0]  # every row skips column 1
    for t in op_bwd(x, y, alpha, beta, theta, tspec, row, col, g_row, g_col):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_sides(dtype):
    x, y, alpha, beta, theta, tspec, _, _ = problem("cosine", "labels", dtype, (4, 3, 5))
    cd = alpha.dtype
    # N = 0: no rows; every column (-inf, 0).
    rel0 = Relation.none()
    ts = replace(tspec, relation=rel0.resolved(3))
    row, col = op_fwd(x[:0], y, alpha[:0], beta, theta, ts)
    assert row.shape == (0, 2) and col.shape == (3, 2) and row.dtype == cd
    assert col[:, 0].eq(-math.inf).all() and col[:, 1].eq(0).all()
    grads = op_bwd(x[:0], y, alpha[:0], beta, theta, ts, row, col, torch.zeros(0, 2, dtype=cd),
                   torch.ones(3, 2, dtype=cd))
    assert grads[0].shape == (0, 5) and bool((grads[1] == 0).all())
    # M = 0: every row (-inf, 0); no columns.
    ts = replace(tspec, relation=rel0.resolved(0))
    row, col = op_fwd(x, y[:0], alpha, beta[:0], theta, ts)
    assert row.shape == (4, 2) and col.shape == (0, 2)
    assert row[:, 0].eq(-math.inf).all() and row[:, 1].eq(0).all()
    grads = op_bwd(x, y[:0], alpha, beta[:0], theta, ts, row, col, torch.ones(4, 2, dtype=cd),
                   torch.zeros(0, 2, dtype=cd))
    assert bool((grads[0] == 0).all()) and grads[1].shape == (0, 5)
    # Row-only columns only (M0 = 0).
    ts = replace(tspec, relation=replace(tspec.relation, cols_both=0))
    row, col = op_fwd(x, y, alpha, beta, theta, ts)
    assert row.shape == (4, 2) and col.shape == (0, 2)


# ---- refusals and checks -------------------------------------------------------------------
def test_fwd_grad_refused():
    x, y, alpha, beta, theta, tspec, _, _ = problem("dot", "labels", torch.float32, (8, 9, 4))
    rel = tspec.relation
    with pytest.raises(RuntimeError, match="masked_sum has no one-pass gradient"):
        torch.ops.flashnce.tile_fwd_grad(x, y, alpha, beta, theta, list(rel.tensors),
                                         rel.options("dot", STAT, 9), tspec.kappa)


def test_state_shape_checks():
    x, y, alpha, beta, theta, tspec, g_row, g_col = problem("dot", "labels", torch.float32,
                                                            (8, 9, 4))
    row, col = op_fwd(x, y, alpha, beta, theta, tspec)
    with pytest.raises(RuntimeError, match="row_stat and g_row must have N \\* 2 = 16"):
        op_bwd(x, y, alpha, beta, theta, tspec, row[:, 0], col, g_row, g_col)
    with pytest.raises(RuntimeError, match="row_stat and g_row must have"):
        op_bwd(x, y, alpha, beta, theta, tspec, row, col, g_row[:, 0], g_col)
    with pytest.raises(RuntimeError, match="col_stat and g_col must have M0 \\* 2"):
        op_bwd(x, y, alpha, beta, theta, tspec, row, col, g_row, g_col[:, :1])
    # The lse stat keeps its one value per row.
    with pytest.raises(RuntimeError, match="row_stat and g_row must have N \\* 1 = 8"):
        op_bwd(x, y, alpha, beta, theta, tspec, row, col[:, 0], g_row, g_col[:, 0], stat="lse")


def test_deterministic():
    x, y, alpha, beta, theta, tspec, g_row, g_col = problem("hyperbolic", "labels_row_only",
                                                            torch.float32, (600, 900, 16))
    a = op_fwd(x, y, alpha, beta, theta, tspec)
    b = op_fwd(x, y, alpha, beta, theta, tspec)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    ga = op_bwd(x, y, alpha, beta, theta, tspec, *a, g_row, g_col)
    gb = op_bwd(x, y, alpha, beta, theta, tspec, *a, g_row, g_col)
    assert all(torch.equal(p, q) for p, q in zip(ga, gb))


# ---- hyperbolic at large radii (fp32) --------------------------------------------------------
def _l3_logits(x, y, alpha, beta, theta, kappa=1e-6):
    """float64 L3 logits from the same inputs (docs/NUMERICS.md section 6), with the kernels'
    clamp w >= kappa S_i S_j (no gradient through the floor)."""
    n_i, r_i, s_i = alpha.unbind(1)
    n_j, r_j, s_j = beta.unbind(1)
    cos = (x @ y.T) / (n_i[:, None] * n_j[None, :])
    ss = s_i[:, None] * s_j[None, :]
    w = 2 * torch.sinh((r_i[:, None] - r_j[None, :]) / 2) ** 2 + ss * (1 - cos)
    floor = (kappa * ss).detach()
    w = torch.where(w > floor, w, floor)
    h = -torch.log1p(w + torch.sqrt(w * (w + 2))) * theta[spec.THETA_INV_SQRT_C]
    return theta[spec.THETA_SCALE] * h + theta[spec.THETA_BIAS]


@pytest.mark.parametrize("lo,hi", [(20.0, 42.0), (38.0, 42.0), (42.0, 42.0), (44.0, 44.0)])
def test_hyperbolic_large_radii(lo, hi):
    n, m, d = 96, 130, 16
    g = torch.Generator().manual_seed(9)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    y = torch.nn.functional.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
    y[0] = -x[0]  # antipodal: S_i S_j (1 - cos) at its largest
    y[1] = x[1]   # same direction: the radial term alone
    x, y = (x * 0.8).float(), (y * 1.2).float()

    def scalars(t, rho):
        rho = rho.float()
        return torch.stack([t.double().norm(dim=1).float(), rho, torch.sinh(rho.double()).float()],
                           1).contiguous()

    alpha = scalars(x, torch.linspace(lo, hi, n, dtype=torch.float64))
    beta = scalars(y, torch.linspace(hi, lo, m, dtype=torch.float64))
    assert torch.isfinite(alpha).all() and torch.isfinite(beta).all()
    theta = torch.tensor([0.05, 1.0 / math.sqrt(0.8), 0.1])
    rel = Relation.labels(torch.arange(n) % 5, torch.arange(m) % 5).resolved(m)
    g_row = torch.rand(n, generator=g, dtype=torch.float64).float()
    g_col = torch.rand(m, generator=g, dtype=torch.float64).float()
    opts = rel.options("hyperbolic", "lse", m)
    row, col = torch.ops.flashnce.tile_fwd(x, y, alpha, beta, theta, list(rel.tensors), opts,
                                           1e-6)
    leaves = [t.double().requires_grad_() for t in (x, y, alpha, beta, theta)]
    logits = _l3_logits(*leaves)
    want_row, want_col = torch.logsumexp(logits, 1), torch.logsumexp(logits, 0)
    assert torch.isfinite(row).all() and torch.isfinite(col).all()
    assert torch.isfinite(logits).all()
    # Relative to the logits' magnitude (an lse can be near 0: a sum of e^-4 over 130 terms).
    mag = logits.detach().abs()
    for got, want, ref in ((row, want_row, mag.amax(1)), (col, want_col, mag.amax(0))):
        rel_err = ((got.double() - want.detach()).abs() / torch.maximum(want.abs(), ref)).max()
        assert rel_err < 1e-6, rel_err.item()
    grads = torch.ops.flashnce.tile_bwd(x, y, alpha, beta, theta, list(rel.tensors), opts, 1e-6,
                                        row, col, g_row, g_col)
    total = (want_row * g_row.double()).sum() + (want_col * g_col.double()).sum()
    want_grads = torch.autograd.grad(total, leaves)
    for name, got, want in zip(GRAD_NAMES, grads, want_grads):
        assert torch.isfinite(got).all(), name
        check_grad(name, got, want, 2e-5)
    # masked_sum on the same inputs: value 0 is that lse, value 1 the positives' logits.
    row2, col2 = torch.ops.flashnce.tile_fwd(x, y, alpha, beta, theta, list(rel.tensors),
                                             rel.options("hyperbolic", STAT, m), 1e-6)
    assert torch.equal(row2[:, 0], row)
    a, b = rel.tensors
    pos = (a[:, None] == b[None, :])
    want_ms = torch.where(pos, logits, 0.0).sum(1).detach()
    assert ((row2[:, 1].double() - want_ms).abs() / want_ms.abs().clamp_min(1)).max() < 1e-5
