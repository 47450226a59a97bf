"""Read and change the hidden neurons of fused mixture-of-experts weights.

Mixture-of-experts models keep their experts as fused 3-D parameters run by the experts
module's own forward (a loop, batched or grouped matrix products), so no hook sees an
expert's hidden neurons. llm2nifti reads them from the module's inputs, without touching
its computation, by computing each routed expert's hidden layer again from the same
weights (:func:`expert_hidden`). An intervention adds to the module's output the change
its edited hidden neurons make (:func:`expert_output` of the edited minus the original),
exact to float rounding and zero where nothing is edited.

Three kernels cover the fused experts of transformers:

``interface``
    Experts modules that follow transformers' experts interface (``forward(hidden_states,
    top_k_index, top_k_weights)``, with the ``has_gate``, ``is_transposed``, ``has_bias``
    and ``has_post_expert_norm`` flags and ``_apply_gate``): Mixtral, Qwen-MoE, DeepSeek,
    OLMoE, GPT-OSS, Granite-MoE, Jamba, ... Units are non-zero on the tokens routed to the
    expert; the routing weight of each expert is read from ``top_k_weights``.
``dense``
    Experts that run every expert on every token, the input already scaled by the router
    (Llama 4: ``forward(hidden_states)`` over ``(experts x tokens, hidden)`` rows, transposed
    weights). Units are 0 on tokens the router did not send to the expert; the routing
    weights are the router module's output.
``flat``
    Experts-interface routing (``forward(hidden_states, top_k_index, top_k_weights)``) over a
    gated MLP whose weights are 2-D, flattened over experts: ``w1`` (gate), ``v1`` (up) and
    ``w2`` (down), each ``(experts x width, hidden)`` (DBRX). Units as for ``interface``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ExpertsInfo", "describe", "routing_inputs", "expert_hidden", "expert_output",
           "dense_hidden", "dense_output", "routing_matrix", "flat_glu"]


@dataclass(frozen=True)
class ExpertsInfo:
    """What :func:`describe` found out about a fused-experts module."""

    kernel: str | None
    n_experts: int = 0
    expert_width: int = 0
    router: str = ""
    reason: str = ""


def _forward_params(module):
    fwd = getattr(type(module).forward, "__wrapped__", type(module).forward)
    return [p for p in inspect.signature(fwd).parameters if p != "self"]


def describe(experts, block=None):
    """The kernel that reads ``experts``, its number of experts and hidden width.

    Parameters
    ----------
    experts : torch.nn.Module
        A module holding fused 3-D expert weights.
    block : torch.nn.Module, optional
        The mixture-of-experts block around it (where the router is looked for).
    """
    flat = flat_glu(experts)
    if flat is not None and len(_forward_params(experts)) >= 3:
        n_experts = int(experts.num_experts)
        return ExpertsInfo("flat", n_experts, int(flat.w1.shape[0]) // n_experts)
    down = getattr(experts, "down_proj", None)
    if not isinstance(down, torch.Tensor) or down.ndim != 3:
        return ExpertsInfo(None, reason="no fused down_proj of shape (experts, ., .)")
    n_experts = int(down.shape[0])
    transposed = bool(getattr(experts, "is_transposed", False))
    params = _forward_params(experts)
    if hasattr(experts, "has_gate") and hasattr(experts, "_apply_gate") and len(params) >= 3:
        width = int(down.shape[1] if transposed else down.shape[2])
        return ExpertsInfo("interface", n_experts, width)
    gate_up = getattr(experts, "gate_up_proj", None)
    if (len(params) == 1 and isinstance(gate_up, torch.Tensor) and gate_up.ndim == 3
            and gate_up.shape[1] == down.shape[2] and gate_up.shape[2] == 2 * down.shape[1]):
        router = _router(block, n_experts, down.shape[2]) if block is not None else None
        if router is None:
            return ExpertsInfo(None, reason="no router module next to the experts")
        return ExpertsInfo("dense", n_experts, int(down.shape[1]), router)
    return ExpertsInfo(None, reason=f"forward({', '.join(params)}) is not an experts interface "
                                    "llm2nifti knows")


def flat_glu(experts):
    """The child of ``experts`` holding ``w1``, ``v1``, ``w2`` flattened over its experts, or None."""
    n = getattr(experts, "num_experts", None)
    if not isinstance(n, int) or n < 1:
        return None
    for child in experts.children():
        w = [getattr(child, a, None) for a in ("w1", "v1", "w2")]
        if (all(isinstance(t, torch.Tensor) and t.ndim == 2 for t in w)
                and w[0].shape == w[1].shape == w[2].shape and w[0].shape[0] % n == 0):
            return child
    return None


def _flat_weights(experts, e):
    """Expert ``e``'s ``(gate, up, down)`` rows of a flat GLU, each ``(width, hidden)``."""
    glu = flat_glu(experts)
    n = int(experts.num_experts)
    return [getattr(glu, a).view(n, -1, glu.w1.shape[1])[e] for a in ("w1", "v1", "w2")], glu


