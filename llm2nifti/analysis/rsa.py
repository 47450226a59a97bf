"""Representational similarity between the layers of two models (rsatoolbox), and linear CKA.

No unit is matched: each layer of each model gives a representational dissimilarity matrix
(RDM; Kriegeskorte et al. 2008) over the same items, so models of any width, depth, tokenizer
or architecture compare. Items are sentences of the words both models read (a word ending in
``.``, ``!`` or ``?``, closing quotes or brackets aside, ends a sentence, and so does a
document's end); an item's pattern is the mean of its words' unit values (each word pooled
from its tokens). RDMs use the correlation distance; two RDMs are compared by the Pearson
correlation of their upper triangles (rsatoolbox's ``corr``). The null permutes the items of
the second model's RDMs; the p-value of each layer pair is corrected over all pairs with the
maximum statistic. Linear CKA (Kornblith et al. 2019) of the centred item x unit matrices is
given alongside.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

__all__ = ["LayerSimilarity", "layer_similarity", "sentence_items", "item_patterns",
           "rdm_vectors", "rsa_matrix", "linear_cka"]

_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*$")


@dataclass
class LayerSimilarity:
    """Layer x layer similarity of a reference model (rows) and another model (columns).

    Attributes
    ----------
    rsa, p, cka : ndarray of shape (layers_a, layers_b)
        RDM correlation, its max-statistic corrected p-value, and linear CKA.
    layers_a, layers_b : list of int
    depth_a, depth_b : ndarray
        Relative depth of each layer (layer / number of layers).
    n_items : int
    null_max : ndarray
        Maximum over layer pairs of each permutation's RDM correlation.
    """

    rsa: np.ndarray
    p: np.ndarray
    cka: np.ndarray
    layers_a: list
    layers_b: list
    depth_a: np.ndarray
    depth_b: np.ndarray
    n_items: int
    null_max: np.ndarray


def sentence_items(words, max_items=300):
    """Item (sentence) number of each row of ``words`` (-1: not used), at most ``max_items``.

    When there are more sentences, ``max_items`` of them evenly spaced are kept.
    """
    doc = words["document_id"].to_numpy()
    ends = np.array([bool(_SENTENCE_END.search(str(w))) for w in words["word"]])
    ends[:-1] |= doc[1:] != doc[:-1]
    if len(ends):
        ends[-1] = True
    item = np.concatenate([[0], np.cumsum(ends)[:-1]])
    n = int(item.max()) + 1 if len(item) else 0
    if n > max_items:
        keep = np.unique(np.linspace(0, n - 1, max_items).round().astype(int))
        remap = np.full(n, -1)
        remap[keep] = np.arange(len(keep))
        item = remap[item]
    return item


def item_patterns(nets, rows, item, pool="mean"):
    """``(items, units)`` mean patterns of a participant, streamed run by run.

    ``rows`` picks the participant's words (rows of its word table) in the order of ``item``.
    """
    from scipy import sparse

    from bids_llm.dataset import load_run

    n_items = int(item.max()) + 1
    used = item >= 0
    counts = np.bincount(item[used], minlength=n_items)
    Q = sparse.csr_matrix((1.0 / counts[item[used]], (item[used], np.flatnonzero(used))),
                          shape=(n_items, len(item)))
    P = (Q @ nets.index.pooling(pool)[np.asarray(rows)]).tocsc()
    M = None
    for run, (start, stop) in zip(nets.runs, nets.slices):
        part = P[:, start:stop]
        if part.nnz == 0:
            continue
        add = part @ load_run(run)[0].astype(np.float64)
        M = add if M is None else M + add
    return np.asarray(M)


def rdm_vectors(M, layout):
    """One correlation-distance RDM per layer (rsatoolbox): ``(layers, pairs)``."""
    from rsatoolbox.data import Dataset as RSADataset
    from rsatoolbox.rdm import calc_rdm

    out = []
    for k in range(len(layout.layers)):
        X = M[:, layout.offsets[k]:layout.offsets[k + 1]]
        out.append(calc_rdm(RSADataset(X), method="correlation").dissimilarities[0])
    return np.nan_to_num(np.asarray(out))


def _standardize_rows(V):
    V = V - V.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(V, axis=1, keepdims=True)
    return V / np.where(norm > 0, norm, np.inf)


def rsa_matrix(Va, Vb, n_permutations=1000, random_state=0):
    """RDM correlations ``(layers_a, layers_b)``, corrected p-values and the null maxima."""
    from scipy.spatial.distance import squareform

    n = squareform(Vb[0], checks=False).shape[0]
    A, B = _standardize_rows(Va), _standardize_rows(Vb)
    observed = A @ B.T
    rng = np.random.default_rng(random_state)
    iu = np.triu_indices(n, 1)
    full = np.stack([squareform(v, checks=False) for v in Vb])
    null_max = np.empty(n_permutations)
    for i in range(n_permutations):
        p = rng.permutation(n)
        Bp = _standardize_rows(full[:, p[iu[0]], p[iu[1]]])
        null_max[i] = (A @ Bp.T).max()
    pvals = (1 + (null_max[None, None, :] >= observed[..., None]).sum(axis=2)) / (1 + n_permutations)
    return observed, pvals, null_max


def linear_cka(Xs, Ys):
    """Linear CKA between every pair of ``(items, units)`` matrices of two lists."""
    def gram(X):
        X = X - X.mean(axis=0)
        return X @ X.T

    Ka = [gram(X) for X in Xs]
    Kb = [gram(Y) for Y in Ys]
    na = np.array([np.linalg.norm(K) for K in Ka])
    nb = np.array([np.linalg.norm(K) for K in Kb])
    out = np.array([[np.sum(K * L) for L in Kb] for K in Ka])
    return out / np.maximum(np.outer(na, nb), 1e-300)


def _layers(M, layout):
    return [M[:, layout.offsets[k]:layout.offsets[k + 1]] for k in range(len(layout.layers))]


def layer_similarity(ds, ref, other, *, pool="mean", max_items=300, n_permutations=1000,
                     random_state=0):
    """:class:`LayerSimilarity` of two participants' networks objects (see the module).

    ``ref`` and ``other`` are :class:`~llm2nifti.analysis.ParticipantNetworks`.
    """
    import pandas as pd

    from ..errors import UsageError

    ka = ref.words.reset_index(drop=True).assign(_a=lambda d: d.index)
    kb = other.words[["document_id", "word_index"]].reset_index(drop=True).assign(
        _b=lambda d: d.index)
    both = pd.merge(ka, kb, on=["document_id", "word_index"]).sort_values("_a")
    item = sentence_items(both, max_items)
    if item.max(initial=-1) + 1 < 3:
        raise UsageError("fewer than 3 sentences in common: RSA needs more text (--max-tokens)")
    la = ds.layout(ref.participant, ref.runs[0].site_kind)
    lb = ds.layout(other.participant, other.runs[0].site_kind)
    Ma = item_patterns(ref, both["_a"].to_numpy(), item, pool)
    Mb = item_patterns(other, both["_b"].to_numpy(), item, pool)
    rsa, p, null_max = rsa_matrix(rdm_vectors(Ma, la), rdm_vectors(Mb, lb), n_permutations,
                                  random_state)
    cka = linear_cka(_layers(Ma, la), _layers(Mb, lb))
    return LayerSimilarity(rsa, p, cka, list(la.layers), list(lb.layers),
                           np.asarray(la.layers) / la.site.n_layers,
                           np.asarray(lb.layers) / lb.site.n_layers, int(item.max()) + 1, null_max)
