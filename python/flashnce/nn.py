"""nn.Modules over ``flashnce.infonce`` and ``flashnce.siglip``: learnable scale / curvature
(/ bias), and open_clip drop-ins.

* ``ContrastiveLoss``: symmetric InfoNCE in any geometry holding its own learnable logit scale
  and curvature, stored and clamped as docs/NUMERICS.md recommends (sections 3, 6, 10).
* ``SigmoidContrastiveLoss``: SigLIP in any geometry with its own scale, bias and curvature
  (the paper's initialisation t' = ln 10, b = -10; open_clip's clamp t <= 100).
* ``ClipLoss`` / ``SigLipLoss``: open_clip's constructor and forward signatures (the model
  owns ``logit_scale`` / ``logit_bias``), so switching is one import.

Both take ``group=`` (a torch.distributed ProcessGroup) for multi-process training; the
gradient convention is DDP's, documented in ``flashnce.distributed``.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
from torch import nn

from . import dispatch
from .distributed import GROUP_MODES
from .core.numerics import MAX_RADIUS
from .geometry import check_max_radius, get_geometry
from .class_softmax import margin_softmax
from .core.margin import check_margin
from .losses import infonce, siglip
from .same_set import CONTRAST_MODES, DENOMINATORS, ntxent, supcon_views
from .validate import check_choice, check_positive_number

__all__ = ["ArcFaceLoss", "ContrastiveLoss", "ClipLoss", "CosFaceLoss", "NTXentLoss",
           "SigLipLoss", "SigmoidContrastiveLoss", "SupConLoss"]


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE (CLIP) in any geometry, with its own learnable scale and curvature.

    Parameters (docs/NUMERICS.md sections 3 and 6):
        log_scale      tau = ln s, initialised to ln(scale_init) (default ln(1/0.07) ~ 2.659).
                       An ``nn.Parameter`` if ``learn_scale`` else a buffer.
        log_curvature  ln c, initialised to ln(curvature_init); an ``nn.Parameter`` only for
                       hyperbolic geometries with ``learn_curvature`` (so DDP never sees a
                       parameter without a gradient), else a buffer.

    Clamping (values, never gradients; MERU style): at the start of every ``forward`` the
    stored values are clamped in place, tau <= ln(max_scale) and ln c within
    [ln lo, ln hi] of ``curvature_range``; the gradient of the clamped value is the plain
    gradient (no zeroed gradient at the bound, unlike clamping inside the graph). Call
    ``clamp_parameters()`` after ``optimizer.step()`` as well if you log or checkpoint the
    parameters between steps (open_clip style); it is idempotent. ``max_scale=None`` disables
    the scale clamp. Neither parameter should get weight decay (open_clip excludes all
    parameters with ndim < 2; these are 0-d).

    forward(image_features [N, d], text_features [N, d]) -> loss, or
    ``{"contrastive_loss": loss}`` with ``output_dict=True`` (open_clip's key).
    With ``group=`` each rank passes its local rows; see ``flashnce.infonce``.
    """

    def __init__(self, geometry="cosine", scale_init=1 / 0.07, learn_scale=True, max_scale=100.0,
                 curvature_init=1.0, learn_curvature=True, curvature_range=(0.1, 10.0),
                 group=None, *, on_manifold=False, backend="auto", group_mode="gather",
                 max_radius=MAX_RADIUS):
        super().__init__()
        self.geometry = get_geometry(geometry).name
        self._uses_curvature = get_geometry(geometry).uses_curvature
        scale_init = check_positive_number(scale_init, "scale_init")
        self.max_scale = None if max_scale is None else check_positive_number(max_scale, "max_scale")
        if self.max_scale is not None and scale_init > self.max_scale:
            raise ValueError(f"scale_init={scale_init} exceeds max_scale={self.max_scale}")
        curvature_init = check_positive_number(curvature_init, "curvature_init")
        if not isinstance(curvature_range, (tuple, list)) or len(curvature_range) != 2:
            raise ValueError(f"curvature_range must be a pair (lo, hi), got {curvature_range!r}")
        lo, hi = (check_positive_number(v, "curvature_range bounds") for v in curvature_range)
        if lo > hi:
            raise ValueError(f"curvature_range must have lo <= hi, got {curvature_range!r}")
        if not lo <= curvature_init <= hi:
            raise ValueError(f"curvature_init={curvature_init} is outside curvature_range="
                             f"({lo}, {hi})")
        self.curvature_range = (lo, hi)
        # Checked here, not at the first forward: a typo should fail where it is written.
        dispatch.check_backend_name(backend)
        check_choice(group_mode, "group_mode", GROUP_MODES)
        if not isinstance(on_manifold, bool):
            raise TypeError(f"on_manifold must be a bool, got {type(on_manifold).__name__}")
        self.on_manifold, self.backend = on_manifold, backend
        self.group, self.group_mode = group, group_mode
        self.max_radius = check_max_radius(max_radius)

        log_s = torch.tensor(math.log(scale_init))
        if learn_scale:
            self.log_scale = nn.Parameter(log_s)
        else:
            self.register_buffer("log_scale", log_s)
        log_c = torch.tensor(math.log(curvature_init))
        if learn_curvature and self._uses_curvature:
            self.log_curvature = nn.Parameter(log_c)
        else:
            self.register_buffer("log_curvature", log_c)

    @property
    def scale(self) -> torch.Tensor:
        """s = exp(log_scale) (differentiable)."""
        return self.log_scale.exp()

    @property
    def curvature(self) -> torch.Tensor:
        """c = exp(log_curvature) (differentiable)."""
        return self.log_curvature.exp()

    @torch.no_grad()
    def clamp_parameters(self) -> None:
        """Clamp the stored log-scale and log-curvature values in place (not their gradients)."""
        if self.max_scale is not None:
            self.log_scale.clamp_(max=math.log(self.max_scale))
        lo, hi = self.curvature_range
        self.log_curvature.clamp_(math.log(lo), math.log(hi))

    def forward(self, image_features, text_features, output_dict=False):
        self.clamp_parameters()
        loss = infonce(
            image_features, text_features, geometry=self.geometry, scale=self.scale,
            curvature=self.curvature if self._uses_curvature else 1.0,
            on_manifold=self.on_manifold, backend=self.backend, group=self.group,
            group_mode=self.group_mode, max_radius=self.max_radius)
        return {"contrastive_loss": loss} if output_dict else loss

    def extra_repr(self) -> str:
        scale = float(self.log_scale.detach().exp())
        s = f"geometry={self.geometry!r}, scale={scale:.4g}, max_scale={self.max_scale}"
        if self._uses_curvature:
            c = float(self.log_curvature.detach().exp())
            s += f", curvature={c:.4g}, curvature_range={self.curvature_range}"
        if self.group is not None:
            s += f", group_mode={self.group_mode!r}"
        return s


