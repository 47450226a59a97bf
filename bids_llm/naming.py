"""BIDS file names, entity labels, and paths that stay inside the dataset."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["label", "participant_label", "bids_name", "inside", "parse_name", "ENTITY_ORDER", "components_name",
           "legacy_name", "existing"]

ENTITY_ORDER = ("sub", "ses", "task", "acq", "run", "space", "desc", "stat")
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
MAX_LABEL = 64  # file names stay far below the 255 bytes file systems allow


def label(value, what="label"):
    """A BIDS label: ASCII letters and digits only, at most 64. Raises ValueError otherwise."""
    value = str(value)
    if not _LABEL.match(value):
        raise ValueError(f"{what} {value!r} must be letters and digits only (BIDS label)")
    if len(value) > MAX_LABEL:
        raise ValueError(f"{what} of {len(value)} characters: use at most {MAX_LABEL} letters and digits")
    return value


def participant_label(value):
    """A participant label as BIDS apps take it: ``01`` or ``sub-01`` (the prefix dropped)."""
    value = str(value)
    return value[len("sub-"):] if value.startswith("sub-") else value


def bids_name(suffix, ext="", **entities):
    """``sub-X_task-Y_run-01_bold.nii``: entities in BIDS order, run zero-padded."""
    parts = []
    for key in ENTITY_ORDER:
        val = entities.pop(key, None)
        if val is None:
            continue
        val = f"{int(val):02d}" if key == "run" else label(val, key)
        parts.append(f"{key}-{val}")
    if entities:
        raise ValueError(f"unknown BIDS entities {sorted(entities)}")
    return "_".join(parts + [suffix]) + ext


def parse_name(name):
    """Entities and suffix of a BIDS file name: ``({'sub': 'x', ...}, 'bold')``."""
    stem = Path(name).name.split(".")[0]
    parts = stem.split("_")
    ents = dict(p.split("-", 1) for p in parts[:-1] if "-" in p)
    if "run" in ents:
        ents["run"] = int(ents["run"])
    return ents, parts[-1]


def components_name(ext=".nii", z=False, **entities):
    """Name of a decomposition's maps, as tedana names its ICA derivatives.

    ``sub-X_task-Y_desc-canica_components.nii`` (volume i is component i) and, with ``z``,
    ``sub-X_task-Y_desc-canica_stat-z_components.nii`` (the maps z-scored over neurons).
    ``components`` is not a BIDS suffix yet: derivative folders list it in ``.bidsignore``.
    """
    return bids_name("components", ext, stat="z" if z else None, **entities)


def legacy_name(name):
    """The name an earlier version gave a derivative, or None when it had the same name.

    Decompositions were ``..._desc-<d>_bold.nii`` and ``..._desc-<d>Z_bold.nii``, unit
    statistics ``..._desc-unitstats_bold.nii``; they are read under either name.
    """
    name = str(name)
    for new, old in (("_stat-z_components.", "Z_bold."), ("_components.", "_bold."),
                     ("_desc-unitstats_statmap.", "_desc-unitstats_bold.")):
        if new in name:
            return name.replace(new, old, 1)
    return None


def existing(path):
    """``path`` when it is a file, else its :func:`legacy_name` when that one is, else ``path``."""
    path = Path(path)
    old = legacy_name(path.name)
    if not path.is_file() and old is not None and (path.parent / old).is_file():
        return path.parent / old
    return path


def inside(root, *parts):
    """Join ``parts`` under ``root`` and refuse any result outside it."""
    root = Path(root).resolve()
    path = root.joinpath(*map(str, parts)).resolve()
    if path != root and root not in path.parents:
        raise ValueError(f"path {path} would leave the dataset folder {root}")
    return path
