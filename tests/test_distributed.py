"""flashnce.infonce / siglip(group=...) on gloo CPU processes against the single-process
float64 oracle.

One spawn per world size (2 and 3) runs every case and saves each rank's loss and gradients;
the tests then compare, under DDP's convention (see ``flashnce.distributed``):

    mean_r loss_r        == L(concatenated batch)
    x_r.grad / W         == dL/dx for rank r's rows   (likewise y)
    mean_r scale.grad_r  == dL/dscale,   mean_r curvature.grad_r == dL/dcurvature
    (SigLIP also: mean_r bias.grad_r == dL/dbias)

Processes rendezvous through a FileStore in tmp_path, use a 60 s collective timeout, and the
whole spawn is killed after SPAWN_TIMEOUT_S, so a hang fails instead of blocking CI.
"""

from __future__ import annotations

import traceback

import pytest
import torch
import torch.distributed as dist

import flashnce
from _gloo import gloo_results, record, spawn_gloo
from _helpers import assert_close, make_features, rel_maxnorm_error

SPAWN_TIMEOUT_S = 150
RTOL = 1e-9  # float64 end to end
DIM = 6
SCALE0, CURV0, BIAS0 = 3.0, 0.7, -1.5
LAYOUTS = {  # rows per rank
    2: {"even": (5, 5), "uneven": (3, 7)},
    3: {"even": (4, 4, 4), "uneven": (5, 1, 6)},
}
GEOMS = ("cosine", "sqeuclidean", "lorentz")
MODES = ("gather", "ring")


def _case(geometry, layout, mode, **extra):
    case = dict(geometry=geometry, layout=layout, mode=mode, symmetric=True, reduction="mean",
                targets=False)
    case.update(extra)
    tag = "-".join(f"{k}={v}" for k, v in sorted(extra.items()))
    case["name"] = f"{geometry}-{layout}-{mode}" + (f"-{tag}" if tag else "")
    return case


CASES = [_case(g, lay, m) for g in GEOMS for lay in ("even", "uneven") for m in MODES] + [
    _case("lorentz", "uneven", "gather", reduction="sum"),
    _case("sqeuclidean", "uneven", "ring", symmetric=False),
    _case("cosine", "uneven", "gather", symmetric=False, targets=True),
    _case("lorentz", "uneven", "gather", backend="reference"),
    _case("lorentz", "uneven", "ring", reduction="none"),
    _case("lorentz", "uneven", "gather", dtype="float32"),
    _case("lorentz", "uneven", "ring", dtype="float32"),
    _case("lorentz", "uneven", "ring", backend="auto"),  # whichever kernel backend is built
    _case("cosine", "even", "gather", backend="auto"),
] + [_case(g, lay, m, loss="siglip") for g in ("cosine", "lorentz") for lay in ("even", "uneven")
     for m in MODES] + [
    _case("sqeuclidean", "uneven", "gather", loss="siglip", labels=True),
    _case("cosine", "uneven", "ring", loss="siglip", reduction="none"),
    _case("lorentz", "uneven", "gather", loss="siglip", reduction="sum"),
    _case("lorentz", "uneven", "ring", loss="siglip", dtype="float32"),
    _case("cosine", "uneven", "ring", loss="siglip", backend="auto"),
    _case("cosine", "uneven", "gather", loss="siglip", backend="auto"),
]
FP32_RTOL = 1e-4  # fp32 kernels vs the float64 oracle on the same (fp32-rounded) inputs


def _global_inputs(case, sizes):
    n = sum(sizes)
    geo = case["geometry"]
    x = make_features(n, DIM, dtype=torch.float64, seed=11, geometry=geo)
    y = make_features(n, DIM, dtype=torch.float64, seed=12, geometry=geo)
    targets = None
    if case["targets"]:
        targets = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    if case.get("labels"):  # siglip: class labels shared by x_i and y_i, few classes
        targets = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(4))
    return x, y, targets


