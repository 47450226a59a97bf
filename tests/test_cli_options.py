"""One vocabulary on the command line: each shared option declared once, every default the
library's, and library errors (which name parameters) told in flags."""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from llm2nifti.analysis import decomposition as D
from llm2nifti.cli.main import main
from llm2nifti.cli.options import build_estimator, with_flags

CLI = Path(__file__).resolve().parents[1] / "cli"

# The library function each command calls: its parameters' defaults are the options'.
WORKFLOWS = {
    "decompose": "llm2nifti.analysis.decomposition:decompose",
    "networks": "llm2nifti.analysis.selection:networks",
    "recurrence": "llm2nifti.analysis.matching:recurrence",
    "fingerprint": "llm2nifti.analysis.fingerprints:fingerprint",
    "diff": "llm2nifti.analysis.diffs:diff",
    "evaluate": "llm2nifti.intervention.experiment:evaluate",
    "prune": "llm2nifti.intervention.pruning:prune",
    "localize": "llm2nifti.analysis.glm:localize",
    "connectivity": "llm2nifti.analysis.connectomes:connectivity",
    "words": "llm2nifti.acquisition.words:words_dataset",
    "patch": "llm2nifti.intervention.patching:patch_gap",
    "derive": "llm2nifti.intervention.variants:derive",
    "convert": "llm2nifti.acquisition.convert:scan",
    "encode": "llm2nifti.analysis.encoding:encode",
}
# The estimator each command builds: (workflow of WORKFLOW_DECOMPOSITIONS, keyword it is passed as)
ESTIMATORS = {"decompose": "decompose", "recurrence": "recurrence", "fingerprint": "fingerprint",
              "diff": "diff", "evaluate": "fn_at_k"}


def _default(p, ctx):
    """An option's default, None where it has none (click marks that with a sentinel)."""
    value = p.get_default(ctx)
    return None if type(value).__name__ == "Sentinel" else value


def _function(spec):
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def test_no_two_cli_files_declare_the_same_option():
    declared = {}
    for path in sorted(CLI.glob("*.py")):
        for flag in re.findall(r'(?:click\.)?option\(\s*"(--[a-z0-9-]+)"', path.read_text()):
            declared.setdefault(flag, []).append(path.name)
    shared = {flag: files for flag, files in declared.items() if len(files) > 1}
    assert not shared, shared
    # and each word means one thing: the help of an option several commands take starts alike
    # in every one (what differs is what it is used for, and the default)
    helps = {}
    for command in main.commands.values():
        for p in command.params:
            if isinstance(p, click.Option) and not p.hidden:
                helps.setdefault(max(p.opts, key=len), []).append(p.help)
    for flag, texts in helps.items():
        if len(texts) > 1:
            assert len(os.path.commonprefix(texts)) >= 5, (flag, texts)
    assert all("resample of the runs" in t for t in helps["--bootstrap"])


@pytest.mark.parametrize("command", sorted(WORKFLOWS))
def test_every_cli_default_is_the_library_default(command):
    """An option and the library parameter it feeds (same name, or the one it is declared to
    feed) start from the same value; None on the command line means "the library decides"."""
    params = inspect.signature(_function(WORKFLOWS[command])).parameters
    cmd = main.commands[command]
    ctx = click.Context(cmd)
    for p in cmd.params:
        name = getattr(p, "library", None) or p.name
        if (not isinstance(p, click.Option) or p.hidden or p.is_flag or name not in params
                or params[name].default is inspect.Parameter.empty):
            continue
        value = _default(p, ctx)
        if value is None or (p.multiple and not value):
            continue  # None: the library's own default applies
        value = p.type_cast_value(ctx, value)
        library = params[name].default
        as_list = (lambda v: list(v) if isinstance(v, (tuple, list)) else v)
        assert as_list(value) == as_list(library), (command, p.name, value, library)


