"""Interventions: exact against hand-edited weights, exact no-ops, and hooks always removed."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import tiny_gpt2, tiny_llama
from llm2nifti.errors import UsageError
from llm2nifti.intervention import attach, intervene
from llm2nifti.neuronset import NeuronSet
from llm2nifti.acquisition.recording import record
from llm2nifti.sites import resolve_site

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
SELECTED = {0: [1, 5, 17], 1: [0, 3, 100]}


def _ids(batch=2, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, length), generator=g)


def _zero_readers(model, selected):
    """Zero, by hand, the weights that read each selected MLP neuron."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer, idx in selected.items():
            if model.config.model_type == "gpt2":  # Conv1D: weight is (in, out)
                model.transformer.h[layer].mlp.c_proj.weight[idx, :] = 0
            else:  # Linear: weight is (out, in)
                model.model.layers[layer].mlp.down_proj.weight[:, idx] = 0
    return model


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_inhibit_equals_zeroing_the_weights_that_read_the_neuron(arch):
    model = MODELS[arch]()
    ids = _ids()
    edited = _zero_readers(model, SELECTED)
    with torch.no_grad():
        base = model(ids).logits
        expected = edited(ids).logits
        with intervene(model, SELECTED, mode="inhibit"):
            got = model(ids).logits
    assert not torch.allclose(base, expected, atol=1e-4)  # the neurons matter
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_retain_all_is_the_baseline_exactly(arch):
    model = MODELS[arch]()
    site = resolve_site(model)
    everything = {l: np.arange(site.width) for l in site.layers}
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
        with intervene(model, everything, mode="retain") as iv:
            same = model(ids).logits
        assert iv.targets_ == {}
        fewer = {l: v[1:] for l, v in everything.items()}
        with intervene(model, fewer, mode="retain"):
            other = model(ids).logits
    assert torch.equal(base, same)
    assert not torch.allclose(base, other, atol=1e-5)


def test_retain_zeroes_every_other_neuron(llama):
    site = resolve_site(llama)
    ids = _ids(batch=1)
    with intervene(llama, {1: [2, 4]}, mode="retain"):
        X = record(llama, site, ids[0])
    w = site.width
    assert np.all(X[:, :w] == 0)  # layer 0 has no kept neuron: all zero
    kept = X[:, w:]
    assert np.all(kept[:, [i for i in range(w) if i not in (2, 4)]] == 0)
    assert np.all(kept[:, [2, 4]] != 0)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_amplify_adds_or_multiplies_at_the_recording_site(arch):
    model = MODELS[arch]()
    site = resolve_site(model)
    ids = _ids(batch=1)[0]
    base = record(model, site, ids)
    cols = [l * site.width + n for l, ns in SELECTED.items() for n in ns if l == 0]
    with intervene(model, {0: SELECTED[0]}, mode="amplify", value=2.5):
        added = record(model, site, ids)
    with intervene(model, {0: SELECTED[0]}, mode="amplify", scale=3.0):
        scaled = record(model, site, ids)
    np.testing.assert_allclose(added[:, cols], base[:, cols] + 2.5, rtol=1e-6)
    np.testing.assert_allclose(scaled[:, cols], base[:, cols] * 3.0, rtol=1e-6)
    others = [c for c in range(site.width) if c not in cols]
    np.testing.assert_array_equal(added[:, others], base[:, others])  # layer 0, untouched ones


def test_no_hook_remains_after_exit_also_on_error(llama):
    assert _hook_count(llama) == 0
    with intervene(llama, SELECTED):
        assert _hook_count(llama) == 2
    assert _hook_count(llama) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(llama, SELECTED, mode="retain"):
            assert _hook_count(llama) == 2
            raise RuntimeError("boom")
    assert _hook_count(llama) == 0
    iv = attach(llama, SELECTED, mode="amplify", scale=2.0)
    assert iv.attached and _hook_count(llama) == 2
    iv.remove()
    iv.remove()
    assert _hook_count(llama) == 0


def test_batches_and_generate_match_the_edited_model(gpt2):
    edited = _zero_readers(gpt2, SELECTED)
    ids = _ids(batch=3, length=6)
    with torch.no_grad():
        expected = edited.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=257)
        with intervene(gpt2, SELECTED):
            got = gpt2.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=257)
        plain = gpt2.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=257)
    assert torch.equal(got, expected)
    assert _hook_count(gpt2) == 0
    assert plain.shape == got.shape


