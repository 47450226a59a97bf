"""
Compare models as subjects
==========================

Two models that read the same text can be compared the way two brains are: by matching their
functional networks. ``fingerprint`` takes each participant's CanICA networks, averages each
network's activity over the tokens of each word, matches the reference's networks to the other
model's one to one (Hungarian matching on the correlation of their word-level time series),
and tests the mean matched correlation against a stimulus null (documents paired with other
documents). Here the reference is the embedded model and the candidate a copy whose MLP
neurons were permuted within each layer: the same function under other unit indices, which a
comparison by unit index would miss. A randomly initialised copy of the same architecture is
the independent model that says what an unrelated model scores.
"""

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

import llm2nifti
from llm2nifti.analysis import Decomposition, StableDecomposition, fingerprint
from llm2nifti.intervention import derive

gallery = Path(os.environ.get("LLM2NIFTI_GALLERY", Path(tempfile.gettempdir()) / "llm2nifti-gallery"))
# both models read the same 2,048 tokens, into a dataset of their own
reference = llm2nifti.scan(gallery / "compare", max_tokens=2048, run_tokens=512, resume=True,
                           progress=False)
permuted = gallery / "models" / "permuted"
if not (permuted / "variant.json").is_file():  # made once, kept for the next run
    derive(permuted, "permuted", seed=0)
llm2nifti.scan(gallery / "compare", model=permuted, participant="permuted", max_tokens=2048,
               run_tokens=512, resume=True, progress=False)

found = fingerprint(reference.root, reference.participant, ["permuted"], n_random=1, rsa=False,
                    estimator=StableDecomposition(Decomposition(backend="fast", n_components=10),
                                                  n_repeats=50))
print(found.summary[["role", "score", "n_above", "null_mean", "null_95", "p"]])
print(found.summary[["verdict", "reason"]].to_string())

# %%
# Correlation of each reference network (rows) with each of the candidate's networks, the
# columns in the order of the one-to-one matching: the diagonal holds the matched pairs, whose
# mean ``|r|`` is the score. A pair near -1 is one network that the two decompositions reported
# with opposite signs (a component's sign is a convention); a pair with a low ``|r|`` is one they
# did not both find. Each model's networks are stable components of 50 decompositions, and only
# the reference's networks of stability 0.9 or more are compared (``min_stability``).
pairs = found.pairs["permuted"]
matrix = found.matrices["permuted"]["spearman"].loc[pairs["reference_network"], pairs["network"]]
print(pairs[["reference_network", "network", "spearman"]].to_string(index=False))
fig, ax = plt.subplots(figsize=(5.5, 4.5))
shown = ax.imshow(matrix.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=90)
ax.set_yticks(range(len(matrix)), matrix.index)
ax.set(xlabel="permuted copy's networks (matched order)", ylabel=f"{reference.participant}'s networks")
fig.colorbar(shown, ax=ax, label="Spearman r (word level)")
fig.tight_layout()
