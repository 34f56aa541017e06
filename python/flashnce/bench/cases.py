"""Benchmark case definitions, shared by the ``flashnce-bench`` CLI and the pytest-benchmark suite.

A case is one (loss, provider, N, d, geometry, dtype, device) point. ``setup(case)`` returns
``(inputs, fn)``: a tuple of leaf tensors and a callable with ``fn(*inputs) -> scalar loss``
(or, for the ``gemm`` yardstick, the [N, N] product). Timing, memory and reporting live
elsewhere; this module only knows how to build the work.

Losses (every one walks an N x N tile matrix, so times at the same N compare across losses
and with the ``gemm`` yardstick of that N):

    infonce     symmetric CLIP loss on x, y [N, d] (scale 1/0.07 for cosine, 1 otherwise)
    siglip      sigmoid loss on x, y [N, d], scale 10, bias -10
    supcon      ``flashnce.supcon(x, labels)``: x [N, d] (y unused), labels = arange(N) // 4
                (4 samples per class, the last class smaller when 4 does not divide N),
                temperature 0.1 (scale 10), variant "out"
    ntxent      ``flashnce.ntxent(z1, z2)``: z1 = x[:N // 2], z2 = y[:N // 2] (two views of
                N // 2 samples: 2 (N // 2) rows), temperature 0.5 (scale 2), denominator "all"
    uniformity  ``flashnce.uniformity(x, t=2, normalize=True)``: x [N, d]; the paper's metric
                is geometry "sqeuclidean" (the ``pdist`` provider runs only that one)

``--scale`` overrides the scale: temperature = 1 / scale for supcon / ntxent, t = scale for
uniformity.

Providers
    flashnce, flashnce-<backend>   ``flashnce.<loss>`` with backend="auto" or a named backend
    materialized                   ``flashnce.reference_<loss>`` (full N x N logits) in fp32
    compiled                       ``torch.compile`` of the materialised loss
    open_clip                      open_clip ``ClipLoss`` / ``SigLipLoss`` on normalised
                                   features (infonce / siglip; cosine only)
    pykeops                        KeOps symbolic log-sum-exp (infonce; cosine / dot)
    inf_cl                         Inf-CL ``cal_inf_loss`` (infonce; CUDA, cosine only)
    pml                            pytorch-metric-learning ``SupConLoss`` / ``NTXentLoss``
                                   (supcon / ntxent; cosine only)
    pdist                          ``torch.pdist(F.normalize(x)).pow(2).mul(-t).exp().mean()
                                   .log()`` (uniformity; sqeuclidean only): N (N - 1) / 2 floats
    gemm                           one plain [N, d] x [d, N] GEMM: the yardstick for ratios

Every loss provider computes the same loss with the same scale (and bias), so times are
comparable. Note: for sqeuclidean / euclidean / poincare, ``reference_infonce`` builds an
N x N x d difference tensor (it is the test oracle, written from textbook formulas), so the
``materialized`` rows there measure the oracle, not a tuned GEMM-based baseline (this
includes uniformity, whose metric is sqeuclidean: ``pdist`` is its real baseline).
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
PEERS = ("open_clip", "pykeops", "inf_cl", "pml", "pdist")
BASELINES = ("materialized", "compiled")
LOSSES = ("infonce", "siglip", "supcon", "ntxent", "uniformity")
PAIRED_LOSSES = ("infonce", "siglip")  # x against y
SAME_SET_LOSSES = ("supcon", "ntxent", "uniformity")  # one set against itself, self skipped
INFONCE_ONLY = ("pykeops", "inf_cl")
PAIRED_ONLY = ("open_clip", *INFONCE_ONLY)  # peers of InfoNCE / SigLIP only
# The losses each same-set peer implements.
PEER_LOSSES = {"pml": ("supcon", "ntxent"), "pdist": ("uniformity",)}
# CLIP's initial logit scale, 1 / 0.07; other geometries use 1 (their features are O(1)).
DEFAULT_SCALE = {"cosine": 1.0 / 0.07}
# SigLIP: the paper's initialisation t = 10, b = -10, in every geometry.
SIGLIP_SCALE, SIGLIP_BIAS = 10.0, -10.0
# SupCon: temperature 0.1 (the paper's, pytorch-metric-learning's default); NT-Xent: 0.5
# (lightly's default); uniformity: t = 2 (Wang & Isola). Scale = 1 / temperature, t.
SUPCON_TEMPERATURE, NTXENT_TEMPERATURE, UNIFORMITY_T = 0.1, 0.5, 2.0
SAME_SET_SCALE = {"supcon": 1.0 / SUPCON_TEMPERATURE, "ntxent": 1.0 / NTXENT_TEMPERATURE,
                  "uniformity": UNIFORMITY_T}
SUPCON_CLASS_SIZE = 4  # supcon labels: arange(N) // 4


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
        if self.loss in SAME_SET_SCALE:
            return SAME_SET_SCALE[self.loss]
        return DEFAULT_SCALE.get(self.geometry, 1.0)

    @property
    def temperature(self) -> float:
        """1 / scale: the temperature of supcon / ntxent."""
        return 1.0 / self.logit_scale

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
    recomputes the logits in backward does more work than this; it is not counted. The
    same-set losses (supcon, ntxent, uniformity) are counted the same way on their N x N
    matrix (n = m = N; for ntxent N = 2 (N // 2) rows), although it is symmetric."""
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


