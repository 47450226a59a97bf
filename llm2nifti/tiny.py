"""Tiny random-weight models of any transformers model type, built offline from its default config.

For tests, benchmarks, and for trying a model type before downloading a real checkpoint:
:func:`tiny_model` shrinks the type's default configuration (few layers, narrow widths, four
experts), keeps one layer of each kind of a hybrid's layer pattern, and builds the model with
random weights. Sizes that other sizes are derived from are changed before the config is
built, so the derived ones follow.
"""

from __future__ import annotations

import contextlib

import torch

from .sites import _text_config

__all__ = ["tiny_model", "shrink_config", "SMALL", "VOCAB"]

# Shrunk sizes, set wherever the (text) config has the attribute as a plain int.
SMALL = {
    "hidden_size": 64, "n_embd": 64, "d_model": 64, "intermediate_size": 128, "n_inner": 128,
    "ffn_dim": 128, "d_ff": 128, "ffn_hidden_size": 128, "num_attention_heads": 4, "n_head": 4,
    "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64, "expert_intermediate_size": 32,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_topk": 2, "top_k": 2, "n_group": 1, "topk_group": 1,
    "n_shared_experts": 1, "num_shared_experts": 1, "state_size": 8, "ssm_state_size": 8,
    "mamba_d_state": 8, "mamba_n_heads": 4, "mamba_d_head": 32, "mamba_expand": 2, "expand": 2,
    "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "kv_lora_rank": 16,
    "q_lora_rank": 16, "linear_num_value_heads": 4, "linear_num_key_heads": 2,
    "linear_key_head_dim": 16, "linear_value_head_dim": 16, "global_head_dim": 16,
    "sliding_window": 64, "intermediate_size_mlp": 128, "rotary_dim": 8, "moe_k": 2, "attention_chunk_size": 64, "num_nextn_predict_layers": 0,
}
VOCAB = 512
LAYERS = 4


def _set(cfg, key, value):
    with contextlib.suppress(Exception):
        setattr(cfg, key, value)


def _overrides(d, layers):
    """Shrunk values for the keys of one config's ``to_dict()`` ``d``."""
    out = {}
    for key, value in SMALL.items():
        old = d.get(key)
        if isinstance(old, int) and not isinstance(old, bool) and old > value:
            out[key] = value
        elif isinstance(old, list) and old and all(isinstance(x, int) and x > value for x in old):
            out[key] = [value] * len(old)  # one size per layer (Gemma 3n's MLP widths)
    for key in [k for k in d if k.startswith("vocab_size_")]:  # per-layer input embeddings
        if isinstance(d[key], int) and d[key] > VOCAB:
            out[key] = VOCAB
    if isinstance(d.get("vocab_size"), int) and d["vocab_size"] > VOCAB:
        out["vocab_size"] = VOCAB
        for tok in ("pad_token_id", "bos_token_id", "eos_token_id", "image_token_id"):
            if isinstance(d.get(tok), int) and d[tok] >= VOCAB:
                out[tok] = VOCAB - 1 - ("pad" in tok)
    n_key = next((a for a in ("num_hidden_layers", "n_layer", "num_layers", "num_blocks")
                  if isinstance(d.get(a), int)), None)
    if n_key is None:
        return out
    n_old, n = d[n_key], layers
    patterns = {k: v for k, v in d.items() if isinstance(v, (list, str)) and len(v) == n_old > 1
                and k not in ("architectures",)}
    for v in patterns.values():  # keep one layer of each kind of a per-layer pattern
        if all(isinstance(x, (str, int, bool)) for x in v):
            n = max(n, max(list(v).index(x) for x in set(v)) + 1)
    for k, v in d.items():  # the first layer of each kind placed by an offset or index list
        if k.endswith("_offset") and isinstance(v, int) and 0 <= v < n_old:
            n = max(n, v + 1)
        if "indices" in k and isinstance(v, list) and v and all(isinstance(i, int) for i in v):
            n = max(n, min(v) + 1)
    n = min(n, n_old)
    out[n_key] = n
    for k, v in d.items():  # layers that reuse an earlier layer's cache need layers to reuse
        if "shared_layers" in k and isinstance(v, int) and v >= n:
            out[k] = 0
    for k, v in patterns.items():
        out[k] = out.get(k, v)[:n]
    for k, v in d.items():
        if "indices" in k and isinstance(v, list) and v and all(isinstance(i, int) for i in v):
            out[k] = [i for i in v if i < n]
        if k == "per_layer_config" and isinstance(v, dict):
            out[k] = {i: c for i, c in v.items() if int(i) < n}
    if {"expand", "num_heads", "head_dim"} <= set(d) and "hidden_size" in out:  # Mamba-2 heads
        out["num_heads"] = out["hidden_size"] * d["expand"] // out.get("head_dim", d["head_dim"])
    if "qk_rope_head_dim" in d and "head_dim" in d:  # MLA: head_dim is the rotary part
        out["head_dim"] = out.get("qk_rope_head_dim", d["qk_rope_head_dim"])
    return out


