"""flashnce.siglip and its modules: every backend that declares ``pair_sum``, against float64.

The matrix (backend x geometry x dtype x shape, diagonal and label positives) comes from the
backends' declared capabilities: a backend that does not declare the statistic, or refuses the
inputs, is skipped with its reason. Values and gradients of x, y, scale, bias and curvature
against ``flashnce.reference_siglip`` (materialised float64 logits, explicit manifold points).
open_clip's own ``SigLipLoss`` is the published reference where it is installed
(``pip install --no-deps open-clip-torch``; its loss module needs only torch).
"""

import inspect
import math

import pytest
import torch

import flashnce
from flashnce import dispatch
from flashnce.bench.cases import open_clip_loss_module
from flashnce.core.relation import Relation

from _helpers import (FP32_GRAD_RTOL, FP32_LOSS_RTOL, GEOMETRY_NAMES, assert_close,
                      make_features, tile_spec)
from test_memory import LargestTensor

CPU_BACKENDS = tuple(name for name, b in dispatch.BACKENDS.items()
                     if b.devices is None or "cpu" in b.devices)
TOL = {torch.float32: (FP32_LOSS_RTOL, FP32_GRAD_RTOL), torch.float64: (1e-10, 1e-9)}
# The Triton interpreter takes ~1 s per call: a subset of the shapes.
SLOW = {"triton": dict(n=(1, 13), d=(3,))}


def _require(backend, x, *, n=None, d=None):
    b = dispatch.get_backend(backend)
    if "pair_sum" not in b.stats:
        pytest.skip(f"backend {backend!r} does not declare the pair_sum statistic")
    subset = SLOW.get(backend)
    if subset and (n not in subset["n"] or d not in subset["d"]):
        pytest.skip(f"{backend}: covered by a subset of the shapes (the interpreter is slow)")
    reasons = b.not_supported_reasons(x, x, tile_spec(stat="pair_sum",
                                                      relation=Relation.diagonal()))
    if reasons:
        pytest.skip(f"backend {backend!r} refuses: {'; '.join(reasons)}")


def _params(dtype=torch.float64):
    scale = torch.tensor(3.0, dtype=dtype, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=dtype, requires_grad=True)
    curv = torch.tensor(0.8, dtype=dtype, requires_grad=True)
    return scale, bias, curv


def _oracle(x, y, geometry, labels=None, reduction="mean"):
    x64 = x.detach().double().requires_grad_()
    y64 = y.detach().double().requires_grad_()
    scale, bias, curv = _params()
    loss = flashnce.reference_siglip(x64, y64, geometry=geometry, scale=scale, bias=bias,
                                     curvature=curv, labels=labels, reduction=reduction)
    inputs = [x64, y64, scale, bias, curv]
    grads = torch.autograd.grad(loss.sum(), inputs, allow_unused=True)
    return loss.detach(), [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]


