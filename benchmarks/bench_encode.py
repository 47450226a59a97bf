"""encode's fit and null against the bare himalaya fit on the same arrays, side by side.

The arrays of a whole brain at 2 mm (about 235,000 voxels of nilearn's MNI152 mask), 1,000
volumes in 4 runs, 20 networks plus 2 nuisance features at 4 FIR delays: encode's
leave-one-run-out fit (RidgeCV per voxel chunk, held-out r, R^2, each feature's part) against
himalaya's RidgeCV fitted and predicting on all voxels at once with the same folds, and the
circular-shift null (FFT) apart. Reading the NIfTI runs is not timed (nilearn's masker).

    python benchmarks/bench_encode.py --voxels 235000 --volumes 1000 --threads 2

Prints seconds and the ratio encode / bare.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voxels", type=int, default=235_000)
    p.add_argument("--volumes", type=int, default=1000)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--features", type=int, default=22, help="20 networks and 2 nuisance")
    p.add_argument("--delays", type=int, default=4)
    p.add_argument("--permutations", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import torch
    from himalaya.ridge import RidgeCV
    from sklearn.model_selection import LeaveOneGroupOut

    from llm2nifti.analysis.encoding import ALPHAS, _fold_scores, _null_max

    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((a.volumes, a.features * a.delays))
    W = rng.standard_normal((X.shape[1], a.voxels)) * (rng.random(a.voxels) < 0.1)
    Y = X @ W * 0.1 + rng.standard_normal((a.volumes, a.voxels))
    groups = np.repeat(np.arange(a.runs), a.volumes // a.runs + 1)[: a.volumes]
    print(f"{a.voxels:,} voxels x {a.volumes:,} volumes ({a.runs} runs), "
          f"{a.features} features x {a.delays} delays, {a.threads} threads")

    t0 = time.perf_counter()
    for train, test in LeaveOneGroupOut().split(X, Y, groups):
        inner = list(LeaveOneGroupOut().split(X[train], Y[train], groups[train]))
        model = RidgeCV(alphas=ALPHAS, cv=inner).fit(X[train], Y[train])
        model.predict(X[test])
    bare = time.perf_counter() - t0
    print(f"himalaya RidgeCV, fit and predict per fold: {bare:.1f} s")

    t0 = time.perf_counter()
    r, r2, part, held, chosen, coef = _fold_scores(X, Y, groups, ALPHAS, a.features)
    ours = time.perf_counter() - t0
    print(f"encode's fit (r, R^2, each feature's part): {ours:.1f} s  "
          f"ratio encode / bare {ours / bare:.2f}")

    t0 = time.perf_counter()
    _null_max(held, a.permutations, 13, 0)
    null = time.perf_counter() - t0
    print(f"null, {a.permutations} circular shifts: {null:.1f} s; total {ours + null:.1f} s")


if __name__ == "__main__":
    main()