class ClipLoss(nn.Module):
    """Drop-in for open_clip's ``ClipLoss``: same constructor and forward, memory-linear.

    forward(image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
    ``logit_scale`` is the model's already-exponentiated scale (as open_clip passes it), the
    features are the model's L2-normalised embeddings, and the logits are
    ``logit_scale * image @ text.T`` exactly as in open_clip: the ``dot`` geometry (cosine
    logits for the normalised embeddings open_clip passes; the loss does not normalise again,
    so gradients match open_clip's even for unnormalised inputs).
    ``logit_bias`` shifts every logit equally, which cannot change InfoNCE; it is accepted
    and gets an exact zero gradient (so DDP sees it used).

    Distributed (``world_size > 1``, torch.distributed initialised; or an explicit ``group=``):
    always the exact path, i.e. open_clip's ``local_loss=True, gather_with_grad=True``: the
    mean over ranks of the returned loss is the global loss, and DDP-averaged gradients equal
    the single-process ones. ``local_loss=False`` therefore returns the per-rank share (not
    the global loss open_clip reports; gradients are the same after DDP averaging), and
    ``gather_with_grad=False`` (open_clip's approximation that drops gradients through other
    ranks' features) is not reproduced: a warning says so. ``cache_labels`` is accepted and
    unused (there are no labels to cache); ``use_horovod=True`` is not supported.
    """

    def __init__(self, local_loss=False, gather_with_grad=False, cache_labels=False, rank=0,
                 world_size=1, use_horovod=False, *, group=None, group_mode="gather",
                 backend="auto"):
        super().__init__()
        if use_horovod:
            raise NotImplementedError("flashnce.nn.ClipLoss runs on torch.distributed only "
                                      "(use_horovod=True is not supported)")
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad
        self.cache_labels = cache_labels
        self.rank, self.world_size = rank, world_size
        self.group, self.group_mode, self.backend = group, group_mode, backend
        if world_size > 1 and not gather_with_grad:
            warnings.warn("flashnce.nn.ClipLoss always computes exact gradients (as open_clip "
                          "with gather_with_grad=True); gather_with_grad=False is ignored",
                          stacklevel=2)

    def _process_group(self):
        if self.group is not None:
            return self.group
        if self.world_size <= 1:
            return None
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(f"ClipLoss(world_size={self.world_size}) needs "
                               "torch.distributed to be initialised")
        if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
            raise ValueError(f"ClipLoss(rank={self.rank}, world_size={self.world_size}) does not "
                             f"match torch.distributed (rank {dist.get_rank()} of "
                             f"{dist.get_world_size()})")
        return dist.group.WORLD

    def forward(self, image_features, text_features, logit_scale, logit_bias=None,
                output_dict=False):
        loss = infonce(image_features, text_features, geometry="dot", scale=logit_scale,
                       backend=self.backend, group=self._process_group(),
                       group_mode=self.group_mode)
        if isinstance(logit_bias, torch.Tensor) and logit_bias.requires_grad:
            loss = loss + 0.0 * logit_bias.sum()  # no effect on InfoNCE; exact zero gradient
        return {"contrastive_loss": loss} if output_dict else loss


