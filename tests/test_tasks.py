"""Task formats users bring: labelled sentences, multiple choice, open questions (SQuAD style)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_gpt2, tiny_llama
from llm2nifti.errors import UsageError
from llm2nifti.intervention.evaluation import Evaluator
from llm2nifti.intervention.hooks import intervene
from llm2nifti.intervention.tasks import (ChoiceTask, GenerationTask, exact_match, load_task,
                                          normalize_answer, token_f1)


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ------------------------------------------------------------------ SQuAD metrics
def test_normalize_answer_follows_squad():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_exact_match_and_f1_take_the_best_reference():
    assert exact_match("the Eiffel tower.", ["Louvre", "Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    # "eiffel" vs "eiffel tower": precision 1, recall 1/2 -> F1 2/3
    assert token_f1("Eiffel", ["Eiffel Tower"]) == pytest.approx(2 / 3)
    assert token_f1("Paris France", ["London", "paris"]) == pytest.approx(2 / 3)
    assert token_f1("nothing shared", ["other words"]) == 0.0
    assert token_f1("", [""]) == 1.0 and token_f1("x", [""]) == 0.0


# ------------------------------------------------------------------ file formats
def test_labelled_jsonl_and_tsv_give_the_same_task(tmp_path):
    rows = [{"text": "great film", "label": "pos"}, {"text": "dull plot", "label": "neg"},
            {"text": "fine acting", "label": "pos"}]
    a = load_task(_jsonl(tmp_path / "sst.jsonl", rows), template="Review: {text}\nSentiment:",
                  label_words="pos=positive,neg=negative")
    (tmp_path / "sst.tsv").write_text("text\tlabel\n" + "".join(
        f"{r['text']}\t{r['label']}\n" for r in rows))
    b = load_task(tmp_path / "sst.tsv", template="Review: {text}\nSentiment:",
                  label_words="pos=positive,neg=negative")
    for t in (a, b):
        assert isinstance(t, ChoiceTask) and t.single_token
        assert t.prompts[1] == "Review: dull plot\nSentiment:"
        assert t.choices[0] == [" negative", " positive"]  # labels sorted: neg, pos
        assert list(t.labels) == [1, 0, 1]


def test_multiple_choice_answer_by_index_or_text(tmp_path):
    t = load_task(_jsonl(tmp_path / "mc.jsonl", [
        {"prompt": "2+2 =", "choices": ["3", "4", "5"], "answer": 1},
        {"prompt": "Capital of France:", "choices": ["Rome", "Paris"], "answer": "Paris"}]))
    assert isinstance(t, ChoiceTask) and not t.single_token
    assert t.choices == [[" 3", " 4", " 5"], [" Rome", " Paris"]]
    assert list(t.labels) == [1, 1]


def test_questions_build_squad_prompts(tmp_path):
    t = load_task(_jsonl(tmp_path / "qa.jsonl", [
        {"context": "Ada lived in London.", "question": "Where did Ada live?",
         "answers": ["London", "in London"]},
        {"prompt": "Q: colour of the sky?\nA:", "answer": "blue"}]), max_new_tokens=5)
    assert isinstance(t, GenerationTask) and t.max_new_tokens == 5
    assert t.prompts[0] == "Context: Ada lived in London.\nQuestion: Where did Ada live?\nAnswer:"
    assert t.answers == [["London", "in London"], ["blue"]]


@pytest.mark.parametrize("records, message", [
    ([{"text": "a"}], "match no task format"),
    ([{"text": "a", "label": "x"}, {"text": "b"}], "item 2: missing label"),
    ([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}], "two or more labels"),
    ([{"prompt": "p", "choices": ["a"], "answer": 0}], "two or more strings"),
    ([{"prompt": "p", "choices": ["a", "b"], "answer": 2}], "neither an index"),
    ([{"prompt": "p", "choices": ["a", "b"], "answer": "c"}], "neither an index"),
    ([{"question": "q", "answers": []}], "answers must be"),
    ([{"context": "c", "answers": ["x"]}], "missing question"),
])
def test_bad_task_files_are_refused_with_the_item(tmp_path, records, message):
    with pytest.raises(UsageError, match=message):
        load_task(_jsonl(tmp_path / "bad.jsonl", records))


def test_bad_task_options(tmp_path):
    path = _jsonl(tmp_path / "l.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    with pytest.raises(UsageError, match="no label word for label"):
        load_task(path, label_words="x=yes")
    with pytest.raises(UsageError, match="LABEL=WORD"):
        load_task(path, label_words="x")
    with pytest.raises(UsageError, match="template asks for 'sentence'"):
        load_task(path, template="{sentence}")
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(UsageError, match="line 2: not JSON"):
        load_task(tmp_path / "broken.jsonl")
    with pytest.raises(UsageError, match="unknown task"):
        load_task(tmp_path / "absent.jsonl")


def test_label_words_must_be_single_tokens(tmp_path, tokenizer):
    path = _jsonl(tmp_path / "l.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    task = load_task(path, label_words="x=yes,y=no")  # the byte tokenizer: 3 and 2 tokens
    with pytest.raises(UsageError, match="not single tokens"):
        Evaluator(tiny_llama(), tokenizer, task=task)
    task = load_task(path, label_words="x=Y,y=N")  # " Y" is two bytes, still refused
    with pytest.raises(UsageError, match="not single tokens"):
        Evaluator(tiny_llama(), tokenizer, task=task)


# ------------------------------------------------------------------ generation
def _greedy(model, tokenizer, prompt, n):
    """Greedy continuation, one token at a time, no cache, no batch: the reference."""
    ids = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            new.append(nxt)
    return tokenizer.decode(new, skip_special_tokens=True).lstrip().split("\n")[0].strip()


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_batched_generation_equals_a_plain_greedy_loop(build, tokenizer):
    model = build(seed=3)
    prompts = ["Q: x?\nA:", "A much longer question, padded less?\nA:", "Hi", "Tell me:"]
    refs = [_greedy(model, tokenizer, p, 6) for p in prompts]
    task = GenerationTask("qa", prompts, [[r] for r in refs], max_new_tokens=6)
    scores = Evaluator(model, tokenizer, task=task, batch_size=3).score()
    assert scores.generated == refs
    assert scores.exact.tolist() == [1.0] * 4 and scores.f1.tolist() == [1.0] * 4
    m = scores.metrics(n_resamples=100)
    assert m["exact_match"][0] == 1.0 and m["f1"][3] == 4


def test_generation_sees_the_intervention(tokenizer):
    model = tiny_llama(seed=4)
    prompts = ["Q: x?\nA:", "Another prompt here\nA:"]
    refs = [_greedy(model, tokenizer, p, 8) for p in prompts]
    ev = Evaluator(model, tokenizer, task=GenerationTask("qa", prompts, [[r] for r in refs],
                                                         max_new_tokens=8))
    all_neurons = {l: np.arange(128) for l in range(2)}
    with intervene(model, all_neurons, mode="inhibit"):
        hit = ev.score()
    assert ev.score().exact.mean() == 1.0
    assert hit.generated != refs  # every MLP neuron zeroed changes the greedy answers
