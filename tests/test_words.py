"""The word axis: spans and word indices from any tokenizer, word-level runs, old datasets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bids_llm.dataset import Dataset, load_run
from llm2nifti.acquisition.stimuli import tokenize_documents
from llm2nifti.acquisition.words import WordIndex, token_words, word_spans
from llm2nifti.cli.main import main
from planted import reader_documents, trained_tokenizer


class _Slow:
    """A tokenizer without an offset mapping (a Python "slow" tokenizer), over a fast one."""

    is_fast = False

    def __init__(self, fast):
        self.fast = fast
        self.bos_token_id = fast.bos_token_id

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": self.fast(text, add_special_tokens=False)["input_ids"]}

    def decode(self, ids, **kwargs):
        return self.fast.decode(ids, **kwargs)


def _index(stream):
    docs = [stream.documents[d].id for d in stream.document]
    return WordIndex(docs, stream.word, stream.char_end, {d.id: d.text for d in stream.documents})


def test_word_rule_and_token_words():
    starts, ends, words = word_spans("  Hello, world's (best)\ncafé. ")
    assert words == ["Hello,", "world's", "(best)", "café."]
    assert starts.tolist() == [2, 9, 17, 24] and ends.tolist() == [8, 16, 23, 29]
    text = "ab cd"
    # tokens: "ab", " " (space only), " cd" (leading space), BOS (-1, -1)
    assert token_words([0, 2, 2, -1], [2, 3, 5, -1], text).tolist() == [0, -1, 1, -1]


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_two_tokenizers_give_one_word_sequence_and_planted_values_come_back(pool):
    docs = reader_documents(n_documents=4)
    tables, values = [], []
    for tok in (trained_tokenizer("bpe", docs), trained_tokenizer("wordpiece", docs)):
        stream = tokenize_documents(docs, tok)
        index = _index(stream)
        planted = {d.id: np.arange(len(word_spans(d.text)[2])) * 10.0 + k
                   for k, d in enumerate(docs)}
        per_token = np.array([planted[stream.documents[d].id][w] if w >= 0 else -999.0
                              for d, w in zip(stream.document, stream.word)])
        tables.append(index.table[["document_id", "word_index", "word"]])
        values.append(index.pool(per_token[:, None], pool)[:, 0])
        expected = [planted[d][w] for d, w in zip(index.table["document_id"], index.table["word_index"])]
        np.testing.assert_array_equal(values[-1], expected)
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert len(tables[0]) == sum(len(d.text.split()) for d in docs)
    assert (tables[0]["word"].tolist() == [w for d in docs for w in d.text.split()])


def test_tokenizer_without_offsets_gets_the_same_words(tokenizer):
    docs = reader_documents(n_documents=2)
    fast = tokenize_documents(docs, tokenizer)
    slow = tokenize_documents(docs, _Slow(tokenizer))
    np.testing.assert_array_equal(fast.ids, slow.ids)
    np.testing.assert_array_equal(fast.word, slow.word)
    pd.testing.assert_frame_equal(_index(fast).table, _index(slow).table)


def test_convert_writes_spans_words_and_the_stimuli_table(tiny_scan):
    res, _ = tiny_scan
    ds = Dataset(res.root)
    texts = ds.documents(res.task)
    events = pd.concat([r.events() for r in ds.runs()], ignore_index=True)
    assert {"char_start", "char_end", "word_index"} <= set(events.columns)
    body = events[events["position"] > 0]
    for row in body.itertuples():  # the byte tokenizer: each token is one character
        assert texts[row.document_id][row.char_start:row.char_end] == row.token
    assert events.loc[events["position"] == 0, "word_index"].isna().all()
    spaces = body[body["token"].str.isspace()]
    assert len(spaces) and spaces["word_index"].isna().all()


def test_words_command_pools_each_word_exactly(tiny_scan):
    res, _ = tiny_scan
    out = CliRunner().invoke(main, ["words", str(res.root), "-q"])
    assert out.exit_code == 0, out.output
    words_root = res.root / "derivatives" / "llm2nifti-words"
    wds = Dataset(words_root)
    runs = wds.runs()
    assert len(runs) >= 2
    tokens = np.concatenate([load_run(r)[0] for r in Dataset(res.root).runs()])
    events = pd.concat([r.events() for r in Dataset(res.root).runs()], ignore_index=True)
    word_events = [pd.read_csv(r.events_path, sep="\t") for r in runs]
    got = np.concatenate([load_run(r)[0] for r in runs])
    table = pd.concat(word_events, ignore_index=True)
    assert len(got) == len(table) == len(Dataset(res.root).documents(res.task)["stories"].split())
    for w, row in table.iterrows():
        rows = events.index[(events["document_id"] == row["document_id"])
                            & (events["word_index"] == row["word_index"])]
        np.testing.assert_allclose(got[w], tokens[rows].mean(axis=0), rtol=1e-5, atol=1e-6)
    from nilearn.maskers import NiftiMasker

    masker = NiftiMasker(mask_img=str(wds.mask_path(runs[0].participant)), standardize=None).fit()
    assert masker.transform(str(runs[0].path)).shape == (len(word_events[0]), got.shape[1])


def test_older_dataset_without_word_columns_gets_one_line(tiny_scan):
    res, _ = tiny_scan
    for run in Dataset(res.root).runs():
        df = pd.read_csv(run.events_path, sep="\t", dtype=str, keep_default_na=False)
        df.drop(columns=["char_start", "char_end", "word_index"]).to_csv(
            run.events_path, sep="\t", index=False)
    out = CliRunner().invoke(main, ["words", str(res.root), "-q"])
    assert out.exit_code == 2
    assert "without the word axis" in out.output and "--overwrite" in out.output
    assert len(out.output.strip().splitlines()) == 1
    assert not (res.root / "derivatives" / "llm2nifti-words").exists()


def test_a_task_keeps_one_text_per_document(tiny_scan, tokenizer, tmp_path):
    from llm2nifti.acquisition.convert import scan
    from llm2nifti.errors import UsageError
    from conftest import tiny_llama

    res, _ = tiny_scan
    other = tmp_path / "stories.txt"
    other.write_text("Quite another text under the same name.\n", encoding="utf-8")
    with pytest.raises(UsageError, match="another text"):
        scan(res.root, "second", other, task=res.task, progress=False,
             loaded=(tiny_llama(seed=1), tokenizer), threads=1)
    assert not list(res.root.glob("sub-second/func/*"))