def _siglip(case) -> bool:
    return case.get("loss") == "siglip"


def _params(case):
    scale = torch.tensor(SCALE0, dtype=torch.float64, requires_grad=True)
    curv = torch.tensor(CURV0, dtype=torch.float64, requires_grad=True)
    if _siglip(case):
        return scale, curv, torch.tensor(BIAS0, dtype=torch.float64, requires_grad=True)
    return scale, curv


def _oracle(x, y, params, *, bias=None, **kw):
    """Single-process float64 reference loss and its gradients w.r.t. x, y, *params (and the
    bias, last, for SigLIP)."""
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    for name, p in zip(("scale", "curvature"), params):
        kw[name] = p
    if bias is not None:
        loss = flashnce.reference_siglip(x, y, bias=bias, **kw)
        params = (*params, bias)
    else:
        loss = flashnce.reference_infonce(x, y, **kw)
    total = loss.mean() if loss.dim() else loss  # reduction="none": gradients of the mean
    return loss.detach(), torch.autograd.grad(total, [x, y, *params])


def _hyperbolic(case):
    return flashnce.get_geometry(case["geometry"]).uses_curvature


# --------------------------------------------------------------------------------------------
# Worker (runs in each spawned process)
# --------------------------------------------------------------------------------------------


def _run_case(case, world, rank, group):
    sizes = LAYOUTS[world][case["layout"]]
    x_all, y_all, t_all = _global_inputs(case, sizes)
    lo = sum(sizes[:rank])
    rows = slice(lo, lo + sizes[rank])
    dtype = getattr(torch, case.get("dtype", "float64"))
    x = x_all[rows].to(dtype).requires_grad_()
    y = y_all[rows].to(dtype).requires_grad_()
    scale, curv, *bias = (p.detach().to(dtype).requires_grad_() for p in _params(case))
    kwargs = {}
    if not case["symmetric"]:
        kwargs["symmetric"] = False
        if t_all is not None:
            kwargs["targets"] = t_all[rows]
    common = dict(geometry=case["geometry"], scale=scale, curvature=curv,
                  reduction=case["reduction"], backend=case.get("backend", "torch"),
                  group=group, group_mode=case["mode"])
    if _siglip(case):
        labels = None if t_all is None else t_all[rows]
        loss = flashnce.siglip(x, y, bias=bias[0], labels=labels, **common)
    else:
        loss = flashnce.infonce(x, y, **common, **kwargs)
    if case["reduction"] == "none":  # per-row losses: reduce them as "mean" would
        (loss.sum() * world / sum(sizes)).backward()
    else:
        loss.backward()
    return dict(loss=loss.detach(), x_grad=x.grad, y_grad=y.grad, scale_grad=scale.grad,
                curv_grad=curv.grad, bias_grad=bias[0].grad if bias else None)


SUPCON_CASES = [(g, lay) for g in ("cosine", "lorentz") for lay in ("even", "uneven")]


def _supcon_inputs(geometry, sizes):
    n = sum(sizes)
    e = make_features(n, DIM, dtype=torch.float64, seed=21, geometry=geometry)
    lab = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(5))
    lab[0] = 99  # a row without a positive anywhere
    return e, lab


def _supcon_check(world, rank, group):
    """SupCon with labels across ranks ("gather"): each rank's loss, gradients, count."""
    out = {}
    for geometry, layout in SUPCON_CASES:
        sizes = LAYOUTS[world][layout]
        e_all, lab_all = _supcon_inputs(geometry, sizes)
        lo = sum(sizes[:rank])
        e = e_all[lo:lo + sizes[rank]].clone().requires_grad_()
        temp = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        try:
            loss, missing = flashnce.supcon(e, lab_all[lo:lo + sizes[rank]], temperature=temp,
                                            geometry=geometry, backend="torch", group=group,
                                            return_count=True)
            loss.backward()
            out[(geometry, layout)] = dict(loss=loss.detach(), grad=e.grad,
                                           temp_grad=temp.grad, missing=missing)
        except Exception:
            out[(geometry, layout)] = traceback.format_exc()
    return out


