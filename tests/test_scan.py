import json

import nibabel as nib
import numpy as np
import pytest
import torch
from nilearn.maskers import MultiNiftiMasker

import bids_llm.dataset as bds
from bids_llm.dataset import Dataset, load_run
from bids_llm.events import read_events
from llm2nifti.errors import UsageError
from llm2nifti.acquisition.recording import record
from llm2nifti.acquisition.convert import scan
from llm2nifti.sites import resolve_site

from conftest import tiny_gpt2, tiny_llama


def _scan(out, model, tokenizer, text, **kw):
    kw.setdefault("run_tokens", 100)
    return scan(out, kw.pop("name", "tinyllama"), text, progress=False, threads=1,
                loaded=(model, tokenizer), **kw)


def test_runs_hold_tokens_as_volumes_with_header_tr_and_events(tiny_scan):
    res, model = tiny_scan
    assert len(res.runs) == -(-res.n_tokens // 100)
    img = nib.load(res.runs[0])
    assert img.shape == res.layout.shape + (100,)
    assert img.get_data_dtype() == np.float32
    assert img.header.get_zooms()[3] == 1.0
    meta = json.loads(res.runs[0].with_suffix(".json").read_text())
    assert meta["RepetitionTime"] == 1.0 and meta["TaskName"] == res.task
    assert meta["NeuronSite"] == "mlp" and meta["Layers"] == [0, 1]
    ev = read_events(str(res.runs[0]).replace("_bold.nii", "_events.tsv"))
    assert len(ev) == 100
    np.testing.assert_array_equal(ev["onset"], np.arange(100.0))
    assert ev["position"].iloc[0] == 0 and ev["token_id"].iloc[0] == 256  # BOS opens document 1
    assert "".join(ev["token"].iloc[1:12]) == "The council"


def test_nilearn_masker_matrix_equals_independent_hook_recording(tiny_scan, tokenizer):
    """Mask a run with nilearn and the dataset's mask: neuron for neuron, token for token."""
    res, model = tiny_scan
    run = Dataset(res.root).runs()[1]
    ids = read_events(run.events_path)["token_id"].to_numpy()
    expected = record(model, resolve_site(model), ids)  # independent: a fresh hook, layer-major
    mask = Dataset(res.root).mask_path(res.participant)
    masked = MultiNiftiMasker(mask_img=str(mask), smoothing_fwhm=None, detrend=False,
                              standardize=None).fit_transform([str(run.path)])[0]
    np.testing.assert_array_equal(res.layout.from_masked(masked), expected)
    X, neurons = load_run(run)
    np.testing.assert_array_equal(X, expected)
    assert list(neurons.iloc[130]) == [1, 2]  # column 130 is layer 1, neuron 2


def test_resume_after_interrupt_gives_identical_files(tmp_path, tokenizer, text_file, monkeypatch):
    ref = _scan(tmp_path / "ref", tiny_llama(), tokenizer, text_file, run_tokens=50)
    assert len(ref.runs) == 6
    calls = {"n": 0}
    real_save = bds.save_img_checksum

    def interrupting_save(img, path, *args):
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th run
            raise KeyboardInterrupt
        return real_save(img, path, *args)

    monkeypatch.setattr(bds, "save_img_checksum", interrupting_save)
    with pytest.raises(KeyboardInterrupt):
        _scan(tmp_path / "cut", tiny_llama(), tokenizer, text_file, run_tokens=50)
    monkeypatch.setattr(bds, "save_img_checksum", real_save)
    cut = tmp_path / "cut"
    assert not list(cut.rglob(".tmp-*"))  # nothing half-written
    assert len(list(cut.rglob("*_bold.nii"))) == 3
    with pytest.raises(UsageError, match="--resume"):
        _scan(cut, tiny_llama(), tokenizer, text_file, run_tokens=50)
    res = _scan(cut, tiny_llama(), tokenizer, text_file, run_tokens=50, resume=True)
    assert res.skipped == [1, 2, 3]
    ref_files = sorted(p.relative_to(tmp_path / "ref") for p in (tmp_path / "ref").rglob("*") if p.is_file())
    cut_files = sorted(p.relative_to(cut) for p in cut.rglob("*") if p.is_file())
    assert ref_files == cut_files
    for rel in ref_files:
        assert (tmp_path / "ref" / rel).read_bytes() == (cut / rel).read_bytes(), rel


def test_resume_refuses_other_settings(tmp_path, tokenizer, text_file):
    _scan(tmp_path / "d", tiny_llama(), tokenizer, text_file)
    with pytest.raises(UsageError, match="run_tokens"):
        _scan(tmp_path / "d", tiny_llama(), tokenizer, text_file, run_tokens=50, resume=True)


def test_resume_redoes_a_corrupted_run(tmp_path, tokenizer, text_file):
    res = _scan(tmp_path / "d", tiny_llama(), tokenizer, text_file)
    before = res.runs[1].read_bytes()
    with open(res.runs[1], "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    again = _scan(tmp_path / "d", tiny_llama(), tokenizer, text_file, resume=True)
    assert 2 not in again.skipped and 1 in again.skipped
    assert res.runs[1].read_bytes() == before


def test_second_model_adds_a_participant_and_overwrite_redoes(tmp_path, tokenizer, text_file):
    out = tmp_path / "d"
    _scan(out, tiny_llama(), tokenizer, text_file)
    _scan(out, tiny_gpt2(), tokenizer, text_file, name="tinygpt2")
    rows = Dataset(out).participants()
    assert [r["participant_id"] for r in rows] == ["sub-tinygpt2", "sub-tinyllama"]
    assert [r["architecture"] for r in rows] == ["gpt2", "llama"]
    assert rows[0]["neurons_per_layer"] == "256"
    assert Dataset(out).layout("tinygpt2").shape == (16, 16, 2)
    other = tiny_llama(seed=1)
    res = _scan(out, other, tokenizer, text_file, overwrite=True)
    X, _ = load_run(res.runs[0])
    ids = read_events(Dataset(out).runs(participant="tinyllama")[0].events_path)["token_id"]
    np.testing.assert_array_equal(X, record(other, resolve_site(other), ids.to_numpy()))


def test_residual_site_layers_and_gzip(tmp_path, tokenizer, text_file):
    model = tiny_llama()
    res = _scan(tmp_path / "d", model, tokenizer, text_file, neurons="residual", layers="0",
                compress=True, max_tokens=150)
    assert res.runs[0].name == "sub-tinyllama_task-stories_acq-residual_run-01_bold.nii.gz"
    X, _ = load_run(res.runs[0])
    ids = read_events(Dataset(res.root).runs(site="residual")[0].events_path)["token_id"]
    with torch.no_grad():
        hidden = model(torch.tensor(ids.to_numpy())[None], output_hidden_states=True).hidden_states
    np.testing.assert_allclose(X, hidden[1][0].numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers="7"), "unknown layer"),
    (dict(run_tokens=600), "context window"),
    (dict(run_tokens=0), "at least 1"),
    (dict(label="../evil"), "letters and digits"),
    (dict(task="a b"), "letters and digits"),
])
def test_bad_input_writes_nothing(tmp_path, tokenizer, text_file, kwargs, message):
    out = tmp_path / "d"
    with pytest.raises(UsageError, match=message):
        _scan(out, tiny_llama(), tokenizer, text_file, **kwargs)
    assert not out.exists()


