"""Loads the compiled extension (``flashnce._C`` and the best CPU kernel variant).

``load()`` imports the op schemas (``flashnce._C``), then the CPU kernel built for the most
capable ISA this CPU supports (``flashnce._C_cpu_avx512``, else ``_C_cpu_avx2``), then registers
the Python side of the ops (fake functions, autograd; ``flashnce.ops``). It never raises:
``why_unavailable()`` says what went wrong and how to build, for the ``cpu`` backend's refusal.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

BUILD_HINT = ("build it with `pip install ninja && pip install --no-build-isolation -e .` "
              "from the flashnce checkout (needs a C++17 compiler and the installed torch)")

# Kernel variants by preference, with the torch CPU capabilities that can run them.
_CPU_VARIANTS = (
    ("_C_cpu_avx512", {"AVX512", "AMX", "AVX512_BF16", "AVX512_VNNI", "AVX512_FP16"}),
    ("_C_cpu_avx2", None),  # None: any x86-64 with AVX2
)

_state: dict = {}


def _cpu_capability() -> str:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch: assume the baseline
        return "DEFAULT"


def _load() -> tuple[str | None, str | None]:
    """-> (loaded cpu variant or None, reason it failed or None)."""
    try:
        importlib.import_module("flashnce._C")
    except ImportError as exc:
        return None, f"the compiled extension flashnce._C is not available ({exc}); {BUILD_HINT}"
    cap = _cpu_capability()
    errors = []
    for name, caps in _CPU_VARIANTS:
        if caps is not None and cap not in caps:
            continue
        if caps is None and cap == "DEFAULT":
            errors.append(f"{name}: this CPU has no AVX2 (torch reports {cap})")
            continue
        if importlib.util.find_spec(f"flashnce.{name}") is None:
            errors.append(f"{name}: not built")
            continue
        # No fallback after a failed import: its static initialisers may have registered ops.
        try:
            importlib.import_module(f"flashnce.{name}")
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            break
        from . import ops

        ops.register_compiled_ops()
        return name, None
    return None, ("no CPU kernel of the compiled extension could be loaded ("
                  + "; ".join(errors) + f"); {BUILD_HINT}")


def load() -> bool:
    """Import the extension once; True when the CPU kernel is registered."""
    if "variant" not in _state:
        _state["variant"], _state["why"] = _load()
    return _state["variant"] is not None


def cpu_variant() -> str | None:
    """Name of the loaded CPU kernel module (e.g. '_C_cpu_avx512'), or None."""
    load()
    return _state["variant"]


def why_unavailable() -> str | None:
    """Why the CPU kernel is not available (with how to build it), or None if it is."""
    load()
    return _state["why"]
