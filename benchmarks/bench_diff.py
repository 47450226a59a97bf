"""Speed and memory of ``diff`` beyond its group decomposition, and memory against permutations.

    python benchmarks/bench_diff.py DATASET -r base -c amplified [--threads 2]

DATASET holds two participants converted on the same tokens (``benchmarks/diff_variants.py``
makes one from the embedded model). Prints:

* the seconds of each stage of one ``diff`` (1,000 permutations; group decomposition of one
  start, reported apart), and the total without the group decomposition;
* the peak memory the permutation tests allocate (``tracemalloc``, numpy's allocations
  included) with 100, 1,000 and 10,000 sign flips on the real unit differences, side by side,
  and the ratio of 10,000 to 1,000.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc


def stage_times(dataset, reference, candidate, threads):
    from llm2nifti.analysis import Decomposition, diff

    t0 = time.perf_counter()
    res = diff(dataset, reference, candidate, estimator=Decomposition(backend="fast"),
               n_permutations=1000, threads=threads, write=False)
    total = time.perf_counter() - t0
    return res, total


def permutation_memory(D, counts):
    from llm2nifti.analysis.permutation import max_t_fwe

    out = []
    for n in counts:
        tracemalloc.start()
        t0 = time.perf_counter()
        max_t_fwe(D, n_permutations=n, random_state=0)
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out.append((n, peak / 2**20, seconds))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("-r", "--reference", required=True)
    ap.add_argument("-c", "--candidate", required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    from bids_llm.dataset import Dataset
    from llm2nifti.analysis.diffs import _pair_runs, unit_moments

    res, total = stage_times(a.dataset, a.reference, a.candidate, a.threads)
    print(f"diff of {res.layout.n_neurons:,} units, {len(res.documents)} documents, 1,000 sign flips:")
    for stage, s in res.timings.items():
        print(f"  {stage:22s} {s:8.1f} s")
    rest = total - res.timings["group_decomposition"]
    print(f"  total {total:.1f} s; without the group decomposition {rest:.1f} s")

    ds = Dataset(a.dataset)
    pairs, layout, _ = _pair_runs(ds, a.reference, a.candidate, None, res.site)
    ma, mb, _ = unit_moments(pairs, layout)
    _, mean_a, _ = ma.arrays(ma.order)
    _, mean_b, _ = mb.arrays(mb.order)
    D = mean_b - mean_a
    rows = permutation_memory(D, (100, 1000, 10000))
    print(f"permutation test of D {D.shape[0]} x {D.shape[1]:,} (float64, {D.nbytes / 2**20:.1f} MiB):")
    for count, mib, s in rows:
        print(f"  {count:6d} sign flips: peak {mib:8.1f} MiB, {s:6.2f} s")
    from llm2nifti.analysis.permutation import BATCH

    print(f"  peak memory, 10,000 / 1,000 flips: {rows[-1][1] / rows[1][1]:.2f}x (time: "
          f"{rows[-1][2] / rows[1][2]:.1f}x); flips are drawn {BATCH} at a time, so 100 flips "
          "hold less than one batch")


if __name__ == "__main__":
    main()
