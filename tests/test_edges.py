"""The shapes real text makes: runs shorter than k, a last run of one token."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from llm2nifti.cli.main import main


@pytest.mark.parametrize("backend", ["fast", "nilearn"])
def test_decompose_a_scan_whose_last_run_has_one_token(tmp_path, tiny_model_dir, text_file, backend):
    # 129 tokens in runs of 64: 64, 64 and 1. The 1-token run has rank 0 once z-scored; a run
    # shorter than k used to make the fast backend's shared reductions return nothing.
    ds = tmp_path / "ds"
    run = CliRunner().invoke
    r = run(main, ["convert", str(ds), "--model", str(tiny_model_dir), "--text", str(text_file),
                   "--max-tokens", "129", "--run-tokens", "64", "-q"])
    assert r.exit_code == 0, r.output
    assert [int(row["n_volumes"]) for row in _scans(ds)] == [64, 64, 1]
    r = run(main, ["decompose", str(ds), "--backend", backend, "-k", "4", "--n-init", "2", "-q"])
    assert r.exit_code == 0, r.output
    (maps,) = sorted((ds / "derivatives").rglob("*_desc-canica_components.nii"))
    import nibabel as nib

    data = np.asarray(nib.load(maps).dataobj)
    assert data.shape[-1] == 4 and np.isfinite(data).all() and np.abs(data).max() > 0
    sidecar = json.loads(maps.with_suffix(".json").read_text())
    assert (sidecar["NRuns"], sidecar["NTokens"]) == (3, 129)  # what the maps rest on


def _scans(ds):
    import csv

    (path,) = sorted(ds.glob("sub-*/sub-*_scans.tsv"))
    with open(path, newline="") as f:
        return sorted(csv.DictReader(f, delimiter="\t"), key=lambda r: r["filename"])


def _planted_runs(root, shape):
    """Runs of one battery shape, written by convert's writer: (bold paths, expected outcome)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_decomposition import _write_runs

    rng = np.random.default_rng(0)

    def arr(T, V):
        return rng.standard_normal((T, V)).astype(np.float32)

    def holes(X, what):
        X[rng.random(X.shape) < 0.01] = what
        return X

    runs = {
        "every run shorter than k": [arr(3, 40), arr(2, 40), arr(4, 40)],
        "a single run": [arr(50, 40)],
        "fewer units than k": [arr(50, 8), arr(40, 8)],
        "dead units in every run": [np.concatenate([arr(50, 30), np.zeros((50, 10), np.float32)], 1)
                                    for _ in range(2)],
        "a run in which every unit is constant": [arr(50, 40), np.full((50, 40), 2.0, np.float32)],
        "NaN in a run": [arr(50, 40), holes(arr(50, 40), np.nan)],
        "inf in a run": [arr(50, 40), holes(arr(50, 40), np.inf)],
        "runs of very different lengths": [arr(300, 40), arr(5, 40), arr(60, 40)],
    }[shape]
    return _write_runs(root, runs)


REFUSED = {
    "every run shorter than k": "--n-components 20 exceeds the 9 tokens of the selected runs",
    "fewer units than k": "--n-components 20 exceeds the 8 units of the selected runs",
    "NaN in a run": "sub-m_task-t_run-02_bold.nii holds .* values that are not finite .* first at token \\d+, layer \\d neuron \\d+",
    "inf in a run": "sub-m_task-t_run-02_bold.nii holds .* values that are not finite .* first at token \\d+, layer \\d neuron \\d+",
}
SHAPES = ["every run shorter than k", "a single run", "fewer units than k", "dead units in every run",
          "a run in which every unit is constant", "NaN in a run", "inf in a run",
          "runs of very different lengths"]


