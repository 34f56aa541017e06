"""ntxent / uniformity / alignment / supcon(variant="in") with group= on gloo CPU processes,
against the single-process float64 oracle.

One spawn per world size (2 and 3) runs every case and saves each rank's loss and gradients;
the tests compare under DDP's convention (``flashnce.distributed``, ``flashnce.uniformity``):

    mean_r loss_r       == L(concatenated batch)   (uniformity / alignment: every loss_r == L)
    x_r.grad / W        == dL/dx for rank r's rows
    mean_r p.grad_r     == dL/dp  for p = temperature (or t), curvature

Processes rendezvous through a FileStore in tmp_path with a 60 s collective timeout; the spawn
is killed after SPAWN_TIMEOUT_S, so a hang fails instead of blocking CI.
"""

from __future__ import annotations


import pytest
import torch
import torch.distributed as dist

import flashnce
from _gloo import gloo_results, record, spawn_gloo
from _helpers import assert_close, make_features
from test_distributed import DIM, LAYOUTS, RTOL, SPAWN_TIMEOUT_S, _expect_error, _get

TEMP0, T0, CURV0 = 0.5, 2.0, 0.7


def _case(loss, geometry, layout="uneven", **extra):
    case = dict(loss=loss, geometry=geometry, layout=layout, reduction="mean",
                backend="torch")
    case.update(extra)
    tag = "-".join(f"{k}={v}" for k, v in sorted(extra.items()))
    case["name"] = f"{loss}-{geometry}-{layout}" + (f"-{tag}" if tag else "")
    return case


CASES = [_case("ntxent", g, denominator=den) for g in ("cosine", "lorentz")
         for den in ("all", "negatives")] + [
    _case("ntxent", "cosine", "even", denominator="all"),
    _case("ntxent", "cosine", denominator="negatives", reduction="none"),
    _case("ntxent", "lorentz", denominator="all", reduction="sum"),
    _case("ntxent", "cosine", denominator="all", backend="auto"),
] + [_case("uniformity", g) for g in ("sqeuclidean", "cosine", "lorentz")] + [
    _case("uniformity", "sqeuclidean", "even", backend="auto"),
] + [_case("alignment", g) for g in ("euclidean", "lorentz")] + [
    _case("supcon_in", g, lay) for g in ("cosine", "lorentz") for lay in ("even", "uneven")] + [
    _case("supcon_in", "cosine", reduction="sum"),
    _case("supcon_views", "dot"), _case("supcon_views", "cosine", "even", simclr=True),
]


def _hyperbolic(case) -> bool:
    return flashnce.get_geometry(case["geometry"]).uses_curvature


def _global_inputs(case, sizes):
    """The global float64 features (the loss's tensor arguments) and labels (supcon)."""
    n, geo = sum(sizes), case["geometry"]
    if case["loss"] == "supcon_views":  # SupContrast's [bsz, n_views, d], two views
        feats = [make_features(2 * n, DIM, dtype=torch.float64, seed=37, geometry=geo)
                 .reshape(n, 2, DIM)]
        labels = None if case.get("simclr") else torch.randint(
            0, 3, (n,), generator=torch.Generator().manual_seed(6))
        return feats, labels
    feats = [make_features(n, DIM, dtype=torch.float64, seed=31 + k, geometry=geo)
             for k in range(1 if case["loss"] in ("uniformity", "supcon_in") else 2)]
    labels = None
    if case["loss"] == "supcon_in":
        labels = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(5))
        labels[0] = 99  # a row without a positive anywhere
    return feats, labels


def _params(case):
    """(temperature or t, curvature for the hyperbolic geometries), float64 leaves."""
    first = T0 if case["loss"] == "uniformity" else TEMP0
    if case["loss"] == "supcon_views":  # the module holds a float temperature
        return []
    ps = [torch.tensor(first, dtype=torch.float64, requires_grad=True)]
    if _hyperbolic(case):
        ps.append(torch.tensor(CURV0, dtype=torch.float64, requires_grad=True))
    return ps[1:] if case["loss"] == "alignment" else ps


