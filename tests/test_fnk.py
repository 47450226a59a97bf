"""FN@k: one decomposition per k, the union of its networks, kept alone and zeroed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from llm2nifti.analysis import Decomposition, StableDecomposition
from llm2nifti.analysis.selection import load_maps, maps_to_neurons
from llm2nifti.cli.main import main
from llm2nifti.errors import UsageError
from llm2nifti.intervention.experiment import plan_conditions
from llm2nifti.intervention.fnk import fn_at_k, parse_ks
from llm2nifti.neuronset import NeuronSet
from planted import make_planted

STABLE3 = StableDecomposition(Decomposition(backend="fast", n_init=3))  # 10 repeats, as FN@k's
STABLE2 = StableDecomposition(Decomposition(backend="fast", n_init=2))


def test_fn_at_k_is_the_union_of_all_planted_networks(tmp_path):
    root = tmp_path / "ds"
    layout, sets = make_planted(root, n_networks=4, size=10)
    (k, nset, path), = fn_at_k(root, [4], output=tmp_path / "nets", estimator=STABLE3)
    planted = np.sort(np.concatenate(sets))
    assert k == 4 and len(nset.names) == 4
    assert np.array_equal(np.unique(nset.global_index(layout)), planted)
    # a second call with the same settings reuses the decomposition
    before = path.stat().st_mtime_ns
    (_, again, path2), = fn_at_k(root, [4], output=tmp_path / "nets", estimator=STABLE3)
    assert path2 == path and path.stat().st_mtime_ns == before
    assert np.array_equal(again.global_index(layout), nset.global_index(layout))
    # other settings: a new decomposition, not the cached one
    (_, _, path3), = fn_at_k(root, [4], output=tmp_path / "nets", estimator=STABLE2)
    meta = json.loads(path3.with_suffix(".json").read_text())
    assert meta["Parameters"]["n_init"] == 2


def test_parse_ks_refuses_what_the_scan_cannot_give():
    assert parse_ks(["64", "10", "10"]) == [10, 64]
    with pytest.raises(UsageError, match="exceeds the 50 tokens"):
        parse_ks([10, 64], n_tokens=50)
    with pytest.raises(UsageError, match="at least 2"):
        parse_ks([1, 5])
    with pytest.raises(UsageError, match="whole numbers"):
        parse_ks(["10.5"])


def test_fnk_conditions_match_counts_per_layer():
    import llm2nifti.intervention.controls as C

    nset = NeuronSet.from_pairs({"0": [(0, 1), (1, 2)]})
    fnk = NeuronSet.from_pairs({"0": [(0, 1), (0, 5)], "1": [(1, 7), (1, 8), (1, 9)]})
    stats = pd.DataFrame({"layer": np.repeat([0, 1], 16), "neuron": np.tile(np.arange(16), 2),
                          "mean": 0.0, "std": 1.0, "peak": 1.0})
    conds = [c for c in plan_conditions(nset, stats, 16, seeds=[0, 1], controls=("random",),
                                        fnk_sets=[(3, fnk)], ablations=("zero", "mean"))
             if c.group == "fnk"]
    names = sorted({c.name for c in conds})
    assert names == sorted(f"{m} {s} @k=3" for m in ("inhibit", "retain", "inhibit-mean",
                                                     "retain-mean") for s in ("key", "random"))
    for c in conds:
        assert {l: len(v) for l, v in c.neurons.items() if len(v)} == {0: 2, 1: 3}
        assert c.n_networks == 3
    key = [c for c in conds if c.selection == "key"][0]
    assert C.count(key.neurons) == 5


def test_evaluate_k_runs_and_draws_the_fnk_curve(tiny_scan, tiny_model_dir, tmp_path):
    res, _ = tiny_scan
    nets = tmp_path / "n_networks.tsv"
    NeuronSet.from_pairs({"0": [(0, 1), (1, 2)]}).to_tsv(nets)
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("A new text about a quiet harbour.\nA second text about mountain roads.\n")
    out = tmp_path / "eval"
    # --k-threshold 0.9: every z-scored map has a unit at |z| >= 1 (ddof 0), so no FN@k is
    # empty whatever the CPU's rounding; the tiny model's largest |z| sit at 2.3 to 2.8.
    args = ["evaluate", str(nets), "--dataset", str(res.root), "--output", str(out),
            "--model", str(tiny_model_dir), "--heldout", str(heldout), "--task", "none",
            "--seeds", "2", "--amplify", "none", "--k", "2,3", "--k-n-init", "2",
            "--k-threshold", "0.9", "--bootstrap", "100", "--threads", "1", "-q"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "perplexity, retain FN@2" in r.output and "perplexity, inhibit FN@3" in r.output
    results = pd.read_csv(out / "results.tsv", sep="\t")
    fnk = results[results.group == "fnk"]
    assert set(fnk.condition) == {f"{m} {s} @k={k}" for m in ("inhibit", "retain")
                                  for s in ("key", "random") for k in (2, 3)}
    settings = json.loads((out / "evaluation.json").read_text())
    layout = res.layout
    assert [e["k"] for e in settings["fnk"]] == [2, 3]
    for entry in settings["fnk"]:  # the union, recomputed from the written components image
        union = np.unique(maps_to_neurons(load_maps(entry["components"], layout), layout,
                                          threshold=0.9).global_index(layout))
        n = fnk[(fnk.condition == f"retain key @k={entry['k']}")].n_neurons.iloc[0]
        assert n == len(union) > 0
    assert (out / "fnk.png").read_bytes()[:4] == b"\x89PNG"
    # k beyond the scan's tokens: one line, exit 2, nothing written
    bad_args = [str(tmp_path / "e2") if a == str(out) else "100000" if a == "2,3" else a for a in args]
    bad = CliRunner().invoke(main, bad_args)
    assert bad.exit_code == 2 and "exceeds the" in bad.output
    assert len(bad.output.strip().splitlines()) == 1 and not (tmp_path / "e2").exists()