@pytest.mark.parametrize("backend", ["fast", "nilearn"])
@pytest.mark.parametrize("shape", SHAPES)
def test_decompose_on_the_shapes_real_text_makes(tmp_path, shape, backend):
    import re

    import nibabel as nib

    paths = _planted_runs(tmp_path, shape)
    r = CliRunner().invoke(main, ["decompose", str(tmp_path), "--backend", backend, "-k", "20",
                                  "--n-init", "2", "-q"])
    out = tmp_path / "derivatives" / "llm2nifti-canica"
    if shape in REFUSED:  # one line, exit 2, nothing written
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and re.search(REFUSED[shape], lines[0]), r.output
        assert not out.exists()
        return
    assert r.exit_code == 0, r.output
    (maps,) = sorted(out.rglob("*_desc-canica_components.nii"))
    data = np.asarray(nib.load(maps).dataobj)
    assert data.shape[-1] == 20 and np.isfinite(data).all()
    sidecar = json.loads(maps.with_suffix(".json").read_text())
    lengths = [nib.load(p).shape[-1] for p in paths]
    assert (sidecar["NRuns"], sidecar["NTokens"]) == (len(paths), sum(lengths))
    if shape == "dead units in every run":  # units that never change: one value, in no network
        from bids_llm.dataset import Dataset

        layout = Dataset(tmp_path).layout("m")
        units = layout.unfold(nib.load(maps))  # (k, units), layer-major: the dead are the last 10
        z = layout.unfold(nib.load(str(maps).replace("_components", "_stat-z_components")))
        np.testing.assert_allclose(units[:, 30:], units[:, 30:31].repeat(10, 1), rtol=1e-5, atol=1e-6)
        # ICA centres the maps: the offset, never a peak (one value shared by 10 of 40 units
        # cannot reach |z| 3.6: sqrt(40 / 10) = 2 bounds a quarter of the units' |z|)
        assert np.abs(z[:, 30:]).max() < 3.6


# ---------------------------------------------------------------------------------------------
# The battery: datasets made by convert on tiny models (tests/battery.py), every command that
# reads runs on each. A cell either gives its result (checked below) or refuses in one line,
# exit 2, writing nothing.

from battery import K, SHAPES  # noqa: E402

COMMANDS = ["decompose-fast", "decompose-nilearn", "recurrence", "networks", "words",
            "fingerprint", "localize", "connectivity", "evaluate-k", "report"]
# A map z-scored over its units (ddof 0) has a mean square of 1, so at least one unit reaches
# |z| >= 1: a threshold of 0.9 never leaves a network empty, by construction and with a margin of
# 0.1, far above float rounding. A threshold near the maps' largest |z| (2 to 2.9 for the tiny
# models' 256 units) is decided by the CPU's kernels.
NEVER_EMPTY = 0.9
NOT_FINITE = r"sub-a_task-text_run-02_bold.nii holds \d+ values that are not finite .* first at token \d+, layer 1 neuron \d+"
TOO_FEW_UNITS = "--n-components 20 exceeds the 16 units of the selected runs"
BATTERY_REFUSED = {
    ("fewer units than k", "decompose-fast"): TOO_FEW_UNITS,
    ("fewer units than k", "decompose-nilearn"): TOO_FEW_UNITS,
    ("fewer units than k", "recurrence"): TOO_FEW_UNITS,
    ("fewer units than k", "fingerprint"): TOO_FEW_UNITS,
    **{("inf and NaN from float16", c): NOT_FINITE
       for c in ("decompose-fast", "decompose-nilearn", "recurrence", "fingerprint", "words",
                 "connectivity", "evaluate-k")},
    ("inf and NaN from float16", "localize"):
        "run 1: the model's mlp units are not finite .* layer 1 neuron \\d+: the model overflowed "
        "in float16; convert again with --dtype float32",
}


@pytest.fixture(scope="module")
def battery(tmp_path_factory):
    """shape -> dataset folder, built on first use; participant b's components at k = 4."""
    import battery as b

    root, models, built = tmp_path_factory.mktemp("battery"), tmp_path_factory.mktemp("models"), {}

    def get(shape):
        if shape not in built:
            ds = b.build(root / shape.replace(" ", "-"), shape, models)
            r = CliRunner().invoke(main, ["decompose", str(ds), "--participant", "b", "--task", "text",
                                          "-k", "4", "--n-init", "2", "--threads", "1", "-q"])
            assert r.exit_code == 0, r.output
            built[shape] = ds
        return built[shape]

    return get, models


