"""Stable networks: decompose many times, keep what recurs (ICASSO).

ICA has many optima: two seeds of the same CanICA give different components, and one
decomposition cannot tell a network of the model from a network of the seed. ICASSO (Himberg,
Hyvärinen & Esposito, NeuroImage 2004; the default of the GIFT toolbox for group ICA) runs the
decomposition ``N`` times from different starts, optionally on bootstrap resamples of the runs,
clusters all ``N x k`` estimates by their absolute correlation (agglomerative, average linkage)
into ``k`` clusters, and scores each cluster with its stability index::

    Iq = mean |r| between the cluster's members - mean |r| between its members and the others

(1: the same component every time, 0: no better than chance; a cluster of a single estimate,
found by one decomposition only, has a within-similarity of 0). Each cluster's estimate is its
centrotype, the member with the largest summed similarity to the other members. nilearn's
``n_init`` keeps the sparsest of several starts, which does not say whether it recurs.

This module holds the clustering and its bookkeeping; the estimator that runs the ``N``
decompositions is :class:`~llm2nifti.analysis.decomposition.StableDecomposition`. With the fast
backend the exact per-run reductions are computed once and shared by all ``N`` decompositions
(:class:`~llm2nifti.analysis.RunReductions`): only the group step and FastICA repeat.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import UsageError

__all__ = ["icasso", "run_seeds", "abs_correlation", "stability_paths", "read_stability",
           "check_stable"]


def run_seeds(random_state, n_runs):
    """Seeds of the ``n_runs`` decompositions: the first is ``random_state`` itself (so ``N = 1``
    is the single decomposition), the others drawn from it."""
    rest = np.random.SeedSequence(int(random_state)).generate_state(max(n_runs - 1, 0))
    return [int(random_state)] + [int(s) % (2**31 - 1) for s in rest]


def abs_correlation(maps):
    """``|r|`` between every pair of rows of ``maps`` (float64)."""
    M = np.asarray(maps, dtype=np.float64)
    M = M - M.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(M, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    M /= norms
    return np.clip(np.abs(M @ M.T), 0.0, 1.0)


def icasso(estimates, n_clusters):
    """Cluster ``N`` decompositions' maps and score each cluster.

    Parameters
    ----------
    estimates : list of ndarray
        One ``(k, n_neurons)`` array of maps per decomposition.
    n_clusters : int

    Returns
    -------
    centrotypes : ndarray of shape (n_clusters, n_neurons)
        Clusters in decreasing stability.
    table : pandas.DataFrame
        One row per cluster, in the same order: ``component``, ``stability`` (Iq),
        ``size``, ``mean_abs_r`` (between members), ``runs`` (decompositions contributing),
        ``centrotype_run``, ``centrotype_component``.
    members : pandas.DataFrame
        One row per estimate: ``run``, ``component`` (within its decomposition), ``cluster``
        (index into ``centrotypes``), ``centrotype``, and ``x``, ``y`` (a 2-D projection of
        the distances ``1 - |r|``, classical multidimensional scaling).
    """
    from scipy.cluster.hierarchy import cut_tree, linkage
    from scipy.spatial.distance import squareform

    maps = np.concatenate([np.asarray(e) for e in estimates])
    run = np.repeat(np.arange(len(estimates)), [len(e) for e in estimates])
    comp = np.concatenate([np.arange(len(e)) for e in estimates])
    S = abs_correlation(maps)
    n = len(maps)
    if n_clusters >= n:
        labels = np.arange(n)
    else:
        D = 1.0 - S
        np.fill_diagonal(D, 0.0)
        tree = linkage(squareform(D, checks=False), method="average")
        labels = cut_tree(tree, n_clusters=n_clusters).ravel()
    rows, centro = [], []
    for c in range(n_clusters):
        inside = np.flatnonzero(labels == c)
        outside = np.flatnonzero(labels != c)
        block = S[np.ix_(inside, inside)]
        # a cluster of one estimate: nothing recurred, its within-similarity counts as 0
        within = (block.sum() - len(inside)) / max(len(inside) * (len(inside) - 1), 1)
        between = S[np.ix_(inside, outside)].mean() if len(outside) else 0.0
        best = inside[np.argmax(block.sum(axis=1))]
        centro.append(best)
        rows.append({"stability": float(within - between), "size": int(len(inside)),
                     "mean_abs_r": float(within), "runs": int(len(np.unique(run[inside]))),
                     "centrotype_run": int(run[best]), "centrotype_component": int(comp[best]),
                     "_cluster": c})
    order = sorted(range(n_clusters), key=lambda i: -rows[i]["stability"])
    rank = {rows[i]["_cluster"]: j for j, i in enumerate(order)}
    table = pd.DataFrame([rows[i] for i in order]).drop(columns="_cluster")
    table.insert(0, "component", np.arange(n_clusters))
    centrotypes = maps[[centro[i] for i in order]]
    xy = _mds(1.0 - S)
    members = pd.DataFrame({"run": run, "component": comp,
                            "cluster": [rank[int(c)] for c in labels],
                            "centrotype": np.isin(np.arange(n), centro), "x": xy[:, 0], "y": xy[:, 1]})
    return centrotypes, table.round(6), members.round(6)


def _mds(D):
    """Classical multidimensional scaling of the distance matrix ``D`` into 2 dimensions."""
    n = len(D)
    if n < 3:
        return np.zeros((n, 2))
    J = np.eye(n) - 1.0 / n
    B = -0.5 * J @ (D ** 2) @ J
    if n > 500:
        from scipy.sparse.linalg import eigsh

        vals, vecs = eigsh(B, k=2, which="LA")
    else:
        vals, vecs = np.linalg.eigh(B)
        vals, vecs = vals[-2:], vecs[:, -2:]
    idx = np.argsort(vals)[::-1]
    return vecs[:, idx] * np.sqrt(np.clip(vals[idx], 0.0, None))


def check_stable(n_runs, bootstrap, n_bold, n_components, n_neurons):
    """Refuse, in one line, settings that cannot give stable components (``n_runs``: the
    decompositions, ``n_repeats`` of :class:`~llm2nifti.analysis.StableDecomposition`)."""
    from ..memory import check_fits

    if int(n_runs) < 1:
        raise UsageError(f"n_repeats={n_runs}: decompose at least once (1 is a single decomposition)")
    if bootstrap and int(n_runs) == 1:
        raise UsageError("`bootstrap` resamples the runs of the decompositions after the first: "
                         "set n_repeats to 2 or more (10 is usual)")
    if bootstrap and n_bold < 2:
        raise UsageError("`bootstrap` resamples the runs: it needs at least 2 runs (convert with "
                         "a smaller --run-tokens, or leave `bootstrap` out)")
    if int(n_runs) == 1 or int(n_components) > int(n_neurons):
        return  # a single decomposition checks its own size (and k against the units)
    # the N x k maps and z-maps (float32) and their float64 copy while clustered, and the
    # (N k)^2 similarities (a few float64 copies)
    need = (int(n_runs) * int(n_components) * int(n_neurons) * (4 + 4 + 8)
            + (int(n_runs) * int(n_components)) ** 2 * 8 * 4)
    check_fits(need, f"{n_runs} decompositions of {n_components} components over {n_neurons} units",
               "fewer n_repeats or components")


def stability_paths(components):
    """``(stability table, estimates table)`` paths beside a components image (raw or z)."""
    from pathlib import Path

    p = Path(components)
    stem = p.name.split(".nii")[0].replace("_stat-z_components", "_components")
    stem = stem[: -len("_components")] if stem.endswith("_components") else stem
    return p.with_name(f"{stem}_stability.tsv"), p.with_name(f"{stem}_estimates.tsv")


def read_stability(components):
    """The stability table of a components image (one row per map), or None when the maps
    rest on a single decomposition (or come from elsewhere)."""
    table, _ = stability_paths(components)
    if not table.is_file():
        return None
    from bids_llm.tsv import read_frame

    return read_frame(table)
