"""Every table comes back whole and exact from the readers users have: pandas' defaults (as
nilearn and pybids read), Python's csv module and R's read.delim."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import warnings

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bids_llm.events import read_documents, read_events
from bids_llm.tsv import (MISSING_WORDS, NA, cell, frame_text, line, read_frame, read_rows,
                          table_text, unescape)
from llm2nifti.cli.main import main

# Each a text that one reader or another took for something else.
HARD = ['"', '"The', 'say "hi"', 'end"', '""', '"""', '""""', 'a"b', "\\", "\\t", "\\&", "\\&NA",
        "\t", "\n", "a\r\nb", "NA", "null", "None", "nan", "n/a", "N/A", "NULL", "NaN", "#N/A",
        "", " ", " NA", "True", "1", "007", "1e5", "#comment", "'single'", "é", "x"]


def _r_read(path, column):
    """``column`` of ``path`` as R's ``read.delim`` reads it (defaults), one JSON string each."""
    script = (f'd <- read.delim("{path}", stringsAsFactors=FALSE); '
              f'cat(nrow(d), "\\n"); x <- d[["{column}"]]; '
              'for (v in x) cat(if (is.na(v)) "<NA>" else v, "\\x01", sep="")')
    out = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    n, rest = out.split("\n", 1)
    return int(n), rest.split("\x01")[:-1]


def test_the_missing_words_cover_what_pandas_reads_as_missing():
    from pandas._libs.parsers import STR_NA_VALUES

    assert set(STR_NA_VALUES) <= MISSING_WORDS and "NA" in MISSING_WORDS


