"""Atomic writing: every file is written under a temporary name, then renamed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

__all__ = ["atomic_path", "write_text", "write_json", "save_img", "save_img_checksum",
           "checksum_file", "new_hash", "CHECKSUMS", "TMP_PREFIX"]

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


#: Checksum algorithms of runs, the one written first; the others are still read and verified
#: (datasets written before runs were hashed with xxh3_128 hold sha256 checksums).
CHECKSUMS = ("xxh3_128", "sha256")


def new_hash(algorithm=CHECKSUMS[0]):
    """A hash object of ``algorithm`` (one of :data:`CHECKSUMS`)."""
    if algorithm == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown checksum {algorithm!r}: one of {', '.join(CHECKSUMS)}")


class _HashingFile:
    """A binary file that hashes what is written to it, as it is written.

    The hash stands for the file only if every byte was written once, in order: a seek that
    moves anywhere but the current end clears ``sequential``.

    ``read`` and ``write`` are methods of the class itself, not passed on through
    ``__getattr__``: nibabel tells a file object from a file name with ``isinstance`` against a
    runtime-checkable Protocol (``read`` and ``write``), and from Python 3.12 on that check
    looks the attributes up on the type, where ``__getattr__`` is not consulted.
    """

    def __init__(self, f, algorithm=CHECKSUMS[0]):
        self._f = f
        self.hash = new_hash(algorithm)
        self.pos = 0
        self.sequential = True

    def write(self, data):
        view = memoryview(data).cast("B")
        n = self._f.write(view)
        self.hash.update(view)
        self.pos += view.nbytes
        return n

    def seek(self, offset, whence=0):
        where = self._f.seek(offset, whence)
        if where != self.pos:
            self.sequential = False
        return where

    def tell(self):
        return self._f.tell()

    def read(self, size=-1, /):
        return self._f.read(size)

    def flush(self):
        return self._f.flush()

    def __getattr__(self, name):
        return getattr(self._f, name)


def save_img_checksum(img, path, algorithm=CHECKSUMS[0]):
    """:func:`save_img`, returning the checksum of the file written, hashed as it is written.

    Spares reading the file back (:func:`checksum_file`). A ``.nii`` image of native floats
    held in memory in the order NIfTI stores them (a run from
    :meth:`~llm2nifti.layout.NeuronLayout.buffer_to_img`) is written as nibabel's header
    followed by its data in one contiguous write, with no copy; the file is byte for byte what
    ``nibabel.save`` writes. Other images go through nibabel; when that writer is not
    sequential (a compressed or two-file format), the file is read back to hash it.

    The default checksum, xxh3_128, is hashed at tens of GB/s, so that the checksum never
    slows a writer down to below the disk's speed (sha256 runs at about 2 GB/s a core, slower
    than a fast disk). It guards against damaged and incomplete files, not against tampering.
    """
    import nibabel as nib

    path = Path(path)
    if not path.name.endswith(".nii"):
        save_img(img, path)
        return checksum_file(path, algorithm)
    plain = _plain_nifti(img)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            out = _HashingFile(f, algorithm)
            if plain is not None:
                for part in plain:
                    out.write(part)
            else:
                file_map = img.filespec_to_file_map(str(tmp))
                file_map["image"] = nib.FileHolder(filename=str(tmp), fileobj=out)
                img.to_file_map(file_map)
        digest = out.hash.hexdigest() if out.sequential else checksum_file(tmp, algorithm)
    return digest


def _plain_nifti(img):
    """``(header bytes, data bytes)`` of a single-file NIfTI whose data nibabel writes unscaled.

    The header is nibabel's own, as its ``to_file_map`` writes it (slope 1, intercept 0,
    padded to the data offset); the data is a view of the image's array, in file order.
    None when nibabel would transform the data on the way (a cast, a scaling, a byte swap,
    another memory order, data behind a proxy).
    """
    import io

    import nibabel as nib
    import numpy as np

    if type(img) not in (nib.Nifti1Image, nib.Nifti2Image) or type(img.dataobj) is not np.ndarray:
        return None
    data = img.dataobj
    if (data.dtype != img.get_data_dtype() or data.dtype.kind != "f" or not data.dtype.isnative
            or not data.flags.f_contiguous):
        return None
    if not (np.isnan(img.header["scl_slope"]) and np.isnan(img.header["scl_inter"])):
        return None
    img.update_header()
    hdr = img.header.copy()
    hdr.set_slope_inter(1.0, 0.0)
    head = io.BytesIO()
    hdr.write_to(head)
    offset = int(hdr.get_data_offset())
    if head.tell() > offset:
        return None
    head.write(b"\0" * (offset - head.tell()))
    return head.getvalue(), memoryview(data.T).cast("B")


def checksum_file(path, algorithm=CHECKSUMS[0], chunk=1 << 22):
    """Checksum (hex) of a file's bytes, read back in chunks."""
    h = new_hash(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
