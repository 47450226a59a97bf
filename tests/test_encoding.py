"""encode: a scan's networks predict planted human fMRI of the same story."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from llm2nifti.acquisition.convert import scan
from llm2nifti.analysis.encoding import encode, features_at_tr, word_times
from llm2nifti.analysis.encoding_model import EncodingModel
from llm2nifti.analysis.fingerprints import participant_networks
from llm2nifti.cli.main import main
from llm2nifti.neuronset import NeuronSet
from bids_llm.dataset import Dataset

TR = 1.5
SPACE = "MNI152NLin2009cAsym"
N_PLANTED = 60  # voxels 0..59 follow network (voxel % 3); the others are noise
SHAPE = (6, 6, 6)


def _story(rng, n_words=200, step=0.45):
    vocab = ["the", "dog", "ran", "home", "quickly", "while", "a", "storm", "was", "coming",
             "and", "she", "laughed", "at", "its", "wet", "fur", "café", "NA", "night"]
    words = rng.choice(vocab, n_words)
    onsets = 1.0 + step * np.arange(n_words)
    return words, onsets


def _events(path, words, onsets):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{o:.3f}\t0.3\t{w}" for w, o in zip(words, onsets)]
    path.write_text("onset\tduration\tword\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def listening(tmp_path_factory, tokenizer):
    """A scan of the story's two runs, three networks, and two participants' planted fMRI."""
    from conftest import tiny_llama

    tmp = tmp_path_factory.mktemp("encoding")
    rng = np.random.default_rng(0)
    story = [_story(rng) for _ in range(2)]
    fmri = tmp / "fmri"
    heard = [_events(fmri / "sub-01" / "func" / f"sub-01_task-story_run-{i + 1}_events.tsv", *s)
             for i, s in enumerate(story)]
    res = scan(tmp / "scan", "tinyllama", words=heard, loaded=(tiny_llama(), tokenizer),
               run_tokens=400, progress=False, threads=1)
    units = rng.permutation(256)[:24]
    nset = NeuronSet.from_pairs({f"FN{j:02d}": [(u // 128, u % 128) for u in units[8 * j: 8 * j + 8]]
                                 for j in range(3)})
    tsv = tmp / "networks.tsv"
    nset.to_tsv(tsv)
    ds = Dataset(res.root)
    nets = participant_networks(ds, res.participant, res.task, "mlp", pool="last", networks_tsv=tsv)
    times = word_times(nets)
    values = (nets.values - nets.values.mean(0)) / nets.values.std(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for sub in ("01", "02"):
        for i, (words, onsets) in enumerate(story):
            key = f"task-story_run-{i + 1}"
            _events(fmri / f"sub-{sub}" / "func" / f"sub-{sub}_{key}_events.tsv", words, onsets)
            n_scans = int((onsets[-1] + 12) / TR)
            rows = times.index[times["key"] == f"{key}_events.tsv"].to_numpy()
            X = features_at_tr(values[rows], times["onset"].to_numpy()[rows],
                               times["duration"].to_numpy()[rows], n_scans, TR)
            X = (X - X.mean(0)) / X.std(0)
            data = rng.normal(0, 0.5, (n_scans, np.prod(SHAPE)))
            data[:, :N_PLANTED] += X[:, np.arange(N_PLANTED) % 3]
            func = fmri / "derivatives" / "fmriprep" / f"sub-{sub}" / "func"
            func.mkdir(parents=True, exist_ok=True)
            stem = f"sub-{sub}_{key}_space-{SPACE}"
            img = nib.Nifti1Image(data.T.reshape(*SHAPE, n_scans).astype(np.float32), affine)
            img.header.set_zooms((2.0, 2.0, 2.0, TR))
            nib.save(img, func / f"{stem}_desc-preproc_bold.nii.gz")
            nib.save(nib.Nifti1Image(np.ones(SHAPE, np.uint8), affine),
                     func / f"{stem}_desc-brain_mask.nii.gz")
    return res, tsv, fmri


def test_planted_voxels_are_found_with_their_network_and_the_rest_stay_null(listening):
    res, tsv, fmri = listening
    out = encode(res.root, fmri, networks=tsv, trim=6.0,
                 estimator=EncodingModel(n_permutations=200, min_shift=15.0))
    assert sorted(out.participants) == ["01", "02"]
    assert out.names == ["FN00", "FN01", "FN02", "word_rate", "word_length"]
    planted = np.arange(np.prod(SHAPE)) < N_PLANTED
    for who, r in out.participants.items():
        found = r["p_fwe"] <= 0.05
        # signal 1 against noise 0.5: held-out r near 0.9 where planted, near 0 elsewhere
        assert found[planted].mean() >= 0.9, who
        assert found[~planted].sum() <= 2, who  # FWE 5% over the null voxels
        right = r["best"][planted & found] == (np.arange(N_PLANTED) % 3)[found[planted]]
        assert right.mean() >= 0.9, who
        assert r["r"][planted].mean() > 0.6 > 0.2 > abs(r["r"][~planted].mean())
        # the maps are images in the human data's space, read back by nibabel
        img = nib.load(r["paths"]["r"])
        assert img.shape == SHAPE and np.allclose(img.get_fdata().ravel(), r["r"], atol=1e-6)
        np.testing.assert_allclose(nib.load(r["paths"]["pfwe"]).get_fdata().ravel(), r["p_fwe"],
                                   atol=1e-6)
        assert f"_space-{SPACE}_" in r["paths"]["r"].name
        table = pd.read_csv(r["paths"]["table"], sep="\t")
        assert table["n_voxels"].sum() == found.sum()
        # a feature no voxel rests on has no r: n/a, read back as a missing number
        assert pd.api.types.is_float_dtype(table["max_r"]) and table["max_r"].isna().any()
        sidecar = json.loads(r["paths"]["r"].with_name(
            r["paths"]["r"].name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["Parameters"]["estimator"]["n_permutations"] == 200
        assert sidecar["Parameters"]["features"][-2:] == ["word_rate", "word_length"]
        # noise ceiling: the other participant heard the same runs; the planted signal is
        # shared (correlation 1 / 1.25 = 0.8 expected), the noise is not
        assert r["isc"][planted].mean() > 0.6 > 0.1 > abs(r["isc"][~planted].mean())
        assert "mean_isc" in table and r["paths"]["isc"].is_file()
        # preferred depth: a planted voxel's is its network's (within the others' small parts)
        depth = np.asarray(participant_networks(Dataset(res.root), res.participant, res.task,
                                                "mlp", pool="last", networks_tsv=tsv).depth)
        assert np.nanmax(np.abs(r["depth"][planted] - depth[np.arange(N_PLANTED) % 3])) < 0.2
        assert r["paths"]["depth"].is_file()
    # the group: a one-sample test of the two participants' Fisher z
    group = nib.load(out.group).get_fdata().ravel()
    assert group[planted].mean() > group[~planted].mean() + 1


def test_encode_on_the_command_line_and_its_refusals(listening, tmp_path):
    res, tsv, fmri = listening
    out = tmp_path / "enc"
    r = CliRunner().invoke(main, ["encode", str(res.root), "--fmri", str(fmri), "--features",
                                  str(tsv), "--trim", "6", "--n-permutations", "50",
                                  "--fmri-participant", "sub-01", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "sub-01" in r.output and (out / "sub-01" / "func").is_dir()
    assert not (out / "sub-02").exists()
    r = CliRunner().invoke(main, ["encode", str(res.root), "--fmri", str(fmri), "--features",
                                  str(tsv), "--confounds", "trans_x", "-q", "-o", str(out)])
    assert r.exit_code == 2 and "no fMRIPrep confounds table" in r.output, r.output
    r = CliRunner().invoke(main, ["encode", str(res.root), "--fmri", str(fmri), "--features",
                                  str(tsv), "--trim", "60", "-q", "-o", str(out)])
    assert r.exit_code == 2 and "--trim" in r.output and len(r.output.strip().splitlines()) == 1


def test_voxel_chunks_change_nothing_and_the_memory_guard_refuses_first(listening, tmp_path,
                                                                        monkeypatch):
    from llm2nifti.errors import UsageError

    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 3))
    Y = X @ rng.normal(size=(3, 50)) + rng.normal(size=(80, 50))
    groups = np.repeat([0, 1], 40)
    whole = EncodingModel(n_permutations=0).fit(X, Y, groups)
    chunked = EncodingModel(n_permutations=0, chunk=7).fit(X, Y, groups)
    for name in ("r_", "r2_", "parts_", "coef_"):  # the same arithmetic per voxel, in float64
        np.testing.assert_allclose(getattr(whole, name), getattr(chunked, name), rtol=1e-9,
                                   atol=1e-12)
    res, tsv, fmri = listening
    monkeypatch.setenv("LLM2NIFTI_MEMORY_LIMIT", "100KB")
    with pytest.raises(UsageError, match="voxels x .* volumes needs about"):
        encode(res.root, fmri, networks=tsv, trim=6.0, output=tmp_path / "enc")
    assert not (tmp_path / "enc").exists()


def test_the_units_a_region_rests_on_are_its_network_and_evaluate_reads_them(listening, tmp_path):
    """A region made of the voxels planted with FN01: its top units are FN01's eight units, in
    a networks.tsv that evaluate's reader takes."""
    res, tsv, fmri = listening
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    region = np.zeros(np.prod(SHAPE), np.uint8)
    region[np.flatnonzero((np.arange(np.prod(SHAPE)) < N_PLANTED)
                          & (np.arange(np.prod(SHAPE)) % 3 == 1))] = 1
    mask = tmp_path / "sub-01_desc-fn01_mask.nii.gz"
    nib.save(nib.Nifti1Image(region.reshape(SHAPE), affine), mask)
    out = encode(res.root, fmri, networks=tsv, fmri_participants=["01"], trim=6.0, regions=[mask],
                 top_percent=100 * 8 / 256, output=tmp_path / "enc",
                 estimator=EncodingModel(n_permutations=50, min_shift=15.0))
    written = out.participants["01"]["units"]["fn01"]
    units = NeuronSet.from_tsv(written)
    planted = NeuronSet.from_tsv(tsv).select(["FN01"])
    assert set(map(tuple, units.pairs().tolist())) == set(map(tuple, planted.pairs().tolist()))
    assert written.parent == out.participants["01"]["paths"]["r"].parent


