"""Stimuli: the documents a model reads, tokenised once and cut into runs.

How runs are made
-----------------
Documents are tokenised one by one; each starts with the tokenizer's BOS token
(or, for tokenizers without one such as GPT-2's, its end-of-text token), so the
model knows a new document begins and no document's first word carries the
"massive activations" a context-free first position produces. The documents'
tokens are concatenated into one stream that is cut into runs of exactly
``run_tokens`` tokens (the last run may be shorter). A run may therefore cross
a document boundary, and a long document continues into the next run. Each
run is read in its own forward pass: the model's context never spans two runs,
so ``run_tokens`` may not exceed the model's context window.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .corpora import BUILTIN_CORPORA, Document, builtin_corpus_path
from .localizer import localizer_documents

__all__ = ["Document", "TokenStream", "load_documents", "tokenize_documents", "make_runs",
           "MAX_RUN_TOKENS", "LOCALIZER", "builtin_corpus_path", "BUILTIN_CORPORA", "task_label", "separator_token"]

MAX_RUN_TOKENS = 32767  # NIfTI-1 dims are int16
LOCALIZER = "localizer"  # the built-in language localizer (sentences, words, nonwords)
_TEXT_SUFFIXES = {".txt", ".cor", ".text", ".md"}

def task_label(name):
    """BIDS task label (alphanumeric) from a stimulus-set name."""
    label = re.sub(r"[^A-Za-z0-9]", "", str(name))
    if not label:
        raise UsageError(f"cannot make a task label from {name!r}: pass --task with letters or digits")
    return label


def _read_text(path, encoding):
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise UsageError(f"{path} looks binary (it holds NUL bytes): pass a text file")
    try:
        return raw.decode(encoding or "utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{path} is not valid {encoding or 'utf-8'} (byte {exc.start}): pass --encoding, e.g. latin-1"
        ) from None
    except LookupError:
        raise UsageError(f"unknown encoding {encoding!r}: pass a Python codec name such as latin-1") from None


def _lines_as_documents(text, stem):
    return [Document(f"{stem}{i:04d}", line.strip())
            for i, line in enumerate(text.splitlines()) if line.strip()]


def _table_documents(path, text, id_column, text_column):
    docs = []
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UsageError(f"{path}:{n} is not valid JSON: one JSON object per line") from None
            if not isinstance(row, dict):
                raise UsageError(f"{path}:{n} is not a JSON object")
            docs.append(row)
    else:
        docs = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    if not docs:
        raise UsageError(f"{path} holds no documents")
    for col in (id_column, text_column):
        if col not in docs[0]:
            raise UsageError(
                f"{path} has no {col!r} column (columns: {', '.join(map(str, docs[0]))}): "
                "pass --id-column/--text-column")
    if "condition" not in docs[0]:
        return [Document(str(r[id_column]), str(r[text_column])) for r in docs]
    return [Document(str(r[id_column]), str(r[text_column]), _condition(r["condition"], path, n))
            for n, r in enumerate(docs, 1)]


def _condition(value, path, n):
    """A condition name: letters and digits, so that it can name a contrast and a file."""
    from bids_llm.naming import label

    try:
        return label(str(value).strip(), f"{path} item {n}: condition")
    except ValueError as exc:
        raise UsageError(f"{exc}: rename the condition") from None


def load_documents(source=None, encoding=None, id_column="id", text_column="text",
                   one_per_line=None):
    """Read documents.

    Parameters
    ----------
    source : str, path or list of Document, optional
        Documents as they are, or None or a built-in name (``"lee"``, the default: 300 news articles;
        ``"lee-test"``: 50 other articles; ``"pang-lee"``: 200 sentiment sentences;
        ``"localizer"``: sentences, shuffled words and nonwords, see
        :func:`~llm2nifti.acquisition.localizer.localizer_documents`),
        a text file (one document), a folder of text files (one document each),
        or a ``.jsonl``/``.tsv`` table with an id and a text column (and, for a
        localizer, a ``condition`` column: each item is then one document of
        that condition).
    encoding : str, optional
        Text encoding (default utf-8; the built-in corpora are latin-1).
    id_column, text_column : str
        Columns of a JSONL/TSV table.
    one_per_line : bool, optional
        Treat each non-empty line of a text file as a document (default for the
        built-in corpora).

    Returns
    -------
    documents : list of Document
    """
    if source is None:
        source = "lee"
    if isinstance(source, (list, tuple)) and all(isinstance(d, Document) for d in source):
        docs = list(source)
        if not docs:
            raise UsageError("no documents given: pass at least one")
        return docs
    if str(source) == LOCALIZER:
        return localizer_documents()
    if str(source) in BUILTIN_CORPORA:
        name = str(source)
        path = builtin_corpus_path(name)
        docs = _lines_as_documents(_read_text(path, encoding or BUILTIN_CORPORA[name][1]),
                                   BUILTIN_CORPORA[name][2])
    else:
        path = Path(source)
        if not path.exists():
            raise UsageError(
                f"stimulus {source!s} not found: pass a text file, a folder, a .jsonl/.tsv table "
                f"or one of {', '.join(BUILTIN_CORPORA)}")
        if path.is_dir():
            files = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in _TEXT_SUFFIXES)
            if not files:
                raise UsageError(f"folder {path} has no text files ({', '.join(sorted(_TEXT_SUFFIXES))})")
            docs = [Document(p.stem, _read_text(p, encoding)) for p in files]
        elif path.suffix.lower() in (".jsonl", ".tsv"):
            docs = _table_documents(path, _read_text(path, encoding), id_column, text_column)
        else:
            text = _read_text(path, encoding)
            docs = (_lines_as_documents(text, path.stem) if one_per_line
                    else [Document(path.stem, text)])
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise UsageError(f"stimulus {source!s} holds no text: pass a non-empty text")
    ids = [d.id for d in docs]
    if len(set(ids)) != len(ids):
        raise UsageError(f"stimulus {source!s} has duplicate document ids: make them unique")
    return docs


@dataclass
class TokenStream:
    """Tokens of all documents, concatenated.

    Attributes
    ----------
    ids : ndarray of int64
    document : ndarray of int
        Index into ``documents`` of each token.
    position : ndarray of int
        Position of each token inside its document (the BOS token is 0).
    documents : list of Document
    char_start, char_end : ndarray of int
        Character span of each token in its document's text (-1 for the BOS token).
    word : ndarray of int
        Index of the word each token belongs to within its document, under
        :data:`~llm2nifti.acquisition.words.WORD_RULE` (-1: none).
    """

    ids: np.ndarray
    document: np.ndarray
    position: np.ndarray
    documents: list
    char_start: np.ndarray | None = None
    char_end: np.ndarray | None = None
    word: np.ndarray | None = None

    def __len__(self):
        return len(self.ids)


def separator_token(tokenizer):
    """Token that opens each document: BOS, else end-of-text, else None."""
    for attr in ("bos_token_id", "eos_token_id"):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            return int(tid)
    return None


def tokenize_documents(documents, tokenizer, max_tokens=None, bos=True):
    """Tokenise ``documents`` once into a :class:`TokenStream`.

    Parameters
    ----------
    documents : list of Document
    tokenizer : transformers tokenizer
    max_tokens : int, optional
        Stop once this many tokens are collected (the stream is cut there).
    bos : bool
        Open each document with :func:`separator_token`.
    """
    if max_tokens is not None and max_tokens < 1:
        raise UsageError(f"--max-tokens must be at least 1, got {max_tokens}")
    from .words import token_spans, token_words

    sep = separator_token(tokenizer) if bos else None
    columns, total = [], 0  # per document: ids, document, position, char_start, char_end, word
    for d, document in enumerate(documents):
        toks, starts, ends = token_spans(document.text, tokenizer)
        words = token_words(starts, ends, document.text)
        if sep is not None:
            toks = [sep] + list(toks)
            starts, ends, words = (np.concatenate([[-1], a]) for a in (starts, ends, words))
        if not toks:
            continue
        n = len(toks)
        columns.append((np.asarray(toks, dtype=np.int64), np.full(n, d, dtype=np.int64),
                        np.arange(n, dtype=np.int64), starts, ends, words))
        total += n
        if max_tokens is not None and total >= max_tokens:
            break
    if not columns:
        raise UsageError("the stimulus produced no tokens: pass a non-empty text")
    ids, doc, pos, start, end, word = (np.concatenate(a).astype(np.int64)[:max_tokens]
                                       for a in zip(*columns))
    return TokenStream(ids, doc, pos, list(documents), start, end, word)


def make_runs(n_tokens, run_tokens=1024, context=None, starts=None, breaks=None):
    """Token slices of the runs, ``[(start, stop), ...]``.

    ``starts`` (the first token of each document), when given, makes runs end
    where a document begins, so that no item is cut in two (a localizer's
    items); a document longer than ``run_tokens`` is still cut. ``breaks``: tokens where a run
    must begin (each run is one forward pass: the model's context starts afresh there).
    Raises :class:`UsageError` for impossible sizes: ``run_tokens`` below 1,
    above NIfTI-1's 32,767 volumes, or above the model's ``context`` window.
    """
    run_tokens = int(run_tokens)
    if run_tokens < 1:
        raise UsageError(f"--run-tokens must be at least 1, got {run_tokens}")
    if run_tokens > MAX_RUN_TOKENS:
        raise UsageError(f"--run-tokens {run_tokens} exceeds NIfTI-1's {MAX_RUN_TOKENS} volumes per run")
    if context is not None and run_tokens > context:
        raise UsageError(
            f"--run-tokens {run_tokens} exceeds the model's context window of {context} tokens: "
            f"use at most {context}")
    if breaks is not None and len(breaks):
        edges = sorted(set(int(b) for b in breaks if 0 < int(b) < n_tokens) | {0, n_tokens})
        runs = []
        for a, b in zip(edges[:-1], edges[1:]):
            inner = None if starts is None else [s - a for s in starts if a <= s < b]
            runs += [(a + s, a + e) for s, e in make_runs(b - a, run_tokens, context, inner)]
        return runs
    if starts is None:
        return [(s, min(s + run_tokens, n_tokens)) for s in range(0, n_tokens, run_tokens)]
    starts = np.asarray(sorted(set(int(s) for s in starts) | {n_tokens}))
    runs, start = [], 0
    while start < n_tokens:
        fits = starts[(starts > start) & (starts <= start + run_tokens)]
        stop = int(fits[-1]) if len(fits) else min(start + run_tokens, n_tokens)
        runs.append((start, stop))
        start = stop
    return runs
