"""One tiny model per structural pattern: sites found from structure, recorded exactly, changed exactly.

Every model is built offline from its type's default config (:func:`llm2nifti.tiny.tiny_model`).
For each pattern: the recorder leaves the logits bit-identical; recorded units equal an
independent computation; and for fused experts, inhibiting an expert's units equals zeroing
the matching slice of the fused weights.
"""

import copy

import numpy as np
import pytest
import torch

from llm2nifti.acquisition.recording import Recorder, record
from llm2nifti.errors import UsageError
from llm2nifti.intervention.hooks import intervene
from llm2nifti.layout import NeuronLayout
from llm2nifti.sites import Site, _get, resolve_site
from llm2nifti.tiny import tiny_model

IDS = torch.arange(5, 29).reshape(1, -1)


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(model_type, **overrides):
        key = (model_type, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = tiny_model(model_type, **overrides)
        return cache[key]
    return get


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def capture_inputs(module, fn):
    """Run ``fn`` and return the positional inputs ``module`` was called with."""
    seen = {}
    h = module.register_forward_pre_hook(lambda m, a, k: seen.setdefault("args", (a, k)),
                                         with_kwargs=True)
    try:
        fn()
    finally:
        h.remove()
    return seen["args"]


# ------------------------------------------------------------ dense patterns
@pytest.mark.parametrize("model_type, reader, width", [
    ("llama", "mlp.down_proj", 128),            # gated down_proj
    ("phi3", "mlp.down_proj", 128),             # one fused gate_up_proj
    ("gpt2", "mlp.c_proj", 256),                # Conv1D c_proj (n_inner unset: 4 x 64)
    ("gpt_neox", "mlp.dense_4h_to_h", 128),     # dense_4h_to_h
    ("opt", "fc2", 128),                        # fc2 directly under the layer
])
def test_dense_mlp_reader_found_and_recording_leaves_logits_unchanged(models, model_type, reader, width):
    m = models(model_type)
    site = resolve_site(m, "mlp")
    assert site.module_name(0).endswith(f".0.{reader}") and site.hook == "pre"
    assert site.width == width and site.uniform
    ref = logits(m)
    with Recorder(m, site) as rec:
        out = logits(m)
    assert torch.equal(ref, out)
    assert rec.matrix().shape == (IDS.shape[1], site.n_neurons)


def test_fused_gate_up_recording_equals_its_halves_by_hand(models):
    m = models("phi3")
    site = resolve_site(m, "mlp", "1")
    mlp = m.model.layers[1].mlp
    (x,), _ = capture_inputs(mlp, lambda: logits(m))
    X = record(m, site, IDS[0])
    with torch.no_grad():
        gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)
        expected = (mlp.activation_fn(gate) * up)[0].numpy()
    np.testing.assert_allclose(X, expected, rtol=1e-5, atol=1e-6)


def test_mla_attention_units_are_heads_times_v_head_dim(models):
    m = models("deepseek_v3", v_head_dim=8)
    cfg = m.config
    site = resolve_site(m, "attn")
    assert site.width == cfg.num_attention_heads * cfg.v_head_dim
    assert site.width != cfg.num_attention_heads * cfg.qk_head_dim


def test_multimodal_wrapper_scans_its_language_model(models):
    m = models("gemma3")
    site = resolve_site(m, "mlp")
    assert site.module_template == "model.language_model.layers.{layer}.mlp.down_proj"
    assert len(site.layers) == m.config.text_config.num_hidden_layers
    ref = logits(m)
    with Recorder(m, site) as rec:
        assert torch.equal(ref, logits(m))
    assert rec.matrix().shape[1] == site.n_neurons


# ------------------------------------------------------ mixture of experts
def _routing(model, layer_block):
    """Top-k experts and weights the MoE block's experts module received."""
    experts = layer_block.experts
    (x, index, weights), _ = capture_inputs(experts, lambda: logits(model))
    return x, index, weights


