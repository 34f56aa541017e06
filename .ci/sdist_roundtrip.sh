#!/usr/bin/env bash
# The sdist round trip: build the source distribution, install it into a fresh virtualenv
# (against the same torch, no build isolation, as the README says), and run a smoke test of
# the compiled cpu backend from outside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m pip install --quiet build wheel
python -m build --sdist --no-isolation --outdir "$work/dist" . > "$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; exit 1; }
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/pip" install --quiet torch==2.13.0 numpy ninja setuptools wheel
MAX_JOBS=2 "$work/venv/bin/pip" install --quiet --no-build-isolation "$work"/dist/flashnce-*.tar.gz
cd "$work"
"$work/venv/bin/python" - <<'PY'
import torch, flashnce
from flashnce import dispatch
assert "site-packages" in flashnce.__file__, flashnce.__file__
assert dispatch.BACKENDS["cpu"].unavailable() is None, dispatch.BACKENDS["cpu"].unavailable()
x = torch.randn(64, 16, dtype=torch.float64, requires_grad=True)
y = torch.randn(64, 16, dtype=torch.float64, requires_grad=True)
for geometry in ("cosine", "lorentz"):
    loss = flashnce.infonce(x, y, geometry=geometry, backend="cpu")
    ref = flashnce.reference_infonce(x, y, geometry=geometry)
    assert abs(loss.item() - ref.item()) < 1e-10, (geometry, loss.item(), ref.item())
    loss.backward()
print("sdist round trip: installed", flashnce.__file__, "cpu backend OK")
PY
