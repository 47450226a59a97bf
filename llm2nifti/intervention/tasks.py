"""Tasks that measure what a model can do: built-in ones and the formats users bring.

A :class:`ChoiceTask` is scored by the log-likelihood of each answer given the prompt
(:class:`~llm2nifti.intervention.evaluation.Evaluator`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..acquisition import load_documents
from ..errors import UsageError

__all__ = ["ChoiceTask", "GenerationTask", "pang_lee_task", "bigbench_task", "labelled_task",
           "multiple_choice_task", "question_task", "load_task", "normalize_answer",
           "exact_match", "token_f1", "TASK_FORMATS"]

_LABEL = re.compile(r"^__label__(\S+)\s+(.*)$", re.S)


@dataclass
class ChoiceTask:
    """A labelled multiple-choice task scored by answer log-likelihood.

    Parameters
    ----------
    name : str
    prompts : list of str
        One prompt per item; the answer follows it directly.
    choices : list of list of str
        The candidate answers of each item (with their leading space).
    labels : ndarray of int
        Index of the correct choice of each item.
    ids : list of str, optional
        Item identifiers.
    sources : list of Document, optional
        The texts the items come from (compared with a scan by :func:`check_overlap`).
    single_token : bool
        Every answer must be one token (label words of labelled sentences).
    """

    name: str
    prompts: list
    choices: list
    labels: np.ndarray
    ids: list = field(default_factory=list)
    sources: list = field(default_factory=list)
    single_token: bool = False

    def documents(self):
        """The items as documents, for :func:`check_overlap`."""
        from ..acquisition import Document

        if self.sources:
            return list(self.sources)
        ids = self.ids or [f"{self.name}{i:04d}" for i in range(len(self))]
        return [Document(i, p) for i, p in zip(ids, self.prompts)]

    def __len__(self):
        return len(self.prompts)

    def subset(self, n, seed=0):
        """At most ``n`` items, drawn without replacement, stratified by label."""
        if n is None or n >= len(self):
            return self
        rng = np.random.default_rng(seed)
        labels = np.asarray(self.labels)
        classes = np.unique(labels)
        take = []
        for i, c in enumerate(classes):
            members = np.flatnonzero(labels == c)
            k = n // len(classes) + (1 if i < n % len(classes) else 0)
            take.extend(rng.choice(members, size=min(k, len(members)), replace=False))
        take = np.sort(np.asarray(take, dtype=int))
        pick = (lambda xs: [xs[i] for i in take] if xs else [])
        return ChoiceTask(self.name, pick(self.prompts), pick(self.choices), labels[take],
                          pick(self.ids), pick(self.sources), self.single_token)


SENTIMENT_PROMPT = "Review: {text}\nSentiment:"


def pang_lee_task(template=SENTIMENT_PROMPT):
    """The 200 Pang-Lee movie-review sentences (100 negative, 100 positive) as a :class:`ChoiceTask`.

    Each line of the corpus reads ``__label__neg <sentence>``; the answers
    are `` negative`` and `` positive``.
    """
    docs = load_documents("pang-lee")
    names = ("neg", "pos")
    prompts, labels, ids = [], [], []
    for d in docs:
        m = _LABEL.match(d.text.strip())
        if not m or m.group(1) not in names:
            raise UsageError(f"unexpected line in the Pang-Lee corpus: {d.text[:40]!r}")
        prompts.append(template.format(text=m.group(2).strip()))
        labels.append(names.index(m.group(1)))
        ids.append(d.id)
    choices = [[" negative", " positive"]] * len(prompts)
    return ChoiceTask("pang-lee", prompts, choices, np.asarray(labels), ids, list(docs))


def bigbench_task(path):
    """A BIG-bench multiple-choice ``task.json`` (``examples`` with ``target_scores``)."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read BIG-bench task {path} ({exc}): pass a task.json in the "
                         "BIG-bench format") from None
    examples = spec.get("examples", []) if isinstance(spec, dict) else None
    if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
        raise UsageError(f"{path}: 'examples' must be a list of objects (BIG-bench task format)")
    examples = [e for e in examples if isinstance(e.get("target_scores"), dict)]
    if not examples:
        raise UsageError(f"{path} has no multiple-choice examples (examples with target_scores)")
    for i, e in enumerate(examples):
        scores = e["target_scores"]
        if not isinstance(e.get("input"), str) or len(scores) < 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values()):
            raise UsageError(f"{path}: example {i} needs an 'input' string and target_scores "
                             "mapping two or more answers to numbers")
    prefix = spec.get("task_prefix", "")
    q_prefix = spec.get("example_input_prefix", "\nQ: ")
    a_prefix = spec.get("example_output_prefix", "\nA:")
    prompts, choices, labels = [], [], []
    for e in examples:
        opts = list(e["target_scores"])
        scores = [float(e["target_scores"][o]) for o in opts]
        prompts.append(f"{prefix}{q_prefix}{e['input']}{a_prefix}")
        choices.append([" " + str(o).strip() for o in opts])
        labels.append(int(np.argmax(scores)))
    return ChoiceTask(spec.get("name", path.parent.name), prompts, choices, np.asarray(labels),
                      [f"{path.parent.name}{i:04d}" for i in range(len(prompts))])


