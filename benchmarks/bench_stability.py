"""What stable networks cost and what they buy: one decomposition against ICASSO over N.

Usage::

    make demo        # demo/scan: the embedded model reading 4,096 tokens
    python benchmarks/bench_stability.py demo/scan -k 20 --n-runs 10 --threads 2
    python benchmarks/bench_stability.py demo/scan -k 20,64 --n-runs 10 --stable-n-init 1 --nilearn

For each k, side by side in one process on the same runs:

- time: one fast decomposition (its per-run reductions included) against ``--n-runs`` of them
  clustered (the reductions made once and shared), and the ratio;
- seed agreement: the maps of two seeds (``--random-state`` 0 and 1) matched one to one
  (Hungarian on |r|), for single decompositions and for stable ones: mean and minimum
  matched |r|, and how many components reach 0.9;
- with ``--nilearn``: nilearn's CanICA (one decomposition per seed, and ``--n-runs`` of them
  clustered) against the fast backend's stable maps, matched the same way;
- with ``--keysets S``: the key-unit set (the union of the networks at |z| > 3.6, as the paper
  defines it) for seeds 0 .. S-1, single and stable: the mean Jaccard overlap between seeds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def matched(a, b):
    """Matched |r| of two sets of maps (Hungarian assignment on |r|)."""
    from scipy.optimize import linear_sum_assignment

    from llm2nifti.analysis.stability import abs_correlation

    r = abs_correlation(np.concatenate([a, b]))[: len(a), len(a):]
    rows, cols = linear_sum_assignment(-r)
    return r[rows, cols]


def describe(values):
    return f"mean {values.mean():.3f}, min {values.min():.3f}, {int((values >= 0.9).sum())}/{len(values)} >= 0.9"


def fit(runs, layout, k, n_runs, seed, backend, n_init, reductions=None):
    from llm2nifti.analysis.decomposition import Decomposition, StableDecomposition

    t0 = time.perf_counter()
    one = Decomposition(n_components=k, n_init="auto" if n_init is None else n_init,
                        random_state=seed, backend=backend)
    est = StableDecomposition(one, n_repeats=n_runs).fit(runs, layout=layout, reduced=reductions)
    return est, time.perf_counter() - t0


def keyset(est, layout, threshold=3.6):
    """The key units (union of the networks at |z| > threshold) as a set of global indices."""
    from llm2nifti.analysis.selection import maps_to_neurons

    return set(maps_to_neurons(est.components_, layout, threshold=threshold).global_index(layout).tolist())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("-k", default="20")
    ap.add_argument("--n-runs", type=int, default=10)
    ap.add_argument("--n-init", type=int, default=10)
    ap.add_argument("--stable-n-init", type=int, default=None,
                    help="FastICA starts of each clustered decomposition [default: --n-init].")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--participant", default=None)
    ap.add_argument("--nilearn", action="store_true", help="nilearn's CanICA side by side (slow).")
    ap.add_argument("--keysets", type=int, default=0, help="Seeds whose key-unit sets are compared.")
    ap.add_argument("--site", default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from bids_llm.dataset import Dataset
    from llm2nifti.analysis.decomposition import select_runs

    runs, layout = select_runs(Dataset(args.dataset), participant=args.participant, site=args.site)
    print(f"{len(runs)} runs x {layout.n_neurons} units, n_init={args.n_init}, "
          f"{args.threads} threads")
    stable_init = args.stable_n_init or args.n_init
    for k in (int(x) for x in args.k.split(",")):
        one, t_one = fit(runs, layout, k, 1, 0, "fast", args.n_init)
        many, t_many = fit(runs, layout, k, args.n_runs, 0, "fast", stable_init)
        print(f"k={k}: one decomposition (n_init {args.n_init}) {t_one:.1f} s, {args.n_runs} "
              f"clustered (n_init {stable_init} each) {t_many:.1f} s: ratio {t_many / t_one:.2f}")
        print(f"  stability: median {many.stability_['stability'].median():.3f}, "
              f"{int((many.stability_['stability'] >= 0.8).sum())}/{k} >= 0.8")
        other_one, _ = fit(runs, layout, k, 1, 1, "fast", args.n_init)
        other_many, _ = fit(runs, layout, k, args.n_runs, 1, "fast", stable_init)
        print(f"  seed 0 vs seed 1, single:  {describe(matched(one.components_, other_one.components_))}")
        print(f"  seed 0 vs seed 1, stable:  {describe(matched(many.components_, other_many.components_))}")
        if args.keysets:
            for label, n, init in (("single", 1, args.n_init), ("stable", args.n_runs, stable_init)):
                sets = [keyset(fit(runs, layout, k, n, seed, "fast", init)[0], layout)
                        for seed in range(args.keysets)]
                j = [len(a & b) / max(len(a | b), 1) for i, a in enumerate(sets) for b in sets[i + 1:]]
                print(f"  key units over {args.keysets} seeds, {label}: {np.mean([len(x) for x in sets]):.0f} "
                      f"units, Jaccard between seeds mean {np.mean(j):.3f}, min {np.min(j):.3f}")
        if args.nilearn:
            nl_one, t_nl = fit(runs, layout, k, 1, 0, "nilearn", args.n_init)
            nl_many, t_nl_many = fit(runs, layout, k, args.n_runs, 0, "nilearn", stable_init)
            print(f"  nilearn: one {t_nl:.1f} s, {args.n_runs} clustered {t_nl_many:.1f} s")
            print(f"  nilearn vs fast, single:  {describe(matched(nl_one.components_, one.components_))}")
            print(f"  nilearn vs fast, stable:  {describe(matched(nl_many.components_, many.components_))}")


if __name__ == "__main__":
    main()