def test_every_hard_text_comes_back_from_every_reader(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text(line(["text", "n"]) + "".join(line([cell(t), i]) for i, t in enumerate(HARD)),
                    encoding="utf-8")
    assert path.read_text(encoding="utf-8").count("\n") == len(HARD) + 1  # a row is a line
    # pandas with its defaults: every row, no missing value, the text once unescaped
    frame = pd.read_csv(path, sep="\t")
    assert len(frame) == len(HARD) and frame["text"].notna().all()
    assert [unescape(v) for v in frame["text"]] == HARD and list(frame["n"]) == list(range(len(HARD)))
    # texts that are no missing words and hold no backslash come back exactly as they are
    plain = [i for i, t in enumerate(HARD) if t not in MISSING_WORDS and "\\" not in t
             and "\t" not in t and "\n" not in t and "\r" not in t]
    assert [frame["text"][i] for i in plain] == [HARD[i] for i in plain]
    # Python's csv module with its defaults
    with open(path, newline="", encoding="utf-8") as f:
        got = list(csv.reader(f, delimiter="\t"))
    assert len(got) == len(HARD) + 1 and [unescape(r[0]) for r in got[1:]] == HARD
    # this package's own reader
    header, cells = read_rows(path)
    assert header == ["text", "n"] and [unescape(r[0]) for r in cells] == HARD
    if shutil.which("Rscript"):  # installed by `make test` where apt-get works
        n, values = _r_read(path, "text")
        assert n == len(HARD) and "<NA>" not in values
        assert [unescape(v) for v in values] == HARD


def test_frames_round_trip_text_and_missing_values(tmp_path):
    frame = pd.DataFrame({"network": HARD, "z": np.linspace(-1, 1, len(HARD))})
    frame.loc[3, "z"] = np.nan
    path = tmp_path / "f.tsv"
    path.write_text(frame_text(frame), encoding="utf-8")
    back = pd.read_csv(path, sep="\t")  # the defaults: no row lost, only the NaN is missing
    assert len(back) == len(HARD) and back["network"].notna().all()
    assert back["z"].isna().tolist() == [i == 3 for i in range(len(HARD))]
    assert "\tn/a\n" in path.read_text()  # BIDS's missing value
    own = read_frame(path)
    assert own["network"].tolist() == HARD
    np.testing.assert_array_equal(own["z"].to_numpy(), frame["z"].to_numpy())


def test_files_written_before_quoting_are_read_as_they_were_meant(tmp_path):
    # Old events: quotes as text, the empty token as n/a, backslash escapes.
    old = tmp_path / "old_events.tsv"
    old.write_text("onset\tduration\ttoken\ttoken_id\tdocument_id\tposition\n"
                   '0\t1\t"The\t5\td"1\t0\n1\t1\t"\t6\td"1\t1\n2\t1\tn/a\t7\td"1\t2\n'
                   '3\t1\t""""\t8\td"1\t3\n4\t1\ta\\tb\t9\td"1\t4\n', encoding="utf-8")
    events = read_events(old)
    assert events["token"].tolist() == ['"The', '"', "", '""""', "a\tb"]
    assert set(events["document_id"]) == {'d"1'}
    # the same tokens written today
    from bids_llm.events import events_tsv

    new = tmp_path / "new_events.tsv"
    tokens = ['"The', '"', "", '""""', "a\tb", "NA"]
    new.write_text(events_tsv(tokens, range(6), ['d"1'] * 6, range(6)), encoding="utf-8")
    assert read_events(new)["token"].tolist() == tokens
    assert pd.read_csv(new, sep="\t")["token"].notna().all()


def _word_tokenizer(words):
    """A word-level tokenizer whose tokens are exactly ``words`` (split on whitespace)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def hard_scan(tmp_path_factory):
    """A scan of a text made of the hard cases, by a tiny Llama whose tokens are its words."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("hard")
    words = [w for w in HARD if w.strip() and not any(c in w for c in "\t\n\r")]
    lines = [" ".join(words[i:] + words[:i]) for i in range(0, len(words), 3)]
    text = root / "hard.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = _word_tokenizer(words)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=16,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    model_dir = root / "model"
    LlamaForCausalLM(cfg).eval().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    ds = root / "ds"
    r = CliRunner().invoke(main, ["convert", str(ds), "--model", str(model_dir), "--text", str(text),
                                  "--participant", "hard", "--task", "hard", "--run-tokens", "50",
                                  "--threads", "1", "-q"])
    assert r.exit_code == 0, r.output
    return ds, tokenizer, words


def test_a_scan_of_the_hard_cases_reads_right_everywhere(hard_scan, tmp_path):
    import nibabel as nib

    ds, tokenizer, words = hard_scan
    events = sorted(ds.glob("sub-hard/func/*_events.tsv"))
    assert len(events) >= 2
    for path in events:
        n = nib.load(str(path).replace("_events.tsv", "_bold.nii")).shape[-1]
        frame = pd.read_csv(path, sep="\t")  # as nilearn and pybids read
        assert len(frame) == n and frame["token"].notna().all(), path.name
        expected = [tokenizer.decode([int(i)]) for i in frame["token_id"]]
        assert [unescape(t) for t in frame["token"]] == expected
        assert read_events(path)["token"].tolist() == expected
        with open(path, newline="", encoding="utf-8") as f:
            assert len(list(csv.DictReader(f, delimiter="\t"))) == n
        if shutil.which("Rscript"):
            count, values = _r_read(path, "token")
            assert count == n and [unescape(v) for v in values] == expected
    # the hard words are tokens of the scan, each read back whole
    seen = set().union(*(read_events(p)["token"] for p in events))
    assert {"NA", "null", "None", "nan", "n/a", '"', '"The', '""""'} <= seen
    # the stimuli table: each document's text
    (docs,) = ds.glob("stimuli/*_documents.tsv")
    frame = pd.read_csv(docs, sep="\t")
    assert frame["text"].notna().all() and len(frame) == len(read_documents(docs))


def test_nilearn_reads_every_event_of_a_fresh_scan(hard_scan):
    """nilearn's BIDS entry point right after convert: the runs found, every event read."""
    import nibabel as nib
    from nilearn.glm.first_level import first_level_from_bids

    ds, _, _ = hard_scan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models, imgs, events, _ = first_level_from_bids(
            str(ds), "hard", space_label="neurons", derivatives_folder="derivatives/llm2nifti-space")
    assert len(models) == 1 and len(imgs[0]) == len(events[0]) >= 2
    for img, frame in zip(imgs[0], events[0]):
        assert len(frame) == nib.load(img).shape[-1] and frame["token"].notna().all()


def test_the_words_table_of_the_hard_cases_reads_right(hard_scan, tmp_path):
    ds, _, words = hard_scan
    out = tmp_path / "words"
    r = CliRunner().invoke(main, ["words", str(ds), "-q", "-o", str(out)])
    assert r.exit_code == 0, r.output
    tables = sorted(out.rglob("*_events.tsv"))
    assert tables
    read = []
    for path in tables:
        frame = pd.read_csv(path, sep="\t")
        assert frame["word"].notna().all()
        with open(path, newline="", encoding="utf-8") as f:
            assert len(list(csv.reader(f, delimiter="\t"))) == len(frame) + 1
        read += [unescape(w) for w in frame["word"]]
    assert {"NA", "null", '"The', 'say', '"hi"', '""""'} <= set(read)
    sidecar = json.loads(next(out.rglob("*_events.json")).read_text())
    assert "quoted" in sidecar["word"]["Description"]
    # the word-level derivative is valid BIDS, its tables included
    from test_bids import validation_errors

    errors, _ = validation_errors(out)
    assert errors["/"] == [] and not any(errors.values()), errors


def test_networks_named_like_missing_values_keep_their_names(tmp_path):
    from llm2nifti.neuronset import NeuronSet

    names = ["NA", "null", '"quoted"', "n a"]
    nset = NeuronSet.from_pairs({n: [(0, i)] for i, n in enumerate(names)})
    path = tmp_path / "networks.tsv"
    nset.to_tsv(path)
    assert pd.read_csv(path, sep="\t")["network"].notna().all()
    assert sorted(NeuronSet.from_tsv(path).names) == sorted(names)


def test_a_missing_number_is_n_a_in_every_table(tmp_path):
    frame = pd.DataFrame({"a": [1.0, np.nan], "b": ["x", None]})
    text = frame_text(frame)
    assert text == "a\tb\n1.0\tx\nn/a\tn/a\n"
    assert pd.read_csv(io.StringIO(text), sep="\t").isna().to_numpy().tolist() == [[False, False],
                                                                                  [True, True]]
    # rows of dicts (participants, scans): None and BIDS's n/a are missing, other text escaped
    assert table_text(["a", "b"], [{"a": None, "b": NA}, {"a": "NA", "b": 3}]) == \
        "a\tb\nn/a\tn/a\n\\&NA\t3\n"
