"""Does the fingerprint of a unit-permuted copy still move with the seed once networks are stable?

A unit-permuted copy of the embedded model computes what the model computes, its MLP units in
another order: its networks are the reference's, reordered, so its fingerprint score should be
near 1 whatever the seed. With one decomposition per model the score moves with the two
decompositions' optima; with stable components (ICASSO over ``--n-runs``) it should not.

    python benchmarks/bench_stable_fingerprint.py WORKDIR [--tokens 4096,8192] [--seeds 0,1,2]
        [--n-runs 10,50] [--site mlp] [--min-stability all,0.9]

Prints one row per (tokens, n-runs, seed) and, per (tokens, n-runs), the spread of the scores.
Each fingerprint decomposes both models afresh (earlier decompositions are removed first).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

CLI = [str(Path(sys.executable).parent / "llm2nifti")]


def run(*args):
    t0 = time.perf_counter()
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stdout + done.stderr)
    return done.stdout, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--tokens", default="4096,8192")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-runs", default="10,50")
    ap.add_argument("--site", default="mlp")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-stability", default="all,0.9",
                    help="Comma-separated values of fingerprint's --min-stability (a number, auto "
                         "or all), scored on the same decompositions.")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    permuted = a.work / "permuted"
    if not (permuted / "config.json").is_file():
        run("derive", permuted, "--kind", "permuted", "-q")
    rows = []
    for tokens in (int(t) for t in a.tokens.split(",")):
        ds = a.work / f"ds-{tokens}"
        for who, model in (("ref", None), ("perm", permuted)):
            run("convert", ds, *(["--model", model] if model else []), "--participant", who,
                "--max-tokens", tokens, "--site", a.site, "--threads", a.threads, "--resume", "-q")
        for n_runs in (int(n) for n in a.n_runs.split(",")):
            for seed in (int(s) for s in a.seeds.split(",")):
                shutil.rmtree(ds / "derivatives" / "llm2nifti-canica", ignore_errors=True)
                for least in a.min_stability.split(","):  # the decompositions are made once
                    shutil.rmtree(ds / "derivatives" / "llm2nifti-fingerprint", ignore_errors=True)
                    _, seconds = run("fingerprint", ds, "-r", "ref", "-c", "perm", "--random-state",
                                     seed, "--n-runs", n_runs, "--n-permutations", 200, "--no-rsa",
                                     "--threads", a.threads, "-q", "--min-stability", least)
                    table = next((ds / "derivatives" / "llm2nifti-fingerprint").rglob("*_fingerprint.tsv"))
                    found = pd.read_csv(table, sep="\t").set_index("participant").loc["perm"]
                    rows.append({"tokens": tokens, "n_runs": n_runs, "min_stability": least,
                                 "seed": seed, "score": round(float(found["score"]), 4),
                                 "matched": int(found["n_matched"]), "seconds": round(seconds, 1)})
                    print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False))
    spread = frame.groupby(["tokens", "n_runs", "min_stability"])["score"].agg(["min", "max", "mean"])
    spread["range"] = spread["max"] - spread["min"]
    print(spread.round(4).to_string())


if __name__ == "__main__":
    main()
