"""llm2nifti: scan a language model like a brain.

Neurons are voxels, tokens are volumes: :func:`scan` records a model reading
text into a BIDS-like dataset of 4D NIfTI runs that nilearn reads unchanged;
components found there map back to exact neurons through :class:`NeuronLayout`.

The package follows the data path: the objects everything uses live here
(sites, layout, neuron sets, models, errors); the stages are
:mod:`llm2nifti.acquisition`, :mod:`llm2nifti.analysis`,
:mod:`llm2nifti.intervention` and :mod:`llm2nifti.report`.
Submodules are imported on first use, so ``import llm2nifti`` stays light.
"""

from ._lazy import lazy_exports
from ._version import __version__

_EXPORTS = {
    "NeuronLayout": ".layout", "Site": ".sites", "resolve_site": ".sites",
    "load_model": ".models", "UsageError": ".errors", "NeuronSet": ".neuronset",
    "scan": ".acquisition.convert", "ScanResult": ".acquisition.convert",
    "Recorder": ".acquisition.recording", "record": ".acquisition.recording",
    "load_documents": ".acquisition.stimuli",
    "decompose": ".analysis.decomposition", "Decomposition": ".analysis.decomposition",
    "StableDecomposition": ".analysis.decomposition",
    "maps_to_neurons": ".analysis.selection", "networks": ".analysis.selection",
    "recurrence": ".analysis.matching", "localize": ".analysis.glm",
    "connectivity": ".analysis.connectomes", "words_dataset": ".acquisition.words",
    "fingerprint": ".analysis.fingerprints", "diff": ".analysis.diffs",
    "encode": ".analysis.encoding", "EncodingModel": ".analysis.encoding_model",
    "patch_gap": ".intervention.patching",
    "intervene": ".intervention.hooks", "Intervention": ".intervention.hooks",
    "Evaluator": ".intervention.evaluation",
    "neuron_stats": ".intervention.controls", "evaluate": ".intervention.experiment",
    "prune": ".intervention.pruning", "prune_model": ".intervention.pruning",
    "Dataset": "bids_llm.dataset", "load_run": "bids_llm.dataset",
}

__all__ = ["__version__", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