# --------------------------------------------------------------- open questions
@dataclass
class GenerationTask:
    """Open questions scored by greedy generation against reference answers (SQuAD style).

    Parameters
    ----------
    name : str
    prompts : list of str
        One prompt per item, continued greedily.
    answers : list of list of str
        Reference answers per item (any counts).
    ids : list of str, optional
    max_new_tokens : int
        Longest answer generated; generation also stops at the first newline.
    """

    name: str
    prompts: list
    answers: list
    ids: list = field(default_factory=list)
    max_new_tokens: int = 16

    sources = ()
    documents = ChoiceTask.documents
    __len__ = ChoiceTask.__len__

    def subset(self, n, seed=0):
        """At most ``n`` items, drawn without replacement, in their original order."""
        if n is None or n >= len(self):
            return self
        take = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        pick = (lambda xs: [xs[i] for i in take] if xs else [])
        return GenerationTask(self.name, pick(self.prompts), pick(self.answers), pick(self.ids),
                              self.max_new_tokens)


_PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text):
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction, references):
    """1.0 when the normalised prediction equals a normalised reference, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in references))


def token_f1(prediction, references):
    """SQuAD's token F1 of the prediction against its best reference."""
    from collections import Counter

    pred = normalize_answer(prediction).split()
    best = 0.0
    for ref in references:
        gold = normalize_answer(ref).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


# --------------------------------------------------------------- user files
TASK_FORMATS = {
    "labelled": "text, label (one item per line; a template turns the text into a prompt and "
                "label words are the answers)",
    "multiple-choice": "prompt, choices (a list), answer (the index of the right choice or its text)",
    "questions": "prompt (or question, with an optional context), answers (a list) or answer",
}
LABELLED_TEMPLATE = "{text}\nAnswer:"
QUESTION_TEMPLATE = "Context: {context}\nQuestion: {question}\nAnswer:"


def read_records(path):
    """Rows of a JSONL file (one object per line) or of a TSV with a header, as dicts."""
    path = Path(path)
    if path.suffix.lower() == ".tsv":
        import pandas as pd

        try:
            table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read task file {path} ({exc}): pass a TSV with a header row") from None
        return table.to_dict("records")
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read task file {path} ({exc}): pass a UTF-8 JSONL file") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}, line {n}: not JSON ({exc.msg}): write one JSON object per "
                             "line") from None
        if not isinstance(rec, dict):
            raise UsageError(f"{path}, line {n}: expected a JSON object, got {type(rec).__name__}")
        records.append(rec)
    if not records:
        raise UsageError(f"{path} holds no items: write one JSON object per line")
    return records


def task_format(records):
    """Which of :data:`TASK_FORMATS` the records are, from the first record's columns."""
    keys = set(records[0])
    if "choices" in keys:
        return "multiple-choice"
    if "label" in keys:
        return "labelled"
    if keys & {"answers", "answer"}:
        return "questions"
    formats = "; ".join(f"{k}: {v}" for k, v in TASK_FORMATS.items())
    raise UsageError(f"task file columns {sorted(keys)} match no task format ({formats})")


def _need(path, n, rec, *names):
    missing = [k for k in names if k not in rec or rec[k] in (None, "")]
    if missing:
        raise UsageError(f"{path}, item {n}: missing {', '.join(missing)}: every item needs "
                         f"{', '.join(names)}")


def _fill(path, n, template, rec):
    try:
        return template.format(**rec)
    except KeyError as exc:
        raise UsageError(f"{path}, item {n}: the template asks for {exc} which the item does not "
                         "have: use only the item's columns in --template") from None
    except (IndexError, ValueError) as exc:
        raise UsageError(f"bad --template {template!r} ({exc}): name columns in braces, e.g. "
                         "'Review: {text}\\nSentiment:'") from None


def _answers(prompt, words):
    """Answers as they follow ``prompt``: after a space, unless the prompt ends with whitespace."""
    sep = "" if prompt[-1:].isspace() else " "
    return [sep + str(w).strip() for w in words]


def parse_label_words(spec):
    """``"neg=negative,pos=positive"`` -> ``{"neg": " negative", "pos": " positive"}``."""
    if spec is None or isinstance(spec, dict):
        return spec
    out = {}
    for part in str(spec).split(","):
        label, eq, word = part.partition("=")
        if not eq or not label.strip() or not word.strip():
            raise UsageError(f"bad label words {spec!r}: write LABEL=WORD pairs separated by "
                             "commas, e.g. 0=negative,1=positive")
        out[label.strip()] = word
    return out


