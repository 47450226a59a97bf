"""Flat maps: a value per unit drawn as a layers x neurons image, read at a glance."""

from __future__ import annotations

import numpy as np

from .figures import _save

__all__ = ["plot_flatmap", "flat_values"]

MAX_COLUMNS = 768  # wider layers are pooled (the strongest value of each bin is kept)


def flat_values(values, layout, max_columns=MAX_COLUMNS):
    """``(n_layers, columns)`` array of layer-major ``values``, wide layers max-``|v|`` pooled.

    Returns
    -------
    image : ndarray
    per_column : int
        Neurons per column (1 when the layer fits).
    """
    v = layout.pad_layers(np.asarray(values, dtype=np.float64), fill=0.0)
    per = int(np.ceil(layout.width / max_columns))
    if per == 1:
        return v, 1
    pad = (-layout.width) % per
    v = np.pad(v, ((0, 0), (0, pad)))
    blocks = v.reshape(v.shape[0], -1, per)
    pick = np.abs(blocks).argmax(axis=2)
    return np.take_along_axis(blocks, pick[..., None], axis=2)[..., 0], per


def plot_flatmap(values, layout, path, title="", label="value", symmetric=True):
    """Draw ``values`` (one per unit, layer-major) as layers (rows) x neurons and save a PNG.

    Parameters
    ----------
    values : array of shape (n_neurons,)
    layout : NeuronLayout
    path : path
        PNG written atomically.
    title, label : str
        Figure title and colour-bar label.
    symmetric : bool
        Diverging colours centred on 0 (statistics, maps); else a sequential map (counts).

    Returns
    -------
    pathlib.Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, per = flat_values(values, layout)
    fig, ax = plt.subplots(figsize=(9, 2.2 + 0.06 * image.shape[0]))
    lim = float(np.percentile(np.abs(image), 99.5)) or 1.0
    im = ax.imshow(image, aspect="auto", interpolation="nearest", origin="lower",
                   cmap="RdBu_r" if symmetric else "magma",
                   vmin=-lim if symmetric else 0, vmax=lim,
                   extent=(0, layout.width, layout.layers[0] - 0.5, layout.layers[-1] + 0.5))
    ax.set_xlabel(f"neuron index ({layout.site.kind}" + (f"; each column: strongest of {per})" if per > 1 else ")"))
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=label, fraction=0.03, pad=0.01)
    return _save(fig, path)
