"""
The HTML report
===============

``llm2nifti report`` gathers what the other commands left in the dataset (the runs, the
components, networks, recurrence, the localizer, connectomes, evaluations) into one
self-contained HTML page per participant, like fMRIPrep's and nilearn's reports: every image
is embedded, so the page opens offline as one file.
"""

import base64
import io
import os
import re
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

import llm2nifti
from llm2nifti.analysis import Decomposition, decompose
from llm2nifti.report import report

gallery = Path(os.environ.get("LLM2NIFTI_GALLERY", Path(tempfile.gettempdir()) / "llm2nifti-gallery"))
root = llm2nifti.scan(gallery / "scan", max_tokens=2048, run_tokens=512, resume=True,
                      progress=False).root
decompose(root, Decomposition(backend="fast", n_components=10, n_init=3, random_state=0),
          task="lee")
(page,) = report(root, participant=llm2nifti.Dataset(root).runs()[0].participant)
html = page.read_text()
print(page)
print("sections:", re.findall(r'<section id="([a-z]+)"', html))

# %%
# The page's first figure: the components, drawn as soon as ``decompose`` has run.
first = re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1)
fig, ax = plt.subplots(figsize=(11, 4))
ax.imshow(plt.imread(io.BytesIO(base64.b64decode(first))))
ax.set_axis_off()
fig.tight_layout()
