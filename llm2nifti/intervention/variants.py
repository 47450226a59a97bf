"""Derived and independent variants of a model, for testing fingerprints against known lineage.

* ``permuted``: each MLP layer's neurons reordered in the weights that write them (gate and
  up rows, or ``c_fc`` outputs) and read them (down columns, or ``c_proj`` inputs). The
  function is unchanged (same logits up to float rounding); the unit order is not.
* ``finetuned``: a short causal-language-modelling fine-tune on other text (AdamW, on CPU).
* ``random``: the same architecture with fresh random weights (transformers' own init).

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

__all__ = ["permute_units", "random_init", "finetune", "derive", "VARIANTS"]

VARIANTS = ("permuted", "finetuned", "random")


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


def derive(output, kind, *, model=None, gguf_file=None, seed=0, text="pang-lee", steps=300,
           lr=5e-5, threads=None, overwrite=False, progress=False):
    """Save a ``kind`` variant of ``model`` (default: the embedded model) to ``output``.

    Returns the path of the saved folder; ``variant.json`` in it says how it was made.
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
    if kind == "permuted":
        permute_units(lm, seed)
    elif kind == "random":
        lm = random_init(lm, seed)
    else:
        losses = finetune(lm, tokenizer, load_documents(text), steps=steps, lr=lr, seed=seed,
                          progress=progress)
        info.update(Text=str(text), Steps=steps, LearningRate=lr,
                    LossFirst10=sum(losses[:10]) / min(10, len(losses)),
                    LossLast10=sum(losses[-10:]) / min(10, len(losses)))
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
