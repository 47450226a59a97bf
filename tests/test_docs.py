"""The documentation covers what the package exports, and its gallery and links are sound.

The site itself is built (gallery executed, warnings as errors) by ``make docs`` in CI.
"""

import ast
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _api_names():
    spec = importlib.util.spec_from_file_location("api_names", ROOT / "docs" / "api_names.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_lists_every_public_name():
    api = _api_names()
    text = (ROOT / "docs" / "api.rst").read_text()
    assert text == api.api_rst(), "docs/api.rst is stale: run python docs/api_names.py"
    documented = {f"{m}.{n}" for m, _, names, _ in api.sections() for n in names}
    linked = {f"{m}.{n}" for m, _, _, links in api.sections() for n, _ in links}
    for module, _ in api.MODULES:
        for name in api.public(module):
            assert f"{module}.{name}" in documented | linked, (module, name)
    # each object once: a linked name points at a documented one
    for _, _, _, links in api.sections():
        assert all(target in documented for _, target in links)


def test_gallery_examples_are_sphinx_gallery_scripts():
    examples = sorted((ROOT / "examples").glob("plot_*.py"))
    assert len(examples) >= 10
    for path in examples:
        doc = ast.get_docstring(ast.parse(path.read_text()))
        title, underline = doc.splitlines()[:2]
        assert title and set(underline) == {"="} and len(underline) >= len(title), path.name
    assert (ROOT / "examples" / "README.txt").is_file()


def test_guide_links_point_at_files_that_exist():
    pages = list((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
    for page in pages:
        if "_build" in page.parts:
            continue
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), (page.relative_to(ROOT), target)


def test_site_check_finds_loads_from_outside(tmp_path):
    spec = importlib.util.spec_from_file_location("check_site", ROOT / "docs" / "check_site.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "theme.css").write_text("a { color: red }")
    (tmp_path / "ok.html").write_text(
        '<link rel="stylesheet" href="_static/theme.css"><a href="https://example.org">x</a>'
        '<img src="data:image/png;base64,AAAA">')
    assert check.problems(tmp_path) == []
    (tmp_path / "bad.html").write_text(
        '<script src="https://cdn.example.org/x.js"></script><img src="missing.png">')
    (tmp_path / "_static" / "font.css").write_text("@font-face { src: url(https://f.example/x.woff) }")
    found = check.problems(tmp_path)
    assert len(found) == 3
    assert any("cdn.example.org" in p for p in found) and any("missing.png" in p for p in found)
    assert any("font.css" in p for p in found)
