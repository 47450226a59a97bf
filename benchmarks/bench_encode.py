"""encode's fit and null against the bare himalaya fit on the same arrays, side by side.

Arrays shaped like a whole brain at 2 mm (about 235,000 voxels of nilearn's MNI152 mask; fewer
with ``--voxels``), 1,000 volumes in 4 runs, 20 networks plus 2 nuisance features at 4 FIR
delays (or 1, ``--delays 1``, as with an HRF). Timed, each in this one run:

1. himalaya's RidgeCV fitted and predicting on all voxels at once, leave one run out, the same
   inner folds: the bare fit (after a warm-up; bare and encode's alternated twice, the best of
   each kept);
2. :class:`EncodingModel` with no null (r, R^2, each feature's part, voxel chunks): encode's fit,
   and the ratio to 1;
3. the FWE null apart (every run's features shifted, every fold refitted in closed form);
4. the same two fits in float32 on himalaya's torch backend (``--float32`` on the command line);
5. with ``--units N``: the kernels of N units as features (kernel ridge, as ``encode --units``),
   built from word series of ``--words`` words, and the kernel ridge fit.

Reading NIfTI runs is not timed (nilearn's masker).

    python benchmarks/bench_encode.py --voxels 235000 --threads 2
    python benchmarks/bench_encode.py --voxels 20000 --units 46080

Prints seconds and the ratios.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _clock(f):
    t0 = time.perf_counter()
    out = f()
    return time.perf_counter() - t0, out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voxels", type=int, default=235_000)
    p.add_argument("--volumes", type=int, default=1000)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--features", type=int, default=22, help="20 networks and 2 nuisance")
    p.add_argument("--delays", type=int, default=4)
    p.add_argument("--permutations", type=int, default=1000)
    p.add_argument("--units", type=int, default=0, help="also time N units by kernel ridge")
    p.add_argument("--words", type=int, default=2500)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import torch
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV
    from sklearn.model_selection import LeaveOneGroupOut

    from llm2nifti.analysis.encoding_model import ALPHAS, EncodingModel, zscore

    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(a.runs), a.volumes // a.runs + 1)[: a.volumes]
    X = np.vstack([zscore(rng.standard_normal(((groups == g).sum(), a.features * a.delays)))
                   for g in range(a.runs)])
    W = rng.standard_normal((X.shape[1], a.voxels)) * (rng.random(a.voxels) < 0.1)
    Y = X @ W * 0.1 + rng.standard_normal((a.volumes, a.voxels))
    Y = np.vstack([zscore(Y[groups == g]) for g in range(a.runs)])
    print(f"{a.voxels:,} voxels x {a.volumes:,} volumes ({a.runs} runs), "
          f"{a.features} features x {a.delays} delays, {a.threads} threads")

    def bare(dtype, backend):
        set_backend(backend)
        x, y = X.astype(dtype), Y.astype(dtype)
        for train, test in LeaveOneGroupOut().split(x, y, groups):
            inner = list(LeaveOneGroupOut().split(x[train], y[train], groups[train]))
            RidgeCV(alphas=ALPHAS, cv=inner).fit(x[train], y[train]).predict(x[test])

    columns = [np.arange(j, X.shape[1], a.features) for j in range(a.features)]
    fits = {}
    for label, dtype, backend in [("float64, numpy", "float64", "numpy"),
                                  ("float32, torch", "float32", "torch")]:
        model = EncodingModel(n_permutations=0, backend=backend, dtype=dtype)
        bare(dtype, backend)  # warm-up: the backend's first call pays for its set-up
        times = {"bare": [], "ours": []}
        for _ in range(2):  # alternated, the best of two each: the order does not favour one
            times["bare"].append(_clock(lambda: bare(dtype, backend))[0])
            times["ours"].append(_clock(lambda: model.fit(X, Y, groups, columns=columns))[0])
        t_bare, t_ours = min(times["bare"]), min(times["ours"])
        fits[label] = t_ours
        print(f"[{label}] himalaya RidgeCV, fit and predict per fold: {t_bare:.1f} s; "
              f"EncodingModel fit (r, R^2, parts): {t_ours:.1f} s; ratio {t_ours / t_bare:.2f}")
    set_backend("numpy")
    model = EncodingModel(n_permutations=a.permutations, min_shift=20.0)
    t_all, _ = _clock(lambda: model.fit(X, Y, groups, columns=columns, t_r=2.0))
    print(f"[float64, numpy] fit and null of {a.permutations} refitted shifts: {t_all:.1f} s "
          f"(the null: about {t_all - fits['float64, numpy']:.1f} s)")

    if a.units:
        from types import SimpleNamespace

        from llm2nifti.analysis.encoding import _HeardRun, unit_kernels

        layers = 30
        width = a.units // layers
        words = rng.standard_normal((a.words, width * layers)).astype(np.float32)
        feats = SimpleNamespace(values=words, widths=[width] * layers,
                                bounds=np.arange(layers + 1) * width)
        per_run = a.words // a.runs
        heard = []
        for g in range(a.runs):
            n = int((groups == g).sum())
            ops = [rng.standard_normal((n, per_run)) / np.sqrt(per_run) for _ in range(a.delays)]
            heard.append(_HeardRun(np.arange(g * per_run, (g + 1) * per_run), ops, 2.0))
        extra = np.column_stack([np.ones(a.words), rng.standard_normal(a.words)])
        t_k, K = _clock(lambda: unit_kernels(feats, heard, extra))
        kernel = EncodingModel(n_permutations=0, kernel=True)
        t_fit, _ = _clock(lambda: kernel.fit(K, Y, groups))
        print(f"[units] {width * layers:,} units x {a.delays} delays by kernel ridge: kernels "
              f"{t_k:.1f} s, fit {t_fit:.1f} s, total {t_k + t_fit:.1f} s")


if __name__ == "__main__":
    main()
