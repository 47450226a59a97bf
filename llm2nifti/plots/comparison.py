"""Figures of a model comparison: correlation heat map, depth to depth, null, layer x layer RSA."""

from __future__ import annotations

import numpy as np

from .figures import _save

__all__ = ["plot_fingerprint", "plot_depths", "plot_rsa"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_fingerprint(matrix, pairs, null, row, path):
    """Networks x networks Spearman correlations (matched pairs boxed) and the score's null."""
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.4, 1]})
    C = matrix.to_numpy()
    im = ax.imshow(C, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    names_a, names_b = list(matrix.index), list(matrix.columns)
    for a, b in zip(pairs["reference_network"], pairs["network"]):
        ax.add_patch(plt.Rectangle((names_b.index(b) - 0.5, names_a.index(a) - 0.5), 1, 1,
                                   fill=False, lw=1.2, ec="black"))
    ax.set_xlabel(f"sub-{row['participant']} networks")
    ax.set_ylabel("reference networks")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, label="Spearman r (word level)")
    bx.hist(null, bins=40, color="#7f8c8d", label=f"null ({row['null']}, n = {len(null)})")
    bx.axvline(row["score"], color="#c0392b", lw=2, label=f"score {row['score']:.3f}")
    bx.set_xlabel("mean matched Spearman |r|")
    bx.set_title(f"p = {row['p']:.3g}; {row['verdict']}", fontsize=10)
    bx.legend(fontsize=8)
    return _save(fig, path)


def plot_depths(pairs_by_participant, path):
    """Relative depth of each matched pair in the reference (x) and the other model (y)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for name, pairs in pairs_by_participant.items():
        sc = ax.scatter(pairs["reference_depth"], pairs["depth"], c=pairs["spearman"],
                        cmap="viridis", vmin=-0.2, vmax=1, s=28, label=name, edgecolors="none")
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("relative depth in the reference")
    ax.set_ylabel("relative depth in the other model")
    fig.colorbar(sc, ax=ax, label="Spearman r of the pair")
    if len(pairs_by_participant) > 1:
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_rsa(similarities, path):
    """One layer x layer panel per model: RDM correlation, cells with corrected p <= .05 dotted."""
    plt = _plt()
    n = len(similarities)
    fig, axes = plt.subplots(1, n, figsize=(3.8 * n, 3.8), squeeze=False)
    for ax, (name, s) in zip(axes[0], similarities.items()):
        im = ax.imshow(s.rsa, origin="lower", cmap="magma", vmin=min(0, s.rsa.min()), vmax=1,
                       aspect="auto")
        ii, jj = np.nonzero(s.p <= 0.05)
        ax.scatter(jj, ii, s=3, c="white", marker=".")
        ax.set_title(f"{name} ({s.n_items} sentences)", fontsize=9)
        ax.set_xlabel(f"{name} layer")
        ax.set_ylabel("reference layer")
        fig.colorbar(im, ax=ax, fraction=0.046, label="RDM correlation")
    return _save(fig, path)