def _expect_error(fn):
    try:
        fn()
    except Exception as exc:  # the point is which type and message every rank sees
        return f"{type(exc).__name__}: {exc}"
    return None


def _error_checks(world, rank, group):
    out = {}
    n = 3 + rank  # uneven on purpose
    d = DIM + (1 if rank == world - 1 else 0)
    x = torch.randn(n, d, dtype=torch.float64)
    out["dim_mismatch"] = _expect_error(lambda: flashnce.infonce(x, x.clone(), group=group))
    x = torch.randn(n, DIM, dtype=torch.float64)
    if rank == 1:
        x[0, 0] = float("nan")
    out["nan_on_rank1"] = _expect_error(lambda: flashnce.infonce(x, x.clone(), group=group))
    x = torch.randn(n, DIM, dtype=torch.float64, requires_grad=rank != 0)
    out["grad_mismatch"] = _expect_error(lambda: flashnce.infonce(x, x.detach(), group=group))
    # the group still works after both failures (nothing left half-way in a collective)
    t = torch.ones(1)
    dist.all_reduce(t, group=group)
    out["after"] = float(t)
    return out


def _subgroup_check(world, rank):
    """A process group of ranks {0, W-1} only (group ranks differ from global ranks when
    W = 3): loss and gradients against a float64 reference computed right here."""
    members = [0, world - 1]
    sub = dist.new_group(members)  # collective over the world: every rank calls it
    if rank not in members:
        return None
    me = members.index(rank)
    sizes = (2, 4)
    x_all = make_features(sum(sizes), DIM, dtype=torch.float64, seed=21, geometry="lorentz")
    y_all = make_features(sum(sizes), DIM, dtype=torch.float64, seed=22, geometry="lorentz")
    rows = slice(sum(sizes[:me]), sum(sizes[:me + 1]))
    x_ref, y_ref = x_all.clone().requires_grad_(), y_all.clone().requires_grad_()
    c_ref = torch.tensor(CURV0, dtype=torch.float64, requires_grad=True)
    ref = flashnce.reference_infonce(x_ref, y_ref, geometry="lorentz", scale=SCALE0,
                                     curvature=c_ref)
    ref_grads = torch.autograd.grad(ref, [x_ref, y_ref, c_ref])
    errs = {}
    for mode in MODES:
        x = x_all[rows].clone().requires_grad_()
        y = y_all[rows].clone().requires_grad_()
        c = torch.tensor(CURV0, dtype=torch.float64, requires_grad=True)
        loss = flashnce.infonce(x, y, geometry="lorentz", scale=SCALE0, curvature=c,
                                backend="torch", group=sub, group_mode=mode)
        loss.backward()
        stats = torch.stack([loss.detach(), c.grad])
        dist.all_reduce(stats, group=sub)
        stats /= len(members)
        errs[mode] = max(rel_maxnorm_error(stats[0], ref),
                         rel_maxnorm_error(stats[1], ref_grads[2]),
                         rel_maxnorm_error(x.grad / 2, ref_grads[0][rows]),
                         rel_maxnorm_error(y.grad / 2, ref_grads[1][rows]))
    return errs


