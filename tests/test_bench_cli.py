"""flashnce-bench end to end on tiny sweeps: valid JSON / CSV, a PNG, and failing cases
(timeout, out of memory) reported as rows while the sweep goes on."""

import csv
import json
import math
import subprocess
import sys

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
        values.append(float(fn(*inputs)))
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
