"""Measure what an intervention does: held-out perplexity and task accuracy.

Two measures, both per item so that confidence intervals come from a
bootstrap over items:

* **perplexity** on held-out documents (never the documents the networks
  were found on: :func:`check_overlap` compares them with a scan's
  documents), one forward pass per batch of documents, each opened with BOS;
* **accuracy** on a labelled task scored by the log-likelihood of each
  answer given the prompt (:class:`ChoiceTask`; built in: the Pang-Lee
  sentiment sentences, and BIG-bench multiple-choice JSON files).

:class:`Evaluator` scores a model under any :class:`~llm2nifti.intervention.Intervention`;
:mod:`llm2nifti.intervention.controls` builds the neuron sets to compare.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..acquisition import separator_token

__all__ = ["Evaluator", "Scores", "bootstrap_ci", "check_overlap", "scan_documents"]

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ overlap
def _norm(text, n=80):
    text = re.sub(r"\s+", "", text).lower()
    return text if n is None else text[:n]


def scan_documents(dataset, participant=None, site=None):
    """Documents a dataset's runs were made of: ``{document_id: normalised text}``.

    The text is rebuilt from the runs' token events (tokens at position 0, the
    BOS, are left out), with whitespace removed and in lower case, so the
    comparison does not depend on the tokenizer.
    """
    from bids_llm.dataset import Dataset

    ds = dataset if hasattr(dataset, "runs") else Dataset(dataset)
    parts = {}
    for run in ds.runs(participant=participant, site=site):
        ev = run.events()
        ev = ev[ev["position"] > 0]
        for doc, tokens in ev.groupby("document_id", sort=False)["token"]:
            parts[doc] = parts.get(doc, "") + "".join(tokens)
    return {doc: _norm(text, None) for doc, text in parts.items()}


def check_overlap(documents, dataset, participant=None, policy="error", min_chars=20, probe=80):
    """Refuse (or warn about) evaluation documents that a scan has read.

    Texts are compared with whitespace removed and in lower case. An
    evaluation document overlaps the scan when its first ``probe`` characters
    occur anywhere in a scanned document, or when a scanned document's first
    ``probe`` characters occur anywhere in it (parts shorter than
    ``min_chars`` count only as whole documents).

    Parameters
    ----------
    documents : list of Document
        The evaluation documents.
    dataset : path or Dataset
        The scan the networks were found on.
    participant : str, optional
    policy : {"error", "warn"}
    min_chars, probe : int

    Returns
    -------
    overlap : list of str
        Ids of the evaluation documents that the scan holds.
    """
    seen = [t for t in scan_documents(dataset, participant).values() if t]
    corpus = "\x00".join(seen)
    starts = [t[:probe] for t in seen if len(t) >= min_chars]
    whole = set(seen)
    hits = []
    for d in documents:
        t = _norm(d.text, None)
        if not t:
            continue
        head = t[:probe]
        if t in whole or (len(head) >= min_chars and head in corpus) or any(p in t for p in starts):
            hits.append(d.id)
    if hits:
        msg = (f"{len(hits)} of {len(documents)} evaluation documents were read in the scan the "
               f"networks come from (e.g. {hits[0]}): evaluate on held-out text")
        if policy == "error":
            raise UsageError(msg + " (or allow it explicitly)")
        log.warning(msg)
    return hits


# ---------------------------------------------------------------- bootstrap
def bootstrap_ci(*samples, statistic=None, n_resamples=2000, confidence=0.95, seed=0):
    """Percentile bootstrap confidence interval over paired items.

    Parameters
    ----------
    *samples : array-like
        Paired per-item arrays (resampled together).
    statistic : callable, optional
        ``statistic(*samples, axis=-1)``; default: the mean of the first sample.

    Returns
    -------
    low, high : float
    """
    from scipy.stats import bootstrap

    samples = tuple(np.asarray(s, dtype=np.float64) for s in samples)
    if statistic is None:
        def statistic(x, axis=-1):
            return np.mean(x, axis=axis)
    if len(samples[0]) < 2 or np.all(samples[0] == samples[0][0]) and len(samples) == 1:
        v = float(statistic(*samples, axis=-1))
        return v, v
    res = bootstrap(samples, statistic, paired=True, vectorized=True, n_resamples=n_resamples,
                    confidence_level=confidence, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _perplexity(nll, n, axis=-1):
    return np.exp(np.sum(nll, axis=axis) / np.sum(n, axis=axis))


# ---------------------------------------------------------------- scoring
@dataclass
class Scores:
    """Per-item results of one scoring pass.

    Attributes
    ----------
    nll : ndarray
        Summed negative log-likelihood (nats) of each held-out document.
    n_tokens : ndarray
        Predicted tokens of each document.
    loglik : ndarray of shape (n_items, n_choices)
        Log-likelihood of each answer (NaN-padded where items have fewer choices).
    labels : ndarray
    generated : list of str
        Greedy answer to each open question (:class:`~llm2nifti.intervention.tasks.GenerationTask`).
    exact, f1 : ndarray
        SQuAD exact match and token F1 of each generated answer.
    """

    nll: np.ndarray = None
    n_tokens: np.ndarray = None
    loglik: np.ndarray = None
    labels: np.ndarray = None
    generated: list = None
    exact: np.ndarray = None
    f1: np.ndarray = None

    @property
    def perplexity(self):
        return float(_perplexity(self.nll, self.n_tokens))

    @property
    def correct(self):
        return np.nanargmax(self.loglik, axis=1) == self.labels

    @property
    def accuracy(self):
        return float(np.mean(self.correct))

    def metrics(self, n_resamples=2000, seed=0):
        """``{metric: (value, ci_low, ci_high, n_items)}``."""
        out = {}
        if self.nll is not None:
            lo, hi = bootstrap_ci(self.nll, self.n_tokens, statistic=_perplexity,
                                  n_resamples=n_resamples, seed=seed)
            out["perplexity"] = (self.perplexity, lo, hi, len(self.nll))
        if self.loglik is not None:
            lo, hi = bootstrap_ci(self.correct.astype(float), n_resamples=n_resamples, seed=seed)
            out["accuracy"] = (self.accuracy, lo, hi, len(self.labels))
        for metric, values in (("exact_match", self.exact), ("f1", self.f1)):
            if values is not None:
                lo, hi = bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
                out[metric] = (float(np.mean(values)), lo, hi, len(values))
        return out


class Evaluator:
    """Scores a causal language model on held-out text and a choice task.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    tokenizer : transformers tokenizer
    heldout : list of Document, optional
        Documents for perplexity.
    task : ChoiceTask or GenerationTask, optional
        Items for accuracy (answer log-likelihood), or open questions for exact match and
        token F1 (greedy generation).
    max_doc_tokens : int
        Each held-out document is cut to this many tokens (BOS included).
    batch_size : int
        Sequences per forward pass (right-padded).

    Examples
    --------
    >>> ev = Evaluator(model, tok, heldout=load_documents("lee-test"), task=pang_lee_task())  # doctest: +SKIP
    >>> base = ev.score()  # doctest: +SKIP
    >>> with intervene(model, key):  # doctest: +SKIP
    ...     hit = ev.score()
    """

    def __init__(self, model, tokenizer, heldout=None, task=None, max_doc_tokens=128, batch_size=8):
        if heldout is None and task is None:
            raise UsageError("nothing to evaluate: give held-out documents, a task, or both")
        if max_doc_tokens < 2:
            raise UsageError("max_doc_tokens must be at least 2")
        self.model = model
        self.tokenizer = tokenizer
        self.heldout = heldout
        self.task = task
        self.max_doc_tokens = max_doc_tokens
        self.batch_size = batch_size
        self._prepare()

    def _encode(self, text):
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prepare(self):
        bos = separator_token(self.tokenizer)
        head = [] if bos is None else [bos]
        self._docs = None
        if self.heldout is not None:
            self._docs = [(head + self._encode(d.text))[: self.max_doc_tokens] for d in self.heldout]
            if any(len(s) < 2 for s in self._docs):
                raise UsageError("a held-out document has fewer than 2 tokens: drop empty documents")
        self._items = self._questions = None
        if getattr(self.task, "answers", None) is not None:  # open questions
            self._questions = [head + self._encode(p) for p in self.task.prompts]
        elif self.task is not None:
            prompts = [head + self._encode(p) for p in self.task.prompts]
            answers = [[self._encode(c) for c in cs] for cs in self.task.choices]
            if any(len(a) == 0 for cs in answers for a in cs):
                raise UsageError(f"task {self.task.name}: an answer encodes to no token")
            if getattr(self.task, "single_token", False):
                long = sorted({c for cs, enc in zip(self.task.choices, answers)
                               for c, a in zip(cs, enc) if len(a) != 1})
                if long:
                    raise UsageError(f"task {self.task.name}: label word(s) {long} are not single "
                                     "tokens for this tokenizer: choose one-token words with "
                                     "--label-words")
            self._single = all(len(a) == 1 for cs in answers for a in cs)
            self._items = (prompts, answers)
            self.n_choices_ = max(len(cs) for cs in answers)

    def _device(self):
        return next(self.model.parameters()).device

    def _forward(self, seqs, last_only=False):
        """Yield ``(indices, ids, mask, logits)`` per right-padded batch (longest first).

        With ``last_only``, logits are computed at each sequence's last token only
        (shape ``(batch, 1, vocab)``) where the model supports ``logits_to_keep``.
        """
        import inspect

        order = np.argsort([-len(s) for s in seqs], kind="stable")
        dev = self._device()
        keep_ok = last_only and "logits_to_keep" in inspect.signature(self.model.forward).parameters
        for b in range(0, len(seqs), self.batch_size):
            idx = order[b: b + self.batch_size]
            L = max(len(seqs[i]) for i in idx)
            ids = torch.zeros((len(idx), L), dtype=torch.long)
            mask = torch.zeros((len(idx), L), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : len(seqs[i])] = torch.as_tensor(seqs[i])
                mask[r, : len(seqs[i])] = 1
            ids, mask = ids.to(dev), mask.to(dev)
            extra = {}
            if last_only:
                last = (mask.sum(1) - 1)[:, None]
                if keep_ok:  # a 1-D tensor of positions, as transformers documents it
                    kept = torch.unique(last)
                    extra["logits_to_keep"] = kept
                    last = torch.searchsorted(kept, last)  # each row's position among the kept
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False, **extra).logits
            if last_only:
                logits = torch.take_along_dim(logits, last[..., None], dim=1)
            yield idx, ids, mask, logits.float()

    @torch.inference_mode()
    def score(self):
        """Score the model as it is now (with any intervention attached).

        Returns
        -------
        Scores
        """
        out = Scores()
        if self._docs is not None:
            out.nll, out.n_tokens = self._score_heldout()
        if self._items is not None:
            out.loglik, out.labels = self._score_choices(), np.asarray(self.task.labels)
        if self._questions is not None:
            from .tasks import exact_match, token_f1

            out.generated = self._generate()
            refs = self.task.answers
            out.exact = np.array([exact_match(g, r) for g, r in zip(out.generated, refs)])
            out.f1 = np.array([token_f1(g, r) for g, r in zip(out.generated, refs)])
        return out

    def _generate(self):
        """Greedy answer to each open question, cut at the first newline.

        Prompts are left-padded into batches and decoded step by step with the model's
        key-value cache; interventions apply to every step as to any forward pass.
        """
        prompts = self._questions
        dev = self._device()
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        stop = {t for t in (self.tokenizer.eos_token_id,) if t is not None}
        order = np.argsort([-len(p) for p in prompts], kind="stable")
        out = [None] * len(prompts)
        for b in range(0, len(prompts), self.batch_size):
            idx = order[b: b + self.batch_size]
            L = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), L), pad or 0, dtype=torch.long)
            mask = torch.zeros((len(idx), L), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, L - len(prompts[i]):] = torch.as_tensor(prompts[i])
                mask[r, L - len(prompts[i]):] = 1
            gen = self.model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                      max_new_tokens=self.task.max_new_tokens, do_sample=False,
                                      num_beams=1, pad_token_id=pad or 0, temperature=None,
                                      top_p=None, top_k=None)
            for r, i in enumerate(idx):
                toks = [int(t) for t in gen[r, L:]]
                cut = next((j for j, t in enumerate(toks) if t in stop), len(toks))
                text = self.tokenizer.decode(toks[:cut], skip_special_tokens=True)
                out[i] = text.lstrip().split("\n")[0].strip()
        return out

    def _score_heldout(self):
        """Summed negative log-likelihood and predicted tokens of each held-out document."""
        nll = np.zeros(len(self._docs))
        n = np.zeros(len(self._docs))
        for idx, ids, mask, logits in self._forward(self._docs):
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), target,
                                   ignore_index=-100, reduction="none")
            nll[idx] = loss.sum(1).double().cpu().numpy()
            n[idx] = mask[:, 1:].sum(1).cpu().numpy()
        return nll, n

    def _score_choices(self):
        """Log-likelihood of each answer of each item, ``(n_items, n_choices)``, NaN-padded."""
        prompts, answers = self._items
        ll = np.full((len(prompts), self.n_choices_), np.nan)
        if self._single:  # one token per answer: one forward pass per prompt
            for idx, ids, mask, logits in self._forward(prompts, last_only=True):
                lp = torch.log_softmax(logits[:, 0], -1).cpu()
                for r, i in enumerate(idx):
                    ll[i, : len(answers[i])] = lp[r, [a[0] for a in answers[i]]].numpy()
            return ll
        seqs, where = [], []
        for i, (p, cs) in enumerate(zip(prompts, answers)):
            for c, a in enumerate(cs):
                seqs.append(p + a)
                where.append((i, c, len(p), len(a)))
        for idx, ids, mask, logits in self._forward(seqs):
            lp = torch.log_softmax(logits, -1)
            for r, s in enumerate(idx):
                i, c, start, k = where[s]
                pos = torch.arange(start - 1, start - 1 + k, device=lp.device)
                ll[i, c] = float(lp[r, pos, ids[r, start: start + k]].sum())
        return ll
