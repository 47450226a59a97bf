"""Tab-separated tables that every reader reads back whole: one rule for every cell of text.

The readers users have — ``pandas.read_csv(path, sep="\\t")`` with its defaults (nilearn's
``first_level_from_bids`` and pybids read that way), Python's ``csv`` and R's
``read.delim`` — agree on two things a token's text can trip:

- a cell that holds a double quote is read as a quoted field, which swallows the rows up to the
  next quote when the cell is not quoted itself;
- a cell that is exactly one of the words pandas (or R) reads as a missing value (``NA``,
  ``n/a``, ``null``, ``None``, ``nan``, an empty cell, ...) comes back as NaN.

So a cell of text is written in three steps, and read back in the reverse order:

1. backslash escapes: ``\\`` -> ``\\\\``, tab -> ``\\t``, newline -> ``\\n``, carriage return
   -> ``\\r`` (a row is always one line);
2. a text that a reader would take for a missing value is prefixed with ``\\&``, an escape that
   stands for nothing (as in troff): ``NA`` -> ``\\&NA``, the empty text -> ``\\&``;
3. a cell with a double quote in it is quoted as CSV quotes it (RFC 4180): ``"The`` ->
   ``\"\"\"The\"``, which every reader above gives back as ``"The``.

``n/a`` alone is BIDS's missing value. Files written before step 3 existed hold quotes
unquoted; :func:`read_rows` tells them apart (a file is read as quoted only when every quote in
it is quoted as step 3 writes it).
"""

from __future__ import annotations

import io

__all__ = ["NA", "MISSING_WORDS", "TEXT_CELLS", "escape", "unescape", "quote", "cell", "line", "table_text",
           "read_rows", "frame_text", "read_frame", "write_frame"]

#: BIDS's missing value.
NA = "n/a"
#: Cells that pandas' default reader (``pandas._libs.parsers.STR_NA_VALUES``) or R's
#: ``read.delim`` (``NA``) reads as missing values; the empty cell among them.
MISSING_WORDS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
NOTHING = "\\&"
#: How a text cell is written, for the ``Description`` of a sidecar's column.
TEXT_CELLS = ("Text cells: backslash escapes for backslash, tab, newline and carriage return; a "
              "text that a reader would take for a missing value (NA, n/a, null, None, nan, the "
              "empty text) begins with the escape \\& (it stands for nothing); a cell holding "
              "a double quote is quoted as CSV quotes it")
_ESC = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESC = {v: k for k, v in _ESC.items()} | {NOTHING: ""}


def escape(text):
    """Steps 1 and 2 of the module's rule: ``text`` as one unquoted TSV cell."""
    out = "".join(_ESC.get(ch, ch) for ch in text)
    return NOTHING + out if out in MISSING_WORDS else out


def unescape(cell):
    """The text of an unquoted cell (the inverse of :func:`escape`).

    ``n/a`` alone is read as the empty text, as files written before ``\\&`` existed wrote it.
    """
    if cell == NA:
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


def quote(cell):
    """Step 3: a cell with a double quote in it, quoted as CSV does; others as they are."""
    return '"' + cell.replace('"', '""') + '"' if '"' in cell else cell


def cell(text):
    """``text`` as one TSV cell, ready to write (all three steps)."""
    return quote(escape(text))


def line(cells):
    """One row: cells already written by :func:`cell` (or numbers), tab-joined, newline-ended."""
    return "\t".join(map(str, cells)) + "\n"


def table_text(columns, rows):
    """A table's text from dict rows: text through :func:`cell`; None and ``"n/a"`` are missing."""
    out = [line(columns)]
    for r in rows:
        out.append(line(_value(r.get(c)) for c in columns))
    return "".join(out)


def _value(v):
    if v is None:
        return NA
    if isinstance(v, str):
        return NA if v == NA else cell(v)
    return str(v)


def _unquote(field):
    if field.startswith('"') and field.endswith('"') and len(field) >= 2:
        inner = field[1:-1]
        if '"' in inner.replace('""', ""):
            return None
        return inner.replace('""', '"')
    return None


def _quoted_rows(lines):
    """Rows of cells, quotes removed; None where a quote is not where step 3 puts it."""
    rows = []
    for text in lines:
        fields = []
        for field in text.split("\t"):
            if '"' in field:
                inner = _unquote(field)
                if inner is None or '"' not in inner:
                    return None
                field = inner
            fields.append(field)
        rows.append(fields)
    return rows


def read_rows(path):
    """A TSV written by this module (or before quoting existed): header and rows of cells.

    Cells come back unquoted but not unescaped: :func:`unescape` gives each one's text. A row
    is one line (tabs and newlines in text are always escaped). A file is read as quoted when
    every quote in it is quoted as :func:`quote` writes it; otherwise quotes are taken as text,
    as files written before quoting held them.
    """
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [text[:-1] if text.endswith("\r") else text for text in lines]
    rows = _quoted_rows(lines)
    if rows is None:
        rows = [text.split("\t") for text in lines]
    if not rows:
        return [], []
    return rows[0], rows[1:]


def frame_text(frame, index=False, **to_csv):
    """A pandas DataFrame as TSV text by the module's rule; missing values as ``n/a``.

    Text columns go through :func:`escape` (the text ``n/a`` too: only NaN and None are
    missing); pandas quotes the cells that hold a quote (step 3). Numbers are written by
    pandas' ``DataFrame.to_csv`` (``float_format`` and other keywords pass through).
    """
    import pandas as pd

    out = frame.copy()
    if index:  # the index is text too (row labels)
        out.index = pd.Index([escape(v) if isinstance(v, str) else v for v in out.index],
                             name=out.index.name)
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col].dtype):
            out[col] = out[col].map(lambda v: escape(v) if isinstance(v, str) else v).astype(object)
    buf = io.StringIO()
    out.to_csv(buf, sep="\t", index=index, na_rep=NA, lineterminator="\n", **to_csv)
    return buf.getvalue()


def read_frame(path, **read_csv):
    """A table written by :func:`frame_text` (or by pandas before it) as a DataFrame.

    ``n/a`` (and an empty cell, as pandas wrote missing values before) become missing values;
    every other cell keeps its text, unescaped.
    """
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[NA, ""], **read_csv)
    for col in frame.columns:
        if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col].dtype):
            frame[col] = frame[col].map(lambda v: unescape(v) if isinstance(v, str) else v)
    return frame


def write_frame(path, frame, index=False, **to_csv):
    """Write ``frame`` atomically as :func:`frame_text` writes it."""
    from .io import write_text

    write_text(path, frame_text(frame, index=index, **to_csv))
