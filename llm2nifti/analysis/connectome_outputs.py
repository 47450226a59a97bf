"""What ``connectivity`` writes into ``derivatives/llm2nifti-connectivity``.

Per components image ``<stem>`` and kind ``<meas>`` (``correlation``, ``partialcorrelation``,
``tangent``)::

    <stem>_meas-<meas>_connectome.tsv    group matrix, networks in depth order (row labels first)
    <stem>_meas-<meas>_connectome.png
    <stem>_timeseries.tsv                network time courses: run, token, then one column per network
    <stem>_connectivity.json             settings, runs, network depths and order

and for a comparison ``<stem>_vs_<other>``: ``_matches.tsv`` (IoU pairs), ``_comparison.json``
(r and its null per kind) and ``_meas-<meas>_comparison.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bids_llm.outputs import software
from .selection import _stem

__all__ = ["write_connectivity", "write_comparison", "meas_label"]


def meas_label(kind):
    return kind.replace(" ", "")


def _short(path):
    """The entities that tell two images apart (participant dropped when long)."""
    parts = _stem(path).split("_")
    return " ".join(p for p in parts if not p.startswith("sub-")) or _stem(path)


def _labels(res, idx):
    return [f"{res.names[i]} (L{res.depth[i]:.1f})" for i in idx]


def _folder(dataset, out):
    from bids_llm.dataset import Dataset
    from bids_llm.outputs import DERIVATIVES

    root = dataset.root if isinstance(dataset, Dataset) else Path(dataset)
    return DERIVATIVES["connectivity"].create(root, out)


def write_connectivity(res, components, dataset, out, kinds, signals, estimator):
    """Write the group matrices, figures, time series and a JSON record; fill ``res.paths``."""
    from bids_llm.io import write_json
    from bids_llm.tsv import write_frame

    from ..plots import plot_connectome_matrix

    folder = _folder(dataset, out)
    stem = _stem(components)
    order = res.order
    labels = _labels(res, order)
    for kind in kinds:
        m = res.connectomes[kind][np.ix_(order, order)]
        tsv = folder / f"{stem}_meas-{meas_label(kind)}_connectome.tsv"
        frame = pd.DataFrame(np.round(m, 6), columns=[res.names[i] for i in order])
        frame.insert(0, "network", [res.names[i] for i in order])
        write_frame(tsv, frame, index=False)
        png = plot_connectome_matrix(m, labels, tsv.with_suffix(".png"),
                                     title=f"{kind} between networks, ordered by depth\n{stem}")
        res.paths[kind] = {"tsv": tsv, "png": png}
    rows = [pd.DataFrame(ts, columns=res.names).round(6).assign(run=run, token=np.arange(len(ts)))
            for run, ts in zip(res.runs, res.time_series)]
    ts = pd.concat(rows, ignore_index=True)
    ts = ts[["run", "token", *res.names]]
    res.paths["timeseries"] = folder / f"{stem}_timeseries.tsv"
    write_frame(res.paths["timeseries"], ts, index=False)
    res.paths["json"] = folder / f"{stem}_connectivity.json"
    write_json(res.paths["json"], {
        "Components": str(Path(components).resolve()), "Signals": signals,
        "CovarianceEstimator": estimator,
        "Kinds": list(kinds), "NRuns": len(res.time_series), "Runs": res.runs,
        "RunsLeftOut": res.left_out,
        "Networks": res.names, "Order": [res.names[i] for i in order],
        "Depth": {n: round(float(d), 3) for n, d in zip(res.names, res.depth)},
        "GroupMatrix": "mean over runs (tangent: nilearn's geometric-mean covariance)",
        **software()})
    return res


def write_comparison(res, other, components, compare, dataset, out):
    """Write the matched pairs, the similarity per kind, and side-by-side figures."""
    from bids_llm.io import write_json
    from bids_llm.tsv import write_frame

    from ..plots import plot_connectome_pair

    folder = _folder(dataset, out)
    stem = f"{_stem(components)}_vs_{_stem(compare)}"
    cmp = res.comparison
    pairs = cmp["pairs"]
    res.paths["matches"] = folder / f"{stem}_matches.tsv"
    write_frame(res.paths["matches"], pairs, index=False)
    ia = np.array([res.names.index(n) for n in pairs["network_a"]])
    ib = np.array([other.names.index(n) for n in pairs["network_b"]])
    order = np.argsort(res.depth[ia], kind="stable")
    ia, ib = ia[order], ib[order]
    for kind in (k for k in res.connectomes if k in cmp):
        c = cmp[kind]
        plot_connectome_pair(
            res.connectomes[kind][np.ix_(ia, ia)], other.connectomes[kind][np.ix_(ib, ib)],
            _labels(res, ia), _labels(other, ib),
            folder / f"{stem}_meas-{meas_label(kind)}_comparison.png",
            titles=(_short(components), _short(compare)),
            suptitle=f"{kind}, {len(ia)} networks matched by IoU: r = {c['r']:.2f} "
                     f"(random matchings {c['null_low']:.2f} to {c['null_high']:.2f})")
    res.paths["comparison"] = folder / f"{stem}_comparison.json"
    write_json(res.paths["comparison"], {
        "A": str(Path(components).resolve()), "B": str(Path(compare).resolve()),
        "MinIoU": cmp["min_iou"], "NMatched": cmp["n_matched"],
        "MeanIoU": round(float(pairs["iou"].mean()), 6),
        "Similarity": {k: v for k, v in cmp.items() if isinstance(v, dict)},
        "Null": "r of the same edges under random one-to-one matchings of the matched networks",
        **software()})
    return res
