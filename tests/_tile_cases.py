"""Tile-op problems shared by the op-level tests: relation cases and random inputs per kind.

``relation_case(name, n, m, g)`` builds one of ``RELATION_CASES`` (none, self skips with
offsets, diagonal / targets / labels / csr relations with and without skipped positives,
row-only columns; the csr cases include a fully skipped row), ``make_problem`` the operands,
per-row scalars (from the geometry prologue, as the GEMM sees the operands), theta, TileSpec
and upstream gradients, and ``oracle`` the float64 dense statistics and gradients.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from flashnce.backends.base import TileSpec
from flashnce.backends.dense import dense_tile_stat
from flashnce.core import spec
from flashnce.core.numerics import clamp_kappa, compute_dtype
from flashnce.core.relation import Relation
from flashnce.geometry import GEOMETRIES

KIND_GEOMETRY = {"dot": "dot", "sqeuclidean": "sqeuclidean", "euclidean": "euclidean",
                 "hyperbolic": "lorentz", "cosine": "cosine"}


def _csr(n, m, g, skip_self=False):
    """A random per-row column set with both roles, sorted within rows; row 0 lists every
    column as skipped (a fully skipped row), and every row skips column min(1, m - 1) (a
    fully skipped column)."""
    rows_cols, rows_roles, indptr = [], [], [0]
    full_col = min(1, m - 1)
    for i in range(n):
        if i == 0:
            cols = torch.arange(m)
            roles = torch.full((m,), spec.ROLE_SKIP)
        else:
            k = int(torch.randint(0, min(m, 4) + 1, (1,), generator=g))
            cols = torch.randperm(m, generator=g)[:k]
            roles = torch.randint(0, 2, (k,), generator=g)
            roles = roles[cols != full_col]
            cols = torch.cat([cols[cols != full_col], torch.tensor([full_col])])
            roles = torch.cat([roles, torch.tensor([spec.ROLE_SKIP])])
            cols, order = cols.sort()
            roles = roles[order]
        rows_cols.append(cols)
        rows_roles.append(roles)
        indptr.append(indptr[-1] + len(cols))
    return Relation.csr(torch.tensor(indptr), torch.cat(rows_cols).long(),
                        torch.cat(rows_roles).long(), m, skip_self=skip_self)


def relation_case(name, n, m, g):
    if name == "none":
        return Relation.none()
    if name == "self_far":  # an offset far outside int32: no pair is a self pair
        return Relation.none(skip_self=True, diag_offset=-(2**62))
    if name.startswith("self"):  # self0 / self+3 / self-2
        return Relation.none(skip_self=True, diag_offset=int(name[4:]))
    if name == "diagonal_skip_self":  # positives j = i - 2 and self pairs j = i - 2: one set
        return Relation.diagonal(diag_offset=-2, skip_positives=True, skip_self=True)
    if name == "targets_skip_self":  # two skips per row: (i, t_i) and (i, i + 3)
        return Relation.targets(torch.randint(0, m, (n,), generator=g), skip_positives=True,
                                skip_self=True, diag_offset=3)
    if name == "diagonal":  # positives kept (masked_sum sums them): j = i + 1
        return Relation.diagonal(diag_offset=1)
    if name == "targets":
        return Relation.targets(torch.randint(0, m, (n,), generator=g))
    if name == "labels_rows":  # SupCon's shape: label positives, self skipped, no column stat
        lab = torch.randint(0, 3, (max(n, m),), generator=g)
        return Relation.labels(lab[:n], lab[:m], skip_self=True, cols_both=0)
    if name == "diagonal_skip":
        return Relation.diagonal(diag_offset=1, skip_positives=True)
    if name == "targets_skip":
        # Column 0 is every row's target when m == 1: a fully skipped column elsewhere.
        return Relation.targets(torch.randint(0, m, (n,), generator=g), skip_positives=True)
    if name == "labels_self":
        lab = torch.randint(0, 3, (max(n, m),), generator=g)
        return Relation.labels(lab[:n], lab[:m], skip_self=True)
    if name == "labels_skip":
        return Relation.labels(torch.randint(0, 3, (n,), generator=g),
                               torch.randint(0, 3, (m,), generator=g), skip_positives=True)
    if name == "csr":
        return _csr(n, m, g)
    if name == "csr_self":
        return _csr(n, m, g, skip_self=True)
    if name == "row_only":
        return Relation.none(cols_both=max(m // 2, 0))
    if name == "row_only_self":
        return Relation.none(skip_self=True, cols_both=m - 1)
    raise AssertionError(name)


RELATION_CASES = ("none", "self0", "self+3", "self-2", "self_far", "diagonal", "targets",
                  "labels_rows", "diagonal_skip",
                  "diagonal_skip_self", "targets_skip", "targets_skip_self", "labels_self",
                  "labels_skip", "csr", "csr_self", "row_only", "row_only_self")
CASE_RELATION = {c: ("none" if c.startswith(("self", "row_only")) else c.split("_")[0])
                 for c in RELATION_CASES}
def make_problem(kind, case, dtype, shape, device="cpu", seed=0, stat="lse"):
    n, m, d = shape
    g = torch.Generator().manual_seed(seed)
    geo = GEOMETRIES[KIND_GEOMETRY[kind]]
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64)
    if kind in ("dot", "sqeuclidean", "euclidean"):
        x, y = x / d**0.5, y / d**0.5
    if kind == "hyperbolic":
        x, y = x * 1.5 / d**0.5, y * 1.5 / d**0.5
    if d >= 8 and n > 2 and m > 2:  # an exact duplicate pair: coincident points (clamps)
        y[1] = x[1]
    x, y = x.to(dtype), y.to(dtype)
    cd = compute_dtype(dtype)
    curv = torch.tensor(0.8, dtype=cd)

    def scalars(t):
        q = t.to(torch.float64).square().sum(-1)
        return geo.row_scalars(q, curv.double(), False).to(cd)

    k = 1 / curv.sqrt() if geo.uses_curvature else torch.ones((), dtype=cd)
    theta = torch.stack([torch.tensor(1.7, dtype=cd), k.to(cd), torch.tensor(0.3, dtype=cd)])
    rel = relation_case(case, n, m, g)
    # Upstream gradients of the stat's state ([n] or [n, width]).
    g_row = torch.randn(spec.state_shape(stat, n), generator=g, dtype=torch.float64).to(cd)
    g_col = torch.randn(spec.state_shape(stat, rel.m0(m)), generator=g,
                        dtype=torch.float64).to(cd)
    dev = lambda t: t.to(device)  # noqa: E731
    rel = replace(rel, tensors=tuple(dev(t) for t in rel.tensors))
    tspec = TileSpec(kind, stat, rel, clamp_kappa(dtype))
    return (dev(x), dev(y), dev(scalars(x)), dev(scalars(y)), dev(theta), tspec,
            dev(g_row), dev(g_col))


def oracle(x, y, alpha, beta, theta, tspec, g_row, g_col):
    """float64 stats and gradients of sum(row * g_row) + sum(col * g_col)."""
    ins = [t.detach().cpu().double().requires_grad_() for t in (x, y, alpha, beta, theta)]
    rel = replace(tspec.relation, tensors=tuple(t.cpu() for t in tspec.relation.tensors))
    row, col = dense_tile_stat(*ins, rel, tspec.kind, tspec.stat,
                               1e-14 if x.dtype == torch.float64 else tspec.kappa)
    if not spec.STAT_INFO[tspec.stat]["has_backward"]:
        return row.detach(), col.detach(), None
    fin = lambda s: torch.where(torch.isfinite(s), s, 0.0)  # noqa: E731
    total = (fin(row) * g_row.cpu().double()).sum() + (fin(col) * g_col.cpu().double()).sum()
    grads = torch.autograd.grad(total, ins, allow_unused=True)
    grads = [torch.zeros_like(t) if gr is None else gr for t, gr in zip(ins, grads)]
    return row.detach(), col.detach(), grads


# Max-norm relative tolerances per input dtype: (statistics, gradients). 16-bit inputs are
# exact in the fp32 GEMM; what remains is the fp32 epilogue and the rounding of dX / dY.
TOL = {torch.float64: (1e-10, 1e-9), torch.float32: (2e-5, 2e-4),
       torch.bfloat16: (2e-4, 3e-2), torch.float16: (2e-4, 1e-2)}


def check_stat(name, got, want, tol):
    """Same -inf pattern (fully skipped rows / columns), then max error <= tol x scale."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    got = got.detach().cpu().double()
    inf = torch.isinf(want)
    assert torch.equal(torch.isinf(got), inf) and bool((got[inf] == want[inf]).all()), (
        f"{name}: -inf pattern differs: got {got[inf | torch.isinf(got)]}")
    if (~inf).any():
        err = (got[~inf] - want[~inf]).abs().max().item()
        scale = max(want[~inf].abs().max().item(), 1.0)
        assert err <= tol * scale, f"{name}: max error {err:.3e} > {tol:.1e} x {scale:.3g}"


