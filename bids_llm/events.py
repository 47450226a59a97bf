"""Token events: one row per token (volume) of a run."""

from __future__ import annotations

import csv
import io

__all__ = ["escape", "unescape", "events_tsv", "read_events", "EVENT_COLUMNS", "WORD_COLUMNS",
           "documents_tsv", "read_documents", "words_tsv"]

EVENT_COLUMNS = ("onset", "duration", "token", "token_id", "document_id", "position")
# Where each token lies in its document's text, and the word it belongs to (n/a: none).
WORD_COLUMNS = ("char_start", "char_end", "word_index")
_ESC = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESC = {v: k for k, v in _ESC.items()}


def escape(text):
    """Token text made safe for one TSV cell (backslash escapes; empty -> ``n/a``)."""
    if text == "":
        return "n/a"
    return "".join(_ESC.get(ch, ch) for ch in text)


def unescape(cell):
    if cell == "n/a":
        return ""
    out, i = [], 0
    while i < len(cell):
        pair = cell[i:i + 2]
        if pair in _UNESC:
            out.append(_UNESC[pair])
            i += 2
        else:
            out.append(cell[i])
            i += 1
    return "".join(out)


def _int_or_na(value):
    return "n/a" if value < 0 else str(int(value))


def events_tsv(tokens, token_ids, document_ids, positions, tr=1.0, trial_types=None, spans=None):
    """TSV text of a run's events: token ``t`` has onset ``t * tr`` and lasts one TR.

    ``spans`` (``char_start``, ``char_end``, ``word_index`` arrays, -1 for none) adds the
    :data:`WORD_COLUMNS`, last.

    ``trial_types`` (one per token) adds BIDS's ``trial_type`` column, third: a localizer's
    conditions. Tokens whose trial type is None (the BOS token opening each item) get no
    row: they are the GLM's baseline, which nilearn models as volumes without an event
    (a row with ``n/a`` would become a regressor of its own, or break nilearn's sorting).
    """
    columns = list(EVENT_COLUMNS) + (list(WORD_COLUMNS) if spans is not None else [])
    if trial_types is not None:
        columns.insert(2, "trial_type")
    buf = io.StringIO()
    buf.write("\t".join(columns) + "\n")
    for t, (tok, tid, doc, pos) in enumerate(zip(tokens, token_ids, document_ids, positions)):
        if trial_types is not None and trial_types[t] is None:
            continue
        kind = "" if trial_types is None else f"{escape(trial_types[t])}\t"
        extra = "" if spans is None else "".join(f"\t{_int_or_na(a[t])}" for a in spans)
        buf.write(f"{t * tr:g}\t{tr:g}\t{kind}{escape(tok)}\t{int(tid)}\t{escape(str(doc))}"
                  f"\t{int(pos)}{extra}\n")
    return buf.getvalue()


def read_events(path):
    """Read an events TSV into a pandas DataFrame, token text unescaped."""
    import pandas as pd

    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    df = pd.DataFrame(rows[1:], columns=rows[0])
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
    return df


def documents_tsv(documents):
    """TSV text of the stimuli table: ``document_id`` and ``text`` (escaped), one row each."""
    lines = ["document_id\ttext"]
    lines += [f"{escape(str(doc_id))}\t{escape(text)}" for doc_id, text in documents]
    return "\n".join(lines) + "\n"


def read_documents(path):
    """``{document_id: text}`` of a stimuli table written by :func:`documents_tsv`."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return {unescape(r[0]): unescape(r[1]) for r in rows[1:]}


def words_tsv(table, tr=1.0):
    """Events of a word-level run: word ``w`` has onset ``w * tr``.

    ``table`` holds ``word``, ``document_id``, ``word_index`` and ``n_tokens`` per word.
    """
    buf = io.StringIO()
    buf.write("onset\tduration\tword\tdocument_id\tword_index\tn_tokens\n")
    for w, row in enumerate(table.itertuples(index=False)):
        buf.write(f"{w * tr:g}\t{tr:g}\t{escape(row.word)}\t{escape(str(row.document_id))}"
                  f"\t{int(row.word_index)}\t{int(row.n_tokens)}\n")
    return buf.getvalue()