def test_non_dataset_folder_is_refused(tmp_path, tokenizer, text_file):
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        _scan(out, tiny_llama(), tokenizer, text_file, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_bfloat16_model_is_stored_as_float32(tmp_path, tokenizer, text_file):
    model = tiny_llama().to(torch.bfloat16)
    res = _scan(tmp_path / "d", model, tokenizer, text_file, max_tokens=60)
    img = nib.load(res.runs[0])
    assert img.get_data_dtype() == np.float32
    meta = json.loads(res.runs[0].with_suffix(".json").read_text())
    assert meta["ModelDtype"] == "bfloat16" and meta["DataDtype"] == "float32"
    ids = read_events(Dataset(res.root).runs()[0].events_path)["token_id"].to_numpy()
    X, _ = load_run(res.runs[0])
    np.testing.assert_array_equal(X, record(model, resolve_site(model), ids))
    assert np.abs(X).max() > 0


def test_other_layers_for_same_participant_are_refused_before_writing(tmp_path, tokenizer, text_file):
    out = tmp_path / "d"
    _scan(out, tiny_llama(), tokenizer, text_file, layers="0")
    before = sorted(p for p in out.rglob("*"))
    with pytest.raises(UsageError, match="already has a mlp layout"):
        _scan(out, tiny_llama(), tokenizer, text_file, layers="1", task="other")
    assert sorted(p for p in out.rglob("*")) == before
