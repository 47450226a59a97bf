"""Activation patching: run a model with chosen units set to another model's values.

``Patch(variant, base, units)`` hooks the variant so that, in every forward pass, the base model
reads the same tokens first and the chosen units of the variant take the base's values on those
tokens (the "restore" direction of activation patching). Both models must have the same units
at the site (two checkpoints of one model). :func:`patch_gap` asks whether the units
``diff`` found carry the change: how much of the variant's perplexity gap to the base closes
when they are patched, against random unit sets of the same count per layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..errors import UsageError
from .hooks import _check_neurons, _get, _register, as_per_layer

__all__ = ["Patch", "patch_gap", "PatchResult", "CACHE_BYTES"]

CACHE_BYTES = 1 << 30  # the source's values kept for reuse across patches of the same texts


class _PatchEdit:
    """A layer's units ``idx`` set to columns ``cols`` of the base's values for that layer."""

    def __init__(self, owner, layer, idx, cols):
        self.owner, self.layer, self.idx, self.cols = owner, layer, idx, cols

    def only(self, lo, hi):
        keep = (self.idx >= lo) & (self.idx < hi)
        if not keep.any():
            return None
        return _PatchEdit(self.owner, self.layer, self.idx[keep] - lo, self.cols[keep])

    def __call__(self, x):
        values = self.owner._values.get(self.layer)
        if values is None or tuple(values.shape[:-1]) != tuple(x.shape[:-1]):
            raise UsageError("patching needs the base and the variant to read the same tokens in "
                             "one forward pass: call the model on whole sequences (no key-value "
                             "cache, no generate)")
        y = x.clone()
        y[..., self.idx.to(x.device)] = values[..., self.cols].to(device=x.device, dtype=x.dtype)
        return y


class Patch:
    """Forward hooks that set ``neurons`` of ``model`` to ``source``'s values on the same input.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The model patched (e.g. the fine-tuned variant).
    source : transformers.PreTrainedModel
        The model whose values are copied in (e.g. the base), with the same units at ``site``.
    neurons : NeuronSet, dict of int -> indices, or (layer, neuron) pairs
    site : str
        The site kind of the neurons (``"mlp"``, ...).
    cache : dict, optional
        Shared between patches of the same models: the source's values of each input (whole
        layers) are kept there, so that patching other units of the same texts does not run
        the source again. Up to ``CACHE_BYTES``; beyond, the source runs every time.

    Attributes
    ----------
    site_ : Site
    n_selected_ : int
    """

    def __init__(self, model, source, neurons, site="mlp", cache=None):
        from ..sites import resolve_site

        self.model, self.source, self.neurons, self.site = model, source, neurons, site
        self.cache = cache
        self.site_ = resolve_site(model, site)
        self._source_site = resolve_site(source, site)
        if (self.site_.layers, self.site_.widths) != (self._source_site.layers,
                                                      self._source_site.widths):
            raise UsageError("the two models have different units at this site: patching copies "
                             "units between two checkpoints of one model")
        self.selected_ = as_per_layer(neurons)
        _check_neurons(self.selected_, self.site_)
        if any(p.hook not in ("pre", "post") for l in self.selected_ for p in self.site_.parts(l)):
            raise UsageError("patching reaches units that hooks read directly; this site's units "
                             "are computed inside a mixture of experts")
        self.n_selected_ = int(sum(len(v) for v in self.selected_.values()))
        self._handles, self._values = [], {}

    def _run_source(self, module, args, kwargs):
        from ..acquisition import Recorder

        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        key = (tuple(ids.shape), ids.cpu().numpy().tobytes(),
               None if mask is None else mask.cpu().numpy().tobytes())
        layers = (self.cache or {}).get(key)
        if layers is None or not set(self.selected_) <= set(layers):
            with torch.no_grad(), Recorder(self.source, self._source_site) as rec:
                self.source(input_ids=ids.to(next(self.source.parameters()).device),
                            attention_mask=None if mask is None else mask.to(ids.device),
                            use_cache=False)
            layers = {l: rec.activations_[l][-1] for l in self._source_site.layers}
            held = sum(t.numel() * 4 for v in (self.cache or {}).values() for t in v.values())
            if self.cache is not None and held + sum(t.numel() * 4 for t in layers.values()) <= CACHE_BYTES:
                self.cache[key] = layers
        self._values = {l: layers[l][..., torch.as_tensor(idx)] for l, idx in self.selected_.items()}

    def attach(self):
        if self._handles:
            raise RuntimeError("this patch is already attached")
        try:
            self._handles.append(self.model.register_forward_pre_hook(
                lambda m, a, k: self._run_source(m, a, k), with_kwargs=True))
            for layer, idx in self.selected_.items():
                edit = _PatchEdit(self, layer, torch.as_tensor(idx), torch.arange(len(idx)))
                offset = 0
                for part in self.site_.parts(layer):
                    local = edit.only(offset, offset + part.width)
                    if local is not None:
                        self._handles.append(_register(_get(self.model, part.module), part, local))
                    offset += part.width
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles, self._values = [], {}

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.remove()
        return False


@dataclass
class PatchResult:
    """What :func:`patch_gap` measured.

    Attributes
    ----------
    table : pandas.DataFrame
        Per text and condition (``base``, ``variant``, ``patched``, ``random``): perplexity
        and the share of the variant's log-perplexity gap to the base that patching closes
        (``closed``: 1 = the base's perplexity; for random sets the mean over seeds, with
        their range), and for ``patched`` the 95% bootstrap interval over documents.
    verdicts : list of str
        One line per text.
    """

    table: pd.DataFrame
    verdicts: list
    n_units: int
    seconds: float = 0.0
    paths: dict = field(default_factory=dict)


def _closed(base, var, patched):
    """Share of the log-perplexity gap closed, from per-document sums (arrays)."""
    b, v, p = (x[0].sum(axis=-1) / x[1].sum(axis=-1) for x in (base, var, patched))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (v - p) / (v - b)


def _bootstrap(rb, rv, rp, n_boot=2000, random_state=0):
    """95% bootstrap intervals over documents (one set of resamples): the variant's
    log-perplexity gap to the base, and the share of it that patching closes."""
    rng = np.random.default_rng(random_state)
    idx = rng.integers(0, len(rb[0]), size=(n_boot, len(rb[0])))
    b, v, p = (r[0][idx].sum(1) / r[1][idx].sum(1) for r in (rb, rv, rp))
    gap = tuple(np.quantile(v - b, [0.025, 0.975]))
    with np.errstate(invalid="ignore", divide="ignore"):
        closed = (v - p) / (v - b)
    closed = closed[np.isfinite(closed)]
    return gap, tuple(np.quantile(closed, [0.025, 0.975])) if closed.size else (np.nan, np.nan)


def _score_text(base, variant, tokenizer, docs, units, site, widths, seeds, max_doc_tokens):
    from .controls import random_like
    from .evaluation import Evaluator

    cache = {}
    ev = {m: Evaluator(m, tokenizer, heldout=docs, max_doc_tokens=max_doc_tokens)
          for m in (base, variant)}

    def evaluate(model, patch=None):
        if patch is None:
            s = ev[model].score()
        else:
            with Patch(variant, base, patch, site, cache=cache):
                s = ev[model].score()
        return s.nll, s.n_tokens

    rb, rv = evaluate(base), evaluate(variant)
    rp = evaluate(variant, units)
    rand = [evaluate(variant, random_like(units, widths, seed=s)) for s in seeds]
    return rb, rv, rp, rand


def _rows(text, rb, rv, rp, rand, n_units):
    ppl = lambda r: float(np.exp(r[0].sum() / r[1].sum()))  # noqa: E731
    (glo, ghi), (lo, hi) = _bootstrap(rb, rv, rp)
    closed_r = np.array([_closed(rb, rv, r) for r in rand])
    rows = [{"text": text, "condition": "base", "perplexity": ppl(rb), "closed": 1.0},
            {"text": text, "condition": "variant", "perplexity": ppl(rv), "closed": 0.0,
             "gap_ci_low": glo, "gap_ci_high": ghi},
            {"text": text, "condition": "patched", "perplexity": ppl(rp), "n_units": n_units,
             "closed": float(_closed(rb, rv, rp)), "closed_ci_low": lo, "closed_ci_high": hi},
            {"text": text, "condition": "random", "n_units": n_units, "n_sets": len(rand),
             "perplexity": float(np.mean([ppl(r) for r in rand])),
             "closed": float(closed_r.mean()), "closed_min": float(closed_r.min()),
             "closed_max": float(closed_r.max())}]
    return rows


def _verdict(text, rows):
    r = {row["condition"]: row for row in rows}
    gap = np.log(r["variant"]["perplexity"]) - np.log(r["base"]["perplexity"])
    key, rnd = r["patched"], r["random"]
    head = (f"{text}: perplexity base {r['base']['perplexity']:.4g}, variant "
            f"{r['variant']['perplexity']:.4g}")
    var = r["variant"]
    if gap == 0 or var["gap_ci_low"] <= 0 <= var["gap_ci_high"]:
        return head + (f": no clear behavioural gap to close (log-perplexity gap {gap:.2g}, 95% CI "
                       f"{var['gap_ci_low']:.2g} to {var['gap_ci_high']:.2g} over documents)")
    tail = (f"; patching the {key['n_units']:,} changed units closes {key['closed']:.0%} of the gap "
            f"[95% CI {key['closed_ci_low']:.0%} to {key['closed_ci_high']:.0%}], random sets of "
            f"the same count per layer {rnd['closed']:.0%} ({rnd['closed_min']:.0%} to "
            f"{rnd['closed_max']:.0%})")
    carries = key["closed_ci_low"] > rnd["closed_max"]
    return head + tail + (": the changed units carry the change" if carries else
                          ": not clearly more than random units")


def _models_of(ds, reference, candidate):
    rows = {r["participant_id"].removeprefix("sub-"): r for r in ds.participants()}
    for who in (reference, candidate):
        if who not in rows:
            raise UsageError(f"sub-{who} is not in {ds.root}/participants.tsv: convert it first")
    return rows[reference]["model"], rows[candidate]["model"]


def _texts(texts, variant_path):
    """The texts to score: those given, else the variant's own training text (when its
    ``variant.json`` names one) and held-out news (``lee-test``)."""
    import json
    from pathlib import Path

    if texts:
        return list(texts)
    out = []
    info = Path(str(variant_path)) / "variant.json"
    if info.is_file():
        text = json.loads(info.read_text()).get("Text")
        out += [text] if text else []
    return out + ["lee-test"]


def _same_tokenizer(tok_a, tok_b):
    probe = "The council met on Tuesday, 3 May: naïve café prices rose 12%."
    if tok_a(probe)["input_ids"] != tok_b(probe)["input_ids"]:
        raise UsageError("the two models tokenize text differently: patching copies units "
                         "token by token between two checkpoints of one model")


def patch_gap(units, dataset, reference, candidate, *, test=None, texts=None, n_docs=20,
              max_doc_tokens=64, seeds=5, threads=None, output=None):
    """Does patching the changed units close the variant's perplexity gap to the base?

    Parameters
    ----------
    units : path
        A neuron table (``diff``'s ``units.tsv``, or any networks table of the site).
    dataset : path
        The dataset both participants were converted into (their models are read from its
        ``participants.tsv``).
    reference, candidate : str
        The base and the variant.
    test : str, optional
        Only the units of this test (``mean`` or ``amplitude``); default: all.
    texts : list of str, optional
        Texts to score (built-in corpora or files); default: the variant's training text when
        its ``variant.json`` names one, and held-out news (``lee-test``).
    n_docs, max_doc_tokens : int
        Documents per text, each cut to this many tokens.
    seeds : int
        Random unit sets (same count per layer) as controls.

    Returns
    -------
    PatchResult
    """
    from pathlib import Path

    from bids_llm.dataset import Dataset
    from bids_llm.io import write_json
    from bids_llm.tsv import write_frame

    from ..acquisition import load_documents
    from ..models import load_model, set_threads
    from ..neuronset import NeuronSet

    t0 = time.perf_counter()
    set_threads(threads)
    ds = Dataset(dataset)
    nset = NeuronSet.from_tsv(units, networks=None if test is None else [test])
    if len(nset) == 0:
        raise UsageError(f"{units} holds no units{f' of test {test}' if test else ''}: nothing to "
                         "patch (diff found no change at this FWE level)")
    if seeds < 1 or n_docs < 2:
        raise UsageError("give at least 1 random seed and 2 documents")
    ref_path, cand_path = _models_of(ds, reference, candidate)
    base, tok_b = load_model(ref_path, dtype="float32")
    variant, tok_v = load_model(cand_path, dtype="float32")
    _same_tokenizer(tok_b, tok_v)
    found = Patch(variant, base, {}, nset.site).site_  # refuses models whose units differ
    key = nset.union().check_site(found).per_layer()
    widths = dict(zip(found.layers, found.widths))
    rows, verdicts = [], []
    for text in _texts(texts, cand_path):
        docs = load_documents(text)[:n_docs]
        scored = _score_text(base, variant, tok_v, docs, key, nset.site, widths, range(seeds),
                             max_doc_tokens)
        rows += (new := _rows(str(text), *scored, len(nset)))
        verdicts.append(_verdict(str(text), new))
    result = PatchResult(pd.DataFrame(rows), verdicts, len(nset), time.perf_counter() - t0)
    units = Path(units)
    stem = units.name.removesuffix(".tsv").removesuffix("_units")
    folder = Path(output) if output else units.parent
    result.paths = {"table": folder / f"{stem}_patching.tsv", "sidecar": folder / f"{stem}_patching.json"}
    write_frame(result.paths["table"], result.table, index=False)
    write_json(result.paths["sidecar"], {
        "Units": str(units), "Test": test or "all", "Reference": f"sub-{reference}",
        "Candidate": f"sub-{candidate}", "Direction": "variant with the units set to the base's "
        "values on the same tokens", "NDocuments": n_docs, "MaxDocTokens": max_doc_tokens,
        "RandomSeeds": seeds, "Controls": "random units, same count per layer",
        "Verdicts": verdicts, "Seconds": round(result.seconds, 1)})
    return result
