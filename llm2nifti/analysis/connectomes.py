"""``connectivity``: functional connectivity between a decomposition's networks, with nilearn.

Each run's network time courses come from nilearn's :class:`~nilearn.maskers.NiftiMapsMasker`
with the components image (``signals="maps"``: each volume regressed on the maps, as for
probabilistic atlases), or from the mean of each thresholded network's units, signed by the
sign of their z (``signals="mean"``). nilearn's
:class:`~nilearn.connectome.ConnectivityMeasure` then gives one matrix per run and kind
(correlation, partial correlation, tangent; covariances by Ledoit-Wolf shrinkage as nilearn
does, or the sample covariance); the group connectome is their mean (for
tangent: nilearn's geometric-mean covariance, ``mean_``).

Networks are ordered by their *layer profile*: the depth (mean layer of the network's units,
weighted by ``|z|``) at which each network lives, so that early-layer networks come first.

Two connectomes (two tasks, two datasets of the same model) are compared after matching
their networks one to one by IoU of their thresholded unit sets: the similarity is the
Pearson r of the matched networks' edges, with a null from random matchings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm
from bids_llm.outputs import DERIVATIVES

from ..defaults import Z_THRESHOLD
from ..errors import UsageError
from .matching import _masks, iou_matrix, match_networks
from .selection import _participant_of, load_maps, maps_to_neurons, network_names, site_of_image

__all__ = ["connectivity", "ConnectivityResult", "network_time_series", "network_weights",
           "layer_depth",
           "compare_connectomes", "KINDS", "ESTIMATORS", "PIPELINE_CONNECTIVITY"]

KINDS = ("correlation", "partial correlation", "tangent")
PIPELINE_CONNECTIVITY = DERIVATIVES["connectivity"].pipeline


@dataclass
class ConnectivityResult:
    """Connectomes of one components image over one dataset's runs.

    Attributes
    ----------
    names : list of str
        Network names (``FNxx``, volume order of the components image).
    order : ndarray of int
        Networks by depth (indices into ``names``).
    depth : ndarray
        Mean layer of each network (weighted by its map's absolute loadings).
    time_series : list of ndarray
        One ``(tokens, networks)`` array per run.
    connectomes : dict
        Kind -> ``(networks, networks)`` group matrix (network order of ``names``).
    per_run : dict
        Kind -> ``(runs, networks, networks)``.
    masks : ndarray of bool
        ``(networks, n_neurons)`` thresholded unit sets (for matching).
    runs : list of str
        The runs the connectomes rest on (file names without ``_bold``), in ``time_series``'
        order.
    left_out : list of dict
        Runs in which a network's time course is constant (a one-token run, a run of one
        repeated token): ``{"run", "tokens", "constant"}``; their correlations are undefined.
    paths : dict
        What was written (kind -> TSV and PNG; ``"json"``).
    """

    names: list
    order: np.ndarray
    depth: np.ndarray
    time_series: list
    connectomes: dict = field(default_factory=dict)
    per_run: dict = field(default_factory=dict)
    masks: np.ndarray | None = None
    layout: object = None
    runs: list = field(default_factory=list)
    left_out: list = field(default_factory=list)
    paths: dict = field(default_factory=dict)
    comparison: dict | None = None


def layer_depth(maps, layout, threshold=Z_THRESHOLD):
    """Mean layer of each network: of its units with ``|z|`` > ``threshold``, weighted by ``|z|``.

    The maps are z-scored over units first; a map with no unit past the threshold is
    weighted by all its ``|z|`` (its whole layer profile's centre).
    """
    from .decomposition import zscore_maps

    z = np.abs(zscore_maps(np.atleast_2d(np.asarray(maps, dtype=np.float64))))
    weights = np.where(z > threshold, z, 0.0)
    empty = weights.sum(axis=1) == 0
    weights[empty] = z[empty]
    profile = layout.pad_layers(weights, fill=0.0).sum(axis=2)
    profile = profile / np.maximum(profile.sum(axis=1, keepdims=True), 1e-30)
    return profile @ np.asarray(layout.layers, dtype=np.float64)


def network_weights(nset, layout, names):
    """``(networks, n_neurons)`` weights whose product with a run is each network's signed mean.

    Each unit of network ``names[i]`` weighs ``sign(z) / size`` (1 / size without a ``z``
    column); a network without units has a zero row.
    """
    weights = np.zeros((len(names), layout.n_neurons))
    for i, name in enumerate(names):
        sel = nset.table[nset.table["network"] == name]
        if len(sel):
            idx = layout.global_index(sel["layer"].to_numpy(), sel["neuron"].to_numpy())
            z = sel["z"].to_numpy() if "z" in sel else np.ones(len(sel))
            weights[i, idx] = np.sign(z) / len(sel)
    return weights


def network_time_series(runs, components, maps, layout, mask, signals="maps", threshold=Z_THRESHOLD,
                        progress=True, nset=None):
    """``(tokens, networks)`` time series of each run.

    ``signals="maps"``: nilearn's NiftiMapsMasker (least squares on the maps);
    ``"mean"``: mean of each network's units (``|z|`` > ``threshold``, or the given ``nset``
    from :func:`~llm2nifti.analysis.selection.maps_to_neurons`), signed by z.
    """
    from bids_llm.dataset import load_run

    if signals not in ("maps", "mean"):
        raise UsageError(f"--signals {signals!r}: choose maps or mean")
    out = []
    if signals == "maps":
        from nilearn.maskers import NiftiMapsMasker

        masker = NiftiMapsMasker(maps_img=str(components), mask_img=str(mask),
                                 resampling_target=None, standardize=None).fit()
    else:
        if nset is None:
            nset = maps_to_neurons(maps, layout, threshold=threshold)
        weights = network_weights(nset, layout, network_names(len(maps)))
    for run in tqdm(runs, desc="time series", unit="run", disable=not progress):
        if signals == "maps":
            out.append(masker.transform(str(run.path)).astype(np.float64))
        else:
            X, _ = load_run(run)
            out.append(X.astype(np.float64) @ weights.T)
    return out


ESTIMATORS = ("ledoit-wolf", "empirical")


def _check_options(kinds, signals, estimator):
    """Refuse unknown kinds, signals and estimators before any run is read."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise UsageError(f"unknown connectivity kind {(unknown or [''])[0]!r}: choose from "
                         f"{', '.join(KINDS)}")
    if signals not in ("maps", "mean"):
        raise UsageError(f"--signals {signals!r}: choose maps or mean")
    if estimator not in ESTIMATORS:
        raise UsageError(f"unknown covariance estimator {estimator!r}: choose "
                         f"{' or '.join(ESTIMATORS)}")