@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe", "gpt_oss"])
def test_expert_neurons_equal_an_independent_computation(models, model_type):
    m = models(model_type)
    layer = 1
    block = m.model.layers[layer].mlp
    site = resolve_site(m, "mlp", str(layer))
    part = site.parts(layer)[0]
    assert part.hook == "experts" and part.experts == (0, 1, 2, 3)
    x, index, _ = _routing(m, block)
    ref = logits(m)
    with Recorder(m, site) as rec:
        assert torch.equal(ref, logits(m))  # recording changes nothing
    X = torch.from_numpy(rec.matrix())
    E, width = 4, part.expert_width
    experts = block.experts
    with torch.no_grad():
        for t in range(X.shape[0]):
            for e in range(E):
                got = X[t, e * width:(e + 1) * width]
                if e not in index[t].tolist():
                    assert torch.all(got == 0)
                    continue
                w_gu = experts.gate_up_proj[e]
                if model_type == "gpt_oss":  # transposed (H, 2I), gate and up interleaved
                    gu = x[t] @ w_gu + experts.gate_up_proj_bias[e]
                    gate, up = gu[::2].clamp(max=experts.limit), gu[1::2].clamp(-experts.limit, experts.limit)
                    h = (up + 1) * gate * torch.sigmoid(gate * experts.alpha)
                else:  # (2I, H) like nn.Linear: gate rows, then up rows
                    gate, up = (w_gu @ x[t]).chunk(2)
                    h = experts.act_fn(gate) * up
                torch.testing.assert_close(got, h, rtol=1e-5, atol=1e-6)
    n_shared = site.width_of(layer) - E * width
    assert n_shared == (64 if model_type == "qwen2_moe" else 0)  # shared experts follow the experts


def _zero_expert(model, layer, e, neuron=None):
    m = copy.deepcopy(model)
    experts = m.model.layers[layer].mlp.experts
    with torch.no_grad():
        if experts.is_transposed:  # (E, I, H)
            (experts.down_proj[e] if neuron is None else experts.down_proj[e, neuron]).zero_()
        else:  # (E, H, I)
            (experts.down_proj[e] if neuron is None else experts.down_proj[e, :, neuron]).zero_()
    return m


@pytest.mark.parametrize("model_type", ["mixtral", "gpt_oss"])
def test_inhibiting_an_expert_equals_zeroing_its_fused_weights(models, model_type):
    m = models(model_type)
    layer, e = 1, 2
    site = resolve_site(m, "mlp", str(layer))
    width = site.parts(layer)[0].expert_width
    with intervene(m, {layer: range(e * width, (e + 1) * width)}, site=site):
        got = logits(m)
    expected = logits(_zero_expert(m, layer, e))
    assert not torch.allclose(got, logits(m), atol=1e-4)  # the expert mattered
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    with intervene(m, {layer: [e * width + 3]}, site=site):  # one neuron
        got = logits(m)
    torch.testing.assert_close(got, logits(_zero_expert(m, layer, e, 3)), rtol=1e-4, atol=1e-5)


def test_routing_units_and_their_inhibition(models):
    m = models("mixtral")
    layer, e = 1, 2
    site = resolve_site(m, "experts", str(layer))
    assert site.width == 4 and site.parts(layer)[0].hook == "routing"
    _, index, weights = _routing(m, m.model.layers[layer].mlp)
    X = record(m, site, IDS[0])
    for t in range(X.shape[0]):
        for k in range(index.shape[1]):
            assert X[t, index[t, k]] == pytest.approx(float(weights[t, k]))
    assert np.all((X > 0).sum(1) == index.shape[1])  # 0 where not routed
    with intervene(m, {layer: [e]}, site=site):  # routing weight 0 = the expert's output removed
        got = logits(m)
    torch.testing.assert_close(got, logits(_zero_expert(m, layer, e)), rtol=1e-4, atol=1e-5)