def _files(root):
    """Every file under ``root`` but the lock files writers leave (empty, hidden, by design)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not p.name.endswith(".lock"))


def _cell_args(shape, command, ds, models, out):
    """``command``'s arguments on participant a of the shape's dataset ``ds``; outputs in ``out``."""
    import battery as b

    kind = SHAPES[shape][0]
    components = next((ds / "derivatives").rglob("sub-b_*stat-z_components.nii"))
    model = b.save_model(models / f"{kind}-0", kind, 0)
    common = ["--participant", "a"]
    args = {
        "decompose-fast": ["decompose", ds, *common, "--task", "text", "--backend", "fast",
                           "--n-init", "2", "--threads", "1", "-q"],
        "decompose-nilearn": ["decompose", ds, *common, "--task", "text", "--backend", "nilearn",
                              "--n-init", "2", "-q"],
        "recurrence": ["recurrence", ds, *common, "--task", "text", "--n-init", "2", "--n-seeds", "1",
                       "--threads", "1", "--no-figures", "-q", "-o", out],
        "networks": ["networks", components, "-d", ds, "--top-k", "5", "-o", out],
        "words": ["words", ds, *common, "--task", "text", "-q", "-o", out],
        "fingerprint": ["fingerprint", ds, "--task", "text", "-r", "a", "-c", "b",
                        "--n-permutations", "50", "--no-rsa", "-t", str(NEVER_EMPTY), "--threads", "1", "-q",
                        "-o", out],
        "localize": ["localize", ds, *common, "--model", model, "--threads", "1", "--top", "5", "-q",
                     *(["--dtype", "float16"] if kind == "overflow" else [])],
        "connectivity": ["connectivity", components, "-d", ds, *common, "--task", "text", "-q",
                         "-o", out],
        "evaluate-k": ["evaluate", _networks_tsv(ds, components), "-d", ds, *common, "-o", out,
                       "--model", model, "--heldout", _heldout(ds), "--task", "none", "--seeds", "2",
                       "--amplify", "none", "--k", "2,3", "--k-n-init", "2", "--bootstrap", "50",
                       "--k-threshold", str(NEVER_EMPTY),
                       "--max-doc-tokens", "32", "--threads", "1", "-q"],
        "report": ["report", ds, *common, "-o", out],
    }[command]
    return [str(a) for a in args]


def _networks_tsv(ds, components):
    from llm2nifti.neuronset import NeuronSet

    path = ds.parent / f"{ds.name}-networks.tsv"
    if not path.exists():
        NeuronSet.from_pairs({"0": [(0, 1), (1, 2)], "1": [(0, 3)]}).to_tsv(path)
    return path


def _heldout(ds):
    path = ds.parent / "heldout.txt"
    path.write_text("A new text about a quiet harbour.\nA second text about mountain roads.\n")
    return path


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_command_on_every_shape(battery, tmp_path, shape, command):
    import re
    import shutil

    get, models = battery
    ds = tmp_path / "ds"
    shutil.copytree(get(shape), ds)
    out = tmp_path / "out"
    args = _cell_args(shape, command, ds, models, out)
    before = _files(tmp_path)
    r = CliRunner().invoke(main, args)
    expected = BATTERY_REFUSED.get((shape, command))
    if expected is not None:  # one line, exit 2, nothing written
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and re.search(expected, lines[0]), r.output
        assert _files(tmp_path) == before
        return
    assert r.exit_code == 0, r.output
    CHECKS[command](shape, ds, out, r.output)


def _run_lengths(ds, participant="a"):
    import nibabel as nib

    paths = sorted((ds / f"sub-{participant}" / "func").glob("*_task-text_*_bold.nii"))
    return {p.name.split("_bold")[0]: nib.load(p).shape[-1] for p in paths}


def _dead(shape, layer, neuron):
    """The dead shape's planted zero units: every even neuron of every layer."""
    return SHAPES[shape][0] == "dead" and neuron % 2 == 0


