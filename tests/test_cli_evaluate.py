"""The evaluate and prune commands end to end on a tiny scanned model."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from llm2nifti.cli.main import main
from llm2nifti.neuronset import NeuronSet


@pytest.fixture
def networks_tsv(tmp_path):
    path = tmp_path / "networks.tsv"
    NeuronSet.from_pairs({"0": [(0, 1), (0, 2), (1, 9)], "1": [(1, 3), (1, 4), (0, 2)]}).to_tsv(path)
    return path


@pytest.fixture
def heldout(tmp_path):
    path = tmp_path / "heldout.txt"
    path.write_text("A new text about a quiet harbour.\nA second text about mountain roads.\n"
                    "A third text about an old library.\n", encoding="utf-8")
    return path


def test_evaluate_writes_results_and_figures(tiny_scan, tiny_model_dir, networks_tsv, heldout, tmp_path):
    res, _ = tiny_scan
    out = tmp_path / "eval"
    wider = tmp_path / "wide" / "x_networks.tsv"
    NeuronSet.from_pairs({"0": [(0, n) for n in range(40)]}).to_tsv(wider)
    (tmp_path / "wide" / "x_networks.json").write_text('{"Selection": {"threshold": 2.0}}')
    r = CliRunner().invoke(main, [
        "evaluate", str(networks_tsv), "--dataset", str(res.root), "--output", str(out),
        "--model", str(tiny_model_dir), "--heldout", str(heldout), "--n-items", "6",
        "--max-doc-tokens", "24", "--seeds", "2", "--curve", "1", "--bootstrap", "200",
        "--threads", "1", "-q", "--curve-networks", str(wider)])
    assert r.exit_code == 0, r.output
    assert "do the network neurons hurt more than random?" in r.output
    results = pd.read_csv(out / "results.tsv", sep="\t")
    assert set(results.metric) == {"perplexity", "accuracy"}
    assert (results[results.condition == "inhibit random"].seed.nunique()) == 2
    assert results[results.group == "main"].share.max() == pytest.approx(5 / 256, rel=1e-4)
    wide = results[results.condition == "retain key @|z|>2"]
    assert len(wide) == 2 and (wide.n_neurons == 40).all()
    assert results[results.condition == "retain random @|z|>2"].seed.nunique() == 2
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    assert {"mean", "sd", "ci_low", "ci_high", "overlap_key"} <= set(summary.columns)
    settings = json.loads((out / "evaluation.json").read_text())
    assert settings["n_key_neurons"] == 5 and settings["overlap_with_scan"] == {"heldout": [], "task": []}
    for name in ("interventions.png", "curve.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    from llm2nifti.intervention.reproduce import answers, choice_grid, results_markdown

    lines = answers(summary)
    assert lines[0].startswith("**Does inhibiting the network units hurt more than inhibiting random")
    assert lines[-1].startswith("**Does keeping only the network units preserve the model's")
    assert all(("yes" in l or "no" in l or "not clearly" in l) for l in lines)
    # the grid of configurations: a summary against itself never changes a verdict
    grid = choice_grid({"a, zero": (summary, "zero"), "b, zero": (summary, "zero")}).splitlines()
    assert grid[0] == "| question | metric | a, zero | b, zero | same everywhere? |"
    assert len(grid) > 4 and all(row.endswith("| yes |") for row in grid[2:])
    high, low = summary.copy(), summary.copy()  # inhibiting the key set: far worse / far better
    where = (summary.condition == "inhibit key") & (summary.metric == "perplexity")
    high.loc[where, ["mean", "ci_low", "ci_high"]] = 1e30
    low.loc[where, ["mean", "ci_low", "ci_high"]] = 1e-3
    grid = choice_grid({"a": (high, "zero"), "b": (low, "zero")})
    row = [r for r in grid.splitlines() if "than inhibiting random" in r and "perplexity" in r][0]
    assert [c.strip() for c in row.split("|")[3:6]] == ["yes", "no (the other way round)", "**no**"]

    # one run's verdicts beside another's: bold where they differ, counted in the heading
    from llm2nifti.intervention.reproduce import beside_grid

    site = lambda summ: [{"site": "mlp", "summary": summ, "evaluation": {"ablations": ["zero"]}}]  # noqa: E731
    text = beside_grid(site(high), site(low), "stable", "single")
    assert "Each cell: stable / single" in text and "verdicts)." in text
    row = [r for r in text.splitlines() if "than inhibiting random" in r and "perplexity" in r][0]
    assert "**yes / no (the other way round)**" in row
    assert "(0 of " in beside_grid(site(high), site(high), "a", "b")
    # reproduce --into: two working folders cut short after one site, one page, one section
    import shutil

    from llm2nifti.intervention.reproduce import main as reproduce

    for name, summ in (("a", high), ("b", low)):
        (tmp_path / name / "evaluation" / "mlp").mkdir(parents=True)
        summ.to_csv(tmp_path / name / "evaluation" / "mlp" / "summary.tsv", sep="\t", index=False)
        shutil.copyfile(out / "evaluation.json", tmp_path / name / "evaluation" / "mlp" / "evaluation.json")
    page = tmp_path / "results.md"
    page.write_text("# Results\n\n## Site `mlp`\n\ntext\n")
    for _ in range(2):  # a second call replaces the section
        reproduce(["--work", str(tmp_path / "a"), "--beside", str(tmp_path / "b"), "--into", str(page)])
    text = page.read_text()
    assert text.count("## Verdicts beside another run's") == 1 and text.endswith("text\n")
    assert "**yes / no (the other way round)**" in text and "`--beside b`" in text

    table = results_markdown(summary).splitlines()
    assert table[0].startswith("| condition | sets |") and len(table) == 2 + summary.condition.nunique()
    assert any(line.startswith("| inhibit random | 2 | 5 |") and "range" in line for line in table)


def test_evaluate_refuses_scanned_text(tiny_scan, tiny_model_dir, networks_tsv, text_file, tmp_path):
    res, _ = tiny_scan
    r = CliRunner().invoke(main, [
        "evaluate", str(networks_tsv), "--dataset", str(res.root), "--output", str(tmp_path / "e"),
        "--model", str(tiny_model_dir), "--heldout", str(text_file), "--task", "none", "-q"])
    assert r.exit_code == 2
    assert r.output.strip().startswith("Error:") and "held-out" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


def test_prune_command(tiny_model_dir, networks_tsv, heldout, tmp_path):
    out = tmp_path / "pruned"
    r = CliRunner().invoke(main, ["prune", str(networks_tsv), "--output", str(out), "--model",
                                  str(tiny_model_dir), "--heldout", str(heldout), "--remove",
                                  "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "width 128 -> 126" in r.output
    report = json.loads((out / "llm2nifti_prune.json").read_text())
    assert report["kept_per_layer"] == {"0": 126, "1": 125}
    assert report["max_abs_logit_difference_pruned_vs_masked"] < 1e-4
    r2 = CliRunner().invoke(main, ["prune", str(networks_tsv), "--output", str(out), "--model",
                                   str(tiny_model_dir), "--heldout", str(heldout)])
    assert r2.exit_code == 2 and "exists" in r2.output


def test_evaluate_zero_and_mean_ablation(tiny_scan, tiny_model_dir, networks_tsv, heldout, tmp_path):
    res, _ = tiny_scan
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, [
        "evaluate", str(networks_tsv), "--dataset", str(res.root), "--output", str(out),
        "--model", str(tiny_model_dir), "--heldout", str(heldout), "--task", "none",
        "--max-doc-tokens", "24", "--seeds", "2", "--bootstrap", "100", "--amplify", "none",
        "--ablation", "zero,mean", "--threads", "1", "-q"])
    assert r.exit_code == 0, r.output
    assert "perplexity, inhibit-mean: do the network neurons hurt more than random?" in r.output
    results = pd.read_csv(out / "results.tsv", sep="\t")
    main_rows = results[results.group == "main"]
    assert set(main_rows.ablation) == {"zero", "mean"}
    for ablation, prefix in (("zero", "inhibit"), ("mean", "inhibit-mean")):
        rows = main_rows[main_rows.ablation == ablation]
        assert set(rows.condition) >= {f"{prefix} key", f"{prefix} random", f"retain{prefix[7:]} key"}
    zero = results[results.condition == "inhibit key"].value.iloc[0]
    mean = results[results.condition == "inhibit-mean key"].value.iloc[0]
    assert zero != mean  # the two kinds put different values in place of the units
    assert json.loads((out / "evaluation.json").read_text())["ablations"] == ["zero", "mean"]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["labelled", "multiple-choice", "questions"])
def test_evaluate_runs_each_task_format(kind, tiny_scan, tiny_model_dir, networks_tsv, tmp_path):
    res, _ = tiny_scan
    words = ["quiet harbour", "mountain roads", "old library", "river boats", "green valley",
             "tall tower"]
    extra = []
    if kind == "labelled":  # the byte tokenizer: one-character label words after "Label: "
        task = _write_jsonl(tmp_path / "sst.jsonl", [
            {"text": f"A text about a {w}.", "label": "pos" if i % 2 else "neg"}
            for i, w in enumerate(words)])
        extra = ["--template", "{text}\\nLabel: ", "--label-words", "pos=P,neg=N"]
        metrics = {"accuracy"}
    elif kind == "multiple-choice":
        task = _write_jsonl(tmp_path / "mc.jsonl", [
            {"prompt": f"Where? A {w}:", "choices": ["here", "there", "nowhere"], "answer": i % 3}
            for i, w in enumerate(words)])
        metrics = {"accuracy"}
    else:
        task = _write_jsonl(tmp_path / "qa.jsonl", [
            {"context": f"It was a {w}.", "question": "What was it?", "answers": [w]} for w in words])
        extra = ["--max-new-tokens", "4"]
        metrics = {"exact_match", "f1"}
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, [
        "evaluate", str(networks_tsv), "--dataset", str(res.root), "--output", str(out),
        "--model", str(tiny_model_dir), "--heldout", "none", "--task", str(task), *extra,
        "--seeds", "2", "--amplify", "none", "--bootstrap", "100", "--threads", "1", "-q"])
    assert r.exit_code == 0, r.output
    results = pd.read_csv(out / "results.tsv", sep="\t")
    assert set(results.metric) == metrics
    assert results.n_items.eq(6).all()
    values = results[results.metric.isin(metrics)].value
    assert values.between(0, 1).all()
    metric = sorted(metrics)[0]
    assert f"{metric}, inhibit: do the network neurons hurt more than random?" in r.output
    settings = json.loads((out / "evaluation.json").read_text())
    assert settings["task"] == task.stem and settings["overlap_with_scan"] == {"task": []}


def test_evaluate_refuses_multi_token_label_words(tiny_scan, tiny_model_dir, networks_tsv, tmp_path):
    res, _ = tiny_scan
    task = _write_jsonl(tmp_path / "sst.jsonl", [{"text": "a b c", "label": 0}, {"text": "d e", "label": 1}])
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, [
        "evaluate", str(networks_tsv), "--dataset", str(res.root), "--output", str(out),
        "--model", str(tiny_model_dir), "--heldout", "none", "--task", str(task),
        "--label-words", "0=negative,1=positive", "-q"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "not single tokens" in r.output and not out.exists()