class SigmoidContrastiveLoss(ContrastiveLoss):
    """SigLIP in any geometry, with its own learnable logit scale, bias and curvature.

    l_ij = s h(x_i, y_j) + b, L = 1/N sum_ij -log sigmoid(z_ij l_ij) (``flashnce.siglip``).
    Parameters as ``ContrastiveLoss`` (log_scale, log_curvature, clamped the same way) plus
    ``bias`` (an ``nn.Parameter`` if ``learn_bias`` else a buffer). Defaults are the paper's:
    s = exp(ln 10) = 10, b = -10, and open_clip's clamp s <= 100.

    forward(image_features [N, d], text_features [N, d], labels=None, output_dict=False) ->
    loss (or ``{"contrastive_loss": loss}``); ``labels`` as in ``flashnce.siglip``.
    """

    def __init__(self, geometry="cosine", scale_init=10.0, bias_init=-10.0, learn_scale=True,
                 learn_bias=True, max_scale=100.0, curvature_init=1.0, learn_curvature=True,
                 curvature_range=(0.1, 10.0), group=None, *, on_manifold=False, backend="auto",
                 group_mode="gather", max_radius=MAX_RADIUS):
        super().__init__(geometry, scale_init, learn_scale, max_scale, curvature_init,
                         learn_curvature, curvature_range, group, on_manifold=on_manifold,
                         backend=backend, group_mode=group_mode, max_radius=max_radius)
        if isinstance(bias_init, bool) or not isinstance(bias_init, (int, float)) or not (
                math.isfinite(bias_init)):
            raise ValueError(f"bias_init must be a finite number, got {bias_init!r}")
        b = torch.tensor(float(bias_init))
        if learn_bias:
            self.bias = nn.Parameter(b)
        else:
            self.register_buffer("bias", b)

    def forward(self, image_features, text_features, labels=None, output_dict=False):
        self.clamp_parameters()
        loss = siglip(
            image_features, text_features, geometry=self.geometry, scale=self.scale,
            bias=self.bias, labels=labels,
            curvature=self.curvature if self._uses_curvature else 1.0,
            on_manifold=self.on_manifold, backend=self.backend, group=self.group,
            group_mode=self.group_mode, max_radius=self.max_radius)
        return {"contrastive_loss": loss} if output_dict else loss

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bias={float(self.bias.detach()):.4g}"


# open_clip's SigLipLoss exchange implementations -> flashnce group modes (same math; the ring
# keeps per-rank memory O(n d) at any world size, as the neighbour exchanges intend to).
_SIGLIP_DIST_IMPLS = {"bidir": "ring", "shift": "ring", "reduce": "gather", "gather": "gather"}