def supcon_labels(n: int, device) -> torch.Tensor:
    """The supcon case's labels: arange(n) // 4 (classes of 4 consecutive samples)."""
    return torch.arange(n, device=device) // SUPCON_CLASS_SIZE


def loss_inputs(case: Case, requires_grad: bool = True) -> tuple[torch.Tensor, ...]:
    """The leaf tensors the loss of ``case`` takes (what ``setup`` hands to ``fn``):

    infonce / siglip: (x, y); supcon / uniformity: (x,); ntxent: (z1, z2) = (x[:N // 2],
    y[:N // 2]) as new leaves. x and y are ``make_inputs``'s, so x is the same in every loss
    and provider of a run.
    """
    x, y = make_inputs(case, requires_grad=False)
    if case.loss in ("supcon", "uniformity"):
        tensors = (x,)
    elif case.loss == "ntxent":
        half = case.n // 2
        tensors = (x[:half].clone(), y[:half].clone())
    else:
        tensors = (x, y)
    return tuple(t.requires_grad_(requires_grad) for t in tensors)


# --------------------------------------------------------------------------- providers

def _flashnce_backend(provider: str) -> str:
    return "auto" if provider == "flashnce" else provider.split("-", 1)[1]


def _loss_fn(case: Case, prefix: str, cast, **extra):
    """fn(*loss_inputs(case)) -> the loss of ``case``: ``flashnce.<prefix><loss>`` (prefix ""
    for the memory-linear losses, "reference_" for the materialised oracles) with the case's
    geometry, scale / temperature (and labels / bias), each input passed through ``cast``,
    ``extra`` keywords added (the backend)."""
    import flashnce

    loss = getattr(flashnce, prefix + case.loss)
    kw = dict(geometry=case.geometry, **extra)
    if case.loss == "siglip":
        kw.update(scale=case.logit_scale, bias=SIGLIP_BIAS)
    elif case.loss == "supcon":
        labels = supcon_labels(case.n, case.device)
        kw.update(temperature=case.temperature)
        return lambda x: loss(cast(x), labels, **kw)
    elif case.loss == "ntxent":
        kw.update(temperature=case.temperature)
    elif case.loss == "uniformity":
        kw.update(t=case.logit_scale, normalize=True)
        return lambda x: loss(cast(x), **kw)
    else:
        kw.update(scale=case.logit_scale)
    return lambda a, b: loss(cast(a), cast(b), **kw)


def setup_flashnce(case: Case):
    fn = _loss_fn(case, "", lambda t: t, backend=_flashnce_backend(case.provider))
    return loss_inputs(case), fn


def setup_materialized(case: Case):
    return loss_inputs(case), _loss_fn(case, "reference_", lambda t: t.float())


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


def setup_pml(case: Case):
    """pytorch-metric-learning's SupConLoss / NTXentLoss (cosine similarity built in). NT-Xent
    takes cat(z1, z2) with labels arange(N // 2) twice: each row's one positive is its
    partner view, every other row a negative -- flashnce's denominator "all"."""
    from pytorch_metric_learning import losses as pml_losses

    inputs = loss_inputs(case)
    if case.loss == "supcon":
        labels = supcon_labels(case.n, case.device)
        loss = pml_losses.SupConLoss(temperature=case.temperature)

        def fn(x):
            return loss(x.float(), labels)
    else:
        half = case.n // 2
        labels = torch.arange(half, device=case.device).repeat(2)
        loss = pml_losses.NTXentLoss(temperature=case.temperature)

        def fn(z1, z2):
            return loss(torch.cat([z1.float(), z2.float()]), labels)

    return inputs, fn