def _check_decompose(shape, ds, out, output):
    import nibabel as nib

    from bids_llm.dataset import Dataset

    (zmaps,) = (ds / "derivatives" / "llm2nifti-canica").rglob("sub-a_*stat-z_components.nii")
    z = Dataset(ds).layout("a").unfold(nib.load(zmaps))
    assert z.shape[0] == K and np.isfinite(z).all()
    sidecar = json.loads(zmaps.with_name(zmaps.name.replace("_stat-z", "")).with_suffix(".json").read_text())
    lengths = _run_lengths(ds)
    assert (sidecar["NRuns"], sidecar["NTokens"]) == (len(lengths), sum(lengths.values()))
    if SHAPES[shape][0] == "dead":  # in no network: even neurons of the layer-major columns
        # by construction: the dead units (half of them) share one value in every map, and a
        # value shared by half of a z-scored map's units has |z| <= sqrt(2); measured: 0.11
        assert np.abs(z[:, 0::2]).max() < 3.6


def _check_recurrence(shape, ds, out, output):
    import pandas as pd

    table = pd.read_csv(next(out.glob("*_recurrence.tsv")), sep="\t")
    sidecar = json.loads(next(out.glob("*_recurrence.json")).read_text())
    lengths = {name.split("_")[-1]: n for name, n in _run_lengths(ds).items()}
    short = sorted(r for r, n in lengths.items() if n < 2)
    assert set(table["unit"]) == {r for r in lengths if r not in short} | {"seed-1"}
    assert [r["unit"] for r in sidecar["RunsLeftOut"]] == short
    assert ("left out: " in output) == bool(short)


def _check_networks(shape, ds, out, output):
    from llm2nifti.neuronset import NeuronSet

    (path,) = out.glob("*_networks.tsv")
    pairs = NeuronSet.from_tsv(path).pairs()
    # --top-k 5 is never empty; the dead units' |z| (at most sqrt(2) by construction, measured
    # 0.05) sit far below the fifth largest of each map (measured 3.18 to 3.51)
    assert len(pairs) and not any(_dead(shape, layer, n) for layer, n in pairs)


def _check_words(shape, ds, out, output):
    import nibabel as nib

    runs = sorted(out.rglob("sub-a_*_bold.nii"))
    lengths = _run_lengths(ds)
    # run r holds the words that end in source run r: a run in which no word ends has none
    assert runs and {p.name.split("_bold")[0] for p in runs} <= set(lengths)
    for path in runs:
        data = np.asarray(nib.load(path).dataobj)
        assert np.isfinite(data).all() and 1 <= data.shape[-1] <= lengths[path.name.split("_bold")[0]]


def _check_fingerprint(shape, ds, out, output):
    import pandas as pd

    (path,) = out.rglob("*_fingerprint.tsv")
    row = pd.read_csv(path, sep="\t").set_index("participant").loc["b"]
    # no independent model is named: the lineage verdict is "not tested", the score is there
    assert row["verdict"] == "not tested" and np.isfinite(row["score"])


def _check_localize(shape, ds, out, output):
    from llm2nifti.neuronset import NeuronSet

    (path,) = (ds / "derivatives" / "llm2nifti-glm").rglob("*_networks.tsv")
    pairs = NeuronSet.from_tsv(path).pairs()
    # --top 5 (13 units) is never empty; a dead unit's t is exactly 0, the 13th live unit's 2.0
    # (69 live units with t > 0)
    assert len(pairs) and not any(_dead(shape, layer, n) for layer, n in pairs)


def _check_connectivity(shape, ds, out, output):
    import pandas as pd

    (tsv,) = out.glob("*_meas-correlation_connectome.tsv")
    assert np.isfinite(pd.read_csv(tsv, sep="\t").iloc[:, 1:].to_numpy()).all()
    sidecar = json.loads(next(out.glob("*_connectivity.json")).read_text())
    lengths = _run_lengths(ds)
    left = {r["run"] for r in sidecar["RunsLeftOut"]}
    assert set(sidecar["Runs"]) | left == set(lengths) and not set(sidecar["Runs"]) & left
    assert {r for r, n in lengths.items() if n < 2} <= left  # a single token has no correlation
    if shape == "a run in which every unit is constant":
        assert "sub-a_task-text_run-02" in left  # 128 repetitions of one token


