"""flashnce.nn: ContrastiveLoss parameters, clamps and state_dict; ClipLoss vs materialised CLIP."""

from __future__ import annotations

import inspect
import io
import math

import pytest
import torch
import torch.nn.functional as F

import flashnce
from _helpers import assert_close, make_features
from flashnce.nn import ClipLoss, ContrastiveLoss

RTOL = 1e-10


def _features(geometry, n=7, d=5, seed=0):
    x = make_features(n, d, dtype=torch.float64, seed=seed, geometry=geometry)
    y = make_features(n, d, dtype=torch.float64, seed=seed + 1, geometry=geometry)
    return x.requires_grad_(), y.requires_grad_()


# --------------------------------------------------------------------------------------------
# ContrastiveLoss
# --------------------------------------------------------------------------------------------


def test_defaults_follow_geometry_md():
    m = ContrastiveLoss()
    assert math.isclose(float(m.log_scale.detach()), math.log(1 / 0.07), rel_tol=1e-6)
    assert [n for n, _ in m.named_parameters()] == ["log_scale"]  # cosine: curvature unused
    assert "log_curvature" in dict(m.named_buffers())
    h = ContrastiveLoss("lorentz")
    assert sorted(n for n, _ in h.named_parameters()) == ["log_curvature", "log_scale"]
    assert float(h.log_curvature.detach()) == 0.0 and h.curvature_range == (0.1, 10.0)


def test_learn_false_makes_buffers():
    m = ContrastiveLoss("lorentz", learn_scale=False, learn_curvature=False)
    assert list(m.parameters()) == []
    assert set(dict(m.named_buffers())) == {"log_scale", "log_curvature"}
    x, y = _features("lorentz")
    m.double()(x, y).backward()
    assert x.grad is not None


@pytest.mark.parametrize("geometry", ["cosine", "sqeuclidean", "lorentz", "poincare"])
def test_forward_and_grads_match_reference(geometry):
    m = ContrastiveLoss(geometry, scale_init=3.0, curvature_init=0.6, backend="torch").double()
    x, y = _features(geometry)
    loss = m(x, y)
    params = [m.log_scale] + ([m.log_curvature] if geometry in ("lorentz", "poincare") else [])
    got = torch.autograd.grad(loss, [x, y, *params])

    x2, y2 = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    tau = m.log_scale.detach().clone().requires_grad_()
    kappa = m.log_curvature.detach().clone().requires_grad_()
    ref = flashnce.reference_infonce(x2, y2, geometry=geometry, scale=tau.exp(),
                                     curvature=kappa.exp())
    ref_params = [tau] + ([kappa] if len(params) == 2 else [])
    want = torch.autograd.grad(ref, [x2, y2, *ref_params])
    assert_close(loss, ref, RTOL, "loss")
    for name, g, w in zip(["x", "y", "log_scale", "log_curvature"], got, want):
        assert_close(g, w, RTOL, name)


def test_output_dict():
    m = ContrastiveLoss().double()
    x, y = _features("cosine")
    out = m(x, y, output_dict=True)
    assert set(out) == {"contrastive_loss"}
    assert torch.equal(out["contrastive_loss"], m(x, y))


def test_clamps_values_not_gradients():
    m = ContrastiveLoss("lorentz", max_scale=100.0, curvature_range=(0.1, 10.0)).double()
    with torch.no_grad():
        m.log_scale.fill_(math.log(500.0))
        m.log_curvature.fill_(math.log(50.0))
    x, y = _features("lorentz")
    loss = m(x, y)
    assert math.isclose(float(m.log_scale.detach()), math.log(100.0), rel_tol=1e-12)
    assert math.isclose(float(m.log_curvature.detach()), math.log(10.0), rel_tol=1e-12)
    loss.backward()
    # the value was clamped, the gradient was not masked at the bound
    assert float(m.log_scale.grad) != 0.0 and float(m.log_curvature.grad) != 0.0
    ref = flashnce.infonce(x.detach(), y.detach(), geometry="lorentz", scale=100.0,
                           curvature=10.0)
    assert_close(loss, ref, RTOL, "loss at the clamped values")

    with torch.no_grad():
        m.log_curvature.fill_(math.log(0.01))
    m.clamp_parameters()
    assert math.isclose(float(m.log_curvature.detach()), math.log(0.1), rel_tol=1e-12)
    before = m.state_dict()
    m.clamp_parameters()  # idempotent
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_clamp_applies_after_optimizer_steps():
    m = ContrastiveLoss(scale_init=99.0, max_scale=100.0).double()
    opt = torch.optim.SGD(m.parameters(), lr=10.0)
    x, y = _features("cosine")
    for _ in range(3):
        opt.zero_grad()
        (-m(x, y)).backward()  # push the scale up
        opt.step()
        m.clamp_parameters()
        assert float(m.log_scale.detach()) <= math.log(100.0) + 1e-12


