"""Every bad input gets a ValueError / TypeError naming the argument, before any kernel runs."""

import os
import subprocess
import sys

import pytest
import torch

import flashnce

X = torch.randn(6, 4)
Y = torch.randn(6, 4)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(x=X.numpy()), TypeError, "x must be a torch.Tensor"),
        (dict(x=X[0]), ValueError, r"x must be 2-D"),
        (dict(y=Y[None]), ValueError, r"y must be 2-D"),
        (dict(x=X.int(), y=Y.int()), TypeError, "x must be float32"),
        (dict(y=Y.double()), TypeError, "same dtype"),
        (dict(x=torch.randn(6, 5)), ValueError, "same feature dim"),
        (dict(x=torch.randn(0, 4), y=torch.randn(0, 4)), ValueError, "x is empty"),
        (dict(x=torch.randn(6, 0), y=torch.randn(6, 0)), ValueError, "x is empty"),
        (dict(y=torch.randn(6, 4, device="meta")), ValueError, "same device"),
        (dict(x=X.clone().index_fill_(0, torch.tensor([2]), float("nan"))), ValueError,
         "x contains NaN"),
        (dict(y=Y.clone().index_fill_(0, torch.tensor([1]), float("inf"))), ValueError,
         "y contains NaN or infinite"),
        (dict(geometry="hyperbolic"), ValueError, "geometry must be one of"),
        (dict(geometry=None), ValueError, "geometry must be one of"),
        (dict(backend="gpu"), ValueError, "backend must be one of"),
        (dict(curvature=0.0, geometry="lorentz"), ValueError, "curvature must be > 0"),
        (dict(curvature=-1.0, geometry="poincare"), ValueError, "curvature must be > 0"),
        (dict(curvature=torch.tensor(-0.5), geometry="lorentz"), ValueError,
         "curvature must be > 0"),
        (dict(curvature=torch.tensor([1.0, 2.0])), ValueError, "curvature must have exactly one"),
        (dict(curvature="1"), TypeError, "curvature must be a float"),
        (dict(scale=float("nan")), ValueError, "scale must be finite"),
        (dict(scale=torch.tensor(float("inf"))), ValueError, "scale must be finite"),
        (dict(scale=torch.tensor(3)), TypeError, "scale must be a floating-point"),
        (dict(scale=True), TypeError, "scale must be a float"),
        (dict(on_manifold=True, geometry="cosine"), ValueError, "only meaningful for hyperbolic"),
        (dict(on_manifold=1, geometry="lorentz"), TypeError, "on_manifold must be a bool"),
        (dict(on_manifold=True, geometry="poincare", x=torch.full((6, 4), 0.6)), ValueError,
         "x has points outside the Poincare ball"),
        (dict(on_manifold=True, geometry="poincare", curvature=4.0, x=torch.full((6, 4), 0.1),
              y=torch.full((6, 4), 0.3)),
         ValueError, "y has points outside the Poincare ball"),
        (dict(y=torch.randn(7, 4)), ValueError, "symmetric InfoNCE needs as many"),
        (dict(targets=torch.arange(6)), ValueError, "targets are only used with symmetric=False"),
        (dict(symmetric=False, x=torch.randn(8, 4)), ValueError, "needs N <= M"),
        (dict(symmetric=False, targets=torch.arange(6).int()), TypeError, "targets must be int64"),
        (dict(symmetric=False, targets=[0, 1, 2, 3, 4, 5]), TypeError, "targets must be a LongTensor"),
        (dict(symmetric=False, targets=torch.arange(5)), ValueError, r"targets must have shape \(6,\)"),
        (dict(symmetric=False, targets=torch.tensor([0, 1, 2, 3, 4, 6])), ValueError,
         r"targets must be column indices in \[0, 6\)"),
        (dict(symmetric=False, targets=torch.tensor([0, 1, 2, 3, 4, -1])), ValueError,
         "targets must be column indices"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(symmetric="yes"), TypeError, "symmetric must be a bool"),
    ],
)
def test_infonce_rejects(kwargs, exc, match):
    kw = dict(kwargs)
    x, y = kw.pop("x", X), kw.pop("y", Y)
    with pytest.raises(exc, match=match):
        flashnce.infonce(x, y, backend=kw.pop("backend", "torch"), **kw)


def test_pairwise_lse_rejects():
    with pytest.raises(ValueError, match="exclude_diagonal=True needs at least 2 columns"):
        flashnce.pairwise_lse(X, Y[:1], exclude_diagonal=True)
    with pytest.raises(TypeError, match="exclude_diagonal must be a bool"):
        flashnce.pairwise_lse(X, Y, exclude_diagonal=None)
    with pytest.raises(ValueError, match="x must be 2-D"):
        flashnce.pairwise_lse(X[0], Y)


def test_named_backend_that_refuses_lists_its_reasons():
    # Triton takes no float64; the error names the backend and says why.
    with pytest.raises(ValueError, match=r"backend='triton' cannot run these inputs: .*float64"):
        flashnce.infonce(X.double(), Y.double(), backend="triton")


def test_triton_refuses_cpu_tensors_without_the_interpreter():
    """In a process whose kernels were loaded without TRITON_INTERPRET=1, CPU tensors are
    refused with the way to enable the interpreter (decided at import, hence a subprocess)."""
    code = ("import torch, flashnce\n"
            "try:\n"
            "    flashnce.infonce(torch.randn(4, 3), torch.randn(4, 3), backend='triton')\n"
            "except ValueError as e:\n"
            "    assert 'TRITON_INTERPRET=1' in str(e) or 'triton' in str(e), e\n"
            "    print('refused:', e)\n"
            "else:\n"
            "    raise SystemExit('triton ran CPU tensors without the interpreter')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0 and "refused" in out.stdout, out.stderr[-3000:]


def test_env_override_is_read_per_call(monkeypatch):
    monkeypatch.setenv("FLASHNCE_BACKEND", "reference")
    ref = flashnce.infonce(X, Y)  # auto -> env -> reference
    monkeypatch.setenv("FLASHNCE_BACKEND", "torch")
    assert torch.allclose(flashnce.infonce(X, Y), ref, rtol=1e-5)
    monkeypatch.setenv("FLASHNCE_BACKEND", "nope")
    with pytest.raises(ValueError, match="FLASHNCE_BACKEND='nope'"):
        flashnce.infonce(X, Y)


def test_caller_tensors_untouched_by_validation():
    x, y = X.clone(), Y.clone()
    s = torch.tensor(2.0)
    flashnce.infonce(x, y, scale=s, backend="torch")
    assert torch.equal(x, X) and torch.equal(y, Y) and s.item() == 2.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("name", ["x", "y"])
def test_non_finite_features_rejected_in_every_dtype(name, value, dtype):
    """One bad entry anywhere (here the middle of the last row) is found, whatever its sign."""
    feats = {"x": X.to(dtype), "y": Y.to(dtype)}
    feats[name] = feats[name].clone()
    feats[name][-1, feats[name].shape[1] // 2] = value
    with pytest.raises(ValueError, match=f"{name} contains NaN or infinite"):
        flashnce.infonce(feats["x"], feats["y"], backend="torch")


def test_explain_backends_lists_every_backend():
    reasons = flashnce.explain_backends(X, Y, geometry="lorentz")
    assert set(reasons) == set(flashnce.dispatch.BACKENDS)
    assert reasons["torch"] == [] and reasons["reference"] == []
    assert any("CUDA" in r for r in reasons["cuda"]), reasons["cuda"]
    bad = flashnce.explain_backends(X.double(), Y.double())
    assert any("float64" in r for r in bad["triton"]), bad["triton"]
