"""Connectivity between networks: planted couplings come back, IoU matching compares two scans."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_llm.dataset import Dataset, DatasetWriter
from bids_llm.events import events_tsv
from llm2nifti.analysis import connectivity, layer_depth
from llm2nifti.errors import UsageError

from planted import PARTICIPANT, planted_sets, toy_layout

TASK = "coupled"


def make_coupled(root, n_runs=3, n_tokens=300, seed=0):
    """Four networks: 0 and 1 share a time course (r ~ 0.9), 2 is anti-coupled to 0, 3 is alone."""
    layout = toy_layout(3, 64)
    sets = planted_sets(layout, 4, 10, seed)
    writer = DatasetWriter(root, PARTICIPANT, TASK, layout)
    writer.init_dataset()
    writer.add_participant({"model": "toy", "architecture": "llama", "n_layers": 3,
                            "neurons_per_layer": 64, "n_parameters": 0, "weights_sha256": "0"})
    writer.write_layout()
    for r in range(1, n_runs + 1):
        rng = np.random.default_rng(seed * 10 + r)
        base, alone = rng.standard_normal(n_tokens), rng.standard_normal(n_tokens)
        courses = [base, base + 0.4 * rng.standard_normal(n_tokens),
                   -base + 0.4 * rng.standard_normal(n_tokens), alone]
        X = 0.2 * rng.standard_normal((n_tokens, layout.n_neurons))
        for idx, course in zip(sets, courses):
            X[:, idx] += course[:, None]
        events = events_tsv(["a"] * n_tokens, [0] * n_tokens, ["d"] * n_tokens,
                            list(range(n_tokens)))
        writer.write_run(r, layout.to_img(X.astype(np.float32)),
                         {"TaskName": TASK, "RepetitionTime": 1.0, "NeuronLayout": layout.to_dict()},
                         events)
    return layout, sets


def components_image(layout, sets, path, order=None, seed=1):
    """Maps that load on each planted set (plus small noise), written as a 4D image."""
    rng = np.random.default_rng(seed)
    maps = 0.01 * rng.standard_normal((len(sets), layout.n_neurons))
    for i, idx in enumerate(sets):
        maps[i, idx] += 1.0
    if order is not None:
        maps = maps[order]
    nib.save(layout.to_img(maps), str(path))
    return maps


@pytest.fixture
def coupled(tmp_path):
    layout, sets = make_coupled(tmp_path / "ds")
    comp = tmp_path / "sub-toy_task-coupled_desc-planted_components.nii"
    maps = components_image(layout, sets, comp)
    return tmp_path / "ds", layout, sets, comp, maps


@pytest.mark.parametrize("signals", ["maps", "mean"])
def test_planted_couplings(coupled, signals):
    root, layout, sets, comp, _ = coupled
    res = connectivity(comp, root, kinds=("correlation", "partial correlation", "tangent"),
                       signals=signals, estimator="empirical", progress=False)
    c = res.connectomes["correlation"]
    assert c[0, 1] > 0.85 and c[0, 2] < -0.85
    assert np.abs(c[3, :3]).max() < 0.2
    # per run, nilearn's correlation is numpy's on the same time courses
    for ts, m in zip(res.time_series, res.per_run["correlation"]):
        np.testing.assert_allclose(m, np.corrcoef(ts.T), atol=1e-10)
    assert res.per_run["tangent"].shape == (3, 4, 4)
    if signals == "mean":  # the mean of each set's units, by hand
        from bids_llm.dataset import load_run

        X, _ = load_run(Dataset(root).runs()[0])
        np.testing.assert_allclose(res.time_series[0][:, 3], X[:, sets[3]].mean(axis=1), atol=1e-5)
    written = pd.read_csv(res.paths["correlation"]["tsv"], sep="\t")
    assert list(written["network"]) == [res.names[i] for i in res.order]
    assert res.paths["correlation"]["png"].stat().st_size > 1000
    assert written.shape == (4, 5)
    assert res.paths["correlation"]["tsv"].parent == root / "derivatives" / "llm2nifti-connectivity"


def test_depth_orders_networks_by_layer(coupled):
    _, layout, _, _, _ = coupled
    maps = np.zeros((3, layout.n_neurons))
    for i, layer in enumerate((2, 0, 1)):
        maps[i, layer * layout.width + 5] = 1.0
    np.testing.assert_allclose(layer_depth(maps, layout), [2, 0, 1])


def test_comparison_matches_networks_by_iou(coupled, tmp_path):
    root, layout, sets, comp, _ = coupled
    shuffled = tmp_path / "sub-toy_task-coupled_desc-shuffled_components.nii"
    components_image(layout, sets, shuffled, order=[2, 0, 3, 1], seed=5)
    res = connectivity(comp, root, compare=shuffled, progress=False, n_permutations=200)
    pairs = res.comparison["pairs"]
    # network i of the first image is network order.index(i) of the second
    assert dict(zip(pairs["network_a"], pairs["network_b"])) == {
        "FN00": "FN01", "FN01": "FN03", "FN02": "FN00", "FN03": "FN02"}
    assert (pairs["iou"] == 1).all()
    sim = res.comparison["correlation"]
    assert sim["r"] > 0.99 and sim["n_edges"] == 6
    assert sim["null_low"] < sim["r"]
    record = json.loads(res.paths["comparison"].read_text())
    assert record["NMatched"] == 4


def test_bad_inputs(coupled, tmp_path):
    root, layout, sets, comp, _ = coupled
    with pytest.raises(UsageError, match="unknown connectivity kind"):
        connectivity(comp, root, kinds=("coherence",), progress=False)
    with pytest.raises(UsageError, match="tangent.*at least 2 runs"):
        connectivity(comp, root, kinds=("tangent",), runs=[1], progress=False)
    other = tmp_path / "other_components.nii"
    wrong = toy_layout(2, 64)
    nib.save(wrong.to_img(np.eye(2, wrong.n_neurons)), str(other))
    with pytest.raises(UsageError, match="grid|affine|layout"):
        connectivity(other, root, progress=False)