def _measure(time_series, kind, estimator="ledoit-wolf"):
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import EmpiricalCovariance, LedoitWolf

    if kind == "tangent" and len(time_series) < 2:
        raise UsageError("the tangent kind compares runs to their group mean: it needs at least "
                         "2 runs (select more with --runs, or use correlation)")
    cov = (LedoitWolf(store_precision=False) if estimator == "ledoit-wolf"
           else EmpiricalCovariance(store_precision=False))
    measure = ConnectivityMeasure(kind=kind, cov_estimator=cov, standardize="zscore_sample")
    per_run = measure.fit_transform(time_series)
    group = measure.mean_ if kind == "tangent" else per_run.mean(axis=0)
    return group, per_run


def connectivity(components, dataset, *, participant=None, task=None, runs=None, site=None,
                 kinds=("correlation",), signals="maps", estimator="ledoit-wolf",
                 threshold=Z_THRESHOLD, output=None,
                 compare=None, compare_dataset=None, compare_task=None, min_iou=0.1,
                 n_permutations=1000, random_state=0, progress=True):
    """Connectomes between the networks of ``components`` over a dataset's runs.

    Parameters
    ----------
    components : path
        4D components image on the dataset's grid (``llm2nifti decompose``).
    dataset : path
    participant, task, runs, site :
        Which runs (default: every run of the participant at ``site``; ``site`` default: the
        image's, see :func:`~llm2nifti.analysis.selection.site_of_image`).
    kinds : sequence of str
        ``"correlation"``, ``"partial correlation"``, ``"tangent"``.
    signals : {"maps", "mean"}
        How a network's time course is read (see the module's notes).
    estimator : {"ledoit-wolf", "empirical"}
        Covariance estimator: nilearn's default (Ledoit-Wolf shrinkage), or the sample
        covariance (then a correlation is numpy's ``corrcoef``).
    threshold : float
        ``|z|`` threshold of the unit sets (``signals="mean"`` and the matching).
    output : path, optional
        Folder (default ``DATASET/derivatives/llm2nifti-connectivity``).
    compare, compare_dataset, compare_task :
        A second components image (and its dataset and task, default: the first's) to
        compare with, after IoU matching of the networks.
    min_iou : float
        Matched pairs below this IoU are left out of the comparison.
    n_permutations, random_state :
        Null of the comparison: random one-to-one matchings.
    progress : bool

    Returns
    -------
    ConnectivityResult
    """
    from .connectome_outputs import write_comparison, write_connectivity

    _check_options(kinds, signals, estimator)
    res = _connectomes(components, dataset, participant, task, runs, site, kinds, signals,
                       threshold, progress, estimator)
    out = Path(output) if output is not None else None
    write_connectivity(res, components, dataset, out, kinds, signals, estimator)
    if compare is not None:
        other = _connectomes(compare, compare_dataset or dataset, None,
                             compare_task if compare_task is not None else task, None, site,
                             kinds, signals, threshold, progress, estimator)
        res.comparison = compare_connectomes(res, other, kinds, min_iou, n_permutations,
                                             random_state)
        write_comparison(res, other, components, compare, dataset, out)
    return res


