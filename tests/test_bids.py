"""The dataset is valid BIDS for the official validator, and its files say what they should."""

import json
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


def test_official_validator_reports_no_errors(tmp_path, tokenizer, text_file):
    out = tmp_path / "ds"
    for name, model, site in [("tinyllama", tiny_llama(), "mlp"), ("tinygpt2", tiny_gpt2(), "mlp"),
                              ("tinyllama", tiny_llama(), "residual"),
                              ("tinyllama", tiny_llama(), "mlp-out"),
                              ("tinyllama", tiny_llama(), "attn")]:
        scan(out, name, text_file, neurons=site, run_tokens=128, loaded=(model, tokenizer),
             progress=False, threads=1)
    r = subprocess.run([validator(), "-r", str(out), "--format", "json"], capture_output=True,
                       text=True, timeout=300)
    report = json.loads(r.stdout)
    issues = report["issues"]["issues"]
    errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
    assert errors == []
    derivatives = report["derivativesSummary"]
    assert list(derivatives) == ["/derivatives/llm2nifti/"]
    errors = [(d, i["code"], i.get("location")) for d, sub in derivatives.items()
              for i in sub["issues"]["issues"] if i["severity"] == "error"]
    assert errors == []
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
