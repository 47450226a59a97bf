import numpy as np
import pytest
import torch

from llm2nifti.errors import UsageError
from llm2nifti.acquisition.recording import Recorder, record
from llm2nifti.sites import parse_layers, resolve_site


def test_llama_mlp_site_is_down_proj_input(llama):
    site = resolve_site(llama)
    assert site.module_name(1) == "model.layers.1.mlp.down_proj"
    assert site.hook == "pre" and site.width == 128 and site.layers == (0, 1)


def test_gpt2_mlp_site_is_c_proj_input(gpt2):
    site = resolve_site(gpt2)
    assert site.module_name(0) == "transformer.h.0.mlp.c_proj"
    assert site.hook == "pre" and site.width == 256


def test_residual_site_width_is_hidden_size(llama):
    site = resolve_site(llama, "residual", "1")
    assert site.width == 64 and site.layers == (1,) and site.module_name(1) == "model.layers.1"


def test_gpt_neox_and_gemma3_resolve():
    from transformers import Gemma3TextConfig, GPTNeoXConfig, GPTNeoXForCausalLM
    from transformers import Gemma3ForCausalLM

    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, intermediate_size=96))
    s = resolve_site(neox)
    assert s.module_name(1) == "gpt_neox.layers.1.mlp.dense_4h_to_h" and s.width == 96
    gemma = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, num_key_value_heads=1,
                                               head_dim=16, intermediate_size=48))
    s = resolve_site(gemma)
    assert s.module_name(0) == "model.layers.0.mlp.down_proj" and s.width == 48


def test_opt_fc2_under_the_layer_is_found_from_structure():
    from transformers import OPTConfig, OPTForCausalLM

    opt = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                   ffn_dim=64, num_attention_heads=2, word_embed_proj_dim=32))
    s = resolve_site(opt)
    assert s.module_name(0) == "model.decoder.layers.0.fc2" and s.hook == "pre" and s.width == 64
    assert resolve_site(opt, "attn").module_name(0) == "model.decoder.layers.0.self_attn.out_proj"


def test_a_site_the_model_lacks_is_refused_naming_the_sites_it_has(llama):
    with pytest.raises(UsageError, match="no experts units: its sites are mlp, mlp-out, attn, residual"):
        resolve_site(llama, "experts")


@pytest.mark.parametrize("spec, expected", [("0-2", (0, 1, 2)), ("5,7", (5, 7)),
                                            ("0-1,9", (0, 1, 9)), (None, tuple(range(10)))])
def test_parse_layers(spec, expected):
    assert parse_layers(spec, 10) == expected


@pytest.mark.parametrize("spec", ["12", "3-1", "a", "-1"])
def test_parse_layers_refuses_bad_specs(spec):
    with pytest.raises(UsageError):
        parse_layers(spec, 10)


def test_llama_recording_equals_gated_mlp_computed_by_hand(llama):
    ids = torch.arange(3, 40).reshape(1, -1)
    site = resolve_site(llama)
    inputs = {}
    hooks = [llama.model.layers[l].mlp.register_forward_pre_hook(
        lambda m, a, l=l: inputs.__setitem__(l, a[0].detach())) for l in (0, 1)]
    X = record(llama, site, ids[0])
    for h in hooks:
        h.remove()
    for k, l in enumerate((0, 1)):
        mlp = llama.model.layers[l].mlp
        with torch.no_grad():
            expected = mlp.act_fn(mlp.gate_proj(inputs[l])) * mlp.up_proj(inputs[l])
        np.testing.assert_allclose(X[:, k * 128:(k + 1) * 128], expected[0].numpy(), rtol=1e-5, atol=1e-6)


def test_gpt2_recording_equals_gelu_of_c_fc(gpt2):
    ids = torch.arange(3, 30).reshape(1, -1)
    captured = {}
    h = gpt2.transformer.h[1].mlp.register_forward_pre_hook(
        lambda m, a: captured.__setitem__("x", a[0].detach()))
    X = record(gpt2, resolve_site(gpt2, layers="1"), ids[0])
    h.remove()
    mlp = gpt2.transformer.h[1].mlp
    with torch.no_grad():
        expected = mlp.act(mlp.c_fc(captured["x"]))[0].numpy()
    np.testing.assert_allclose(X, expected, rtol=1e-5, atol=1e-6)


def test_recorder_removes_hooks_even_on_error(llama):
    site = resolve_site(llama)
    with pytest.raises(RuntimeError, match="boom"):
        with Recorder(llama, site):
            raise RuntimeError("boom")
    assert all(not m._forward_pre_hooks for _, m in site.modules(llama))