def _connectomes(components, dataset, participant, task, runs, site, kinds, signals, threshold,
                 progress, estimator):
    from bids_llm.dataset import Dataset

    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    if site is None and isinstance(components, (str, Path)) and Path(components).is_file():
        site = site_of_image(components, ds, participant)
    if participant is None:
        participant = _participant_of(components, ds, site)
    layout = ds.layout(participant, site)
    selected = ds.runs(participant=participant, task=task, run=runs, site=site)
    if not selected:
        raise UsageError(f"no runs in {ds.root} for task={task}, runs={runs}, site={site}")
    participant = selected[0].participant
    ds.check_runs(selected)
    _check_memory(components, selected, layout, len(kinds))
    maps = load_maps(components, layout)
    nset = maps_to_neurons(maps, layout, threshold=threshold)
    ts = network_time_series(selected, components, maps, layout, ds.mask_path(participant, site),
                             signals, threshold, progress, nset=nset)
    names = network_names(len(maps))
    ts, labels, left_out = _varying_runs(ts, selected, names)
    depth = layer_depth(maps, layout, threshold)
    res = ConnectivityResult(names, np.argsort(depth, kind="stable"), depth, ts,
                             masks=_masks(nset, layout, names), layout=layout, runs=labels,
                             left_out=left_out)
    for kind in kinds:
        res.connectomes[kind], res.per_run[kind] = _measure(ts, kind, estimator)
    return res