def _ddp_check(world, rank, group, mode, module="ContrastiveLoss"):
    """DDP(model + flashnce.nn.ContrastiveLoss / SigmoidContrastiveLoss) on uneven shards ==
    one process on all rows."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    class TwoTower(torch.nn.Module):
        def __init__(self, loss):
            super().__init__()
            self.img = torch.nn.Linear(5, DIM)
            self.txt = torch.nn.Linear(7, DIM)
            self.loss = loss

        def forward(self, a, b):
            return self.loss(self.img(a), self.txt(b))

    sizes = LAYOUTS[world]["uneven"]
    g = torch.Generator().manual_seed(5)
    a_all = torch.randn(sum(sizes), 5, generator=g, dtype=torch.float64)
    b_all = torch.randn(sum(sizes), 7, generator=g, dtype=torch.float64)
    lo = sum(sizes[:rank])
    rows = slice(lo, lo + sizes[rank])

    def build(group_):
        torch.manual_seed(0)
        loss = getattr(flashnce.nn, module)("lorentz", scale_init=4.0, curvature_init=0.8,
                                            group=group_, backend="torch", group_mode=mode)
        return TwoTower(loss).double()

    single = build(None)
    single(a_all, b_all).backward()
    ddp = DDP(build(group), process_group=group)
    ddp(a_all[rows], b_all[rows]).backward()
    errs = {}
    for (name, p_single), p_ddp in zip(single.named_parameters(), ddp.module.parameters()):
        errs[name] = rel_maxnorm_error(p_ddp.grad, p_single.grad)
    return errs


def _ring_relation_check(world, rank, group):
    """The ring with a self-skipping relation (global diagonal offsets 0 and 2): each rank's
    row / column statistics and the gradients of sum(row * w) + sum(col * v) equal the
    single-process dense oracle's for its rows (float64), on the torch and cpu backends."""
    from flashnce import dispatch
    from flashnce.backends.base import TileSpec
    from flashnce.backends.dense import dense_tile_stat
    from flashnce.core.relation import Relation
    from flashnce.distributed import Comm, _RingStat

    sizes = LAYOUTS[world]["uneven"]
    n = sum(sizes)
    g = torch.Generator().manual_seed(11)
    x_all = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    y_all = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    w_all = torch.rand(n, generator=g, dtype=torch.float64)
    v_all = torch.rand(n, generator=g, dtype=torch.float64)
    theta = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    lo = sum(sizes[:rank])
    rows = slice(lo, lo + sizes[rank])
    comm = Comm(group, rank, world, tuple(sizes))
    errs = {}
    for offset in (0, 2):
        rel = Relation.none(skip_self=True, diag_offset=offset)
        tspec = TileSpec("cosine", "lse", rel, 1e-14)
        ins = [t.clone().requires_grad_() for t in (x_all, y_all)]
        scal = [t.norm(dim=-1, keepdim=True) for t in ins]
        r_ref, c_ref = dense_tile_stat(ins[0], ins[1], scal[0], scal[1], theta, rel, "cosine",
                                       "lse", 1e-14)
        gx_ref, gy_ref = torch.autograd.grad((r_ref * w_all).sum() + (c_ref * v_all).sum(), ins)
        for name in ("torch", "cpu"):
            impl = dispatch.BACKENDS[name]
            if impl.unavailable() is not None:
                continue
            x = x_all[rows].clone().requires_grad_()
            y = y_all[rows].clone().requires_grad_()
            row, col = _RingStat.apply(x, y, x.norm(dim=-1, keepdim=True),
                                       y.norm(dim=-1, keepdim=True), theta, tspec, impl, comm)
            gx, gy = torch.autograd.grad((row * w_all[rows]).sum() + (col * v_all[rows]).sum(),
                                         [x, y])
            errs[f"{name}-offset{offset}"] = max(
                rel_maxnorm_error(row, r_ref[rows]), rel_maxnorm_error(col, c_ref[rows]),
                rel_maxnorm_error(gx, gx_ref[rows]), rel_maxnorm_error(gy, gy_ref[rows]))
    return errs