def shrink_config(model_type, layers=LAYERS):
    """The default config of ``model_type``, rebuilt with shrunk sizes (derived sizes follow)."""
    from transformers import AutoConfig

    d = AutoConfig.for_model(model_type).to_dict()
    over = _overrides(d, layers)
    for sub in ("text_config", "llm_config", "language_config", "vision_config"):
        if isinstance(d.get(sub), dict):
            over[sub] = dict(d[sub], **_overrides(d[sub], 1 if sub == "vision_config" else layers))
            for derived in ("head_dim", "qk_head_dim"):
                if derived not in over[sub] or derived == "qk_head_dim":
                    over[sub].pop(derived, None)
    n = over.get("num_hidden_layers", d.get("num_hidden_layers"))
    if "attn_layer_indices" in d and d["attn_layer_indices"] is None and isinstance(n, int):
        over["attn_layer_indices"] = [n - 1]  # a hybrid whose default has no attention layer
    types = over.get("layer_types", d.get("layer_types"))
    if isinstance(types, list) and len(set(types)) == 1 and "linear" in str(types[0]):
        for full in ("full_attention", "attention"):  # one attention layer, as real checkpoints have
            try:
                return _finish(AutoConfig.for_model(model_type, **dict(over, layer_types=types[:-1] + [full])))
            except Exception:  # noqa: BLE001 -- the type names its attention layers otherwise
                continue
    return _finish(AutoConfig.for_model(model_type, **over))


def _finish(cfg):
    for sub in vars(cfg).values():  # DBRX's nested attention config: transformers 5.25's
        if type(sub).__name__.endswith("AttentionConfig"):  # default lacks what its code reads
            if not hasattr(sub, "rope_theta"):
                sub.rope_theta = float((getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 1e4))
            if getattr(sub, "clip_qkv", 0) is None:
                sub.clip_qkv = 8.0  # the released checkpoints' value; None fails torch.clamp
    tc = _text_config(cfg)
    try:
        hs, heads, hd = tc.hidden_size, tc.num_attention_heads, tc.head_dim
    except Exception:  # noqa: BLE001 -- absent, or a per-layer attribute (Gemma 4)
        return cfg
    if isinstance(hs, int) and isinstance(heads, int) and hd is None:
        tc.head_dim = hs // heads
    return cfg



def tiny_model(model_type, seed=0, layers=LAYERS, **overrides):
    """A random-weight ``AutoModelForCausalLM`` of ``model_type`` in eval mode.

    Parameters
    ----------
    model_type : str
        A key of transformers' causal-LM registry (``"llama"``, ``"mixtral"``, ``"mamba"``...).
    seed : int
        Seed of the random weights.
    layers : int
        Layers kept (more when a layer pattern needs them to show each kind of layer).
    **overrides
        Config values set after shrinking (e.g. ``first_k_dense_replace=1``).
    """
    from transformers import AutoModelForCausalLM

    cfg = shrink_config(model_type, layers)
    for key, value in overrides.items():
        setattr(_text_config(cfg), key, value)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()