def setup_pdist(case: Case):
    """Wang & Isola's uniformity as their paper writes it: torch.pdist's N (N - 1) / 2
    distances (the mean over unordered pairs equals the mean over ordered pairs i != j)."""
    import torch.nn.functional as F

    inputs = loss_inputs(case)
    t = case.logit_scale

    def fn(x):
        return torch.pdist(F.normalize(x.float(), dim=-1)).pow(2).mul(-t).exp().mean().log()

    return inputs, fn


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
    "pml": setup_pml,
    "pdist": setup_pdist,
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


def _flashnce_walk(case: Case, inputs):
    """(x, y, relation, stat) of the tile walk the case's loss runs, as the loss builds them:

    infonce: ``lse`` over the negatives, the diagonal skipped (losses.py); siglip:
    ``pair_sum`` on the diagonal; supcon: ``masked_sum`` with the labels, self skipped, no
    column stat; ntxent: its first walk, ``lse`` of z1 against z2 with the partners (the
    diagonal) skipped (same_set.py; the other two walks are self-skipping ``lse`` walks);
    uniformity: ``lse`` of the normalised x against itself, self skipped, no column stat
    (uniformity.py).
    """
    from flashnce.core.relation import Relation

    inputs = [t.detach() for t in inputs]
    if case.loss == "supcon":
        (x,) = inputs
        labels = supcon_labels(x.shape[0], x.device)
        return x, x, Relation.labels(labels, labels, skip_self=True, cols_both=0), "masked_sum"
    if case.loss == "ntxent":
        z1, z2 = inputs
        return z1, z2, Relation.diagonal(skip_positives=True), "lse"
    if case.loss == "uniformity":
        (x,) = inputs
        x = torch.nn.functional.normalize(x, dim=-1)
        return x, x, Relation.none(skip_self=True, cols_both=0), "lse"
    x, y = inputs
    if case.loss == "siglip":
        return x, y, Relation.diagonal(), "pair_sum"
    # InfoNCE walks the negatives: the positives (the diagonal) are skipped (losses.py).
    return x, y, Relation.diagonal(skip_positives=True), "lse"


def resolve_flashnce_backend(case: Case, *inputs) -> str:
    """The backend name flashnce would run for this case (``inputs``: the tensors ``setup``
    returned; default: a small stand-in with the case's dtype, device and geometry); raises
    ValueError with the reasons every candidate refuses (for 'auto') or the named backend
    refuses. It asks for the walk the loss runs: its statistic and relation."""
    from flashnce import dispatch
    from flashnce.core.problem import TileProblem

    if not inputs:
        # Only the dtype, device, geometry, statistic, relation and (roughly) the shape
        # matter to a backend.
        inputs = loss_inputs(replace(case, n=max(2, min(case.n, 8))), requires_grad=False)
    x, y, relation, stat = _flashnce_walk(case, inputs)
    prob = TileProblem(x, y, case.geometry, case.logit_scale, 1.0, False)
    impl = dispatch.select_backend(_flashnce_backend(case.provider), prob.x_op, prob.y_op,
                                   prob.tspec(relation, stat))
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
    if case.loss in SAME_SET_LOSSES and p in PAIRED_ONLY:
        return f"{p} implements InfoNCE / SigLIP only"
    if p in PEER_LOSSES and case.loss not in PEER_LOSSES[p]:
        return f"the {p} provider implements {' / '.join(PEER_LOSSES[p])} only"
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
    if p == "pml":
        if geo != "cosine":
            return ("pytorch-metric-learning's SupConLoss / NTXentLoss use cosine similarity "
                    "only")
        return _missing_module("pytorch_metric_learning")
    if p == "pdist":
        if geo != "sqeuclidean":
            return ("the pdist provider is Wang & Isola's uniformity: squared Euclidean "
                    "distances only (geometry sqeuclidean)")
        return None
    if p in ("materialized", "gemm"):
        return None
    return f"unknown provider {p!r}"