def labelled_task(path, template=LABELLED_TEMPLATE, label_words=None):
    """Labelled sentences (``text``, ``label``; SST-2 or AG News style) as a :class:`ChoiceTask`.

    Every item is asked the same question: the answers are the label words (by default the
    labels themselves), each after a space unless the template ends with whitespace, and
    each must be a single token.
    """
    path = Path(path)
    records = read_records(path)
    for n, rec in enumerate(records, 1):
        _need(path, n, rec, "text", "label")
    labels = sorted({str(r["label"]) for r in records})
    words = parse_label_words(label_words) or {lab: lab for lab in labels}
    missing = [lab for lab in labels if lab not in words]
    if missing:
        raise UsageError(f"{path}: no label word for label(s) {missing}: give one for each of "
                         f"{labels} in --label-words")
    if len(labels) < 2:
        raise UsageError(f"{path}: every item has the label {labels[0]!r}: a labelled task needs "
                         "two or more labels")
    prompts = [_fill(path, n, template, r) for n, r in enumerate(records, 1)]
    ids = [str(r.get("id", f"{path.stem}{n:04d}")) for n, r in enumerate(records)]
    return ChoiceTask(path.stem, prompts, [_answers(p, [words[lab] for lab in labels]) for p in prompts],
                      np.asarray([labels.index(str(r["label"])) for r in records]), ids,
                      single_token=True)


def multiple_choice_task(path, template="{prompt}"):
    """Multiple-choice items (``prompt``, ``choices``, ``answer``) as a :class:`ChoiceTask`."""
    path = Path(path)
    prompts, choices, labels, ids = [], [], [], []
    for n, rec in enumerate(read_records(path), 1):
        _need(path, n, rec, "prompt", "choices", "answer")
        opts, ans = rec["choices"], rec["answer"]
        if not isinstance(opts, list) or len(opts) < 2 or not all(isinstance(c, str) and c.strip()
                                                                   for c in opts):
            raise UsageError(f"{path}, item {n}: choices must be a list of two or more strings")
        if isinstance(ans, bool) or not (isinstance(ans, int) and 0 <= ans < len(opts)
                                         or isinstance(ans, str) and ans in opts):
            raise UsageError(f"{path}, item {n}: answer {ans!r} is neither an index into choices "
                             "(0-based) nor one of them")
        prompts.append(_fill(path, n, template, rec))
        choices.append(_answers(prompts[-1], opts))
        labels.append(opts.index(ans) if isinstance(ans, str) else ans)
        ids.append(str(rec.get("id", f"{path.stem}{n - 1:04d}")))
    return ChoiceTask(path.stem, prompts, choices, np.asarray(labels), ids)


def question_task(path, template=None, max_new_tokens=16):
    """Open questions with reference answers (SQuAD style) as a :class:`GenerationTask`.

    Items give a ``prompt``, or a ``question`` with an optional ``context`` (then the prompt is
    ``Context: ...\\nQuestion: ...\\nAnswer:``), and ``answers`` (a list) or ``answer``.
    """
    path = Path(path)
    if int(max_new_tokens) < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    prompts, answers, ids = [], [], []
    for n, rec in enumerate(read_records(path), 1):
        refs = rec.get("answers", rec.get("answer"))
        refs = [refs] if isinstance(refs, str) else refs
        if not isinstance(refs, list) or not refs or not all(isinstance(a, str) for a in refs):
            raise UsageError(f"{path}, item {n}: answers must be a string or a list of strings")
        if template is not None:
            prompt = _fill(path, n, template, rec)
        elif rec.get("prompt"):
            prompt = str(rec["prompt"])
        else:
            _need(path, n, rec, "question")
            prompt = _fill(path, n, QUESTION_TEMPLATE if rec.get("context") else
                           "Question: {question}\nAnswer:", rec)
        prompts.append(prompt)
        answers.append(refs)
        ids.append(str(rec.get("id", f"{path.stem}{n - 1:04d}")))
    return GenerationTask(path.stem, prompts, answers, ids, int(max_new_tokens))


def load_task(spec, template=None, label_words=None, max_new_tokens=16):
    """A task from its name or file.

    Parameters
    ----------
    spec : str or path
        ``"pang-lee"`` (built in); a BIG-bench ``task.json``; a ``.tsv`` of labelled sentences;
        or a ``.jsonl`` whose columns say its format (:data:`TASK_FORMATS`).
    template : str, optional
        Prompt built from each item's columns, e.g. ``"Review: {text}\\nSentiment:"``.
    label_words : str or dict, optional
        Labelled sentences: the answer word of each label (``"0=negative,1=positive"``).
    max_new_tokens : int
        Open questions: the longest generated answer.

    Returns
    -------
    ChoiceTask or GenerationTask
    """
    if str(spec) == "pang-lee":
        return pang_lee_task(template or SENTIMENT_PROMPT)
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"unknown task {str(spec)!r}: use pang-lee, or pass a task file (.jsonl, "
                         ".tsv, or a BIG-bench task.json)")
    if path.suffix.lower() == ".json":
        return bigbench_task(path)
    records = read_records(path)
    kind = "labelled" if path.suffix.lower() == ".tsv" else task_format(records)
    if kind == "labelled":
        return labelled_task(path, template or LABELLED_TEMPLATE, label_words)
    if label_words is not None:
        raise UsageError(f"--label-words applies to labelled sentences; {path.name} holds {kind} items")
    if kind == "multiple-choice":
        return multiple_choice_task(path, template or "{prompt}")
    return question_task(path, template, max_new_tokens)
