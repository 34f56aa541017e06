"""flashnce-bench end to end on tiny sweeps: valid JSON / CSV, a PNG, and failing cases
(timeout, out of memory) reported as rows while the sweep goes on."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flashnce.bench import cases as C
from flashnce.bench import cli
from flashnce.bench import measure as M
from flashnce.bench import report as R

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(tmp_path, name, *argv):
    code = cli.main([*argv, "--out", str(tmp_path), "--name", name, "-q"])
    assert code == 0
    doc = json.loads((tmp_path / f"{name}.json").read_text())
    assert doc["schema"] == R.SCHEMA
    return doc


def _rows(doc, provider):
    return sorted((r for r in doc["rows"] if r["provider"] == provider), key=lambda r: r["n"])


def test_tiny_sweep_writes_json_csv_png(tmp_path):
    pytest.importorskip("matplotlib")
    doc = _run(tmp_path, "tiny", "-n", "32", "64", "-d", "8", "--repeats", "2",
               "-p", "flashnce", "--plot")
    env = doc["environment"]
    for key in ("device_name", "torch_version", "flashnce_version", "git_sha", "timestamp"):
        assert key in env
    assert len(doc["rows"]) == 4  # gemm and flashnce at two N
    for r in doc["rows"]:
        assert r["status"] == "ok", r
        assert r["full_ms"] > 0 and r["fwd_p20_ms"] <= r["fwd_ms"] <= r["fwd_p80_ms"]
        assert r["peak_mib"] >= 0 and r["gflops"] > 0
    for r in _rows(doc, "flashnce"):
        assert r["backend"] in ("triton", "cuda", "cpu", "torch")
        assert r["bwd_ms"] > 0 and math.isclose(r["full_x_gemm"], r["full_ms"] / r["gemm_ms"])
    with (tmp_path / "tiny.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[0]["git_sha"] == (env["git_sha"] or "")
    assert (tmp_path / "tiny.png").read_bytes()[:8] == PNG_MAGIC


def test_timeout_is_reported_and_larger_sizes_skipped(tmp_path):
    # N=2048 takes ~100 ms a pass on a fast core, so a 10 ms limit can't be met (N=256 could).
    doc = _run(tmp_path, "slow", "-n", "2048", "4096", "-p", "flashnce", "--no-gemm",
               "--timeout", "0.01")
    first, second = _rows(doc, "flashnce")
    assert first["status"] == "timeout" and "timeout" in first["note"]
    assert second["status"] == "skipped" and "timeout at N=2048" in second["note"]
    assert "timeout" in R.format_table(doc["rows"])


def test_out_of_memory_is_reported_and_sweep_goes_on(tmp_path):
    # A 32 MiB cap above the inputs: N=4096's 64 MiB GEMM output / logit matrix cannot fit.
    # The GEMM case fails first and the sweep still runs (and reports) the loss after it.
    doc = _run(tmp_path, "oom", "-n", "4096", "-d", "8", "-p", "materialized",
               "--mem-limit", "32M", "--repeats", "1")
    for provider in ("gemm", "materialized"):
        (row,) = _rows(doc, provider)
        assert row["status"] == "oom", row
        assert "allocate" in row["note"] or "Memory" in row["note"]
    assert "oom" in R.format_table(doc["rows"])


def test_in_process_mode_and_unavailable_provider(tmp_path):
    doc = _run(tmp_path, "inproc", "-n", "16", "-d", "4", "--in-process", "--repeats", "1",
               "-p", "flashnce-torch", "inf_cl", "--no-gemm")
    (torch_row,) = _rows(doc, "flashnce-torch")
    assert torch_row["status"] == "ok" and torch_row["backend"] == "torch"
    (peer,) = _rows(doc, "inf_cl")
    assert peer["status"] == "skipped" and peer["note"]


def test_siglip_sweep_against_the_materialised_loss_and_open_clip(tmp_path):
    """--loss siglip: flashnce, the materialised loss and open_clip's SigLipLoss (where
    installed) on the same inputs give the same loss value; InfoNCE-only peers are skipped."""
    doc = _run(tmp_path, "siglip", "--loss", "siglip", "-n", "48", "-d", "8", "--in-process",
               "--repeats", "1", "-p", "flashnce-torch", "materialized", "open_clip", "pykeops")
    assert {r["loss"] for r in doc["rows"]} == {"siglip"}
    (ours,) = _rows(doc, "flashnce-torch")
    assert ours["status"] == "ok" and ours["full_x_gemm"] > 0
    assert _rows(doc, "materialized")[0]["status"] == "ok"
    (keops,) = _rows(doc, "pykeops")
    assert keops["status"] == "skipped" and "InfoNCE only" in keops["note"]
    case = C.Case(provider="flashnce-torch", n=48, d=8, loss="siglip")
    values = []
    for provider in ("flashnce-torch", "materialized", "open_clip"):
        c = C.Case(**{**case.as_dict(), "provider": provider})
        if C.unavailable_reason(c) is not None:
            continue
        inputs, fn = C.setup(c)
        values.append(float(fn(*inputs).detach()))
    assert len(values) >= 2 and max(values) - min(values) <= 1e-4 * abs(values[0])


def test_helpers():
    assert M.quantiles([3.0, 1.0, 2.0]) == pytest.approx((1.4, 2.0, 2.6))
    assert all(math.isnan(v) for v in M.quantiles([]))
    assert cli._mem_bytes("512M") == 512 << 20 and cli._mem_bytes("1.5GiB") == 3 << 29
    assert cli._mem_bytes("none") is None
    assert C.flops(4, 4, 2, "full") == 3 * C.flops(4, 4, 2, "fwd") == 3 * 64
    assert "flashnce-torch" in cli.expand_providers(["all"])
    with pytest.raises(SystemExit):
        cli.expand_providers(["nope"])


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "flashnce.bench", "--help"],
                         capture_output=True, text=True, timeout=120, check=True)
    assert "--providers" in out.stdout and "--mem-limit" in out.stdout


@pytest.mark.parametrize("argv", [["-n", "-5"], ["-n", "0"], ["-d", "0"], ["--device", "bogus"],
                                  ["--device", "cuda"], ["--timeout", "-1"],
                                  ["--timeout", "nan"], ["--repeats", "0"],
                                  ["--threads", "0"]])
def test_bad_arguments_exit_with_a_message(argv, capsys):
    if argv == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here: --device cuda is valid")
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    assert exc.value.code == 2
    assert "flashnce-bench: error: argument" in capsys.readouterr().err


def test_report_missing_or_malformed_file(tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        cli.main(["--report", str(tmp_path / "missing.json")])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="not a flashnce-bench result file"):
        cli.main(["--report", str(bad)])
    other = tmp_path / "other.json"
    other.write_text('{"rows": []}')
    with pytest.raises(SystemExit, match="not a flashnce-bench result file"):
        cli.main(["--report", str(other)])


# --------------------------------------------------------------------------- same-set losses

# The peer of each same-set loss, and the geometry it runs in.
_SAME_SET = {"supcon": ("pml", "cosine"), "ntxent": ("pml", "cosine"),
             "uniformity": ("pdist", "sqeuclidean")}


@pytest.mark.parametrize("loss", C.SAME_SET_LOSSES)
def test_same_set_sweep_agrees_with_the_materialised_loss_and_its_peer(tmp_path, loss):
    """--loss supcon / ntxent / uniformity: flashnce (auto and torch), the materialised loss and
    the peer (pytorch-metric-learning, torch.pdist) give the same loss value at every N; the
    InfoNCE / SigLIP peers are skipped with a reason."""
    peer, geometry = _SAME_SET[loss]
    doc = _run(tmp_path, loss, "--loss", loss, "-g", geometry, "-n", "64", "128", "-d", "16",
               "--in-process", "--repeats", "1", "-p", "flashnce", "flashnce-torch",
               "materialized", peer, "open_clip", "pykeops", "inf_cl")
    rows = doc["rows"]
    assert {r["loss"] for r in rows} == {loss}
    providers = ["flashnce", "flashnce-torch", "materialized"]
    peer_rows = _rows(doc, peer)
    if peer_rows[0]["status"] == "skipped":
        assert "not installed" in peer_rows[0]["note"], peer_rows[0]
        print(f"{peer} not checked: {peer_rows[0]['note']}")
    else:
        providers.append(peer)
    for p in ("gemm", *providers):
        for r in _rows(doc, p):
            assert r["status"] == "ok", r
            assert r["full_ms"] > 0 and r["peak_mib"] >= 0 and r["gflops"] > 0
    assert _rows(doc, "flashnce-torch")[0]["backend"] == "torch"
    for n in (64, 128):
        values = {r["provider"]: r["loss_value"] for r in rows
                  if r["n"] == n and r["provider"] in providers}
        assert set(values) == set(providers) and all(math.isfinite(v) for v in values.values())
        ref = values["materialized"]
        for p, v in values.items():
            assert abs(v - ref) <= 1e-4 * abs(ref), (n, values)
    (gemm,) = [r for r in _rows(doc, "gemm") if r["n"] == 128]
    assert gemm["loss_value"] is None  # the yardstick has no loss
    for p in ("open_clip", "pykeops", "inf_cl"):
        for r in _rows(doc, p):
            assert r["status"] == "skipped" and "InfoNCE" in r["note"], r
    assert R.value_check(rows) == []
    assert f"vs {peer}" in "\n".join(R.memory_wall(rows)) or peer not in providers


def test_supcon_and_ntxent_sweep_writes_json_csv_and_a_plot_per_loss(tmp_path):
    """A --loss supcon ntxent run with flashnce, materialized, pml and the gemm yardstick:
    one table group and one PNG per loss, the gemm ratio of each loss from its own gemm row."""
    pytest.importorskip("matplotlib")
    doc = _run(tmp_path, "ss", "--loss", "supcon", "ntxent", "-n", "64", "-d", "16",
               "--in-process", "--repeats", "1", "-p", "flashnce", "materialized", "pml",
               "--plot")
    rows = doc["rows"]
    assert sorted({(r["loss"], r["provider"]) for r in rows}) == sorted(
        (loss, p) for loss in ("supcon", "ntxent")
        for p in ("gemm", "flashnce", "materialized", "pml"))
    for r in rows:
        if r["provider"] == "pml" and r["status"] == "skipped":
            print(f"pml not checked: {r['note']}")
            continue
        assert r["status"] == "ok", r
        if r["provider"] != "gemm":
            gemm = next(g for g in rows if g["provider"] == "gemm" and g["loss"] == r["loss"])
            assert math.isclose(r["full_x_gemm"], r["full_ms"] / gemm["fwd_ms"])
    table = R.format_table(rows)
    assert "supcon, cosine, float32, d=16" in table and "ntxent, cosine, float32, d=16" in table
    with (tmp_path / "ss.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows) and "loss_value" in csv_rows[0]
    for loss in ("supcon", "ntxent"):
        png = tmp_path / f"ss_{loss}_cosine_float32_d16_cpu.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
    # --report of the saved run prints the same table
    assert cli.main(["--report", str(tmp_path / "ss.json")]) == 0


def test_same_set_unavailable_reasons():
    for loss in C.SAME_SET_LOSSES:
        for p in ("open_clip", "pykeops", "inf_cl"):
            reason = C.unavailable_reason(C.Case(provider=p, n=8, d=4, loss=loss))
            assert reason is not None and "InfoNCE" in reason and p in reason, (loss, p)
    # pytorch-metric-learning: supcon / ntxent, cosine only
    reason = C.unavailable_reason(C.Case(provider="pml", n=8, d=4, loss="supcon",
                                         geometry="sqeuclidean"))
    assert "cosine" in reason
    for loss in ("infonce", "siglip", "uniformity"):
        reason = C.unavailable_reason(C.Case(provider="pml", n=8, d=4, loss=loss))
        assert "supcon / ntxent only" in reason
    # torch.pdist: uniformity, sqeuclidean only
    reason = C.unavailable_reason(C.Case(provider="pdist", n=8, d=4, loss="uniformity"))
    assert "sqeuclidean" in reason
    assert C.unavailable_reason(C.Case(provider="pdist", n=8, d=4, loss="uniformity",
                                       geometry="sqeuclidean")) is None
    for loss in ("infonce", "siglip", "supcon", "ntxent"):
        reason = C.unavailable_reason(C.Case(provider="pdist", n=8, d=4, loss=loss))
        assert "uniformity only" in reason
    # the peers join "all" and "peers"; the InfoNCE ones are still reported for infonce
    assert {"pml", "pdist"} <= set(cli.expand_providers(["peers"]))
    assert {"pml", "pdist"} <= set(cli.expand_providers(["all"]))
    assert C.unavailable_reason(C.Case(provider="pml", n=8, d=4, loss="ntxent")) in (
        None, "pytorch_metric_learning is not installed")


@pytest.mark.parametrize("loss", C.LOSSES)
@pytest.mark.parametrize("geometry", ["cosine", "sqeuclidean", "lorentz"])
def test_backend_resolution_asks_for_the_walk_the_loss_runs(monkeypatch, loss, geometry):
    """resolve_flashnce_backend asks dispatch for the same kind, statistic and relation
    (flags, cols_both) as the loss itself does: e.g. supcon's masked_sum with labels, which a
    backend without that statistic refuses."""
    from flashnce import dispatch

    calls = []
    select = dispatch.select_backend

    def recording(name, x, y, tspec, *args, **kwargs):
        r = tspec.relation
        calls.append((name, x.shape[1], x.dtype, tspec.kind, tspec.stat, r.name, r.flags,
                      r.diag_offset, r.cols_both))
        return select(name, x, y, tspec, *args, **kwargs)

    monkeypatch.setattr(dispatch, "select_backend", recording)
    case = C.Case(provider="flashnce-torch", n=32, d=8, loss=loss, geometry=geometry)
    inputs, fn = C.setup(case)
    fn(*inputs)
    ran = list(calls)
    calls.clear()
    assert C.resolve_flashnce_backend(case, *inputs) == "torch"
    assert calls == ran[:1]
    calls.clear()
    C.resolve_flashnce_backend(case)  # the small stand-in: same walk
    assert calls == ran[:1]
    expected = {"infonce": "lse", "siglip": "pair_sum", "supcon": "masked_sum",
                "ntxent": "lse", "uniformity": "lse"}[loss]
    assert ran[0][4] == expected


def test_same_set_case_shapes():
    """Each same-set case is an N x N problem: supcon / uniformity take x [N, d], ntxent two
    views of N // 2 rows; x is the InfoNCE case's x; supcon has classes of 4."""
    base = C.Case(provider="materialized", n=10, d=4)
    x, _ = C.make_inputs(base, requires_grad=False)
    (xs,) = C.loss_inputs(C.Case(**{**base.as_dict(), "loss": "supcon"}))
    z1, z2 = C.loss_inputs(C.Case(**{**base.as_dict(), "loss": "ntxent"}))
    assert torch.equal(xs.detach(), x) and xs.is_leaf and xs.requires_grad
    assert z1.shape == z2.shape == (5, 4) and z1.is_leaf and z2.is_leaf
    assert torch.equal(z1.detach(), x[:5])
    assert C.supcon_labels(10, "cpu").tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    scales = {loss: C.Case(provider="flashnce", n=8, loss=loss).logit_scale
              for loss in C.SAME_SET_LOSSES}
    assert scales == pytest.approx({"supcon": 10.0, "ntxent": 2.0, "uniformity": 2.0})
    assert C.Case(provider="flashnce", n=8, loss="supcon", scale=5.0).temperature == 0.2


def test_loss_choices_in_help():
    args = cli.parse_args(["--loss", "supcon", "ntxent", "uniformity"])
    assert args.loss == ["supcon", "ntxent", "uniformity"]
    with pytest.raises(SystemExit):
        cli.parse_args(["--loss", "triplet"])
    assert all(loss in cli.__doc__ for loss in C.LOSSES)


def test_gpu_validate_script_fails_early_without_a_gpu():
    """bench/gpu/validate.sh stops at once (exit 2, a message saying why) where there is no
    CUDA device, before building or benchmarking anything."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would run the whole validation")
    if shutil.which("bash") is None:
        pytest.skip("bash is not available to run bench/gpu/validate.sh")
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu" / "validate.sh"
    env = {k: v for k, v in os.environ.items() if k != "FLASHNCE_VALIDATE_SMOKE"}
    out = subprocess.run(["bash", str(script), "/nonexistent"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 2, out.stderr
    assert "no CUDA device" in out.stderr
