"""The tile op contract, one matrix for every backend, generated from declared capabilities.

For each backend that can run here (``flashnce.dispatch.BACKENDS``: torch, cpu, triton under
the interpreter, cuda on a GPU; reference is the oracle itself and is left out), every
(stat, kind, relation case, dtype, shape) the backend declares is compared with the float64 oracle
``flashnce.backends.dense.dense_tile_stat``: both statistics and every gradient
(dX, dY, d_alpha, d_beta, d_theta) of a random upstream (g_row, g_col). Relation cases cover
none, self skips with offsets, the diagonal / targets / labels / csr relations with and without
skipping their positives, row-only columns, and a fully skipped row and column (-inf stat,
zero gradient, no NaN). Stats with a local G (``pair_sum``) also check the one-pass
``forward_grad_raw`` against the oracle's gradients for g_row = 1, g_col = 0.

Backends are called through ``forward_raw`` / ``backward_raw``: the op pair itself, not
autograd (that is tested in test_op_registration.py). The Triton interpreter is slow, so it runs
the relation cases on two kinds and the kinds on two relation cases, in fp32 and bf16
(``_budget``); the other backends run the full product. A forward-only stat (``count``: exact
integer ranks, checked for equality) runs every kind x case in fp32 and the other dtypes and
shapes on the cases with positives; its backward is not run (it has none), and
``test_forward_only_stat_has_no_backward`` checks that each backend refuses it.
"""

from __future__ import annotations

import pytest
import torch

from flashnce import dispatch
from flashnce.core import spec

from _tile_cases import (CASE_RELATION, RELATION_CASES, check_against_oracle, check_forward_grad,
                         check_forward_only, make_problem)

SHAPES = ((1, 5, 3), (17, 23, 4), (70, 33, 48))
BIG_SHAPES = ((300, 700, 16), (600, 530, 8))  # cross the cpu (256 x 512), torch (512) tiles
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _budget(backend):
    """(stat, kind, case, dtype, shape) tuples this backend runs, from its declared
    capabilities: every stat it declares gets the same product."""
    return [(stat, *entry) for stat in spec.STATS if stat in backend.stats
            for entry in _budget_per_stat(backend, stat)]


def _budget_per_stat(backend, stat):
    """(kind, case, dtype, shape) tuples of one stat."""
    kinds = [k for k in spec.KINDS if k in backend.kinds]
    cases = [c for c in RELATION_CASES if CASE_RELATION[c] in backend.relations]
    dtypes = [d for d in DTYPES if d in backend.dtypes]
    out = []
    if not spec.STAT_INFO[stat]["has_backward"] and backend.name != "triton":
        # Forward only (count, cheap per case but many cases): every kind x case in fp32 on
        # one odd shape; the other dtypes, the other shapes and several tiles on the cases
        # that carry positives (the others are -1 everywhere).
        pos_cases = [c for c in ("diagonal", "targets", "labels_self", "csr") if c in cases]
        for k in kinds:
            out += [(k, c, torch.float32, SHAPES[1]) for c in cases]
            out += [(k, c, d, SHAPES[1]) for c in pos_cases for d in dtypes
                    if d != torch.float32]
            out += [(k, c, torch.float32, s) for c in pos_cases for s in (SHAPES[0], SHAPES[2])]
            if backend.name in ("cpu", "torch"):
                out += [(k, c, torch.float32, s) for c in pos_cases[::2] for s in BIG_SHAPES]
        return out
    if backend.name == "triton":  # interpreter: a covering subset
        for d in (torch.float32, torch.bfloat16):
            for c in cases:
                for k in ("cosine", "hyperbolic"):
                    out.append((k, c, d, (17, 23, 4)))
            for k in kinds:
                for c in ("none", "self0"):
                    out.append((k, c, d, (70, 33, 48)))
                    out.append((k, c, d, (1, 5, 3)))
        return out
    for k in kinds:
        for c in cases:
            for d in dtypes:
                # 16-bit inputs: one odd shape per case (the fp32 / fp64 runs cover shapes).
                for s in (SHAPES if d in (torch.float32, torch.float64) else SHAPES[1:2]):
                    out.append((k, c, d, s))
    if backend.name in ("cpu", "torch"):
        for k in kinds:
            for c in ("none", "self0", "labels_skip", "csr", "row_only"):
                for s in BIG_SHAPES:
                    out.append((k, c, torch.float32, s))
    return out


