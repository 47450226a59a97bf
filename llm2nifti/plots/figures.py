"""Figures of an evaluation (matplotlib, Agg backend), written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_interventions", "plot_curve", "plot_fnk", "plot_diff_layers", "METRICS"]

METRICS = ("perplexity", "accuracy", "exact_match", "f1")

_COLORS = {"key": "#c0392b", "random": "#7f8c8d", "spread-matched": "#2980b9",
           "top-spread": "#8e44ad", "key-minus-massive": "#e67e22",
           "random-minus-massive": "#16a085"}


def _save(fig, path):
    from bids_llm.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _errors(rows):
    """Error bars: the range over seeds for several sets, the bootstrap CI for one."""
    lo, hi = [], []
    for _, r in rows.iterrows():
        if r["n_sets"] > 1:
            lo.append(max(r["mean"] - r["min"], 0))
            hi.append(max(r["max"] - r["mean"], 0))
        else:
            lo.append(max(r["mean"] - r["ci_low"], 0))
            hi.append(max(r["ci_high"] - r["mean"], 0))
    return np.array([lo, hi])


def plot_interventions(summary, path):
    """Bars per mode and metric: the key set and each control, baseline as a line.

    Error bars: the range (min to max) over seeds for random sets, the 95%
    bootstrap interval over items for single sets.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if m in set(summary["metric"])]
    panels = [("main", "inhibit"), ("main", "retain"), ("amplify", "amplify")]
    panels = [(g, m) for g, m in panels if ((summary["group"] == g) & (summary["mode"] == m)).any()]
    fig, axes = plt.subplots(len(metrics), max(len(panels), 1), squeeze=False,
                             figsize=(4.2 * max(len(panels), 1), 3.4 * len(metrics)))
    for i, metric in enumerate(metrics):
        base = summary[(summary["condition"] == "baseline") & (summary["metric"] == metric)]
        for j, (group, mode) in enumerate(panels):
            ax = axes[i, j]
            rows = summary[(summary["group"] == group) & (summary["mode"] == mode)
                           & (summary["metric"] == metric)]
            labels = [c.replace(f"{mode} ", "") for c in rows["condition"]]
            colors = [_COLORS.get(s, "#95a5a6") for s in rows["selection"]]
            ax.bar(range(len(rows)), rows["mean"], yerr=_errors(rows), color=colors, capsize=3)
            ax.set_xticks(range(len(rows)), labels, rotation=35, ha="right", fontsize=8)
            if not base.empty:
                ax.axhline(base["mean"].iloc[0], color="black", ls="--", lw=1, label="baseline")
            if metric == "perplexity":
                ax.set_yscale("log")
            ax.set_title(f"{mode}: {metric}", fontsize=10)
            if j == 0:
                ax.set_ylabel(metric)
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("Interventions on the network (key) neurons and on controls", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_curve(summary, path):
    """Threshold curve: performance against the share of neurons kept, from one decomposition.

    Points are nested networks or the same maps at lower thresholds (not FN@k: see
    :func:`plot_fnk`), each against random sets of the same count per layer.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if m in set(summary["metric"])]
    fig, axes = plt.subplots(1, len(metrics), squeeze=False, figsize=(4.8 * len(metrics), 3.6))
    keep = summary[(summary["group"] == "curve")
                   | ((summary["group"] == "main") & (summary["mode"] == "retain")
                      & summary["selection"].isin(["key", "random"]))]
    for j, metric in enumerate(metrics):
        ax = axes[0, j]
        for selection, marker in (("key", "o"), ("random", "s")):
            rows = keep[(keep["selection"] == selection) & (keep["metric"] == metric)].sort_values("share")
            if rows.empty:
                continue
            ax.errorbar(rows["share"] * 100, rows["mean"], yerr=_errors(rows), marker=marker,
                        color=_COLORS[selection], capsize=3,
                        label="networks (key)" if selection == "key" else "random, same count per layer")
        base = summary[(summary["condition"] == "baseline") & (summary["metric"] == metric)]
        if not base.empty:
            ax.axhline(base["mean"].iloc[0], color="black", ls="--", lw=1, label="baseline")
        if metric == "perplexity":
            ax.set_yscale("log")
        ax.set_xlabel("neurons kept (% of all MLP neurons)")
        ax.set_ylabel(metric)
        ax.set_title(f"retain only: {metric}", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("Threshold curve: one decomposition, lower thresholds or fewer networks", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_fnk(summary, path):
    """FN@k: performance against the share of units kept alone or zeroed, one decomposition per k.

    Each key point is labelled with its k; random sets have the same count per layer
    (error bars: range over seeds; key: 95% bootstrap interval).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fnk = summary[summary["group"] == "fnk"]
    metrics = [m for m in METRICS if m in set(fnk["metric"])]
    modes = [m for m in dict.fromkeys(c.split(" ")[0] for c in fnk["condition"])]
    fig, axes = plt.subplots(len(metrics), len(modes), squeeze=False,
                             figsize=(4.8 * len(modes), 3.6 * len(metrics)))
    for i, metric in enumerate(metrics):
        base = summary[(summary["condition"] == "baseline") & (summary["metric"] == metric)]
        for j, mode in enumerate(modes):
            ax = axes[i, j]
            rows = fnk[(fnk["metric"] == metric) & fnk["condition"].str.startswith(mode + " ")]
            for selection, marker in (("key", "o"), ("random", "s")):
                sel = rows[rows["selection"] == selection].sort_values("share")
                if sel.empty:
                    continue
                ax.errorbar(sel["share"] * 100, sel["mean"], yerr=_errors(sel), marker=marker,
                            color=_COLORS[selection], capsize=3,
                            label="FN@k" if selection == "key" else "random, same count per layer")
                if selection == "key":
                    for _, r in sel.iterrows():
                        ax.annotate(f"k={int(r['n_networks'])}", (r["share"] * 100, r["mean"]),
                                    textcoords="offset points", xytext=(4, 4), fontsize=7)
            if not base.empty:
                ax.axhline(base["mean"].iloc[0], color="black", ls="--", lw=1, label="baseline")
            if metric == "perplexity":
                ax.set_yscale("log")
            kept = mode.startswith("retain")
            ax.set_xlabel("units kept (% of all)" if kept else "units zeroed (% of all)"
                          if mode == "inhibit" else "units set to their mean (% of all)")
            ax.set_ylabel(metric)
            ax.set_title(f"{'keep only' if kept else 'ablate'} FN@k ({mode}): {metric}", fontsize=10)
            ax.legend(fontsize=7)
    fig.suptitle("FN@k: union of all networks of a decomposition with k components, one "
                 "decomposition per k", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_diff_layers(layers, alpha, path, title=""):
    """Per layer, the share of units that changed (past FWE ``alpha``), one line per test.

    ``layers``: the per-layer table of :func:`~llm2nifti.analysis.diffs.diff`.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharex=True)
    for test, rows in layers.groupby("test", sort=False):
        axes[0].plot(rows["layer"], 100 * rows["share_changed"], marker="o", ms=3, label=test)
        axes[1].plot(rows["layer"], rows["mean_abs_effect"], marker="o", ms=3, label=test)
    axes[0].set_ylabel(f"units changed (% past FWE {alpha:g})")
    axes[1].set_ylabel("mean |effect| over the layer's units")
    axes[1].set_title("effect: mean, in activation units; amplitude, log sd ratio", fontsize=8)
    axes[0].set_title("units past FWE per layer", fontsize=8)
    axes[1].set_yscale("symlog", linthresh=1e-3)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0].legend(frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
