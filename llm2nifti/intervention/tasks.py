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

__all__ = ["ChoiceTask", "pang_lee_task", "bigbench_task"]

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
    """

    name: str
    prompts: list
    choices: list
    labels: np.ndarray
    ids: list = field(default_factory=list)
    sources: list = field(default_factory=list)

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
                          pick(self.ids), pick(self.sources))


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
