"""nilearn's CanICA against the torch backend on the same scan: time, memory, agreement.

Usage::

    llm2nifti convert /tmp/ds_demo --max-tokens 4096 -q
    python benchmarks/bench_decompose.py /tmp/ds_demo -k 20 --n-init 10 --threads 2
    python benchmarks/bench_decompose.py /tmp/ds_demo -k 20,64 --n-init 10 --threads 2   # several k, one run

Each backend runs in its own process (so peak memory is its own): the wall time
of the fit, the process's peak resident memory (and the part above the
memory after imports), and the components. Components are then matched one
to one (Hungarian algorithm on the absolute correlation of maps over neurons)
and the matched |r| is summarised.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(args):
    import torch

    torch.set_num_threads(args.threads)
    from bids_llm.dataset import Dataset
    from llm2nifti.analysis.decomposition import Decomposition, select_runs

    runs, layout = select_runs(Dataset(args.dataset), participant=args.participant,
                               task=args.task, run=args.runs)
    base = _rss_mib()
    t0 = time.perf_counter()
    est = Decomposition(n_components=args.k, n_init=args.n_init, random_state=args.seed,
                        backend=args.worker, n_jobs=args.n_jobs, device=args.device).fit(runs, layout)
    wall = time.perf_counter() - t0
    np.save(args.out, est.components_)
    print(json.dumps({"backend": args.worker, "wall_s": wall, "peak_rss_mib": _rss_mib(),
                      "rss_after_imports_mib": base, "n_tokens": est.n_tokens_,
                      "n_runs": est.n_runs_, "n_neurons": layout.n_neurons}))


def match(a, b):
    """Hungarian matching of maps on |r|; returns the matched |r| values."""
    from scipy.optimize import linear_sum_assignment

    k = len(a)
    r = np.abs(np.corrcoef(a, b)[:k, k:])
    i, j = linear_sum_assignment(-r)
    return r[i, j]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset")
    p.add_argument("-k", default="20", help="Components; several as 20,64 (one table each, then a summary).")
    p.add_argument("--n-init", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--n-jobs", type=int, default=1, help="nilearn jobs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--participant", default=None)
    p.add_argument("--task", default=None)
    p.add_argument("--runs", type=lambda s: [int(x) for x in s.split(",")], default=None)
    p.add_argument("--backends", default="nilearn,fast")
    p.add_argument("--control", action="store_true",
                   help="also run nilearn with seed+1: how far nilearn agrees with itself")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.k = int(args.k)
        return worker(args)
    summary = []
    for k in [int(x) for x in str(args.k).split(",")]:
        args.k = k
        summary.append(compare(args))
    if len(summary) > 1:
        print("\nsummary")
        for line in summary:
            print("  " + line)


def compare(args):
    """Run each backend on one k in its own process; print the table; return a summary line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "OPENBLAS_NUM_THREADS": str(args.threads)}
    results, maps = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(b, b, args.seed) for b in args.backends.split(",")]
        if args.control:
            jobs.append((f"nilearn s{args.seed + 1}", "nilearn", args.seed + 1))
        for name, backend, seed in jobs:
            out = Path(tmp) / f"{len(results)}.npy"
            cmd = [sys.executable, __file__, args.dataset, "-k", str(args.k), "--n-init",
                   str(args.n_init), "--seed", str(seed), "--threads", str(args.threads),
                   "--n-jobs", str(args.n_jobs), "--device", args.device, "--worker", backend,
                   "--out", str(out)]
            for opt in ("participant", "task"):
                if getattr(args, opt):
                    cmd += [f"--{opt}", getattr(args, opt)]
            if args.runs:
                cmd += ["--runs", ",".join(map(str, args.runs))]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                sys.exit(f"{backend} failed:\n{proc.stderr}")
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            maps[name] = np.load(out)

    first = next(iter(results.values()))
    print(f"dataset {args.dataset}: {first['n_runs']} runs, {first['n_tokens']} tokens, "
          f"{first['n_neurons']} neurons; k={args.k}, n_init={args.n_init}, threads={args.threads}, "
          f"device={args.device}")
    names = list(results)
    print(f"{'':28s}" + "".join(f"{n:>14s}" for n in names))
    for key, label in (("wall_s", "wall time (s)"), ("peak_rss_mib", "peak RSS (MiB)"),
                       ("rss_after_imports_mib", "RSS after imports (MiB)")):
        print(f"{label:28s}" + "".join(f"{results[n][key]:14.1f}" for n in names))
    print(f"{'peak RSS - imports (MiB)':28s}" + "".join(
        f"{results[n]['peak_rss_mib'] - results[n]['rss_after_imports_mib']:14.1f}" for n in names))
    a = names[0]
    line = f"k={args.k}:"
    for b in names[1:]:
        r = match(maps[a], maps[b])
        print(f"speed-up {a}/{b}: {results[a]['wall_s'] / results[b]['wall_s']:.1f}x")
        print(f"matched |r| ({a} vs {b}, Hungarian): mean {r.mean():.3f}, median {np.median(r):.3f}, "
              f"min {r.min():.3f}; {int((r >= 0.9).sum())}/{len(r)} components >= 0.9")
        line += (f" {a} {results[a]['wall_s']:.1f} s, {b} {results[b]['wall_s']:.1f} s "
                 f"({results[a]['wall_s'] / results[b]['wall_s']:.1f}x), matched |r| mean {r.mean():.3f}")
    return line


if __name__ == "__main__":
    main()
