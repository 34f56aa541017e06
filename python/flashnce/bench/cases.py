"""Benchmark case definitions, shared by the ``flashnce-bench`` CLI and the pytest-benchmark suite.

A case is one (loss, provider, N, d, geometry, dtype, device) point. ``setup(case)`` returns
``(inputs, fn)``: a tuple of leaf tensors and a callable with ``fn(*inputs) -> scalar loss``
(or, for the ``gemm`` yardstick, the [N, N] product). Timing, memory and reporting live
elsewhere; this module only knows how to build the work.

Losses: ``infonce`` (symmetric CLIP loss) and ``siglip`` (sigmoid loss, scale 10, bias -10).

Providers
    flashnce, flashnce-<backend>   ``flashnce.infonce`` / ``siglip`` with backend="auto" or a
                                   named backend
    materialized                   ``flashnce.reference_infonce`` / ``reference_siglip`` (full
                                   N x N logits) in fp32
    compiled                       ``torch.compile`` of the materialised loss
    open_clip                      open_clip ``ClipLoss`` / ``SigLipLoss`` on normalised
                                   features (cosine only)
    pykeops                        KeOps symbolic log-sum-exp (infonce; cosine / dot)
    inf_cl                         Inf-CL ``cal_inf_loss`` (infonce; CUDA, cosine only)
    gemm                           one plain [N, d] x [d, N] GEMM: the yardstick for ratios

Every loss provider computes the same loss with the same scale (and bias), so times are
comparable. Note: for sqeuclidean / euclidean / poincare, ``reference_infonce`` builds an
N x N x d difference tensor (it is the test oracle, written from textbook formulas), so the
``materialized`` rows there measure the oracle, not a tuned GEMM-based baseline.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
FLASHNCE_BACKENDS = ("triton", "cuda", "cpu", "torch")
PEERS = ("open_clip", "pykeops", "inf_cl")
BASELINES = ("materialized", "compiled")
LOSSES = ("infonce", "siglip")
INFONCE_ONLY = ("pykeops", "inf_cl")
# CLIP's initial logit scale, 1 / 0.07; other geometries use 1 (their features are O(1)).
DEFAULT_SCALE = {"cosine": 1.0 / 0.07}
# SigLIP: the paper's initialisation t = 10, b = -10, in every geometry.
SIGLIP_SCALE, SIGLIP_BIAS = 10.0, -10.0


@dataclass(frozen=True)
class Case:
    """One benchmark point. ``scale=None`` means the geometry's default (see DEFAULT_SCALE)."""

    provider: str
    n: int
    d: int = 128
    geometry: str = "cosine"
    dtype: str = "float32"
    device: str = "cpu"
    scale: float | None = None
    seed: int = 0
    loss: str = "infonce"

    @property
    def logit_scale(self) -> float:
        if self.scale is not None:
            return self.scale
        if self.loss == "siglip":
            return SIGLIP_SCALE
        return DEFAULT_SCALE.get(self.geometry, 1.0)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def is_loss(self) -> bool:
        return self.provider != "gemm"

    def as_dict(self) -> dict:
        return asdict(self)


def flops(n: int, m: int, d: int, mode: str) -> float:
    """Algorithmic FLOPs of InfoNCE / SigLIP on [n, d] x [m, d]: the GEMMs only, as a materialised loss
    does them (forward 2nmd for the logits; backward 4nmd for dX and dY). A fused kernel that
    recomputes the logits in backward does more work than this; it is not counted."""
    per_gemm = 2.0 * n * m * d
    return {"fwd": per_gemm, "bwd": 2 * per_gemm, "full": 3 * per_gemm}[mode]


# --------------------------------------------------------------------------- inputs