def test_fir_delays_learn_each_voxels_response(listening, tmp_path):
    """The planted signal went through Glover's HRF; with FIR delays of 1-4 volumes instead the
    ridge learns that shape: the planted voxels are found with their networks all the same."""
    res, tsv, fmri = listening
    out = encode(res.root, fmri, networks=tsv, fmri_participants=["02"], hrf="fir",
                 delays=(1, 2, 3, 4), trim=6.0,
                 output=tmp_path / "fir",
                 estimator=EncodingModel(n_permutations=200, min_shift=15.0))
    r = out.participants["02"]
    planted = np.arange(np.prod(SHAPE)) < N_PLANTED
    found = r["p_fwe"] <= 0.05
    assert found[planted].mean() >= 0.9 and found[~planted].sum() <= 2
    right = r["best"][planted & found] == (np.arange(N_PLANTED) % 3)[found[planted]]
    assert right.mean() >= 0.9
    sidecar = json.loads(r["paths"]["r"].with_name(
        r["paths"]["r"].name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["Parameters"]["hrf"] == "fir" and sidecar["Parameters"]["delays"] == [1, 2, 3, 4]


def test_banded_ridge_gives_each_network_its_unique_variance(listening, tmp_path):
    """One band per network: in a voxel planted with one network, that network's share of the
    held-out R^2 is the largest; the shares are written as one map per network."""
    res, tsv, fmri = listening
    out = encode(res.root, fmri, networks=tsv, fmri_participants=["01"], trim=6.0,
                 output=tmp_path / "banded",
                 estimator=EncodingModel(n_permutations=100, min_shift=15.0, banded=20))
    r = out.participants["01"]
    planted = np.arange(np.prod(SHAPE)) < N_PLANTED
    unique = r["unique"][:3]
    assert (unique[:, planted].argmax(axis=0) == np.arange(N_PLANTED) % 3).mean() >= 0.9
    own = unique[np.arange(N_PLANTED) % 3, np.arange(N_PLANTED)]
    assert own.mean() > 0.5 > 0.05 > np.abs(unique[:, ~planted]).mean()
    img = nib.load(r["paths"]["r2split-FN01"])
    np.testing.assert_allclose(img.get_fdata().ravel(), unique[1], atol=1e-6)
    assert "_desc-FN01_stat-r2split_statmap" in r["paths"]["r2split-FN01"].name


def test_the_report_shows_the_encoding_of_the_scan(listening, tmp_path):
    res, tsv, fmri = listening
    out = tmp_path / "enc"
    encode(res.root, fmri, networks=tsv, fmri_participants=["01"], trim=6.0, output=out,
           estimator=EncodingModel(n_permutations=50, min_shift=15.0))
    r = CliRunner().invoke(main, ["report", str(res.root), "--encode-output", str(out), "-o",
                                  str(tmp_path / "pages")])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "pages" / f"sub-{res.participant}.html").read_text()
    section = page[page.index('<section id="encoding"'):]
    section = section[: section.index("</section>")]
    assert "sub-01_task-story" in section and "data:image/png;base64," in section
    assert "FN01" in section  # the per-network table


def test_layer_features_give_the_best_layer_map(listening, tmp_path):
    """Features from each layer's principal components: voxels planted with layer 0's first
    component and voxels planted with layer 1's rest on their layer."""
    from llm2nifti.analysis.encoding import layer_features

    res, tsv, fmri = listening
    feats = layer_features(Dataset(res.root), res.participant, res.task, "mlp", 2)
    assert feats.names == ["layer00", "layer01"] and feats.widths == [2, 2]
    times = word_times(feats)
    values = (feats.values - feats.values.mean(0)) / feats.values.std(0)
    rng = np.random.default_rng(3)
    human = tmp_path / "fmri"
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    source = {0: 0, 1: 2}  # layer 0's first component is column 0, layer 1's is column 2
    for i in range(2):
        key = f"task-story_run-{i + 1}"
        events = fmri / "sub-01" / "func" / f"sub-01_{key}_events.tsv"
        (human / "sub-01" / "func").mkdir(parents=True, exist_ok=True)
        (human / "sub-01" / "func" / events.name).write_text(events.read_text())
        rows = times.index[times["key"] == f"{key}_events.tsv"].to_numpy()
        n_scans = int((times["onset"].to_numpy()[rows].max() + 12) / TR)
        X = features_at_tr(values[rows], times["onset"].to_numpy()[rows],
                           times["duration"].to_numpy()[rows], n_scans, TR)
        X = (X - X.mean(0)) / X.std(0)
        data = rng.normal(0, 0.5, (n_scans, np.prod(SHAPE)))
        for v in range(N_PLANTED):
            data[:, v] += X[:, source[v % 2]]
        func = human / "derivatives" / "fmriprep" / "sub-01" / "func"
        func.mkdir(parents=True, exist_ok=True)
        img = nib.Nifti1Image(data.T.reshape(*SHAPE, n_scans).astype(np.float32), affine)
        img.header.set_zooms((2.0, 2.0, 2.0, TR))
        nib.save(img, func / f"sub-01_{key}_space-{SPACE}_desc-preproc_bold.nii.gz")
    out = encode(res.root, human, layer_pcs=2, trim=6.0,
                 estimator=EncodingModel(n_permutations=100, min_shift=15.0))
    r = out.participants["01"]
    planted = np.arange(np.prod(SHAPE)) < N_PLANTED
    found = r["p_fwe"] <= 0.05
    assert found[planted].mean() >= 0.9 and found[~planted].sum() <= 2
    assert (r["best"][planted & found] == (np.arange(N_PLANTED) % 2)[found[planted]]).mean() >= 0.9
    assert out.names[:2] == ["layer00", "layer01"]
    assert "_desc-bestlayer_dseg" in r["paths"]["best"].name


def test_an_atlas_table_names_each_regions_best_network(listening, tmp_path):
    res, tsv, fmri = listening
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    v = np.arange(np.prod(SHAPE))
    labels = np.where(v < N_PLANTED, 1 + v % 3, 4).astype(np.int16)  # 1-3: FN00-02, 4: noise
    atlas = tmp_path / "atlas_dseg.nii.gz"
    nib.save(nib.Nifti1Image(labels.reshape(SHAPE), affine), atlas)
    names = tmp_path / "atlas_dseg.tsv"
    names.write_text("index\tname\n1\tleft\n2\tmiddle\n3\tright\n4\telsewhere\n")
    r = CliRunner().invoke(main, ["encode", str(res.root), "--fmri", str(fmri), "--features",
                                  str(tsv), "--fmri-participant", "01", "--trim", "6",
                                  "--n-permutations", "100", "--min-shift", "15", "--atlas",
                                  str(atlas), "--atlas-labels", str(names), "-o",
                                  str(tmp_path / "enc"), "-q"])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(next((tmp_path / "enc").rglob("*_regions.tsv")), sep="\t")
    assert list(table["region"]) == ["left", "middle", "right", "elsewhere"]
    assert list(table["best"][:3]) == ["FN00", "FN01", "FN02"]
    assert (table["n_past_fwe"][:3] == 20).all() and table["n_past_fwe"][3] <= 2
    assert table["mean_r"][:3].min() > 0.6 > 0.2 > abs(table["mean_r"][3])


def test_the_same_fit_written_by_hand_with_nilearn_and_himalaya_gives_the_same_r(listening,
                                                                                  tmp_path):
    """Regressors from nilearn's compute_regressor per feature, trimmed and z-scored per run,
    himalaya's RidgeCV left one run out (inner folds too), Pearson r per fold, averaged."""
    from himalaya.ridge import RidgeCV
    from nilearn.glm.first_level import compute_regressor
    from nilearn.maskers import NiftiMasker

    from llm2nifti.analysis.encoding_model import ALPHAS

    res, tsv, fmri = listening
    out = encode(res.root, fmri, networks=tsv, fmri_participants=["01"], trim=6.0,
                 output=tmp_path / "enc", estimator=EncodingModel(n_permutations=1))
    nets = participant_networks(Dataset(res.root), res.participant, res.task, "mlp", pool="last",
                                networks_tsv=tsv)
    z = lambda a: (a - a.mean(0)) / a.std(0)  # noqa: E731
    values = np.column_stack([z(nets.values), np.ones(len(nets.values)),
                              z(nets.words["word"].str.len().to_numpy(float)[:, None])])
    prep = fmri / "derivatives" / "fmriprep" / "sub-01" / "func"
    masker = NiftiMasker(mask_img=str(next(prep.glob("*run-1*_desc-brain_mask.nii.gz"))),
                         standardize=None).fit()
    Xs, Ys = [], []
    start = 0
    for run in (1, 2):
        events = pd.read_csv(fmri / "sub-01" / "func" / f"sub-01_task-story_run-{run}_events.tsv",
                             sep="\t")
        rows = slice(start, start + len(events))
        start += len(events)
        bold = next(prep.glob(f"*run-{run}*_desc-preproc_bold.nii.gz"))
        n_scans = nib.load(bold).shape[3]
        frames = (np.arange(n_scans) + 0.5) * TR
        X = np.column_stack([compute_regressor(
            np.vstack([events["onset"], events["duration"], values[rows, j]]), "glover", frames,
            oversampling=16)[0][:, 0] for j in range(values.shape[1])])
        keep = slice(4, n_scans - 4)  # 6 s at a TR of 1.5 s
        Xs.append(z(X[keep]))
        Ys.append(z(masker.transform(bold)[keep].astype(np.float64)))
    r = []
    for test in (0, 1):
        train = 1 - test
        model = RidgeCV(alphas=ALPHAS, cv=5).fit(Xs[train], Ys[train])
        r.append((z(model.predict(Xs[test])) * z(Ys[test])).mean(0))
    np.testing.assert_allclose(out.participants["01"]["r"], np.mean(r, axis=0), atol=1e-6)


def test_units_as_features_by_kernel_ridge(listening, tmp_path):
    """Every unit a feature (256 units, more than the volumes): kernel ridge finds the planted
    voxels, and a region of FN01's voxels ranks FN01's units first by their own weights."""
    res, tsv, fmri = listening
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    region = ((np.arange(np.prod(SHAPE)) < N_PLANTED) & (np.arange(np.prod(SHAPE)) % 3 == 1))
    mask = tmp_path / "sub-01_desc-fn01_mask.nii.gz"
    nib.save(nib.Nifti1Image(region.reshape(SHAPE).astype(np.uint8), affine), mask)
    out = encode(res.root, fmri, units=True, fmri_participants=["01"], trim=6.0,
                 regions=[mask], top_percent=100 * 8 / 256, output=tmp_path / "enc",
                 estimator=EncodingModel(n_permutations=200, min_shift=15.0))
    r = out.participants["01"]
    assert out.kind == "units" and out.names[:2] == ["layer00", "layer01"]
    assert r["model"].kernel and r["model"].dual_coef_.shape[1] == np.prod(SHAPE)
    planted = np.arange(np.prod(SHAPE)) < N_PLANTED
    found = r["p_fwe"] <= 0.05
    assert found[planted].mean() >= 0.9 and found[~planted].sum() <= 2
    units = NeuronSet.from_tsv(r["units"]["fn01"])
    fn01 = NeuronSet.from_tsv(tsv).select(["FN01"]).pairs()
    # ridge spreads the weight over the units that covary with FN01's mean (here |r| 0.25 on
    # average between units): FN01's own units rank high, not all first
    rank = np.argsort(np.argsort(-r["unit_scores"]["fn01"]))[128 * fn01[:, 0] + fn01[:, 1]]
    assert np.median(rank) < 64 and (rank < 8).sum() >= 2  # chance: 128, and 0.25
    assert len(units.pairs()) == 8 and (rank < 8).sum() == len(
        set(map(tuple, units.pairs().tolist())) & set(map(tuple, fn01.tolist())))
    assert "_desc-units_stat-r_statmap" in r["paths"]["r"].name



def _copy(fmri, tmp_path):
    import shutil

    return Path(shutil.copytree(fmri, tmp_path / "fmri"))


def _refused(args, tmp_path, *needles):
    out = tmp_path / "enc"
    r = CliRunner().invoke(main, ["encode", *map(str, args), "-o", str(out), "-q"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "Traceback" not in r.output and all(n in r.output for n in needles), r.output
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("case", ["tr", "short", "transcript", "no words", "no runs", "space",
                                  "too many features"])
def test_bad_human_data_is_refused_in_one_line_before_anything_is_written(listening, tmp_path,
                                                                          case):
    res, tsv, fmri = listening
    fmri = _copy(fmri, tmp_path)
    func = fmri / "sub-01" / "func"
    prep = fmri / "derivatives" / "fmriprep" / "sub-01" / "func"
    args = [res.root, "--fmri", fmri, "--features", tsv, "--trim", "6"]
    if case == "tr":
        bold = next(prep.glob("*run-1*_bold.nii.gz"))
        bold.with_name(bold.name.replace(".nii.gz", ".json")).write_text(
            '{"RepetitionTime": 2.0}')
        _refused(args, tmp_path, "RepetitionTime 2 s in its sidecar but 1.5 s in its header")
    elif case == "short":
        events = pd.read_csv(func / "sub-01_task-story_run-2_events.tsv", sep="\t",
                             keep_default_na=False)  # the story has a word "NA"
        events["onset"] += 300
        events.to_csv(func / "sub-01_task-story_run-2_events.tsv", sep="\t", index=False)
        _refused(args, tmp_path, "before the last word of sub-01_task-story_run-2_events.tsv")
    elif case == "transcript":
        path = func / "sub-01_task-story_run-1_events.tsv"
        lines = path.read_text(encoding="utf-8").splitlines()
        onset, duration, word = lines[5].split("\t")
        lines[5] = "\t".join([onset, duration, word + "s"])
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        _refused(args, tmp_path, "line 6 has the word", "transcript differs")
    elif case == "no words":
        path = func / "sub-01_task-story_run-1_events.tsv"
        path.write_text(path.read_text().replace("\tword\n", "\ttext\n", 1))
        _refused(args, tmp_path, "has no column word", "--word-column")
    elif case == "no runs":
        import shutil

        shutil.rmtree(fmri / "derivatives")
        _refused(args, tmp_path, "no fMRIPrep runs of task 'story'")
    elif case == "space":
        atlas = tmp_path / "space-MNI152NLin6Asym_desc-regions_dseg.nii.gz"
        nib.save(nib.Nifti1Image(np.ones(SHAPE, np.int16), np.eye(4)), atlas)
        _refused(args + ["--atlas", atlas], tmp_path, "in space MNI152NLin6Asym",
                 f"the runs in {SPACE}")
    else:
        _refused([res.root, "--fmri", fmri, "--layer-pcs", "60", "--hrf", "fir", "--trim", "6"],
                 tmp_path, "columns for sub-01's", "--units")


def test_the_command_lines_defaults_are_the_estimators():
    """encode's options that configure the EncodingModel start from its defaults."""
    import click

    command = main.commands["encode"]
    ctx = click.Context(command)
    defaults = EncodingModel().get_params()
    shared = [p for p in command.params if isinstance(p, click.Option) and p.name in defaults]
    assert {p.name for p in shared} >= {"banded", "n_permutations", "min_shift", "random_state"}
    for p in shared:
        value = p.type_cast_value(ctx, p.get_default(ctx))
        value = None if (p.name, value) == ("scheduler", "threads") else value  # this process
        assert value == defaults[p.name], p.name
