"""Speed and memory of ``fingerprint`` beyond the decompositions, at two text lengths.

Two 135M-parameter models (the embedded SmolLM2-135M-Instruct and its unit-permuted copy)
read N tokens of the Lee corpus; each is decomposed once (fast CanICA, k = 20), then
``fingerprint`` (1,000-permutation null, RSA and CKA) is timed in a fresh process whose peak
resident memory is read from the kernel. Run side by side at two lengths, the ratio of peak
memory says whether memory stays flat in the number of documents.

    python benchmarks/bench_fingerprint.py WORKDIR [--tokens 4096 16384] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "llm2nifti")
MEASURE = """
import json, resource, sys, time
from llm2nifti.analysis import fingerprint
t0 = time.perf_counter()
res = fingerprint(sys.argv[1], "smollm2", ["permuted"], n_permutations=1000, threads=int(sys.argv[2]))
row = res.summary.iloc[0]
print(json.dumps({"seconds": time.perf_counter() - t0, "score": float(row["score"]),
                  "p": float(row["p"]), "words": int(row["n_words"]),
                  "documents": int(row["n_documents"]),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def cli(*args):
    subprocess.run([CLI, *map(str, args)], check=True, capture_output=True)


def prepare(work, tokens, threads):
    ds = work / f"ds{tokens}"
    for label, model in (("smollm2", None), ("permuted", work / "permuted")):
        extra = [] if model is None else ["-m", model]
        cli("convert", ds, "--participant", label, *extra, "--max-tokens", tokens, "--threads", threads,
            "-q", "--resume")
        comps = ds / f"derivatives/llm2nifti-canica/sub-{label}/func/sub-{label}_task-lee_desc-canica_bold.nii"
        if not comps.is_file():
            cli("decompose", ds, "--participant", label, "--backend", "fast", "--threads", threads, "-q")
    return ds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if not (a.work / "permuted").is_dir():
        cli("derive", a.work / "permuted", "--kind", "permuted", "-q")
    rows = []
    for tokens in a.tokens:
        ds = prepare(a.work, tokens, a.threads)
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", MEASURE, str(ds), str(a.threads)], env=env,
                             check=True, capture_output=True, text=True).stdout
        rows.append(dict(json.loads(out.strip().splitlines()[-1]), tokens=tokens,
                         process_s=time.perf_counter() - t0))
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; threads {a.threads}")
    print("tokens  documents  words  fingerprint_s  process_s  peak_MB  score  p")
    for r in rows:
        print(f"{r['tokens']:6d}  {r['documents']:9d}  {r['words']:5d}  {r['seconds']:13.1f}  "
              f"{r['process_s']:9.1f}  {r['peak_mb']:7.0f}  {r['score']:.3f}  {r['p']:.4f}")
    first, last = rows[0], rows[-1]
    print(f"peak memory x{last['peak_mb'] / first['peak_mb']:.2f} for x{last['documents'] / first['documents']:.1f} "
          f"documents; goal: fingerprint of two 135M models on 4,096 tokens < 60 s")


if __name__ == "__main__":
    main()
