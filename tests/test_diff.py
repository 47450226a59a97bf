"""``diff``: paired unit tests with permutation FWE, dual regression, and their planted truths."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import byte_tokenizer, tiny_llama

from llm2nifti.analysis.dualreg import dual_regression
from llm2nifti.analysis.permutation import check_blocks, max_t_fwe, one_sample_t
from llm2nifti.cli.main import main
from llm2nifti.errors import UsageError

# Sixteen one-line documents of 40 to 70 bytes (one token per byte).
DOCS = [
    "The council met on Tuesday to discuss the new city budget.",
    "Scientists saw a bright comet pass close to the sun.",
    "The football team won its third match in a row.",
    "Heavy rain flooded several streets near the bridge.",
    "A small museum opened a new wing for old maps.",
    "The train to the coast was late because of a tree.",
    "Farmers expect a good harvest after a wet spring.",
    "The school choir sang at the town hall on Friday.",
    "Police closed the market square for a long parade.",
    "A young pilot landed a light plane on a field.",
    "The library will stay open late during the exams.",
    "A new bakery on the corner sells bread at dawn.",
    "The mayor planted trees along the river path today.",
    "Workers repaired the old bridge over the winter.",
    "The band played songs from the sixties all night.",
    "Children built a snowman in the park after school.",
]
K = 4
LAYER = 2  # the amplified layer of the 4-layer tiny Llama
FACTOR = 8.0  # a power of 2: the planted units are scaled exactly


def _table(path, docs):
    """A TSV of documents, one per row (``convert --text`` reads it)."""
    path.write_text("id\ttext\n" + "".join(f"d{i}\t{d}\n" for i, d in enumerate(docs)),
                    encoding="utf-8")
    return path


def _save(folder, model):
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def _convert(root, model, participant, text, *extra):
    r = CliRunner().invoke(main, ["convert", str(root), "--model", str(model), "--text", str(text),
                                  "--participant", participant, "--task", "text", "--run-tokens",
                                  "200", "--threads", "1", "-q", *extra])
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A 4-layer tiny Llama (``base``), the same with 16 MLP units of layer 2 scaled by 8 through
    the weights (``amp``), itself again (``same``) and a unit-permuted copy (``perm``)."""
    tmp = tmp_path_factory.mktemp("diff")
    text = _table(tmp / "docs.tsv", DOCS)
    base = _save(tmp / "base", tiny_llama(seed=3, layers=4))
    r = CliRunner().invoke(main, ["derive", str(tmp / "amp"), "--kind", "amplified", "--model",
                                  str(base), "--layer", str(LAYER), "--neurons", "16", "--factor", str(FACTOR), "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["derive", str(tmp / "perm"), "--kind", "permuted", "--model",
                                  str(base), "-q"])
    assert r.exit_code == 0, r.output
    root = tmp / "ds"
    for who, model in (("base", base), ("amp", tmp / "amp"), ("same", base), ("perm", tmp / "perm")):
        _convert(root, model, who, text)
    planted = json.loads((tmp / "amp" / "variant.json").read_text())["Neurons"]
    return root, planted


def _diff(root, *args):
    return CliRunner().invoke(main, ["diff", str(root), "-k", str(K), "--n-runs", "3",
                                     "--threads", "1", "-q", *args])


@pytest.fixture(scope="module")
def diffed(planted):
    """``diff`` of the amplified variant against its base: (dataset, planted units, output)."""
    root, neurons = planted
    r = _diff(root, "-r", "base", "-c", "amp")
    assert r.exit_code == 0, r.output
    return root, neurons, r.output


def test_planted_units_found_and_nothing_before_their_layer(diffed):
    root, neurons, output = diffed
    units = pd.read_csv(next(root.rglob("*_desc-vsbase_units.tsv")), sep="\t")
    assert (units["layer"] >= LAYER).all()  # earlier layers are bit-identical: no false positive
    amp = units[(units["test"] == "amplitude") & (units["layer"] == LAYER)]
    recall = np.isin(neurons, amp["neuron"]).mean()
    assert recall >= 0.9
    # the amplified units' amplitude ratio is the factor, exactly up to rounding
    assert np.allclose(np.exp(amp.set_index("neuron").loc[neurons, "effect"]), FACTOR, rtol=1e-5)
    assert "first changed layer 2" in output


