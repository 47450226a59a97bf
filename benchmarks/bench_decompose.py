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
    """One backend in this process: one k, or (``--sweep``) every k in turn on the same runs."""
    import torch

    torch.set_num_threads(args.threads)
    from bids_llm.dataset import Dataset
    from llm2nifti.analysis.decomposition import Decomposition, select_runs
    from llm2nifti.analysis.reduction import RunReductions

    runs, layout = select_runs(Dataset(args.dataset), participant=args.participant,
                               task=args.task, run=args.runs)
    ks = [int(x) for x in str(args.k).split(",")]
    # a sweep shares each run's reduction between every k (as `evaluate --k` does)
    shared = RunReductions(device=args.device, n_components=max(ks)) if (
        args.worker == "fast" and len(ks) > 1) else None
    base = _rss_mib()
    walls = {}
    t_all = time.perf_counter()
    for k in ks:
        t0 = time.perf_counter()
        est = Decomposition(n_components=k, n_init=args.n_init, random_state=args.seed,
                            backend=args.worker, n_jobs=args.n_jobs, device=args.device).fit(
                                runs, layout, reduced=shared)
        walls[k] = time.perf_counter() - t0
        np.save(args.out if len(ks) == 1 else f"{args.out[:-4]}-k{k}.npy", est.components_)
    wall = time.perf_counter() - t_all
    print(json.dumps({"backend": args.worker, "wall_s": wall, "per_k_s": walls,
                      "peak_rss_mib": _rss_mib(), "rss_after_imports_mib": base,
                      "n_tokens": est.n_tokens_, "n_runs": est.n_runs_,
                      "n_neurons": layout.n_neurons}))


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
    p.add_argument("--sweep", action="store_true",
                   help="the k values are one FN@k sweep: each backend decomposes every k in one "
                        "process (the fast backend reduces each run once) and the totals are compared")
    p.add_argument("--subspace", action="store_true",
                   help="print, per run and k, the largest principal angle between the exact "
                        "per-run subspace and nilearn's randomized one (and the bfloat16 Gram's)")
    p.add_argument("--keep", default=None,
                   help="folder where each job's maps and timing are kept; with --reuse, jobs "
                        "already there are not run again (to iterate on one backend)")
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.sweep:
        return sweep(args)
    if args.subspace:
        return subspace(args)
    summary = []
    for k in [int(x) for x in str(args.k).split(",")]:
        args.k = k
        summary.append(compare(args))
    if len(summary) > 1:
        print("\nsummary")
        for line in summary:
            print("  " + line)


