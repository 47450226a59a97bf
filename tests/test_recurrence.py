"""Recurrence: IoU matching, a network missing from one run, seed stability, figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from planted import make_planted

from cli.main import main
from llm2nifti.errors import UsageError
from llm2nifti.analysis import Decomposition
from llm2nifti.analysis.matching import iou_matrix, match_networks, recurrence


def test_iou_matrix_by_hand():
    a = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], bool)
    b = np.array([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
    iou = iou_matrix(a, b)
    np.testing.assert_allclose(iou, [[2 / 3, 1 / 5, 0], [0, 0, 0]])


def test_match_networks_is_one_to_one():
    iou = np.array([[0.9, 0.8], [0.85, 0.1], [0.0, 0.3]])
    match, value = match_networks(iou)
    # greedy would give template 0 network 0; the best total pairs 0-1 and 1-0
    assert match.tolist() == [1, 0, -1]
    np.testing.assert_allclose(value, [0.8, 0.85, 0.0])


@pytest.fixture(scope="module")
def missing_in_run3(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec") / "ds"
    layout, sets = make_planted(root, n_runs=3, absent={3: [3]})
    return root, layout, sets


def test_network_missing_from_one_run_recurs_in_two_of_three(missing_in_run3, tmp_path):
    root, layout, sets = missing_in_run3
    res = recurrence(root, Decomposition(backend="fast", n_components=4, n_init=2), n_seeds=2,
                     output=tmp_path / "rec")
    # the template holding planted set 3
    t_sets = {n: set(res.templates.select(n).global_index(layout).tolist()) for n in res.templates.names}
    which = {i: [n for n, s in t_sets.items() if s == set(sets[i].tolist())] for i in range(4)}
    assert all(len(v) == 1 for v in which.values()), which
    s = res.summary.set_index("template")
    assert s.loc[which[3][0], "recurrence"] == pytest.approx(2 / 3)
    for i in range(3):
        assert s.loc[which[i][0], "recurrence"] == 1.0
        assert s.loc[which[i][0], "iou_min"] == 1.0
    miss = res.table[(res.table["unit"] == "run-03") & (res.table["template"] == which[3][0])]
    assert miss["iou"].item() < 0.2 and not miss["recurs"].item()
    assert (res.table[res.table["kind"] == "seed"]["iou"] == 1.0).all()  # stable across seeds
    for key in ("table", "summary", "networks", "sidecar", "heatmap", "layers"):
        assert res.paths[key].is_file() and res.paths[key].stat().st_size > 0
    assert res.paths["heatmap"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = pd.read_csv(res.paths["table"], sep="\t")
    assert set(back["unit"]) == {"run-01", "run-02", "run-03", "seed-1", "seed-2"}


def test_recurrence_cli_with_given_templates(missing_in_run3, tmp_path):
    root, layout, sets = missing_in_run3
    maps = np.zeros((4, layout.n_neurons))
    for i, s in enumerate(sets):
        maps[i, s] = 1.0
    maps += 0.01 * np.random.default_rng(0).standard_normal(maps.shape)
    tpl = tmp_path / "truth.nii"
    import nibabel as nib

    nib.save(layout.to_img(maps), tpl)
    out = tmp_path / "rec"
    res = CliRunner().invoke(main, ["recurrence", str(root), "--templates", str(tpl), "-k", "4",
                                    "--n-init", "2", "--n-seeds", "0", "--no-figures", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "4 templates over 3 run(s)" in res.output
    summary = pd.read_csv(next(out.glob("*_templates.tsv")), sep="\t").set_index("template")
    assert summary["recurrence"].tolist() == pytest.approx([1, 1, 1, 2 / 3])
    assert not list(out.glob("*.png"))


def test_recurrence_refuses_bad_input(missing_in_run3, tmp_path):
    root, _, _ = missing_in_run3
    with pytest.raises(UsageError, match="IoU threshold"):
        recurrence(root, iou_threshold=1.5)
    res = CliRunner().invoke(main, ["recurrence", str(root), "--templates", str(tmp_path / "none.nii"),
                                    "-k", "4", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not found" in res.output
    assert not (tmp_path / "o").exists()