def test_dense_kernel_experts_of_llama4(models):
    m = models("llama4_text")
    moe = [i for i, l in enumerate(m.model.layers) if hasattr(l.feed_forward, "experts")]
    layer = moe[0]
    site = resolve_site(m, "mlp", str(layer))
    part = site.parts(layer)[0]
    assert part.kernel == "dense" and site.parts(layer)[1].module.endswith("shared_expert.down_proj")
    ff = m.model.layers[layer].feed_forward
    scores = {}
    h = ff.router.register_forward_hook(lambda mod, a, out: scores.update(s=out[0]))
    ref = logits(m)
    h.remove()
    with Recorder(m, site) as rec:
        assert torch.equal(ref, logits(m))
    X = torch.from_numpy(rec.matrix())
    width = part.expert_width
    routed = scores["s"] > 0  # (tokens, experts)
    for e in range(4):
        block = X[:, e * width:(e + 1) * width]
        assert torch.all(block[~routed[:, e]] == 0) and torch.any(block[routed[:, e]] != 0)
    e = int(routed.sum(0).argmax())
    with intervene(m, {layer: range(e * width, (e + 1) * width)}, site=site):
        got = logits(m)
    zeroed = copy.deepcopy(m)
    with torch.no_grad():
        zeroed.model.layers[layer].feed_forward.experts.down_proj[e].zero_()
    torch.testing.assert_close(got, logits(zeroed), rtol=1e-4, atol=1e-5)


def test_dense_layers_before_moe_layers_have_their_own_width(models):
    m = models("deepseek_v3", first_k_dense_replace=1)
    site = resolve_site(m, "mlp")
    dense, moe = site.parts(0), site.parts(1)
    assert len(dense) == 1 and dense[0].hook == "pre" and dense[0].module.endswith("mlp.down_proj")
    assert moe[0].hook == "experts" and moe[-1].module.endswith("shared_experts.down_proj")
    assert site.width_of(0) == m.config.intermediate_size
    assert site.width_of(1) == 4 * m.config.moe_intermediate_size + moe[-1].width
    ref = logits(m)
    with Recorder(m, site) as rec:
        assert torch.equal(ref, logits(m))
    layout = NeuronLayout(site)
    X = rec.matrix()
    np.testing.assert_array_equal(layout.unfold(layout.to_img(X)), X)
    assert Site.from_dict(site.to_dict()) == site


def test_moe_controls_keep_the_count_per_expert(models):
    from llm2nifti.intervention.controls import random_like

    m = models("mixtral")
    site = resolve_site(m, "mlp")
    groups = {l: site.groups(l) for l in site.layers}
    w = site.parts(1)[0].expert_width
    key = {1: np.array([0, 1, 2, w + 4, w + 5])}  # three units of expert 0, two of expert 1
    for seed in range(5):
        drawn = random_like(key, dict(zip(site.layers, site.widths)), seed, groups=groups)[1]
        assert list(np.bincount(groups[1][drawn], minlength=4)) == [3, 2, 0, 0]
    assert not np.array_equal(random_like(key, dict(zip(site.layers, site.widths)), 0,
                                          groups=groups)[1], key[1])


def test_prune_refuses_expert_units(models):
    from llm2nifti.intervention.pruning import prune_model

    with pytest.raises(UsageError, match="mixture-of-experts weights, which prune does not cut"):
        prune_model(models("mixtral"), {0: [1, 2]})


# ------------------------------------------------- hybrid and state-space
def test_hybrid_layers_missing_a_block_are_absent_not_zero(models):
    m = models("jamba")
    layers = m.model.layers
    mamba = tuple(i for i, l in enumerate(layers) if hasattr(l, "mamba"))
    attention = tuple(i for i, l in enumerate(layers) if hasattr(l, "self_attn"))
    assert mamba and attention
    assert resolve_site(m, "mixer").layers == mamba
    assert resolve_site(m, "attn").layers == attention
    site = resolve_site(m, "mixer")
    assert site.module_name(mamba[0]).endswith("mamba.out_proj")
    with pytest.raises(UsageError, match=r"have no attn units: this model has them in layers"):
        resolve_site(m, "attn", str(mamba[0]))
    ref = logits(m)
    with Recorder(m, site) as rec:
        assert torch.equal(ref, logits(m))
    (x,), _ = capture_inputs(_get(m, site.module_name(mamba[0])), lambda: logits(m))
    np.testing.assert_array_equal(rec.matrix()[:, :site.width_of(mamba[0])], x[0].numpy())
    layout = NeuronLayout(site)
    assert layout.shape[2] == len(mamba) and layout.mask().sum() == site.n_neurons