def test_diff_outputs_read_back(diffed):
    import nibabel as nib

    from bids_llm.dataset import Dataset
    from llm2nifti.neuronset import NeuronSet

    root, neurons, _ = diffed
    folder = root / "derivatives" / "llm2nifti-diff" / "sub-amp" / "func"
    layout = Dataset(root).layout("base")
    t = layout.unfold(nib.load(next(folder.glob("*contrast-amplitudeVsbase_stat-t_statmap.nii"))))
    p = layout.unfold(nib.load(next(folder.glob("*contrast-amplitudeVsbase_stat-pfwe_statmap.nii"))))
    assert t.shape == p.shape == (layout.n_neurons,)
    assert ((p > 0) & (p <= 1)).all()
    shape = nib.load(next(folder.glob("*contrast-shapeVsbase_stat-t_statmap.nii")))
    assert shape.shape[3] == K
    nets = pd.read_csv(next(folder.glob("*_desc-vsbase_networks.tsv")), sep="\t")
    assert len(nets) == K and (nets["amplitude_ci_low"] <= nets["amplitude_ratio"]).all()
    assert (nets["stability"].between(-1, 1)).all()
    nset = NeuronSet.from_tsv(next(folder.glob("*_units.tsv")))
    assert set(nset.names) <= {"mean", "amplitude"} and nset.site == "mlp"
    assert next(folder.glob("*_layers.png")).stat().st_size > 0


def test_model_against_itself_changes_nothing(planted):
    root, _ = planted
    r = _diff(root, "-r", "base", "-c", "same", "--n-permutations", "1000")
    assert r.exit_code == 0, r.output
    same = next((root / "derivatives" / "llm2nifti-diff" / "sub-same").rglob("*_units.tsv"))
    assert pd.read_csv(same, sep="\t").empty
    assert "0 of" in r.output


def test_unit_permuted_copy_is_refused(planted):
    root, _ = planted
    r = _diff(root, "-r", "base", "-c", "perm")
    assert r.exit_code == 2
    assert "do not correspond" in r.output and "fingerprint" in r.output
    assert "Traceback" not in r.output
    assert not (root / "derivatives" / "llm2nifti-diff" / "sub-perm").exists()


@pytest.mark.parametrize("args, words", [
    (["-r", "base", "-c", "base"], "both sub-base"),
    (["-r", "base", "-c", "nobody"], "not in"),
    (["-r", "base", "-c", "amp", "--site", "mlp-out"], "no runs at site mlp-out"),
    (["-r", "base", "-c", "amp", "--n-permutations", "100000"], "distinct sign flips"),
    (["-r", "base", "-c", "amp", "--alpha", "2"], "alpha"),
])
def test_bad_input_is_one_line(planted, args, words):
    root, _ = planted
    before = sorted(p for p in root.rglob("*") if "llm2nifti-diff" in str(p))
    r = _diff(root, *args)
    assert r.exit_code == 2, r.output
    assert words in r.output and len(r.output.strip().splitlines()) == 1
    assert sorted(p for p in root.rglob("*") if "llm2nifti-diff" in str(p)) == before


def test_a_diff_beyond_memory_is_refused_before_any_work(planted, monkeypatch):
    root, _ = planted
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    monkeypatch.setenv("LLM2NIFTI_MEMORY_LIMIT", "1MB")
    r = _diff(root, "-r", "base", "-c", "amp")
    assert r.exit_code == 2 and "dual regression" in r.output and "fewer components" in r.output
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and "lock" not in p.name}
    assert after == {p: t for p, t in before.items() if "lock" not in p.name}