@pytest.mark.parametrize("command", sorted(ESTIMATORS))
def test_the_estimator_built_from_cli_defaults_is_the_workflows_default(command):
    """The decomposition a command builds when no option is given is the one its workflow runs
    when given none (D.default_decomposition), parameter for parameter."""
    cmd = main.commands[command]
    ctx = click.Context(cmd)
    values = {p.library: _default(p, ctx) for p in cmd.params
              if getattr(p, "library", None) in {*D.Decomposition().get_params(), "n_repeats",
                                                  "bootstrap"}}
    built = build_estimator(values)
    expected = D.default_decomposition(ESTIMATORS[command])
    assert type(built) is type(expected)
    got, want = built.get_params(deep=True), expected.get_params(deep=True)
    for params in (got, want):
        params.pop("estimator", None)
    assert got == want, (command, got, want)


def test_every_default_is_written_once():
    """k, the |z| threshold, FastICA's starts and iterations come from one module."""
    from llm2nifti import defaults

    one = D.Decomposition()
    assert one.n_components == defaults.N_COMPONENTS and one.max_iter == defaults.MAX_ITER
    assert one._n_init() == defaults.N_INIT
    assert D.StableDecomposition(one, n_repeats=2)._decomposition(0).n_init == 1
    assert D.StableDecomposition(one, n_repeats=1)._decomposition(0)._n_init() == defaults.N_INIT
    from llm2nifti.analysis.selection import maps_to_neurons, networks

    for f in (maps_to_neurons, networks):
        assert inspect.signature(f).parameters["threshold"].default == defaults.Z_THRESHOLD
    source = "\n".join(p.read_text() for p in (CLI.parent / "llm2nifti").rglob("*.py")
                       if p.name != "defaults.py")
    assert not re.search(r"threshold=3\.6|n_components=20\b|N_RUNS = ", source)


def test_library_errors_name_parameters_and_the_cli_names_flags():
    command = main.commands["decompose"]
    assert (with_flags("n_components=500 exceeds the 12 tokens", command)
            == "--n-components 500 exceeds the 12 tokens")
    assert with_flags("set backend='fast' for method='dictlearning'", command) == \
        "set --backend fast for --method dictlearning"
    assert with_flags("`bootstrap` resamples: set n_repeats to 2", command) == \
        "--bootstrap resamples: set --n-runs to 2"
    evaluate = main.commands["evaluate"]
    assert with_flags("n_init=0: give at least 1", evaluate) == "--k-n-init 0: give at least 1"
    # a word that is not a parameter is left alone; a parameter inside another word too
    assert with_flags("the fast backend of max_iterations", command) == \
        "the fast backend of max_iterations"


def test_the_cli_prints_the_flag_a_library_error_names(tmp_path):
    from planted import make_planted

    make_planted(tmp_path / "ds")
    r = CliRunner().invoke(main, ["decompose", str(tmp_path / "ds"), "--scheduler", "processes",
                                  "-q"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "set --backend fast" in r.output and "backend=" not in r.output
    r = CliRunner().invoke(main, ["decompose", str(tmp_path / "ds"), "--max-iter", "50", "-q"])
    assert r.exit_code == 2 and "--max-iter 50 needs --backend fast" in r.output, r.output
    assert not (tmp_path / "ds" / "derivatives" / "llm2nifti-canica").exists()


def test_former_names_are_still_accepted(tmp_path):
    from planted import make_planted

    make_planted(tmp_path / "ds", n_networks=2, size=10)
    r = CliRunner().invoke(main, ["decompose", str(tmp_path / "ds"), "--method", "dictlearning",
                                  "--alpha", "5", "-k", "2", "-q"])
    assert r.exit_code == 0, r.output
    sidecar = next((tmp_path / "ds" / "derivatives" / "llm2nifti-dictlearning").rglob(
        "*_desc-dictlearning_components.json")).read_text()
    assert '"alpha": 5.0' in sidecar