class SigLipLoss(ClipLoss):
    """Drop-in for open_clip's ``SigLipLoss``: same constructor and forward, memory-linear.

    forward(image_features, text_features, logit_scale, logit_bias, output_dict=False):
    logits ``logit_scale * image @ text.T + logit_bias`` exactly as open_clip computes them
    (the ``dot`` geometry on the model's normalised embeddings; no second normalisation),
    loss = -sum log sigmoid(z l) / N_local with z = +1 on the diagonal.

    Distributed (``world_size > 1`` with torch.distributed initialised, or ``group=``): the
    returned loss is open_clip's per-rank loss (its rows against every rank's texts, divided
    by the local batch), and DDP-averaged gradients equal the single-process ones.
    ``dist_impl`` "bidir" / "shift" (open_clip's neighbour exchanges) run flashnce's ring,
    "reduce" / "gather" its all-gather; ``group_mode=`` overrides. ``cache_labels`` is
    accepted and unused (no label matrix exists).
    """

    def __init__(self, cache_labels=False, rank=0, world_size=1, dist_impl=None, *, group=None,
                 group_mode=None, backend="auto"):
        dist_impl = dist_impl or "bidir"
        check_choice(dist_impl, "dist_impl", tuple(_SIGLIP_DIST_IMPLS))
        super().__init__(True, True, cache_labels, rank, world_size, group=group,
                         group_mode=group_mode or _SIGLIP_DIST_IMPLS[dist_impl],
                         backend=backend)
        self.dist_impl = dist_impl

    def forward(self, image_features, text_features, logit_scale, logit_bias,
                output_dict=False):
        loss = siglip(image_features, text_features, geometry="dot", scale=logit_scale,
                      bias=0.0 if logit_bias is None else logit_bias, backend=self.backend,
                      group=self._process_group(), group_mode=self.group_mode)
        return {"contrastive_loss": loss} if output_dict else loss


class SupConLoss(nn.Module):
    """SupContrast's ``SupConLoss`` (HobbitLong/SupContrast, losses.py) on the tile walk.

    Same constructor (temperature=0.07, contrast_mode="all" | "one", base_temperature=0.07) and
    forward(features [bsz, n_views, ...], labels=None): the reference code's loss to rounding,
    without its (bsz * n_views)^2 matrices. Differences: ``mask=`` (a bsz x bsz matrix) is not
    accepted -- pass labels; anchors without a positive are left out of the mean (the reference
    counts them as 0 in its mean; its earlier versions returned NaN), and their number after
    each forward is ``rows_without_positive``.
    ``geometry`` defaults to "dot" like the reference (which expects normalised features).
    ``group`` (a torch.distributed process group, ``contrast_mode="all"``): each rank passes
    its samples; positives on other ranks count, and the loss follows the DDP convention of
    ``flashnce.supcon(group=)`` (``rows_without_positive`` is then the global count).
    """

    def __init__(self, temperature=0.07, contrast_mode="all", base_temperature=0.07, *,
                 geometry="dot", backend="auto", group=None):
        super().__init__()
        check_choice(contrast_mode, "contrast_mode", CONTRAST_MODES)
        get_geometry(geometry)
        dispatch.check_backend_name(backend)
        self.temperature = check_positive_number(temperature, "temperature")
        self.base_temperature = check_positive_number(base_temperature, "base_temperature")
        if group is not None and contrast_mode != "all":
            raise ValueError(f"SupConLoss(group=...) supports contrast_mode='all' only, got "
                             f"{contrast_mode!r}")
        self.contrast_mode, self.geometry, self.backend = contrast_mode, geometry, backend
        self.group = group
        self.rows_without_positive = 0

    def forward(self, features, labels=None, mask=None):
        if mask is not None:
            raise TypeError("SupConLoss(mask=...) is not supported (a bsz x bsz matrix is what "
                            "flashnce avoids): pass labels, or labels=None for SimCLR")
        loss, self.rows_without_positive = supcon_views(
            features, labels, temperature=self.temperature,
            base_temperature=self.base_temperature, contrast_mode=self.contrast_mode,
            geometry=self.geometry, backend=self.backend, return_count=True, group=self.group)
        return loss

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, contrast_mode={self.contrast_mode!r}, "
                f"base_temperature={self.base_temperature}, geometry={self.geometry!r}")


class NTXentLoss(nn.Module):
    """NT-Xent (SimCLR) over two views: forward(z1 [N, d], z2 [N, d]) -> loss (lightly's
    ``NTXentLoss(temperature=0.5)`` call convention, cosine similarity). See
    ``flashnce.ntxent`` (``denominator="negatives"`` for the decoupled form; ``group=`` for
    the views of every rank, DDP convention)."""

    def __init__(self, temperature=0.5, *, geometry="cosine", denominator="all",
                 backend="auto", group=None):
        super().__init__()
        check_choice(denominator, "denominator", DENOMINATORS)
        get_geometry(geometry)
        dispatch.check_backend_name(backend)
        self.temperature = check_positive_number(temperature, "temperature")
        self.geometry, self.denominator, self.backend = geometry, denominator, backend
        self.group = group

    def forward(self, z1, z2):
        return ntxent(z1, z2, temperature=self.temperature, geometry=self.geometry,
                      denominator=self.denominator, backend=self.backend, group=self.group)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, geometry={self.geometry!r}, "
                f"denominator={self.denominator!r}")


