"""Model-parallel classes: ``flashnce.margin_softmax(..., group=)`` with the class centres
sharded over 2 and 4 gloo CPU processes, against the single-process loss (float64, 1e-9).

Each rank holds its rows x_r (uneven sizes) and a contiguous shard of the centres (uneven,
one rank with a single class). Under the convention of ``flashnce.class_shards``:

    mean_r loss_r        == L(all rows, all centres)
    x_r.grad / W         == dL/dx for rank r's rows
    centres_r.grad       == dL/dcentres for rank r's shard (exact, not averaged)
    mean_r scale.grad_r  == dL/dscale

One spawn per world size runs every case; a hang fails after SPAWN_TIMEOUT_S.
"""

from __future__ import annotations


import pytest
import torch

import flashnce
from _gloo import gloo_results, record, spawn_gloo

SPAWN_TIMEOUT_S = 120
RTOL = 1e-9
DIM, SCALE0 = 5, 8.0
ROWS = {2: (4, 7), 4: (3, 1, 5, 2)}
CLASSES = {2: (6, 11), 4: (3, 7, 1, 6)}
CASES = {  # name: margin_softmax keywords
    "arcface": dict(margin_type="arcface"),
    "arcface-torch": dict(margin_type="arcface", backend="torch"),
    "cosface-sum": dict(margin_type="cosface", reduction="sum"),
    "cosface-lorentz": dict(margin_type="cosface", geometry="lorentz", margin=0.2),
    "cosface-poincare-none": dict(margin_type="cosface", geometry="poincare", margin=0.1,
                                  reduction="none"),
}


def _inputs(world, case):
    g = torch.Generator().manual_seed(11 + world)
    n, c = sum(ROWS[world]), sum(CLASSES[world])
    x = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    w = torch.randn(c, DIM, generator=g, dtype=torch.float64)
    if CASES[case].get("geometry") in ("lorentz", "poincare"):
        x, w = 0.4 * x, 0.4 * w  # tangent vectors of moderate radius
    labels = torch.randint(0, c, (n,), generator=g)
    labels[0] = c - 1  # the last class lives on the last rank
    return x, w, labels


def _spans(sizes):
    lo = 0
    for s in sizes:
        yield lo, s
        lo += s


def _run(world, rank, group, case):
    x, w, labels = _inputs(world, case)
    lo, n = list(_spans(ROWS[world]))[rank]
    c_lo, c_n = list(_spans(CLASSES[world]))[rank]
    xr = x[lo:lo + n].clone().requires_grad_(True)
    wr = w[c_lo:c_lo + c_n].clone().requires_grad_(True)
    scale = torch.tensor(SCALE0, dtype=torch.float64, requires_grad=True)
    loss = flashnce.margin_softmax(xr, wr, labels[lo:lo + n], scale=scale, group=group,
                                   **CASES[case])
    # "none": reduced as the convention says, (W / N) * sum, for the DDP-scaled gradients.
    (loss.sum() * world / labels.shape[0] if loss.dim() else loss).backward()
    return dict(loss=loss.detach(), x=xr.grad, w=wr.grad, scale=scale.grad)


def _module_run(world, rank, group):
    """ArcFaceLoss(group=) holds this rank's shard of an even split; copy it from the full
    centres of the single-process module built with the same seed."""
    torch.manual_seed(3)
    full = flashnce.nn.ArcFaceLoss(10, DIM).double()
    mod = flashnce.nn.ArcFaceLoss(10, DIM, group=group).double()
    off, k = mod.class_offset, mod.centres.shape[0]
    with torch.no_grad():
        mod.centres.copy_(full.centres[off:off + k])
    x, _, _ = _inputs(world, "arcface")
    labels = torch.arange(x.shape[0]) % 10
    lo, n = list(_spans(ROWS[world]))[rank]
    xr = x[lo:lo + n].clone().requires_grad_(True)
    loss = mod(xr, labels[lo:lo + n])
    loss.backward()
    return dict(loss=loss.detach(), x=xr.grad, w=mod.centres.grad, offset=off, k=k)


def _infonce_margin_run(world, rank, group):
    """Symmetric infonce(margin=) across ranks (gather and ring): the margin logit of each
    diagonal positive is computed where the pair lives."""
    out = {}
    g = torch.Generator().manual_seed(5)
    n = sum(ROWS[world])
    x, y = (torch.randn(n, DIM, generator=g, dtype=torch.float64) for _ in range(2))
    lo, k = list(_spans(ROWS[world]))[rank]
    for mode in ("gather", "ring"):
        xr = x[lo:lo + k].clone().requires_grad_(True)
        yr = y[lo:lo + k].clone().requires_grad_(True)
        loss = flashnce.infonce(xr, yr, scale=4.0, margin=0.3, margin_type="arcface",
                                group=group, group_mode=mode)
        loss.backward()
        out[mode] = dict(loss=loss.detach(), x=xr.grad, y=yr.grad)
    return out


