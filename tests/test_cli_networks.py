"""``llm2nifti decompose`` and ``llm2nifti networks`` from the command line."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from click.testing import CliRunner
from planted import PARTICIPANT, make_planted, recovered_exactly

from cli.main import main
from llm2nifti.neuronset import NeuronSet


def _invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_decompose_then_networks_recovers_planted_neurons(tmp_path):
    root = tmp_path / "ds"
    layout, sets = make_planted(root)
    res = _invoke(["decompose", root, "--backend", "fast", "-k", 4, "--n-init", 2, "--threads", 1])
    assert res.exit_code == 0, res.output
    zmaps = (root / "derivatives" / "llm2nifti-canica" / f"sub-{PARTICIPANT}" / "func"
             / f"sub-{PARTICIPANT}_task-planted_desc-canica_stat-z_components.nii")
    assert str(zmaps) in res.output and zmaps.is_file()
    out = tmp_path / "nets"
    res = _invoke(["networks", zmaps, "--dataset", root, "--output", out])
    assert res.exit_code == 0, res.output
    assert "4 networks, 10-10 neurons each; 40 key neurons" in res.output
    nset = NeuronSet.from_tsv(out / f"sub-{PARTICIPANT}_task-planted_desc-canica_stat-z_networks.tsv")
    assert recovered_exactly(nset, layout, sets)


def test_networks_refuses_a_foreign_image_in_one_line(tmp_path):
    root = tmp_path / "ds"
    layout, _ = make_planted(root, n_runs=1, n_tokens=20)
    bad = tmp_path / "bad.nii"
    nib.save(nib.Nifti1Image(np.zeros(layout.shape + (2,), np.float32), np.diag([3.0, 3, 3, 1])), bad)
    out = tmp_path / "nets"
    res = _invoke(["networks", bad, "--dataset", root, "--output", out])
    assert res.exit_code == 2
    assert res.output.startswith("Error: image affine differs") and res.output.count("\n") == 1
    assert "Traceback" not in res.output
    assert not out.exists() and not (root / "derivatives" / "llm2nifti-networks").exists()
    small = tmp_path / "small.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.float32), np.eye(4)), small)
    res = _invoke(["networks", small, "--dataset", root, "--output", out])
    assert res.exit_code == 2 and "grid (4, 4, 3)" in res.output and not out.exists()


def test_decompose_bad_input_exits_2_and_writes_nothing(tmp_path):
    root = tmp_path / "ds"
    make_planted(root, n_runs=1, n_tokens=20)
    res = _invoke(["decompose", root, "--backend", "fast", "--method", "dictlearning"])
    assert res.exit_code == 2 and "--backend fast runs CanICA only: set --backend nilearn" in res.output
    res = _invoke(["decompose", root, "--participant", "nobody"])
    assert res.exit_code == 2 and "no runs" in res.output
    res = _invoke(["decompose", root, "-k", 5, "--desc", "a_b"])
    assert res.exit_code == 2 and "letters and digits" in res.output
    assert not (root / "derivatives" / "llm2nifti-canica").exists()