def test_residual_site_and_gradients(llama):
    ids = _ids(batch=1)
    site = resolve_site(llama, "residual")
    with intervene(llama, {0: [0, 1]}, mode="inhibit", site=site):
        X = record(llama, site, ids[0])
        loss = llama(ids, labels=ids).loss
    loss.backward()
    assert np.all(X[:, [0, 1]] == 0) and np.any(X[:, 2] != 0)
    assert llama.model.embed_tokens.weight.grad is not None


def test_neuronset_from_networks_table(llama, tmp_path):
    ns = NeuronSet.from_pairs({"a": [(0, 1), (0, 5)], "b": [(0, 17), (1, 0), (1, 3), (1, 100)]})
    ns.to_tsv(tmp_path / "networks.tsv")
    ids = _ids()
    with torch.no_grad():
        with intervene(llama, NeuronSet.from_tsv(tmp_path / "networks.tsv")):
            got = llama(ids).logits
        with intervene(llama, SELECTED):
            expected = llama(ids).logits
    assert torch.equal(got, expected)


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "silence"}, "unknown intervention mode"),
    ({"mode": "amplify"}, "amplify needs"),
    ({"mode": "inhibit", "scale": 2.0}, "scale only"),
    ({"neurons": {5: [0]}}, "layer"),
    ({"neurons": {0: [128]}}, "out of range"),
])
def test_bad_input_is_a_usage_error(llama, kwargs, match):
    kwargs = dict({"neurons": SELECTED}, **kwargs)
    with pytest.raises(UsageError, match=match):
        intervene(llama, **kwargs)
    assert _hook_count(llama) == 0


def test_half_precision_model(llama):
    model = llama.to(torch.bfloat16)
    edited = _zero_readers(model, SELECTED)
    ids = _ids()
    with torch.no_grad():
        expected = edited(ids).logits
        with intervene(model, SELECTED, mode="inhibit"):
            got = model(ids).logits
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_mean_ablation_puts_each_unit_at_its_mean(arch):
    """Mean-ablated units read back as their means; the rest of the layer is untouched."""
    model = MODELS[arch]()
    ids = _ids()
    site = resolve_site(model)
    X = record(model, site, ids.reshape(1, -1))
    means = X.mean(0)  # layer-major over the site's layers
    selected = {0: [1, 5, 17]}
    with intervene(model, selected, mode="inhibit", ablation="mean", means=means):
        Y = record(model, site, ids.reshape(1, -1))
    cols = [1, 5, 17]
    np.testing.assert_allclose(Y[:, cols], np.broadcast_to(means[cols], (Y.shape[0], 3)), rtol=1e-6)
    others = np.setdiff1d(np.arange(site.width), cols)
    np.testing.assert_allclose(Y[:, others], X[:, others], rtol=1e-5, atol=1e-6)  # layer 0 rest
    assert not np.allclose(Y[:, site.width:], X[:, site.width:])  # layer 1 sees the change


def test_mean_retain_keeps_selected_and_sets_the_rest_to_their_means(llama):
    ids = _ids()
    site = resolve_site(llama)
    X = record(llama, site, ids.reshape(1, -1))
    means = {l: X[:, k * site.width:(k + 1) * site.width].mean(0) for k, l in enumerate(site.layers)}
    with intervene(llama, {1: [3, 4]}, mode="retain", ablation="mean", means=means):
        Y = record(llama, site, ids.reshape(1, -1))
    layer0 = Y[:, :site.width]
    np.testing.assert_allclose(layer0, np.broadcast_to(means[0], layer0.shape), rtol=1e-6)
    kept = Y[:, site.width + 3: site.width + 5]
    assert not np.allclose(kept, np.broadcast_to(means[1][3:5], kept.shape))


@pytest.mark.parametrize("kwargs,match", [
    (dict(ablation="median"), "unknown ablation"),
    (dict(ablation="mean"), "needs means"),
    (dict(ablation="mean", means=np.zeros(7)), "means hold 7 values"),
    (dict(ablation="mean", means=np.zeros(256), value=1.0), "leave value"),
    (dict(mode="amplify", value=1.0, ablation="mean", means=np.zeros(256)), "inhibit and retain"),
])
def test_bad_ablation_is_a_usage_error(llama, kwargs, match):
    with pytest.raises(UsageError, match=match):
        intervene(llama, SELECTED, **kwargs)
