"""Connectome matrices drawn with nilearn's ``plot_matrix``."""

from __future__ import annotations

import numpy as np

from .figures import _save

__all__ = ["plot_connectome_matrix", "plot_connectome_pair"]


def _draw(ax, matrix, labels, title, vmax):
    from nilearn.plotting import plot_matrix

    m = np.array(matrix, dtype=np.float64)
    np.fill_diagonal(m, 0)  # the diagonal (1 for correlations) would set the colour scale
    plot_matrix(m, labels=labels, axes=ax, vmin=-vmax, vmax=vmax, reorder=False,
                cmap="RdBu_r", colorbar=True)
    ax.set_title(title, fontsize=9)


def plot_connectome_matrix(matrix, labels, path, title=""):
    """One connectome (networks already in display order), diagonal blanked; saves a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(3.2 + 0.28 * n, 2.8 + 0.28 * n))
    off = np.abs(np.asarray(matrix, dtype=np.float64)[~np.eye(n, dtype=bool)])
    _draw(ax, matrix, labels, title, float(off.max()) if off.size else 1.0)
    return _save(fig, path)


def plot_connectome_pair(a, b, labels_a, labels_b, path, titles=("", ""), suptitle=""):
    """Two connectomes side by side on one colour scale (matched networks in the same order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels_a)
    fig, axes = plt.subplots(1, 2, figsize=(2 * (3.6 + 0.28 * n), 3.0 + 0.28 * n))
    fig.subplots_adjust(wspace=0.55)
    off = [np.abs(np.asarray(m, dtype=np.float64)[~np.eye(n, dtype=bool)]) for m in (a, b)]
    vmax = max(float(o.max()) if o.size else 1.0 for o in off)
    _draw(axes[0], a, labels_a, titles[0], vmax)
    _draw(axes[1], b, labels_b, titles[1], vmax)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return _save(fig, path)
