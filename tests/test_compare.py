"""Comparing models: planted word-level latents read through two tokenizers, nulls, verdicts."""

from __future__ import annotations

import json
from html import unescape

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.stats import spearmanr

from llm2nifti.analysis.compare import (Alignment, correlation_matrix, intermodel_correlation,
                                        lineage_verdict, match_score, null_scores)
from llm2nifti.analysis.fingerprints import fingerprint
from llm2nifti.cli.main import main
from planted import (networks_table, reader_documents, trained_tokenizer, word_latents,
                     write_reader)


@pytest.fixture(scope="module")
def readers(tmp_path_factory):
    """a (byte-level BPE) and b, b2 (WordPiece, other widths) share latents; c does not;
    bperm is b with every layer's units permuted. Returns (root, {name: (layout, sets)})."""
    root = tmp_path_factory.mktemp("readers") / "ds"
    docs = reader_documents()
    bpe, wp = trained_tokenizer("bpe", docs), trained_tokenizer("wordpiece", docs)
    shared, other = word_latents(docs, seed=1), word_latents(docs, seed=2)
    perm = np.random.default_rng(7).permutation(56)
    made = {
        "a": write_reader(root, "a", docs, bpe, shared, width=64, seed=1),
        "b": write_reader(root, "b", docs, wp, shared, width=56, seed=2),
        "bperm": write_reader(root, "bperm", docs, wp, shared, width=56, seed=2, perm=perm),
        "btwo": write_reader(root, "btwo", docs, bpe, shared, width=48, seed=4),
        "c": write_reader(root, "c", docs, wp, other, width=56, seed=3),
    }
    tables = {}
    for name, (layout, sets) in made.items():
        tables[name] = networks_table(root.parent / f"{name}_networks.tsv", layout, sets)
    return root, made, tables


def test_correlation_and_matching_agree_with_scipy():
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((60, 3)), rng.standard_normal((60, 4))
    C = correlation_matrix(A, B)
    assert C.shape == (3, 4)
    assert np.isclose(C[1, 2], spearmanr(A[:, 1], B[:, 2])[0])
    B[:, [3, 0, 1]] = A + 0.01 * rng.standard_normal((60, 3))
    rows, cols, score = match_score(correlation_matrix(A, B, "pearson"))
    assert cols.tolist() == [3, 0, 1] and score > 0.99
    # a network reported with the other sign is the same network
    B[:, 0] *= -1
    rows, cols, flipped = match_score(correlation_matrix(A, B, "pearson"))
    assert cols.tolist() == [3, 0, 1] and flipped == pytest.approx(score)


def test_lineage_verdict_needs_chance_and_every_independent_model():
    assert lineage_verdict(0.9, 0.001, {"x": 0.5, "y": 0.7})[0] == "derived"
    assert lineage_verdict(0.9, 0.2, {"x": 0.5})[0] == "not shown"
    verdict, reason = lineage_verdict(0.6, 0.001, {"x": 0.5, "y": 0.7})
    assert verdict == "not shown" and "y" in reason
    assert lineage_verdict(0.9, 0.001, {})[0] == "not tested"


def test_planted_lineage_is_found_and_independent_latents_stay_in_the_null(readers):
    root, _, tables = readers
    res = fingerprint(root, "a", ["b"], independent=["c"], n_permutations=1000,
                      networks={k: tables[k] for k in ("a", "b", "c")})
    s = res.summary.set_index("participant")
    assert s.loc["b", "score"] > 0.9 and s.loc["b", "p"] <= 0.002
    assert s.loc["b", "n_above"] == 4 and s.loc["b", "verdict"] == "derived"
    assert s.loc["b", "null"] == "documents" and s.loc["b", "null_95"] < 0.3
    assert s.loc["c", "p"] > 0.05 and s.loc["c", "score"] < s.loc["c", "null_95"] + 0.05
    pairs = res.pairs["b"]  # matched network k lives in layer k of both: same relative depth
    np.testing.assert_allclose(pairs["reference_depth"], pairs["depth"])
    rsa = res.rsa["b"]
    off = rsa.rsa[~np.eye(4, dtype=bool)]
    assert np.diag(rsa.rsa).min() > 0.8 > 0.3 > off.max()
    assert (np.diag(rsa.p) <= 0.01).all() and (rsa.p[~np.eye(4, dtype=bool)] > 0.05).all()
    assert np.diag(rsa.cka).min() > 0.8 > 0.3 > rsa.cka[~np.eye(4, dtype=bool)].max()
    assert np.diag(res.rsa["c"].rsa).max() < 0.3
    written = json.loads(res.paths["json"].read_text())
    assert len(written["Comparisons"][0]["Null"]) == 1000


