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
    "every run shorter than k": "n_components=20 exceeds the 9 tokens of the selected runs",
    "fewer units than k": "n_components=20 exceeds the 8 units of the selected runs",
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
        assert np.abs(z[:, 30:]).max() < 3.6  # ICA centres the maps: the offset, never a peak
