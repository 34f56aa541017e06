"""Backend selection that can explain itself.

Every backend is an object (``flashnce.backends``) whose capabilities are data and whose
``not_supported_reasons(x, y, tspec) -> list[str]`` says why it refuses an input. All of them,
and the compiled extension and Triton kernels behind them, are loaded once, when this module is
imported (``import flashnce``): ``torch.compile`` cannot trace an import inside a call.

``backend="auto"`` walks ``AUTO_PRIORITY`` and takes the first backend that accepts (and lets
itself be picked automatically: the Triton interpreter never is); a named backend that refuses
raises one ``ValueError`` listing its reasons. ``FLASHNCE_BACKEND`` overrides ``"auto"`` and is
read on every call. There is no silent fallback to a materialising path: the ``reference``
backend (materialised N x M logits) runs only when asked for by name.
"""

from __future__ import annotations

import os
import warnings

from . import _extension
from .backends.base import Backend, TileSpec

_extension.load()  # never raises; the cpu / cuda backends report why if it failed

from .backends import compiled, dense, torch_blockwise, triton  # noqa: E402  (after load)

BACKENDS: dict[str, Backend] = {
    "triton": triton.BACKEND,
    "cuda": compiled.CUDA,
    "cpu": compiled.CPU,
    "torch": torch_blockwise.BACKEND,
    "reference": dense.BACKEND,
}
AUTO_PRIORITY = ("triton", "cuda", "cpu", "torch")
BACKEND_NAMES = ("auto", *BACKENDS)
ENV_OVERRIDE = "FLASHNCE_BACKEND"


def get_backend(name: str) -> Backend:
    """The backend object for a backend name (not 'auto')."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {name!r}")
    return BACKENDS[name]


def check_backend_name(backend) -> str:
    if not isinstance(backend, str) or backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {list(BACKEND_NAMES)}, got {backend!r}")
    return backend


def select_backend(backend: str, x, y, tspec: TileSpec) -> Backend:
    """Resolve a backend name to the Backend object that will run (x, y, tspec)."""
    if backend == "auto":
        backend = os.environ.get(ENV_OVERRIDE, "auto") or "auto"
        if backend not in BACKEND_NAMES:
            raise ValueError(f"{ENV_OVERRIDE}={backend!r}: expected one of {list(BACKEND_NAMES)}")
    if backend != "auto":
        impl = get_backend(backend)
        reasons = impl.not_supported_reasons(x, y, tspec)
        if reasons:
            raise ValueError(f"backend={backend!r} cannot run these inputs: " + "; ".join(reasons))
        return impl
    refusals = []
    for name in AUTO_PRIORITY:
        impl = BACKENDS[name]
        if not impl.auto_candidate(x):
            continue
        reasons = impl.not_supported_reasons(x, y, tspec)
        if not reasons:
            if name == "torch":
                _warn_slow_fallback(x, refusals)
            return impl
        refusals.append(f"{name}: " + "; ".join(reasons))
    raise ValueError("no backend accepts these inputs:\n  " + "\n  ".join(refusals))


_warned: set = set()


def _warn_slow_fallback(x, refusals) -> None:
    """auto fell through to the pure-PyTorch walk although a compiled kernel exists for this
    device: usually a build without the extension. Say so once per process, with the fix."""
    why = BACKENDS["cpu" if x.device.type == "cpu" else "cuda"].unavailable()
    if x.device.type not in ("cpu", "cuda") or why is None or x.device.type in _warned:
        return
    _warned.add(x.device.type)
    warnings.warn(
        f"flashnce: backend='auto' is running the pure-PyTorch tile walk on "
        f"{x.device.type} tensors, many times slower than the compiled kernel, because: "
        f"{why}. Pass backend='torch' to silence this warning.", RuntimeWarning, stacklevel=4)


def explain(x, y, tspec: TileSpec) -> dict[str, list[str]]:
    """Every backend's reasons for refusing (x, y, tspec); an empty list means it accepts."""
    return {name: impl.not_supported_reasons(x, y, tspec) for name, impl in BACKENDS.items()}
