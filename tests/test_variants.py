"""Variants of known lineage (permuted, fine-tuned, random) and fingerprints of real scans."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_gpt2, tiny_llama
from llm2nifti.analysis import Decomposition, StableDecomposition
from llm2nifti.cli.main import main
from llm2nifti.intervention import finetune, permute_units, random_init


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_permuting_units_keeps_the_function_and_moves_the_units(make):
    from llm2nifti.sites import mlp_projections, resolve_site

    model = make()
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(0))
    before = model(input_ids=ids).logits
    site = resolve_site(model, "mlp")
    reader = mlp_projections(model, site, 0)[1][0].weight.detach().clone()
    perms = permute_units(model, seed=3)
    after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    moved = mlp_projections(model, site, 0)[1][0].weight.detach()
    assert not torch.equal(moved, reader)
    assert sorted(perms[0]) == list(range(site.width_of(0))) and perms[0] != sorted(perms[0])


def test_random_init_is_seeded_and_new():
    model = tiny_llama()
    a, b, c = random_init(model, 1), random_init(model, 1), random_init(model, 2)
    wa, wb, wc = (m.model.layers[0].mlp.down_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert not torch.equal(wa, model.model.layers[0].mlp.down_proj.weight)


def test_finetune_lowers_the_loss(tokenizer):
    from llm2nifti.acquisition.stimuli import Document

    model = tiny_llama()
    docs = [Document("d", "the cat sat on the mat. " * 40)]
    losses = finetune(model, tokenizer, docs, steps=30, lr=3e-3, seq_len=32)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_derive_cli_saves_a_loadable_variant(tiny_model_dir, tmp_path):
    out = tmp_path / "permuted"
    res = CliRunner().invoke(main, ["derive", str(out), "--kind", "permuted", "-m",
                                    str(tiny_model_dir), "-q", "--threads", "1"])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "variant.json").read_text())
    assert info["Variant"] == "permuted"
    from llm2nifti.models import load_model

    lm, _ = load_model(str(out))
    orig, _ = load_model(str(tiny_model_dir))
    ids = torch.arange(5, 25).reshape(1, -1)
    torch.testing.assert_close(lm(input_ids=ids).logits, orig(input_ids=ids).logits,
                               atol=1e-5, rtol=1e-5)
    again = CliRunner().invoke(main, ["derive", str(out), "--kind", "random", "-m",
                                      str(tiny_model_dir), "-q"])
    assert again.exit_code == 2 and "exists" in again.output


def test_fingerprint_of_scans_with_a_random_copy(tiny_model_dir, tmp_path):
    """The command scans a random copy on the reference's exact tokens and compares with it."""
    from llm2nifti.acquisition.convert import scan
    from llm2nifti.analysis.fingerprints import fingerprint
    from planted import reader_documents

    docs = reader_documents(n_documents=8, sentences=3)
    text = tmp_path / "docs.jsonl"
    text.write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in docs))
    permuted = tmp_path / "permuted"
    CliRunner().invoke(main, ["derive", str(permuted), "--kind", "permuted", "-m",
                              str(tiny_model_dir), "-q"])
    ds = tmp_path / "ds"
    for label, model in (("orig", tiny_model_dir), ("perm", permuted)):
        scan(ds, str(model), text, label=label, task="docs", run_tokens=200, progress=False,
             threads=1)
    # threshold 0.9: a z-scored map always has a unit at |z| >= 1, so no model's networks are
    # empty whatever the CPU (at 2.5, the tiny models' largest |z| sit within rounding of it)
    four = StableDecomposition(Decomposition(backend="fast", n_components=4, random_state=5),
                               n_repeats=50)
    res = fingerprint(ds, "orig", ["perm"], n_random=1, estimator=four, n_permutations=200,
                      threshold=0.9, random_state=5, rsa=False)
    s = res.summary.set_index("participant")
    assert s.loc["origrand5", "role"] == "random-init"
    ev = [pd.concat([pd.read_csv(p, sep="\t") for p in sorted(ds.glob(f"sub-{who}/func/*events.tsv"))])
          for who in ("orig", "origrand5")]
    np.testing.assert_array_equal(ev[0]["token_id"], ev[1]["token_id"])
    hashes = pd.read_csv(ds / "participants.tsv", sep="\t").set_index("participant_id")
    assert hashes.loc["sub-origrand5", "weights_sha256"] != hashes.loc["sub-orig", "weights_sha256"]
    # With a yardstick, the verdict is tested (a tiny random model's networks are unstable,
    # so which verdict is not asserted here; the planted tests assert it).
    assert s.loc["perm", "verdict"] in ("derived", "not shown")
    again = fingerprint(ds, "orig", ["perm"], n_random=1, estimator=four, n_permutations=200,
                        threshold=0.9, random_state=5, rsa=False)  # the copy is kept, not redone
    assert again.summary.equals(res.summary)
