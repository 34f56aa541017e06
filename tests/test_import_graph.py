"""The package's import graph has no cycles, counting lazy (function-level) imports too.

Modules are python/flashnce/**.py plus triton_kernels/*.py (installed as
flashnce.triton_kernels). An edge m -> t is any ``import`` / ``from ... import`` of t inside m,
at any depth of the syntax tree. A package's ``__init__`` importing its own submodules, and a
submodule importing its parent package, are not edges (Python resolves those by design).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"flashnce": ROOT / "python" / "flashnce",
           "flashnce.triton_kernels": ROOT / "triton_kernels"}


def _modules() -> dict[str, Path]:
    mods = {}
    for prefix, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([prefix, *parts])] = path
    return mods


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        is_pkg = path.name == "__init__.py"
        here = m.split(".") if is_pkg else m.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                base = (".".join(here[: len(here) - node.level + 1] + [node.module or ""])
                        if node.level else node.module or "").rstrip(".")
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if (not name or name == m or (is_pkg and name.startswith(m + "."))
                        or m.startswith(name + ".")):
                    continue
                edges[m].add(name)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    edges = _edges(_modules())
    assert sum(map(len, edges.values())) > 20, "the import graph looks empty: vacuous test"
    assert _cycles(edges) == []


def test_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_core_spec_imports_nothing():
    """The axis tables are read by the Triton kernels and mirrored in C++: no dependencies."""
    tree = ast.parse((SOURCES["flashnce"] / "core" / "spec.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