def _worker(rank, world, store_dir, cases):
    with gloo_results(rank, world, store_dir) as (group, results):
        for case in cases:
            record(results, case["name"], _run_case, case, world, rank, group)
        results["errors"] = _error_checks(world, rank, group)
        results["ddp"] = {mode: _ddp_check(world, rank, group, mode) for mode in MODES}
        results["ddp_siglip"] = {mode: _ddp_check(world, rank, group, mode,
                                                  "SigmoidContrastiveLoss") for mode in MODES}
        results["subgroup"] = _subgroup_check(world, rank)
        results["supcon"] = _supcon_check(world, rank, group)
        record(results, "ring_relation", _ring_relation_check, world, rank, group)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(LAYOUTS), ids=lambda w: f"world{w}")
def spawned(request, tmp_path_factory):
    world = request.param
    return world, spawn_gloo(_worker, world, str(tmp_path_factory.mktemp(f"gloo{world}")),
                             CASES, timeout_s=SPAWN_TIMEOUT_S)


def _get(per_rank, name):
    out = [r[name] for r in per_rank]
    for rank, res in enumerate(out):
        if isinstance(res, str):
            pytest.fail(f"rank {rank} raised in case {name}:\n{res}")
    return out


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_single_process(spawned, case):
    world, per_rank = spawned
    res = _get(per_rank, case["name"])
    sizes = LAYOUTS[world][case["layout"]]
    x, y, targets = _global_inputs(case, sizes)
    rtol, (scale, curv, *bias) = RTOL, _params(case)
    if case.get("dtype") == "float32":  # oracle on the rounded inputs and parameters
        x, y = x.float().double(), y.float().double()
        rtol = FP32_RTOL
        scale, curv, *bias = (p.detach().float().double().requires_grad_()
                              for p in (scale, curv, *bias))
    params = (scale, curv) if _hyperbolic(case) else (scale,)
    kw = dict(geometry=case["geometry"], reduction=case["reduction"])
    if bias:
        kw.update(bias=bias[0], labels=targets)
    elif not case["symmetric"]:
        kw.update(symmetric=False, targets=targets)
    if not _hyperbolic(case):
        kw["curvature"] = CURV0
    loss, grads = _oracle(x, y, params, **kw)

    if case["reduction"] == "none":  # every rank returns its rows' global per-row losses
        assert_close(torch.cat([r["loss"] for r in res]), loss, rtol, "per-row losses")
    else:
        got_loss = torch.stack([r["loss"] for r in res]).mean()
        assert_close(got_loss, loss, rtol, "mean_r loss_r")
    assert_close(torch.cat([r["x_grad"] for r in res]) / world, grads[0], rtol, "x.grad / W")
    assert_close(torch.cat([r["y_grad"] for r in res]) / world, grads[1], rtol, "y.grad / W")
    assert_close(torch.stack([r["scale_grad"] for r in res]).mean(), grads[2], rtol,
                 "mean_r scale.grad")
    if _hyperbolic(case):
        assert_close(torch.stack([r["curv_grad"] for r in res]).mean(), grads[3], rtol,
                     "mean_r curvature.grad")
    else:
        assert all(r["curv_grad"] is None for r in res)
    if bias:
        assert_close(torch.stack([r["bias_grad"] for r in res]).mean(), grads[-1], rtol,
                     "mean_r bias.grad")


def test_equal_batches_local_loss_is_open_clip_local_mean(spawned):
    """With equal shards, rank r's loss is the mean over its own rows (open_clip local_loss)."""
    world, per_rank = spawned
    case = next(c for c in CASES if c["name"] == "cosine-even-gather")
    res = _get(per_rank, case["name"])
    x, y, _ = _global_inputs(case, LAYOUTS[world]["even"])
    logits = SCALE0 * flashnce.reference_logits(x, y, geometry="cosine")
    n = LAYOUTS[world]["even"][0]
    labels = torch.arange(x.shape[0])
    for rank, r in enumerate(res):
        rows = slice(rank * n, (rank + 1) * n)
        expected = 0.5 * (torch.nn.functional.cross_entropy(logits[rows], labels[rows])
                          + torch.nn.functional.cross_entropy(logits[:, rows].T, labels[rows]))
        assert_close(r["loss"], expected, RTOL, f"rank {rank} local loss")


