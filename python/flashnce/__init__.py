"""flashnce: memory-linear fused contrastive losses in every geometry.

Public API:
    infonce(x, y, *, geometry, scale, curvature, ...)   symmetric / one-way InfoNCE (CLIP)
    siglip(x, y, *, geometry, scale, bias, labels, ...)  SigLIP (sigmoid) loss, any geometry
    pairwise_lse(x, y, *, geometry, ...)                 the row/column log-sum-exp primitive
    explain_backends(x, y, geometry=...)                 why each backend would refuse x, y
    GEOMETRIES                                           the geometry registry
    nn.ContrastiveLoss, nn.ClipLoss                      modules (learnable scale/curvature)
    nn.SigmoidContrastiveLoss, nn.SigLipLoss             SigLIP modules (open_clip drop-in)
    infonce(..., group=pg)                               torch.distributed, exact gradients
"""

from .geometry import GEOMETRIES, get_geometry
from .losses import explain_backends, infonce, pairwise_lse, siglip
from . import distributed, nn
from .nn import ClipLoss, ContrastiveLoss, SigLipLoss, SigmoidContrastiveLoss
from .reference import (reference_infonce, reference_logits, reference_pairwise_lse,
                        reference_siglip)

__version__ = "0.1.0"

__all__ = [
    "ClipLoss",
    "ContrastiveLoss",
    "SigLipLoss",
    "SigmoidContrastiveLoss",
    "GEOMETRIES",
    "explain_backends",
    "get_geometry",
    "infonce",
    "pairwise_lse",
    "reference_infonce",
    "reference_logits",
    "reference_pairwise_lse",
    "reference_siglip",
    "siglip",
    "distributed",
    "nn",
    "__version__",
]
