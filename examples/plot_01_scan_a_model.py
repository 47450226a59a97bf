"""
Scan a model and look at a run with nilearn
===========================================

A language model reads text; each token it reads is one volume, each MLP neuron one voxel.
``llm2nifti.scan`` (the ``llm2nifti convert`` command) writes the runs as 4D NIfTI images in
a BIDS dataset. Here the embedded model, SmolLM2-135M, reads 2,048 tokens of the Lee news
corpus in four runs of 512 tokens, and the first run is read back with nibabel and with
nilearn's ``NiftiMasker``, exactly as an fMRI run would be.
"""

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from nilearn.maskers import NiftiMasker

import llm2nifti

gallery = Path(os.environ.get("LLM2NIFTI_GALLERY", Path(tempfile.gettempdir()) / "llm2nifti-gallery"))
res = llm2nifti.scan(gallery / "scan", max_tokens=2048, run_tokens=512, resume=True,
                     progress=False)
print(f"{len(res.runs)} runs of sub-{res.participant}, task {res.task}")
print(f"{res.layout.n_neurons} neurons on a grid of {res.layout.shape} (one layer per z slice)")

# %%
# A run is an ordinary 4D image
# -----------------------------
# Its fourth axis is the token (TR = 1 s); its header and JSON sidecar say so.
img = nib.load(res.runs[0])
print(img.shape, "TR =", img.header.get_zooms()[3], "s")

# %%
# nilearn reads it with the dataset's neuron mask
# -----------------------------------------------
# The mask holds every neuron. Give it explicitly: nilearn's default ``epi`` strategy would
# drop neurons whose activations look like background.
dataset = llm2nifti.Dataset(res.root)
mask = dataset.mask_path(res.participant)
masker = NiftiMasker(mask_img=mask, standardize=False).fit()
X_masked = masker.transform(img)
print("nilearn:", X_masked.shape, "(tokens x neurons, in the mask's voxel order)")

# %%
# The neuron layout maps nilearn's columns back onto exact ``(layer, neuron)`` indices.
X, neurons = llm2nifti.load_run(res.runs[0])
layout = dataset.layout(res.participant)
np.testing.assert_array_equal(layout.from_masked(X_masked), X)
print(neurons.head())

# %%
# Where the activity is
# ---------------------
# Each unit's mean activation over the run as a flat map: layers are rows (the first at the
# bottom), neurons are columns. And one neuron's time series, the way one would plot a voxel.
from llm2nifti.report import flat_values

image, _ = flat_values(X.mean(0), layout)
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.5), width_ratios=(2, 1))
limit = np.abs(image).max()
shown = ax0.imshow(image, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit,
                   interpolation="nearest")
ax0.set(xlabel="neuron (wide layers pooled by max |value|)", ylabel="layer",
        title="mean activation over 512 tokens")
fig.colorbar(shown, ax=ax0)
busiest = int(np.argmax(X.std(0)))
layer, neuron = neurons.iloc[busiest][["layer", "neuron"]]
ax1.plot(X[:100, busiest], lw=1)
ax1.set(xlabel="token (volume)", ylabel="activation", title=f"layer {layer}, neuron {neuron}")
fig.tight_layout()
