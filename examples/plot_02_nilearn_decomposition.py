"""
CanICA and DictLearning with nilearn's own estimators
=====================================================

Nothing here is specific to llm2nifti: the runs and the mask are found as in any BIDS fMRI
dataset, and nilearn's ``CanICA`` and ``DictLearning`` are fitted on them. Four settings
matter for neurons, and differ from nilearn's defaults for brains:

- ``mask``: the dataset's all-neuron mask (the default ``epi`` strategy drops neurons);
- ``smoothing_fwhm=None``: smoothing would mix neighbouring neurons, across layers too;
- ``detrend=False``: tokens are not a drifting scanner signal;
- ``standardize="zscore_sample"``: z-score each neuron over tokens.

Run it on a scan of your own with ``python plot_02_nilearn_decomposition.py DATASET``.
"""

import os
import sys
import tempfile
from glob import glob
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from nilearn.decomposition import CanICA, DictLearning

import llm2nifti

if len(sys.argv) > 1:
    dataset = Path(sys.argv[1])
else:
    gallery = Path(os.environ.get("LLM2NIFTI_GALLERY", Path(tempfile.gettempdir()) / "llm2nifti-gallery"))
    dataset = llm2nifti.scan(gallery / "scan", max_tokens=2048, run_tokens=512, resume=True,
                             progress=False).root

runs = sorted(glob(str(dataset / "sub-*" / "func" / "*_bold.nii*")))
subject, task = Path(runs[0]).name.split("_")[:2]  # the first participant's first task
runs = [r for r in runs if Path(r).name.startswith(f"{subject}_{task}_") and "_acq-" not in r]
mask = glob(str(dataset / "derivatives" / "llm2nifti" / subject / "anat" / "*_desc-mlp_mask.nii*"))[0]
print(f"{len(runs)} runs of {subject}, {task}; mask {Path(mask).name}")

settings = dict(mask=mask, smoothing_fwhm=None, detrend=False, standardize="zscore_sample",
                random_state=0)
canica = CanICA(n_components=10, threshold=None, n_init=1, **settings).fit(runs)
dictlearning = DictLearning(n_components=10, alpha=10, n_epochs=1, **settings).fit(runs[:2])

# %%
# The maps, back on the neurons
# -----------------------------
# A components image is on the dataset's grid, so the neuron layout unfolds it into
# ``(components, neurons)``. Each map is drawn as layers (rows) x neurons, z-scored over
# neurons; ``llm2nifti networks`` thresholds such maps into exact neuron sets.
from llm2nifti.report import flat_values

layout = llm2nifti.Dataset(dataset).layout(subject[4:])
fig, axes = plt.subplots(2, 4, figsize=(12, 4.5))
for row, (name, est) in zip(axes, [("CanICA", canica), ("DictLearning", dictlearning)]):
    maps = layout.unfold(est.components_img_)
    z = (maps - maps.mean(1, keepdims=True)) / maps.std(1, keepdims=True)
    for i, ax in enumerate(row):
        image, _ = flat_values(z[i], layout)
        ax.imshow(image, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-6, vmax=6,
                  interpolation="nearest")
        ax.set(title=f"{name} {i}: {int((np.abs(z[i]) > 3.6).sum())} units |z|>3.6",
               xticks=[], yticks=[])
        ax.title.set_fontsize(8)
fig.suptitle("z-scored maps: layers (rows, first at the bottom) x neurons")
fig.tight_layout()

# %%
# Save the maps and map them back to neurons with the command line:
out = dataset.parent / f"{dataset.name}_canica_components.nii.gz"
canica.components_img_.to_filename(out)
print("llm2nifti networks", out, "--dataset", dataset)
