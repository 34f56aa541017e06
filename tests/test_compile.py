"""torch.compile(fullgraph=True) of flashnce.infonce on the very first call of a process.

A fresh interpreter is the point: backend modules and the extension must already be loaded by
``import flashnce``, because dynamo cannot trace ``importlib`` inside the call.
"""

import subprocess
import sys

import pytest

SCRIPT = r"""
import torch, flashnce
geometry, backend, one_way = {geometry!r}, {backend!r}, {one_way!r}
x = torch.randn(40, 12, dtype=torch.float64, requires_grad=True)
y = torch.randn(40, 12, dtype=torch.float64, requires_grad=True)
# one_way: x -> y with repeated targets (the positives' dY is a scatter-add)
kw = dict(symmetric=False, targets=torch.arange(40) % 7) if one_way else {{}}
fn = torch.compile(
    lambda a, b: flashnce.infonce(a, b, geometry=geometry, scale=3.0, backend=backend, **kw),
    fullgraph=True, backend="aot_eager")
loss = fn(x, y)
gx, gy = torch.autograd.grad(loss, [x, y])
xr, yr = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
ref = flashnce.reference_infonce(xr, yr, geometry=geometry, scale=3.0, **kw)
rgx, rgy = torch.autograd.grad(ref, [xr, yr])
assert abs(loss.item() - ref.item()) < 1e-10, (loss.item(), ref.item())
assert torch.allclose(gx, rgx, atol=1e-10) and torch.allclose(gy, rgy, atol=1e-10)
print("OK")
"""


@pytest.mark.parametrize("geometry, one_way", [("cosine", False), ("lorentz", False),
                                               ("lorentz", True)])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_fullgraph_compile_first_call(geometry, one_way, backend):
    script = SCRIPT.format(geometry=geometry, backend=backend, one_way=one_way)
    proc = subprocess.run([sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