def _device(name: str) -> str:
    """cuda for the cuda backend, and for triton when its kernels are compiled (a GPU run
    with TRITON_INTERPRET=0, bench/gpu/validate.sh); cpu otherwise (the interpreter)."""
    from flashnce.backends import triton as triton_backend

    if name == "cuda" or (name == "triton" and not triton_backend.INTERPRETED):
        return "cuda"
    return "cpu"


def _available():
    out = []
    for name, backend in dispatch.BACKENDS.items():
        if name == "reference":  # it *is* the oracle here; test_backends checks it
            continue
        why = backend.unavailable()
        if why is None and _device(name) == "cuda" and not torch.cuda.is_available():
            why = "no CUDA device"
        out.append((name, backend, why))
    return out


PARAMS = []
for _name, _backend, _why in _available():
    if _why is not None:
        PARAMS.append(pytest.param(_name, None, marks=pytest.mark.skip(
            reason=f"backend {_name!r} unavailable: {_why}"), id=f"{_name}-unavailable"))
        continue
    for _st, _k, _c, _d, _s in _budget(_backend):
        PARAMS.append(pytest.param(
            _name, (_st, _k, _c, _d, _s),
            id=f"{_name}-{_st}-{_k}-{_c}-{str(_d)[6:]}-{_s[0]}x{_s[1]}x{_s[2]}"))


@pytest.mark.parametrize("backend_name, case", PARAMS)
def test_matches_dense_oracle(backend_name, case):
    stat, kind, rel_case, dtype, shape = case
    backend = dispatch.BACKENDS[backend_name]
    problem = make_problem(kind, rel_case, dtype, shape, device=_device(backend_name),
                           stat=stat)
    x, y, *_ = problem
    assert backend.not_supported_reasons(x, y, problem[5]) == []
    if not spec.STAT_INFO[stat]["has_backward"]:
        # Forward only (count: ranks are piecewise constant); its backward refusal is
        # tested once in test_forward_only_stat_has_no_backward.
        check_forward_only(backend.forward_raw, problem)
        return
    check_against_oracle(backend.forward_raw, backend.backward_raw, problem)
    if spec.STAT_INFO[stat]["local_grad"]:
        check_forward_grad(backend.forward_grad_raw, problem)


def test_matrix_covers_every_declared_capability():
    """Every backend that runs here is tested on each kind and relation it declares."""
    for name, backend, why in _available():
        if why is not None:
            continue
        budget = _budget(backend)
        assert {st for st, *_ in budget} == set(backend.stats), name
        assert {k for _, k, *_ in budget} == set(backend.kinds), name
        assert {CASE_RELATION[c] for _, _, c, *_ in budget} == set(backend.relations), name


@pytest.mark.parametrize("name", [n for n, b, why in _available() if why is None
                                  and "count" in b.stats])
def test_forward_only_stat_has_no_backward(name):
    """A backend declaring ``count`` refuses its backward with a clear error, not zeros."""
    backend = dispatch.BACKENDS[name]
    x, y, alpha, beta, theta, tspec, g_row, g_col = make_problem(
        "cosine", "diagonal", torch.float32, (5, 7, 4), device=_device(name), stat="count")
    row, col = backend.forward_raw(x, y, alpha, beta, theta, tspec)
    with pytest.raises((ValueError, RuntimeError), match="count"):
        backend.backward_raw(x, y, alpha, beta, theta, tspec, row, col, g_row, g_col)