def class_shard(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """(first class, number of classes) of rank's contiguous shard: the first
    num_classes % world ranks hold one class more."""
    base, extra = divmod(num_classes, world)
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


class _MarginSoftmaxLoss(nn.Module):
    """Class centres [C, d] (or this rank's shard of them) and ``flashnce.margin_softmax``."""

    margin_type = ""

    def __init__(self, num_classes, embedding_size, margin, scale, *, geometry="cosine",
                 backend="auto", group=None):
        super().__init__()
        for name, v in (("num_classes", num_classes), ("embedding_size", embedding_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        dispatch.check_backend_name(backend)
        self.geometry, self.backend, self.group = get_geometry(geometry).name, backend, group
        self.scale = check_positive_number(scale, "scale")
        self.margin_radians = self._radians(margin)
        check_margin(self.margin_radians, self.margin_type, self.geometry, allow_zero=False)
        self.num_classes = num_classes
        rank, world = (0, 1) if group is None else (dist.get_rank(group),
                                                    dist.get_world_size(group))
        self.class_offset, local = class_shard(num_classes, rank, world)
        if local == 0:
            raise ValueError(f"num_classes={num_classes} < world size {world}: every rank "
                             f"must hold at least one class")
        # pytorch-metric-learning holds W [embedding_size, num_classes] (normal init): its
        # transpose, the centres one per row, is what the walk reads.
        self.centres = nn.Parameter(torch.empty(local, embedding_size))
        nn.init.normal_(self.centres)

    def _radians(self, margin):
        return margin

    def forward(self, embeddings, labels):
        centres = self.centres
        if isinstance(embeddings, torch.Tensor) and embeddings.dtype != centres.dtype:
            centres = centres.to(embeddings.dtype)  # as PML's cast_types; autograd keeps it
        return margin_softmax(embeddings, centres, labels, margin_type=self.margin_type,
                              scale=self.scale, margin=self.margin_radians,
                              geometry=self.geometry, backend=self.backend, group=self.group)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, embedding_size={self.centres.shape[1]}, "
                f"margin={self.margin}, scale={self.scale}, geometry={self.geometry!r}"
                + (f", classes [{self.class_offset}, "
                   f"{self.class_offset + self.centres.shape[0]}) on this rank"
                   if self.group is not None else ""))


class ArcFaceLoss(_MarginSoftmaxLoss):
    """ArcFace (Deng et al. 2019) with learnable class centres, no N x C logits.

    pytorch-metric-learning's constructor and call: ``ArcFaceLoss(num_classes,
    embedding_size, margin=28.6, scale=64)``, ``loss(embeddings [N, d], labels [N])``; the
    margin is in **degrees** there and here (28.6 deg = 0.5 rad; ``flashnce.margin_softmax``
    takes radians). The centres are ``self.centres`` [num_classes, embedding_size] (PML's
    ``W`` transposed: ``centres.data.copy_(pml_loss.W.t())``). PML's weight regularisers and
    reducers are not supported.

    ``group=``: model-parallel classes; this rank holds the contiguous shard
    [class_offset, class_offset + centres.shape[0]) (keep the module out of DDP: its
    gradient is already exact, see ``flashnce.class_shards``).
    """

    margin_type = "arcface"

    def __init__(self, num_classes, embedding_size, margin=28.6, scale=64, *, backend="auto",
                 group=None):
        self.margin = margin
        super().__init__(num_classes, embedding_size, margin, scale, backend=backend,
                         group=group)

    def _radians(self, margin):
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise TypeError(f"margin must be a number of degrees, got {type(margin).__name__}")
        return math.radians(margin)


class CosFaceLoss(_MarginSoftmaxLoss):
    """CosFace (Wang et al. 2018) with learnable class centres, no N x C logits.

    pytorch-metric-learning's constructor and call: ``CosFaceLoss(num_classes,
    embedding_size, margin=0.35, scale=64)``, ``loss(embeddings, labels)``; centres and
    ``group=`` as ``ArcFaceLoss``. ``geometry`` other than "cosine" subtracts the margin from
    that geometry's similarity (e.g. minus the hyperbolic distance to a prototype).
    """

    margin_type = "cosface"

    def __init__(self, num_classes, embedding_size, margin=0.35, scale=64, *,
                 geometry="cosine", backend="auto", group=None):
        self.margin = margin
        super().__init__(num_classes, embedding_size, margin, scale, geometry=geometry,
                         backend=backend, group=group)