def _router(block, n_experts, hidden):
    for name, m in block.named_children():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and tuple(w.shape) == (n_experts, hidden):
            return name
    return None


# ---------------------------------------------------------------- interface
def routing_inputs(args, kwargs):
    """``(hidden_states, top_k_index, top_k_weights)`` of an experts-interface call, the
    hidden states as ``(tokens, hidden)`` rows (DBRX passes them as ``(batch, tokens, hidden)``)."""
    values = list(args) + [v for k, v in kwargs.items()]
    if len(values) < 3:
        raise RuntimeError("the experts module was called without its routing inputs")
    return values[0].reshape(-1, values[0].shape[-1]), values[1], values[2]


def routing_matrix(index, weights, experts):
    """``(tokens, len(experts))`` routing weights of ``experts`` (0 where not routed)."""
    out = weights.new_zeros((index.shape[0], len(experts)))
    for j, e in enumerate(experts):
        hit = index == e
        out[:, j] = (weights * hit).sum(-1)
    return out


def expert_hidden(experts, e, x):
    """Hidden neurons of expert ``e`` on rows ``x`` (tokens, hidden): (tokens, width)."""
    if not hasattr(experts, "has_gate"):  # flat
        (gate, up, _), glu = _flat_weights(experts, e)
        return glu.activation_fn(F.linear(x, gate)) * F.linear(x, up)
    if experts.has_gate:
        w = experts.gate_up_proj[e]
        b = experts.gate_up_proj_bias[e] if experts.has_bias else None
    else:
        w = experts.up_proj[e]
        b = experts.up_proj_bias[e] if experts.has_bias else None
    y = _linear(x, w, b, experts.is_transposed)
    return experts._apply_gate(y) if experts.has_gate else experts.act_fn(y)


def expert_output(experts, e, h):
    """Output of expert ``e`` for hidden neurons ``h``, before its routing weight."""
    if not hasattr(experts, "has_gate"):  # flat
        (_, _, down), _ = _flat_weights(experts, e)
        return h @ down
    b = experts.down_proj_bias[e] if experts.has_bias else None
    y = _linear(h, experts.down_proj[e], b, experts.is_transposed)
    if getattr(experts, "has_post_expert_norm", False):
        y = experts.post_expert_norm(y)
    return y


def _linear(x, w, b, transposed):
    y = x @ w if transposed else F.linear(x, w)
    return y if b is None else y + b


# -------------------------------------------------------------------- dense
def dense_hidden(experts, x):
    """``(experts, tokens, width)`` hidden neurons of experts that run on every token."""
    n = experts.gate_up_proj.shape[0]
    x = x.view(n, -1, x.shape[-1])
    gate, up = torch.bmm(x, experts.gate_up_proj).chunk(2, dim=-1)
    return up * experts.act_fn(gate)


def dense_output(experts, h):
    """``(experts * tokens, hidden)`` output of :func:`dense_hidden`'s neurons ``h``."""
    return torch.bmm(h, experts.down_proj).view(-1, experts.down_proj.shape[-1])
