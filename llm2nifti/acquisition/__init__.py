"""Acquisition: a model reads text while hooks record its neurons.

Takes a model and stimuli (text files, tables, built-in corpora); gives a BIDS dataset of 4D
NIfTI runs (tokens x neurons folded by :class:`~llm2nifti.layout.NeuronLayout`) with events.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "scan": ".convert", "ScanResult": ".convert",
    "Recorder": ".recording", "record": ".recording",
    "pinned_buffer": ".recording",
    **{name: ".stimuli" for name in (
        "Document", "TokenStream", "load_documents", "tokenize_documents", "make_runs",
        "MAX_RUN_TOKENS", "LOCALIZER", "builtin_corpus_path", "BUILTIN_CORPORA", "task_label",
        "separator_token")},
    "localizer_documents": ".localizer", "CONDITIONS": ".localizer",
    **{name: ".listening" for name in (
        "WordTimes", "read_word_events", "word_events_documents", "WORD_COLUMN")},
    **{name: ".words" for name in (
        "WORD_RULE", "POOLS", "word_spans", "token_spans", "token_words", "WordIndex",
        "word_index", "participant_words", "words_dataset", "PIPELINE_WORDS")},
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
