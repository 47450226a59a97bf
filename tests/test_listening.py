"""convert --words: the model reads what participants heard, each token timed by its word."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bids_llm.dataset import Dataset
from bids_llm.events import read_events
from llm2nifti.acquisition import word_events_documents
from llm2nifti.acquisition.convert import scan
from llm2nifti.cli.main import main
from llm2nifti.errors import UsageError

HEADER = "onset\tduration\ttrial_type\tword"


def _events(path, rows):
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def heard(tmp_path):
    """Two runs of one story: a noise row (another trial type), a cell of two words, a
    non-ASCII word and a word pandas would read as missing."""
    one = _events(tmp_path / "sub-01_task-pieman_run-1_events.tsv", [
        "0.5\t0.3\tword\tOnce", "0.8\t0.2\tword\tupon,", "1.0\t0.4\tnoise\tn/a",
        "1.4\t0.5\tword\tNew York", "2.0\t0.3\tword\tcafé", "2.5\t0.2\tword\tNA"])
    two = _events(tmp_path / "sub-01_task-pieman_run-2_events.tsv", [
        "0.25\t0.5\tword\tthe", "0.9\t0.5\tword\tend."])
    return one, two


def test_each_events_file_is_one_document_of_its_words(heard):
    docs, times, task = word_events_documents(heard)
    assert [d.text for d in docs] == ["Once upon, New York café NA", "the end."]
    assert [d.id for d in docs] == ["sub-01_task-pieman_run-1", "sub-01_task-pieman_run-2"]
    np.testing.assert_array_equal(times[0].onset, [0.5, 0.8, 1.4, 1.4, 2.0, 2.5])
    np.testing.assert_array_equal(times[1].duration, [0.5, 0.5])
    assert times[1].source == heard[1].name and task == "pieman"


def test_convert_times_every_token_by_the_word_it_belongs_to(heard, tmp_path, llama, tokenizer):
    res = scan(tmp_path / "ds", "tinyllama", words=heard, loaded=(llama, tokenizer),
               run_tokens=30, progress=False, threads=1)
    assert res.task == "pieman"
    docs, times, _ = word_events_documents(heard)
    files = {t.source: t for t in times}
    runs = Dataset(res.root).runs()
    seen = set()
    for run in runs:
        path = run.events_path
        plain = pd.read_csv(path, sep="\t")  # as nilearn and pybids read it: nothing lost
        events = read_events(path)
        assert len(plain) == len(events)
        for row, p in zip(events.itertuples(), plain.itertuples()):
            if pd.isna(row.word_index):  # the BOS token opening each document
                assert np.isnan(p.word_onset) and pd.isna(p.stimulus_file)
                continue
            t = files[row.stimulus_file]
            assert row.word_onset == t.onset[row.word_index] == p.word_onset
            assert row.word_duration == t.duration[row.word_index]
            seen.add((row.stimulus_file, int(row.word_index)))
    assert seen == {(t.source, w) for t in times for w in range(len(t.onset))}
    sidecar = json.loads((res.root / "task-pieman_events.json").read_text())
    assert sidecar["word_onset"]["Units"] == "s" and "stimulus_file" in sidecar


@pytest.mark.parametrize("rows, message", [
    (["0.5\t0.3\tword\tOnce", "n/a\t0.2\tword\tupon"], "line 3: the word 'upon' has no onset"),
    (["0.5\t0.3\tnoise\tn/a"], "no words in column 'word'"),
])
def test_bad_events_are_refused_in_one_line_before_anything_is_written(tmp_path, rows, message):
    bad = _events(tmp_path / "sub-01_task-x_events.tsv", rows)
    with pytest.raises(UsageError, match=message):
        word_events_documents([bad])
    r = CliRunner().invoke(main, ["convert", str(tmp_path / "ds"), "--words", str(bad), "-q"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert message in r.output and not (tmp_path / "ds").exists()


def test_words_and_text_are_one_choice(heard, tmp_path):
    r = CliRunner().invoke(main, ["convert", str(tmp_path / "ds"), "--words", str(heard[0]),
                                  "--text", "lee", "-q"])
    assert r.exit_code == 2 and "--text or with --words, not both" in r.output
    other = tmp_path / "story.tsv"
    other.write_text("onset\tduration\ttext\n0\t1\thello\n", encoding="utf-8")
    r = CliRunner().invoke(main, ["convert", str(tmp_path / "ds"), "--words", str(other), "-q"])
    assert r.exit_code == 2 and "no column word" in r.output and "--word-column" in r.output


@pytest.mark.parametrize("reset", [False, True])
def test_the_context_carries_across_files_unless_reset(heard, tmp_path, llama, tokenizer, reset):
    res = scan(tmp_path / "ds", "tinyllama", words=heard, loaded=(llama, tokenizer),
               run_tokens=100, progress=False, threads=1, reset_context=reset)
    documents = [set(read_events(r.events_path)["document_id"]) for r in Dataset(res.root).runs()]
    # 28 + 10 characters of text, one token each, and a BOS per file: one run without a reset
    assert max(len(d) for d in documents) == (1 if reset else 2)
    assert len(documents) == (2 if reset else 1)


def test_words_written_by_the_projects_tsv_rule_are_read_as_written(tmp_path):
    """An events file written by bids_llm.tsv (as llm2nifti.simulate writes them) escapes the
    words pandas would take for missing values (NA -> \\&NA): the model reads the words."""
    import pandas as pd

    from bids_llm.tsv import write_frame
    from llm2nifti.acquisition.listening import read_word_events

    path = tmp_path / "sub-01_task-story_run-1_events.tsv"
    write_frame(path, pd.DataFrame({"onset": [0.5, 1.0, 1.5, 2.0], "duration": 0.3,
                                    "word": ["Once", "NA", "None", "upon"]}), index=False)
    assert "\\&NA" in path.read_text()
    doc, times = read_word_events(path)
    assert doc.text == "Once NA None upon" and list(times.line) == [2, 3, 4, 5]
