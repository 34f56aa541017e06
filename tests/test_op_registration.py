"""The compiled op family's registration: autograd, fakes, opcheck, and the axis tables.

* float64 ``gradcheck`` of the C++ op through its registered autograd (``core.library``), for
  every kind on several relations, including d_theta (scale, 1/sqrt(c), bias);
* ``torch.library.opcheck`` of the forward and backward ops (schema, fakes, autograd
  registration) for every compiled op pair that runs here (C++ CPU; Triton under the
  interpreter);
* an unknown kind / stat / relation / flag, or a malformed options vector, is an error in
  every compiled op, never a default;
* the axis tables: csrc/flashnce/spec.h agrees with flashnce.core.spec, and the Triton
  kernels take their constants from it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from flashnce import dispatch
from flashnce.core import spec

from _tile_cases import make_problem

ROOT = Path(__file__).resolve().parents[1]
OP_BACKENDS = [name for name in ("cpu", "triton") if dispatch.BACKENDS[name].unavailable() is None]


def _ops(name):
    b = dispatch.BACKENDS[name]
    return getattr(torch.ops.flashnce, b.fwd_op_name), getattr(torch.ops.flashnce, b.bwd_op_name)


def _skip_unless(name):
    why = dispatch.BACKENDS[name].unavailable()
    if why is not None:
        print(f"backend {name!r} unavailable: {why}")
        pytest.skip(f"backend {name!r} unavailable: {why}")


@pytest.mark.parametrize("case", ["none", "self0", "targets_skip", "labels_self", "csr",
                                  "row_only"])
@pytest.mark.parametrize("kind", spec.KINDS)
def test_gradcheck_float64(kind, case):
    _skip_unless("cpu")
    fwd, _ = _ops("cpu")
    x, y, a, b, theta, tspec, _, _ = make_problem(kind, case, torch.float64, (6, 5, 4), seed=3)
    rel, opts = list(tspec.relation.tensors), tspec.options(y.shape[0])
    inputs = [t.clone().requires_grad_() for t in (x, y, a, b, theta)]

    def f(*t):
        row, col = fwd(*t, rel, opts, tspec.kappa)
        # -inf stats (fully skipped rows) are constant: keep them out of the check.
        return (torch.where(torch.isfinite(row), row, 0.0),
                torch.where(torch.isfinite(col), col, 0.0))

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("case", ["none", "self+3", "labels_skip", "csr", "row_only"])
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_opcheck(backend, case, requires_grad):
    _skip_unless(backend)
    fwd, bwd = _ops(backend)
    kinds = ("cosine", "hyperbolic") if backend == "triton" else spec.KINDS
    for kind in kinds:
        x, y, a, b, theta, tspec, g_row, g_col = make_problem(kind, case, torch.float32,
                                                              (7, 5, 16), seed=1)
        rel, opts = list(tspec.relation.tensors), tspec.options(y.shape[0])
        ins = [t.clone().requires_grad_(requires_grad) for t in (x, y, a, b, theta)]
        torch.library.opcheck(fwd.default, (*ins, rel, opts, tspec.kappa))
        row, col = fwd(x, y, a, b, theta, rel, opts, tspec.kappa)
        torch.library.opcheck(bwd.default, (x, y, a, b, theta, rel, opts, tspec.kappa, row, col,
                                            g_row, g_col))


@pytest.mark.parametrize("backend", OP_BACKENDS or ["cpu"])
def test_bad_options_raise(backend):
    _skip_unless(backend)
    fwd, _ = _ops(backend)
    x, y, a, b, theta, tspec, _, _ = make_problem("dot", "none", torch.float32, (4, 3, 16))
    opts = tspec.options(3)

    def bad(index, value):
        o = list(opts)
        o[index] = value
        return o

    for o in (bad(spec.OPT_KIND, len(spec.KINDS)), bad(spec.OPT_KIND, -1),
              bad(spec.OPT_STAT, len(spec.STATS)), bad(spec.OPT_RELATION, len(spec.RELATIONS)),
              bad(spec.OPT_FLAGS, 64), bad(spec.OPT_COLS_BOTH, 4), opts[:3]):
        with pytest.raises((RuntimeError, ValueError)):
            fwd(x, y, a, b, theta, [], o, tspec.kappa)
    # A relation whose index tensors are missing.
    with pytest.raises((RuntimeError, ValueError)):
        fwd(x, y, a, b, theta, [], bad(spec.OPT_RELATION, spec.relation_id("targets")),
            tspec.kappa)


def _spec_h():
    return (ROOT / "csrc" / "flashnce" / "spec.h").read_text()


def test_spec_header_matches_python():
    text = _spec_h()

    def enum_values(prefix):
        return {m.group(1): int(m.group(2))
                for m in re.finditer(rf"\b{prefix}(\w+) = (\d+)", text)}

    def snake(camel):
        return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()

    stats = enum_values("kStat")
    assert [snake(name) for name, _ in sorted(stats.items(), key=lambda kv: kv[1])] == list(
        spec.STATS)
    rels = enum_values("kRel")
    assert [name.lower() for name, _ in sorted(rels.items(), key=lambda kv: kv[1])] == list(
        spec.RELATIONS)
    counts = re.search(r"kRelationTensors\[kNumRelations\] = \{([^}]*)\}", text).group(1)
    assert [int(v) for v in counts.split(",")] == [len(spec.RELATION_TENSORS[r])
                                                   for r in spec.RELATIONS]
    for py, cpp in (("OPT_KIND", "kOptKind"), ("OPT_STAT", "kOptStat"),
                    ("OPT_RELATION", "kOptRelation"), ("OPT_FLAGS", "kOptFlags"),
                    ("OPT_DIAG_OFFSET", "kOptDiagOffset"), ("OPT_COLS_BOTH", "kOptColsBoth"),
                    ("NUM_OPTIONS", "kNumOptions"), ("THETA_SCALE", "kThetaScale"),
                    ("THETA_INV_SQRT_C", "kThetaInvSqrtC"), ("THETA_BIAS", "kThetaBias"),
                    ("NUM_THETA", "kNumTheta"), ("FLAG_SKIP_SELF", "kFlagSkipSelf"),
                    ("FLAG_SKIP_POSITIVES", "kFlagSkipPositives"),
                    ("FLAG_SAME_OPERAND", "kFlagSameOperand"), ("ROLE_SKIP", "kRoleSkip"),
                    ("ROLE_POSITIVE", "kRolePositive")):
        value = re.search(rf"\b{cpp} = (\d+)", text)
        assert value is not None and int(value.group(1)) == getattr(spec, py), cpp
    assert f"kNumStats = {len(spec.STATS)}" in text
    widths = re.search(r"kStatStateWidth\[kNumStats\] = \{([^}]*)\}", text).group(1)
    assert [int(v) for v in widths.split(",")] == [spec.STAT_INFO[s]["state_width"]
                                                   for s in spec.STATS]
    assert f"kNumRelations = {len(spec.RELATIONS)}" in text


def test_geometry_header_kinds_match_python():
    text = (ROOT / "csrc" / "flashnce" / "geometry.h").read_text()
    kinds = {m.group(1): int(m.group(2)) for m in re.finditer(r"\bk(\w+) = (\d+)", text)}
    names = {"Dot": "dot", "SqEuclidean": "sqeuclidean", "Euclidean": "euclidean",
             "Hyperbolic": "hyperbolic", "Cosine": "cosine"}
    assert {names[k]: v for k, v in kinds.items() if k in names} == {
        k: i for i, k in enumerate(spec.KINDS)}
    assert f"kNumEpilogueKinds = {len(spec.KINDS)}" in text


def test_triton_kernels_have_no_copy_of_the_tables():
    for path in (ROOT / "triton_kernels").glob("*.py"):
        text = path.read_text()
        assert "KIND_IDS = {" not in text and "NUM_ROW_SCALARS = {" not in text, path.name
