"""The defaults of the decompositions and of network selection, written once.

:class:`~llm2nifti.analysis.Decomposition` takes its parameters' defaults from here, the
workflows take their decomposition from :data:`WORKFLOW_DECOMPOSITIONS`, and the command line
reads both without importing the numerical stack (``llm2nifti --help`` stays fast).
"""

from __future__ import annotations

__all__ = ["METHODS", "BACKENDS", "N_COMPONENTS", "N_INIT", "MAX_ITER", "Z_THRESHOLD",
           "WORKFLOW_DECOMPOSITIONS"]

METHODS = ("canica", "dictlearning")
BACKENDS = ("nilearn", "fast")
N_COMPONENTS = 20  # networks per decomposition (the paper's k)
N_INIT = 10  # FastICA starts of a decomposition on its own (nilearn's CanICA default)
MAX_ITER = 200  # FastICA iterations per start (scikit-learn's, which nilearn's CanICA runs)
#: The ``|z|`` a unit's map value must pass to belong to a network (the paper's, two-sided).
Z_THRESHOLD = 3.6

#: The decomposition each workflow runs when given none: its backend, how many decompositions
#: are clustered into stable components, and why (the command line's help says it).
#: fingerprint's 50 were chosen by measurement (benchmarks/bench_stable_fingerprint.py, the
#: embedded model and its unit-permuted copy, k = 20, seeds 0-4): at 8,192 tokens a few of the
#: 20 components have near-equally frequent alternative optima, and 10 decompositions sample
#: them differently in the two models (scores 0.910-0.968); 50 sample them more alike, for
#: about 1.6x the time of 10 (the per-run reductions are shared).
WORKFLOW_DECOMPOSITIONS = {
    "decompose": ("nilearn", 1, "one decomposition by nilearn's own CanICA, as a nilearn script "
                                "runs it"),
    "recurrence": ("fast", 1, "one decomposition per run and per seed: the torch backend"),
    "fn_at_k": ("fast", 10, "one stable decomposition per k, so that the curve does not move "
                            "with one seed's optimum"),
    "fingerprint": ("fast", 50, "networks compared across models must recur: 50 decompositions "
                                "sample alternative optima alike in both models"),
    "diff": ("fast", 10, "group networks over both models that recur across seeds"),
}
