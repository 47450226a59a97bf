"""The built-in language localizer: sentences, the same kind of words shuffled, and nonwords.

The fMRI language localizer (Fedorenko et al., 2010) contrasts reading sentences with
reading lists of unconnected words and strings of pronounceable nonwords. This module
makes the three conditions from the embedded Lee news corpus, so that a localizer needs
no file of one's own:

``sentences``
    Sentences of the corpus, 8 to 20 words long, as written.
``words``
    Other sentences of the corpus with their words shuffled (no syntax, the same kind of
    words).
``nonwords``
    Other sentences again, each word replaced by a pseudo-word made from its own letters:
    consonants stay on consonant slots and vowels on vowel slots, so the string keeps the
    word's length and its consonant-vowel pattern (pronounceable) but loses its meaning.

Each condition draws its own sentences (no sentence is read twice), and the three are
matched in word count: sentences are sorted by length and dealt out three at a time.
Items are then interleaved in a seeded random order (triples of one item per condition,
each in a random order), so no condition sits at a fixed place and every run holds all three. Each item becomes one document, opened by the BOS token.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import UsageError
from .corpora import BUILTIN_CORPORA, Document, builtin_corpus_path

__all__ = ["localizer_documents", "CONDITIONS", "pseudoword", "sentences_of"]

CONDITIONS = ("sentences", "words", "nonwords")
_VOWELS = set("aeiouyAEIOUY")
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


def sentences_of(text, min_words=8, max_words=20):
    """Sentences of ``text`` with ``min_words`` to ``max_words`` plain words (letters only)."""
    out = []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        sentence = sentence.strip()
        words = sentence.split()
        if not (min_words <= len(words) <= max_words) or not sentence.endswith("."):
            continue
        if all(_WORD.fullmatch(w.strip(".,;:")) for w in words):
            out.append(sentence)
    return out


def pseudoword(word, rng):
    """A pseudo-word made from ``word``'s letters, keeping its consonant-vowel pattern.

    Vowels are shuffled among the vowel slots and consonants among the consonant slots
    (up to ten tries for a string other than the word itself; a word such as "to" has
    none); a leading capital and trailing punctuation are kept.
    """
    core = word.rstrip(".,;:")
    tail = word[len(core):]
    letters = [c for c in core if c.isalpha()]
    for _ in range(10):
        vowels = [c.lower() for c in letters if c in _VOWELS]
        consonants = [c.lower() for c in letters if c not in _VOWELS]
        rng.shuffle(vowels)
        rng.shuffle(consonants)
        out = [vowels.pop() if c in _VOWELS else consonants.pop() for c in letters]
        if "".join(out) != core.lower():
            break
    if core[:1].isupper() and out:
        out[0] = out[0].upper()
    return "".join(out) + tail


def _words(sentence, rng):
    words = [w.strip(".,;:") for w in sentence.split()]
    order = rng.permutation(len(words))
    # Not the sentence's own order again (short lists can shuffle back to it).
    while len(words) > 1 and (order == np.arange(len(words))).all():
        order = rng.permutation(len(words))
    return " ".join(words[i].lower() for i in order) + "."


def _nonwords(sentence, rng):
    return " ".join(pseudoword(w, rng) for w in sentence.split())


def localizer_documents(n_items=60, seed=0, min_words=8, max_words=20):
    """The built-in localizer: ``n_items`` documents per condition, interleaved.

    Parameters
    ----------
    n_items : int
        Items per condition (the Lee corpus gives at most a few hundred).
    seed : int
        Seed of the deal, the shuffles and the order: the same seed gives the same items.
    min_words, max_words : int
        Sentence lengths kept.

    Returns
    -------
    list of Document
        Ids ``<condition><nnn>``, each with its ``condition``.
    """
    path = builtin_corpus_path("lee")
    text = path.read_text(encoding=BUILTIN_CORPORA["lee"][1])
    pool = sentences_of(text, min_words, max_words)
    if len(pool) < 3 * n_items:
        raise UsageError(f"the Lee corpus has {len(pool)} sentences of {min_words}-{max_words} "
                         f"words, fewer than the {3 * n_items} that {n_items} items per condition "
                         "need: ask for fewer items")
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(pool), size=3 * n_items, replace=False)
    picked = sorted(picked, key=lambda i: (len(pool[i].split()), i))
    make = {"sentences": lambda s: s, "words": lambda s: _words(s, rng),
            "nonwords": lambda s: _nonwords(s, rng)}
    triples = []
    for t in range(n_items):
        triple = [pool[i] for i in picked[3 * t: 3 * t + 3]]
        triples.append([Document(f"{condition}{t:03d}", make[condition](triple[j]), condition)
                        for condition, j in zip(CONDITIONS, rng.permutation(3))])
    # Triples in random order, conditions in random order inside each: every stretch of a
    # few items holds all three conditions, so every run does.
    return [triples[t][c] for t in rng.permutation(n_items) for c in rng.permutation(3)]
