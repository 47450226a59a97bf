"""Prune a model: physically remove MLP neurons, keeping a neuron set.

The weights that write a neuron (gate and up rows, or ``c_fc`` columns and
bias) and the weights that read it (down columns, or ``c_proj`` rows) are
sliced, so the pruned model computes what the unpruned model computes with
every other neuron zeroed (``intervene(..., mode="retain")``), up to float
rounding.

transformers' Llama and GPT-2 classes have one MLP width for all layers, so
every layer is cut to the largest number of neurons any layer keeps; a layer
that keeps fewer carries the difference as *inert* neurons whose reading
weights are zero (they add exactly nothing). The saved folder then loads with
plain ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from .hooks import as_per_layer
from ..sites import mlp_projections, resolve_site

__all__ = ["prune_model", "prune", "PruneReport", "count_parameters", "forward_speed"]

log = logging.getLogger(__name__)


def count_parameters(model):
    """Number of distinct parameters (tied weights counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            n += p.numel()
    return n


def _slice(module, idx, n_pad, role):
    """Keep units ``idx`` (plus ``n_pad`` zero units) of ``module`` on the neuron side.

    ``role`` is ``"writer"`` (the neurons are the module's outputs) or ``"reader"``
    (its inputs). Handles ``nn.Linear`` (weight: out x in) and GPT-2's ``Conv1D``
    (weight: in x out).
    """
    W = module.weight.data
    conv = not isinstance(module, torch.nn.Linear)
    # the neuron axis of the weight
    axis = (1 if conv else 0) if role == "writer" else (0 if conv else 1)
    index = torch.as_tensor(idx, dtype=torch.long, device=W.device)
    kept = W.index_select(axis, index)
    if n_pad:
        shape = list(kept.shape)
        shape[axis] = n_pad
        kept = torch.cat([kept, kept.new_zeros(shape)], axis)
    module.weight = torch.nn.Parameter(kept.contiguous(), requires_grad=module.weight.requires_grad)
    if role == "writer" and getattr(module, "bias", None) is not None:
        b = module.bias.data.index_select(0, index)
        if n_pad:
            b = torch.cat([b, b.new_zeros(n_pad)])
        module.bias = torch.nn.Parameter(b.contiguous(), requires_grad=module.bias.requires_grad)
    width = kept.shape[axis]
    if conv:
        if role == "writer":
            module.nf = width
        else:
            module.nx = width
    elif role == "writer":
        module.out_features = width
    else:
        module.in_features = width


def prune_model(model, keep, inplace=False):
    """A copy of ``model`` whose MLPs hold only the ``keep`` neurons.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    keep : NeuronSet, dict of int -> indices, or (layer, neuron) pairs
        MLP neurons to keep; layers not named keep none.
    inplace : bool
        Change ``model`` itself instead of a copy.

    Returns
    -------
    pruned : transformers.PreTrainedModel
        With ``config.<width attribute>`` set to the new (common) width.
    widths : dict of int -> int
        Neurons kept per layer (before padding to the common width).
    """
    site = resolve_site(model, "mlp")
    keep = as_per_layer(keep)
    bad = sorted(set(keep) - set(site.layers))
    if bad:
        raise UsageError(f"the keep set names layer(s) {bad} that this model does not have")
    for layer, idx in keep.items():
        if idx.max() >= site.width:
            raise UsageError(f"neuron index {int(idx.max())} out of range in layer {layer} "
                             f"(width {site.width})")
    widths = {l: len(keep.get(l, ())) for l in site.layers}
    new_width = max(max(widths.values()), 1)
    out = model if inplace else copy.deepcopy(model)
    attr = None
    with torch.no_grad():
        for layer in site.layers:
            writers, readers, attr = mlp_projections(out, site, layer)
            idx = keep.get(layer, np.zeros(0, dtype=np.int64))
            pad = new_width - len(idx)
            for m in writers:
                _slice(m, idx, pad, "writer")
            for m in readers:
                _slice(m, idx, pad, "reader")
    setattr(out.config, attr, int(new_width))
    if hasattr(out.config, "get_text_config") and out.config.get_text_config() is not out.config:
        setattr(out.config.get_text_config(), attr, int(new_width))
    return out, widths


def _folder_bytes(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


@torch.inference_mode()
def forward_speed(model, input_ids, repeats=3):
    """Tokens per second of a plain forward pass (best of ``repeats``)."""
    ids = input_ids.to(next(model.parameters()).device)
    model(input_ids=ids, use_cache=False)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        best = min(best, time.perf_counter() - t0)
    return ids.numel() / best


@dataclass
class PruneReport:
    """What :func:`prune` did and measured.

    Attributes
    ----------
    output : Path
    report : dict
        Parameter counts, file sizes, speeds, perplexities and the largest
        difference between the pruned and the masked model's logits.
    """

    output: Path
    report: dict


def prune(networks, output, *, model=None, gguf_file=None, networks_names=None, remove=False, heldout="lee-test",
          n_docs=20, max_doc_tokens=128, overwrite=False, device="cpu", dtype="auto",
          threads=None, loaded=None, cache=None):
    """Remove MLP neurons from a model and save the smaller model.

    Parameters
    ----------
    networks : path or NeuronSet
        ``networks.tsv``; its union is the set kept (or removed, see ``remove``).
    output : path
        New folder for the pruned model (written under a temporary name, then
        renamed); refused if it exists unless ``overwrite``.
    model : str, optional
        Model to prune (default: the embedded SmolLM2-135M-Instruct); any form
        :mod:`llm2nifti.sources` accepts.
    gguf_file : str, optional
        Which GGUF file of a ``model`` folder holding several.
    networks_names : list of str, optional
        Only these networks.
    remove : bool
        Remove the network neurons and keep all others (default: keep the
        network neurons only).
    heldout : str or path
        Text for the perplexity comparison.
    n_docs, max_doc_tokens : int
        Documents used and tokens per document.
    overwrite : bool
    device, dtype, threads, cache, loaded :
        Model loading.

    Returns
    -------
    PruneReport
    """
    from ..acquisition import load_documents
    from ..models import load_model, set_threads
    from ..neuronset import NeuronSet

    output = Path(output)
    if output.exists() and not overwrite:
        raise UsageError(f"{output} exists: choose a new folder or pass --overwrite")
    nset = networks if isinstance(networks, NeuronSet) else NeuronSet.from_tsv(networks)
    if networks_names:
        nset = nset.select(networks_names)
    if nset.site != "mlp":
        raise UsageError(f"only MLP hidden neurons (--site mlp) can be pruned, the table holds "
                         f"{nset.site!r} units, which no weight slice removes on its own: evaluate "
                         "them with `llm2nifti evaluate` instead")
    docs = load_documents(heldout)[:n_docs]
    if threads is not None or str(device) == "cpu":
        set_threads(threads)
    lm, tok = loaded if loaded is not None else load_model(model, device=device, dtype=dtype,
                                                            cache=cache, gguf_file=gguf_file)
    site = resolve_site(lm, "mlp")
    chosen = nset.check_site(site).per_layer()
    if remove:
        every = np.arange(site.width)
        keep = {l: np.setdiff1d(every, chosen.get(l, ())) for l in site.layers}
    else:
        keep = chosen
    pruned, widths = prune_model(lm, keep)
    report = {
        "model": str(getattr(lm.config, "name_or_path", model)),
        "networks": str(networks) if not isinstance(networks, NeuronSet) else "NeuronSet",
        "kept": "all but the network neurons" if remove else "the network neurons",
        "neurons_kept": int(sum(widths.values())), "neurons_total": site.n_neurons,
        "width_before": site.width, "width_after": int(getattr(pruned.config, mlp_projections(
            pruned, resolve_site(pruned, "mlp"), site.layers[0])[2])),
        "kept_per_layer": {str(l): int(w) for l, w in widths.items()},
        "inert_padding_neurons": int(sum(max(widths.values()) - w for w in widths.values())),
    }
    measured = _compare(lm, pruned, tok, keep, site, docs, max_doc_tokens)
    _save(output, lm, pruned, tok, report, measured,
          {"heldout": str(heldout), "n_docs": len(docs), "max_doc_tokens": max_doc_tokens,
           "threads": torch.get_num_threads()})
    return PruneReport(output, report)


def _compare(lm, pruned, tok, keep, site, docs, max_doc_tokens):
    """Perplexities of the unpruned, masked and pruned model, their logits' gap and speeds."""
    from .evaluation import Evaluator
    from .hooks import intervene

    ev = Evaluator(lm, tok, heldout=docs, max_doc_tokens=max_doc_tokens)
    ev_pruned = Evaluator(pruned, tok, heldout=docs, max_doc_tokens=max_doc_tokens)
    ppl_full = ev.score().perplexity
    with intervene(lm, keep, mode="retain", site=site):
        ppl_masked = ev.score().perplexity
    ppl_pruned = ev_pruned.score().perplexity
    probe = torch.as_tensor([ev._docs[0]])
    with torch.inference_mode():
        dev = next(lm.parameters()).device
        with intervene(lm, keep, mode="retain", site=site):
            masked_logits = lm(input_ids=probe.to(dev), use_cache=False).logits.float()
        pruned_logits = pruned(input_ids=probe.to(dev), use_cache=False).logits.float()
    speed_probe = torch.as_tensor([ev._docs[0][: min(len(ev._docs[0]), 128)]] * 4)
    return {
        "tokens_per_second_before": forward_speed(lm, speed_probe),
        "tokens_per_second_after": forward_speed(pruned, speed_probe),
        "perplexity_unpruned": ppl_full, "perplexity_masked": ppl_masked,
        "perplexity_pruned": ppl_pruned,
        "max_abs_logit_difference_pruned_vs_masked":
            float((masked_logits - pruned_logits).abs().max()),
    }


def _save(output, lm, pruned, tok, report, measured, settings):
    """Save the pruned model and ``llm2nifti_prune.json`` under a temporary name, then rename.

    ``report`` is completed in place with parameter counts, sizes, ``measured`` and ``settings``.
    """
    from bids_llm.io import write_json

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=output.parent))
    try:
        pruned.save_pretrained(tmp)
        pruned_bytes = _folder_bytes(tmp)  # model files only, as for the unpruned size
        tok.save_pretrained(tmp)
        full_dir = Path(tempfile.mkdtemp(prefix=".tmp-full-", dir=output.parent))
        try:
            lm.save_pretrained(full_dir)
            full_bytes = _folder_bytes(full_dir)
        finally:
            shutil.rmtree(full_dir, ignore_errors=True)
        n_full, n_pruned = count_parameters(lm), count_parameters(pruned)
        report.update({
            "parameters_before": n_full, "parameters_after": n_pruned,
            "parameters_removed_share": 1 - n_pruned / n_full,
            "bytes_before": full_bytes, "bytes_after": pruned_bytes,
        })
        report.update(measured)
        report.update(settings)
        write_json(tmp / "llm2nifti_prune.json", report)
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
