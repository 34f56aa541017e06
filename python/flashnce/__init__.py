"""flashnce: memory-linear fused contrastive losses in every geometry.

Public API:
    infonce(x, y, *, geometry, scale, curvature, ...)   symmetric / one-way InfoNCE (CLIP)
    siglip(x, y, *, geometry, scale, bias, labels, ...)  SigLIP (sigmoid) loss, any geometry
    supcon(embeddings, labels, *, temperature, ...)     supervised contrastive (SupCon)
    ntxent(z1, z2, *, temperature, ...)                  NT-Xent (SimCLR), two views
    uniformity(x, *, t), alignment(x, y, *, alpha)      Wang & Isola's two terms
    margin_softmax(x, centres, labels, *, margin_type)  ArcFace / CosFace against class centres
    pairwise_lse(x, y, *, geometry, ...)                 the row/column log-sum-exp primitive
    retrieval_metrics(x, y, *, geometry, ks, ...)       exact recall@K / ranks, both directions
    explain_backends(x, y, geometry=...)                 why each backend would refuse x, y
    GEOMETRIES                                           the geometry registry
    project_radius_(x, geometry=..., max_radius=...)     keep hyperbolic rows inside the cap
    nn.ContrastiveLoss, nn.ClipLoss                      modules (learnable scale/curvature)
    nn.SigmoidContrastiveLoss, nn.SigLipLoss             SigLIP modules (open_clip drop-in)
    nn.ArcFaceLoss, nn.CosFaceLoss                       class-centre modules (PML drop-in)
    infonce(..., group=pg)                               torch.distributed, exact gradients
"""

from .geometry import GEOMETRIES, RadiusCapWarning, get_geometry, project_radius_
from .losses import explain_backends, infonce, pairwise_lse, siglip
from .same_set import ntxent, supcon
from .class_softmax import margin_softmax
from .uniformity import alignment, uniformity
from .retrieval import RetrievalMetrics, retrieval_metrics
from . import distributed, nn
from .nn import ClipLoss, ContrastiveLoss, SigLipLoss, SigmoidContrastiveLoss
from .reference import (reference_infonce, reference_logits, reference_ntxent,
                        reference_margin_softmax, reference_pairwise_lse, reference_siglip,
                        reference_supcon, reference_uniformity)

__version__ = "0.1.0"

__all__ = [
    "ClipLoss",
    "ContrastiveLoss",
    "SigLipLoss",
    "SigmoidContrastiveLoss",
    "GEOMETRIES",
    "explain_backends",
    "get_geometry",
    "project_radius_",
    "RadiusCapWarning",
    "infonce",
    "pairwise_lse",
    "reference_infonce",
    "reference_logits",
    "reference_margin_softmax",
    "reference_pairwise_lse",
    "reference_ntxent",
    "reference_siglip",
    "reference_supcon",
    "reference_uniformity",
    "RetrievalMetrics",
    "retrieval_metrics",
    "siglip",
    "alignment",
    "margin_softmax",
    "ntxent",
    "supcon",
    "uniformity",
    "distributed",
    "nn",
    "__version__",
]