def test_permuting_units_leaves_the_score_unchanged_exactly(readers):
    root, _, tables = readers
    res = fingerprint(root, "a", ["b", "bperm"], n_permutations=50, rsa=False,
                      networks={k: tables[k] for k in ("a", "b", "bperm")})
    s = res.summary.set_index("participant")
    assert s.loc["b", "score"] == s.loc["bperm", "score"]
    np.testing.assert_array_equal(res.matrices["b"]["spearman"].to_numpy(),
                                  res.matrices["bperm"]["spearman"].to_numpy())
    np.testing.assert_array_equal(res.nulls["b"], res.nulls["bperm"])


def test_intermodel_correlation_tells_shared_from_idiosyncratic(readers):
    root, _, tables = readers
    res = fingerprint(root, "a", ["b", "btwo"], n_permutations=50, rsa=False,
                      networks={k: tables[k] for k in ("a", "b", "btwo")})
    assert res.isc["shared"].all() and (res.isc["ci_low"] > 0.5).all()
    with_c = fingerprint(root, "a", ["b", "btwo"], independent=["c"], n_permutations=50,
                         rsa=False, networks={k: tables[k] for k in ("a", "b", "btwo", "c")})
    isc = with_c.isc
    assert (isc[["r_a", "r_b", "r_btwo"]] > 0.5).all().all() and (isc["r_c"].abs() < 0.2).all()
    assert isc["shared"].sum() < len(isc) and (isc["loo_r"] < res.isc["loo_r"].min()).all()


def test_circular_null_with_few_documents_and_refusal_with_too_few_words():
    from llm2nifti.errors import UsageError

    rng = np.random.default_rng(0)
    z = rng.laplace(size=(200, 2))
    docs = np.repeat(["d0", "d1", "d2"], [70, 70, 60])
    al = Alignment(z + 0.1 * rng.standard_normal(z.shape), z, docs)
    null, kind = null_scores(al, 200)
    assert kind == "circular" and null.max() < al.score()
    with pytest.raises(UsageError, match="common words"):
        null_scores(Alignment(z[:20], z[:20], docs[:20]), 10)


def test_intermodel_correlation_of_independent_series_is_near_zero():
    rng = np.random.default_rng(1)
    docs = np.repeat([f"d{i}" for i in range(8)], 40)
    series = rng.standard_normal((2, 320, 3))
    res = intermodel_correlation(series, docs, n_boot=100, n_null=100)
    assert (np.abs(res["mean"]) < 0.15).all() and (res["p"] > 0.01).all()


def test_rsa_matches_rsatoolbox(readers):
    from rsatoolbox.rdm import RDMs, compare

    from llm2nifti.analysis.rsa import rsa_matrix

    rng = np.random.default_rng(0)
    Va, Vb = rng.random((3, 45)), rng.random((2, 45))
    observed, p, null_max = rsa_matrix(Va, Vb, n_permutations=20)
    expected = compare(RDMs(Va), RDMs(Vb), method="corr")
    np.testing.assert_allclose(observed, expected, atol=1e-12)
    assert p.shape == (3, 2) and len(null_max) == 20


def test_fingerprint_cli_writes_its_outputs(readers):
    root, _, tables = readers
    args = ["fingerprint", str(root), "-r", "a", "-c", "b", "-i", "c", "--n-permutations", "100",
            "--networks-tsv", f"a={tables['a']}", "--networks-tsv", f"b={tables['b']}",
            "--networks", f"c={tables['c']}", "-q"]  # --networks: the option's former name
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "sub-b (candidate)" in out.output and "derived" in out.output
    folder = root / "derivatives" / "llm2nifti-fingerprint" / "sub-a"
    names = {p.name for p in folder.iterdir()}
    for suffix in ("fingerprint.tsv", "fingerprint.json", "depth.png", "rsa.png",
                   "desc-b_spearman.tsv", "desc-b_pairs.tsv", "desc-b_rsa.tsv", "desc-b_cka.tsv",
                   "desc-b_fingerprint.png"):
        assert any(n.endswith(suffix) for n in names), suffix
    summary = pd.read_csv(folder / "sub-a_task-planted_fingerprint.tsv", sep="\t")
    assert summary.set_index("participant").loc["b", "verdict"] == "derived"
    page = CliRunner().invoke(main, ["report", str(root), "--participant", "a"])
    assert page.exit_code == 0, page.output
    html = (root / "derivatives" / "llm2nifti-report" / "sub-a.html").read_text()
    assert "Fingerprints" in html and "derived" in html and html.count("data:image/png") >= 3


