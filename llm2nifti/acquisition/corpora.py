"""What the stimuli are made of: the document, and the corpora that ship with an installed wheel.

Kept apart from :mod:`~llm2nifti.acquisition.stimuli` (which reads any source of text) and
:mod:`~llm2nifti.acquisition.localizer` (which builds the localizer's items), so that both
import these and neither imports the other back.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

__all__ = ["Document", "BUILTIN_CORPORA", "builtin_corpus_path"]

# name -> (file in gensim's test data, encoding, one document per line, task label)
BUILTIN_CORPORA = {
    "lee": ("lee_background.cor", "latin-1", "lee"),
    "lee-test": ("lee.cor", "latin-1", "leetest"),
    "pang-lee": ("pang_lee_polarity.cor", "latin-1", "panglee"),
}


@dataclass(frozen=True)
class Document:
    """One text with an identifier and, in a localizer, its condition."""

    id: str
    text: str
    condition: str | None = None


def builtin_corpus_path(name):
    """Path of a corpus shipped in gensim's wheel (installed, never imported)."""
    fname = BUILTIN_CORPORA[name][0]
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            f"the built-in corpus {name!r} comes from gensim's wheel: run "
            "`pip install --no-deps gensim==4.4.0`, or pass your own text with --text"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / fname
    if not path.is_file():
        raise UsageError(f"{path} is missing: reinstall gensim==4.4.0 (--no-deps)")
    return path
