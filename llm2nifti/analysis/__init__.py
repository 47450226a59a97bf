"""Analysis: what the neurons do together, found with the methods of fMRI.

Takes the runs of a dataset; gives components images (CanICA, DictLearning), networks as exact
neuron sets (``networks.tsv``), their stability over many decompositions (ICASSO) and their
recurrence across runs and seeds.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    **{name: ".decomposition" for name in (
        "Decomposition", "StableDecomposition", "default_decomposition", "configured",
        "base_decomposition", "as_stable", "reusable", "WORKFLOW_DECOMPOSITIONS",
        "decompose", "DecomposeResult", "zscore_maps", "explained_variance",
        "nilearn_estimator", "METHODS", "BACKENDS", "select_runs", "read_sidecar",
        "check_decomposition_fits")},
    **{name: ".selection" for name in (
        "maps_to_neurons", "network_names", "key_neurons", "networks", "NetworksResult",
        "load_maps", "site_of_image")},
    **{name: ".matching" for name in (
        "iou_matrix", "match_networks", "recurrence", "RecurrenceResult")},
    **{name: ".glm" for name in (
        "localize", "LocalizeResult", "fit_localizer", "contrast_label", "select_units",
        "localizer_events", "DEFAULT_CONTRAST")},
    **{name: ".connectomes" for name in (
        "connectivity", "ConnectivityResult", "network_time_series", "layer_depth",
        "compare_connectomes", "KINDS")},
    **{name: ".compare" for name in (
        "correlation_matrix", "match_score", "Alignment", "align", "null_scores",
        "lineage_verdict", "intermodel_correlation")},
    **{name: ".fingerprints" for name in (
        "fingerprint", "FingerprintResult", "ParticipantNetworks", "participant_networks",
        "random_copies", "PIPELINE_FINGERPRINT")},
    **{name: ".reduction" for name in ("RunReductions",)},
    **{name: ".diffs" for name in ("diff", "DiffResult", "PIPELINE_DIFF")},
    **{name: ".dualreg" for name in ("dual_regression",)},
    **{name: ".encoding" for name in (
        "encode", "EncodingResult", "Features", "network_features", "layer_features",
        "unit_features", "unit_kernels", "atlas_table", "cluster_table", "word_times",
        "features_at_tr", "volume_operators", "region_units", "lanczos_at_tr",
        "preferred_depth", "group_map", "PIPELINE_ENCODING", "NUISANCE")},
    **{name: ".encoding_model" for name in ("EncodingModel", "feature_columns", "zscore")},
    **{name: ".permutation" for name in ("max_t_fwe", "PermutationResult")},
    **{name: ".stability" for name in (
        "icasso", "read_stability", "stability_paths")},
    **{name: ".rsa" for name in (
        "LayerSimilarity", "layer_similarity", "rsa_matrix", "linear_cka", "rdm_vectors")},
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