def test_different_tokens_are_refused(tmp_path, tiny_model_dir):
    """Other token ids (here: no BOS, as another tokenizer would give) are refused."""
    text = _table(tmp_path / "a.tsv", DOCS)
    _convert(tmp_path / "ds", tiny_model_dir, "a", text)
    _convert(tmp_path / "ds", tiny_model_dir, "b", text, "--no-bos")
    r = _diff(tmp_path / "ds", "-r", "a", "-c", "b")
    assert r.exit_code == 2 and "different tokens" in r.output


# ------------------------------------------------------------------ the statistics alone
def test_max_t_fwe_planted_effect_and_null():
    rng = np.random.default_rng(0)
    D = rng.normal(size=(20, 500))
    D[:, :5] += 3.0  # five tests with a strong shift
    res = max_t_fwe(D, n_permutations=500, random_state=1)
    assert (res.p_fwe[:5] <= 0.05).all()
    assert (res.p_fwe[5:] > 0.05).mean() > 0.95
    assert np.allclose(res.t, one_sample_t(D))
    # the same seed gives the same null, and memory-bounded batches do not change it
    again = max_t_fwe(D, n_permutations=500, random_state=1)
    assert np.array_equal(again.null_max, res.null_max)
    # the null's shortcut (t from the largest total^2 / sumsq) equals the plain t of each flip
    from llm2nifti.analysis.permutation import sign_flips

    plain = np.concatenate([np.abs([one_sample_t(row[:, None] * D) for row in s]).max(axis=1)
                            for s in sign_flips(20, 500, 1)])
    assert np.allclose(res.null_max, plain, rtol=1e-9)


def test_max_t_fwe_controls_fwe_under_the_null():
    hits = 0
    for seed in range(40):
        D = np.random.default_rng(seed).normal(size=(12, 200))
        hits += (max_t_fwe(D, n_permutations=200, random_state=seed).p_fwe <= 0.05).any()
    assert hits <= 6  # 5% of 40 is 2; a binomial 95th percentile is 5


def test_zero_and_constant_columns():
    D = np.zeros((12, 3))
    D[:, 1] = 0.5
    D[:, 2] = np.random.default_rng(0).normal(size=12)
    res = max_t_fwe(D, n_permutations=100)
    assert res.t[0] == 0 and res.p_fwe[0] == 1.0
    assert np.isinf(res.t[1]) and res.p_fwe[1] == pytest.approx(1 / 101)


def test_check_blocks():
    check_blocks(11, 1000)
    with pytest.raises(UsageError, match="at least 11"):
        check_blocks(10, 1000)
    with pytest.raises(UsageError, match="at least 2"):
        check_blocks(1, 10)


def test_dual_regression_recovers_planted_maps_and_time_courses():
    rng = np.random.default_rng(0)
    k, T, V = 3, 60, 400
    maps = rng.normal(size=(k, V))
    tc = rng.normal(size=(T, k))
    Y = tc @ maps
    A, B = dual_regression(Y, maps)
    # stage 1: each token's pattern regressed on the maps (both demeaned over units)
    assert np.allclose(A, tc, atol=1e-8)
    # stage 2 with unit-variance time courses: each map scaled by its time course's sd
    assert np.allclose(B, tc.std(0)[:, None] * maps, atol=1e-8)


def test_amplified_variant_scales_exactly_and_keeps_earlier_layers():
    from llm2nifti.acquisition.recording import record
    from llm2nifti.intervention.variants import amplify_units
    from llm2nifti.sites import resolve_site

    base = tiny_llama(seed=1, layers=3)
    amp = tiny_llama(seed=1, layers=3)
    chosen = amplify_units(amp, 1, [3, 7, 11], factor=2.0)
    site = resolve_site(base, "mlp")
    ids = list(range(40))
    Xa, Xb = record(base, site, ids), record(amp, site, ids)
    w = site.width_of(0)
    assert np.array_equal(Xa[:, :w], Xb[:, :w])
    assert np.array_equal(Xb[:, w + chosen], 2 * Xa[:, w + chosen])
    rest = np.setdiff1d(np.arange(w), chosen)
    assert np.array_equal(Xa[:, w + rest], Xb[:, w + rest])
    gpt = __import__("conftest").tiny_gpt2()
    with pytest.raises(UsageError, match="gated"):
        amplify_units(gpt, 0, [1, 2])