def _error_run(world, rank, group):
    """Bad input on one rank raises on every rank (no hang)."""
    out = {}
    x = torch.randn(3, DIM, dtype=torch.float64)
    w = torch.randn(2, DIM, dtype=torch.float64)
    bad_labels = torch.tensor([0, 1, 2 * world + (5 if rank == 0 else 0)])
    bad_dim = torch.randn(2, DIM + (1 if rank == world - 1 else 0), dtype=torch.float64)
    for name, args in (("labels", (x, w, bad_labels)),
                       ("dim", (x, bad_dim, torch.tensor([0, 1, 0])))):
        try:
            flashnce.margin_softmax(*args, group=group)
            out[name] = "no error"
        except (ValueError, TypeError, RuntimeError) as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


def _worker(rank, world, store_dir):
    with gloo_results(rank, world, store_dir) as (group, results):
        for case in CASES:
            record(results, case, _run, world, rank, group, case)
        for name, fn in (("module", _module_run), ("errors", _error_run),
                         ("infonce_margin", _infonce_margin_run)):
            record(results, name, fn, world, rank, group)


@pytest.fixture(scope="module", params=sorted(ROWS), ids=lambda w: f"world{w}")
def spawned(request, tmp_path_factory):
    world = request.param
    return world, spawn_gloo(_worker, world, str(tmp_path_factory.mktemp(f"classes{world}")),
                             timeout_s=SPAWN_TIMEOUT_S)


def _results(per_rank, name):
    for rank, res in enumerate(per_rank):
        if isinstance(res[name], str):
            pytest.fail(f"rank {rank} raised in {name}:\n{res[name]}")
    return [r[name] for r in per_rank]


def _close(a, b, what):
    err = float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)
    assert err <= RTOL, f"{what}: relative error {err:.3g}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_sharded_classes_match_single_process(spawned, case):
    world, per_rank = spawned
    res = _results(per_rank, case)
    x, w, labels = _inputs(world, case)
    x.requires_grad_(True)
    w.requires_grad_(True)
    scale = torch.tensor(SCALE0, dtype=torch.float64, requires_grad=True)
    kwargs = {k: v for k, v in CASES[case].items() if k != "backend"}
    want = flashnce.margin_softmax(x, w, labels, scale=scale, backend="reference", **kwargs)
    (want.mean() if want.dim() else want).backward()
    if kwargs.get("reduction") == "none":
        _close(torch.cat([r["loss"] for r in res]), want.detach(), "per-row losses")
    else:
        _close(torch.stack([r["loss"] for r in res]).mean(), want.detach(), "mean_r loss_r")
    _close(torch.cat([r["x"] for r in res]) / world, x.grad, "x_r.grad / W")
    _close(torch.cat([r["w"] for r in res]), w.grad, "centres_r.grad")
    _close(torch.stack([r["scale"] for r in res]).mean(), scale.grad, "mean_r scale.grad")
    assert [r["w"].shape[0] for r in res] == list(CLASSES[world])


def test_arcface_module_shards_match_single_process(spawned):
    world, per_rank = spawned
    res = _results(per_rank, "module")
    torch.manual_seed(3)
    full = flashnce.nn.ArcFaceLoss(10, DIM).double()
    x, _, _ = _inputs(world, "arcface")
    x.requires_grad_(True)
    want = full(x, torch.arange(x.shape[0]) % 10)
    want.backward()
    assert sum(r["k"] for r in res) == 10 and res[0]["offset"] == 0
    _close(torch.stack([r["loss"] for r in res]).mean(), want.detach(), "module loss")
    _close(torch.cat([r["x"] for r in res]) / world, x.grad, "module x.grad / W")
    _close(torch.cat([r["w"] for r in res]), full.centres.grad, "module centres.grad")


def test_bad_input_raises_on_every_rank(spawned):
    world, per_rank = spawned
    res = _results(per_rank, "errors")
    for rank, r in enumerate(res):
        assert r["labels"].startswith("ValueError") and "labels" in r["labels"], (rank, r)
        # The rank with the other dim names it; the others say that rank rejected its inputs.
        want = "dim" if rank == world - 1 else f"rank(s) [{world - 1}] rejected"
        assert r["dim"] != "no error" and want in r["dim"], (rank, r)


@pytest.mark.parametrize("mode", ("gather", "ring"))
def test_infonce_margin_across_ranks(spawned, mode):
    world, per_rank = spawned
    res = [r[mode] for r in _results(per_rank, "infonce_margin")]
    g = torch.Generator().manual_seed(5)
    n = sum(ROWS[world])
    x, y = (torch.randn(n, DIM, generator=g, dtype=torch.float64).requires_grad_(True)
            for _ in range(2))
    want = flashnce.infonce(x, y, scale=4.0, margin=0.3, margin_type="arcface",
                            backend="reference")
    want.backward()
    _close(torch.stack([r["loss"] for r in res]).mean(), want.detach(), "mean_r loss_r")
    _close(torch.cat([r["x"] for r in res]) / world, x.grad, "x_r.grad / W")
    _close(torch.cat([r["y"] for r in res]) / world, y.grad, "y_r.grad / W")