def make_inputs(case: Case, requires_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired features x, y [N, d] suited to the geometry (seeded, generated on CPU in fp32).

    Cosine gets raw Gaussians; dot / Euclidean get norm ~1 rows; hyperbolic tangent vectors
    get hyperbolic radii around 1, so no clamp dominates the timing.
    """
    g = torch.Generator().manual_seed(case.seed)
    x = torch.randn(case.n, case.d, generator=g)
    y = x + 0.5 * torch.randn(case.n, case.d, generator=g)  # paired rows are close
    if case.geometry != "cosine":
        x, y = x / case.d**0.5, y / case.d**0.5
    if case.geometry == "poincare":
        x, y = 0.5 * x, 0.5 * y
    out = []
    for t in (x, y):
        t = t.to(device=case.device, dtype=case.torch_dtype)
        out.append(t.requires_grad_(requires_grad))
    return out[0], out[1]


# --------------------------------------------------------------------------- providers

def _flashnce_backend(provider: str) -> str:
    return "auto" if provider == "flashnce" else provider.split("-", 1)[1]


def setup_flashnce(case: Case):
    import flashnce

    backend = _flashnce_backend(case.provider)
    x, y = make_inputs(case)
    geometry, scale = case.geometry, case.logit_scale

    if case.loss == "siglip":
        def fn(x, y):
            return flashnce.siglip(x, y, geometry=geometry, scale=scale, bias=SIGLIP_BIAS,
                                   backend=backend)
    else:
        def fn(x, y):
            return flashnce.infonce(x, y, geometry=geometry, scale=scale, backend=backend)

    return (x, y), fn


def setup_materialized(case: Case):
    from flashnce.reference import reference_infonce, reference_siglip

    x, y = make_inputs(case)
    geometry, scale = case.geometry, case.logit_scale

    if case.loss == "siglip":
        def fn(x, y):
            return reference_siglip(x.float(), y.float(), geometry=geometry, scale=scale,
                                    bias=SIGLIP_BIAS)
    else:
        def fn(x, y):
            return reference_infonce(x.float(), y.float(), geometry=geometry, scale=scale)

    return (x, y), fn


def setup_compiled(case: Case):
    inputs, loss = setup_materialized(case)
    # Each case runs in a fresh process with one shape: no dynamic shapes needed.
    return inputs, torch.compile(loss, dynamic=False)


def open_clip_loss_module():
    """open_clip's loss module, loaded from its file: the package's ``__init__`` imports
    torchvision (absent in a torch-only install), the loss module needs only torch."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open-clip-torch is not installed (pip install --no-deps "
                          "open-clip-torch)")
    path = Path(list(spec.submodule_search_locations)[0]) / "loss.py"
    mod_spec = importlib.util.spec_from_file_location("_flashnce_open_clip_loss", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def setup_open_clip(case: Case):
    import torch.nn.functional as F

    oc = open_clip_loss_module()
    x, y = make_inputs(case)
    scale = torch.tensor(case.logit_scale, device=case.device)
    bias = torch.tensor(SIGLIP_BIAS, device=case.device)
    loss = oc.SigLipLoss() if case.loss == "siglip" else oc.ClipLoss()

    def fn(x, y):
        # open_clip's losses expect normalised features (its models normalise before them).
        xn, yn = F.normalize(x.float(), dim=-1), F.normalize(y.float(), dim=-1)
        return loss(xn, yn, scale, bias) if case.loss == "siglip" else loss(xn, yn, scale)

    return (x, y), fn


def setup_pykeops(case: Case):
    import torch.nn.functional as F
    from pykeops.torch import LazyTensor

    x, y = make_inputs(case)
    geometry, scale = case.geometry, case.logit_scale

    def fn(x, y):
        x, y = x.float(), y.float()
        if geometry == "cosine":
            x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
        xs = scale * x
        logits = LazyTensor(xs[:, None, :]) | LazyTensor(y[None, :, :])  # symbolic [N, N, 1]
        row_lse = logits.logsumexp(dim=1).view(-1)
        col_lse = logits.logsumexp(dim=0).view(-1)
        positive = (xs * y).sum(-1)
        return 0.5 * ((row_lse - positive).mean() + (col_lse - positive).mean())

    return (x, y), fn


def setup_inf_cl(case: Case):
    import torch.nn.functional as F
    from inf_cl import cal_inf_loss

    x, y = make_inputs(case)
    scale = torch.tensor(case.logit_scale, device=case.device)
    head_dim = case.d if case.d in (16, 32, 64, 128, 256) else 256

    def fn(x, y):
        q, k = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
        labels = torch.arange(q.shape[0], device=q.device)
        # cal_inf_loss is one-way (q -> k) and already averaged; CLIP is both directions.
        return 0.5 * (cal_inf_loss(q, k, labels=labels, scale=scale, head_dim=head_dim)
                      + cal_inf_loss(k, q, labels=labels, scale=scale, head_dim=head_dim))

    return (x, y), fn


def setup_gemm(case: Case):
    x, y = make_inputs(case, requires_grad=False)

    def fn(x, y):
        return x @ y.T

    return (x, y), fn


_SETUPS: dict[str, Callable] = {
    "flashnce": setup_flashnce,
    "materialized": setup_materialized,
    "compiled": setup_compiled,
    "open_clip": setup_open_clip,
    "pykeops": setup_pykeops,
    "inf_cl": setup_inf_cl,
    "gemm": setup_gemm,
}


def provider_names() -> tuple[str, ...]:
    return (*_SETUPS, *(f"flashnce-{b}" for b in FLASHNCE_BACKENDS))


def setup(case: Case):
    """(inputs, fn) for a case; raises ValueError for an unknown provider."""
    key = "flashnce" if case.provider.startswith("flashnce") else case.provider
    if key not in _SETUPS or (key == "flashnce" and case.provider not in provider_names()):
        raise ValueError(f"unknown provider {case.provider!r}; expected one of "
                         f"{list(provider_names())}")
    return _SETUPS[key](case)


# --------------------------------------------------------------------------- availability

def _missing_module(name: str) -> str | None:
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"{name} is not installed"


def resolve_flashnce_backend(case: Case, x=None, y=None) -> str:
    """The backend name flashnce would run for this case; raises ValueError with the reasons
    every candidate refuses (for 'auto') or the named backend refuses."""
    from flashnce import dispatch
    from flashnce.core.problem import TileProblem

    from flashnce.core.relation import Relation

    if x is None:
        # Only the dtype, device, geometry and (roughly) the shape matter to a backend.
        x, y = make_inputs(replace(case, n=min(case.n, 8)), requires_grad=False)
    prob = TileProblem(x.detach(), y.detach(), case.geometry, case.logit_scale, 1.0, False)
    tspec = (prob.tspec(Relation.diagonal(), "pair_sum") if case.loss == "siglip"
             else prob.tspec())
    impl = dispatch.select_backend(_flashnce_backend(case.provider), prob.x_op, prob.y_op,
                                   tspec)
    return impl.name


def unavailable_reason(case: Case) -> str | None:
    """Why a provider cannot run this case here (None: it can). Cheap: no benchmark work."""
    p, geo = case.provider, case.geometry
    if case.loss not in LOSSES:
        return f"unknown loss {case.loss!r}"
    if case.device.startswith("cuda") and not torch.cuda.is_available():
        return "CUDA is not available"
    if case.loss != "infonce" and p in INFONCE_ONLY:
        return f"{p} implements InfoNCE only"
    if p.startswith("flashnce"):
        try:
            resolve_flashnce_backend(case)
        except ValueError as exc:
            return str(exc).replace("\n", " ")
        return None
    if p == "compiled":
        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile is not supported on this Python/platform"
        if case.device == "cpu" and not (shutil.which("c++") or shutil.which("g++")
                                         or shutil.which("clang++")):
            return "torch.compile on CPU needs a C++ compiler (none on PATH)"
        return None
    if p == "open_clip":
        if geo != "cosine":
            return "open_clip's losses are cosine-only"
        return _missing_module("open_clip")
    if p == "pykeops":
        if geo not in ("cosine", "dot"):
            return "pykeops provider implements cosine and dot only"
        return _missing_module("pykeops")
    if p == "inf_cl":
        if geo != "cosine":
            return "Inf-CL is cosine-only"
        if not case.device.startswith("cuda"):
            return "Inf-CL runs on CUDA only"
        return _missing_module("inf_cl")
    if p in ("materialized", "gemm"):
        return None
    return f"unknown provider {p!r}"
