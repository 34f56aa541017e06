"""Loads the compiled extension once, at ``import flashnce``: schemas, CPU kernel, CUDA kernels.

``load()`` imports the op schemas (``flashnce._C``), then the CPU kernel built for the most
capable ISA this CPU supports (``flashnce._C_cpu_avx512``, else ``_C_cpu_avx2``), then -- on a
CUDA build of torch -- the CUDA kernels (``flashnce._C_cuda``), and registers the Python side
of the ops (fakes, autograd; ``flashnce.core.library``). It never raises: ``why_unavailable()``
and ``why_cuda_unavailable()`` say what went wrong and how to build, for the backends'
refusals. Everything is resolved here so that no ``importlib`` call happens inside a traced
region (``torch.compile`` cannot trace it).
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

BUILD_HINT = ("build it with `pip install ninja && pip install --no-build-isolation -e .` "
              "from the flashnce checkout (needs a C++17 compiler and the installed torch)")
CUDA_MODULE = "flashnce._C_cuda"

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


def _load_schemas() -> str | None:
    try:
        importlib.import_module("flashnce._C")
    except ImportError as exc:
        return f"the compiled extension flashnce._C is not available ({exc}); {BUILD_HINT}"
    if not hasattr(torch.ops.flashnce, "tile_fwd"):
        return ("flashnce._C defines no flashnce::tile_fwd op (a stale build?); "
                + BUILD_HINT)
    return None


def _load_cpu(schema_error: str | None) -> tuple[str | None, str | None]:
    """-> (loaded cpu variant or None, reason it failed or None)."""
    if schema_error is not None:
        return None, schema_error
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
        return name, None
    return None, ("no CPU kernel of the compiled extension could be loaded ("
                  + "; ".join(errors) + f"); {BUILD_HINT}")


def _load_cuda(schema_error: str | None) -> str | None:
    """None when the CUDA kernels are registered, else why not."""
    if torch.version.cuda is None:
        return (f"flashnce._C was built without CUDA kernels: torch {torch.__version__} is a "
                "CPU build")
    if schema_error is not None:
        return schema_error
    if importlib.util.find_spec(CUDA_MODULE) is None:
        return ("flashnce._C was built without CUDA kernels (no CUDA toolkit found at build "
                "time, or FLASHNCE_CUDA=0); rebuild with CUDA_HOME set: " + BUILD_HINT)
    try:
        importlib.import_module(CUDA_MODULE)
    except ImportError as exc:
        return f"the CUDA kernels ({CUDA_MODULE}) could not be loaded: {exc}"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("flashnce::tile_fwd", "CUDA"):
        return f"{CUDA_MODULE} loaded but registered no CUDA kernel for flashnce::tile_fwd"
    return None


def load() -> bool:
    """Import the extension once; True when the CPU kernel is registered."""
    if "variant" not in _state:
        schema_error = _load_schemas()
        _state["variant"], _state["why"] = _load_cpu(schema_error)
        _state["why_cuda"] = _load_cuda(schema_error)
        if schema_error is None:
            from .core import library

            library.register_compiled_ops()
    return _state["variant"] is not None


def cpu_variant() -> str | None:
    """Name of the loaded CPU kernel module (e.g. '_C_cpu_avx512'), or None."""
    load()
    return _state["variant"]


def why_unavailable() -> str | None:
    """Why the CPU kernel is not available (with how to build it), or None if it is."""
    load()
    return _state["why"]


def why_cuda_unavailable() -> str | None:
    """Why the CUDA kernels are not available, or None if they are."""
    load()
    return _state["why_cuda"]
