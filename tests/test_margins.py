"""Margins on the positive: ``flashnce.margin_softmax`` (ArcFace / CosFace against class
centres), ``infonce(margin=)``, and the ``nn.ArcFaceLoss`` / ``nn.CosFaceLoss`` modules.

Oracles: ``flashnce.reference_margin_softmax`` (materialised float64 logits, the target logit
replaced as insightface writes it, via acos / cos), and pytorch-metric-learning's
``ArcFaceLoss`` / ``CosFaceLoss`` where it is installed.
"""

import math

import pytest
import torch

import flashnce
from flashnce import dispatch
from flashnce.core.margin import Margin

from _helpers import FP32_GRAD_RTOL, FP32_LOSS_RTOL, GEOMETRY_NAMES, assert_close, make_features
from _helpers import require_backend

CPU_BACKENDS = tuple(name for name, b in dispatch.BACKENDS.items()
                     if b.devices is None or "cpu" in b.devices)
TOL = {torch.float32: (FP32_LOSS_RTOL, FP32_GRAD_RTOL), torch.float64: (1e-10, 1e-9)}


def _problem(n, c, d, dtype, geometry="cosine", seed=0):
    x = make_features(n, d, dtype=dtype, seed=seed, geometry=geometry).requires_grad_(True)
    w = make_features(c, d, dtype=dtype, seed=seed + 1, geometry=geometry).requires_grad_(True)
    labels = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed + 2))
    return x, w, labels


def _check(backend, geometry, n, c, margin_type, margin=None, scale=16.0):
    require_backend(backend)
    dtype = torch.float32 if backend == "triton" else torch.float64
    x, w, labels = _problem(n, c, 8, dtype, geometry)
    s = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    loss = flashnce.margin_softmax(x, w, labels, margin_type=margin_type, margin=margin,
                                   scale=s, geometry=geometry, backend=backend)
    grads = torch.autograd.grad(loss, (x, w, s))
    x64, w64 = (t.detach().double().requires_grad_(True) for t in (x, w))
    s64 = s.detach().clone().requires_grad_(True)
    ref = flashnce.reference_margin_softmax(x64, w64, labels, margin_type=margin_type,
                                            margin=margin, scale=s64, geometry=geometry)
    ref_grads = torch.autograd.grad(ref, (x64, w64, s64))
    lt, gt = TOL[dtype]
    assert_close(loss, ref, lt, "loss")
    for g, r, name in zip(grads, ref_grads, ("x", "centres", "scale")):
        assert_close(g, r, gt, name)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("n,c", ((1, 3), (13, 29), (40, 7)))
@pytest.mark.parametrize("margin_type", ("arcface", "cosface"))
def test_margin_softmax_matches_oracle(backend, n, c, margin_type):
    if backend == "triton" and n > 13:
        pytest.skip("triton: covered by the small shapes (the interpreter is slow)")
    _check(backend, "cosine", n, c, margin_type)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("geometry", [g for g in GEOMETRY_NAMES if g != "cosine"])
def test_cosface_in_every_geometry(backend, geometry):
    _check(backend, geometry, 11, 17, "cosface", margin=0.2, scale=3.0)


def test_arcface_past_pi_continues_linearly():
    """Where theta + m > pi the logit is s (cos theta - m sin m) (insightface, PML): monotone
    in cos theta, and the loss / gradients still match the oracle there."""
    m = Margin("arcface", 0.5)
    c = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    h = m(c)
    assert bool((h[1:] >= h[:-1]).all())
    past = c < -math.cos(0.5)
    assert torch.allclose(h[past], c[past] - 0.5 * math.sin(0.5))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[-1.0, 0.05], [0.3, 1.0], [1.0, 0.0]], dtype=torch.float64,
                     requires_grad=True)
    labels = torch.tensor([0, 1])  # row 0's class is nearly antipodal: theta + m > pi
    loss = flashnce.margin_softmax(x, w, labels, backend="cpu")
    ref = flashnce.reference_margin_softmax(x, w, labels)
    assert_close(loss, ref, 1e-12, "loss")
    for a, b in zip(torch.autograd.grad(loss, (x, w)), torch.autograd.grad(ref, (x, w))):
        assert_close(a, b, 1e-10, "grad")


def test_arcface_gradient_is_bounded_at_coincident_rows():
    """cos theta = 1 (an embedding equal to its centre): d cos(theta + m) / d cos theta is
    unbounded there; the clamp keeps the gradient finite."""
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]], dtype=torch.float64,
                     requires_grad=True)
    loss = flashnce.margin_softmax(x, w, torch.tensor([0]), backend="cpu")
    gx, gw = torch.autograd.grad(loss, (x, w))
    assert torch.isfinite(loss) and torch.isfinite(gx).all() and torch.isfinite(gw).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("geometry,margin_type", (("cosine", "arcface"), ("cosine", "cosface"),
                                                  ("lorentz", "cosface")))
def test_infonce_margin_on_diagonal_positives(backend, geometry, margin_type):
    """Symmetric infonce(margin=): both directions see the same l'_ii = s h'_ii."""
    require_backend(backend)
    dtype = torch.float32 if backend == "triton" else torch.float64
    x = make_features(9, 6, dtype=dtype, seed=4, geometry=geometry).requires_grad_(True)
    y = make_features(9, 6, dtype=dtype, seed=5, geometry=geometry).requires_grad_(True)
    loss = flashnce.infonce(x, y, geometry=geometry, scale=5.0, margin=0.3,
                            margin_type=margin_type, backend=backend)
    gx, gy = torch.autograd.grad(loss, (x, y))
    x64, y64 = (t.detach().double().requires_grad_(True) for t in (x, y))
    h = flashnce.reference_logits(x64, y64, geometry=geometry, scale=1.0)
    idx = torch.arange(9)
    h_pos = Margin(margin_type, 0.3)(h[idx, idx])
    logits = (5.0 * h).index_put((idx, idx), 5.0 * h_pos)
    ce = torch.nn.functional.cross_entropy
    ref = 0.5 * (ce(logits, idx) + ce(logits.T, idx))
    rx, ry = torch.autograd.grad(ref, (x64, y64))
    lt, gt = TOL[dtype]
    assert_close(loss, ref, lt, "loss")
    assert_close(gx, rx, gt, "x")
    assert_close(gy, ry, gt, "y")