def _check_evaluate(shape, ds, out, output):
    import pandas as pd

    results = pd.read_csv(out / "results.tsv", sep="\t")
    settings = json.loads((out / "evaluation.json").read_text())
    made = {e["k"] for e in settings["fnk"] if e["n_neurons"] > 0}
    fnk = results[results.group == "fnk"]
    assert made and {int(c.split("@k=")[1]) for c in fnk.condition} == made
    assert np.isfinite(results["value"]).all()
    assert ("FN@k left out" in output) == (made != {2, 3})


def _check_report(shape, ds, out, output):
    page = (out / "sub-a.html").read_text()
    assert '<section id="dataset"' in page


CHECKS = {"decompose-fast": _check_decompose, "decompose-nilearn": _check_decompose,
          "recurrence": _check_recurrence, "networks": _check_networks, "words": _check_words,
          "fingerprint": _check_fingerprint, "localize": _check_localize,
          "connectivity": _check_connectivity, "evaluate-k": _check_evaluate,
          "report": _check_report}


def test_convert_refuses_a_model_that_overflows_in_float16(tmp_path):
    import re

    import battery as b

    model = b.save_model(tmp_path / "overflow", "overflow", 0)
    text = tmp_path / "text.txt"
    text.write_text(b.TEXT)
    ds = tmp_path / "ds"
    args = ["convert", str(ds), "--model", str(model), "--text", str(text), "--run-tokens", "256",
            "--threads", "1", "-q"]
    r = CliRunner().invoke(main, [*args, "--dtype", "float16"])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert re.search(r"run 1: the model's mlp units are not finite \(inf or NaN\) from token \d+ of "
                     r"the run, layer 1 neuron \d+: the model overflowed in float16; convert again "
                     r"with --dtype float32", lines[0]), lines[0]
    assert _files(tmp_path / "ds") == []  # nothing but the writers' lock
    r = CliRunner().invoke(main, args)  # the same model in float32: finite, written
    assert r.exit_code == 0, r.output
    assert len(_run_lengths(ds, participant=_scans_participant(ds))) == 3


def _scans_participant(ds):
    (path,) = ds.glob("sub-*/sub-*_scans.tsv")
    return path.parent.name[4:]


# ---------------------------------------------------------------------------------------------
# Drawn shapes: hypothesis draws run lengths, the units per layer and k (seeded: the same draws
# on every run and machine), and decompose either gives k finite maps resting on every run and
# token, or refuses in one line naming the limit, writing nothing.

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=4), width=st.integers(1, 16),
       k=st.integers(1, 24), backend=st.sampled_from(["fast", "nilearn"]))
def test_decompose_on_drawn_shapes(tmp_path_factory, lengths, width, k, backend):
    import re
    import sys

    import nibabel as nib

    sys.path.insert(0, str(Path(__file__).parent))
    from test_decomposition import _write_runs

    root = tmp_path_factory.mktemp("drawn")
    rng = np.random.default_rng(len(lengths) * 1000 + width * 10 + k)
    n_units = 2 * width
    paths = _write_runs(root, [rng.laplace(size=(T, n_units)).astype(np.float32) for T in lengths])
    before = _files(root)
    r = CliRunner().invoke(main, ["decompose", str(root), "--backend", backend, "-k", str(k),
                                  "--n-init", "2", "--threads", "1", "-q"])
    tokens, rank = sum(lengths), sum(T - 1 for T in lengths)  # each run is z-scored alone
    if k > tokens or k > n_units or k > rank:
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1, r.output
        limit = (f"exceeds the {tokens} tokens" if k > tokens else
                 f"exceeds the {n_units} units" if k > n_units else
                 f"exceeds the rank of the selected runs \\({rank}:")
        assert re.search(f"--n-components {k} {limit}", lines[0]), lines[0]
        assert _files(root) == before
        return
    assert r.exit_code == 0, r.output
    (maps,) = (root / "derivatives" / "llm2nifti-canica").rglob("*_desc-canica_components.nii")
    data = np.asarray(nib.load(maps).dataobj)
    assert data.shape[-1] == k and np.isfinite(data).all()
    sidecar = json.loads(maps.with_suffix(".json").read_text())
    assert (sidecar["NRuns"], sidecar["NTokens"]) == (len(paths), tokens)
