"""The package's modules import each other one way: no two modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"llm2nifti": ROOT / "llm2nifti", "llm2nifti.cli": ROOT / "cli", "bids_llm": ROOT / "bids_llm"}


def _modules():
    mods = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if pkg == "llm2nifti" and parts[:1] == ["cli"]:
                continue
            mods[name] = (path, path.name == "__init__.py")
    return mods


def _imports(name, path, is_pkg, known):
    """Modules of the package that ``name`` imports anywhere (function bodies included)."""
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - node.level + 1]
                mod = ".".join(stem + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def test_no_two_modules_import_each_other():
    mods = _modules()
    graph = {n: _imports(n, p, pkg, mods) for n, (p, pkg) in mods.items()}
    assert len(graph) > 40 and graph["llm2nifti.analysis.glm"]  # the walk sees the package
    pairs = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps
                    if a in graph.get(b, ()) and not (mods[a][1] or mods[b][1])})
    assert pairs == [], pairs
