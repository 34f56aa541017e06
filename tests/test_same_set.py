"""SupCon, NT-Xent, uniformity and alignment: every backend that declares the statistic they
need, against float64 materialised oracles and the published implementations.

The backend matrix comes from the backends' declared capabilities (``masked_sum`` for SupCon
"out" and NT-Xent, ``lse`` for the rest): a backend that does not declare it, or refuses the
inputs, is skipped with its reason. Oracles: ``flashnce.reference_supcon`` /
``reference_ntxent`` / ``reference_uniformity`` (materialised float64 logits),
pytorch-metric-learning's ``SupConLoss`` / ``NTXentLoss`` where installed, SupContrast's
``SupConLoss.forward`` written out below, and ``torch.pdist`` for uniformity.
"""

import pytest
import torch
import torch.nn.functional as F

import flashnce
from flashnce import dispatch
from flashnce.core.relation import Relation

from _helpers import FP32_GRAD_RTOL, FP32_LOSS_RTOL, GEOMETRY_NAMES, assert_close, make_features
from _helpers import tile_spec
from test_memory import LargestTensor

CPU_BACKENDS = tuple(name for name, b in dispatch.BACKENDS.items()
                     if b.devices is None or "cpu" in b.devices)
TOL = {torch.float32: (FP32_LOSS_RTOL, FP32_GRAD_RTOL), torch.float64: (1e-10, 1e-9)}
SLOW = {"triton": dict(n=(1, 13), d=(3,))}  # the interpreter: a subset of the shapes


def _require(backend, x, stat, *, n=None, d=None):
    b = dispatch.get_backend(backend)
    if stat not in b.stats:
        pytest.skip(f"backend {backend!r} does not declare the {stat} statistic")
    subset = SLOW.get(backend)
    if subset and (n not in subset["n"] or d not in subset["d"]):
        pytest.skip(f"{backend}: covered by a subset of the shapes (the interpreter is slow)")
    reasons = b.not_supported_reasons(x, x, tile_spec(stat=stat, relation=Relation.labels(
        torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))))
    if reasons:
        pytest.skip(f"backend {backend!r} refuses: {'; '.join(reasons)}")


def _grads(loss, inputs):
    gs = torch.autograd.grad(loss.sum(), inputs, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, gs)]


def _compare(got, want, inputs64, inputs, dtype, what):
    t_loss, t_grad = TOL[dtype]
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(got.detach().double().reshape(-1), want.detach().reshape(-1), t_loss,
                 f"{what} loss")
    for k, (g, rg) in enumerate(zip(_grads(got, inputs), _grads(want, inputs64))):
        assert torch.isfinite(g).all(), f"{what}: non-finite gradient {k}"
        assert_close(g.double(), rg, t_grad, f"{what} grad {k}")