def check_siglip(backend, geometry, x, y, labels=None, reduction="mean"):
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    scale, bias, curv = _params()
    loss = flashnce.siglip(x, y, geometry=geometry, scale=scale, bias=bias, curvature=curv,
                           labels=labels, reduction=reduction, backend=backend)
    assert loss.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    grads = torch.autograd.grad(loss.sum(), [x, y, scale, bias, curv], allow_unused=True)
    ref, ref_grads = _oracle(x, y, geometry, labels, reduction)
    t_loss, t_grad = TOL[x.dtype]
    assert_close(loss.reshape(-1).double(), ref.reshape(-1), t_loss, f"{geometry} loss")
    for name, g, rg in zip(("x", "y", "scale", "bias", "curvature"), grads, ref_grads):
        if g is None:  # only a flat geometry's curvature, whose true gradient is 0
            assert name == "curvature" and rg.abs().max() == 0
            continue
        if name in ("x", "y"):
            assert g.dtype == x.dtype
        assert_close(g.reshape(rg.shape).double(), rg, t_grad, f"{geometry} d{name}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("n", [1, 13, 300])
@pytest.mark.parametrize("d", [3, 64])
def test_diagonal_matches_reference(backend, dtype, geometry, n, d):
    x = make_features(n, d, dtype=dtype, seed=n + d, geometry=geometry)
    y = make_features(n, d, dtype=dtype, seed=n + d + 1, geometry=geometry, role="y")
    _require(backend, x, n=n, d=d)
    check_siglip(backend, geometry, x, y)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("n,m", [(13, 7), (1, 9), (300, 257)])
def test_labels_matches_reference(backend, geometry, n, m):
    """Multi-positive SigLIP with N != M: every pair with equal labels is a positive."""
    x = make_features(n, 3, seed=n, geometry=geometry)
    y = make_features(m, 3, seed=m + 1, geometry=geometry, role="y")
    _require(backend, x, n=n if n != 300 else None, d=3)
    g = torch.Generator().manual_seed(n * m)
    labels = (torch.randint(0, 4, (n,), generator=g), torch.randint(0, 4, (m,), generator=g))
    check_siglip(backend, geometry, x, y, labels=labels)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions(backend, reduction):
    x = make_features(13, 3, seed=3)
    y = make_features(13, 3, seed=4, role="y")
    _require(backend, x, n=13, d=3)
    check_siglip(backend, "cosine", x, y, reduction=reduction)
    labels = torch.tensor([0, 1, 1, 2, 0, 3, 3, 3, 4, 5, 0, 1, 2])
    check_siglip(backend, "lorentz", x, y, labels=labels, reduction=reduction)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_one_pass_and_recompute_paths_agree(backend):
    """With gradients the forward walk computes them (one pass); without, or per row, the
    backward recomputes the tiles: the values must agree, and so must the gradients."""
    x = make_features(37, 8, seed=5, dtype=torch.float64).requires_grad_()
    y = make_features(37, 8, seed=6, dtype=torch.float64, role="y").requires_grad_()
    _require(backend, x, n=None, d=None) if backend != "triton" else _require(backend, x, n=13,
                                                                              d=3)
    kw = dict(geometry="euclidean", scale=2.0, bias=-1.0, backend=backend)
    one_pass = flashnce.siglip(x, y, **kw)
    gx1, gy1 = torch.autograd.grad(one_pass, [x, y])
    per_row = flashnce.siglip(x, y, reduction="none", **kw)
    gx2, gy2 = torch.autograd.grad(per_row.sum() / 37, [x, y])
    with torch.no_grad():
        no_grad = flashnce.siglip(x, y, **kw)
    torch.testing.assert_close(one_pass, per_row.mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(one_pass, no_grad, rtol=1e-12, atol=0)
    torch.testing.assert_close(gx1, gx2, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(gy1, gy2, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("geometry", ["cosine", "sqeuclidean", "poincare", "lorentz"])
def test_gradcheck(backend, geometry):
    x = make_features(5, 3, dtype=torch.float64, seed=7, geometry=geometry).requires_grad_()
    y = make_features(6, 3, dtype=torch.float64, seed=8, geometry=geometry,
                      role="y").requires_grad_()
    _require(backend, x)
    scale, bias, curv = _params()
    labels = (torch.tensor([0, 1, 2, 0, 1]), torch.tensor([1, 1, 0, 2, 3, 0]))

    def f(x, y, scale, bias, curv):
        return flashnce.siglip(x, y, geometry=geometry, scale=scale, bias=bias, curvature=curv,
                               labels=labels, backend=backend)

    assert torch.autograd.gradcheck(f, (x, y, scale, bias, curv))


def test_matches_textbook_at_paper_init():
    """The paper's initialisation (t = 10, b = -10) on normalised features, written out."""
    torch.manual_seed(0)
    x, y = torch.randn(50, 16, dtype=torch.float64), torch.randn(50, 16, dtype=torch.float64)
    xn, yn = torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(y, dim=-1)
    logits = 10.0 * xn @ yn.T - 10.0
    z = 2 * torch.eye(50, dtype=torch.float64) - 1
    want = -torch.nn.functional.logsigmoid(z * logits).sum() / 50
    got = flashnce.siglip(x, y, scale=10.0, bias=-10.0, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_no_n_by_m_tensor():
    n = 2048
    x = make_features(n, 32, seed=1).requires_grad_()
    y = make_features(n, 32, seed=2, role="y").requires_grad_()
    scale = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    with LargestTensor() as mode:
        loss = flashnce.siglip(x, y, scale=scale, bias=bias, backend="torch")
        loss.backward()
    assert torch.isfinite(loss) and mode.largest > 0
    assert mode.largest < n * n // 4, f"{mode.op} created {mode.largest} elements"


def test_nan_feature_propagates_to_the_loss():
    x = make_features(9, 4, seed=1)
    y = make_features(9, 4, seed=2, role="y")
    x[3, 1] = float("nan")
    for geometry in GEOMETRY_NAMES:
        with pytest.raises(ValueError, match="finite"):
            flashnce.siglip(x, y, geometry=geometry, scale=1.0, bias=0.0, backend="torch")


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(labels=torch.zeros(5, dtype=torch.int64)), ValueError, r"shape \(6,\)"),
    (dict(labels=torch.zeros(6)), TypeError, "integer dtype"),
    (dict(labels=torch.zeros(6, dtype=torch.bool)), TypeError, "integer dtype"),
    (dict(labels=[0, 1, 2, 3, 4, 5]), ValueError, "pair"),
    (dict(labels=torch.zeros(6, dtype=torch.int64, device="meta")), ValueError, "meta"),
    (dict(labels=(torch.zeros(6, dtype=torch.int64),)), ValueError, "pair"),
    (dict(bias=float("nan")), ValueError, "bias"),
    (dict(bias=torch.tensor([1.0, 2.0])), ValueError, "bias"),
    (dict(scale=float("inf")), ValueError, "scale"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(backend="bogus"), ValueError, "backend"),
    (dict(group_mode="bogus"), ValueError, "group_mode"),
])
def test_bad_inputs(kwargs, err, match):
    x, y = torch.randn(6, 4), torch.randn(6, 4)
    kw = dict(scale=10.0, bias=-10.0)
    kw.update(kwargs)
    with pytest.raises(err, match=match):
        flashnce.siglip(x, y, **kw)


def test_scale_and_bias_are_required():
    x = torch.randn(4, 3)
    with pytest.raises(TypeError, match="scale= and bias="):
        flashnce.siglip(x, x)
    with pytest.raises(TypeError, match="scale= and bias="):
        flashnce.siglip(x, x, scale=10.0)


def test_unequal_rows_need_labels():
    with pytest.raises(ValueError, match="labels="):
        flashnce.siglip(torch.randn(4, 3), torch.randn(5, 3), scale=1.0, bias=0.0)
    with pytest.raises(ValueError, match="N == M"):
        flashnce.siglip(torch.randn(4, 3), torch.randn(5, 3), scale=1.0, bias=0.0,
                        labels=torch.zeros(4, dtype=torch.int64))


def test_caller_tensors_untouched():
    x, y = torch.randn(7, 4), torch.randn(7, 4)
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 0], dtype=torch.int32)
    copies = [t.clone() for t in (x, y, labels)]
    flashnce.siglip(x.requires_grad_(), y, scale=2.0, bias=-1.0, labels=labels,
                    backend="torch").backward()
    for t, c in zip((x.detach(), y, labels), copies):
        assert torch.equal(t, c) and t.dtype == c.dtype