@pytest.mark.parametrize("args, message", [
    (["-r", "a", "-c", "zz"], "unknown participant 'zz'"),
    (["-r", "a", "-c", "a"], "is the reference"),
    (["-r", "a", "-c", "b", "-i", "b"], "named twice"),
    (["-r", "a", "-c", "b", "--n-permutations", "0"], "at least 1"),
    (["-r", "a", "-c", "b", "--networks", "q=x.tsv"], "not compared"),
    (["-r", "a", "-c", "lonely"], "no common documents"),
    (["-r", "a", "-c", "b", "--min-stability", "high"], "give a number, auto or all"),
])
def test_bad_comparisons_get_one_line_and_write_nothing(readers, tmp_path, args, message):
    import shutil

    root, _, _ = readers
    copy = tmp_path / "ds"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("llm2nifti-fingerprint"))
    docs = reader_documents(n_documents=8, seed=9)
    renamed = [type(d)(f"other{i}", d.text) for i, d in enumerate(docs)]
    write_reader(copy, "lonely", renamed, trained_tokenizer("bpe", renamed),
                 word_latents(renamed), width=32, seed=5)
    out = CliRunner().invoke(main, ["fingerprint", str(copy), *args, "-q"])
    assert out.exit_code == 2, out.output
    assert message in out.output and len(out.output.strip().splitlines()) == 1
    assert not (copy / "derivatives" / "llm2nifti-fingerprint").exists()
    assert not (copy / "derivatives" / "llm2nifti-canica").exists()


def test_fingerprint_compares_the_reference_networks_that_recur_by_default(readers, tmp_path):
    """By default the comparison keeps the reference's networks of stability 0.9 or more (the
    stabilities planted in its table), `all` keeps every one, and a reference decomposed once
    is compared whole and said to be."""
    import shutil

    from llm2nifti.analysis.stability import stability_paths

    root, _, _ = readers
    copy = tmp_path / "ds"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("llm2nifti-fingerprint"))
    out_dir = copy / "derivatives" / "llm2nifti-fingerprint" / "sub-a"
    common = [str(copy), "-r", "a", "-c", "b", "-k", "8", "-t", "2", "--n-permutations", "50",
              "--no-rsa", "-q"]

    def compared(*extra, n_runs=5):
        out = CliRunner().invoke(main, ["fingerprint", *common, "--n-runs", str(n_runs), *extra])
        assert out.exit_code == 0, out.output
        record = json.loads((out_dir / "sub-a_task-planted_fingerprint.json").read_text())
        matrix = pd.read_csv(out_dir / "sub-a_task-planted_desc-b_spearman.tsv", sep="\t",
                             index_col=0)
        return out.output, record["ReferenceMinStability"], list(matrix.index)

    compared()  # fingerprint's own maps (desc-fingerprint), reused while its options stay
    path, _ = stability_paths(next((copy / "derivatives" / "llm2nifti-canica" / "sub-a").rglob(
        "*_desc-fingerprint_components.nii")))
    planted = [0.99, 0.95, 0.5, 0.91, 0.2, 0.89, 0.97, 0.3]
    pd.read_csv(path, sep="\t").assign(stability=planted).to_csv(path, sep="\t", index=False)
    output, least, rows = compared()
    assert least == 0.9 and rows == ["FN00", "FN01", "FN03", "FN06"]
    assert "compared the 4 networks of sub-a with a stability of 0.9" in output
    page = CliRunner().invoke(main, ["report", str(copy), "--participant", "a"])
    assert page.exit_code == 0, page.output
    html = unescape((copy / "derivatives" / "llm2nifti-report" / "sub-a.html").read_text())
    assert ("sub-a's networks rest on 5 clustered decompositions; those of stability 0.9 or "
            "more compared") in html
    output, least, rows = compared("--min-stability", "0.95")
    assert least == 0.95 and rows == ["FN00", "FN01", "FN06"]
    output, least, rows = compared("--min-stability", "all")
    assert least is None and len(rows) == 8 and "compared the" not in output
    pd.read_csv(path, sep="\t").assign(stability=0.5).to_csv(path, sep="\t", index=False)
    output, least, rows = compared()
    assert least is None and len(rows) == 8
    assert "no network of sub-a has a stability of 0.9 or more: every one compared" in output

    output, least, rows = compared(n_runs=1)
    assert least is None and len(rows) == 8
    assert "networks of sub-a, sub-b rest on one decomposition (--n-runs 1)" in output
