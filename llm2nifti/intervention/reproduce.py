"""Reproduce the intervention results end to end and write ``docs/results.md``.

Runs the command line as a user would, each step in its own process::

    llm2nifti convert    WORK/scan     (the Lee news corpus, the default model)
    llm2nifti decompose  WORK/scan     (CanICA)
    llm2nifti networks   <z-maps>      (|z| > 3.6)
    llm2nifti evaluate   <networks.tsv> (held-out Lee articles, Pang-Lee sentiment)
    llm2nifti prune      <networks.tsv> --remove

then writes the results page with its table, verdicts and figures. Sizes are
reduced so that the whole run fits in well under an hour on two CPU cores;
every size is an option and is written into the page.

Usage: ``python -m llm2nifti.intervention.reproduce [--work DIR] [--docs docs] [--fresh]``; the
working folder defaults to ``<cache>/reproduce`` (see :func:`llm2nifti.models.cache_dir`),
finished scan and decomposition steps there are reused unless ``--fresh``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

__all__ = ["main", "results_markdown"]

DEFAULTS = {
    "tokens": 4096, "components": 20, "n_init": 10, "backend": "nilearn", "threshold": 3.6,
    "n_docs": 50, "max_doc_tokens": 64, "n_items": 200, "seeds": 5, "amplify": "0.05,0.25",
    "curve": "", "curve_thresholds": "3.0,2.5,2.0", "curve_seeds": 3,
}


def _run(args, log):
    cmd = [sys.executable, "-c", "from llm2nifti.cli.main import main; main(prog_name='llm2nifti')",
           *map(str, args)]
    t0 = time.perf_counter()
    print("$ llm2nifti " + " ".join(map(str, args)), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    out = (proc.stdout or "") + (proc.stderr or "")
    log.append({"command": "llm2nifti " + " ".join(map(str, args)), "seconds": round(dt, 1),
                "output": proc.stdout.strip()})
    print(proc.stdout.strip(), flush=True)
    if proc.returncode != 0:
        sys.stderr.write(out)
        raise SystemExit(f"step failed ({proc.returncode}): llm2nifti {args[0]}")
    return proc.stdout


def _fmt(v):
    if pd.isna(v):
        return ""
    v = float(v)
    if abs(v) >= 1e5:
        return f"{v:.2e}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:,.1f}"


def _cell(row):
    if row is None:
        return ""
    if row["n_sets"] > 1:
        return f"{_fmt(row['mean'])} (range {_fmt(row['min'])}-{_fmt(row['max'])})"
    return f"{_fmt(row['mean'])} [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"


def results_markdown(summary):
    """A markdown table: one row per condition, perplexity and accuracy side by side."""
    metrics = [m for m in ("perplexity", "accuracy") if m in set(summary["metric"])]
    head = ["condition", "sets", "neurons", "share", "overlap with key"] + metrics
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cond in dict.fromkeys(summary["condition"]):
        rows = summary[summary["condition"] == cond]
        first = rows.iloc[0]
        cells = [cond.replace("|", "\\|"), str(int(first["n_sets"])), f"{first['n_neurons']:.0f}",
                 f"{100 * first['share']:.2f}%",
                 "" if pd.isna(first["overlap_key"]) else f"{100 * first['overlap_key']:.1f}%"]
        for m in metrics:
            r = rows[rows["metric"] == m]
            cells.append(_cell(None if r.empty else r.iloc[0]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def answers(summary):
    """Short answers to the questions the results page asks, one line each."""
    from .experiment import _BETTER, _beats, _get

    word = {1: "yes", -1: "no (the other way round)", 0: "not clearly"}
    out = []
    for q, mode, ctl in (("Does inhibiting the network neurons hurt more than inhibiting random "
                          "neurons (same count per layer)?", "inhibit", "random"),
                         ("... more than inhibiting spread-matched random neurons?", "inhibit",
                          "spread-matched"),
                         ("... more than inhibiting the same number of highest-spread neurons "
                          "(no decomposition)?", "inhibit", "top-spread"),
                         ("Does keeping only the network neurons preserve more than keeping random "
                          "ones?", "retain", "random"),
                         ("... more than keeping the highest-spread ones?", "retain", "top-spread")):
        parts = []
        for metric, sign in _BETTER.items():
            key, other = _get(summary, f"{mode} key", metric), _get(summary, f"{mode} {ctl}", metric)
            if key is None or other is None:
                continue
            b = _beats(key, other, sign * (-1 if mode == "inhibit" else 1))
            parts.append(f"{metric}: {word[b]} ({_fmt(key['mean'])} vs {_fmt(other['mean'])})")
        if parts:
            out.append(f"**{q}** " + "; ".join(parts) + ".")
    parts = []
    for metric, sign in _BETTER.items():
        key, base = _get(summary, "retain key", metric), _get(summary, "baseline", metric)
        if key is None or base is None:
            continue
        kept = _beats(key, base, sign) >= 0
        parts.append(f"{metric}: {'yes' if kept else 'no'} ({_fmt(key['mean'])} vs baseline "
                     f"{_fmt(base['mean'])})")
    if parts:
        out.append("**Does keeping only the network neurons preserve the model's performance?** "
                   + "; ".join(parts) + ".")
    return out


def _page(settings, steps, summary, verdict_lines, prune_report, figures, total):
    s = settings
    ev = s["evaluation"]
    lines = [
        "# Results: do interventions on functional networks behave as published?",
        "",
        "Written by `make reproduce` (`python -m llm2nifti.intervention.reproduce`); numbers are as they came "
        "out of this run, nothing is edited by hand.",
        "",
        "## Settings (reduced to fit in under an hour on 2 CPU cores)",
        "",
        f"- Model: {ev['model']}, MLP neurons ({ev['site']['n_layers']} layers x {ev['site']['width']} "
        f"= {ev['site']['n_layers'] * ev['site']['width']:,}).",
        f"- Scan: the first {s['tokens']:,} tokens of the Lee news corpus (300 articles; "
        f"{ev['scan_tokens']:,} tokens recorded).",
        f"- Networks: CanICA ({s['backend']} backend), {s['components']} components, {s['n_init']} "
        f"FastICA starts; neurons with |z| > {s['threshold']} in a z-scored map. Key set = union: "
        f"{ev['n_key_neurons']:,} neurons ({100 * ev['key_share']:.1f}% of all).",
        f"- Perplexity: {ev['n_heldout_docs']} held-out Lee articles (`lee-test`, none in the scan: "
        f"checked), each cut to {ev['max_doc_tokens']} tokens; 95% CI: bootstrap over documents.",
        f"- Accuracy: {ev['n_items']} Pang-Lee sentiment sentences (balanced), answer ` positive` or "
        "` negative` by log-likelihood after `Review: <sentence>\\nSentiment:`; 95% CI: bootstrap over "
        "sentences.",
        f"- Controls: same count per layer; {len(ev['seeds'])} seeds for random and spread-matched "
        f"sets ({ev['spread_bins']} spread bins per layer), the top-spread ranking, and the key set "
        f"without {len(ev['massive_neurons'])} massive-activation neurons (peak |activation| > "
        f"{ev['massive_factor']:g} x the median peak). Random sets may include key neurons; the "
        "overlap column shows how many.",
        f"- Amplify: add {', '.join(f'{a:g}' for a in ev['amplify'])} to every key neuron (and to "
        f"random sets). Curve: keep only the key set, "
        + (f"the first {', '.join(map(str, ev['curve']))} networks, " if ev["curve"] else "")
        + (f"and the key sets of the same maps at |z| > {s['curve_thresholds'].replace(',', ', ')}"
           if s.get("curve_thresholds") else "")
        + f" (each vs random sets of the same count per layer, {s['curve_seeds']} seeds).",
        f"- Total time: {total / 60:.1f} min.",
        "",
        "## Answers",
        "",
        "\"Yes\" means beyond the range of every random seed and with the network set's bootstrap "
        "interval excluding the control's mean (for one control set: non-overlapping intervals).",
        "",
        *[f"- {line}" for line in answers(summary)],
        "",
        "## Table",
        "",
        "Cells: value [95% bootstrap CI] for one set; mean (range over seeds) for random sets.",
        "",
        results_markdown(summary),
        "",
        "## Verdicts",
        "",
        *[f"- {v}" for v in verdict_lines],
        "",
        "## Figures",
        "",
        *[f"![{Path(f).stem}]({f})" for f in figures],
        "",
    ]
    if prune_report:
        r = prune_report
        lines += [
            "## Pruning (remove the key neurons, keep all others)",
            "",
            f"- MLP width {r['width_before']} -> {r['width_after']} (layers keep different numbers; "
            f"{r['inert_padding_neurons']} inert zero neurons pad them to one width).",
            f"- Parameters {r['parameters_before']:,} -> {r['parameters_after']:,} "
            f"(-{100 * r['parameters_removed_share']:.1f}%); files {r['bytes_before'] / 2**20:.1f} MiB -> "
            f"{r['bytes_after'] / 2**20:.1f} MiB; forward {r['tokens_per_second_before']:.0f} -> "
            f"{r['tokens_per_second_after']:.0f} tokens/s.",
            f"- Perplexity ({r['n_docs']} held-out documents, {r['max_doc_tokens']} tokens): unpruned "
            f"{r['perplexity_unpruned']:.4g}, masked {r['perplexity_masked']:.4g}, pruned "
            f"{r['perplexity_pruned']:.4g}; largest logit difference pruned vs masked "
            f"{r['max_abs_logit_difference_pruned_vs_masked']:.2g}.",
            "",
        ]
    lines += ["## Steps", "", "| command | seconds |", "|---|---|"]
    lines += [f"| `{st['command']}` | {st['seconds']} |" for st in steps]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m llm2nifti.intervention.reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None,
                   help="Working folder for the large files [default: <cache>/reproduce, outside the repository].")
    p.add_argument("--keep-pruned", action="store_true", help="Keep the pruned model (about 0.5 GB).")
    p.add_argument("--docs", default="docs", help="Where results.md and figures/ go.")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--fresh", action="store_true", help="Delete the working folder first.")
    p.add_argument("--render-only", action="store_true",
                   help="Only rewrite results.md from the working folder's finished outputs.")
    for k, v in DEFAULTS.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    a = p.parse_args(argv)
    from bids_llm.io import write_text

    from ..models import cache_dir

    work = Path(a.work) if a.work else cache_dir() / "reproduce"
    docs = Path(a.docs)
    if a.fresh and not a.render_only and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    threads = [] if a.threads is None else ["--threads", a.threads]
    evaluation = work / "evaluation"
    if a.render_only:
        if not (work / "run.json").is_file():
            raise SystemExit(f"{work} holds no finished run: run without --render-only first")
        run = json.loads((work / "run.json").read_text())
    else:
        steps, t0 = [], time.perf_counter()
        _pipeline(a, work, evaluation, threads, steps)
        run = {"settings": {k: v for k, v in vars(a).items() if k in DEFAULTS}, "steps": steps,
               "seconds": round(time.perf_counter() - t0, 1)}
        write_text(work / "run.json", json.dumps(run, indent=1))
    steps, total = run["steps"], run["seconds"]
    prune_report = json.loads((work / "pruned.json").read_text())
    settings = run["settings"] | {"evaluation": json.loads((evaluation / "evaluation.json").read_text())}
    summary = pd.read_csv(evaluation / "summary.tsv", sep="\t")
    figdir = docs / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    figures = []
    for name in ("interventions.png", "curve.png"):
        if (evaluation / name).is_file():
            tmp = figdir / f".tmp-{os.getpid()}-{name}"
            shutil.copyfile(evaluation / name, tmp)
            os.replace(tmp, figdir / name)
            figures.append(f"figures/{name}")
    from .experiment import verdicts

    page = _page(settings, steps, summary, verdicts(summary), prune_report, figures, total)
    write_text(docs / "results.md", page)
    print(f"Wrote {docs / 'results.md'} ({total / 60:.1f} min of computation)")


def _pipeline(a, work, evaluation, threads, steps):
    """Run the five steps; finished scan and decomposition steps are reused."""
    from bids_llm.io import write_text

    scan = work / "scan"
    _run(["convert", scan, "--max-tokens", a.tokens, "--resume", "-q", *threads], steps)
    zmaps = sorted(scan.glob("derivatives/llm2nifti-canica/sub-*/func/*_desc-canicaZ_bold.nii*"))
    if not zmaps:
        _run(["decompose", scan, "--backend", a.backend, "--n-components", a.components,
              "--n-init", a.n_init, *threads], steps)
        zmaps = sorted(scan.glob("derivatives/llm2nifti-canica/sub-*/func/*_desc-canicaZ_bold.nii*"))
    _run(["networks", zmaps[0], "--dataset", scan, "--threshold", a.threshold], steps)
    networks = sorted(scan.glob("derivatives/llm2nifti-networks/*_networks.tsv"))[0]
    curve = ["--curve", a.curve] if a.curve else []
    for t in [t for t in a.curve_thresholds.split(",") if t.strip()]:
        folder = work / f"networks-z{t.strip()}"
        _run(["networks", zmaps[0], "--dataset", scan, "--threshold", t.strip(), "--output", folder],
             steps)
        curve += ["--curve-networks", sorted(folder.glob("*_networks.tsv"))[0]]
    _run(["evaluate", networks, "--dataset", scan, "--output", evaluation, "--n-docs", a.n_docs,
          "--max-doc-tokens", a.max_doc_tokens, "--n-items", a.n_items, "--seeds", a.seeds,
          "--amplify", a.amplify, *curve, "--curve-seeds", a.curve_seeds, "-q", *threads], steps)
    _run(["prune", networks, "--remove", "--output", work / "pruned", "--overwrite",
          "--n-docs", 20, *threads], steps)
    write_text(work / "pruned.json", (work / "pruned" / "llm2nifti_prune.json").read_text())
    if not a.keep_pruned:
        shutil.rmtree(work / "pruned", ignore_errors=True)


if __name__ == "__main__":
    main()
