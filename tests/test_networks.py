"""Mapping maps back to neurons: thresholds, top-k, nilearn's column order, summaries."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from planted import PARTICIPANT, make_planted, toy_layout

from llm2nifti.errors import UsageError
from llm2nifti.analysis.selection import key_neurons, maps_to_neurons, network_names, networks, summarize
from llm2nifti.neuronset import NeuronSet


@pytest.fixture
def layout():
    return toy_layout(n_layers=3, width=64)  # 192 neurons, grid (8, 8, 3)


def _maps(layout):
    """Two maps with known strong neurons on a small noise floor."""
    rng = np.random.default_rng(0)
    M = 0.01 * rng.standard_normal((2, layout.n_neurons))
    g = lambda l, n: int(layout.global_index(l, n))  # noqa: E731
    M[0, [g(0, 5), g(1, 7), g(2, 63)]] = [10.0, 8.0, 9.0]
    M[0, g(1, 0)] = -9.5  # a strong negative neuron
    M[1, [g(2, 1), g(1, 7)]] = [10.0, 6.0]  # (1, 7) is in both networks
    return M


def _pairs(nset, name):
    return {tuple(p) for p in nset.select(name).pairs().tolist()}


def test_two_sided_one_sided_and_top_k(layout):
    M = _maps(layout)
    two = maps_to_neurons(M, layout, threshold=3.6)
    assert two.names == ["FN00", "FN01"]
    assert _pairs(two, "FN00") == {(0, 5), (1, 7), (2, 63), (1, 0)}
    assert _pairs(two, "FN01") == {(2, 1), (1, 7)}
    one = maps_to_neurons(M, layout, threshold=3.6, two_sided=False)
    assert _pairs(one, "FN00") == {(0, 5), (1, 7), (2, 63)}
    top = maps_to_neurons(M, layout, threshold=None, top_k=2)
    assert _pairs(top, "FN00") == {(0, 5), (1, 0)}  # |z| ranks the negative neuron second
    top1 = maps_to_neurons(M, layout, threshold=None, top_k=2, two_sided=False)
    assert _pairs(top1, "FN00") == {(0, 5), (2, 63)}
    z = two.table.set_index(["network", "layer", "neuron"])["z"]
    assert z[("FN00", 1, 0)] < -3.6 and z[("FN00", 0, 5)] > 3.6


def test_image_roundtrip_equals_array(layout, tmp_path):
    M = _maps(layout)
    path = tmp_path / "maps.nii"
    nib.save(layout.to_img(M), path)
    a = maps_to_neurons(M, layout).table
    b = maps_to_neurons(path, layout).table
    pd.testing.assert_frame_equal(a, b, atol=1e-5)


def test_components_from_a_nilearn_masker_map_back_exactly(layout):
    """A user's own nilearn maps (masked column order) come back to the right neurons."""
    from nilearn.maskers import NiftiMasker

    masker = NiftiMasker(mask_img=layout.mask_img(), standardize=None).fit()
    M = _maps(layout)
    masked = layout.to_masked(M)  # what nilearn's components_ would hold
    img = masker.inverse_transform(masked)
    assert not np.allclose(masked, M)  # the orders really differ
    nset = maps_to_neurons(img, layout)
    assert _pairs(nset, "FN00") == {(0, 5), (1, 7), (2, 63), (1, 0)}


def test_wrong_grid_or_affine_is_refused(layout):
    M = _maps(layout)
    img = layout.to_img(M)
    shifted = nib.Nifti1Image(np.asarray(img.dataobj), np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(UsageError, match="affine"):
        maps_to_neurons(shifted, layout)
    other = toy_layout(n_layers=2, width=64)
    with pytest.raises(UsageError, match="grid"):
        maps_to_neurons(img, other)
    with pytest.raises(UsageError, match="threshold"):
        maps_to_neurons(M, layout, threshold=None)


def test_summary_and_key_neurons(layout):
    nset = maps_to_neurons(_maps(layout), layout, threshold=3.6)
    s = summarize(nset, layout, names=network_names(3)).set_index("network")
    assert s.loc["FN00", "size"] == 4 and s.loc["FN01", "size"] == 2 and s.loc["FN02", "size"] == 0
    assert s.loc["FN00", "n_negative"] == 1 and s.loc["FN00", "n_positive"] == 3
    assert (s.loc["FN00", "layer_0"], s.loc["FN00", "layer_1"], s.loc["FN00", "layer_2"]) == (1, 2, 1)
    assert s.loc["FN00", "share"] == pytest.approx(4 / 192, abs=1e-6)
    assert (s.loc["FN00", "peak_layer"], s.loc["FN00", "peak_neuron"]) == (0, 5)
    k = key_neurons(nset).set_index(["layer", "neuron"])
    assert len(k) == 5
    assert k.loc[(1, 7), "n_networks"] == 2 and k.loc[(1, 7), "networks"] == "FN00,FN01"
    assert k.loc[(0, 5), "n_networks"] == 1


def test_networks_writes_tables_that_neuronset_reads(tmp_path):
    root = tmp_path / "ds"
    layout, sets = make_planted(root, n_runs=1)
    M = np.zeros((2, layout.n_neurons))
    M[0, sets[0]] = 1
    M[1, sets[1]] = -1
    M += 0.01 * np.random.default_rng(0).standard_normal(M.shape)
    comp = tmp_path / f"sub-{PARTICIPANT}_desc-mine_components.nii"
    nib.save(layout.to_img(M), comp)
    res = networks(comp, root, output=tmp_path / "out")
    assert res.networks_tsv.name == f"sub-{PARTICIPANT}_desc-mine_networks.tsv"
    back = NeuronSet.from_tsv(res.networks_tsv)
    assert list(back.table.columns) == ["network", "site", "layer", "neuron", "z"]
    np.testing.assert_array_equal(back.select("FN00").global_index(layout), sets[0])
    np.testing.assert_array_equal(back.select("FN01").global_index(layout), sets[1])
    assert (back.select("FN01").table["z"] < 0).all()
    assert res.key_tsv.is_file() and res.summary_tsv.is_file() and res.sidecar.is_file()
    default = networks(comp, root, threshold=None, top_k=3)
    assert default.networks_tsv.parent == root / "derivatives" / "llm2nifti-networks"
    assert len(default.neurons.select("FN00").pairs()) == 3
