"""
A language localizer with a GLM, and nilearn's own BIDS entry point
===================================================================

Neuroscientists find the language network with a localizer: sentences against strings of
nonwords. ``localize`` records the model reading the built-in localizer (sentences, shuffled
words and nonwords made from the Lee corpus), writes the condition of each token as
``trial_type`` in ``events.tsv``, and fits nilearn's ``FirstLevelModel`` per unit (no HRF,
no drift: a token is an instantaneous event). The top 1% of units by t form the localizer's
network.
"""

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import llm2nifti
from llm2nifti.analysis import localize
from llm2nifti.report import flat_values

gallery = Path(os.environ.get("LLM2NIFTI_GALLERY", Path(tempfile.gettempdir()) / "llm2nifti-gallery"))
root = llm2nifti.scan(gallery / "scan", max_tokens=2048, run_tokens=512, resume=True,
                      progress=False).root
found = localize(root, progress=False)
entry = found.contrasts["sentences - nonwords"]
print(f"conditions {found.conditions}; {entry['n_selected']} units selected")
print(entry["t_path"].name)

# %%
# The t map, unit by unit
layout = llm2nifti.Dataset(root).layout()
image, _ = flat_values(entry["t"], layout)
fig, ax = plt.subplots(figsize=(9, 3.5))
limit = np.abs(image).max()
shown = ax.imshow(image, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit,
                  interpolation="nearest")
ax.set(xlabel="neuron", ylabel="layer", title="t of sentences - nonwords")
fig.colorbar(shown, ax=ax)
fig.tight_layout()

# %%
# The same GLM from nilearn's BIDS entry point
# --------------------------------------------
# ``localize`` also links the runs into a ``space-neurons`` derivative, so that
# ``first_level_from_bids`` finds runs, events and the mask as it would for fMRIPrep output.
import warnings

from nilearn.glm.first_level import first_level_from_bids

dataset = llm2nifti.Dataset(root)
participant = dataset.runs(task="localizer")[0].participant
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # nilearn notes the missing slice timing of pseudo-fMRI
    models, imgs, events, _ = first_level_from_bids(
        str(root), "localizer", space_label="neurons",
        derivatives_folder="derivatives/llm2nifti-space", hrf_model=None, drift_model=None,
        signal_scaling=False, noise_model="ols", mask_img=str(dataset.mask_path(participant)))
    t = models[0].fit(imgs[0], events=events[0]).compute_contrast(
        "sentences - nonwords", stat_type="t", output_type="stat")
print(f"{len(imgs[0])} runs; largest difference from localize's t: "
      f"{np.abs(layout.unfold(t) - entry['t']).max():.2e}")
