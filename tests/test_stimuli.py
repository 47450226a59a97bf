import json

import numpy as np
import pytest

from llm2nifti.errors import UsageError
from llm2nifti.acquisition.stimuli import load_documents, make_runs, tokenize_documents


def test_builtin_lee_corpus_has_300_news_articles():
    docs = load_documents()
    assert len(docs) == 300
    assert len({d.id for d in docs}) == 300
    assert sum(len(d.text.split()) for d in docs) > 50_000


def test_folder_jsonl_and_tsv(tmp_path):
    (tmp_path / "b.txt").write_text("second text")
    (tmp_path / "a.txt").write_text("first text")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    assert [d.id for d in load_documents(tmp_path)] == ["a", "b"]
    j = tmp_path / "docs.jsonl"
    j.write_text("\n".join(json.dumps({"doc": f"d{i}", "body": f"text {i}"}) for i in range(3)))
    docs = load_documents(j, id_column="doc", text_column="body")
    assert [d.text for d in docs] == ["text 0", "text 1", "text 2"]
    t = tmp_path / "docs.tsv"
    t.write_text("id\ttext\nx\thello\ny\tworld\n")
    assert [d.id for d in load_documents(t)] == ["x", "y"]
    with pytest.raises(UsageError, match="has no 'id' column"):
        load_documents(j)


@pytest.mark.parametrize("content, message", [
    (b"", "holds no text"), (b"   \n\n", "holds no text"),
    (b"\x00\x01\x02binary", "looks binary"), (b"caf\xe9 latin-1", "--encoding"),
])
def test_bad_text_is_refused(tmp_path, content, message):
    p = tmp_path / "t.txt"
    p.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        load_documents(p)


def test_encoding_option_decodes_latin1(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"caf\xe9")
    assert load_documents(p, encoding="latin-1")[0].text == "café"


def test_missing_source_is_refused(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_documents(tmp_path / "nope.txt")


def test_each_document_opens_with_bos_and_positions_restart(tokenizer, tmp_path):
    docs = load_documents(_two_docs(tmp_path))
    s = tokenize_documents(docs, tokenizer)
    starts = np.flatnonzero(s.position == 0)
    assert list(s.ids[starts]) == [tokenizer.bos_token_id] * 2
    assert list(s.document[starts]) == [0, 1]
    assert len(s) == len("first doc") + len("second") + 2
    capped = tokenize_documents(docs, tokenizer, max_tokens=5)
    assert len(capped) == 5
    no_bos = tokenize_documents(docs, tokenizer, bos=False)
    assert tokenizer.bos_token_id not in no_bos.ids


def _two_docs(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("id\ttext\nA\tfirst doc\nB\tsecond\n")
    return p


def test_make_runs_covers_stream_and_refuses_impossible_sizes():
    runs = make_runs(2500, 1024)
    assert runs == [(0, 1024), (1024, 2048), (2048, 2500)]
    for bad, ctx, msg in [(0, None, "at least 1"), (40000, None, "32767"), (2048, 1024, "context window")]:
        with pytest.raises(UsageError, match=msg):
            make_runs(100, bad, ctx)


def test_runs_begin_at_every_break_and_stay_within_run_tokens():
    from llm2nifti.acquisition.stimuli import make_runs

    runs = make_runs(25, run_tokens=10, breaks=[7, 12])
    assert runs == [(0, 7), (7, 12), (12, 22), (22, 25)]
    assert make_runs(25, run_tokens=10) == [(0, 10), (10, 20), (20, 25)]
