"""Atomic writing: every file is written under a temporary name, then renamed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

__all__ = ["atomic_path", "write_text", "write_json", "save_img", "save_img_sha256", "sha256_file",
           "TMP_PREFIX"]

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the file's extension (nibabel picks the format
    from it) and starts with a dot, so an interrupted write never leaves a file
    under a name a reader would take for a finished one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in JSON")


def save_img(img, path):
    """Save a nibabel image atomically (format from the extension)."""
    import nibabel as nib

    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


class _HashingFile:
    """A binary file that hashes (sha256) what is written to it, while nibabel writes it.

    The hash stands for the file only if every byte was written once, in order: a seek that
    moves anywhere but the current end clears ``sequential``.
    """

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.pos = 0
        self.sequential = True

    def write(self, data):
        n = self._f.write(data)
        self.sha256.update(data)
        self.pos += len(memoryview(data).cast("B"))
        return n

    def seek(self, offset, whence=0):
        where = self._f.seek(offset, whence)
        if where != self.pos:
            self.sequential = False
        return where

    def tell(self):
        return self._f.tell()

    def __getattr__(self, name):
        return getattr(self._f, name)


def save_img_sha256(img, path):
    """:func:`save_img`, returning the sha256 of the file written, hashed while it is written.

    Spares reading the file back (``sha256_file``); falls back to that when the writer was not
    sequential (a compressed or two-file format).
    """
    import nibabel as nib

    path = Path(path)
    if not path.name.endswith(".nii"):
        save_img(img, path)
        return sha256_file(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            out = _HashingFile(f)
            file_map = img.filespec_to_file_map(str(tmp))
            file_map["image"] = nib.FileHolder(filename=str(tmp), fileobj=out)
            img.to_file_map(file_map)
        digest = out.sha256.hexdigest() if out.sequential else sha256_file(tmp)
    return digest


def sha256_file(path, chunk=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
