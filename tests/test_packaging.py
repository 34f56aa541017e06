"""Packaging: the sdist carries every source the build needs, and a build without torch fails
loudly instead of silently installing a package without kernels."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _git_files(*paths):
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", *paths], capture_output=True,
                         text=True)
    if out.returncode != 0:
        pytest.skip(f"not a git checkout: {out.stderr.strip()}")
    return [line for line in out.stdout.splitlines() if line]


def test_sdist_contains_every_build_source(tmp_path):
    pytest.importorskip("build", reason="the 'build' package is not installed")
    pytest.importorskip("wheel", reason="the 'wheel' package is not installed")
    out = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation",
                          "--outdir", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (sdist,) = tmp_path.glob("flashnce-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {"/".join(n.split("/")[1:]) for n in tar.getnames()}
    needed = _git_files("csrc", "triton_kernels", "python") + ["CMakeLists.txt", "setup.py",
                                                              "pyproject.toml", "README.md"]
    needed = [f for f in needed if not f.endswith((".png", ".json", ".csv"))
              and (ROOT / f).exists()]  # tracked files deleted in a work tree are not needed
    missing = sorted(set(needed) - names)
    assert not missing, f"the sdist lacks {missing}"


def test_compiling_build_without_torch_fails_loudly():
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', 'build_ext']\n"
            "exec(compile(open('setup.py').read(), 'setup.py', 'exec'))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0
    assert "cannot build the compiled extension: torch is not importable" in out.stderr
    assert "--no-build-isolation" in out.stderr


def test_metadata_without_torch_still_works():
    """An sdist or egg_info needs no torch (pip's isolated metadata step)."""
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--version']\n"
            "exec(compile(open('setup.py').read(), 'setup.py', 'exec'))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "0.1.0" in out.stdout


def test_wheel_pins_the_torch_it_was_built_against():
    import torch

    code = ("import sys; sys.argv = ['setup.py', '--version']\n"
            "exec(compile(open('setup.py').read().replace('setup(', 'print(torch_requirement())"
            " or (lambda **k: None)(', 1), 'setup.py', 'exec'))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    assert f"torch=={major}.{minor}.*" in out.stdout
