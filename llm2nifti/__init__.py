"""llm2nifti: scan a language model like a brain.

Neurons are voxels, tokens are volumes: :func:`scan` records a model reading
text into a BIDS-like dataset of 4D NIfTI runs that nilearn reads unchanged;
components found there map back to exact neurons through :class:`NeuronLayout`.

Submodules are imported on first use, so ``import llm2nifti`` stays light.
"""

from ._version import __version__

_LAZY = {
    "scan": ".scan", "ScanResult": ".scan",
    "NeuronLayout": ".layout", "Site": ".sites", "resolve_site": ".sites",
    "Recorder": ".recording", "record": ".recording",
    "load_model": ".models", "load_documents": ".stimuli",
    "UsageError": ".errors",
    "intervene": ".intervention", "Intervention": ".intervention",
    "Evaluator": ".evaluation", "pang_lee_task": ".evaluation", "neuron_stats": ".controls",
    "evaluate": ".experiment", "prune": ".prune", "prune_model": ".prune",
    "decompose": ".decomposition", "Decomposition": ".decomposition",
    "maps_to_neurons": ".networks", "NeuronSet": ".neuronset", "iou_matrix": ".recurrence",
}
_LAZY_BIDS = {"Dataset": "bids_llm.dataset", "load_run": "bids_llm.dataset"}

__all__ = ["__version__", *_LAZY, *_LAZY_BIDS]


def __getattr__(name):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    if name in _LAZY_BIDS:
        return getattr(importlib.import_module(_LAZY_BIDS[name]), name)
    raise AttributeError(f"module 'llm2nifti' has no attribute {name!r}")