def _call(case, feats, labels, params, group):
    """The loss on these tensors: flashnce's with group=, the float64 reference without."""
    loss, geo = case["loss"], case["geometry"]
    kw = dict(geometry=geo)
    if _hyperbolic(case):
        kw["curvature"] = params[-1]
    dist_kw = dict(group=group, backend=case["backend"]) if group is not None else {}
    if loss == "ntxent":
        fn = flashnce.ntxent if group is not None else flashnce.reference_ntxent
        return fn(*feats, temperature=params[0], denominator=case["denominator"],
                  reduction=case["reduction"], **kw, **dist_kw)
    if loss == "uniformity":
        fn = flashnce.uniformity if group is not None else flashnce.reference_uniformity
        return fn(feats[0], t=params[0], normalize=geo != "lorentz", **kw, **dist_kw)
    if loss == "alignment":  # O(N) in one process: its own oracle
        return flashnce.alignment(*feats, **kw, **({"group": group} if group else {}))
    if loss == "supcon_views":  # the module; its single-process value is tested against
        # SupContrast's formula in test_same_set.py
        module = flashnce.nn.SupConLoss(temperature=TEMP0, base_temperature=0.3,
                                        geometry=geo, **dist_kw)
        return module(feats[0], labels)
    fn = flashnce.supcon if group is not None else flashnce.reference_supcon
    return fn(feats[0], labels, temperature=params[0], variant="in",
              reduction=case["reduction"], **kw, **dist_kw)


def _local_rows(case, sizes, rank):
    lo = sum(sizes[:rank])
    return slice(lo, lo + sizes[rank])


# --------------------------------------------------------------------------------------------
# Worker (runs in each spawned process)
# --------------------------------------------------------------------------------------------


def _run_case(case, world, rank, group):
    sizes = LAYOUTS[world][case["layout"]]
    feats_all, labels_all = _global_inputs(case, sizes)
    rows = _local_rows(case, sizes, rank)
    feats = [f[rows].clone().requires_grad_() for f in feats_all]
    labels = None if labels_all is None else labels_all[rows]
    params = [p.detach().clone().requires_grad_() for p in _params(case)]
    loss = _call(case, feats, labels, params, group)
    if case["reduction"] == "none":  # per-row losses: reduce them as "mean" would
        rows_global = 2 * sum(sizes) if case["loss"] == "ntxent" else sum(sizes)
        (loss.sum() * world / rows_global).backward()
    else:
        loss.backward()
    return dict(loss=loss.detach(), feat_grads=[f.grad for f in feats],
                param_grads=[p.grad for p in params])


def _error_checks(world, rank, group):
    """Bad input on one rank: every rank raises (that rank its own error), nothing hangs."""
    out = {}
    n = 2 + rank

    def feats(bad_rank=None, rows=None):
        x = torch.randn(rows or n, DIM, dtype=torch.float64)
        if rank == bad_rank:
            x[0, 0] = float("nan")
        return x

    out["ntxent_nan"] = _expect_error(lambda: flashnce.ntxent(feats(1), feats(), group=group))
    z2 = feats(rows=n + (1 if rank == 0 else 0))
    out["ntxent_shape"] = _expect_error(lambda: flashnce.ntxent(feats(), z2, group=group))
    out["uniformity_nan"] = _expect_error(lambda: flashnce.uniformity(feats(1), group=group))
    y = feats(rows=n + (1 if rank == 1 else 0))
    out["alignment_shape"] = _expect_error(lambda: flashnce.alignment(feats(), y, group=group))
    lab = torch.zeros(n + (1 if rank == 1 else 0), dtype=torch.int64)
    out["supcon_in_labels"] = _expect_error(
        lambda: flashnce.supcon(feats(), lab, variant="in", group=group))
    views = torch.randn(n, 2, DIM, dtype=torch.float64)
    out["supcon_views_shape"] = _expect_error(lambda: flashnce.nn.SupConLoss(group=group)(
        views if rank != 1 else views[:, 0]))
    x = torch.randn(n, DIM, dtype=torch.float64, requires_grad=rank != 0)
    out["uniformity_grad"] = _expect_error(lambda: flashnce.uniformity(x, group=group))
    t = torch.ones(1)  # the group still works (nothing left half-way in a collective)
    dist.all_reduce(t, group=group)
    out["after"] = float(t)
    return out


