"""Pruning: the pruned model equals the masked model, is smaller, and loads with plain transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_gpt2, tiny_llama
from llm2nifti.errors import UsageError
from llm2nifti.intervention import intervene
from llm2nifti.neuronset import NeuronSet
from llm2nifti.intervention.pruning import count_parameters, prune, prune_model

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
KEEP = {0: [1, 5, 17, 30, 31], 1: [0, 3, 100]}  # unequal counts: layer 1 gets inert padding


def _ids():
    return torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_pruned_equals_masked(arch):
    model = MODELS[arch]()
    pruned, widths = prune_model(model, KEEP)
    assert widths == {0: 5, 1: 3}
    ids = _ids()
    with torch.no_grad():
        with intervene(model, KEEP, mode="retain"):
            masked = model(ids).logits
        got = pruned(ids).logits
        full = model(ids).logits
    torch.testing.assert_close(got, masked, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full, masked, atol=1e-4)
    assert count_parameters(pruned) < count_parameters(model)
    hidden = model.config.hidden_size
    per_neuron = 3 * hidden if arch == "llama" else 2 * hidden + 1  # gate+up+down / c_fc(+bias)+c_proj
    width = 128 if arch == "llama" else 256
    assert count_parameters(model) - count_parameters(pruned) == 2 * (width - 5) * per_neuron


def test_prune_saves_a_folder_plain_transformers_loads(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    model = tiny_llama()
    nset = NeuronSet.from_pairs({"a": [(0, 1), (0, 5)], "b": [(1, 0), (1, 3), (1, 100)]})
    nset.to_tsv(tmp_path / "networks.tsv")
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("One short held-out text about a river.\nAnother about the sea.\n")
    res = prune(tmp_path / "networks.tsv", tmp_path / "pruned", heldout=heldout,
                loaded=(model, tokenizer), threads=1)
    rep = res.report
    assert rep["width_after"] == 3 and rep["inert_padding_neurons"] == 1
    assert rep["parameters_after"] < rep["parameters_before"]
    assert rep["bytes_after"] < rep["bytes_before"]
    assert rep["max_abs_logit_difference_pruned_vs_masked"] < 1e-4
    assert rep["perplexity_pruned"] == pytest.approx(rep["perplexity_masked"], rel=1e-4)
    assert json.loads((tmp_path / "pruned" / "llm2nifti_prune.json").read_text())["width_after"] == 3
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert loaded.config.intermediate_size == 3
    ids = _ids()
    with torch.no_grad(), intervene(model, nset, mode="retain"):
        masked = model(ids).logits
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, masked, rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError, match="exists"):
        prune(tmp_path / "networks.tsv", tmp_path / "pruned", heldout=heldout,
              loaded=(model, tokenizer), threads=1)


def test_remove_keeps_the_complement(llama):
    every = np.arange(128)
    keep = {0: np.setdiff1d(every, KEEP[0]), 1: np.setdiff1d(every, KEEP[1])}
    pruned, widths = prune_model(llama, keep)
    ids = _ids()
    with torch.no_grad(), intervene(llama, KEEP, mode="inhibit"):
        inhibited = llama(ids).logits
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, inhibited, rtol=1e-5, atol=1e-5)
    assert pruned.config.intermediate_size == 125


def test_prune_refuses_unknown_layers(llama):
    with pytest.raises(UsageError, match="layer"):
        prune_model(llama, {7: [0]})
