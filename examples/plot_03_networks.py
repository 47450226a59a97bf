"""
From maps to networks and flat maps
===================================

``llm2nifti decompose`` runs CanICA over the runs (here the ``fast`` backend: nilearn's CanICA
algorithm in torch, exact per-run reductions) and writes the maps as a BIDS derivative named as
tedana names its ICA outputs. ``llm2nifti networks`` thresholds each z-scored map (``|z| > 3.6``)
into a network: a set of exact ``(layer, neuron)`` units, written as ``networks.tsv``.
"""

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import llm2nifti
from llm2nifti.analysis import Decomposition, decompose, networks
from llm2nifti.report import flat_values

gallery = Path(os.environ.get("LLM2NIFTI_GALLERY", Path(tempfile.gettempdir()) / "llm2nifti-gallery"))
root = llm2nifti.scan(gallery / "scan", max_tokens=2048, run_tokens=512, resume=True,
                      progress=False).root
maps = decompose(root, Decomposition(backend="fast", n_components=10, n_init=3, random_state=0),
                 task="lee")
print(maps.components.name)
print(maps.zmaps.name)
print(f"explained variance of the 10 maps: {maps.explained_variance_total:.1%}")

# %%
# Networks are exact units
# ------------------------
found = networks(maps.zmaps, root)
print(found.networks_tsv.name)
print(found.summary[["network", "size", "share", "n_positive", "n_negative", "peak_layer"]])

# %%
# The same units, one table row each, as evaluate and prune read them:
print(found.neurons.table.head())

# %%
# Each network as a flat map
# --------------------------
# A dark pixel is a unit of the network (wide layers are pooled: a pixel is dark when any
# unit under it is).
layout = llm2nifti.Dataset(root).layout()
table = found.neurons.table
fig, axes = plt.subplots(2, 5, figsize=(13, 4))
for ax, name in zip(axes.flat, found.summary["network"]):
    units = table[table["network"] == name]
    member = np.zeros(layout.n_neurons)
    member[layout.global_index(units["layer"].to_numpy(), units["neuron"].to_numpy())] = 1
    image, _ = flat_values(member, layout)
    ax.imshow(image, aspect="auto", origin="lower", cmap="Greys", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set(title=f"{name}: {len(units)} units", xticks=[], yticks=[])
fig.suptitle("networks: layers (rows, first at the bottom) x neurons")
fig.tight_layout()
