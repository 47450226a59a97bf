"""The words human participants heard: BIDS events files as the model's text.

An fMRI story-listening dataset times every word of the story in an events file (``onset``,
``duration`` and a column holding the word). :func:`word_events_documents` turns each file
into one document, the words joined by single spaces as written (punctuation kept), and keeps
each word's onset and duration, so that ``convert --words`` can write them beside the tokens:
every token's ``word_onset`` and ``word_duration`` (seconds of the human run) and the
``stimulus_file`` it came from. The word rule is the one of :mod:`llm2nifti.acquisition.words`
(maximal runs of non-whitespace characters): a cell holding two words ("New York") gives two
words, both at that row's time; an empty cell gives none; rows without a word (other trial
types, ``n/a``) are left out. A row with a word and no onset is refused with its row number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .corpora import Document

__all__ = ["WordTimes", "read_word_events", "word_events_documents", "WORD_COLUMN"]

WORD_COLUMN = "word"
_MISSING = ("", "n/a", "N/A")


@dataclass
class WordTimes:
    """When each word of one document was heard.

    Attributes
    ----------
    onset, duration : ndarray of shape (n_words,)
        Seconds of the human run, per word index of the document (the word rule's order).
    source : str
        The events file's name.
    line : ndarray of shape (n_words,), optional
        Each word's line in the file (1: the header).
    """

    onset: np.ndarray
    duration: np.ndarray
    source: str
    line: np.ndarray | None = None


def _number(value):
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x


def read_word_events(path, column=WORD_COLUMN, what="--words"):
    """One events file as a :class:`Document` and its :class:`WordTimes`.

    Parameters
    ----------
    path : path
        A BIDS ``*_events.tsv`` with ``onset``, ``duration`` and ``column``.
    column : str
        The column holding each word.
    what : str
        How errors name the file's origin (the option that gave it).

    Returns
    -------
    (Document, WordTimes)
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {path}: no such file")
    try:  # every cell as written: a word "NA" or "null" is a word; BIDS writes n/a for none
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise UsageError(f"{what} {path.name}: not a tab-separated events file "
                         f"({str(exc).splitlines()[0]})") from None
    missing = [c for c in ("onset", "duration", column) if c not in table.columns]
    if missing:
        raise UsageError(f"{what} {path.name} has no column {', '.join(missing)}: a BIDS events "
                         f"file with onset, duration and the words in {column!r} (--word-column)")
    words, onsets, durations, lines = [], [], [], []
    for i, row in enumerate(table.itertuples(index=False), start=2):  # line 1: the header
        word = getattr(row, column) if column.isidentifier() else row[table.columns.get_loc(column)]
        if word in _MISSING:
            continue  # another trial type, or silence
        if "\\" in word:  # a cell written by the project's TSV rule (bids_llm.tsv): NA -> \&NA
            from bids_llm.tsv import unescape

            word = unescape(word)
        onset, duration = _number(row.onset), _number(row.duration)
        if not math.isfinite(onset):
            raise UsageError(f"{what} {path.name} line {i}: the word {word!r} has no onset "
                             f"({row.onset!r}): give every word its onset in seconds")
        for part in str(word).split():
            words.append(part)
            onsets.append(onset)
            durations.append(duration if math.isfinite(duration) else 0.0)
            lines.append(i)
    if not words:
        raise UsageError(f"{what} {path.name}: no words in column {column!r}")
    stem = path.name.split(".")[0]
    stem = stem[: -len("_events")] if stem.endswith("_events") else stem
    doc = Document(stem, " ".join(words))
    return doc, WordTimes(np.asarray(onsets, float), np.asarray(durations, float), path.name,
                          np.asarray(lines, int))


def word_events_documents(paths, column=WORD_COLUMN):
    """The documents of several events files, in the order given, and their word times.

    Returns
    -------
    documents : list of Document
        One per file (ids made unique with a suffix where two files share a name).
    times : list of WordTimes
        In the same order.
    task : str or None
        The first file's ``task`` entity, the scan's default task label.
    """
    documents, times, seen = [], [], {}
    for path in paths:
        doc, t = read_word_events(path, column)
        n = seen[doc.id] = seen.get(doc.id, 0) + 1
        if n > 1:
            doc = Document(f"{doc.id}-{n}", doc.text)
        documents.append(doc)
        times.append(t)
    if not documents:
        raise UsageError("--words: give at least one events file")
    task = None
    for part in Path(paths[0]).name.split("_"):
        if part.startswith("task-"):
            task = "".join(ch for ch in part[len("task-"):] if ch.isalnum()) or None
    return documents, times, task


def token_word_times(times, document, word):
    """Per token: the onset and duration of its word, and its events file.

    Parameters
    ----------
    times : list of WordTimes
        One per document.
    document, word : ndarray of int
        Each token's document index and word index (-1: no word, e.g. BOS).

    Returns
    -------
    (onset, duration, source) : ndarray, ndarray, list of str
        NaN and "" where a token has no word.
    """
    onset = np.full(len(document), np.nan)
    duration = np.full(len(document), np.nan)
    source = [""] * len(document)
    for i, (d, w) in enumerate(zip(document, word)):
        if w >= 0:
            t = times[d]
            onset[i], duration[i], source[i] = t.onset[w], t.duration[w], t.source
    return onset, duration, source