def test_pure_state_space_model_scans_at_its_mixer(models):
    m = models("mamba")
    with pytest.raises(UsageError, match="no mlp units: its sites are residual, mixer"):
        resolve_site(m, "mlp")
    site = resolve_site(m, "mixer")
    assert site.width == m.config.intermediate_size and site.module_name(0) == "backbone.layers.0.mixer.out_proj"
    ref = logits(m)
    with Recorder(m, site):
        assert torch.equal(ref, logits(m))


# --------------------------------------------------------------- layout
def test_layout_with_a_width_per_layer_round_trips_and_numbers_units_in_order():
    from llm2nifti.sites import Part

    parts = ((0, (Part("a.0", "pre", 6),)), (2, (Part("a.2", "pre", 10),)),
             (3, (Part("a.3", "experts", 8, (0, 1), "interface"), Part("s.3", "pre", 3))))
    site = Site("mlp", "x", "a.{layer}", "pre", 11, 4, layer_parts=parts)
    assert site.layers == (0, 2, 3) and site.widths == (6, 10, 11) and site.n_neurons == 27
    layout = NeuronLayout(site)
    assert layout.mask().sum() == 27 and layout.mask()[..., 0].sum() == 6
    layer, neuron = layout.neurons()
    assert list(layer[:7]) == [0] * 6 + [2] and neuron[6] == 0 and neuron[-1] == 10
    np.testing.assert_array_equal(layout.global_index(layer, neuron), np.arange(27))
    X = np.random.default_rng(0).standard_normal((5, 27)).astype(np.float32)
    img = layout.to_img(X)
    np.testing.assert_array_equal(layout.unfold(img), X)
    np.testing.assert_array_equal(layout.from_masked(layout.to_masked(X)), X)
    i, j, k = layout.neuron_to_voxel(3, 10)
    assert layout.voxel_to_neuron(i, j, k) == (3, 10)
    with pytest.raises(UsageError):
        layout.neuron_to_voxel(0, 6)  # past layer 0's width
    assert NeuronLayout.from_dict(layout.to_dict()) == layout
    assert list(site.groups(3)) == [0] * 4 + [1] * 4 + [-1] * 3 and site.groups(0) is None


# ------------------------------------------------------------- end to end
def test_scan_of_a_dense_then_moe_model_reads_back_exactly(models, tmp_path, tokenizer, text_file):
    """convert -> NIfTI -> nilearn's masker and load_run give the recorder's units, layer widths differing."""
    from nilearn.maskers import MultiNiftiMasker

    from bids_llm.dataset import Dataset, load_run
    from bids_llm.events import read_events
    from llm2nifti.acquisition.convert import scan

    m = models("deepseek_v3", first_k_dense_replace=1)
    res = scan(tmp_path / "ds", "tiny-deepseek", str(text_file), loaded=(m, tokenizer), label="moe",
               run_tokens=64, max_tokens=128, progress=False, threads=1)
    site = resolve_site(m, "mlp")
    ds = Dataset(res.root)
    assert ds.layout("moe", "mlp") == NeuronLayout(site) and not res.layout.uniform
    run = ds.runs()[0]
    ids = read_events(run.events_path)["token_id"].to_numpy()
    expected = record(m, site, ids)
    X, neurons = load_run(run)
    np.testing.assert_array_equal(X, expected)
    assert neurons["layer"].value_counts()[0] == site.width_of(0) != site.width_of(1)
    masked = MultiNiftiMasker(mask_img=str(ds.mask_path("moe")), smoothing_fwhm=None, detrend=False,
                              standardize=None).fit_transform([str(run.path)])[0]
    np.testing.assert_array_equal(res.layout.from_masked(masked), expected)


def test_recording_into_a_buffer_refuses_modules_that_did_not_run_or_ran_twice(models):
    m = models("llama")
    site = resolve_site(m, "mlp")
    layout = NeuronLayout(site)
    with pytest.raises(UsageError, match=r"layer\(s\) \[0, 1, 2, 3\] did not run"):
        with Recorder(m, site, buffer=layout.empty_buffer(IDS.shape[1])):
            pass  # no forward pass: nothing would have been written
    with pytest.raises(UsageError, match="runs more than once in one forward pass"):
        with Recorder(m, site, buffer=layout.empty_buffer(IDS.shape[1])):
            logits(m)
            logits(m)