def check_grad(name, got, want, tol):
    """Finite, and max-norm relative error <= tol (floor 1e-3 on the scale)."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    got = got.detach().cpu().double()
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    if want.numel() == 0:
        return
    scale = max(want.abs().max().item(), 1e-3)
    err = (got - want).abs().max().item()
    assert err <= tol * scale, f"{name}: max-norm relative error {err / scale:.3e} > {tol:.1e}"


def check_forward_grad(forward_grad, problem):
    """forward_grad(x, y, alpha, beta, theta, tspec) -- the one-pass forward of a stat with a
    local G -- against the oracle's stats and its gradients for g_row = 1, g_col = 0."""
    x, y, alpha, beta, theta, tspec, g_row, g_col = problem
    row, col, *grads = forward_grad(x, y, alpha, beta, theta, tspec)
    want_row, want_col, want_grads = oracle(x, y, alpha, beta, theta, tspec,
                                            torch.ones_like(g_row), torch.zeros_like(g_col))
    t_stat, t_grad = TOL[x.dtype]
    check_stat("row_stat", row, want_row, t_stat)
    check_stat("col_stat", col, want_col, t_stat)
    assert grads[0].dtype == x.dtype and grads[1].dtype == x.dtype
    for name, got, want in zip(("dx", "dy", "d_alpha", "d_beta", "d_theta"), grads, want_grads):
        check_grad(f"one-pass {name}", got, want, t_grad)