# --- modules -------------------------------------------------------------------------------


def _open_clip_loss_module():
    try:
        return open_clip_loss_module()
    except ImportError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_siglip_loss_matches_open_clip(backend):
    oc = _open_clip_loss_module()
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(64, 32, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(64, 32, dtype=torch.float64), dim=-1)
    _require(backend, img)
    results = []
    for impl in (oc.SigLipLoss(), flashnce.nn.SigLipLoss(backend=backend)):
        i, t = img.clone().requires_grad_(), txt.clone().requires_grad_()
        scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
        bias = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
        out = impl(i, t, scale, bias, output_dict=True)
        loss = out["contrastive_loss"]
        results.append((loss, *torch.autograd.grad(loss, [i, t, scale, bias])))
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_siglip_loss_signature_matches_open_clip():
    oc = _open_clip_loss_module()
    ours, theirs = (inspect.signature(c.__init__) for c in (flashnce.nn.SigLipLoss,
                                                             oc.SigLipLoss))
    assert list(theirs.parameters)[:5] == list(ours.parameters)[:5]
    assert list(inspect.signature(oc.SigLipLoss.forward).parameters) == list(
        inspect.signature(flashnce.nn.SigLipLoss.forward).parameters)


def test_siglip_loss_rejects_unknown_dist_impl():
    with pytest.raises(ValueError, match="dist_impl"):
        flashnce.nn.SigLipLoss(dist_impl="allreduce")


