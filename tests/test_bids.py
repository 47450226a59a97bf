"""The dataset is valid BIDS for the official validator, and its files say what they should."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_llm.dataset import Dataset
from bids_llm.naming import bids_name, inside, parse_name
from llm2nifti.acquisition.convert import scan

from conftest import tiny_gpt2, tiny_llama


def validator():
    exe = shutil.which("bids-validator-deno") or str(Path(sys.executable).parent / "bids-validator-deno")
    assert Path(exe).exists(), "bids-validator-deno is a test dependency: pip install -e '.[test]'"
    return exe


def _errors(folder, *options):
    r = subprocess.run([validator(), *options, str(folder), "--format", "json"], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})
    report = json.loads(r.stdout)
    return report, [(i["code"], i.get("location")) for i in report["issues"]["issues"]
                    if i["severity"] == "error"]


def validation_errors(root):
    """Errors of the raw dataset and of each derivative: ``({folder: [(code, file)]}, report)``.

    Each derivative is validated on its own: bids-validator-deno 3.0.2 reads a derivative's
    ``.bidsignore`` only when that derivative is the dataset validated (``-r`` finds the
    derivatives but not their ``.bidsignore``).
    """
    report, raw = _errors(root, "-r")
    found = {"/": raw}
    for name in report.get("derivativesSummary", {}):
        found[name] = _errors(Path(root) / name.strip("/"))[1]
    return found, report


def test_official_validator_reports_no_errors(tmp_path, tokenizer, text_file):
    out = tmp_path / "ds"
    for name, model, site in [("tinyllama", tiny_llama(), "mlp"), ("tinygpt2", tiny_gpt2(), "mlp"),
                              ("tinyllama", tiny_llama(), "residual"),
                              ("tinyllama", tiny_llama(), "mlp-out"),
                              ("tinyllama", tiny_llama(), "attn")]:
        scan(out, name, text_file, neurons=site, run_tokens=128, loaded=(model, tokenizer),
             progress=False, threads=1)
    errors, report = validation_errors(out)
    # the space-labelled view of the runs (for nilearn's first_level_from_bids) is a derivative
    assert sorted(errors) == ["/", "/derivatives/llm2nifti-space/", "/derivatives/llm2nifti/"]
    assert errors == {"/": [], "/derivatives/llm2nifti/": [], "/derivatives/llm2nifti-space/": []}
    # the unit statistics are statistical maps, not time series
    stats = sorted(p.name for p in (out / "derivatives" / "llm2nifti").rglob("*unitstats*.nii"))
    assert len(stats) == 5 and all(n.endswith("_desc-unitstats_statmap.nii") for n in stats)
    assert sorted(report["summary"]["subjects"]) == ["tinygpt2", "tinyllama"]
    assert report["summary"]["tasks"] == ["stories"]


def test_sidecar_tr_equals_header_and_derivatives_describe_neurons(tiny_scan):
    res, _ = tiny_scan
    ds = Dataset(res.root)
    for run in ds.runs():
        meta = run.metadata()
        assert meta["RepetitionTime"] == nib.load(run.path).header.get_zooms()[3]
    desc = json.loads((res.root / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Name"] == "llm2nifti" and desc["BIDSVersion"]
    labels = nib.load(ds.label_path(res.participant)).get_fdata().astype(int)
    table = (ds.label_path(res.participant).with_suffix(".tsv")).read_text().splitlines()
    assert table[0].split("\t") == ["index", "name", "site", "layer", "neuron"]
    assert len(table) - 1 == res.layout.n_neurons == (labels > 0).sum()
    idx, name, site, layer, neuron = table[200].split("\t")
    i, j, k = res.layout.neuron_to_voxel(int(layer), int(neuron))
    assert labels[i, j, k] == int(idx)
    mask = nib.load(ds.mask_path(res.participant)).get_fdata()
    np.testing.assert_array_equal(mask > 0, labels > 0)


def test_names_and_paths():
    assert bids_name("bold", ".nii", sub="m", task="t", run=3) == "sub-m_task-t_run-03_bold.nii"
    assert parse_name("sub-m_task-t_acq-residual_run-03_bold.nii.gz") == (
        {"sub": "m", "task": "t", "acq": "residual", "run": 3}, "bold")
    with pytest.raises(ValueError):
        bids_name("bold", sub="a_b")
    with pytest.raises(ValueError, match="leave"):
        inside("/tmp/root", "..", "etc")


def test_pybids_bold_means_time_series(tiny_scan, tokenizer):
    """After decompose, FN@k and localize, a BIDS query for bold finds only time series."""
    from bids import BIDSLayout

    from llm2nifti.analysis import Decomposition, StableDecomposition, decompose, localize
    from llm2nifti.intervention.fnk import fn_at_k

    res, model = tiny_scan
    root = res.root
    decompose(root, Decomposition(backend="fast", n_components=3, n_init=1))
    fn_at_k(root, [2, 3], StableDecomposition(Decomposition(backend="fast", n_init=1), n_repeats=10))
    localize(root, participant=res.participant, loaded=(model, tokenizer), run_tokens=512,
             threads=1, progress=False)
    found = BIDSLayout(root, derivatives=True).get(suffix="bold", extension=[".nii", ".nii.gz"])
    runs = {str(r.path) for r in Dataset(root).runs()}
    names = sorted(Path(f.path).name for f in found)
    assert names and {f.path for f in found if "derivatives" not in f.path} == runs
    for f in found:  # raw runs and their space-neurons views: one volume per token, with events
        n_tokens = nib.load(f.path).shape[3]
        name = Path(f.path).name.replace("_space-neurons_desc-preproc", "")
        events = root / f"sub-{res.participant}" / "func" / name.replace("_bold.nii", "_events.tsv")
        sidecar = json.loads(events.with_name(events.name.replace("_events.tsv", "_bold.json")).read_text())
        assert events.is_file(), events
        assert n_tokens == sidecar["TokenRange"][1] - sidecar["TokenRange"][0] > 3, f.path
    components = BIDSLayout(root, derivatives=True, validate=False).get(
        suffix="components", extension=".nii")
    assert sorted(Path(f.path).name.split("_desc-")[1] for f in components) == [
        "canica_components.nii", "canica_stat-z_components.nii", "fnk2_components.nii",
        "fnk2_stat-z_components.nii", "fnk3_components.nii", "fnk3_stat-z_components.nii"]
    errors, _ = validation_errors(root)
    assert set(errors) >= {"/", "/derivatives/llm2nifti/", "/derivatives/llm2nifti-canica/",
                           "/derivatives/llm2nifti-glm/", "/derivatives/llm2nifti-space/"}
    assert all(e == [] for e in errors.values()), errors


def test_derivatives_of_an_earlier_version_are_still_read(tiny_scan):
    """Unit statistics and components under the names of earlier versions are found."""
    from bids_llm.naming import existing, legacy_name

    from llm2nifti.analysis.decomposition import Decomposition, reusable, select_runs

    res, _ = tiny_scan
    ds = Dataset(res.root)
    new = ds.unit_stats(res.participant, "stories")
    path = next((res.root / "derivatives" / "llm2nifti").rglob("*_desc-unitstats_statmap.nii"))
    for p in (path, path.with_suffix(".json")):
        p.rename(p.with_name(legacy_name(p.name)))
    assert legacy_name(path.name).endswith("_desc-unitstats_bold.nii")
    old = ds.unit_stats(res.participant, "stories")
    assert old is not None and all(np.array_equal(new[k], old[k]) for k in new)
    func = res.root / "derivatives" / "llm2nifti-canica" / f"sub-{res.participant}" / "func"
    func.mkdir(parents=True)
    # an FN@k decomposition an earlier version wrote (its sidecar has no max_iter yet) is reused
    # by the estimator that would make it again, and by no other
    legacy = func / f"sub-{res.participant}_task-stories_desc-fnk3_bold.nii"
    shutil.copy(res.runs[0], legacy)
    runs, _ = select_runs(ds, res.participant, "stories", None, "mlp")
    legacy.with_suffix(".json").write_text(json.dumps({
        "Sources": [str(Path(r.path).relative_to(res.root)) for r in runs], "Backend": "fast",
        "Parameters": {"n_components": 3, "n_init": 1, "random_state": 0}}))
    est = Decomposition(backend="fast", n_components=3, n_init=1)
    assert reusable(ds, runs, "fnk3", est) == legacy
    assert reusable(ds, runs, "fnk3", est.set_params(n_init=2)) is None
    assert reusable(ds, runs, "fnk3", est.set_params(n_init=1, max_iter=50)) is None
    assert existing(func / "x_desc-canica_stat-z_components.nii").name == "x_desc-canica_stat-z_components.nii"
    assert legacy_name("x_desc-canica_stat-z_components.nii") == "x_desc-canicaZ_bold.nii"
    assert legacy_name("x_run-01_bold.nii") is None
