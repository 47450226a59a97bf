"""Reproduce the intervention results end to end and write ``docs/results.md``.

Runs the command line as a user would, each step in its own process::

    for each unit site (mlp, mlp-out):
        llm2nifti convert    WORK/scan --site SITE  (the Lee news corpus, the default model)
        llm2nifti decompose  WORK/scan --site SITE     (CanICA; --n-runs 10: stable networks)
        llm2nifti networks   <z-maps>                  (|z| > 3.6)
        llm2nifti evaluate   <networks.tsv> --ablation zero,mean [--k ... on the first site]
    llm2nifti prune      <networks.tsv of the first site> --remove

then writes the results page: per site and ablation kind, the answers, table, verdicts and
figures, and a grid of which choice changes which verdict. Sizes are reduced so that the
whole run fits in under an hour on two CPU cores; every size is an option and is written
into the page.

Usage: ``python -m llm2nifti.intervention.reproduce [--work DIR] [--docs docs] [--fresh]``; the
working folder defaults to ``<cache>/reproduce`` (see :func:`llm2nifti.models.cache_dir`),
finished scan and decomposition steps there are reused unless ``--fresh``. ``--n-runs 1``
decomposes once (``--n-init`` starts) instead of clustering 10 decompositions; ``--beside DIR``
puts another run's verdicts beside this one's (bold where they differ), and with ``--into
PAGE`` only that section is written into an existing results page.
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

import numpy as np
import pandas as pd


from bids_llm.tsv import read_frame
__all__ = ["main", "results_markdown", "answers", "answer_grid", "choice_grid"]

DEFAULTS = {
    "tokens": 4096, "components": 20, "n_init": 10, "backend": "nilearn", "threshold": 3.6,
    "n_docs": 20, "max_doc_tokens": 64, "n_items": 80, "seeds": 5, "amplify": "0.05,0.25",
    "curve": "", "curve_thresholds": "2.5", "curve_seeds": 3,
    "sites": "mlp,mlp-out", "ablations": "zero,mean", "k": "10,40", "k_n_init": 5,
    "n_runs": 10,
}
# --full: the paper's sweep (several hours on 2 CPU cores); any option given explicitly wins
FULL = {"tokens": 16384, "n_docs": 50, "n_items": 200, "seeds": 10, "k": "10,32,64,128",
        "k_n_init": 10, "curve_thresholds": "3.0,2.5,2.0", "curve_seeds": 5}


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
    from ..plots import METRICS

    metrics = [m for m in METRICS if m in set(summary["metric"])]
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


QUESTIONS = (
    ("Does inhibiting the network units hurt more than inhibiting random units (same count per "
     "layer)?", "inhibit", "random"),
    ("... more than random units that are never massive-activation units?", "inhibit",
     "random-minus-massive"),
    ("... more than spread-matched random units?", "inhibit", "spread-matched"),
    ("... more than the same number of highest-spread units (no decomposition)?", "inhibit",
     "top-spread"),
    ("Does keeping only the network units preserve more than keeping random ones?", "retain",
     "random"),
    ("... more than keeping the highest-spread ones?", "retain", "top-spread"),
    ("Does keeping only the network units preserve the model's performance?", "retain",
     "baseline"),
)
_WORD = {1: "yes", -1: "no (the other way round)", 0: "not clearly"}


def answer_grid(summary, ablation="zero"):
    """``[(question, metric, answer, key value, control value)]`` for one ablation kind."""
    from ..plots import METRICS
    from .experiment import _BETTER, _beats, _get, _label

    out = []
    for q, mode, ctl in QUESTIONS:
        label = _label(mode, ablation)
        for metric in [m for m in METRICS if m in set(summary["metric"])]:
            key = _get(summary, f"{label} key", metric)
            other = _get(summary, "baseline" if ctl == "baseline" else f"{label} {ctl}", metric)
            if key is None or other is None:
                continue
            sign = _BETTER[metric] * (-1 if mode == "inhibit" else 1)
            b = _beats(key, other, sign)
            word = ("yes" if b >= 0 else "no") if ctl == "baseline" else _WORD[b]
            out.append((q, metric, word, key["mean"], other["mean"]))
    return out


def answers(summary, ablation="zero"):
    """Short answers to the questions the results page asks, one line each."""
    lines, current = [], None
    for q, metric, word, k, c in answer_grid(summary, ablation):
        part = f"{metric}: {word} ({_fmt(k)} vs {'baseline ' if 'performance' in q else ''}{_fmt(c)})"
        if q != current:
            lines.append(f"**{q}** {part}")
            current = q
        else:
            lines[-1] += f"; {part}"
    return [line + "." for line in lines]


def choice_grid(summaries):
    """Markdown: each question and metric (rows) under each configuration (columns).

    ``summaries`` maps a configuration label (e.g. ``mlp, zero``) to a summary; the last
    column says whether the answer changes across configurations.
    """
    grids = {label: {(q, m): w for q, m, w, _, _ in answer_grid(summary, ablation)}
             for label, (summary, ablation) in summaries.items()}
    labels = list(grids)
    rows = list(dict.fromkeys(k for g in grids.values() for k in g))
    lines = ["| question | metric | " + " | ".join(labels) + " | same everywhere? |",
             "|---|---|" + "---|" * (len(labels) + 1)]
    for q, m in rows:
        words = [grids[lab].get((q, m), "") for lab in labels]
        same = "yes" if len(set(w for w in words if w)) == 1 else "**no**"
        lines.append(f"| {q} | {m} | " + " | ".join(words) + f" | {same} |")
    return "\n".join(lines)


def _fnk_table(summary):
    """Markdown: FN@k per k and mode, key against random sets."""
    from .experiment import _get

    fnk = summary[summary["group"] == "fnk"]
    if fnk.empty:
        return ""
    lines = ["| condition | k | units | share | " + " | ".join(dict.fromkeys(fnk["metric"])) + " |",
             "|---|---|---|---|" + "---|" * fnk["metric"].nunique()]
    for cond in dict.fromkeys(fnk["condition"]):
        rows = fnk[fnk["condition"] == cond]
        first = rows.iloc[0]
        cells = [_cell(_get(summary, cond, m)) for m in dict.fromkeys(fnk["metric"])]
        lines.append(f"| {cond} | {int(first['n_networks'])} | {first['n_neurons']:.0f} | "
                     f"{100 * first['share']:.2f}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _settings_lines(s, sites, total):
    ev = sites[0]["evaluation"]
    units = ", ".join(f"`{r['site']}` ({r['evaluation']['site']['n_layers']} layers x "
                      f"{r['evaluation']['site']['width']:,})" for r in sites)
    return [
        "## Settings (reduced to fit in under an hour on 2 CPU cores)",
        "",
        f"- Model: {ev['model']}; unit sites {units}: `mlp` is the MLP's hidden units (input of "
        "`down_proj`), `mlp-out` the MLP's output (output of `down_proj`, the authors' units).",
        f"- Scan: the first {s['tokens']:,} tokens of the Lee news corpus ({ev['scan_tokens']:,} "
        "tokens recorded per site).",
        f"- Networks: CanICA ({s['backend']} backend), {s['components']} components, "
        + _decomposition_words(s.get("n_runs", 1), s["n_init"])
        + f"; units with |z| > {s['threshold']} in a z-scored map; key set = their union.",
        f"- Perplexity: {ev['n_heldout_docs']} held-out Lee articles (`lee-test`, none in the scan: "
        f"checked), each cut to {ev['max_doc_tokens']} tokens; 95% CI: bootstrap over documents.",
        f"- Accuracy: {ev['n_items']} Pang-Lee sentiment sentences (balanced), answer ` positive` or "
        "` negative` by log-likelihood after `Review: <sentence>\\nSentiment:`; 95% CI: bootstrap "
        "over sentences.",
        f"- Ablation: {' and '.join(ev['ablations'])} (zero: the unit is set to 0; mean: to its mean "
        "over the scan's tokens); controls use the same kind as the key set.",
        f"- Controls: same count per layer; {len(ev['seeds'])} seeds for random, random-minus-massive "
        f"and spread-matched sets ({ev['spread_bins']} spread bins per layer), the top-spread "
        f"ranking, and the key set without the massive-activation units (peak |activation| > "
        f"{ev['massive_factor']:g} x the median peak). Random sets may include key units; the "
        "overlap column shows how many.",
        f"- On `{sites[0]['site']}` only (time): amplify by adding "
        f"{', '.join(f'{x:g}' for x in ev['amplify']) or 'nothing'}; the threshold curve (the key "
        f"sets of the same maps at |z| > {s['curve_thresholds'].replace(',', ', ')}); FN@k for k = "
        f"{', '.join(str(f['k']) for f in ev.get('fnk', [])) or 'none'} (one decomposition per k, "
        f"fast backend, {_decomposition_words(s.get('n_runs', 1), s.get('k_n_init'))}), each point "
        f"against {s['curve_seeds']} random "
        "sets of the same count per layer.",
        f"- Total time: {total / 60:.1f} min.",
        "",
    ]


def _decomposition_words(n_runs, n_init):
    if n_runs == 1:
        return f"one decomposition of {n_init} FastICA starts"
    return (f"stable networks: {n_runs} decompositions of one FastICA start each, clustered "
            "(ICASSO) into the centrotypes")


def _stability_line(r):
    table = r.get("stability")
    if table is None:
        return ("Networks from one decomposition: whether each recurs is not known "
                "(`--n-runs 10` tells).")
    iq = table["stability"].to_numpy()
    return (f"Stability (ICASSO Iq) of the {len(iq)} networks: median {np.median(iq):.2f}, lowest "
            f"{iq.min():.2f}; {int((iq >= 0.8).sum())} at 0.8 or more.")


def beside_grid(sites, other_sites, this_label, other_label):
    """Markdown: each verdict of this run beside the same verdict of another run.

    Rows are question and metric, columns each configuration (site, ablation); a cell reads
    ``this / other`` and is bold where the two differ.
    """
    def grid(rows):
        return {(f"{r['site']}, {a}", q, m): w for r in rows for a in r["evaluation"]["ablations"]
                for q, m, w, _, _ in answer_grid(r["summary"], a)}

    mine, theirs = grid(sites), grid(other_sites)
    configs = list(dict.fromkeys(c for c, _, _ in mine))
    rows = list(dict.fromkeys((q, m) for _, q, m in mine))
    lines = [f"| question | metric | {' | '.join(configs)} |", "|---|---|" + "---|" * len(configs)]
    changed = 0
    for q, m in rows:
        cells = []
        for c in configs:
            a, b = mine.get((c, q, m), ""), theirs.get((c, q, m), "")
            cells.append(f"**{a} / {b}**" if a != b else f"{a} / {b}")
            changed += a != b
        lines.append(f"| {q} | {m} | " + " | ".join(cells) + " |")
    head = (f"Each cell: {this_label} / {other_label}; bold where they differ "
            f"({changed} of {len(rows) * len(configs)} verdicts).")
    return head + "\n\n" + "\n".join(lines)


def _site_section(r):
    ev, summary = r["evaluation"], r["summary"]
    lines = [f"## Site `{r['site']}`", "",
             f"Key set: {ev['n_key_neurons']:,} units ({100 * ev['key_share']:.1f}% of "
             f"{ev['site']['n_layers'] * ev['site']['width']:,}) in {ev['n_networks']} networks. "
             + ev["verdicts"][-1], "", _stability_line(r), ""]
    for ablation in ev["ablations"]:
        lines += [f"### Answers, {ablation}-ablation", "",
                  *[f"- {line}" for line in answers(summary, ablation)], ""]
    lines += ["### Table", "",
              "Cells: value [95% bootstrap CI] for one set; mean (range over seeds) for random sets.",
              "", results_markdown(summary[summary["group"] != "fnk"]), ""]
    fnk = _fnk_table(summary)
    if fnk:
        lines += ["### FN@k (one decomposition per k; union of its k networks)", "", fnk, ""]
    lines += ["### Verdicts", "", *[f"- {v}" for v in r["verdicts"]], "",
              "### Figures", "", *[f"![{r['site']} {Path(f).stem}]({f})" for f in r["figures"]], ""]
    return lines


def _prune_lines(r):
    return [
        "## Pruning (remove the key units of the first site, keep all others)",
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


def _page(settings, steps, sites, prune_report, total):
    configs = {f"{r['site']}, {a}": (r["summary"], a) for r in sites
               for a in r["evaluation"]["ablations"]}
    lines = [
        "# Results: do interventions on functional networks behave as published?",
        "",
        "Written by `make reproduce` (`python -m llm2nifti.intervention.reproduce`); numbers are as "
        "they came out of this run, nothing is edited by hand.",
        "",
        *_settings_lines(settings, sites, total),
        "## What held, and which choice changes it",
        "",
        "\"Yes\" means beyond the range of every random seed and with the network set's bootstrap "
        "interval excluding the control's mean (for one control set: non-overlapping intervals); "
        "\"not clearly\" otherwise. Columns are unit site and ablation kind; the last column says "
        "whether the answer is the same in every configuration.",
        "",
        choice_grid(configs),
        "",
    ]
    for r in sites:
        lines += _site_section(r)
    if prune_report:
        lines += _prune_lines(prune_report)
    lines += ["## Steps", "", "| command | seconds |", "|---|---|"]
    lines += [f"| `{st['command']}` | {st['seconds']} |" for st in steps]
    return "\n".join(lines) + "\n"


def _site_results(a, evaluation, docs, figures=True):
    """Per site: its evaluation settings, summary, verdicts, the networks' stability table
    (None for one decomposition) and figures copied under docs/ (unless ``figures=False``)."""
    from ..analysis import read_stability
    from .experiment import verdicts

    out = []
    figdir = docs / "figures" if figures else None
    for site in _sites(a):
        folder = evaluation / site
        summary = read_frame(folder / "summary.tsv")
        copied = []
        for name in ("interventions.png", "curve.png", "fnk.png") if figures else ():
            if (folder / name).is_file():
                figdir.mkdir(parents=True, exist_ok=True)
                target = f"{site}-{name}"
                tmp = figdir / f".tmp-{os.getpid()}-{target}"
                shutil.copyfile(folder / name, tmp)
                os.replace(tmp, figdir / target)
                copied.append(f"figures/{target}")
        zmaps = _zmaps(evaluation.parent / "scan", site)
        out.append({"site": site, "summary": summary, "verdicts": verdicts(summary),
                    "figures": copied, "stability": read_stability(zmaps[0]) if zmaps else None,
                    "evaluation": json.loads((folder / "evaluation.json").read_text())})
    return out


def _label(settings):
    n = settings.get("n_runs", 1)
    return "one decomposition" if n == 1 else f"stable ({n} decompositions)"


def _finished_run(work):
    """A working folder's ``run.json``, or, for a run cut short, what its finished sites say
    (settings: the sites with an evaluation; seconds unknown)."""
    if (work / "run.json").is_file():
        return json.loads((work / "run.json").read_text())
    done = sorted(p.parent.name for p in (work / "evaluation").glob("*/summary.tsv"))
    if not done:
        raise SystemExit(f"{work} holds no finished evaluation: run reproduce there first")
    from ..analysis import read_stability

    zmaps = _zmaps(work / "scan", done[0])
    table = read_stability(zmaps[0]) if zmaps else None
    n_runs = 1 if table is None else int(table["runs"].max())
    return {"settings": {"sites": ",".join(done), "n_runs": n_runs}, "seconds": None,
            "partial": True}


def _insert_beside(page, work, beside):
    """Put the verdicts of ``work`` beside those of ``beside`` into an existing ``page``."""
    from bids_llm.io import write_text

    run = dict(_finished_run(work), name=work.name)
    sites = _site_results(argparse.Namespace(**run["settings"]), work / "evaluation", None,
                          figures=False)
    section = "\n".join(_beside_lines(run, sites, beside))
    text = page.read_text()
    head = "## Verdicts beside another run's"
    if head in text:  # replace the earlier section, up to the next heading of its level
        start = text.index(head)
        end = text.find("\n## ", start + len(head))
        text = text[:start] + text[end + 1:] if end >= 0 else text[:start]
    at = text.index("\n## Site ")
    write_text(page, text[:at] + "\n" + section + text[at:])
    print(f"Wrote {page}")


def _beside_lines(run, sites, beside):
    """The section putting this run's verdicts beside another finished run's."""
    other = _finished_run(beside)
    other_sites = _site_results(argparse.Namespace(**other["settings"]), beside / "evaluation",
                                None, figures=False)
    this, that = _label(run["settings"]), _label(other["settings"])
    differ = [] if run.get("partial") or other.get("partial") else [
        f"`--{k.replace('_', '-')} {other['settings'][k]!r}`" for k in other["settings"]
        if k != "n_runs" and run["settings"].get(k) != other["settings"][k]]
    when = ("cut short after its finished sites" if other.get("partial") else
            f"{other['seconds'] / 60:.1f} min")
    shared = {r["site"] for r in other_sites}
    source = (f"The verdicts of another run with {this} (`{run['name']}`, the same settings, "
              "cut short after its finished sites) beside those of a run" if run.get("name")
              else "The same steps")
    return ["## Verdicts beside another run's", "",
            f"{source} with {that} (`--beside {beside.name}`, {when}"
            + (f"; it differs in {', '.join(differ)}" if differ else "") + "): does any verdict "
            "change when the networks are the ones that recur?", "",
            beside_grid([r for r in sites if r["site"] in shared], other_sites, this, that), "",
            *[f"- `{r['site']}`, {label}: key set {r['evaluation']['n_key_neurons']:,} units in "
              f"{r['evaluation']['n_networks']} networks. {_stability_line(r)}"
              for label, rows in ((this, [r for r in sites if r["site"] in shared]),
                                  (that, other_sites)) for r in rows], ""]


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
    p.add_argument("--beside", default=None,
                   help="Another finished run's working folder (e.g. with --n-runs 1): put its "
                        "verdicts beside this run's.")
    p.add_argument("--into", default=None,
                   help="With --beside: only put the two runs' verdicts side by side into this "
                        "existing results page (replacing an earlier such section).")
    p.add_argument("--full", action="store_true",
                   help="The paper's sweep: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                          for k, v in FULL.items()) + ".")
    for k, v in DEFAULTS.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    a = p.parse_args(argv)
    if a.full:
        p.set_defaults(**FULL)
        a = p.parse_args(argv)
    from bids_llm.io import write_text

    from ..models import cache_dir

    work = Path(a.work) if a.work else cache_dir() / "reproduce"
    if a.beside:
        _finished_run(Path(a.beside))  # refuse a folder without a finished evaluation first
    if a.into:
        return _insert_beside(Path(a.into), work, Path(a.beside or "."))
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
    sites = _site_results(argparse.Namespace(**run["settings"]), evaluation, docs)
    page = _page(run["settings"], steps, sites, prune_report, total)
    if a.beside:
        extra = "\n".join(_beside_lines(run, sites, Path(a.beside)))
        page = page.replace("\n## Site ", "\n" + extra + "\n## Site ", 1)
    write_text(docs / "results.md", page)
    print(f"Wrote {docs / 'results.md'} ({total / 60:.1f} min of computation)")


def _sites(a):
    return [x.strip() for x in a.sites.split(",") if x.strip()]


def _pipeline(a, work, evaluation, threads, steps):
    """Run every step; finished scan and decomposition steps are reused."""
    from bids_llm.io import write_text

    scan = work / "scan"
    first = None
    for i, site in enumerate(_sites(a)):
        networks = _site_steps(a, work, scan, site, evaluation / site, threads, steps, main=i == 0)
        first = first or networks
    _run(["prune", first, "--remove", "--output", work / "pruned", "--overwrite",
          "--n-docs", 20, *threads], steps)
    write_text(work / "pruned.json", (work / "pruned" / "llm2nifti_prune.json").read_text())
    if not a.keep_pruned:
        shutil.rmtree(work / "pruned", ignore_errors=True)


def _zmaps(scan, site):
    from bids_llm.dataset import acq_for

    from bids_llm.outputs import DERIVATIVES

    acq = acq_for(site)
    found = DERIVATIVES["components"].find(scan, "_desc-canica_stat-z_components.nii",
                                           method="canica")
    return [z for z in found if (f"_acq-{acq}_" in z.name if acq else "_acq-" not in z.name)]


def _site_steps(a, work, scan, site, evaluation, threads, steps, main):
    """convert, decompose, networks and evaluate at one site; returns its networks.tsv.

    The first site also gets the amplify conditions, the threshold curve and FN@k.
    """
    _run(["convert", scan, "--site", site, "--max-tokens", a.tokens, "--resume", "-q", *threads],
         steps)
    if not _zmaps(scan, site):
        # with --n-runs N > 1 each decomposition takes one start (decompose's default)
        starts = ["--n-init", a.n_init] if a.n_runs == 1 else []
        _run(["decompose", scan, "--site", site, "--backend", a.backend, "--n-components",
              a.components, "--n-runs", a.n_runs, *starts, *threads], steps)
    zmap = _zmaps(scan, site)[0]
    _run(["networks", zmap, "--dataset", scan, "--site", site, "--threshold", a.threshold], steps)
    networks = scan / "derivatives" / "llm2nifti-networks" / zmap.name.replace("_components.nii",
                                                                               "_networks.tsv")
    extra = ["--amplify", a.amplify if main else "none"]
    if main:
        extra += ["--curve", a.curve] if a.curve else []
        for t in [t.strip() for t in a.curve_thresholds.split(",") if t.strip()]:
            folder = work / f"networks-z{t}"
            _run(["networks", zmap, "--dataset", scan, "--site", site, "--threshold", t,
                  "--output", folder], steps)
            extra += ["--curve-networks", folder / networks.name]
        extra += (["--k", a.k, "--k-n-runs", a.n_runs]
                  + (["--k-n-init", a.k_n_init] if a.n_runs == 1 else [])) if a.k else []
    _run(["evaluate", networks, "--dataset", scan, "--output", evaluation, "--n-docs", a.n_docs,
          "--max-doc-tokens", a.max_doc_tokens, "--n-items", a.n_items, "--seeds", a.seeds,
          "--ablation", a.ablations, *extra, "--curve-seeds", a.curve_seeds, "-q", *threads], steps)
    return networks


if __name__ == "__main__":
    main()
