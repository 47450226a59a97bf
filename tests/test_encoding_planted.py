"""encode on simulated listeners at a realistic noise level: a whole brain at 4 mm (nilearn's
MNI152 mask), two participants who heard a story read at a natural rate in four runs, regions
planted with networks, the word rate and layers' components (llm2nifti.simulate)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from llm2nifti.analysis.encoding import encode, layer_features, network_features, word_times
from llm2nifti.analysis.encoding_model import EncodingModel
from llm2nifti.neuronset import NeuronSet
from llm2nifti.simulate import REGIONS_MNI, plant_bold, story_events
from bids_llm.dataset import Dataset

# 7 penalties instead of 21 keep the test's fits short; the planted signal is found with either
ALPHAS = np.logspace(-1, 5, 7)
NETWORK_REGIONS = {"leftSTG": "FN00", "leftIFG": "FN01", "leftAG": "FN02"}
LAYER_REGIONS = {"precuneus": "layer00", "mPFC": "layer01"}


def _story(n_words, seed=0):
    rng = np.random.default_rng(seed)
    vocab = ("the dog ran home quickly while a storm was coming and she laughed at its wet fur "
             "under old trees near our river").split()
    return [w + ("." if rng.random() < 0.08 else "") for w in rng.choice(vocab, n_words)]


@pytest.fixture(scope="module")
def listeners(tmp_path_factory, tokenizer):
    from conftest import tiny_llama

    from llm2nifti.acquisition.convert import scan

    tmp = tmp_path_factory.mktemp("listeners")
    fmri = tmp / "fmri"
    heard = story_events(fmri, _story(3600), n_runs=4)
    res = scan(tmp / "scan", "tinyllama", words=heard, loaded=(tiny_llama(), tokenizer),
               run_tokens=500, progress=False, threads=1)
    ds = Dataset(res.root)
    units = np.random.default_rng(1).permutation(256)[:24]
    tsv = tmp / "networks.tsv"
    NeuronSet.from_pairs({f"FN{j:02d}": [(u // 128, u % 128) for u in units[8 * j: 8 * j + 8]]
                          for j in range(3)}).to_tsv(tsv)
    nets = network_features(ds, res.participant, res.task, "mlp", tsv)
    sources = pd.DataFrame(nets.values, columns=nets.names)
    sources["key"] = word_times(nets)["key"]
    sources["word_rate"] = 1.0
    layers = layer_features(ds, res.participant, res.task, "mlp", 2)
    # each layer's second component: the first components of the two layers of this tiny model
    # are nearly the same series (r = -0.96), which no regression could tell apart
    sources["layer00"], sources["layer01"] = layers.values[:, 1], layers.values[:, 3]
    regions = {name: (name, source) for name, source in {**NETWORK_REGIONS,
                                                         **LAYER_REGIONS}.items()}
    regions["rightHG"] = ("rightHG", "word_rate", (0.5, 0.7))  # auditory cortex: louder
    truth = plant_bold(fmri, sources, regions, t_r=2.0, resolution=4, seed=2)
    return res, tsv, fmri, truth


def _region(truth, name):
    return truth.region == list(truth.sources).index(dict(
        {**NETWORK_REGIONS, **LAYER_REGIONS, "rightHG": "word_rate"})[name]) + 1


def test_planted_regions_are_found_and_named_at_a_realistic_noise_level(listeners, tmp_path):
    res, tsv, fmri, truth = listeners
    out = encode(res.root, fmri, networks=tsv, output=tmp_path / "enc",
                 estimator=EncodingModel(alphas=ALPHAS, n_permutations=500))
    layer_voxels = truth.region == 0
    for name in LAYER_REGIONS:
        layer_voxels |= _region(truth, name)
    noise = truth.region == 0
    for who, r in out.participants.items():
        found = r["p_fwe"] <= 0.05
        for name, network in NETWORK_REGIONS.items():
            voxels = _region(truth, name)
            # a realistic signal: held-out r between 0.1 and 0.5, as encoding studies report
            assert 0.1 < r["r"][voxels].mean() < 0.5, (who, name)
            assert found[voxels].mean() >= 0.8, (who, name, found[voxels].mean())
            named = np.array(out.names)[r["best"][voxels & found]]
            assert (named == network).mean() >= 0.9, (who, name, named)
        # the word-rate region rests on the nuisance feature, not on a network
        voxels = _region(truth, "rightHG")
        assert found[voxels].sum() >= 5, who
        assert (np.array(out.names)[r["best"][voxels & found]] == "word_rate").mean() >= 0.9
        # noise voxels: FWE 5% over the whole brain, so a handful at most
        assert found[noise].mean() <= 0.05 and found[noise].sum() <= 30, (who, found[noise].sum())
        # every planted network region is a cluster near its centre, named by its network
        clusters = pd.read_csv(r["paths"]["clusters"], sep="\t")
        for name, network in NETWORK_REGIONS.items():
            near = np.linalg.norm(clusters[["x", "y", "z"]].to_numpy(float)
                                  - np.asarray(REGIONS_MNI[name], float), axis=1) <= 12
            assert (clusters["best"][near] == network).any(), (who, name, clusters)
        # outside the brain nothing is significant: p = 1 there, not 0
        p_img = nib.load(r["paths"]["pfwe"]).get_fdata()
        assert (p_img[~truth.mask] == 1).all() and p_img[truth.mask].min() < 0.05
        sidecar = json.loads(r["paths"]["r"].with_name(
            r["paths"]["r"].name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["Parameters"]["r_threshold_fwe"] == pytest.approx(
            r["model"].r_threshold(0.05))
    # the group: z and its FWE p over the two participants (no p below 1/4 with 2 people)
    p = nib.load(out.group_pfwe).get_fdata()[truth.mask]
    z = nib.load(out.group).get_fdata()[truth.mask]
    assert p.min() >= 0.25 - 1e-9 and np.nanmean(z[~noise & ~layer_voxels]) > np.nanmean(z[noise]) + 1


def test_the_layer_components_planted_are_recovered_as_each_voxels_best_layer(listeners,
                                                                              tmp_path):
    res, tsv, fmri, truth = listeners
    out = encode(res.root, fmri, layer_pcs=2, fmri_participants=["01"], output=tmp_path / "lay",
                 estimator=EncodingModel(alphas=ALPHAS, n_permutations=500))
    r = out.participants["01"]
    found = r["p_fwe"] <= 0.05
    for name, layer in LAYER_REGIONS.items():
        voxels = _region(truth, name)
        assert found[voxels].mean() >= 0.8, (name, found[voxels].mean())
        named = np.array(out.names)[r["best"][voxels & found]]
        assert (named == layer).mean() >= 0.9, (name, named)
    # the preferred depth: layer 0 of 2 is depth 0, layer 1 is 0.5
    deep = np.nanmean(r["depth"][_region(truth, "mPFC") & found])
    shallow = np.nanmean(r["depth"][_region(truth, "precuneus") & found])
    assert deep > shallow + 0.2
    assert "_desc-bestlayer_dseg" in r["paths"]["best"].name