def test_max_scale_none_disables_clamp():
    m = ContrastiveLoss(max_scale=None)
    with torch.no_grad():
        m.log_scale.fill_(10.0)
    m.clamp_parameters()
    assert float(m.log_scale.detach()) == 10.0


def test_state_dict_round_trip():
    m = ContrastiveLoss("poincare", scale_init=7.0, curvature_init=2.0).double()
    with torch.no_grad():
        m.log_scale.add_(0.25)
        m.log_curvature.sub_(0.5)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = ContrastiveLoss("poincare").double()
    m2.load_state_dict(torch.load(buf))
    assert set(m2.state_dict()) == {"log_scale", "log_curvature"}
    for k, v in m.state_dict().items():
        assert torch.equal(m2.state_dict()[k], v), k
    x, y = _features("poincare")
    assert torch.equal(m(x, y), m2(x, y))
    # buffers (learn_*=False) round-trip too
    f = ContrastiveLoss("lorentz", learn_scale=False, learn_curvature=False, scale_init=3.0)
    f2 = ContrastiveLoss("lorentz", learn_scale=False, learn_curvature=False)
    f2.load_state_dict(f.state_dict())
    assert torch.equal(f2.log_scale, f.log_scale)


@pytest.mark.parametrize("kwargs, match", [
    (dict(curvature_init=20.0), "outside curvature_range"),
    (dict(scale_init=200.0), "exceeds max_scale"),
    (dict(scale_init=-1.0), "scale_init"),
    (dict(curvature_range=(0.0, 1.0)), "curvature_range"),
    (dict(curvature_range=3.0), "pair"),
    (dict(geometry="banana"), "geometry"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ContrastiveLoss(**kwargs)


# --------------------------------------------------------------------------------------------
# ClipLoss (open_clip drop-in)
# --------------------------------------------------------------------------------------------


def _materialised_clip(img, txt, logit_scale):
    """open_clip's single-process ClipLoss, written out."""
    logits = logit_scale * img @ txt.T
    labels = torch.arange(img.shape[0])
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def test_clip_loss_signature_matches_open_clip():
    init = list(inspect.signature(ClipLoss.__init__).parameters)
    assert init[1:7] == ["local_loss", "gather_with_grad", "cache_labels", "rank", "world_size",
                         "use_horovod"]
    fwd = list(inspect.signature(ClipLoss.forward).parameters)
    assert fwd[1:] == ["image_features", "text_features", "logit_scale", "logit_bias",
                       "output_dict"]


@pytest.mark.parametrize("normalised", [True, False])
def test_clip_loss_matches_materialised(normalised):
    g = torch.Generator().manual_seed(0)
    img = torch.randn(9, 6, generator=g, dtype=torch.float64)
    txt = torch.randn(9, 6, generator=g, dtype=torch.float64)
    if normalised:
        img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (img, txt, scale)]
    ref_inputs = [t.clone().requires_grad_() for t in (img, txt, scale)]
    loss = ClipLoss()(*inputs)
    ref = _materialised_clip(*ref_inputs)
    assert_close(loss, ref, RTOL, "loss")
    for name, a, b in zip(["image", "text", "logit_scale"], torch.autograd.grad(loss, inputs),
                          torch.autograd.grad(ref, ref_inputs)):
        assert_close(a, b, RTOL, name)


def test_clip_loss_bias_and_output_dict():
    img, txt = (F.normalize(torch.randn(5, 4, dtype=torch.float64), dim=-1) for _ in range(2))
    bias = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    out = ClipLoss()(img, txt, torch.tensor(10.0, dtype=torch.float64), bias, output_dict=True)
    assert set(out) == {"contrastive_loss"}
    out["contrastive_loss"].backward()
    assert bias.grad is not None and float(bias.grad) == 0.0  # a scalar bias cannot move InfoNCE
    no_bias = ClipLoss()(img, txt, torch.tensor(10.0, dtype=torch.float64))
    assert_close(out["contrastive_loss"], no_bias, RTOL, "bias has no effect")


def test_clip_loss_unsupported_setups():
    with pytest.raises(NotImplementedError, match="horovod"):
        ClipLoss(use_horovod=True)
    x = torch.randn(3, 4)
    if not torch.distributed.is_initialized():
        with pytest.warns(UserWarning, match="gather_with_grad"):
            loss = ClipLoss(world_size=2, rank=0)
        with pytest.raises(RuntimeError, match="torch.distributed"):
            loss(x, x, torch.tensor(1.0))


def test_example_trains_single_process(capsys, monkeypatch):
    """examples/train_two_tower.py runs (single process) and the loss goes down."""
    import pathlib
    import runpy
    import sys

    script = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_two_tower.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--geometry", "lorentz", "--steps", "8",
                                      "--batch-size", "64"])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    losses = [float(line.split()[3]) for line in out.splitlines() if line.startswith("step")]
    assert len(losses) == 8 and losses[-1] < losses[0], out
