"""Token events: one row per token (volume) of a run."""

from __future__ import annotations

import csv
import io

__all__ = ["escape", "unescape", "events_tsv", "read_events", "EVENT_COLUMNS"]

EVENT_COLUMNS = ("onset", "duration", "token", "token_id", "document_id", "position")
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


def events_tsv(tokens, token_ids, document_ids, positions, tr=1.0, trial_types=None):
    """TSV text of a run's events: token ``t`` has onset ``t * tr`` and lasts one TR.

    ``trial_types`` (one per token) adds BIDS's ``trial_type`` column, third: a localizer's
    conditions. Tokens whose trial type is None (the BOS token opening each item) get no
    row: they are the GLM's baseline, which nilearn models as volumes without an event
    (a row with ``n/a`` would become a regressor of its own, or break nilearn's sorting).
    """
    columns = list(EVENT_COLUMNS)
    if trial_types is not None:
        columns.insert(2, "trial_type")
    buf = io.StringIO()
    buf.write("\t".join(columns) + "\n")
    for t, (tok, tid, doc, pos) in enumerate(zip(tokens, token_ids, document_ids, positions)):
        if trial_types is not None and trial_types[t] is None:
            continue
        kind = "" if trial_types is None else f"{escape(trial_types[t])}\t"
        buf.write(f"{t * tr:g}\t{tr:g}\t{kind}{escape(tok)}\t{int(tid)}\t{escape(str(doc))}\t{int(pos)}\n")
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
    return df
