"""The run writer against the disk: how close does writing runs come to the disk's own speed?

Usage::

    python benchmarks/bench_writer.py [--layers 32] [--width 11008] [--tokens 512] [--runs 3]
                                      [--repeats 3] [--dir PATH]

``convert`` hands each recorded run to its writer threads: one adds the run to the unit
statistics, the other writes the run (NIfTI header and data, hashed as they are written),
its events and sidecar, and records it in ``scans.tsv``. On a GPU the forward pass is so
fast that this path alone sets the speed of a scan, and it needs no GPU to measure. This
script feeds runs of the given shape (default: Llama-2-7B's MLP, 32 x 11,008 neurons, 512
tokens: 721 MB a run) to exactly that path and, side by side in the same folder, measures
the disk taking the same bytes in one contiguous write. Both include ``fsync``, so both
stop the clock when the bytes are on the disk; the page-cache figures (no ``fsync``) are
printed too. Measurements alternate, in a rotating order, each after ``os.sync()`` (the kernel
slows a writer down once a few GB are dirty, which would favour whichever ran first), and the
best of ``--repeats`` is taken for each: on a shared machine the same write of the same bytes
varies by several times from one call to the next, and the best is what each path can do.

Prints the writer's throughput, the disk's, and their ratio (goal: at least 0.8).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def _layout(layers, width):
    from llm2nifti.layout import NeuronLayout
    from llm2nifti.sites import Site

    site = Site(kind="mlp", architecture="llama", module_template="model.layers.{layer}.mlp.down_proj",
                hook="pre", width=width, n_layers=layers)
    return NeuronLayout(site)


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_write(folder, buffers, sync):
    """One contiguous write per run of the same bytes: the disk's speed."""
    t = time.perf_counter()
    for i, buf in enumerate(buffers):
        path = os.path.join(folder, f"raw-{i}.bin")
        with open(path, "wb") as f:
            f.write(memoryview(buf).cast("B"))
            if sync:
                f.flush()
                os.fsync(f.fileno())
    return time.perf_counter() - t


def _writer(folder, layout):
    from bids_llm.dataset import DatasetWriter

    w = DatasetWriter(folder, "bench", "bench", layout)
    w.init_dataset()
    w.add_participant({"model": "bench"})
    return w


def _events(n_tokens):
    return "onset\tduration\n" + "".join(f"{t}\t1\n" for t in range(n_tokens))


def write_job(folder, layout, buffers, sync):
    """The run-writing job alone: ``DatasetWriter.write_run`` (header, data, hash, sidecars)."""
    w, events = _writer(folder, layout), _events(buffers[0].shape[0])
    t = time.perf_counter()
    for r, buf in enumerate(buffers, 1):
        path = w.write_run(r, layout.buffer_to_img(buf, tr=1.0),
                           {"TaskName": "bench", "RepetitionTime": 1.0}, events, ".nii")
        if sync:
            _fsync(path)
    return time.perf_counter() - t


def stats_job(folder, layout, buffers, sync):
    """The other writer-thread job alone: adding each run to the unit statistics."""
    from llm2nifti.acquisition.convert import _add_run_stats
    from llm2nifti.acquisition.unitstats import RunningStats

    stats = RunningStats(layout.n_neurons)
    t = time.perf_counter()
    for buf in buffers:
        _add_run_stats(stats, layout, buf)
    return time.perf_counter() - t


def both_jobs(folder, layout, buffers, sync):
    """Both writer-thread jobs per run, on two threads, as ``record_runs`` submits them."""
    from llm2nifti.acquisition.convert import _add_run_stats
    from llm2nifti.acquisition.unitstats import RunningStats

    w, events = _writer(folder, layout), _events(buffers[0].shape[0])
    stats = RunningStats(layout.n_neurons)
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        for r, buf in enumerate(buffers, 1):
            img = layout.buffer_to_img(buf, tr=1.0)
            jobs = [pool.submit(_add_run_stats, stats, layout, buf),
                    pool.submit(w.write_run, r, img, {"TaskName": "bench", "RepetitionTime": 1.0},
                                events, ".nii")]
            path = [j.result() for j in jobs][1]
            if sync:
                _fsync(path)
    return time.perf_counter() - t


def hash_only(folder, layout, buffers, sync):
    """sha256 of the same bytes on one core: the floor of any writer that hashes each byte once."""
    import hashlib

    t = time.perf_counter()
    for buf in buffers:
        hashlib.sha256(memoryview(buf).cast("B")).digest()
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--width", type=int, default=11008)
    ap.add_argument("--tokens", type=int, default=512, help="tokens per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=None, help="folder on the disk to measure (default: a temporary "
                    "folder in the current directory)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the statistics job)")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    layout = _layout(a.layers, a.width)
    rng = np.random.default_rng(0)
    buffers = []
    for _ in range(a.runs):
        buf = layout.empty_buffer(a.tokens)
        buf[:] = rng.standard_normal(buf.shape, dtype=np.float32)
        buffers.append(buf)
    n_bytes = sum(b.nbytes for b in buffers)
    print(f"runs: {a.runs} x ({a.tokens} tokens x {layout.n_neurons:,} neurons) = "
          f"{n_bytes / 1e9:.2f} GB, float32")

    base = a.dir or os.getcwd()
    measures = {"disk": lambda f, sync: disk_write(f, buffers, sync),
                "write job": lambda f, sync: write_job(f, layout, buffers, sync),
                "both jobs": lambda f, sync: both_jobs(f, layout, buffers, sync)}
    figures = {}
    for sync in (True, False):
        times = {k: [] for k in measures}
        names = list(measures)
        for rep in range(a.repeats):
            # Alternate, rotating the order, and start each from a synced disk: the kernel
            # throttles a writer once a few GB are dirty, so whichever ran first would win.
            for what in names[rep % len(names):] + names[:rep % len(names)]:
                folder = tempfile.mkdtemp(prefix=".bench-writer-", dir=base)
                try:
                    os.sync()
                    times[what].append(measures[what](folder, sync))
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
        figures[sync] = {k: min(v) for k, v in times.items()}
    cpu = {"sha256 (1 core)": min(hash_only(None, layout, buffers, False)
                                  for _ in range(a.repeats)),
           "statistics job": min(stats_job(None, layout, buffers, False)
                                 for _ in range(a.repeats))}

    print(f"{'GB/s':18s}" + "".join(f"{k:>12s}" for k in measures) + f"{'write/disk':>12s}"
          + f"{'both/disk':>11s}")
    for sync, label in ((True, "to disk (fsync)"), (False, "page cache")):
        f = figures[sync]
        print(f"{label:18s}" + "".join(f"{n_bytes / f[k] / 1e9:>12.2f}" for k in measures)
              + f"{f['disk'] / f['write job']:>12.2f}{f['disk'] / f['both jobs']:>11.2f}")
    print("CPU alone, no disk: " + ", ".join(f"{k} {n_bytes / v / 1e9:.2f} GB/s" for k, v in cpu.items())
          + f"; {os.cpu_count()} cores")
    ratio = figures[True]["disk"] / figures[True]["write job"]
    print(f"writer / disk (to disk): {ratio:.2f}  (goal >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'})")
    return 0 if ratio >= 0.8 else 1


if __name__ == "__main__":
    raise SystemExit(main())
