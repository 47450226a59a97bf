"""Words: one time axis that every tokenizer shares.

Two models cut the same text into different tokens, so their token series cannot be laid
side by side. Words can: a word is defined on the text alone, never on a tokenizer.

The word rule
-------------
A word is a maximal run of non-whitespace characters of the document (what ``str.split``
returns): ``"(best)"`` and ``"world's"`` are one word each, punctuation stays with the word
it touches. This is how the transcripts of naturalistic-listening fMRI are cut into words;
and since every common pre-tokenizer splits at whitespace, no token straddles two words.

How tokens are tied to words
----------------------------
Each token carries the character span ``[char_start, char_end)`` of its document that it
covers (the fast tokenizer's offset mapping; the BOS token has none). A token belongs to
the first word its span overlaps (``word_index``, 0-based within the document); a token
made only of whitespace belongs to none. Tokenizers without an offset mapping (Python
"slow" tokenizers) get spans by finding each decoded token in the text from where the
previous one ended; a token whose text is not found there (a byte fragment) gets an empty
span at that point and no word.

A word's value is the mean of its tokens' values (``pool="mean"``) or the value at its last
token (``pool="last"``, what brain-encoding studies use). A word whose characters are only
partly read (the stream was cut inside it) is left out; a word that owns no token (a token
that straddles whitespace, rare) borrows the token that covers its first character.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from bids_llm.outputs import DERIVATIVES
from bids_llm.tsv import TEXT_CELLS

from ..errors import only_choice

__all__ = ["WORD_RULE", "POOLS", "word_spans", "token_spans", "token_words", "WordIndex",
           "word_index", "participant_words", "words_dataset", "PIPELINE_WORDS"]

WORD_RULE = "maximal runs of non-whitespace characters of the document (str.split)"
POOLS = ("mean", "last")
_WORD = re.compile(r"\S+")


def word_spans(text):
    """``(starts, ends, words)`` of the words of ``text`` under :data:`WORD_RULE`."""
    found = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]
    starts = np.array([f[0] for f in found], dtype=np.int64)
    ends = np.array([f[1] for f in found], dtype=np.int64)
    return starts, ends, [f[2] for f in found]


def token_spans(text, tokenizer):
    """Token ids of ``text`` with the character span of each: ``(ids, starts, ends)``.

    Uses the tokenizer's offset mapping when it has one, else the decoding fallback the
    module describes.
    """
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        return list(enc["input_ids"]), offsets[:, 0].copy(), offsets[:, 1].copy()
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    starts, ends, cursor = [], [], 0
    for tid in ids:
        piece = tokenizer.decode([tid], clean_up_tokenization_spaces=False).strip()
        at = text.find(piece, cursor) if piece else -1
        if at < 0:
            starts.append(cursor)
            ends.append(cursor)
            continue
        starts.append(at)
        ends.append(at + len(piece))
        cursor = at + len(piece)
    return ids, np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


def token_words(starts, ends, text):
    """Word index of each token span in ``text`` (-1: none, e.g. whitespace or BOS)."""
    w_start, w_end, _ = word_spans(text)
    starts, ends = np.asarray(starts), np.asarray(ends)
    k = np.searchsorted(w_end, starts, side="right")  # first word ending after the start
    inside = k < len(w_start)
    hit = inside & (ends > starts)
    hit[inside] &= w_start[k[inside]] < ends[inside]
    return np.where(hit, k, -1).astype(np.int64)


class WordIndex:
    """Which tokens of a token series make each word, for pooling.

    Parameters
    ----------
    document_id, word, char_end : array-like
        Per token (the ``document_id``, ``word_index`` and ``char_end`` columns of the
        events, in token order across runs; -1 for no word).
    texts : dict
        Document id -> text (the dataset's ``stimuli/`` table).

    Attributes
    ----------
    table : pandas.DataFrame
        One row per complete word, in reading order: ``document_id``, ``word_index``,
        ``word``, ``first_token``, ``last_token``, ``n_tokens``.
    """

    def __init__(self, document_id, word, char_end, texts):
        import pandas as pd

        doc = np.asarray(document_id, dtype=object)
        word = np.asarray(word, dtype=np.int64)
        char_end = np.asarray(char_end, dtype=np.int64)
        rows, members = [], []
        groups = pd.Series(np.arange(len(doc))).groupby(doc, sort=False).indices
        for d in dict.fromkeys(doc):
            idx = np.asarray(groups[d])
            if d not in texts:
                raise KeyError(d)
            w_start, w_end, words = word_spans(texts[d])
            read_to = char_end[idx].max(initial=0)
            own = {}
            for t in idx[word[idx] >= 0]:
                own.setdefault(int(word[t]), []).append(int(t))
            for w in range(len(words)):
                if w_end[w] > read_to:
                    break
                tokens = own.get(w) or self._borrow(idx, char_end, w_start[w])
                if not tokens:
                    continue
                rows.append((d, w, words[w], tokens[0], tokens[-1], len(tokens)))
                members.append(tokens)
        self.table = pd.DataFrame(rows, columns=["document_id", "word_index", "word",
                                                 "first_token", "last_token", "n_tokens"])
        self._members = members
        self.n_tokens = len(doc)

    @staticmethod
    def _borrow(idx, char_end, start):
        later = idx[char_end[idx] > start]
        return [int(later[0])] if len(later) else []

    def __len__(self):
        return len(self.table)

    def sums(self, pool="mean"):
        """Sparse 0/1 ``(words, tokens)`` matrix of the tokens each word pools, and their count.

        ``(S @ values) / counts[:, None]`` is the word values (sum first: a value planted on a
        word's tokens comes back exactly).
        """
        from scipy import sparse

        if pool not in POOLS:
            raise ValueError(f"pool {pool!r}: choose from {', '.join(POOLS)}")
        chosen = [m if pool == "mean" else m[-1:] for m in self._members]
        counts = np.array([len(c) for c in chosen], dtype=np.float64)
        rows = np.repeat(np.arange(len(chosen)), counts.astype(int))
        cols = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
        S = sparse.csr_matrix((np.ones(len(cols)), (rows, cols)),
                              shape=(len(chosen), self.n_tokens))
        return S, counts

    def pooling(self, pool="mean"):
        """Sparse ``(words, tokens)`` weights: word values = ``P @ token values``."""
        from scipy import sparse

        S, counts = self.sums(pool)
        return sparse.diags(1.0 / np.maximum(counts, 1)) @ S

    def pool(self, values, pool="mean"):
        """Word values ``(words, ...)`` of token values ``(tokens, ...)``."""
        values = np.asarray(values)
        flat = values.reshape(len(values), -1)
        S, counts = self.sums(pool)
        out = np.asarray(S @ flat) / counts[:, None]
        return out.reshape((len(self),) + values.shape[1:])


def word_index(events, texts):
    """:class:`WordIndex` of a participant's events (one DataFrame, or a list in run order)."""
    import pandas as pd

    if isinstance(events, (list, tuple)):
        events = pd.concat(list(events), ignore_index=True)
    return WordIndex(events["document_id"].to_numpy(),
                     events["word_index"].fillna(-1).to_numpy(dtype=np.int64),
                     events["char_end"].fillna(-1).to_numpy(dtype=np.int64), texts)


PIPELINE_WORDS = DERIVATIVES["words"].pipeline
_WORD_EVENTS_JSON = {
    "onset": {"Description": "Word index in the run times the TR", "Units": "s"},
    "duration": {"Description": "One TR per word", "Units": "s"},
    "word": {"Description": "The word (a maximal run of non-whitespace characters). " + TEXT_CELLS},
    "document_id": {"Description": "Identifier of the document the word belongs to (written as word)"},
    "word_index": {"Description": "Index of the word in its document (0-based)"},
    "n_tokens": {"Description": "Number of the model's tokens that make the word"},
}


def participant_words(dataset, participant=None, task=None, site=None):
    """Runs, token slices and :class:`WordIndex` of one participant's reading of one task.

    ``participant``, ``task`` and ``site`` are inferred when the dataset leaves one choice.
    Returns ``(runs, slices, index)`` with runs in run order and ``slices[i]`` the tokens of
    run ``i`` in the concatenated series.
    """
    from ..errors import UsageError

    runs = dataset.runs(participant=participant, task=task, site=site)
    if not runs:
        raise UsageError(f"no runs in {dataset.root} for participant={participant}, task={task}, "
                         f"site={site}: see `llm2nifti sites` and the dataset's sub-* folders")
    participant = only_choice([r.participant for r in runs], "participant", "--participant")
    task = only_choice([r.task for r in runs], "task", "--task")
    site = only_choice([r.site_kind for r in runs], "site", "--site")
    runs = sorted((r for r in runs if (r.participant, r.task, r.site_kind) == (participant, task, site)),
                  key=lambda r: r.run)
    texts = dataset.documents(task)
    events = [r.events() for r in runs]
    if texts is None or any("word_index" not in e for e in events):
        raise UsageError(
            f"sub-{participant} task-{task} was converted without the word axis (no word_index "
            f"column, or no stimuli/ table): convert it again with `llm2nifti convert ... "
            f"--overwrite`")
    bounds = np.cumsum([0] + [len(e) for e in events])
    index = word_index(events, texts)
    return runs, list(zip(bounds[:-1], bounds[1:])), index


def words_dataset(dataset, *, participant=None, task=None, site=None, pool="mean", output=None,
          progress=False):
    """Write a word-level copy of a participant's runs: each volume is one word.

    Parameters
    ----------
    dataset : path or Dataset
    participant, task, site : str, optional
        Inferred when the dataset holds one choice.
    pool : {"mean", "last"}
        A word's value: the mean over its tokens, or its last token.
    output : path, optional
        Default ``DATASET/derivatives/llm2nifti-words``.

    Returns
    -------
    list of Path
        The word-level bold files. The output folder is itself a dataset (mask, label image,
        ``scans.tsv``), so :class:`~bids_llm.dataset.Dataset`, ``decompose`` and nilearn read it
        as they read the scan. Run ``r`` holds the words whose last token is in source run ``r``.
    """
    from bids_llm.dataset import Dataset, DatasetWriter
    from bids_llm.events import words_tsv
    from bids_llm.io import write_json
    from bids_llm.naming import bids_name, inside
    from tqdm.auto import tqdm

    from ..errors import UsageError

    if pool not in POOLS:
        raise UsageError(f"--pool {pool!r}: choose from {', '.join(POOLS)}")
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    runs, slices, index = participant_words(ds, participant, task, site)
    ds.check_runs(runs)
    first = runs[0]
    layout = ds.layout(first.participant, first.site_kind)
    from ..memory import check_fits, run_shapes

    # two source runs kept (float32), one in float64 while pooled, the pooled words (float64)
    largest = max(t * v for t, v in run_shapes(runs)) * 4
    check_fits(6 * largest, f"pooling runs of {largest // 4 // layout.n_neurons} tokens x "
                            f"{layout.n_neurons} neurons into words",
               "convert with a smaller --run-tokens so that runs are smaller")
    root = (DERIVATIVES["words"].create(ds.root) if output is None else Path(output))
    writer = DatasetWriter(root, first.participant, first.task, layout, name="Word-level runs")
    events_json = inside(root, bids_name("events", ".json", task=first.task))
    write_json(events_json, _WORD_EVENTS_JSON)
    writer.init_dataset()
    writer.write_layout()
    row = next((r for r in ds.participants() if r["participant_id"] == f"sub-{first.participant}"), None)
    if row is not None:
        writer.add_participant({k: v for k, v in row.items() if k != "participant_id"})
    S, counts = index.sums(pool)
    last = index.table["last_token"].to_numpy()
    cache, written = {}, []
    for r, (start, stop) in enumerate(tqdm(slices, desc="words", unit="run", disable=not progress)):
        rows = np.flatnonzero((last >= start) & (last < stop))
        if not len(rows):
            continue
        X = _pool_rows(S[rows], runs, slices, cache) / counts[rows, None]
        meta = runs[r].metadata()
        meta.pop("TokenRange", None)
        # a derivative's bold sidecar needs SkullStripped: nothing was removed from the grid
        sidecar = dict(meta, SkullStripped=False, WordRange=[int(rows[0]), int(rows[-1]) + 1], WordLevel={
            "Pool": pool, "WordRule": WORD_RULE, "Source": f"../../{runs[r].path.relative_to(ds.root)}"})
        img = layout.buffer_to_img(_as_buffer(layout, X), tr=meta.get("RepetitionTime", 1.0))
        written.append(writer.write_run(runs[r].run, img, sidecar, words_tsv(index.table.iloc[rows])))
    return written


def _pool_rows(S, runs, slices, cache):
    """``S @ token values`` over the runs ``S``'s tokens lie in (a word may begin a run early)."""
    from bids_llm.dataset import load_run

    used = np.flatnonzero(S.getnnz(axis=0))
    lo, hi = used.min(), used.max()
    out = None
    for i, (start, stop) in enumerate(slices):
        if stop <= lo or start > hi:
            continue
        if i not in cache:
            for old in [k for k in cache if k < i - 1]:
                del cache[old]
            cache[i] = load_run(runs[i])[0]
        part = S[:, start:stop] @ cache[i].astype(np.float64)
        out = part if out is None else out + part
    return np.asarray(out)


def _as_buffer(layout, X):
    buf = layout.empty_buffer(len(X))
    layout.fill_buffer(buf, X)
    return buf
