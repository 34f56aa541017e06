"""Backend selection that can explain itself.

Each backend lives in its own module under ``flashnce.backends`` and exposes ``BACKEND``, an
object with ``not_supported_reasons(x, y, spec) -> list[str]``. ``backend="auto"`` walks
``AUTO_PRIORITY`` and takes the first backend with no reasons; a named backend that refuses
raises one ``ValueError`` listing its reasons. ``FLASHNCE_BACKEND`` overrides ``"auto"`` and is
read on every call, never at import. There is no silent fallback to a materialising path: the
``reference`` backend runs only when asked for by name.
"""

from __future__ import annotations

import importlib
import os

from .backends.base import Backend

# name -> module path; modules are imported on first use so optional dependencies stay optional.
_BACKEND_MODULES = {
    "triton": "flashnce.backends.triton",
    "cuda": "flashnce.backends.cuda",
    "cpu": "flashnce.backends.cpu",
    "torch": "flashnce.backends.torch_blockwise",
}
AUTO_PRIORITY = ("triton", "cuda", "cpu", "torch")
BACKEND_NAMES = ("auto", "reference", *_BACKEND_MODULES)
ENV_OVERRIDE = "FLASHNCE_BACKEND"

_loaded: dict[str, Backend] = {}


class _Unavailable(Backend):
    """Stands in for a backend whose module cannot be imported; it refuses every input."""

    def __init__(self, name: str, why: str):
        self.name, self._why = name, why

    def not_supported_reasons(self, x, y, spec):
        return [self._why]


def get_backend(name: str) -> Backend:
    """The backend object for a kernel backend name (not 'auto' or 'reference')."""
    if name not in _loaded:
        try:
            module = importlib.import_module(_BACKEND_MODULES[name])
            _loaded[name] = module.BACKEND
        except ImportError as exc:
            _loaded[name] = _Unavailable(name, f"backend module could not be imported: {exc}")
    return _loaded[name]


def _load_all() -> None:
    """Import every backend module now, at ``import flashnce``, not inside a call: the modules
    are light (optional dependencies such as triton are imported lazily by the backend), and
    ``torch.compile`` cannot trace ``importlib`` inside ``infonce``."""
    from . import _extension

    _extension.load()  # never raises; the cpu backend reports why if it failed
    for name in _BACKEND_MODULES:
        get_backend(name)


def check_backend_name(backend) -> str:
    if not isinstance(backend, str) or backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {list(BACKEND_NAMES)}, got {backend!r}")
    return backend


def select_backend(backend: str, x, y, spec):
    """Resolve a backend name to a Backend object, or the string 'reference'."""
    if backend == "auto":
        backend = os.environ.get(ENV_OVERRIDE, "auto") or "auto"
        if backend not in BACKEND_NAMES:
            raise ValueError(f"{ENV_OVERRIDE}={backend!r}: expected one of {list(BACKEND_NAMES)}")
    if backend == "reference":
        return "reference"
    if backend != "auto":
        impl = get_backend(backend)
        reasons = impl.not_supported_reasons(x, y, spec)
        if reasons:
            raise ValueError(f"backend={backend!r} cannot run these inputs: " + "; ".join(reasons))
        return impl
    refusals = []
    for name in AUTO_PRIORITY:
        impl = get_backend(name)
        reasons = impl.not_supported_reasons(x, y, spec)
        if not reasons:
            return impl
        refusals.append(f"{name}: " + "; ".join(reasons))
    raise ValueError("no backend accepts these inputs:\n  " + "\n  ".join(refusals))


def explain(x, y, spec) -> dict[str, list[str]]:
    """Every kernel backend's reasons for refusing (x, y, spec); empty list = would accept."""
    return {name: get_backend(name).not_supported_reasons(x, y, spec) for name in AUTO_PRIORITY}


_load_all()
