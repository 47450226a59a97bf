"""Intervention: change the network neurons and measure what the model loses or gains.

Takes a model and neuron sets (``networks.tsv``); gives perplexity and task scores under
inhibition, amplification or retention against random controls, and pruned models.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    **{name: ".hooks" for name in ("Intervention", "intervene", "attach", "as_per_layer",
                                   "MODES")},
    **{name: ".controls" for name in (
        "neuron_stats", "random_like", "spread_matched", "top_spread", "massive_neurons",
        "without", "overlap", "count", "nested_networks")},
    **{name: ".tasks" for name in (
        "ChoiceTask", "GenerationTask", "pang_lee_task", "bigbench_task", "labelled_task",
        "multiple_choice_task", "question_task", "load_task", "normalize_answer", "exact_match",
        "token_f1", "TASK_FORMATS")},
    **{name: ".fnk" for name in ("fn_at_k", "parse_ks")},
    **{name: ".evaluation" for name in (
        "Evaluator", "Scores", "bootstrap_ci", "check_overlap", "scan_documents")},
    **{name: ".experiment" for name in (
        "Condition", "plan_conditions", "run_conditions", "verdicts", "evaluate",
        "EvaluationResult", "CONTROLS")},
    **{name: ".pruning" for name in ("prune_model", "prune", "PruneReport", "count_parameters",
                                   "forward_speed")},
    **{name: ".variants" for name in ("permute_units", "random_init", "finetune", "derive",
                                    "VARIANTS", "amplify_units", "round_weights",
                                    "prune_weights")},
    **{name: ".patching" for name in ("Patch", "patch_gap", "PatchResult")},
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
