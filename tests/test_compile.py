"""torch.compile(fullgraph=True) of flashnce.infonce on the very first call of a process.

A fresh interpreter is the point: backend modules and the extension must already be loaded by
``import flashnce``, because dynamo cannot trace ``importlib`` inside the call.
"""

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import torch, flashnce
geometry, backend, mode = {geometry!r}, {backend!r}, {mode!r}
x = torch.randn(40, 12, dtype=torch.float64, requires_grad=True)
y = torch.randn(40, 12, dtype=torch.float64, requires_grad=True)
# one_way: x -> y with repeated targets (the positives' dY is a scatter-add)
kw = dict(symmetric=False, targets=torch.arange(40) % 7) if mode == "one_way" else {{}}
# same_set: one tensor as both x and y (dynamo refuses a tensor passed twice to a Function)
pair = (lambda a, b: (a, a)) if mode == "same_set" else (lambda a, b: (a, b))
fn = torch.compile(
    lambda a, b: flashnce.infonce(*pair(a, b), geometry=geometry, scale=3.0, backend=backend,
                                  **kw),
    fullgraph=True, backend="aot_eager")
loss = fn(x, y)
gx, gy = torch.autograd.grad(loss, [x, y], allow_unused=True)
xr, yr = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
ref = flashnce.reference_infonce(*pair(xr, yr), geometry=geometry, scale=3.0, **kw)
rgx, rgy = torch.autograd.grad(ref, [xr, yr], allow_unused=True)
if mode == "same_set":
    assert gy is None and rgy is None
    gy, rgy = torch.zeros(1), torch.zeros(1)
assert abs(loss.item() - ref.item()) < 1e-10, (loss.item(), ref.item())
assert torch.allclose(gx, rgx, atol=1e-10) and torch.allclose(gy, rgy, atol=1e-10)
print("OK")
"""


@pytest.mark.parametrize("geometry, mode", [("cosine", "symmetric"), ("lorentz", "symmetric"),
                                            ("lorentz", "one_way"), ("cosine", "same_set")])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_fullgraph_compile_first_call(geometry, mode, backend):
    script = SCRIPT.format(geometry=geometry, backend=backend, mode=mode)
    proc = subprocess.run([sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


# The first compiled call of a process, for the paths a GPU user takes, simulated here:
# backend="triton" (kernels under the interpreter, through the public API), and a CUDA build
# of torch (torch.version.cuda set before import: dispatch must not import anything then).
FIRST_CALL = r"""
import os, sys, torch
{prelude}
import flashnce
x = torch.randn(24, 16, requires_grad=True)
y = torch.randn(24, 16, requires_grad=True)
fn = torch.compile(lambda a, b: flashnce.infonce(a, b, geometry={geometry!r}, scale=3.0,
                                                 backend={backend!r}),
                   fullgraph=True, backend="aot_eager")
loss = fn(x, y)
gx, gy = torch.autograd.grad(loss, [x, y])
ref = flashnce.infonce(x, y, geometry={geometry!r}, scale=3.0, backend="torch")
rgx, rgy = torch.autograd.grad(ref, [x, y])
assert abs(loss.item() - ref.item()) < 1e-5, (loss.item(), ref.item())
assert torch.allclose(gx, rgx, atol=1e-5) and torch.allclose(gy, rgy, atol=1e-5)
print("OK")
"""
SIMULATED_CUDA = 'torch.version.cuda = "12.8"  # a CUDA build of torch, as a GPU user has'


@pytest.mark.parametrize("geometry", ["cosine", "lorentz"])
@pytest.mark.parametrize("mode", ["triton_interpreter", "simulated_cuda_build"])
def test_first_call_compiles_on_gpu_paths(mode, geometry):
    env = dict(os.environ)
    if mode == "triton_interpreter":
        pytest.importorskip("triton", reason="triton is not installed")
        env["TRITON_INTERPRET"] = "1"
        prelude, backend = "", "triton"
    else:
        env.pop("TRITON_INTERPRET", None)
        prelude, backend = SIMULATED_CUDA, "auto"
    script = FIRST_CALL.format(prelude=prelude, geometry=geometry, backend=backend)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