def test_sigmoid_module_learns_scale_and_bias():
    m = flashnce.nn.SigmoidContrastiveLoss(geometry="lorentz")
    assert math.isclose(float(m.scale.detach()), 10.0, rel_tol=1e-6) and float(m.bias.detach()) == -10.0
    names = {n for n, _ in m.named_parameters()}
    assert names == {"log_scale", "bias", "log_curvature"}
    x = make_features(9, 4, seed=1, geometry="lorentz")
    y = make_features(9, 4, seed=2, geometry="lorentz", role="y")
    loss = m(x, y)
    loss.backward()
    for p in m.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs() > 0
    with torch.no_grad():
        m.log_scale.fill_(10.0)
    m(x, y)
    assert math.isclose(float(m.scale.detach()), 100.0, rel_tol=1e-6)  # open_clip's clamp
    with pytest.raises(ValueError, match="bias_init"):
        flashnce.nn.SigmoidContrastiveLoss(bias_init=float("nan"))


def test_compiles_fullgraph():
    x = make_features(12, 4, seed=1).requires_grad_()
    y = make_features(12, 4, seed=2, role="y").requires_grad_()
    bias = torch.tensor(-3.0, requires_grad=True)

    def f(x, y, bias):
        return flashnce.siglip(x, y, scale=5.0, bias=bias, backend="torch")

    eager = f(x, y, bias)
    compiled = torch.compile(f, fullgraph=True, backend="eager")(x, y, bias)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(torch.autograd.grad(compiled, [x, bias]),
                               torch.autograd.grad(eager, [x, bias]))


@pytest.mark.parametrize("compile_backend", ["eager", "aot_eager"])
def test_compiles_fullgraph_through_autograd(compile_backend):
    x = make_features(12, 4, seed=1).requires_grad_()
    y = make_features(12, 4, seed=2, role="y").requires_grad_()

    def f(x, y):
        return flashnce.siglip(x, y, scale=5.0, bias=-2.0, backend="torch")

    want = torch.autograd.grad(f(x, y), [x, y])
    got = torch.autograd.grad(torch.compile(f, fullgraph=True, backend=compile_backend)(x, y),
                              [x, y])
    torch.testing.assert_close(got, want)


def test_second_backward_through_one_pass_graph_recomputes():
    """The one-pass gradients are scaled in place (no N x d copy in backward): a second
    backward through the same graph (retain_graph) reruns the walk and gives the same
    gradients, not doubly scaled ones."""
    x = make_features(9, 4, seed=1).requires_grad_()
    y = make_features(9, 4, seed=2, role="y")
    loss = flashnce.siglip(x, y, scale=3.0, bias=-1.0, backend="torch")
    (g1,) = torch.autograd.grad(loss, [x], retain_graph=True)
    (g2,) = torch.autograd.grad(loss * 2, [x])
    torch.testing.assert_close(g2, 2 * g1)
    (g3,) = torch.autograd.grad(flashnce.siglip(x, y, scale=3.0, bias=-1.0, backend="torch",
                                                reduction="none").sum() / 9, [x])
    torch.testing.assert_close(g1, g3)
