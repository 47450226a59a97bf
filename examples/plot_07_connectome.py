"""
Connectomes between networks
============================

Each network's time series over tokens is extracted with nilearn's ``NiftiMapsMasker`` on the
components, and nilearn's ``ConnectivityMeasure`` (Ledoit-Wolf covariance) gives a connectome
per run and for the group, with networks ordered by the mean layer at which they live.
"""

import os
import tempfile
from pathlib import Path

import llm2nifti
from llm2nifti.analysis import Decomposition, connectivity, decompose
from nilearn import plotting

gallery = Path(os.environ.get("LLM2NIFTI_GALLERY", Path(tempfile.gettempdir()) / "llm2nifti-gallery"))
root = llm2nifti.scan(gallery / "scan", max_tokens=2048, run_tokens=512, resume=True,
                      progress=False).root
maps = decompose(root, Decomposition(backend="fast", n_components=10, n_init=3, random_state=0),
                 task="lee")
found = connectivity(maps.components, root, task="lee", kinds=("correlation", "partial correlation"),
                     progress=False)
print("networks by depth:", [found.names[i] for i in found.order])
print("mean layer:", found.depth[found.order].round(1))

# %%
# nilearn draws the group matrices, networks ordered by depth.
for kind, matrix in found.connectomes.items():
    order = found.order
    plotting.plot_matrix(matrix[order][:, order], labels=[found.names[i] for i in order],
                         vmin=-1, vmax=1, title=kind, colorbar=True)