def test_errors_raise_on_every_rank(spawned):
    world, per_rank = spawned
    for rank, r in enumerate(per_rank):
        err = r["errors"]
        assert err["dim_mismatch"] and err["dim_mismatch"].startswith("ValueError"), err
        assert "same dim" in err["dim_mismatch"], err
        if rank == 1:
            assert "NaN" in err["nan_on_rank1"], err
        else:
            assert "rank(s) [1] rejected" in err["nan_on_rank1"], err
        assert "require grad" in err["grad_mismatch"], err
        assert err["after"] == world


def test_ddp_contrastive_loss_module_matches_single_process(spawned):
    world, per_rank = spawned
    for rank, r in enumerate(per_rank):
        for mode, errs in r["ddp"].items():
            assert set(errs) >= {"loss.log_scale", "loss.log_curvature", "img.weight"}, errs
            bad = {k: v for k, v in errs.items() if v > RTOL}
            assert not bad, f"rank {rank}, {mode}: DDP gradients differ from one process: {bad}"


def test_ddp_sigmoid_loss_module_matches_single_process(spawned):
    world, per_rank = spawned
    for rank, r in enumerate(per_rank):
        for mode, errs in r["ddp_siglip"].items():
            assert set(errs) >= {"loss.log_scale", "loss.bias", "loss.log_curvature",
                                 "img.weight"}, errs
            bad = {k: v for k, v in errs.items() if v > RTOL}
            assert not bad, f"rank {rank}, {mode}: DDP gradients differ from one process: {bad}"


def test_group_argument_checks():
    x = torch.randn(3, 4)
    if not dist.is_initialized():
        with pytest.raises(RuntimeError, match="init_process_group"):
            flashnce.infonce(x, x, group=object())


def test_subgroup(spawned):
    """group= may be any process group; ring peers are mapped to global ranks."""
    world, per_rank = spawned
    for rank, r in enumerate(per_rank):
        if rank not in (0, world - 1):
            assert r["subgroup"] is None
            continue
        assert set(r["subgroup"]) == set(MODES)
        bad = {m: e for m, e in r["subgroup"].items() if e > RTOL}
        assert not bad, f"rank {rank}: subgroup results differ from the reference: {bad}"


def test_ring_with_self_skips_uses_global_offsets(spawned):
    world, per_rank = spawned
    for rank, errs in enumerate(_get(per_rank, "ring_relation")):
        assert {"torch-offset0", "torch-offset2"} <= set(errs), errs
        bad = {k: v for k, v in errs.items() if v > RTOL}
        assert not bad, f"rank {rank}: ring statistics / gradients differ: {bad}"


@pytest.mark.parametrize("geometry,layout", SUPCON_CASES)
def test_supcon_labels_across_ranks_match_single_process(spawned, geometry, layout):
    """Labels shared across ranks: positives on other ranks count, the mean is over the global
    rows with a positive, and DDP-averaged gradients equal the single-process ones."""
    world, per_rank = spawned
    res = [r["supcon"][(geometry, layout)] for r in per_rank]
    for rank, r in enumerate(res):
        if isinstance(r, str):
            pytest.fail(f"rank {rank} raised:\n{r}")
    e, lab = _supcon_inputs(geometry, LAYOUTS[world][layout])
    e = e.clone().requires_grad_()
    temp = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    want = flashnce.reference_supcon(e, lab, temperature=temp, geometry=geometry)
    g_e, g_t = torch.autograd.grad(want, [e, temp])
    assert_close(torch.stack([r["loss"] for r in res]).mean(), want, RTOL, "mean_r loss_r")
    assert_close(torch.cat([r["grad"] for r in res]) / world, g_e, RTOL, "grad / W")
    assert_close(torch.stack([r["temp_grad"] for r in res]).mean(), g_t, RTOL, "temperature")
    assert all(r["missing"] == 1 for r in res)
