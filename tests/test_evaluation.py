"""Evaluation: perplexity and answer log-likelihoods against hand computations, controls, bootstrap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from llm2nifti.intervention import controls as C
from llm2nifti.errors import UsageError
from llm2nifti.intervention.evaluation import Evaluator, bootstrap_ci, check_overlap
from llm2nifti.intervention.tasks import ChoiceTask, pang_lee_task
from llm2nifti.intervention.experiment import plan_conditions, run_conditions, summarize, verdicts
from llm2nifti.neuronset import NeuronSet
from llm2nifti.acquisition.stimuli import Document

DOCS = [Document("a", "A short text about rivers and boats."),
        Document("b", "Another, rather longer text about the weather in the mountains today."),
        Document("c", "Third.")]


def _by_hand_nll(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return -float(lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_perplexity_equals_one_document_at_a_time(arch, request, tokenizer):
    model = request.getfixturevalue(arch)
    ev = Evaluator(model, tokenizer, heldout=DOCS, max_doc_tokens=40, batch_size=2)
    s = ev.score()
    for i, d in enumerate(DOCS):
        ids = ([256] + tokenizer(d.text, add_special_tokens=False)["input_ids"])[:40]
        assert s.n_tokens[i] == len(ids) - 1
        assert s.nll[i] == pytest.approx(_by_hand_nll(model, ids), rel=1e-4)
    assert s.perplexity == pytest.approx(np.exp(s.nll.sum() / s.n_tokens.sum()))


def test_answer_loglik_single_and_multi_token(llama, tokenizer):
    prompts = ["Is the sky blue?", "Is fire cold? Answer"]
    single = ChoiceTask("t", prompts, [["y", "n"], ["y", "n"]], np.array([0, 1]))
    multi = ChoiceTask("t", prompts, [[" yes", " no"], [" yes", " no"]], np.array([0, 1]))
    s1 = Evaluator(llama, tokenizer, task=single, batch_size=3).score()
    s2 = Evaluator(llama, tokenizer, task=multi, batch_size=3).score()
    for i, p in enumerate(prompts):
        head = [256] + tokenizer(p, add_special_tokens=False)["input_ids"]
        for c, (a1, a2) in enumerate(zip(single.choices[i], multi.choices[i])):
            t1 = tokenizer(a1, add_special_tokens=False)["input_ids"]
            t2 = tokenizer(a2, add_special_tokens=False)["input_ids"]
            assert len(t1) == 1 and len(t2) > 1
            want1 = -_by_hand_nll(llama, head + t1) + _by_hand_nll(llama, head)
            want2 = -_by_hand_nll(llama, head + t2) + _by_hand_nll(llama, head)
            assert s1.loglik[i, c] == pytest.approx(want1, rel=1e-4, abs=1e-4)
            assert s2.loglik[i, c] == pytest.approx(want2, rel=1e-4, abs=1e-4)
    best = np.argmax(s2.loglik, 1)
    assert ChoiceTask("t", prompts, multi.choices, best) and s2.accuracy == np.mean(best == [0, 1])


def test_pang_lee_task_is_balanced_and_subsets_stratified():
    task = pang_lee_task()
    assert len(task) == 200 and np.bincount(task.labels).tolist() == [100, 100]
    assert task.choices[0] == [" negative", " positive"]
    assert "__label__" not in task.prompts[0] and task.prompts[0].startswith("Review: ")
    sub = task.subset(10, seed=3)
    assert np.bincount(sub.labels).tolist() == [5, 5]
    assert len(sub.sources) == 10 and sub.subset(10) is sub


def test_bigbench_task_file(tmp_path):
    import json

    from llm2nifti.intervention.tasks import bigbench_task

    path = tmp_path / "task.json"
    path.write_text(json.dumps({"name": "toy", "examples": [
        {"input": "2+2?", "target_scores": {"3": 0, "4": 1}},
        {"input": "sky?", "target_scores": {"blue": 1, "green": 0}},
        {"input": "free text", "target": "no scores"}]}))
    task = bigbench_task(path)
    assert len(task) == 2 and task.labels.tolist() == [1, 0]
    assert task.choices[0] == [" 3", " 4"] and task.prompts[0].endswith("2+2?\nA:")
    path.write_text(json.dumps({"examples": [{"input": "x", "target": "y"}]}))
    with pytest.raises(UsageError, match="multiple-choice"):
        bigbench_task(path)


def test_bootstrap_ci_brackets_the_estimate_and_narrows_with_items():
    rng = np.random.default_rng(0)
    small = rng.random(20) < 0.7
    large = rng.random(2000) < 0.7
    lo, hi = bootstrap_ci(small.astype(float), n_resamples=500)
    lo2, hi2 = bootstrap_ci(large.astype(float), n_resamples=500)
    assert lo <= small.mean() <= hi and lo2 <= large.mean() <= hi2
    assert hi2 - lo2 < hi - lo
    assert bootstrap_ci(small.astype(float), n_resamples=500) == (lo, hi)  # seeded
    nll, n = rng.random(30) * 50, rng.integers(10, 20, 30)
    plo, phi = bootstrap_ci(nll, n, statistic=lambda a, b, axis=-1: np.exp(a.sum(axis) / b.sum(axis)),
                            n_resamples=500)
    assert plo < np.exp(nll.sum() / n.sum()) < phi


def test_overlap_with_the_scan_is_refused_or_reported(tiny_scan, text_file):
    res, _ = tiny_scan
    same = [Document("x", text_file.read_text().splitlines()[1])]  # a sentence of the scanned text
    other = [Document("y", "A completely different sentence that nobody scanned before.")]
    with pytest.raises(UsageError, match="held-out"):
        check_overlap(same + other, res.root)
    assert check_overlap(same + other, res.root, policy="warn") == ["x"]
    assert check_overlap(other, res.root) == []


def _stats(width=40, layers=2, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for l in range(layers):
        for n in range(width):
            rows.append({"layer": l, "neuron": n, "mean": 0.0, "std": float(n + 1),
                         "peak": 1.0 + rng.random(), "peak_token": 0})
    return pd.DataFrame(rows)


def test_controls_keep_counts_per_layer():
    stats = _stats()
    key = {0: np.array([35, 36, 37, 38, 39, 2]), 1: np.array([0, 1])}
    r0, r0b, r1 = C.random_like(key, 40, 0), C.random_like(key, 40, 0), C.random_like(key, 40, 1)
    assert {l: len(v) for l, v in r0.items()} == {0: 6, 1: 2}
    assert all(np.array_equal(r0[l], r0b[l]) for l in key)
    assert any(not np.array_equal(r0[l], r1[l]) for l in key)
    m = C.spread_matched(key, stats, seed=0, n_bins=10)  # bins of 4 neurons by spread rank
    assert {l: len(v) for l, v in m.items()} == {0: 6, 1: 2}
    assert np.sum(m[0] >= 36) == 4 and np.sum((m[0] >= 32) & (m[0] < 36)) == 1 and np.sum(m[0] < 4) == 1
    assert np.all(m[1] < 4)
    top = C.top_spread(key, stats)
    assert top[0].tolist() == [34, 35, 36, 37, 38, 39] and top[1].tolist() == [38, 39]
    assert C.overlap(top, key) == pytest.approx(5 / 8)
    assert C.overlap({}, key) == 0.0


def test_massive_neurons_and_set_difference():
    stats = _stats()
    stats.loc[(stats.layer == 1) & (stats.neuron == 7), "peak"] = 5000.0
    massive = C.massive_neurons(stats, factor=100)
    assert {l: v.tolist() for l, v in massive.items()} == {1: [7]}
    assert {l: v.tolist() for l, v in C.without({1: np.array([3, 7])}, massive).items()} == {1: [3]}


def test_neuron_stats_match_numpy(tiny_scan):
    from bids_llm.dataset import Dataset, load_run

    res, _ = tiny_scan
    ds = Dataset(res.root)
    X = np.concatenate([load_run(r)[0] for r in ds.runs()])
    stats = C.neuron_stats(ds)
    np.testing.assert_allclose(stats["std"], X.std(0, ddof=1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["peak"], np.abs(X).max(0), rtol=1e-6)
    assert stats["peak_token"].iloc[0] == np.abs(X[:, 0]).argmax()


def test_conditions_run_summarize_and_verdicts(llama, tokenizer):
    stats = _stats(width=128)
    nset = NeuronSet.from_pairs({"n0": [(0, 1), (0, 2)], "n1": [(1, 5), (1, 6), (1, 7)]})
    conds = plan_conditions(nset, stats, 128, seeds=(0, 1), amplify=(0.5,), curve=(1, 2))
    names = [c.name for c in conds]
    assert names.count("inhibit random") == 2 and names.count("retain spread-matched") == 2
    assert "retain key-minus-massive" not in names and "retain key @1" in names
    assert "retain key @2" not in names  # the same as "retain key"
    ev = Evaluator(llama, tokenizer, heldout=DOCS[:2], max_doc_tokens=16,
                   task=ChoiceTask("t", ["Q?", "R?"], [["y", "n"]] * 2, np.array([0, 1])))
    res = run_conditions(ev, conds, nset.per_layer(), 256, n_resamples=200)
    assert len(res) == 2 * len(conds)
    key_rows = res[res.condition == "inhibit key"]
    assert (key_rows.overlap_key == 1).all() and (key_rows.n_neurons == 5).all()
    base = res[(res.condition == "baseline") & (res.metric == "perplexity")].value.iloc[0]
    hit = key_rows[key_rows.metric == "perplexity"].value.iloc[0]
    assert hit != base
    summary = summarize(res)
    row = summary[(summary.condition == "inhibit random") & (summary.metric == "accuracy")].iloc[0]
    assert row.n_sets == 2
    lines = verdicts(summary)
    assert any(line.startswith("perplexity, inhibit: do the network neurons hurt more than top-spread?")
               for line in lines)
    assert all(("YES" in l or "NO" in l or "NOT CLEARLY" in l) for l in lines if "?" in l)


def test_weights_of_another_model_are_flagged(tiny_scan, caplog):
    from bids_llm.dataset import Dataset

    from conftest import tiny_llama
    from llm2nifti.intervention.experiment import _check_weights

    res, model = tiny_scan
    ds = Dataset(res.root)
    assert _check_weights(ds, res.layout, model, None)
    with caplog.at_level("WARNING"):
        assert not _check_weights(ds, res.layout, tiny_llama(seed=1), None)
    assert "differ" in caplog.text


def test_random_minus_massive_never_draws_massive_units():
    from llm2nifti.intervention.controls import random_like

    key = {0: np.arange(10), 1: np.arange(3)}
    massive = {0: np.array([2, 7]), 1: np.arange(6)}  # layer 1: only 2 units left of 8
    for seed in range(20):
        got = random_like(key, {0: 20, 1: 8}, seed, exclude=massive)
        assert len(got[0]) == 10 and not set(got[0]) & {2, 7}
        assert list(got[1]) == [6, 7]


def test_verdicts_name_the_massive_units():
    from llm2nifti.intervention.experiment import massive_line

    line = massive_line({11: np.array([3, 40]), 28: np.array([5])})
    assert line.startswith("Massive-activation units (3): L11N3, L11N40, L28N5.")
    assert "none" in massive_line({})
