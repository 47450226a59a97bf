"""The GLM localizer: planted condition effects, OLS t by hand, nilearn's own BIDS entry point."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_llm.dataset import Dataset, DatasetWriter
from bids_llm.events import events_tsv
from llm2nifti.analysis import contrast_label, localize
from llm2nifti.errors import UsageError
from llm2nifti.neuronset import NeuronSet

from planted import PARTICIPANT, toy_layout

CONDITIONS = ("sentences", "words", "nonwords")
TASK = "loc"


def _conditions(n_tokens, seed):
    """Items of 4-9 tokens, each opened by a baseline (BOS) token; conditions in triples."""
    rng = np.random.default_rng(seed)
    kinds = []
    while len(kinds) < n_tokens:
        for c in rng.permutation(3):
            kinds += [None] + [CONDITIONS[c]] * int(rng.integers(4, 10))
    return kinds[:n_tokens]


def make_localizer(root, effects, n_runs=2, n_tokens=240, noise=1.0, seed=0):
    """A planted localizer dataset: unit i gets ``effects[cond][i]`` on tokens of ``cond``.

    Returns the layout, the per-run activations and the per-run trial types.
    """
    layout = toy_layout(3, 64)
    writer = DatasetWriter(root, PARTICIPANT, TASK, layout, name="planted localizer",
                           conditions=CONDITIONS)
    writer.init_dataset()
    writer.add_participant({"model": "toy", "architecture": "llama", "n_layers": 3,
                            "neurons_per_layer": 64, "n_parameters": 0, "weights_sha256": "0"})
    writer.write_layout()
    data, kinds_of = [], []
    for r in range(1, n_runs + 1):
        rng = np.random.default_rng(seed * 100 + r)
        kinds = _conditions(n_tokens, seed * 100 + r)
        X = noise * rng.standard_normal((n_tokens, layout.n_neurons))
        for c, effect in effects.items():
            X[np.array([k == c for k in kinds])] += effect
        X = X.astype(np.float32)
        position = [0 if k is None else 1 for k in kinds]
        events = events_tsv(["x"] * n_tokens, [0] * n_tokens, ["d"] * n_tokens, position,
                            trial_types=kinds)
        writer.write_run(r, layout.to_img(X), {"TaskName": TASK, "RepetitionTime": 1.0,
                                               "NeuronLayout": layout.to_dict()}, events)
        data.append(X.astype(np.float64))
        kinds_of.append(kinds)
    return layout, data, kinds_of


def _ols_t(data, kinds_of, contrast):
    """Fixed-effects t by hand: per run OLS on [indicators, intercept], effects and variances summed."""
    effect, variance = 0.0, 0.0
    for X, kinds in zip(data, kinds_of):
        D = np.column_stack([[k == c for k in kinds] for c in sorted(CONDITIONS)] +
                            [np.ones(len(kinds))]).astype(float)
        beta, *_ = np.linalg.lstsq(D, X, rcond=None)
        resid = X - D @ beta
        sigma2 = (resid ** 2).sum(axis=0) / (len(kinds) - D.shape[1])
        c = np.array([contrast.get(name, 0.0) for name in sorted(CONDITIONS)] + [0.0])
        effect = effect + c @ beta
        variance = variance + sigma2 * (c @ np.linalg.inv(D.T @ D) @ c)
    return effect / np.sqrt(variance)


@pytest.fixture
def planted(tmp_path):
    layout = toy_layout(3, 64)
    rng = np.random.default_rng(7)
    selective = np.sort(rng.choice(layout.n_neurons, size=6, replace=False))
    effects = {c: np.zeros(layout.n_neurons) for c in CONDITIONS}
    for c in CONDITIONS:  # a shared effect of reading anything, which the contrast cancels
        effects[c][:] = 0.5
    effects["sentences"][selective] += 3.0  # only these units prefer sentences
    layout, data, kinds = make_localizer(tmp_path / "ds", effects)
    return tmp_path / "ds", layout, selective, data, kinds


def test_planted_units_come_back_exactly(planted):
    root, layout, selective, _, _ = planted
    n = len(selective)
    res = localize(root, task=TASK, top_percent=100 * n / layout.n_neurons, progress=False)
    entry = res.contrasts["sentences - nonwords"]
    assert entry["n_selected"] == n
    found = NeuronSet.from_tsv(entry["networks_tsv"])
    assert found.names == ["sentencesMinusNonwords"]
    assert sorted(found.global_index(layout).tolist()) == selective.tolist()
    # the selective units stand far above every other one, whose t is noise around 0
    others = np.delete(entry["t"], selective)
    assert entry["t"][selective].min() > 5 * max(others.max(), 1)
    assert abs(others.mean()) < 0.3 and 0.7 < others.std() < 1.3
    # against the baseline (BOS tokens), the shared effect is found in every unit
    res = localize(root, task=TASK, contrasts=["nonwords"], z_threshold=3.0, progress=False)
    t = res.contrasts["nonwords"]["t"]
    assert (t > 0).all() and t.mean() > 2


def test_t_equals_ols_by_hand(planted):
    root, layout, _, data, kinds = planted
    res = localize(root, task=TASK, contrasts=["sentences - nonwords", "words - 0.5*sentences"],
                   progress=False)
    for expression, weights in (("sentences - nonwords", {"sentences": 1, "nonwords": -1}),
                                ("words - 0.5*sentences", {"words": 1, "sentences": -0.5})):
        entry = res.contrasts[expression]
        expected = _ols_t(data, kinds, weights)
        written = layout.unfold(nib.load(str(entry["t_path"])))
        np.testing.assert_allclose(written, expected, rtol=1e-6, atol=1e-6)
        sidecar = json.loads(entry["t_path"].with_suffix(".json").read_text())
        assert sidecar["Contrast"] == expression and sidecar["Model"]["noise_model"] == "ols"
        assert sidecar["DegreesOfFreedom"] == sum(len(k) - 4 for k in kinds)


def test_first_level_from_bids_finds_the_runs(planted):
    """The documented nilearn call, unchanged, gives the same t as localize."""
    from nilearn.glm.first_level import first_level_from_bids

    root, layout, _, _, _ = planted
    res = localize(root, task=TASK, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models, imgs, events, _ = first_level_from_bids(
            str(root), TASK, space_label="neurons", derivatives_folder="derivatives/llm2nifti-space",
            hrf_model=None, drift_model=None, signal_scaling=False, noise_model="ols",
            mask_img="derivatives")
        assert len(models) == 1 and len(imgs[0]) == 2
        assert all(p.endswith("_space-neurons_desc-preproc_bold.nii") for p in imgs[0])
        t = models[0].fit(imgs[0], events=events[0]).compute_contrast(
            "sentences - nonwords", stat_type="t", output_type="stat")
    np.testing.assert_allclose(layout.unfold(t), res.contrasts["sentences - nonwords"]["t"],
                               rtol=1e-10, atol=1e-10)
    # links, not copies
    link = root / "derivatives" / "llm2nifti-space" / "sub-toy" / "func" / \
        "sub-toy_task-loc_run-01_space-neurons_desc-preproc_bold.nii"
    assert link.is_symlink() and link.resolve() == Dataset(root).runs()[0].path.resolve()
    # the sidecar's BIDS URIs name files of the dataset
    sidecar = json.loads(link.with_name(link.name.replace(".nii", ".json")).read_text())
    for uri in [sidecar["SpatialReference"], *sidecar["Sources"]]:
        assert uri.startswith("bids::") and (root / uri[len("bids::"):]).is_file(), uri


def test_raw_dataset_and_derivatives_are_valid_bids(planted):
    """The raw localizer and the space view validate; the GLM derivative with its .bidsignore."""
    import subprocess

    from test_bids import validator

    root = planted[0]
    localize(root, task=TASK, progress=False)
    for folder in (root, root / "derivatives" / "llm2nifti-space", root / "derivatives" / "llm2nifti-glm"):
        r = subprocess.run([validator(), str(folder), "--format", "json"], capture_output=True,
                           text=True, timeout=300)
        issues = json.loads(r.stdout)["issues"]["issues"]
        assert [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"] == [], folder


def test_bad_contrasts_and_tasks(planted, tmp_path):
    root = planted[0]
    with pytest.raises(UsageError, match="unknown condition.*pictures.*conditions are nonwords, "
                                         "sentences, words"):
        localize(root, task=TASK, contrasts=["sentences - pictures"], progress=False)
    with pytest.raises(UsageError, match="nothing.tsv not found"):
        localize(root, task="other", stimuli=str(tmp_path / "nothing.tsv"), progress=False)
    with pytest.raises(UsageError, match="percentage"):
        localize(root, task=TASK, top_percent=0, progress=False)


def test_localize_infers_the_site_of_the_recorded_runs(tmp_path, tokenizer):
    """A localizer recorded at one site is analysed there without --site; two sites: choose."""
    from conftest import tiny_llama

    from llm2nifti.acquisition import scan

    model = tiny_llama()
    ds = tmp_path / "ds"
    scan(ds, "tiny", "localizer", task="localizer", neurons="mlp-out", run_tokens=512,
         loaded=(model, tokenizer), threads=1, progress=False)
    res = localize(ds, participant="tiny", progress=False)
    assert not res.scanned
    entry = res.contrasts["sentences - nonwords"]
    assert "_acq-mlpout_" in entry["t_path"].name
    assert NeuronSet.from_tsv(entry["networks_tsv"]).site == "mlp-out"
    scan(ds, "tiny", "localizer", task="localizer", neurons="residual", run_tokens=512,
         loaded=(model, tokenizer), threads=1, progress=False)
    with pytest.raises(UsageError, match=r"several sites \(mlp-out, residual\): choose one with --site"):
        localize(ds, participant="tiny", progress=False)


def test_contrast_labels():
    assert contrast_label("sentences - nonwords") == "sentencesMinusNonwords"
    assert contrast_label("words - 0.5*sentences") == "wordsMinus0p5TimesSentences"
    assert contrast_label("a_b + c") == "abPlusC"


def test_localizer_dataset_from_a_tiny_model(tmp_path, tokenizer):
    """A localizer table with conditions converts into trial types and runs cut between items."""
    from conftest import tiny_llama

    from llm2nifti.acquisition import localizer_documents

    table = tmp_path / "loc.jsonl"
    table.write_text("".join(json.dumps({"id": d.id, "text": d.text, "condition": d.condition})
                             + "\n" for d in localizer_documents(n_items=9)))
    res = localize(tmp_path / "ds", model="tiny", stimuli=str(table), participant="tiny",
                   loaded=(tiny_llama(), tokenizer), run_tokens=500, threads=1, progress=False)
    assert res.scanned and res.conditions == sorted(CONDITIONS)
    runs = Dataset(tmp_path / "ds").runs(task="loc")
    assert len(runs) >= 2
    used = json.loads(res.contrasts["sentences - nonwords"]["t_path"].with_suffix(".json")
                      .read_text())["Runs"]
    assert len(used) >= 2
    for run in runs:
        ev = pd.read_csv(run.events_path, sep="\t")
        # a run is fitted exactly when it holds every condition
        assert (set(ev["trial_type"]) == set(CONDITIONS)) == any(u.endswith(run.path.name) for u in used)
        assert (ev["position"] > 0).all()  # BOS tokens are the baseline: no row
        n_volumes = nib.load(str(run.path)).shape[-1]
        # the last volume is the end of an item, never cut
        assert ev["onset"].max() == n_volumes - 1
    desc = json.loads((tmp_path / "ds" / "task-loc_events.json").read_text())
    assert set(desc["trial_type"]["Levels"]) == set(CONDITIONS)
