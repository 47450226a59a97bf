"""Comparing models as subjects: the statistics of fingerprints and inter-model correlation.

Everything here works on word-level time courses, so that two models with different
tokenizers, widths and depths are laid on one axis (:mod:`llm2nifti.acquisition.words`).

Fingerprint (Liu et al., "Functional Network Fingerprint for Large Language Models",
arXiv 2601.22692): the networks x networks correlation of two models' network time courses
(Spearman, as the authors; Pearson too), the networks matched one to one (Hungarian), the
*score* the mean matched correlation, and the authors' count of matched pairs above 0.5. A
component's sign is arbitrary, so matching, score and count use the correlation's absolute
value (:func:`match_score`).

Two questions are kept apart, because two models reading one text share a stimulus-driven
response whatever their lineage (as two brains do):

* **stimulus**: is the alignment beyond chance? The null is the same score with the
  candidate's documents paired with other documents of the reference (random derangements:
  no document with itself; each pair truncated to the shorter), or, with fewer than
  :data:`MIN_DOCUMENTS` documents, each candidate document circularly shifted against the
  reference's. ``p = (1 + #{null >= score}) / (1 + n)``.
* **lineage**: is the candidate closer to the reference than models known to be unrelated?
  Answered by :func:`lineage_verdict` from scores computed here.

Inter-model correlation (the inter-subject correlation of naturalistic fMRI): for each network
of a reference, the leave-one-out correlation of each model's matched time course with the
mean of the others', with bootstrap confidence intervals over documents and a null from
circular shifts within documents.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

from ..errors import UsageError

__all__ = ["correlation_matrix", "match_score", "Alignment", "align", "null_scores",
           "lineage_verdict", "intermodel_correlation", "MIN_DOCUMENTS", "MIN_WORDS",
           "ABOVE"]

MIN_DOCUMENTS = 7  # 1,854 derangements: enough for a 1,000-permutation null
MIN_WORDS = 50
ABOVE = 0.5  # the authors' threshold for "aligned" pairs


def _standardize(X):
    X = np.asarray(X, dtype=np.float64)
    X = X - X.mean(axis=0)
    norm = np.sqrt((X ** 2).sum(axis=0))
    return X / np.where(norm > 0, norm, np.inf)


def correlation_matrix(A, B, method="spearman"):
    """``(a, b)`` correlations between the columns of ``A (n, a)`` and ``B (n, b)``.

    A constant column correlates 0 with everything.
    """
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method {method!r}: choose spearman or pearson")
    if method == "spearman":
        A, B = rankdata(A, axis=0), rankdata(B, axis=0)
    return _standardize(A).T @ _standardize(B)


def match_score(C):
    """Hungarian one-to-one matching maximising the summed absolute correlation.

    An ICA map has no sign: a network and its negation are one network, and which of the two
    a decomposition reports (the peak made positive) can flip when a map's largest positive
    and negative values are close, with its time course. Matching and score therefore use
    ``|r|``; the sign of each matched pair stays in ``C``.

    Returns ``(rows, cols, score)``: matched indices and the mean matched ``|r|``.
    """
    A = np.abs(np.asarray(C))
    rows, cols = linear_sum_assignment(A, maximize=True)
    return rows, cols, float(np.mean(A[rows, cols]))


class Alignment:
    """Two participants' word-level network time courses on their common words.

    Parameters
    ----------
    A, B : ndarray of shape (words, networks_a) and (words, networks_b)
        Rows aligned: row ``i`` of both is the same word.
    documents : array-like of shape (words,)
        Document of each row, rows of a document contiguous and in reading order.
    """

    def __init__(self, A, B, documents):
        self.A, self.B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
        documents = np.asarray(documents)
        change = np.flatnonzero(documents[1:] != documents[:-1]) + 1
        self.bounds = np.concatenate([[0], change, [len(documents)]])
        if len(set(documents[self.bounds[:-1]])) != len(self.bounds) - 1:
            raise ValueError("each document's words must be contiguous")

    @property
    def n_documents(self):
        return len(self.bounds) - 1

    def lengths(self):
        return np.diff(self.bounds)

    def score(self, method="spearman", rows_a=None, rows_b=None):
        A = self.A if rows_a is None else self.A[rows_a]
        B = self.B if rows_b is None else self.B[rows_b]
        return match_score(correlation_matrix(A, B, method))[2]


def align(keys_a, A, keys_b, B):
    """:class:`Alignment` on the words both read, in the reference's reading order.

    ``keys_*`` are DataFrames with ``document_id`` and ``word_index`` per row of ``A``/``B``.
    """
    import pandas as pd

    ka = keys_a[["document_id", "word_index"]].reset_index(drop=True).assign(_a=lambda d: d.index)
    kb = keys_b[["document_id", "word_index"]].reset_index(drop=True).assign(_b=lambda d: d.index)
    both = pd.merge(ka, kb, on=["document_id", "word_index"], how="inner").sort_values("_a")
    if both.empty:
        raise UsageError("the two participants read no common words: convert both with the "
                         "same --text and --task")
    keep = both.assign(_n=1).groupby("document_id", sort=False)["_n"].transform("size")
    both = both[keep >= 2]  # a document needs two words for a within-document null
    return Alignment(A[both["_a"].to_numpy()], B[both["_b"].to_numpy()],
                     both["document_id"].to_numpy()), both


def _derangement(n, rng):
    while True:
        p = rng.permutation(n)
        if not np.any(p == np.arange(n)):
            return p


def _pairing(al, rng, by_document):
    """Row indices ``(rows_a, rows_b)`` of one null draw."""
    starts, lengths = al.bounds[:-1], al.lengths()
    if by_document:
        p = _derangement(al.n_documents, rng)
        m = np.minimum(lengths, lengths[p])
        rows_a = np.concatenate([np.arange(s, s + k) for s, k in zip(starts, m)])
        rows_b = np.concatenate([np.arange(s, s + k) for s, k in zip(starts[p], m)])
        return rows_a, rows_b
    return None, _circular(al, rng)


def _circular(al, rng):
    """Rows of one draw of circular shifts within documents (each by 1 to length - 1)."""
    starts, lengths = al.bounds[:-1], al.lengths()
    doc = np.repeat(np.arange(al.n_documents), lengths)
    shift = rng.integers(1, np.maximum(lengths, 2))
    within = np.arange(al.bounds[-1]) - starts[doc]
    return starts[doc] + (within + shift[doc]) % lengths[doc]


def null_kind(al, n_permutations):
    """``"documents"`` or ``"circular"``, or a :class:`UsageError` when neither can be drawn."""
    if len(al.A) < MIN_WORDS:
        raise UsageError(f"only {len(al.A)} common words: a null needs at least {MIN_WORDS}; "
                         "convert more text (--max-tokens)")
    if al.n_documents >= MIN_DOCUMENTS:
        return "documents"
    shifts = float(np.prod(np.maximum(al.lengths() - 1, 1).astype(float)))
    if shifts < n_permutations:
        raise UsageError(f"{al.n_documents} documents of {len(al.A)} words allow only "
                         f"{shifts:.0f} distinct circular shifts, fewer than --n-permutations "
                         f"{n_permutations}: convert more text or lower --n-permutations")
    return "circular"


def null_scores(al, n_permutations=1000, method="spearman", random_state=0):
    """Scores of ``n_permutations`` null draws (see the module) and the kind of null."""
    kind = null_kind(al, n_permutations)
    rng = np.random.default_rng(random_state)
    out = np.empty(n_permutations)
    for i in range(n_permutations):
        rows_a, rows_b = _pairing(al, rng, kind == "documents")
        out[i] = al.score(method, rows_a, rows_b)
    return out, kind


def p_value(score, null):
    return float((1 + np.sum(np.asarray(null) >= score)) / (1 + len(null)))


def lineage_verdict(score, p, independent, alpha=0.05):
    """``"derived"``, ``"not shown"`` or ``"not tested"`` with the reason in words.

    "derived" only when the alignment is beyond chance (``p <= alpha``) *and* the score lies
    beyond every independent model's score.
    """
    independent = {k: float(v) for k, v in independent.items()}
    if not independent:
        return "not tested", ("no independent model to compare with: name --independent "
                              "participants or ask for --random-copies")
    best = max(independent, key=independent.get)
    if p > alpha:
        return "not shown", f"alignment not beyond chance (p = {p:.3g} > {alpha})"
    if score > independent[best]:
        return "derived", (f"score {score:.3f} beyond every independent model "
                           f"(highest: {best}, {independent[best]:.3f})")
    return "not shown", (f"score {score:.3f} does not exceed independent model {best} "
                         f"({independent[best]:.3f})")


def _loo(series):
    """Leave-one-out correlation of each column with the mean of the others: ``(models,)``."""
    n = series.shape[1]
    total = series.sum(axis=1, keepdims=True)
    others = (total - series) / (n - 1)
    return np.sum(_standardize(series) * _standardize(others), axis=0)


def intermodel_correlation(series, documents, n_boot=1000, n_null=1000, random_state=0):
    """Leave-one-out correlation across models, per network of the reference.

    Parameters
    ----------
    series : ndarray of shape (networks, words, models)
        Each model's time course of the network matched to the reference's network
        (column 0 is the reference).
    documents : array-like of shape (words,)
        Document of each word (contiguous).

    Returns
    -------
    dict of ndarray
        ``loo`` (networks, models), ``mean`` (networks,), ``ci_low``, ``ci_high`` (bootstrap
        over documents, 95%), ``p`` (circular-shift null of the mean) and ``p_each``
        (networks, models): the same null for each model's own leave-one-out r.
    """
    series = np.asarray(series, dtype=np.float64)
    al = Alignment(series[0, :, :1], series[0, :, :1], documents)
    rng = np.random.default_rng(random_state)
    loo = np.stack([_loo(s) for s in series])
    mean = loo.mean(axis=1)
    boot = np.empty((n_boot, len(series)))
    starts, lengths = al.bounds[:-1], al.lengths()
    for b in range(n_boot):
        pick = rng.integers(0, al.n_documents, al.n_documents)
        rows = np.concatenate([np.arange(starts[d], starts[d] + lengths[d]) for d in pick])
        boot[b] = [_loo(s[rows]).mean() for s in series]
    null = np.empty((n_null,) + loo.shape)
    for i in range(n_null):
        rows = [_circular(al, rng) for _ in range(series.shape[2] - 1)]
        shifted = np.concatenate([series[:, :, :1]] + [series[:, r, m + 1:m + 2]
                                                       for m, r in enumerate(rows)], axis=2)
        null[i] = [_loo(s) for s in shifted]
    p = (1 + np.sum(null.mean(axis=2) >= mean, axis=0)) / (1 + n_null)
    p_each = (1 + np.sum(null >= loo, axis=0)) / (1 + n_null)
    return {"loo": loo, "mean": mean, "ci_low": np.percentile(boot, 2.5, axis=0),
            "ci_high": np.percentile(boot, 97.5, axis=0), "p": p, "p_each": p_each}
