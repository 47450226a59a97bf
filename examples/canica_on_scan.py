"""CanICA on an llm2nifti scan, with plain nilearn.

Usage::

    python examples/canica_on_scan.py DATASET [N_COMPONENTS]

Finds the runs and the neuron mask of the first participant in DATASET, runs
nilearn's CanICA with the settings neuron data needs, and saves the components
as ``canica_components.nii.gz`` beside the dataset. Nothing here is specific to
llm2nifti: the dataset is read like any BIDS fMRI dataset.
"""

import sys
from glob import glob
from pathlib import Path

from nilearn.decomposition import CanICA

dataset = Path(sys.argv[1] if len(sys.argv) > 1 else "demo/scan")
n_components = int(sys.argv[2]) if len(sys.argv) > 2 else 20

runs = sorted(glob(str(dataset / "sub-*" / "func" / "*_bold.nii*")))
if not runs:
    sys.exit(f"no runs under {dataset}: run `llm2nifti convert {dataset}` first")
subject = Path(runs[0]).name.split("_")[0]
runs = [r for r in runs if Path(r).name.startswith(subject + "_") and "_acq-" not in r]
mask = glob(str(dataset / "derivatives" / "llm2nifti" / subject / "anat" / "*_desc-mlp_mask.nii*"))[0]

canica = CanICA(
    n_components=n_components,
    mask=mask,                   # explicit neuron mask: the default 'epi' strategy drops neurons
    smoothing_fwhm=None,         # smoothing would mix neighbouring neurons, across layers too
    detrend=False,               # tokens are not a drifting scanner signal
    standardize="zscore_sample", # z-score each neuron over tokens
    threshold=None,              # keep full maps; threshold them yourself (llm2nifti networks)
    n_init=1,                    # the published pipeline uses more restarts; 1 keeps this quick
    random_state=0,
    verbose=1,
)
canica.fit(runs)
out = dataset.parent / f"{dataset.name}_canica_components.nii.gz"
canica.components_img_.to_filename(out)
print(f"{len(runs)} runs, {n_components} components -> {out}")
print("map them back to neurons:  llm2nifti networks", out, "--dataset", dataset)