def _labels(n, kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "random":  # several classes, some singletons
        lab = torch.randint(0, max(1, n // 3), (n,), generator=g)
        if n > 2:
            lab[0] = n + 5  # a singleton: a row without a positive
        return lab
    if kind == "same":
        return torch.zeros(n, dtype=torch.long)
    return torch.arange(n)  # "distinct": no row has a positive


# ---- SupCon ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("n,d", ((1, 3), (2, 5), (13, 3), (40, 17)))
@pytest.mark.parametrize("variant", ("out", "in"))
def test_supcon_matches_float64_oracle(backend, geometry, dtype, n, d, variant):
    e = make_features(n, d, dtype=dtype, geometry=geometry, seed=n + d)
    _require(backend, e, "masked_sum" if variant == "out" else "lse", n=n, d=d)
    lab = _labels(n, "random", seed=d)
    curv = torch.tensor(0.8, dtype=dtype, requires_grad=True)
    temp = torch.tensor(0.5, dtype=dtype, requires_grad=True)
    e = e.clone().requires_grad_()
    got = flashnce.supcon(e, lab, temperature=temp, variant=variant, geometry=geometry,
                          curvature=curv, backend=backend)
    e64 = e.detach().double().requires_grad_()
    c64 = curv.detach().double().requires_grad_()
    t64 = temp.detach().double().requires_grad_()
    want = flashnce.reference_supcon(e64, lab, temperature=t64, variant=variant,
                                     geometry=geometry, curvature=c64)
    _compare(got, want, [e64, t64, c64], [e, temp, curv], dtype, f"{backend} {geometry}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ("same", "distinct", "random"))
def test_supcon_rows_without_positive(backend, kind):
    """Rows without a positive: left out of the mean and counted; none at all gives 0 with a
    zero gradient; reduction="none" gives 0 on those rows. Never NaN."""
    e = make_features(9, 4, dtype=torch.float64, seed=3).requires_grad_()
    _require(backend, e, "masked_sum", n=13, d=3)
    lab = _labels(9, kind)
    loss, missing = flashnce.supcon(e, lab, backend=backend, return_count=True)
    per_row = flashnce.supcon(e, lab, backend=backend, reduction="none")
    want_missing = int(sum(int((lab == v).sum()) == 1 for v in lab))
    assert missing == want_missing
    assert torch.isfinite(loss) and torch.isfinite(per_row).all()
    lone = torch.tensor([int((lab == v).sum()) == 1 for v in lab])
    assert (per_row[lone] == 0).all()
    if kind == "distinct":
        assert loss.item() == 0.0
        (g,) = torch.autograd.grad(loss, e)
        assert (g == 0).all()
    else:
        assert_close(loss.double(), per_row[~lone].mean().double(), 1e-12, "mean over kept")


def test_supcon_matches_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning.losses",
                              reason="pytorch-metric-learning is not installed")
    e = torch.randn(37, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    e.requires_grad_()
    lab = _labels(37, "random")
    for backend in ("torch", "auto"):
        got = flashnce.supcon(e, lab, temperature=0.1, backend=backend)
        want = pml.SupConLoss(temperature=0.1)(e, lab)
        (g,), (gw,) = torch.autograd.grad(got, e), torch.autograd.grad(want, e)
        assert_close(got, want, 1e-12, "loss")
        assert_close(g, gw, 1e-10, "grad")


def _supcontrast_reference(features, labels=None, temperature=0.07, contrast_mode="all",
                           base_temperature=0.07):
    """HobbitLong/SupContrast losses.py SupConLoss.forward, written out (current version:
    anchors without a positive divide by 1; here every anchor has one)."""
    bsz, n_views = features.shape[:2]
    features = features.view(bsz, n_views, -1)
    if labels is None:
        mask = torch.eye(bsz, dtype=features.dtype)
    else:
        labels = labels.view(-1, 1)
        mask = torch.eq(labels, labels.T).to(features.dtype)
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    if contrast_mode == "one":
        anchor, anchor_count = features[:, 0], 1
    else:
        anchor, anchor_count = contrast, n_views
    logits = anchor @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    mask = mask.repeat(anchor_count, n_views)
    logits_mask = torch.scatter(torch.ones_like(mask), 1,
                                torch.arange(bsz * anchor_count).view(-1, 1), 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    pos = mask.sum(1)
    mean_log_prob_pos = (mask * log_prob).sum(1) / torch.where(pos < 1e-6, 1, pos)
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(anchor_count, bsz).mean()


@pytest.mark.parametrize("contrast_mode", ("all", "one"))
@pytest.mark.parametrize("with_labels", (True, False))
def test_supcon_module_matches_supcontrast(contrast_mode, with_labels):
    g = torch.Generator().manual_seed(1)
    f = F.normalize(torch.randn(13, 3, 8, dtype=torch.float64, generator=g), dim=-1)
    f.requires_grad_()
    lab = torch.randint(0, 4, (13,), generator=g) if with_labels else None
    module = flashnce.nn.SupConLoss(temperature=0.1, contrast_mode=contrast_mode,
                                    base_temperature=0.07)
    got = module(f, lab)
    want = _supcontrast_reference(f, lab, 0.1, contrast_mode, 0.07)
    assert module.rows_without_positive == 0
    (g1,), (g2,) = torch.autograd.grad(got, f), torch.autograd.grad(want, f)
    assert_close(got, want, 1e-12, "loss")
    assert_close(g1, g2, 1e-10, "grad")


def test_supcon_bad_inputs():
    e = torch.randn(5, 3)
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        flashnce.supcon(e, torch.zeros(5))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        flashnce.supcon(e, [0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match=r"labels must have shape \(5,\)"):
        flashnce.supcon(e, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        flashnce.supcon(e, torch.zeros(5, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="variant"):
        flashnce.supcon(e, torch.zeros(5, dtype=torch.long), variant="bogus")
    with pytest.raises(TypeError, match="mask="):
        flashnce.nn.SupConLoss()(e.view(5, 1, 3), mask=torch.eye(5))
    with pytest.raises(ValueError, match="features must be"):
        flashnce.nn.SupConLoss()(e)
    with pytest.raises(ValueError, match="contrast_mode"):
        flashnce.nn.SupConLoss(contrast_mode="two")


def test_supcon_never_builds_the_n_by_n_matrix():
    n, d = 2048, 16
    e = torch.randn(n, d, requires_grad=True)
    lab = torch.randint(0, 64, (n,))
    with LargestTensor() as big:
        loss = flashnce.supcon(e, lab, backend="torch")
        loss.backward()
    assert big.largest < n * n // 4, f"largest tensor {big.largest} elements"


# ---- NT-Xent ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("n,d", ((1, 3), (13, 3), (33, 17)))
@pytest.mark.parametrize("denominator", ("all", "negatives"))
def test_ntxent_matches_float64_oracle(backend, geometry, dtype, n, d, denominator):
    z1 = make_features(n, d, dtype=dtype, geometry=geometry, seed=n)
    z2 = make_features(n, d, dtype=dtype, geometry=geometry, seed=n + 1, role="y")
    _require(backend, z1, "masked_sum" if denominator == "all" else "lse", n=n, d=d)
    z1, z2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    temp = torch.tensor(0.5, dtype=dtype, requires_grad=True)
    got = flashnce.ntxent(z1, z2, temperature=temp, geometry=geometry, denominator=denominator,
                          backend=backend, reduction="none")
    a, b = (t.detach().double().requires_grad_() for t in (z1, z2))
    t64 = temp.detach().double().requires_grad_()
    want = flashnce.reference_ntxent(a, b, temperature=t64, geometry=geometry,
                                     denominator=denominator, reduction="none")
    if n == 1 and denominator == "negatives":
        want = torch.zeros_like(want) + 0 * want.nan_to_num()  # no negative: 0 by definition
        assert (got == 0).all()
        return
    _compare(got, want, [a, b, t64], [z1, z2, temp], dtype, f"{backend} {geometry}")


def test_ntxent_matches_pytorch_metric_learning_and_module():
    pml = pytest.importorskip("pytorch_metric_learning.losses",
                              reason="pytorch-metric-learning is not installed")
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(21, 8, dtype=torch.float64, generator=g).requires_grad_()
    z2 = torch.randn(21, 8, dtype=torch.float64, generator=g).requires_grad_()
    got = flashnce.nn.NTXentLoss(temperature=0.07)(z1, z2)
    want = pml.NTXentLoss(temperature=0.07)(torch.cat([z1, z2]), torch.arange(21).repeat(2))
    assert_close(got, want, 1e-12, "loss")
    for a, b in zip(torch.autograd.grad(got, [z1, z2]), torch.autograd.grad(want, [z1, z2])):
        assert_close(a, b, 1e-10, "grad")


def test_ntxent_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        flashnce.ntxent(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="denominator"):
        flashnce.ntxent(torch.randn(4, 3), torch.randn(4, 3), denominator="some")
    with pytest.raises(ValueError, match="temperature"):
        flashnce.ntxent(torch.randn(4, 3), torch.randn(4, 3), temperature=-1.0)


# ---- uniformity / alignment ------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("n,d", ((2, 3), (13, 3), (41, 17)))
def test_uniformity_matches_float64_oracle(backend, geometry, dtype, n, d):
    x = make_features(n, d, dtype=dtype, geometry=geometry, seed=n)
    _require(backend, x, "lse", n=13 if n == 2 else n, d=d)
    normalize = geometry not in ("poincare", "lorentz")
    x = x.clone().requires_grad_()
    got = flashnce.uniformity(x, t=2.0, geometry=geometry, normalize=normalize,
                              backend=backend)
    x64 = x.detach().double().requires_grad_()
    want = flashnce.reference_uniformity(x64, t=2.0, geometry=geometry, normalize=normalize)
    _compare(got, want, [x64], [x], dtype, f"{backend} {geometry}")


def test_uniformity_matches_pdist_and_alignment_matches_paper():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 16, dtype=torch.float64, generator=g).requires_grad_()
    y = torch.randn(300, 16, dtype=torch.float64, generator=g)
    got = flashnce.uniformity(x)
    want = torch.pdist(F.normalize(x, dim=-1)).pow(2).mul(-2).exp().mean().log()
    assert_close(got, want, 1e-12, "uniformity")
    (a,), (b,) = torch.autograd.grad(got, x), torch.autograd.grad(want, x)
    assert_close(a, b, 1e-10, "uniformity grad")
    xn, yn = F.normalize(x.detach(), dim=-1), F.normalize(y, dim=-1)
    assert_close(flashnce.alignment(xn, yn), (xn - yn).norm(p=2, dim=1).pow(2).mean(), 1e-12,
                 "alignment")
    x1 = xn.clone().requires_grad_()  # coincident pairs: exactly 0, zero gradient
    loss = flashnce.alignment(x1, xn.clone())
    assert loss.item() == 0.0 and (torch.autograd.grad(loss, x1)[0] == 0).all()


@pytest.mark.parametrize("geometry", ("poincare", "lorentz"))
def test_alignment_hyperbolic_is_the_geodesic_distance(geometry):
    x = make_features(7, 4, dtype=torch.float64, geometry=geometry, seed=5)
    y = make_features(7, 4, dtype=torch.float64, geometry=geometry, seed=6)
    logits = flashnce.reference_logits(x, y, geometry=geometry)
    assert_close(flashnce.alignment(x, y, geometry=geometry, alpha=1.5),
                 (-logits.diag()).pow(1.5).mean(), 1e-9, "alignment")


def test_uniformity_alignment_bad_inputs():
    with pytest.raises(ValueError, match="at least 2 rows"):
        flashnce.uniformity(torch.randn(1, 3))
    with pytest.raises(ValueError, match="t must be"):
        flashnce.uniformity(torch.randn(4, 3), t=0)
    with pytest.raises(ValueError, match="distance geometry"):
        flashnce.alignment(torch.randn(4, 3), torch.randn(4, 3), geometry="cosine")
    with pytest.raises(ValueError, match="same shape"):
        flashnce.alignment(torch.randn(4, 3), torch.randn(5, 3))


# ---- gradcheck and 16-bit inputs -------------------------------------------------------------
@pytest.mark.parametrize("geometry", ("cosine", "euclidean", "lorentz"))
def test_gradcheck(geometry):
    """float64 gradcheck of SupCon (both variants), NT-Xent (both denominators) and
    uniformity through the torch backend (the compiled ops are checked by the tile matrix)."""
    g = torch.Generator().manual_seed(7)
    e = (0.5 * torch.randn(7, 3, dtype=torch.float64, generator=g)).requires_grad_()
    z2 = (0.5 * torch.randn(7, 3, dtype=torch.float64, generator=g)).requires_grad_()
    lab = torch.tensor([0, 1, 0, 2, 1, 1, 5])
    kw = dict(geometry=geometry, backend="torch")
    for variant in ("out", "in"):
        assert torch.autograd.gradcheck(
            lambda a: flashnce.supcon(a, lab, temperature=0.7, variant=variant, **kw), (e,))
    for denominator in ("all", "negatives"):
        assert torch.autograd.gradcheck(
            lambda a, b: flashnce.ntxent(a, b, temperature=0.7, denominator=denominator, **kw),
            (e, z2))
    assert torch.autograd.gradcheck(
        lambda a: flashnce.uniformity(a, t=1.5, normalize=geometry == "cosine", **kw), (e,))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_16bit_inputs(backend, dtype):
    """bf16 / fp16 embeddings: fp32 results within the 16-bit materialised loss's own error."""
    e = make_features(33, 16, dtype=dtype, seed=9)
    _require(backend, e, "masked_sum", n=13, d=3)
    lab = _labels(33, "random")
    e = e.clone().requires_grad_()
    got = flashnce.supcon(e, lab, backend=backend)
    assert got.dtype == torch.float32
    (g,) = torch.autograd.grad(got, e)
    assert g.dtype == dtype and torch.isfinite(g.float()).all()
    e64 = e.detach().double().requires_grad_()
    want = flashnce.reference_supcon(e64, lab)
    (gw,) = torch.autograd.grad(want, e64)
    assert_close(got.double(), want, 2e-3, "loss")
    assert_close(g.double(), gw, 3e-2, "grad")
    z = flashnce.ntxent(e[:16], e[16:32], backend=backend)
    assert_close(z.double(), flashnce.reference_ntxent(e64[:16].detach(), e64[16:32].detach()),
                 2e-3, "ntxent")