def test_quantized_and_pruned_keep_units():
    from llm2nifti.intervention.variants import decoder_linears, prune_weights, round_weights

    m = tiny_llama(seed=0)
    before = [l.weight.detach().clone() for l in decoder_linears(m)]
    round_weights(m, bits=4)
    for w0, l in zip(before, decoder_linears(m)):
        assert l.weight.shape == w0.shape
        per_row = [torch.unique(r).numel() for r in l.weight]
        assert max(per_row) <= 15
    m = tiny_llama(seed=0)
    n = prune_weights(m, 0.3)
    total = sum(l.weight.numel() for l in decoder_linears(m))
    assert 0.29 <= n / total <= 0.31


# ------------------------------------------------------------------ patching
def test_patching_the_planted_units_closes_the_gap(diffed, tmp_path):
    root, neurons, _ = diffed
    units = next((root / "derivatives" / "llm2nifti-diff" / "sub-amp").rglob("*_units.tsv"))
    planted_tsv = tmp_path / "planted.tsv"
    pd.DataFrame({"network": "planted", "layer": LAYER, "neuron": neurons}).to_csv(
        planted_tsv, sep="\t", index=False)
    text = _table(tmp_path / "eval.tsv", DOCS)
    r = CliRunner().invoke(main, ["patch", str(planted_tsv), "-d", str(root), "-r", "base", "-c",
                                  "amp", "--text", str(text), "--n-docs", "16", "--seeds", "3",
                                  "--threads", "1"])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(tmp_path / "planted_patching.tsv", sep="\t").set_index("condition")
    # the planted units are the whole change: patching them gives the base back exactly
    assert table.loc["patched", "perplexity"] == pytest.approx(table.loc["base", "perplexity"],
                                                               rel=1e-5)
    assert table.loc["patched", "closed"] == pytest.approx(1.0, abs=1e-3)
    assert table.loc["random", "closed_max"] < 0.9
    assert "carry the change" in r.output
    # diff's own units.tsv runs as well
    r = CliRunner().invoke(main, ["patch", str(units), "-d", str(root), "-r", "base", "-c", "amp",
                                  "--text", str(text), "--n-docs", "4", "--seeds", "1",
                                  "--threads", "1"])
    assert r.exit_code == 0, r.output


def test_patch_refuses_other_units_in_one_line(planted, tmp_path):
    root, _ = planted
    bad = tmp_path / "bad.tsv"
    pd.DataFrame({"network": "x", "layer": [9], "neuron": [0]}).to_csv(bad, sep="\t", index=False)
    r = CliRunner().invoke(main, ["patch", str(bad), "-d", str(root), "-r", "base", "-c", "amp"])
    assert r.exit_code == 2 and "layer(s) [9]" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_report_shows_the_diff(diffed, tmp_path):
    root, _, _ = diffed
    r = CliRunner().invoke(main, ["report", str(root), "--participant", "amp", "--output",
                                  str(tmp_path)])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "sub-amp.html").read_text()
    assert "Changes from a base checkpoint" in page and "against sub-base" in page
    assert "amplitude_ratio" in page


def test_patch_with_the_source_cached_equals_patch_without():
    from llm2nifti.intervention import Patch

    base, variant = tiny_llama(seed=0), tiny_llama(seed=1)
    ids = torch.arange(30).reshape(2, 15)
    cache = {}
    with Patch(variant, base, {0: [1, 5]}, cache=cache):
        variant(input_ids=ids)  # fills the cache
    with Patch(variant, base, {1: [2, 7, 9]}, cache=cache):
        cached = variant(input_ids=ids).logits
    assert len(cache) == 1
    with Patch(variant, base, {1: [2, 7, 9]}):
        fresh = variant(input_ids=ids).logits
    assert torch.equal(cached, fresh)
    plain = variant(input_ids=ids).logits
    assert not torch.allclose(plain, fresh)  # the patch did change the variant
