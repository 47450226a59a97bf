"""
Inhibit and retain a network, against controls
==============================================

The networks' units are zeroed (inhibit) or kept alone with every other unit zeroed (retain)
with forward hooks, and the model's perplexity on held-out news and its accuracy on a
sentiment task are measured. Each verdict is made against controls with the same number of
units per layer: random sets and spread-matched random sets, one per seed, whose range is
shown. A network that changes the model no more than its controls do is reported as such.

The sizes here are small so that the example runs in a minute; the published comparison
(:doc:`../results`) uses more documents, items and seeds.
"""

import os
import tempfile
from pathlib import Path

import textwrap

import matplotlib.pyplot as plt
import pandas as pd

import llm2nifti
from llm2nifti.analysis import Decomposition, decompose, networks

gallery = Path(os.environ.get("LLM2NIFTI_GALLERY", Path(tempfile.gettempdir()) / "llm2nifti-gallery"))
root = llm2nifti.scan(gallery / "scan", max_tokens=2048, run_tokens=512, resume=True,
                      progress=False).root
maps = decompose(root, Decomposition(backend="fast", n_components=10, n_init=3, random_state=0),
                 task="lee")
tsv = networks(maps.zmaps, root).networks_tsv

result = llm2nifti.evaluate(tsv, root, gallery / "evaluation", n_docs=8, n_items=16, seeds=2,
                            controls=("random", "spread-matched"), amplify=(), max_doc_tokens=64,
                            progress=False)
for line in result.verdicts:
    print(textwrap.fill(line, 100, subsequent_indent="    "))

# %%
# The numbers behind the verdicts: one row per condition and metric.
with pd.option_context("display.float_format", "{:.4g}".format):
    print(result.summary[["condition", "metric", "n_sets", "n_neurons", "mean", "min", "max"]])

# %%
# The figure ``evaluate`` wrote: bars for the network's units and for each control (the
# range over seeds), the unchanged model as a line.
fig, ax = plt.subplots(figsize=(10, 8))
ax.imshow(plt.imread(result.figures[0]))
ax.set_axis_off()
fig.tight_layout()
