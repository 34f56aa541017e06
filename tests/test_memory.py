"""Memory: no N x M tensor ever (torch backend), and no N x d tensor beyond dX, dY (cpu)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import flashnce
from flashnce import features
from flashnce.core.numerics import NORM_EPS
from flashnce.core.problem import TileProblem
from flashnce.core.spec import NUM_ROW_SCALARS

from _helpers import GEOMETRY_NAMES, make_features, needs_cpu_kernel

N = M = 2048


class LargestTensor(TorchDispatchMode):
    """Records the element count of every tensor any op returns while active."""

    def __init__(self):
        super().__init__()
        self.largest, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.op = t.numel(), func
        return out


@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
def test_no_n_by_m_tensor(geometry):
    x = make_features(N, 64, seed=1, geometry=geometry).requires_grad_()
    y = make_features(M, 64, seed=2, geometry=geometry, role="y").requires_grad_()
    scale = torch.tensor(3.0, requires_grad=True)
    curv = torch.tensor(1.0, requires_grad=True)
    with LargestTensor() as mode:
        loss = flashnce.infonce(x, y, geometry=geometry, scale=scale, curvature=curv,
                                backend="torch")
        loss.backward()
    assert torch.isfinite(loss)
    assert mode.largest > 0, "the dispatch mode saw no tensors: the test would be vacuous"
    assert mode.largest < N * M // 4, (
        f"{mode.op} created a tensor of {mode.largest} elements (N*M/4 = {N * M // 4})")


def test_detector_catches_materialisation():
    """Guard against a vacuous test: the materialised reference must trip the detector."""
    x = make_features(256, 8, seed=1).requires_grad_()
    with LargestTensor() as mode:
        flashnce.infonce(x, x.detach(), backend="reference").backward()
    assert mode.largest >= 256 * 256


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
def test_prologue_makes_no_operand_copy(geometry, dtype):
    """Every prologue hands the features to the kernels as given (cosine and the hyperbolic
    geometries normalise inside the kernel): no N x d copy, only O(N) per-row scalars, and
    those are computed from the operand as the GEMM sees it (P1)."""
    x = make_features(64, 16, seed=1, geometry=geometry, dtype=dtype)
    geo = flashnce.get_geometry(geometry)
    prob = TileProblem(x, x, geometry, 1.0, 1.0, False)
    # The operand is an alias of x (same storage, no copy) carrying the features' graph node.
    assert prob.x_op.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    assert prob.x_scalars.shape == (64, NUM_ROW_SCALARS[geo.kind])
    if geometry == "cosine":
        # The norm of x as rounded to its dtype (P1), to fp32 rounding: a bf16 norm would be
        # off by ~2^-9, far outside this tolerance.
        want = x.double().norm(dim=-1).clamp_min(NORM_EPS).float()
        torch.testing.assert_close(prob.x_scalars[:, 0], want, rtol=3e-7, atol=0)


class FreshAllocations(TorchDispatchMode):
    """Records ops whose outputs own a new storage of at least ``min_bytes`` bytes.

    An output that shares storage with one of the op's inputs (views, in-place updates such
    as addcmul_ / index_add_) is not an allocation and is not recorded.
    """

    def __init__(self, min_bytes):
        super().__init__()
        self.min_bytes, self.fresh = min_bytes, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr()
                  for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            if storage.nbytes() >= self.min_bytes and storage.data_ptr() not in inputs:
                self.fresh.append((str(func), tuple(t.shape)))
        return out


def _feature_sized_allocations(monkeypatch, x, y, loss_fn=flashnce.infonce, **kwargs):
    n, d = x.shape
    # Chunk the row dots at N/16 rows: a chunk's fp32 temporaries (N d / 4 bytes) stay below
    # the threshold (a quarter of a feature tensor: N d / 2 bytes at bf16).
    monkeypatch.setattr(features, "_CHUNK_ELEMENTS", n * d // 16)
    xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
    scale = torch.tensor(3.0, requires_grad=True)
    curvature = torch.tensor(1.0, requires_grad=True)
    with FreshAllocations(min_bytes=n * d * x.element_size() // 4) as mode:
        loss = loss_fn(xx, yy, scale=scale, curvature=curvature, backend="cpu", **kwargs)
        loss.backward()
    assert torch.isfinite(loss) and xx.grad is not None and yy.grad is not None
    return mode.fresh


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
def test_only_n_by_d_tensors_are_the_kernel_gradients(monkeypatch, geometry, dtype):
    """Forward + backward of InfoNCE allocate exactly two feature-sized tensors, the kernel's
    dX and dY: the prologue's norm gradients and the positive-pair gradients are added into
    them in place (flashnce.features), which is what keeps the loss's peak memory at
    N = 32768 within the inputs + gradients + a few MiB (bench/cpu_kernel_bench.py)."""
    n, d = 512, 32
    x = make_features(n, d, seed=1, geometry=geometry, dtype=dtype)
    y = make_features(n, d, seed=2, geometry=geometry, role="y", dtype=dtype)
    fresh = _feature_sized_allocations(monkeypatch, x, y, geometry=geometry)
    assert fresh == [("flashnce.tile_bwd.default", (n, d))] * 2, fresh


@needs_cpu_kernel
@pytest.mark.parametrize("geometry", ["cosine", "lorentz"])
def test_only_kernel_gradients_with_targets(monkeypatch, geometry):
    """One-way InfoNCE with targets (shared and repeated columns): still only dX and dY."""
    n, m, d = 384, 512, 32
    x = make_features(n, d, seed=1, geometry=geometry)
    y = make_features(m, d, seed=2, geometry=geometry, role="y")
    targets = torch.randint(0, m, (n,), generator=torch.Generator().manual_seed(0))
    fresh = _feature_sized_allocations(monkeypatch, x, y, geometry=geometry, symmetric=False,
                                       targets=targets)
    assert fresh == [("flashnce.tile_bwd.default", (n, d)),
                     ("flashnce.tile_bwd.default", (m, d))], fresh


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
def test_siglip_allocates_only_the_one_pass_gradients(monkeypatch, geometry, dtype):
    """SigLIP forward + backward: the one-pass op's dX and dY are the only feature-sized
    tensors; the backward scales them in place into the returned gradients."""
    n, d = 512, 32
    x = make_features(n, d, seed=1, geometry=geometry, dtype=dtype)
    y = make_features(n, d, seed=2, geometry=geometry, role="y", dtype=dtype)
    fresh = _feature_sized_allocations(monkeypatch, x, y, flashnce.siglip, geometry=geometry,
                                       bias=torch.tensor(-1.0, requires_grad=True))
    assert fresh == [("flashnce.tile_fwd_grad.default", (n, d))] * 2, fresh


@needs_cpu_kernel
def test_fresh_allocation_detector_fires():
    """Guard against a vacuous test: autograd's own composition of the same gradient terms
    (an N x d product gradient, summed into dX) is seen."""
    x = make_features(512, 32, seed=1).requires_grad_()
    y = make_features(512, 32, seed=2)
    with FreshAllocations(min_bytes=512 * 32 * 4 // 4) as mode:
        (x * y).sum().backward()
    assert mode.fresh, "the detector saw no N x d allocation"
