"""localize, connectivity and report from the command line, on a tiny model."""

from __future__ import annotations

import json

from click.testing import CliRunner

from llm2nifti.acquisition import localizer_documents
from llm2nifti.cli.main import main
from llm2nifti.neuronset import NeuronSet


def test_localize_connectivity_report(tmp_path, tiny_model_dir):
    table = tmp_path / "loc.jsonl"
    table.write_text("".join(json.dumps({"id": d.id, "text": d.text, "condition": d.condition})
                             + "\n" for d in localizer_documents(n_items=9)))
    ds = tmp_path / "ds"
    run = CliRunner().invoke
    r = run(main, ["localize", str(ds), "--model", str(tiny_model_dir), "--stimuli", str(table),
                   "--run-tokens", "500", "--threads", "1", "--top", "5", "-q",
                   "-c", "sentences - nonwords", "-c", "sentences - words"])
    assert r.exit_code == 0, r.output
    assert "recorded the localizer first" in r.output
    tables = sorted((ds / "derivatives" / "llm2nifti-glm").rglob("*_networks.tsv"))
    assert [t.name.split("contrast-")[1] for t in tables] == [
        "sentencesMinusNonwords_networks.tsv", "sentencesMinusWords_networks.tsv"]
    n_units = 2 * 128  # tiny Llama: 2 layers x 128 MLP units
    assert len(NeuronSet.from_tsv(tables[0])) == round(n_units * 5 / 100)
    r = run(main, ["localize", str(ds), "--task", "loc", "-q"])  # the runs are there: fit only
    assert r.exit_code == 0 and "recorded" not in r.output, r.output
    # the localizer's networks.tsv is read unchanged by prune (and evaluate, tested elsewhere)
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("A short text to measure perplexity on, read by the pruned model.\n")
    r = run(main, ["prune", str(tables[0]), "--output", str(tmp_path / "pruned"), "--model",
                   str(tiny_model_dir), "--heldout", str(heldout)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pruned" / "config.json").is_file()

    r = run(main, ["decompose", str(ds), "--task", "loc", "--backend", "fast", "-k", "3",
                   "--n-init", "2", "--threads", "1"])
    assert r.exit_code == 0, r.output
    zmaps = next((ds / "derivatives" / "llm2nifti-canica").rglob("*desc-canica_stat-z_components.nii"))
    r = run(main, ["connectivity", str(zmaps), "-d", str(ds), "--measure", "correlation,tangent",
                   "--compare", str(zmaps), "--min-iou", "0", "-q"])
    assert r.exit_code == 0, r.output
    assert "3 networks matched" in r.output and "r = 1.000" in r.output
    r = run(main, ["networks", str(zmaps), "-d", str(ds)])
    assert r.exit_code == 0, r.output

    r = run(main, ["report", str(ds)])
    assert r.exit_code == 0, r.output
    (page_path,) = (ds / "derivatives" / "llm2nifti-report").glob("sub-*.html")
    page = page_path.read_text()
    for section in ("dataset", "networks", "localizer", "connectivity"):
        assert f'<section id="{section}"' in page


def test_participants_are_named_with_or_without_their_prefix(tmp_path, tiny_model_dir, text_file):
    """`--participant sub-01` and `--participant 01` name the same participant, as in BIDS apps."""
    from bids_llm.dataset import Dataset

    ds = tmp_path / "ds"
    run = CliRunner().invoke
    r = run(main, ["convert", str(ds), "--model", str(tiny_model_dir), "--text", str(text_file),
                   "--participant", "sub-01", "--run-tokens", "128", "--threads", "1", "-q"])
    assert r.exit_code == 0, r.output
    assert [p.name for p in ds.glob("sub-*") if p.is_dir()] == ["sub-01"]
    runs = Dataset(ds).runs(participant="sub-01")
    assert runs and runs == Dataset(ds).runs(participant="01")
    for label in ("sub-01", "01"):
        r = run(main, ["decompose", str(ds), "--participant", label, "--backend", "fast", "-k", "3",
                       "--n-init", "2", "--threads", "1", "-q"])
        assert r.exit_code == 0, r.output
    found = sorted(p.relative_to(ds).parts[2] for p in (ds / "derivatives").rglob("*_components.nii"))
    assert set(found) == {"sub-01"}
    r = run(main, ["report", str(ds), "--participant", "sub-01"])
    assert r.exit_code == 0, r.output
    assert (ds / "derivatives" / "llm2nifti-report" / "sub-01.html").is_file()
