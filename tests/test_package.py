"""The package's shape: public names, stage boundaries, no torch in the dataset layer."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import llm2nifti

ROOT = Path(llm2nifti.__file__).parent
STAGES = ("acquisition", "analysis", "intervention", "report")
CORE = ("errors", "layout", "models", "neuronset", "sites", "_version", "_lazy")
PUBLIC = ["NeuronLayout", "Site", "resolve_site", "load_model", "UsageError", "NeuronSet", "scan",
          "ScanResult", "Recorder", "record", "load_documents", "decompose", "Decomposition",
          "maps_to_neurons", "intervene", "Intervention", "Evaluator", "neuron_stats", "evaluate",
          "prune", "prune_model", "Dataset", "load_run",
          # the workflows behind the commands (report is the stage package of that name)
          "networks", "recurrence", "localize", "connectivity", "words_dataset", "fingerprint",
          "diff", "patch_gap", "StableDecomposition"]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_importable_from_llm2nifti(name):
    assert name in llm2nifti.__all__
    assert getattr(llm2nifti, name) is not None


def test_functions_named_like_stages_are_not_shadowed():
    # Importing every stage module must leave llm2nifti.scan and .intervene callable.
    for stage in STAGES:
        for path in (ROOT / stage).glob("*.py"):
            importlib.import_module(f"llm2nifti.{stage}.{path.stem}".replace(".__init__", ""))
    assert callable(llm2nifti.scan) and callable(llm2nifti.intervene)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_exports_resolve(stage):
    pkg = importlib.import_module(f"llm2nifti.{stage}")
    assert pkg.__doc__ and len(pkg.__doc__.strip().splitlines()) >= 2
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None, name


@pytest.mark.parametrize("package", ("", *STAGES))
def test_no_module_shadows_an_exported_name(package):
    """Importing a submodule sets the package attribute of its name: it must not hide an export."""
    pkg = importlib.import_module("llm2nifti" + (f".{package}" if package else ""))
    modules = {p.stem for p in Path(pkg.__file__).parent.glob("*.py")} | {
        p.name for p in Path(pkg.__file__).parent.iterdir() if (p / "__init__.py").is_file()}
    assert not modules & set(pkg.__all__)
    for module in sorted(modules - {"__init__"}):  # every submodule imported...
        importlib.import_module(f"{pkg.__name__}.{module}")
    # ... and every export is still a function, class or value, never a module
    assert not [n for n in pkg.__all__ if inspect.ismodule(getattr(pkg, n))]


def _imports(path):
    """(level, module, names) of every ``from ... import`` in a file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield 0, a.name, []


def test_stages_meet_only_through_public_names():
    bad = []
    for stage in STAGES:
        for path in (ROOT / stage).glob("*.py"):
            for level, module, names in _imports(path):
                if level == 2 and module.split(".")[0] in STAGES:
                    other = module.split(".")[0]
                    public = set(importlib.import_module(f"llm2nifti.{other}").__all__)
                    if "." in module or not set(names) <= public:
                        bad.append(f"{path.relative_to(ROOT)}: from ..{module} import {names}")
                if level == 0 and module.startswith("llm2nifti."):
                    bad.append(f"{path.relative_to(ROOT)}: absolute import of {module}")
    assert not bad, "\n".join(bad)


def test_no_stage_below_the_report_imports_it():
    """Analysis, acquisition and intervention return data and write through the core (figures
    through llm2nifti.plots, names through bids_llm.outputs): the report only reads."""
    bad = [f"{path.relative_to(ROOT)}: {module}"
           for stage in ("acquisition", "analysis", "intervention")
           for path in (ROOT / stage).glob("*.py")
           for level, module, _ in _imports(path)
           if (level == 2 and module.split(".")[0] == "report")
           or module.startswith("llm2nifti.report")]
    assert not bad, bad


def _stage_of(level, module):
    parts = module.split(".")
    if level == 1 and parts[0] in STAGES:
        return parts[0]
    if level == 0 and parts[0] == "llm2nifti" and len(parts) > 1 and parts[1] in STAGES:
        return parts[1]
    return None


def test_core_does_not_import_stages():
    bad = [f"{p.name}: {m}" for p in ROOT.glob("*.py") if p.name != "__init__.py"
           for lvl, m, _ in _imports(p) if _stage_of(lvl, m)]
    assert not bad


def test_bids_llm_imports_without_torch_or_transformers():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import bids_llm, bids_llm.dataset, bids_llm.naming, bids_llm.events, bids_llm.io\n"
        "import bids_llm.derivatives\n"
        "assert not any(m.split('.')[0] in ('torch', 'transformers') for m in sys.modules)\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def _long_functions(limit):
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            first = node.body[0]
            has_doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None),
                                                                   ast.Constant)
            start = first.end_lineno + 1 if has_doc else node.lineno
            if node.end_lineno - start + 1 > limit:
                yield f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"


def test_no_function_body_longer_than_80_lines():
    assert list(_long_functions(80)) == []


def test_wheel_and_sdist_hold_the_package_data(tmp_path):
    """``python -m build`` makes a wheel with the report template and the console script, and
    an sdist that builds it again."""
    import tarfile
    import zipfile

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"  # a clean copy of the tracked files: no build/ or egg-info of this tree
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        if (root / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((root / name).read_bytes())
    out = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir",
                          str(tmp_path / "dist"), str(src)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    (sdist,) = (tmp_path / "dist").glob("*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert "llm2nifti/report/templates/report.html.j2" in names
    assert {"llm2nifti/cli/main.py", "bids_llm/dataset.py", "llm2nifti/acquisition/convert.py"} <= set(names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "llm2nifti = llm2nifti.cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()
    held = tarfile.open(sdist).getnames()
    assert any(n.endswith("llm2nifti/report/templates/report.html.j2") for n in held)
    assert any(n.endswith("/setup.cfg") for n in held)
