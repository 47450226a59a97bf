"""Derived and independent variants of a model, for testing fingerprints against known lineage.

* ``permuted``: each MLP layer's neurons reordered in the weights that write them (gate and
  up rows, or ``c_fc`` outputs) and read them (down columns, or ``c_proj`` inputs). The
  function is unchanged (same logits up to float rounding); the unit order is not.
* ``finetuned``: a short causal-language-modelling fine-tune on other text (AdamW, on CPU).
* ``random``: the same architecture with fresh random weights (transformers' own init).
* ``amplified``: chosen MLP neurons of one layer multiplied by ``factor`` (default 2, exact in
  floating point) by scaling their rows in the linear projection that writes them: every
  earlier layer is bit-identical, and the planted units are exactly scaled (a planted
  truth for ``diff``). Needs a gated MLP (the linear writer is found by trying each).
* ``quantized``: every linear weight of the decoder rounded to 4 bits (symmetric, one scale
  per output row, 15 levels), stored in float32.
* ``pruned``: unstructured magnitude pruning: in every linear weight of the decoder the
  ``fraction`` (default 0.3) smallest in magnitude set to 0; shapes, and so units, unchanged.

A pruned variant comes from ``llm2nifti prune``. Each variant is saved as a Hugging Face
folder with the tokenizer, which every command accepts as ``--model``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from ..errors import UsageError

__all__ = ["permute_units", "random_init", "finetune", "derive", "VARIANTS", "amplify_units",
           "round_weights", "prune_weights", "decoder_linears"]

VARIANTS = ("permuted", "finetuned", "random", "amplified", "quantized", "pruned")


def _permute(module, perm, role):
    """Reorder a writer's output units or a reader's input units (Linear or GPT-2's Conv1D)."""
    conv1d = type(module).__name__ == "Conv1D"  # weight: in x out
    w = module.weight
    with torch.no_grad():
        if role == "writer":
            w.copy_(w[:, perm] if conv1d else w[perm])
            if getattr(module, "bias", None) is not None:
                module.bias.copy_(module.bias[perm])
        else:
            w.copy_(w[perm] if conv1d else w[:, perm])


def permute_units(model, seed=0):
    """Permute every MLP layer's neurons in place; returns ``{layer: permutation}``."""
    from ..sites import mlp_projections, resolve_site

    site = resolve_site(model, "mlp")
    gen = torch.Generator().manual_seed(seed)
    perms = {}
    for layer in site.layers:
        writers, readers, _ = mlp_projections(model, site, layer)
        perm = torch.randperm(site.width_of(layer), generator=gen)
        for m in writers:
            _permute(m, perm, "writer")
        for m in readers:
            _permute(m, perm, "reader")
        perms[int(layer)] = perm.tolist()
    return perms


def _probe_units(model, site, layer):
    from ..acquisition import record

    ids = list(range(min(16, int(model.config.vocab_size))))
    X = record(model, site, ids)
    offset = int(sum(site.width_of(l) for l in site.layers if l < layer))
    return X[:, offset:offset + site.width_of(layer)]


def amplify_units(model, layer, neurons, factor=2.0):
    """Multiply MLP ``neurons`` of ``layer`` by ``factor`` through the weights, in place.

    The writer whose rows scale the units exactly is found by trying each (a gated MLP's
    linear ``up`` projection); returns the neuron indices. Raises :class:`UsageError` when
    no writer scales them exactly (an MLP whose only writer feeds a nonlinearity).
    """
    import numpy as np

    from ..sites import mlp_projections, resolve_site

    site = resolve_site(model, "mlp")
    if layer not in site.layers:
        raise UsageError(f"layer {layer} is not a layer of this model's MLP site "
                         f"({site.layers[0]}-{site.layers[-1]})")
    idx = torch.as_tensor(sorted(set(int(n) for n in neurons)), dtype=torch.long)
    if idx.numel() == 0 or int(idx.max()) >= site.width_of(layer) or int(idx.min()) < 0:
        raise UsageError(f"neurons must lie in 0-{site.width_of(layer) - 1} of layer {layer}")
    writers, _, _ = mlp_projections(model, site, layer)
    before = _probe_units(model, site, layer)
    for m in writers:
        conv1d = type(m).__name__ == "Conv1D"
        bias = getattr(m, "bias", None)
        saved = [m.weight.detach().clone(), None if bias is None else bias.detach().clone()]
        with torch.no_grad():
            if conv1d:
                m.weight[:, idx] *= factor
            else:
                m.weight[idx] *= factor
            if bias is not None:
                bias[idx] *= factor
        after = _probe_units(model, site, layer)
        rest = np.setdiff1d(np.arange(before.shape[1]), idx.numpy())
        if (np.allclose(after[:, idx.numpy()], factor * before[:, idx.numpy()], rtol=1e-5,
                        atol=1e-7) and np.array_equal(after[:, rest], before[:, rest])):
            return idx.numpy()
        with torch.no_grad():
            m.weight.copy_(saved[0])
            if bias is not None:
                bias.copy_(saved[1])
    raise UsageError("no projection of this MLP writes its units linearly (an MLP without a "
                     "gate): the amplified variant needs a gated MLP such as Llama's")


def decoder_linears(model):
    """The linear layers of the decoder blocks (not the embeddings or the output head)."""
    head = model.get_output_embeddings()
    return [m for m in model.modules() if m is not head
            and (isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D")]


def round_weights(model, bits=4):
    """Round every decoder linear weight to ``bits`` bits in place (symmetric, a scale per
    output row); returns the number of weights rounded."""
    levels = 2 ** (bits - 1) - 1
    n = 0
    with torch.no_grad():
        for m in decoder_linears(model):
            w = m.weight.T if type(m).__name__ == "Conv1D" else m.weight  # rows = outputs
            scale = w.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny) / levels
            w.copy_(torch.round(w / scale) * scale)
            n += w.numel()
    return n


def prune_weights(model, fraction=0.3):
    """Set the ``fraction`` smallest-magnitude weights of each decoder linear layer to 0, in
    place; returns the number set to 0."""
    if not 0 <= fraction < 1:
        raise UsageError(f"pruning fraction {fraction}: give a value in [0, 1)")
    n = 0
    with torch.no_grad():
        for m in decoder_linears(model):
            w = m.weight
            k = int(fraction * w.numel())
            if k == 0:
                continue
            cut = w.abs().flatten().kthvalue(k).values
            drop = w.abs() <= cut
            w.masked_fill_(drop, 0.0)
            n += int(drop.sum())
    return n


def random_init(model, seed=0):
    """A new model of ``model``'s architecture with random weights (seeded)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(model.config).eval()


def finetune(model, tokenizer, documents, steps=300, lr=5e-5, seq_len=128, seed=0,
             progress=False):
    """Fine-tune in place on ``documents`` (next-token loss); returns the loss every step."""
    from tqdm.auto import tqdm

    ids = []
    for d in documents:
        ids.extend(tokenizer(d.text, add_special_tokens=False)["input_ids"])
    if len(ids) < seq_len + 1:
        raise UsageError(f"the fine-tuning text has {len(ids)} tokens: give at least {seq_len + 1}")
    data = torch.as_tensor(ids)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in tqdm(range(steps), desc="fine-tune", unit="step", disable=not progress):
        start = int(torch.randint(0, len(data) - seq_len, (1,), generator=gen))
        batch = data[start:start + seq_len].unsqueeze(0)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def _edit(lm, kind, seed, layer, n_neurons, factor, fraction, bits):
    """Apply an in-place edit kind; returns what ``variant.json`` records of it."""
    if kind == "permuted":
        permute_units(lm, seed)
        return {}
    if kind == "quantized":
        return {"Bits": bits, "WeightsRounded": round_weights(lm, bits)}
    if kind == "pruned":
        return {"Fraction": fraction, "WeightsZeroed": prune_weights(lm, fraction)}
    from ..sites import resolve_site

    site = resolve_site(lm, "mlp")
    layer = site.layers[len(site.layers) // 2] if layer is None else int(layer)
    width = site.width_of(layer) if layer in site.layers else 0
    if not 0 < n_neurons <= width:
        raise UsageError(f"--neurons {n_neurons}: give 1 to {width or 'the layer width'}")
    chosen = torch.randperm(width, generator=torch.Generator().manual_seed(seed))[:n_neurons]
    planted = amplify_units(lm, layer, chosen.tolist(), factor)
    return {"Layer": layer, "Factor": factor, "Neurons": [int(n) for n in planted]}


def derive(output, kind, *, model=None, gguf_file=None, seed=0, text="pang-lee", steps=300,
           lr=5e-5, threads=None, overwrite=False, progress=False, layer=None, n_neurons=64,
           factor=2.0, fraction=0.3, bits=4):
    """Save a ``kind`` variant of ``model`` (default: the embedded model) to ``output``.

    ``layer``, ``n_neurons`` (drawn with ``seed``) and ``factor``: the ``amplified`` variant
    (layer default: the middle one); ``fraction``: ``pruned``; ``bits``: ``quantized``.
    Returns the path of the saved folder; ``variant.json`` in it says how it was made (the
    amplified neurons included).
    """
    from bids_llm.io import TMP_PREFIX, write_json

    from ..acquisition import load_documents
    from ..models import load_model, set_threads

    if kind not in VARIANTS:
        raise UsageError(f"unknown variant {kind!r}: choose from {', '.join(VARIANTS)}")
    output = Path(output)
    if output.exists() and not overwrite:
        raise UsageError(f"{output} exists: choose a new folder or pass --overwrite")
    set_threads(threads)
    lm, tokenizer = load_model(model, gguf_file=gguf_file, dtype="float32")
    info = {"Variant": kind, "Source": str(model or "embedded SmolLM2-135M-Instruct"), "Seed": seed}
    t0 = time.perf_counter()
    if kind == "random":
        lm = random_init(lm, seed)
    elif kind == "finetuned":
        losses = finetune(lm, tokenizer, load_documents(text), steps=steps, lr=lr, seed=seed,
                          progress=progress)
        info.update(Text=str(text), Steps=steps, LearningRate=lr,
                    LossFirst10=sum(losses[:10]) / min(10, len(losses)),
                    LossLast10=sum(losses[-10:]) / min(10, len(losses)))
    else:
        info.update(_edit(lm, kind, seed, layer, n_neurons, factor, fraction, bits))
    info["Seconds"] = round(time.perf_counter() - t0, 1)
    tmp = output.with_name(f"{TMP_PREFIX}{os.getpid()}-{output.name}")
    try:
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "variant.json", info)
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output
