"""torch.compile(fullgraph=True) of flashnce.infonce on the very first call of a process.

A fresh interpreter is the point: backend modules and the extension must already be loaded by
``import flashnce``, because dynamo cannot trace ``importlib`` inside the call.
"""

import subprocess
import sys

import pytest

SCRIPT = r"""
import torch, flashnce
geometry, backend = {geometry!r}, {backend!r}
x = torch.randn(40, 12, dtype=torch.float64, requires_grad=True)
y = torch.randn(40, 12, dtype=torch.float64, requires_grad=True)
fn = torch.compile(
    lambda a, b: flashnce.infonce(a, b, geometry=geometry, scale=3.0, backend=backend),
    fullgraph=True, backend="aot_eager")
loss = fn(x, y)
gx, gy = torch.autograd.grad(loss, [x, y])
xr, yr = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
ref = flashnce.reference_infonce(xr, yr, geometry=geometry, scale=3.0)
rgx, rgy = torch.autograd.grad(ref, [xr, yr])
assert abs(loss.item() - ref.item()) < 1e-10, (loss.item(), ref.item())
assert torch.allclose(gx, rgx, atol=1e-10) and torch.allclose(gy, rgy, atol=1e-10)
print("OK")
"""


@pytest.mark.parametrize("geometry", ["cosine", "lorentz"])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_fullgraph_compile_first_call(geometry, backend):
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(geometry=geometry, backend=backend)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