def test_apertus_with_0d_activation_parameters_scans(models, tmp_path, tokenizer, text_file):
    # xIELU holds 0-dimensional buffers: the weights' hash used to view each as bytes and
    # fail ("self.dim() cannot be 0 to view Float as Byte").
    from bids_llm.dataset import Dataset
    from llm2nifti.acquisition.convert import scan
    from llm2nifti.models import weights_hash

    m = models("apertus")
    assert any(t.dim() == 0 for t in m.state_dict().values())  # buffers beta and eps
    assert len(weights_hash(m)) == 16
    res = scan(tmp_path / "ds", "tiny-apertus", str(text_file), loaded=(m, tokenizer),
               run_tokens=64, max_tokens=64, progress=False, threads=1)
    assert len(Dataset(res.root).runs()) == 1 and res.layout.n_neurons == resolve_site(m, "mlp").n_neurons


def test_gemma3n_widths_per_layer_from_a_list_scan(models, tmp_path, tokenizer, text_file):
    # Gemma 3n's intermediate_size is a list, one width per layer; the last layers reuse an
    # earlier layer's attention cache (num_kv_shared_layers), which a shrunk build must respect.
    from bids_llm.dataset import Dataset, load_run
    from llm2nifti.acquisition.convert import scan

    widths = [128, 96, 128, 64, 128]
    m = tiny_model("gemma3n_text", intermediate_size=widths)
    site = resolve_site(m, "mlp")
    assert [site.width_of(layer) for layer in site.layers] == widths
    ref = logits(m)
    with Recorder(m, site) as rec:
        assert torch.equal(ref, logits(m))
    assert rec.matrix().shape == (IDS.shape[1], sum(widths))
    res = scan(tmp_path / "ds", "tiny-gemma3n", str(text_file), loaded=(m, tokenizer),
               run_tokens=64, max_tokens=64, progress=False, threads=1)
    (run,) = Dataset(res.root).runs()
    X, neurons = load_run(run)
    assert X.shape == (64, sum(widths)) and np.isfinite(X).all()
    assert neurons.groupby("layer").size().tolist() == widths


def test_dbrx_flat_experts_are_read_and_inhibited_exactly(models):
    # DBRX keeps its experts' gated MLP as 2-D w1 (gate), v1 (up), w2 (down) of shape
    # (experts x width, hidden), and hands its experts module (batch, tokens, hidden) states.
    m = models("dbrx")
    layer, E = 1, 4
    block = m.transformer.blocks[layer].ffn
    site = resolve_site(m, "mlp", str(layer))
    (part,) = site.parts(layer)
    assert part.hook == "experts" and part.kernel == "flat" and part.experts == tuple(range(E))
    glu, width = block.experts.mlp, part.expert_width
    assert width * E == glu.w1.shape[0]
    (x, index, _), _ = capture_inputs(block.experts, lambda: logits(m))
    x = x.reshape(-1, x.shape[-1])
    ref = logits(m)
    with Recorder(m, site) as rec:
        assert torch.equal(ref, logits(m))
    X = torch.from_numpy(rec.matrix())
    w1, v1 = (getattr(glu, a).view(E, width, -1) for a in ("w1", "v1"))
    with torch.no_grad():
        for t in range(X.shape[0]):
            for e in range(E):
                got = X[t, e * width:(e + 1) * width]
                h = glu.activation_fn(w1[e] @ x[t]) * (v1[e] @ x[t])
                torch.testing.assert_close(got, h if e in index[t].tolist() else torch.zeros_like(h),
                                           rtol=1e-5, atol=1e-6)
    e, neuron = 2, 3
    zeroed = copy.deepcopy(m)
    with torch.no_grad():  # the neuron's up row zero: its hidden value is 0 on every token
        zeroed.transformer.blocks[layer].ffn.experts.mlp.v1.view(E, width, -1)[e, neuron].zero_()
    with intervene(m, {layer: [e * width + neuron]}, site=site):
        got = logits(m)
    assert not torch.equal(got, ref)
    torch.testing.assert_close(got, logits(zeroed), rtol=1e-4, atol=1e-5)
