"""The mlp-out and attn sites: recorded units equal an independent computation, and inhibiting a
unit equals zeroing the weights that write it (mlp-out) or read it (attn)."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_gpt2, tiny_llama
from llm2nifti.acquisition.recording import record
from llm2nifti.intervention import intervene
from llm2nifti.sites import resolve_site


def tiny_gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=258, hidden_size=24, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                           intermediate_size=48, max_position_embeddings=128)
    return Gemma3ForCausalLM(cfg).eval()


MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "gemma3": tiny_gemma3}
SELECTED = {0: [1, 5, 11], 1: [0, 3, 20]}


def _ids(seed=0):
    return torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(seed))


def _block(model, layer):
    return model.transformer.h[layer] if model.config.model_type == "gpt2" else \
        model.model.layers[layer]


def _linear(module, x):
    """A Linear (weight out x in) or GPT-2 Conv1D (weight in x out) applied by hand."""
    w = module.weight
    y = x @ (w if type(module).__name__ == "Conv1D" else w.T)
    return y + module.bias if module.bias is not None else y


def test_widths(llama, gpt2):
    g = tiny_gemma3()
    assert resolve_site(g, "attn").width == 32 and resolve_site(g, "mlp-out").width == 24
    assert resolve_site(g, "attn").head_dim == 16 and resolve_site(g, "attn").head(17) == 1
    assert resolve_site(llama, "attn").width == 64 and resolve_site(gpt2, "mlp-out").width == 64


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_mlp_out_is_the_down_projection_of_the_mlp_neurons(arch):
    model = MODELS[arch]()
    ids = _ids()
    hidden = record(model, resolve_site(model, "mlp"), ids)
    out = record(model, resolve_site(model, "mlp-out"), ids)
    site = resolve_site(model, "mlp")
    for k, layer in enumerate(site.layers):
        h = torch.as_tensor(hidden[:, k * site.width:(k + 1) * site.width])
        down = _block(model, layer).mlp.c_proj if arch == "gpt2" else _block(model, layer).mlp.down_proj
        with torch.no_grad():
            expected = _linear(down, h).numpy()
        width = out.shape[1] // len(site.layers)
        torch.testing.assert_close(torch.as_tensor(out[:, k * width:(k + 1) * width]),
                                   torch.as_tensor(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_attn_units_projected_are_the_attention_output(arch):
    model = MODELS[arch]()
    ids = _ids()
    site = resolve_site(model, "attn")
    units = record(model, site, ids)
    outputs = {}
    attn_name = "attn" if arch == "gpt2" else "self_attn"
    handles = [getattr(_block(model, l), attn_name).register_forward_hook(
        lambda m, a, o, l=l: outputs.__setitem__(l, o[0].detach())) for l in site.layers]
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    for k, layer in enumerate(site.layers):
        attn = getattr(_block(model, layer), attn_name)
        proj = attn.c_proj if arch == "gpt2" else attn.o_proj
        with torch.no_grad():
            got = _linear(proj, torch.as_tensor(units[:, k * site.width:(k + 1) * site.width]))
        torch.testing.assert_close(got, outputs[layer][0], rtol=1e-5, atol=1e-5)


def _zero_by_hand(model, kind, selected):
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer, idx in selected.items():
            b = _block(model, layer)
            if kind == "mlp-out":  # the weights that write the unit (and its bias)
                m = b.mlp.c_proj if model.config.model_type == "gpt2" else b.mlp.down_proj
                if type(m).__name__ == "Conv1D":
                    m.weight[:, idx] = 0
                else:
                    m.weight[idx, :] = 0
                if m.bias is not None:
                    m.bias[idx] = 0
            else:  # attn: the weights that read the unit
                m = b.attn.c_proj if model.config.model_type == "gpt2" else b.self_attn.o_proj
                if type(m).__name__ == "Conv1D":
                    m.weight[idx, :] = 0
                else:
                    m.weight[:, idx] = 0
    return model


@pytest.mark.parametrize("kind", ["mlp-out", "attn"])
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_inhibit_equals_zeroing_weights(arch, kind):
    model = MODELS[arch]()
    ids = _ids(1)
    edited = _zero_by_hand(model, kind, SELECTED)
    with torch.no_grad():
        base = model(ids).logits
        expected = edited(ids).logits
        with intervene(model, SELECTED, mode="inhibit", site=kind):
            got = model(ids).logits
    assert not torch.allclose(base, expected, atol=1e-4)  # the units matter
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mlp-out", "attn"])
def test_convert_names_files_with_alphanumeric_labels(tmp_path, tokenizer, text_file, kind):
    from bids_llm.dataset import Dataset
    from llm2nifti.acquisition.convert import scan

    res = scan(tmp_path / "ds", "tinyllama", text_file, neurons=kind, run_tokens=100,
               progress=False, loaded=(tiny_llama(), tokenizer), threads=1)
    label = kind.replace("-", "")
    assert all(f"_acq-{label}_" in p.name for p in res.runs)
    ds = Dataset(res.root)
    assert [r.site_kind for r in ds.runs(site=kind)] == [kind] * len(res.runs)
    assert ds.layout(site=kind).site.kind == kind and ds.mask_path("tinyllama", kind).is_file()
    table = ds.label_path("tinyllama", kind).with_suffix(".tsv").read_text().splitlines()
    assert table[0].endswith("head") == (kind == "attn")
    if kind == "attn":  # 4 heads of 16 units: unit 17 of layer 1 is in head 1
        row = next(r.split("\t") for r in table[1:] if r.split("\t")[1] == "L1N17")
        assert row[-1] == "1"


def test_decompose_and_networks_infer_the_only_site(tmp_path, tokenizer, text_file):
    """A dataset of mlp-out runs needs no --site; with two sites the error names both."""
    import json

    from click.testing import CliRunner

    from cli.main import main
    from llm2nifti.acquisition.convert import scan

    res = scan(tmp_path / "ds", "tinyllama", text_file, neurons="mlp-out", run_tokens=100,
               progress=False, loaded=(tiny_llama(), tokenizer), threads=1)
    ds = str(res.root)
    r = CliRunner().invoke(main, ["decompose", ds, "--backend", "fast", "-k", "2", "--n-init", "1"])
    assert r.exit_code == 0, r.output
    maps = next((res.root / "derivatives").rglob("*_acq-mlpout_*desc-canica_components.nii"))
    r = CliRunner().invoke(main, ["networks", str(maps), "-d", ds])
    assert r.exit_code == 0, r.output
    table = next((res.root / "derivatives" / "llm2nifti-networks").glob("*_networks.json"))
    assert json.loads(table.read_text())["Site"] == "mlp-out"

    scan(tmp_path / "ds", "tinyllama", text_file, neurons="mlp", run_tokens=100,
         progress=False, loaded=(tiny_llama(), tokenizer), threads=1)
    r = CliRunner().invoke(main, ["decompose", ds, "--backend", "fast", "-k", "2", "--n-init", "1"])
    assert r.exit_code == 2 and "several sites (mlp, mlp-out): choose one with --site" in r.output
    r = CliRunner().invoke(main, ["networks", str(maps), "-d", ds])  # the image's acq entity
    assert r.exit_code == 0, r.output
    assert json.loads(table.read_text())["Site"] == "mlp-out"
