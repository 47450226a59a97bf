"""Token events: one row per token (volume) of a run."""

from __future__ import annotations

import io

from .tsv import cell, escape, read_rows, unescape

__all__ = ["escape", "unescape", "events_tsv", "read_events", "EVENT_COLUMNS", "WORD_COLUMNS",
           "HEARD_COLUMNS",
           "documents_tsv", "read_documents", "words_tsv"]

EVENT_COLUMNS = ("onset", "duration", "token", "token_id", "document_id", "position")
# Where each token lies in its document's text, and the word it belongs to (n/a: none).
WORD_COLUMNS = ("char_start", "char_end", "word_index")
# When a participant heard each token's word (convert --words): seconds of the human run, and
# the events file that timed it (n/a: a token of no word).
HEARD_COLUMNS = ("word_onset", "word_duration", "stimulus_file")
def _int_or_na(value):
    return "n/a" if value < 0 else str(int(value))


def _seconds_or_na(value):
    return "n/a" if value != value else f"{float(value):.10g}"


def events_tsv(tokens, token_ids, document_ids, positions, tr=1.0, trial_types=None, spans=None,
               heard=None):
    """TSV text of a run's events: token ``t`` has onset ``t * tr`` and lasts one TR.

    ``spans`` (``char_start``, ``char_end``, ``word_index`` arrays, -1 for none) adds the
    :data:`WORD_COLUMNS`; ``heard`` (word onset and duration arrays, NaN for none, and the
    events file of each token, "" for none) adds the :data:`HEARD_COLUMNS`, last.

    ``trial_types`` (one per token) adds BIDS's ``trial_type`` column, third: a localizer's
    conditions. Tokens whose trial type is None (the BOS token opening each item) get no
    row: they are the GLM's baseline, which nilearn models as volumes without an event
    (a row with ``n/a`` would become a regressor of its own, or break nilearn's sorting).
    """
    columns = (list(EVENT_COLUMNS) + (list(WORD_COLUMNS) if spans is not None else [])
               + (list(HEARD_COLUMNS) if heard is not None else []))
    if trial_types is not None:
        columns.insert(2, "trial_type")
    buf = io.StringIO()
    buf.write("\t".join(columns) + "\n")
    for t, (tok, tid, doc, pos) in enumerate(zip(tokens, token_ids, document_ids, positions)):
        if trial_types is not None and trial_types[t] is None:
            continue
        kind = "" if trial_types is None else f"{cell(trial_types[t])}\t"
        extra = "" if spans is None else "".join(f"\t{_int_or_na(a[t])}" for a in spans)
        if heard is not None:
            extra += (f"\t{_seconds_or_na(heard[0][t])}\t{_seconds_or_na(heard[1][t])}"
                      f"\t{cell(heard[2][t]) if heard[2][t] else 'n/a'}")
        buf.write(f"{t * tr:g}\t{tr:g}\t{kind}{cell(tok)}\t{int(tid)}\t{cell(str(doc))}"
                  f"\t{int(pos)}{extra}\n")
    return buf.getvalue()


def read_events(path):
    """Read an events TSV into a pandas DataFrame, token text unescaped."""
    import pandas as pd

    header, rows = read_rows(path)
    df = pd.DataFrame(rows, columns=header)
    df["onset"] = df["onset"].astype(float)
    df["duration"] = df["duration"].astype(float)
    df["token"] = df["token"].map(unescape)
    df["document_id"] = df["document_id"].map(unescape)
    if "trial_type" in df:  # n/a (BOS tokens) -> missing, as pandas reads it for nilearn
        df["trial_type"] = df["trial_type"].map(lambda c: None if c == "n/a" else unescape(c))
    for col in ("token_id", "position"):
        df[col] = df[col].astype(int)
    for col in WORD_COLUMNS:  # n/a -> missing (pandas' nullable integers)
        if col in df:
            df[col] = pd.array([None if c == "n/a" else int(c) for c in df[col]], dtype="Int64")
    for col in HEARD_COLUMNS[:2]:
        if col in df:
            df[col] = [float("nan") if c == "n/a" else float(c) for c in df[col]]
    if "stimulus_file" in df:
        df["stimulus_file"] = df["stimulus_file"].map(lambda c: None if c == "n/a" else unescape(c))
    return df


def documents_tsv(documents):
    """TSV text of the stimuli table: ``document_id`` and ``text`` (escaped), one row each."""
    lines = ["document_id\ttext"]
    lines += [f"{cell(str(doc_id))}\t{cell(text)}" for doc_id, text in documents]
    return "\n".join(lines) + "\n"


def read_documents(path):
    """``{document_id: text}`` of a stimuli table written by :func:`documents_tsv`."""
    _, rows = read_rows(path)
    return {unescape(r[0]): unescape(r[1]) for r in rows}


def words_tsv(table, tr=1.0):
    """Events of a word-level run: word ``w`` has onset ``w * tr``.

    ``table`` holds ``word``, ``document_id``, ``word_index`` and ``n_tokens`` per word.
    """
    buf = io.StringIO()
    buf.write("onset\tduration\tword\tdocument_id\tword_index\tn_tokens\n")
    for w, row in enumerate(table.itertuples(index=False)):
        buf.write(f"{w * tr:g}\t{tr:g}\t{cell(row.word)}\t{cell(str(row.document_id))}"
                  f"\t{int(row.word_index)}\t{int(row.n_tokens)}\n")
    return buf.getvalue()
