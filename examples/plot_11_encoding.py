"""
Compare with human brains: encoding models on simulated listeners
=================================================================

People listen to a story in the scanner; the language model reads the same words. Each of the
model's networks gives a word series, placed at the words' onsets and convolved with an HRF;
ridge regression (himalaya) predicts every voxel of every listener from them, scored on a run
it was not fitted on, with a family-wise error null from circular shifts.

**The brains on this page are simulated.** No human dataset can be downloaded where this
documentation is built, so :mod:`llm2nifti.simulate` writes one whose answer is known: two
listeners who heard the default text read at about 2.5 words per second, in four runs, in
nilearn's MNI152 space at 4 mm, shaped like fMRIPrep's output. Three regions follow three of the
model's networks, one follows the word rate (a nuisance feature), with HRFs that differ from voxel
to voxel and AR(1) noise; every other voxel is noise. On real data the steps are the same from
``llm2nifti convert --words`` on.
"""

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import llm2nifti
from llm2nifti.analysis import Decomposition, decompose, network_features, networks, word_times
from llm2nifti.simulate import plant_bold, story_events

gallery = Path(os.environ.get("LLM2NIFTI_GALLERY", Path(tempfile.gettempdir()) / "llm2nifti-gallery"))
fmri = gallery / "listeners"

# %%
# The story the listeners heard, and the model reading it
# -------------------------------------------------------
# The first 2,400 words of the default text, read in four runs; each run's words are a BIDS
# events file (onset, duration, word). ``scan(words=...)`` is ``llm2nifti convert --words``:
# each token keeps the onset of its word in the human run.
text = " ".join(doc.text for doc in llm2nifti.load_documents("lee")[:60])
heard = story_events(fmri, text.split()[:2400], n_runs=4, participants=("01", "02"))
print(pd.read_csv(heard[0], sep="\t").head())
scan = llm2nifti.scan(gallery / "listening-scan", words=heard, resume=True, progress=False).root

# %%
# The model's networks, from its own runs: CanICA (``fast`` backend) and a threshold.
maps = decompose(scan, Decomposition(backend="fast", n_components=10, n_init=3, random_state=0))
found = networks(maps.zmaps, scan)

# %%
# Plant the truth
# ---------------
# Each network's word series (the signed mean of its units, a word's value its last token's) is
# what ``encode`` will use as a feature; three regions follow FN01, FN02 and FN03, the right
# Heschl's gyrus follows the word rate.
ds = llm2nifti.Dataset(scan)
run = ds.runs()[0]
feats = network_features(ds, run.participant, run.task, run.site_kind, found.networks_tsv)
sources = pd.DataFrame(feats.values, columns=feats.names)
sources["key"] = word_times(feats)["key"]
sources["word_rate"] = 1.0
planted = {"leftSTG": ("leftSTG", "FN01"), "leftIFG": ("leftIFG", "FN02"),
           "leftAG": ("leftAG", "FN03"), "rightHG": ("rightHG", "word_rate", (0.5, 0.7))}
truth = plant_bold(fmri, sources, planted, t_r=1.5, resolution=4, amplitude=(0.35, 0.55), seed=0)

# %%
# Encode
# ------
# ``llm2nifti encode SCAN --fmri FMRI --features networks.tsv`` does the same; the estimator
# holds the ridge's settings (penalties per voxel, the null's size).
result = llm2nifti.encode(scan, fmri, networks=found.networks_tsv,
                          estimator=llm2nifti.EncodingModel(n_permutations=1000, random_state=0))
for who, r in result.participants.items():
    past = r["p_fwe"] <= 0.05
    print(f"sub-{who}: {past.sum()} of {past.size} voxels past FWE 0.05, "
          f"r threshold {r['model'].r_threshold(0.05):.3f}")

# %%
# What was found, against what was planted (this is what a simulation allows):
rows = []
for who, r in result.participants.items():
    past = r["p_fwe"] <= 0.05
    for k, (name, (_, source, *_)) in enumerate(planted.items(), start=1):
        voxels = truth.region == k
        named = np.array(result.names)[r["best"][voxels & past]]
        rows.append({"participant": who, "region": name, "planted": source,
                     "found": f"{past[voxels].mean():.0%}",
                     "named right": f"{(named == source).mean():.0%}" if len(named) else "n/a",
                     "mean r": round(float(r["r"][voxels].mean()), 3)})
    rows.append({"participant": who, "region": "elsewhere (noise)", "planted": "-",
                 "found": f"{past[truth.region == 0].mean():.2%}", "named right": "-",
                 "mean r": round(float(r["r"][truth.region == 0].mean()), 3)})
print(pd.DataFrame(rows).to_string(index=False))

# %%
# Where a region is found, its voxels are named by the network planted there; noise voxels stay
# below the family-wise threshold. A region can be missed where its network's series, convolved
# with the planted HRFs (peaks from 4.5 to 6.5 s), is fast enough that nilearn's Glover HRF
# (peak near 5 s) predicts it poorly: ``hrf="fir"`` learns each voxel's response shape instead,
# at the cost of four columns per feature. With two listeners the group's FWE p cannot go below
# 1/4; a group needs five or more.
#
# Each listener's clusters past FWE, with the feature most of their voxels rest on:
print(pd.read_csv(result.participants["01"]["paths"]["clusters"], sep="\t").to_string(index=False))

# %%
# The held-out r on a glass brain
# -------------------------------
from nilearn import image, plotting  # noqa: E402

paths = result.participants["01"]["paths"]
shown = image.math_img("(p <= 0.05) * r", p=str(paths["pfwe"]), r=str(paths["r"]))
plotting.plot_glass_brain(shown, colorbar=True, plot_abs=False, cmap="RdBu_r",
                          title="sub-01: held-out r, voxels past FWE (simulated)")

# %%
# The network each voxel rests on (labels past FWE), and the group's z map over the two
# listeners (nilearn's SecondLevelModel; its FWE p map sits beside it).
plotting.plot_roi(str(paths["best"]), cmap="tab10", title="sub-01: best feature (simulated)",
                  display_mode="ortho", cut_coords=(-50, -20, 8))
plotting.plot_glass_brain(str(result.group), colorbar=True, plot_abs=False,
                          title="group z (two simulated listeners)")
plotting.show()