def _varying_runs(time_series, runs, names):
    """The runs in which every network's time course varies; the others, named, left out.

    A network is constant over a run of one token, over a run in which the model's units are
    (to float32 rounding, see :func:`~llm2nifti.analysis.reduction.constant_tolerance`)
    constant, and in every run when its map is empty (``signals="mean"``). Its correlations
    there are undefined, so such a run is left out; a network constant in every run is refused.
    """
    import torch

    from .reduction import constant_tolerance

    tol = constant_tolerance(torch.float32)  # the runs are float32
    flat = [ts.std(axis=0) <= tol * np.abs(ts).max(axis=0, initial=0.0) for ts in time_series]
    always = np.logical_and.reduce(flat) if flat else np.zeros(len(names), bool)
    if always.any():
        raise UsageError(f"network(s) {[names[i] for i in np.flatnonzero(always)][:5]} have a "
                         "constant time course in every run: use --signals maps, or a components "
                         "image without empty maps")
    labels = [r.path.name.split("_bold")[0] for r in runs]
    keep = [i for i, f in enumerate(flat) if not f.any()]
    left_out = [{"run": labels[i], "tokens": len(time_series[i]),
                 "constant": [names[j] for j in np.flatnonzero(flat[i])]}
                for i in range(len(runs)) if i not in keep]
    return [time_series[i] for i in keep], [labels[i] for i in keep], left_out


def _check_memory(components, runs, layout, n_kinds):
    """Refuse a raw run given as components, and connectomes that would not fit in memory."""
    from ..memory import check_fits, image_shape, require_maps, run_shapes

    if not isinstance(components, (str, Path)) or not Path(components).is_file():
        return  # load_maps names the problem
    require_maps(components, "connectivity")
    shape = image_shape(components)
    k = shape[3] if len(shape) == 4 else 1
    shapes = run_shapes(runs)
    v = layout.n_neurons
    need = (3 * k * v * 8 + 3 * max(t * n for t, n in shapes) * 4
            + k * sum(t for t, _ in shapes) * 8 + 4 * n_kinds * len(runs) * k * k * 8)
    check_fits(need, f"connectivity of {k} networks over {len(runs)} run(s)",
               "give fewer components (decompose -k) or fewer runs (--runs)")


def _edges(matrix, idx):
    sub = matrix[np.ix_(idx, idx)]
    return sub[np.triu_indices(len(idx), k=1)]


def compare_connectomes(a, b, kinds=("correlation",), min_iou=0.1, n_permutations=1000,
                        random_state=0):
    """Similarity of two connectomes after matching their networks by IoU.

    Returns
    -------
    dict
        ``pairs`` (DataFrame: network_a, network_b, iou) and, per kind, ``r`` (Pearson r
        of the matched edges), ``null_mean``, ``null_low``, ``null_high`` (2.5 and 97.5
        percentiles over random matchings), ``p`` (share of random matchings with r at
        least as high), ``n_edges``.
    """
    if a.layout != b.layout:
        raise UsageError("the two components images are on different neuron layouts: networks "
                         "are matched by the units they share, so compare scans of the same model "
                         "and site (two tasks or two datasets)")
    iou = iou_matrix(a.masks, b.masks)
    match, value = match_networks(iou)
    keep = [i for i in range(len(match)) if match[i] >= 0 and value[i] >= min_iou]
    pairs = pd.DataFrame({"network_a": [a.names[i] for i in keep],
                          "network_b": [b.names[match[i]] for i in keep],
                          "iou": [round(float(value[i]), 6) for i in keep]})
    out = {"pairs": pairs, "min_iou": min_iou, "n_matched": len(keep)}
    if len(keep) < 3:
        raise UsageError(f"only {len(keep)} network pair(s) match with IoU >= {min_iou}: a "
                         "connectome comparison needs at least 3 (lower --min-iou, or compare "
                         "decompositions of the same model)")
    rng = np.random.default_rng(random_state)
    ia, ib = np.array(keep), match[np.array(keep)]
    for kind in kinds:
        ea, eb = _edges(a.connectomes[kind], ia), _edges(b.connectomes[kind], ib)
        r = float(np.corrcoef(ea, eb)[0, 1])
        null = np.array([np.corrcoef(ea, _edges(b.connectomes[kind], rng.permutation(ib)))[0, 1]
                         for _ in range(n_permutations)])
        out[kind] = {"r": r, "null_mean": float(null.mean()),
                     "null_low": float(np.percentile(null, 2.5)),
                     "null_high": float(np.percentile(null, 97.5)),
                     "p": float((1 + (null >= r).sum()) / (1 + n_permutations)),
                     "n_edges": int(len(ea))}
    return out