def _worker(rank, world, store_dir):
    with gloo_results(rank, world, store_dir) as (group, results):
        for case in CASES:
            record(results, case["name"], _run_case, case, world, rank, group)
        results["errors"] = _error_checks(world, rank, group)


@pytest.fixture(scope="module", params=sorted(LAYOUTS), ids=lambda w: f"world{w}")
def spawned(request, tmp_path_factory):
    world = request.param
    return world, spawn_gloo(_worker, world,
                             str(tmp_path_factory.mktemp(f"gloo_same_set{world}")),
                             timeout_s=SPAWN_TIMEOUT_S)


def _oracle(case, sizes):
    """Single-process float64 loss and its gradients w.r.t. the features and the params."""
    feats, labels = _global_inputs(case, sizes)
    feats = [f.clone().requires_grad_() for f in feats]
    params = _params(case)
    loss = _call(case, feats, labels, params, None)
    total = loss.mean() if loss.dim() else loss  # reduction="none": gradients of the mean
    return loss.detach(), torch.autograd.grad(total, [*feats, *params])


def _global_order(case, sizes, per_rank_losses):
    """Rank r's per-row losses [z1_r; z2_r] (ntxent) placed at their global rows."""
    if case["loss"] != "ntxent":
        return torch.cat(per_rank_losses)
    halves = [loss.split(loss.shape[0] // 2) for loss in per_rank_losses]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_single_process(spawned, case):
    world, per_rank = spawned
    res = _get(per_rank, case["name"])
    sizes = LAYOUTS[world][case["layout"]]
    want, grads = _oracle(case, sizes)
    n_feats = len(res[0]["feat_grads"])
    if case["reduction"] == "none":  # every rank returns its rows' global per-row losses
        assert_close(_global_order(case, sizes, [r["loss"] for r in res]), want, RTOL,
                     "per-row losses")
    else:
        assert_close(torch.stack([r["loss"] for r in res]).mean(), want, RTOL, "mean_r loss_r")
    if case["loss"] in ("uniformity", "alignment"):  # every rank returns the global value
        for rank, r in enumerate(res):
            assert_close(r["loss"], want, RTOL, f"rank {rank}'s loss")
    for k in range(n_feats):
        assert_close(torch.cat([r["feat_grads"][k] for r in res]) / world, grads[k], RTOL,
                     f"feature {k}: grad / W")
    for k, want_g in enumerate(grads[n_feats:]):
        assert_close(torch.stack([r["param_grads"][k] for r in res]).mean(), want_g, RTOL,
                     f"param {k}: mean_r grad")


def test_errors_raise_on_every_rank(spawned):
    world, per_rank = spawned
    expected = {"ntxent_nan": (1, "NaN"), "ntxent_shape": (0, "same shape"),
                "uniformity_nan": (1, "NaN"), "alignment_shape": (1, "same shape"),
                "supcon_in_labels": (1, "labels"), "supcon_views_shape": (1, "n_views")}
    for rank, r in enumerate(per_rank):
        err = r["errors"]
        for name, (bad_rank, words) in expected.items():
            if rank == bad_rank:
                assert err[name] and words in err[name], (name, err[name])
            else:
                assert err[name] and f"rank(s) [{bad_rank}] rejected" in err[name], (
                    name, err[name])
        assert err["uniformity_grad"] and "require grad" in err["uniformity_grad"], err
        assert err["after"] == world


def test_uniformity_single_process_needs_two_rows():
    with pytest.raises(ValueError, match="at least 2 rows"):
        flashnce.uniformity(torch.randn(1, 3))
