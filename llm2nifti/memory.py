"""Memory guard: estimate a command's peak from the image headers before it starts.

Every command that loads images calls :func:`check_fits` with an estimate made from headers
(shapes and data types, never the data). When the estimate exceeds the memory available the
command refuses with one line naming the estimate, the memory available and what to change,
before it writes anything.

The memory available is the smallest of the system's available memory, the cgroup limit of
this process (containers, batch schedulers) and ``LLM2NIFTI_MEMORY_LIMIT`` (``"2GB"``,
``"512MiB"``, a number of bytes), which tests and shared machines set.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UsageError

__all__ = ["ENV_LIMIT", "available_memory", "check_fits", "format_bytes", "parse_size",
           "image_shape", "image_bytes", "require_maps", "is_raw_run", "run_shapes",
           "decomposition_bytes"]

ENV_LIMIT = "LLM2NIFTI_MEMORY_LIMIT"
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
          "t": 1e12, "tb": 1e12, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_size(text):
    """Bytes in ``"2GB"``, ``"512 MiB"``, ``"1e9"``; a one-line error otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m and m.group(2).lower()
    if not m or unit not in _UNITS:
        raise UsageError(f"{ENV_LIMIT}={text!r} is not a size: use e.g. 2GB, 512MiB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[unit])


def format_bytes(n):
    """``1.5 GB``, ``340 MB``: decimal units, as memory is quoted on the command line."""
    n = float(n)
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _cgroup_free():
    """Bytes left under this process's cgroup (v2 or v1) memory limit, or None."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            cap = Path(limit).read_text().strip()
            used = int(Path(usage).read_text().strip())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 2 ** 60:
            return max(int(cap) - used, 0)
    return None


def available_memory():
    """``(bytes, source)``: the memory this process may still use, and where the figure comes from."""
    options = []
    env = os.environ.get(ENV_LIMIT)
    if env:
        options.append((parse_size(env), ENV_LIMIT))
    try:
        import psutil

        options.append((int(psutil.virtual_memory().available), "available system memory"))
    except ImportError:  # pragma: no cover - psutil comes with dask.distributed
        pass
    cg = _cgroup_free()
    if cg is not None:
        options.append((cg, "cgroup limit"))
    if not options:  # pragma: no cover
        return float("inf"), "unknown"
    return min(options)


def check_fits(estimate, what, advice):
    """Refuse (:class:`UsageError`) when ``estimate`` bytes would not fit in the memory available.

    Parameters
    ----------
    estimate : int
        Peak bytes the work needs, from headers.
    what : str
        The work, e.g. ``"connectivity of 1024 networks over 4 runs"``.
    advice : str
        What to change so that it fits.
    """
    avail, source = available_memory()
    if estimate > avail:
        raise UsageError(f"{what} needs about {format_bytes(estimate)} of memory but "
                         f"{format_bytes(avail)} is available ({source}): {advice}")
    return estimate


def image_shape(path):
    """The shape of a NIfTI image from its header (no data read)."""
    import nibabel as nib

    if not Path(path).is_file():
        raise UsageError(f"{path} not found: check the path")
    try:
        return tuple(int(n) for n in nib.load(str(path), mmap=True).shape)
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise UsageError(f"cannot read {path} as a NIfTI image ({exc}): pass a .nii or .nii.gz "
                         "image") from None


def image_bytes(path, itemsize=4):
    """Bytes of the image's data once loaded as ``itemsize``-byte floats."""
    n = 1
    for d in image_shape(path):
        n *= d
    return n * itemsize


def _sidecar(path):
    import json

    p = Path(str(path).split(".nii")[0] + ".json")
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def is_raw_run(path):
    """Whether ``path`` is a converted run (volumes are tokens), not a decomposition's maps."""
    meta = _sidecar(path) or {}
    if "Method" in meta or "RawMaps" in meta:
        return False
    return "TokenRange" in meta or "RunTokens" in meta or (
        "derivatives" not in Path(path).parts and Path(path).name.endswith(("_bold.nii", "_bold.nii.gz")))


def require_maps(path, command="this command"):
    """Refuse a raw run where a decomposition's maps (one volume per component) belong."""
    if is_raw_run(path):
        n = image_shape(path)
        vols = n[3] if len(n) == 4 else 1
        raise UsageError(f"{path} is a converted run ({vols} token volumes), not components: give "
                         f"{command} the maps of `llm2nifti decompose` (derivatives/llm2nifti-canica/"
                         "sub-*/func/*_desc-canica_stat-z_components.nii)")


def run_shapes(paths):
    """``(tokens, neurons)`` of each run, from the headers."""
    out = []
    for p in paths:
        shape = image_shape(getattr(p, "path", p))
        n = 1
        for d in shape[:3]:
            n *= d
        out.append((shape[3] if len(shape) == 4 else 1, n))
    return out


def decomposition_bytes(shapes, n_components, backend="fast", n_init=10):
    """Peak bytes of a decomposition of runs of ``shapes`` (see :func:`run_shapes`).

    nilearn's CanICA holds about five float32 copies of a run while it masks, cleans and reduces
    it, the stacked reductions and ``n_init`` float64 FastICA results; the fast backend holds
    about three copies of a run (the memory-mapped read, the z-scored copy, its Gram-side copy),
    the reductions and the batched FastICA starts (measured on the demo scan: within 15%).
    """
    largest = max(t * v for t, v in shapes) * 4
    v = max(v for _, v in shapes)
    k = int(n_components)
    if backend == "fast":
        return 3 * largest + len(shapes) * k * v * 4 + (min(n_init, 10) + 3) * k * v * 8
    return 5 * largest + len(shapes) * k * v * 8 + (n_init + 2) * k * v * 8