def _run_job(args, backend, seed, ks, out, env):
    """Run one worker process; its JSON result."""
    cmd = [sys.executable, __file__, args.dataset, "-k", ks, "--n-init", str(args.n_init),
           "--seed", str(seed), "--threads", str(args.threads), "--n-jobs", str(args.n_jobs),
           "--device", args.device, "--worker", backend, "--out", str(out)]
    for opt in ("participant", "task"):
        if getattr(args, opt):
            cmd += [f"--{opt}", getattr(args, opt)]
    if args.runs:
        cmd += ["--runs", ",".join(map(str, args.runs))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{backend} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _env(args):
    return {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
            "OPENBLAS_NUM_THREADS": str(args.threads)}


def subspace(args):
    """Largest principal angles (degrees) of per-run reductions against the float64 exact SVD."""
    import torch

    torch.set_num_threads(args.threads)
    from bids_llm.dataset import Dataset, load_run
    from llm2nifti.analysis.decomposition import select_runs
    from llm2nifti.analysis.reduction import gram_pca, run_pca, subspace_angle, zscore_

    runs, _ = select_runs(Dataset(args.dataset), participant=args.participant, task=args.task,
                          run=args.runs)
    ks = [int(x) for x in str(args.k).split(",")]
    print(f"largest principal angle to the exact (float64) subspace, degrees; seed {args.seed}")
    print(f"{'run':>8s} {'k':>5s} {'randomized (nilearn)':>22s} {'exact, float32 Gram':>20s} "
          f"{'exact, bfloat16 Gram':>21s}")
    for run in runs:
        Z = zscore_(torch.tensor(load_run(run)[0]))
        ref = gram_pca(Z.double(), max(ks), dtype=torch.float64)
        for k in ks:
            angles = [subspace_angle(run_pca(Z, k, args.seed), ref[:k]),
                      subspace_angle(gram_pca(Z, k, torch.float32), ref[:k]),
                      subspace_angle(gram_pca(Z, k, torch.bfloat16), ref[:k])]
            print(f"{run.run:>8} {k:>5d} {angles[0]:22.2f} {angles[1]:20.4f} {angles[2]:21.3f}")


def sweep(args):
    """An FN@k sweep by each backend in one process; totals, per-k times and matched |r|."""
    ks = [int(x) for x in str(args.k).split(",")]
    results, maps = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            out = Path(args.keep or tmp) / f"sweep-{backend}-s{args.seed}-n{args.n_init}.npy"
            out.parent.mkdir(parents=True, exist_ok=True)
            files = [Path(f"{str(out)[:-4]}-k{k}.npy") for k in ks]
            meta = out.with_suffix(f".{'-'.join(map(str, ks))}.json")
            if args.reuse and meta.is_file() and all(f.is_file() for f in files):
                results[backend] = json.loads(meta.read_text())
            else:
                results[backend] = _run_job(args, backend, args.seed, ",".join(map(str, ks)),
                                            out, _env(args))
                meta.write_text(json.dumps(results[backend]))
            maps[backend] = {k: np.load(f) for k, f in zip(ks, files)}
    first = next(iter(results.values()))
    print(f"FN@k sweep k={','.join(map(str, ks))} on {args.dataset}: {first['n_runs']} runs, "
          f"{first['n_tokens']} tokens, {first['n_neurons']} neurons; n_init={args.n_init}, "
          f"threads={args.threads}, device={args.device}")
    names = list(results)
    print(f"{'':24s}" + "".join(f"{n:>12s}" for n in names) + "   matched |r| mean (min)")
    for k in ks:
        row = f"{'k=' + str(k) + ' (s)':24s}" + "".join(
            f"{results[n]['per_k_s'][str(k)]:12.1f}" for n in names)
        if len(names) > 1:
            r = match(maps[names[0]][k], maps[names[1]][k])
            row += f"   {r.mean():.3f} ({r.min():.3f}), {int((r >= 0.9).sum())}/{k} >= .9"
        print(row)
    print(f"{'total (s)':24s}" + "".join(f"{results[n]['wall_s']:12.1f}" for n in names))
    print(f"{'peak RSS (MiB)':24s}" + "".join(f"{results[n]['peak_rss_mib']:12.1f}" for n in names))
    if len(names) > 1:
        a, b = names[:2]
        print(f"speed-up of the sweep {a}/{b}: {results[a]['wall_s'] / results[b]['wall_s']:.1f}x")


def compare(args):
    """Run each backend on one k in its own process; print the table; return a summary line."""
    env = _env(args)
    results, maps = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(b, b, args.seed) for b in args.backends.split(",")]
        if args.control:
            jobs.append((f"nilearn s{args.seed + 1}", "nilearn", args.seed + 1))
        for name, backend, seed in jobs:
            out = Path(args.keep or tmp) / f"{backend}-k{args.k}-s{seed}-n{args.n_init}.npy"
            out.parent.mkdir(parents=True, exist_ok=True)
            if args.reuse and out.is_file() and out.with_suffix(".json").is_file():
                results[name] = json.loads(out.with_suffix(".json").read_text())
                maps[name] = np.load(out)
                continue
            results[name] = _run_job(args, backend, seed, str(args.k), out, env)
            out.with_suffix(".json").write_text(json.dumps(results[name]))
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
    line, agree = f"k={args.k}:", {}
    for b in names[1:]:
        r = match(maps[a], maps[b])
        print(f"speed-up {a}/{b}: {results[a]['wall_s'] / results[b]['wall_s']:.1f}x")
        print(f"matched |r| ({a} vs {b}, Hungarian): mean {r.mean():.3f}, median {np.median(r):.3f}, "
              f"min {r.min():.3f}; {int((r >= 0.9).sum())}/{len(r)} components >= 0.9")
        line += (f" {a} {results[a]['wall_s']:.1f} s, {b} {results[b]['wall_s']:.1f} s "
                 f"({results[a]['wall_s'] / results[b]['wall_s']:.1f}x), matched |r| mean {r.mean():.3f}")
        agree[b] = r.mean()
    control = next((n for n in names if n.startswith("nilearn s")), None)
    if control and "fast" in agree:
        met = agree["fast"] >= agree[control]
        print(f"agreement: fast vs nilearn {agree['fast']:.3f} {'>=' if met else '<'} nilearn vs "
              f"itself with another seed {agree[control]:.3f} ({'met' if met else 'NOT met'})")
        line += f"; nilearn vs itself {agree[control]:.3f}"
    return line


if __name__ == "__main__":
    main()
