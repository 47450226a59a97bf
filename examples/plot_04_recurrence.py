"""
Do networks recur across runs?
==============================

A network found once could be an accident of the text or of the random seed. ``recurrence``
decomposes each run on its own (and the whole scan with other seeds), matches their networks
one to one to the group's templates by the IoU of their units, and counts a template as
recurring in a run when the matched IoU exceeds 0.2.
"""

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

import llm2nifti
from llm2nifti.analysis import Decomposition, recurrence

gallery = Path(os.environ.get("LLM2NIFTI_GALLERY", Path(tempfile.gettempdir()) / "llm2nifti-gallery"))
root = llm2nifti.scan(gallery / "scan", max_tokens=2048, run_tokens=512, resume=True,
                      progress=False).root
found = recurrence(root, Decomposition(backend="fast", n_components=10, n_init=3), task="lee",
                   n_seeds=2, figures=False)
print(found.summary[["template", "size", "recurrence", "iou_mean", "seed_iou_mean"]])

# %%
# IoU of each template with its match in each run and each other seed:
table = found.table.pivot(index="template", columns="unit", values="iou")
fig, ax = plt.subplots(figsize=(6, 4))
shown = ax.imshow(table.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
ax.set_xticks(range(table.shape[1]), table.columns, rotation=45, ha="right")
ax.set_yticks(range(table.shape[0]), table.index)
fig.colorbar(shown, ax=ax, label="IoU")
ax.set_title("template x (run, seed)")
fig.tight_layout()