def test_zero_margin_is_plain_infonce():
    x, y = make_features(7, 5, seed=1), make_features(7, 5, seed=2)
    a = flashnce.infonce(x, y, backend="torch", margin=0.0, margin_type="arcface")
    assert torch.equal(a, flashnce.infonce(x, y, backend="torch"))


def test_bf16_and_fp16_against_float64():
    for dtype in (torch.bfloat16, torch.float16):
        x, w, labels = _problem(24, 50, 16, torch.float32)
        x16, w16 = x.detach().to(dtype), w.detach().to(dtype)
        loss = flashnce.margin_softmax(x16, w16, labels, backend="cpu")
        ref = flashnce.reference_margin_softmax(x16.double(), w16.double(), labels)
        assert loss.dtype == torch.float32
        assert abs(float(loss) - float(ref)) <= 2e-2 * abs(float(ref)), dtype


def test_gradcheck_float64():
    x, w, labels = _problem(5, 7, 4, torch.float64)
    s = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    for mt in ("arcface", "cosface"):
        torch.autograd.gradcheck(
            lambda a, b, sc: flashnce.margin_softmax(a, b, labels, margin_type=mt, scale=sc,
                                                     backend="cpu"), (x, w, s))


def test_no_n_by_c_allocation():
    """No tensor of N x C elements is allocated (the torch backend's tiles are 128 x 128 at
    most; here N x C = 300 x 5000 would be the materialised logits)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    n, c = 300, 5000
    x, w, labels = _problem(n, c, 8, torch.float32)
    x, w = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    largest = [0]

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    largest[0] = max(largest[0], t.numel())
            return out

    with Watch():
        loss = flashnce.margin_softmax(x, w, labels, backend="torch")
        loss.backward()
    assert largest[0] < n * c // 4, largest[0]


def _pml():
    return pytest.importorskip("pytorch_metric_learning.losses",
                               reason="pytorch-metric-learning is not installed")


@pytest.mark.parametrize("name", ("ArcFaceLoss", "CosFaceLoss"))
def test_modules_match_pytorch_metric_learning(name):
    pml = _pml()
    torch.manual_seed(0)
    theirs = getattr(pml, name)(num_classes=40, embedding_size=12).double()
    ours = getattr(flashnce.nn, name)(num_classes=40, embedding_size=12).double()
    with torch.no_grad():
        ours.centres.copy_(theirs.W.t())
    e = torch.randn(33, 12, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 40, (33,))
    a, b = ours(e, labels), theirs(e, labels)
    ga = torch.autograd.grad(a, (e, ours.centres))
    gb = torch.autograd.grad(b, (e, theirs.W))
    assert_close(a, b, 1e-10, "loss")
    assert_close(ga[0], gb[0], 1e-9, "embeddings")
    assert_close(ga[1], gb[1].t(), 1e-9, "centres")


def test_module_casts_centres_to_the_embeddings_dtype():
    mod = flashnce.nn.CosFaceLoss(10, 8)
    e = torch.randn(6, 8).to(torch.bfloat16).requires_grad_(True)
    loss = mod(e, torch.arange(6))
    loss.backward()
    assert mod.centres.grad is not None and mod.centres.grad.dtype == torch.float32


def test_bad_input_gets_clear_errors():
    x, w, labels = _problem(4, 6, 3, torch.float32)
    cases = [
        (dict(labels=labels[:3]), ValueError, "labels"),
        (dict(labels=labels.float()), TypeError, "labels"),
        (dict(labels=labels + 6), ValueError, r"\[0, 6\)"),
        (dict(labels=labels - 7), ValueError, r"\[0, 6\)"),
        (dict(margin=0.0), ValueError, "ArcFace margin"),
        (dict(margin=math.pi), ValueError, "ArcFace margin"),
        (dict(margin=-0.1, margin_type="cosface"), ValueError, "CosFace margin"),
        (dict(margin="0.5"), TypeError, "margin"),
        (dict(margin_type="sphereface"), ValueError, "margin_type"),
        (dict(geometry="lorentz"), ValueError, "geometry='cosine'"),
        (dict(w=w.double()), TypeError, "dtype"),
        (dict(w=w[:, :2]), ValueError, "feature dim"),
        (dict(x=x[0]), ValueError, r"\[N, d\]"),
    ]
    for over, exc, match in cases:
        args = dict(x=x, w=w, labels=labels)
        kw = {k: v for k, v in over.items() if k not in args}
        args.update({k: v for k, v in over.items() if k in args})
        with pytest.raises(exc, match=match):
            flashnce.margin_softmax(args["x"], args["w"], args["labels"], **kw)
    with pytest.raises(ValueError, match="positive int"):
        flashnce.nn.ArcFaceLoss(0, 8)
    with pytest.raises(ValueError, match="ArcFace margin"):
        flashnce.nn.ArcFaceLoss(10, 8, margin=180.0)  # degrees, as pytorch-metric-learning
    with pytest.raises(ValueError, match="ArcFace margin"):
        flashnce.infonce(x, x, margin=4.0, margin_type="arcface")
