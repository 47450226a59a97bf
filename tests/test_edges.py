"""The shapes real text makes: runs shorter than k, a last run of one token."""

from __future__ import annotations

import json

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
