"""Numerics constants and dtype rules shared by every layer (imports only torch).

* Epilogue, statistics and saved state run in the *compute dtype*: float64 for float64
  inputs, float32 otherwise (bf16 / fp16 products accumulate in fp32).
* ``clamp_kappa``: the relative floor of the distance clamps (euclidean D >= kappa (a + b),
  hyperbolic w >= kappa S_i S_j). It sits just above the fp32 (or fp64) rounding of a
  GEMM-built distance, so coincident points get finite, exactly-zero gradients.
* ``MAX_RADIUS``: MERU caps the hyperbolic radius at asinh(2^15): beyond it the fp32 product
  S_i S_j loses the angular resolution (docs/NUMERICS.md).
* ``NORM_EPS``: the norm floor of directions (``F.normalize``'s eps): a zero feature maps to
  the origin / has cosine 0 with everything.
"""

from __future__ import annotations

import math

import torch

MAX_RADIUS = math.asinh(2.0**15)
NORM_EPS = 1e-12


def clamp_kappa(dtype: torch.dtype) -> float:
    """kappa of the distance clamps: 1e-14 for float64 math, 1e-6 for fp32 accumulation."""
    return 1e-14 if dtype == torch.float64 else 1e-6


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Epilogue, reductions and saved statistics run in fp32 (float64 stays float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
