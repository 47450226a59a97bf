"""How often each of encode's nulls flags a voxel where nothing was planted (family-wise error).

Datasets of pure noise (AR(1) BOLD, smooth features: HRF-like word series), fitted by
EncodingModel; per dataset, whether any voxel reaches FWE p <= 0.05. A valid FWE null flags one
in at most about 5% of the datasets. Side by side in one run:

- ``refit``: every run's features circularly shifted (one shift per run, the same in every
  fold), every fold refitted in closed form with each voxel's chosen penalty;
- ``predictions``: the held-out predictions circularly shifted against the data (what banded and
  kernel ridge use), which breaks the dependence between cross-validation folds.

    python benchmarks/bench_encode_null.py --datasets 40 --voxels 3000
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", type=int, default=40)
    p.add_argument("--voxels", type=int, default=3000)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--volumes", type=int, default=150, help="per run")
    p.add_argument("--features", type=int, default=6)
    p.add_argument("--ar", type=float, default=0.3, help="the noise's lag-one autocorrelation")
    p.add_argument("--permutations", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import torch
    from scipy.signal import lfilter

    from llm2nifti.analysis.encoding_model import EncodingModel, zscore

    torch.set_num_threads(a.threads)
    print(f"{a.datasets} noise datasets: {a.voxels:,} voxels, {a.runs} runs x {a.volumes} "
          f"volumes, {a.features} smooth features, AR({a.ar}) noise, {a.permutations} shifts")
    hits = {"refit": 0, "predictions": 0}
    seconds = dict.fromkeys(hits, 0.0)
    groups = np.repeat(np.arange(a.runs), a.volumes)
    for seed in range(a.datasets):
        rng = np.random.default_rng(seed)
        X = np.vstack([zscore(lfilter([1], [1, -0.9], rng.standard_normal((a.volumes, a.features)),
                                      axis=0)) for _ in range(a.runs)])
        Y = np.vstack([zscore(lfilter([np.sqrt(1 - a.ar ** 2)], [1, -a.ar],
                                      rng.standard_normal((a.volumes, a.voxels)), axis=0))
                       for _ in range(a.runs)])
        for null in hits:
            t0 = time.perf_counter()
            model = EncodingModel(alphas=np.logspace(-1, 5, 7), n_permutations=a.permutations,
                                  min_shift=20.0, null=null, random_state=seed)
            model.fit(X, Y, groups, t_r=2.0)
            seconds[null] += time.perf_counter() - t0
            hits[null] += bool((model.p_fwe_ <= 0.05).any())
    for null, n in hits.items():
        print(f"{null:>12}: {n} of {a.datasets} datasets with a voxel past FWE 0.05 "
              f"({n / a.datasets:.0%}; a valid null: about 5%), {seconds[null]:.0f} s")


if __name__ == "__main__":
    main()