def check_forward_only(forward, problem):
    """A stat without a backward (``count``): both statistics equal the float64 dense oracle's
    exactly (ranks are integers; -1 for rows / columns without a positive), in the compute
    dtype on x's device."""
    x, y, alpha, beta, theta, tspec, g_row, g_col = problem
    row, col = forward(x, y, alpha, beta, theta, tspec)
    assert row.device == x.device and row.dtype == compute_dtype(x.dtype)
    assert col.dtype == compute_dtype(x.dtype)
    want_row, want_col, _ = oracle(x, y, alpha, beta, theta, tspec, g_row, g_col)
    for name, got, want in (("row_stat", row, want_row), ("col_stat", col, want_col)):
        got = got.cpu().double()
        assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)}"
        bad = (got != want).nonzero().flatten()[:5].tolist()
        assert not bad, f"{name}: differs at {bad}: {got[bad].tolist()} != {want[bad].tolist()}"


def check_against_oracle(forward, backward, problem):
    """forward(x, y, alpha, beta, theta, tspec) / backward(..., row, col, g_row, g_col) -- a
    backend's raw pair or the ops -- against the float64 dense oracle: both statistics, their
    dtypes and device, and every gradient."""
    x, y, alpha, beta, theta, tspec, g_row, g_col = problem
    dtype = x.dtype
    row, col = forward(x, y, alpha, beta, theta, tspec)
    assert row.device == x.device and row.dtype == compute_dtype(dtype)
    assert col.dtype == compute_dtype(dtype)
    want_row, want_col, want_grads = oracle(x, y, alpha, beta, theta, tspec, g_row, g_col)
    t_stat, t_grad = TOL[dtype]
    check_stat("row_stat", row, want_row, t_stat)
    check_stat("col_stat", col, want_col, t_stat)
    grads = backward(x, y, alpha, beta, theta, tspec, row, col, g_row, g_col)
    assert grads[0].dtype == dtype and grads[1].dtype == dtype
    assert grads[4].shape == (spec.NUM_THETA,) and grads[4].dtype == compute_dtype(dtype)
    for name, got, want in zip(("dx", "dy", "d_alpha", "d_beta", "d_theta"), grads, want_grads):
        check_grad(name, got, want, t_grad)
