"""Do networks recur? Match each run's networks, and other seeds', to the group's templates.

Templates are the networks of a decomposition of all selected runs (or of a
given components image). Each run is then decomposed on its own, and the
group again with other random seeds; their networks are matched one to one
to the templates (Hungarian algorithm on the intersection-over-union, IoU, of
the neuron sets). A template *recurs* in a run when its matched IoU exceeds
``iou_threshold`` (0.2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from ..defaults import Z_THRESHOLD
from ..errors import UsageError

__all__ = ["iou_matrix", "match_networks", "recurrence", "RecurrenceResult",
           "plot_recurrence", "plot_layers"]

log = logging.getLogger(__name__)


def _masks(nset, layout, names):
    M = np.zeros((len(names), layout.n_neurons), dtype=bool)
    for i, name in enumerate(names):
        if name in nset.names:
            M[i, nset.select(name).global_index(layout)] = True
    return M


def iou_matrix(a, b):
    """IoU of every pair of neuron sets given as boolean masks ``(na, V)`` and ``(nb, V)``.

    Two empty sets have IoU 0.
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return out


def match_networks(iou):
    """One-to-one matching maximising total IoU.

    Parameters
    ----------
    iou : ndarray of shape (n_templates, n_networks)

    Returns
    -------
    match : ndarray of shape (n_templates,)
        Index of the network matched to each template (-1: none, when there
        are fewer networks than templates).
    value : ndarray of shape (n_templates,)
        The matched IoU (0 when unmatched).
    """
    rows, cols = linear_sum_assignment(-np.asarray(iou))
    match = np.full(iou.shape[0], -1)
    value = np.zeros(iou.shape[0])
    match[rows] = cols
    value[rows] = iou[rows, cols]
    return match, value


@dataclass
class RecurrenceResult:
    """What :func:`recurrence` found and wrote.

    Attributes
    ----------
    templates : NeuronSet
    table : pandas.DataFrame
        One row per (unit, template): unit (``run-01``, ``seed-1``), kind
        (run or seed), template, match, iou, recurs.
    summary : pandas.DataFrame
        One row per template: size, recurrence (share of runs with IoU above
        the threshold), IoU mean/median/min/max over runs, seed_iou_mean,
        seed_recurrence.
    paths : dict of str to Path
    left_out : list of dict
        Runs too short to decompose alone (fewer than 2 tokens: no variance once z-scored):
        ``{"unit", "tokens"}``. They still count in the group decomposition.
    """

    templates: object
    table: pd.DataFrame
    summary: pd.DataFrame
    paths: dict
    left_out: list = field(default_factory=list)


def _networks_of(est_or_maps, layout, threshold, two_sided, top_k):
    from .selection import maps_to_neurons, network_names

    maps = getattr(est_or_maps, "components_", est_or_maps)
    names = network_names(len(maps))
    return maps_to_neurons(np.asarray(maps), layout, threshold=threshold, two_sided=two_sided,
                           top_k=top_k), names


def _match_rows(unit, kind, nset, names, t_masks, t_names, layout, iou_threshold):
    iou = iou_matrix(t_masks, _masks(nset, layout, names))
    match, value = match_networks(iou)
    return [{"unit": unit, "kind": kind, "template": t, "match": names[m] if m >= 0 else "n/a",
             "iou": round(float(v), 6), "recurs": bool(v > iou_threshold)}
            for t, m, v in zip(t_names, match, value)]


def recurrence(dataset, estimator=None, *, participant=None, task=None, run=None, site=None,
               templates=None, n_seeds=3, threshold=Z_THRESHOLD, two_sided=True, top_k=None,
               iou_threshold=0.2, threads=None, output=None, figures=True):
    """Recurrence of networks across runs and stability across seeds.

    Parameters
    ----------
    dataset : path or Dataset
    participant, task, run, site :
        Which runs (BIDS entity filters; see :func:`decompose`); one participant.
    estimator : Decomposition or StableDecomposition, optional
        The templates' decomposition (default: ``Decomposition(backend="fast")``, k = 20); a
        :class:`~llm2nifti.analysis.StableDecomposition` gives the templates a stability,
        a column of the summary (also read beside a ``templates`` image made so). Each run
        alone and each other seed is decomposed once by the decomposition it runs (cloned);
        a run decomposed alone gets at most its rank, ``T - 1`` components for ``T`` tokens;
        a run of one token is left out of the per-run rows (``RecurrenceResult.left_out``).
        Its ``scheduler`` serves every decomposition (one cluster), its ``progress`` shows a
        bar over the runs' reductions (one per seed).
    templates : path, optional
        A components image to use as templates (default: decompose all selected runs).
    n_seeds : int
        Extra group decompositions with seeds ``random_state + 1 ...`` (the estimator's).
    threshold, two_sided, top_k :
        Neuron selection (see :func:`llm2nifti.analysis.selection.maps_to_neurons`).
    iou_threshold : float
        A matched IoU above it counts as recurring.
    output : path, optional
        Default ``DATASET/derivatives/llm2nifti-recurrence``.
    figures : bool
        Write the PNG figures.

    Returns
    -------
    RecurrenceResult
    """
    from bids_llm.dataset import Dataset

    from .decomposition import as_stable, base_decomposition, configured, select_runs
    from .selection import summarize

    if threads is not None:
        from ..models import set_threads

        set_threads(threads)
    if not 0 <= iou_threshold < 1:
        raise UsageError("the IoU threshold must be in [0, 1)")
    if n_seeds < 0:
        raise UsageError("n-seeds must be 0 or more")
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    estimator = configured(estimator, "recurrence")
    one = base_decomposition(estimator)
    runs, layout = select_runs(ds, participant, task, run, site)

    from .scheduling import dask_client

    with dask_client(one.scheduler, one.workers) as client:
        from .reduction import RunReductions

        reductions = RunReductions(client, one.device, one.progress)
        # the decompositions inside get the cluster through the reductions, not their own
        alone = configured(one, scheduler=None, progress=False)

        def fit(selected, k, seed, stable=False):
            est = configured(estimator if stable else alone,
                             n_components=k, random_state=seed, scheduler=None, progress=False)
            return as_stable(est).fit(selected, layout=layout,
                                      reduced=reductions if one.backend == "fast" else None)

        table, t_set, t_names, left_out, stability = _recurrence_rows(
            fit, runs, layout, templates, one.n_components, one.random_state, n_seeds, threshold,
            two_sided, top_k, iou_threshold)
    sizes = summarize(t_set, layout, names=t_names).set_index("network")
    summary = _template_summary(table, t_names, sizes, iou_threshold)
    if stability is not None:
        summary.insert(2, "stability", stability["stability"].to_numpy())
    return _write_recurrence(ds, runs, layout, table, summary, sizes, t_set, t_names, output,
                             figures, iou_threshold, templates, estimator, n_seeds,
                             dict(threshold=threshold,
                                                                 two_sided=bool(two_sided),
                                                                 top_k=top_k), left_out)


def _recurrence_rows(fit, runs, layout, templates, n_components, random_state, n_seeds,
                     threshold, two_sided, top_k, iou_threshold):
    """Templates, then each run and each other seed matched to them: the result table."""
    import nibabel as nib

    from .selection import load_maps

    from .stability import read_stability

    if templates is not None:
        t_maps, stability = load_maps(templates, layout), read_stability(templates)
    else:
        est = fit(runs, n_components, random_state, stable=True)
        t_maps, stability = est.components_, est.stability_
    select = dict(threshold=threshold, two_sided=bool(two_sided), top_k=top_k)
    t_set, t_names = _networks_of(t_maps, layout, **select)
    t_masks = _masks(t_set, layout, t_names)

    def match(unit, kind, est):
        nset, names = _networks_of(est, layout, **select)
        return _match_rows(unit, kind, nset, names, t_masks, t_names, layout, iou_threshold)

    rows, left_out = [], []
    for r in runs:
        n_tok = nib.load(str(r.path), mmap=True).shape[3]
        unit = f"run-{r.run:02d}" if r.run is not None else r.path.name
        # Z-scored over its own tokens, a run of T tokens has rank T - 1 at most.
        if n_tok < 2:
            left_out.append({"unit": unit, "tokens": int(n_tok)})
            log.info("%s left out: %d token(s), nothing to decompose alone", unit, n_tok)
            continue
        rows += match(unit, "run", fit([r], min(n_components, n_tok - 1), random_state))
        log.info("run %s decomposed", r.run)
    for s in range(1, n_seeds + 1):
        rows += match(f"seed-{random_state + s}", "seed", fit(runs, len(t_names), random_state + s))
    return pd.DataFrame(rows, columns=_TABLE_COLUMNS), t_set, t_names, left_out, stability


_TABLE_COLUMNS = ["unit", "kind", "template", "match", "iou", "recurs"]


def _write_recurrence(ds, runs, layout, table, summary, sizes, t_set, t_names, output, figures,
                      iou_threshold, templates, estimator, n_seeds, select, left_out):
    """The recurrence derivative: tables, templates, figures and the JSON record."""
    from .decomposition import base_decomposition

    one = base_decomposition(estimator)
    method, n_init = one.method, one.n_init
    from bids_llm.io import write_json
    from bids_llm.tsv import write_frame
    from bids_llm.naming import inside

    from bids_llm.outputs import software

    out = Path(output) if output is not None else inside(ds.root, "derivatives", "llm2nifti-recurrence")
    paths = _output_paths(out, runs, method)
    write_frame(paths["table"], table, index=False)
    write_frame(paths["summary"], summary, index=False)
    t_set.to_tsv(paths["networks"])
    if figures:
        plot_recurrence(table, t_names, paths["heatmap"], iou_threshold=iou_threshold)
        plot_layers(sizes, layout, paths["layers"])
    else:
        del paths["heatmap"], paths["layers"]
    write_json(paths["sidecar"], {
        "Dataset": str(ds.root.resolve()), "Runs": [str(Path(r.path).relative_to(ds.root)) for r in runs],
        "Templates": str(Path(templates).resolve()) if templates is not None else "decomposition of all runs",
        "Method": method, "Backend": one.backend, "NComponents": int(one.n_components),
        "NInit": n_init if n_init != "auto" else "10 (templates with --n-runs: 1 each)",
        "TemplateStability": ("not known: the templates rest on one decomposition"
                              if "stability" not in summary else "column 'stability' (ICASSO Iq)"),
        "RandomState": int(one.random_state), "NSeeds": int(n_seeds), "Selection": select,
        "IoUThreshold": iou_threshold,
        "MeanRecurrence": round(float(summary["recurrence"].mean()), 6),
        "RunsLeftOut": left_out,
        **software(),
    })
    return RecurrenceResult(t_set, table, summary, paths, left_out)


def _template_summary(table, t_names, sizes, iou_threshold):
    """One row per template: size, recurrence over runs, IoU statistics, stability over seeds."""
    rows = []
    for t in t_names:
        by_run = table[(table["template"] == t) & (table["kind"] == "run")]["iou"]
        by_seed = table[(table["template"] == t) & (table["kind"] == "seed")]["iou"]
        rows.append({
            "template": t, "size": int(sizes.loc[t, "size"]),
            "recurrence": round(float((by_run > iou_threshold).mean()), 6),
            "iou_mean": round(float(by_run.mean()), 6), "iou_median": round(float(by_run.median()), 6),
            "iou_min": round(float(by_run.min()), 6), "iou_max": round(float(by_run.max()), 6),
            "seed_iou_mean": round(float(by_seed.mean()), 6) if len(by_seed) else "n/a",
            "seed_recurrence": round(float((by_seed > iou_threshold).mean()), 6) if len(by_seed) else "n/a",
        })
    return pd.DataFrame(rows)


def _output_paths(out, runs, method):
    """Files of a recurrence derivative, named after the runs' participant, tasks and site."""
    from bids_llm.naming import bids_name, inside

    tasks = "".join(sorted({r.task for r in runs}))
    prefix = bids_name("", "", sub=runs[0].participant, task=tasks, acq=runs[0].acq,
                       desc=method).rstrip("_")
    return {key: inside(out, f"{prefix}_{name}") for key, name in (
        ("table", "recurrence.tsv"), ("summary", "templates.tsv"), ("networks", "networks.tsv"),
        ("sidecar", "recurrence.json"), ("heatmap", "recurrence.png"), ("layers", "layers.png"))}


def _save_fig(fig, path):
    from bids_llm.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")


def plot_recurrence(table, templates, path, iou_threshold=0.2):
    """Heat map of matched IoU: runs (and seeds) x templates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = table.pivot(index="unit", columns="template", values="iou")
    units = list(dict.fromkeys(table["unit"]))
    grid = grid.loc[units, list(templates)]
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(templates) + 2), max(2.5, 0.3 * len(units) + 1.5)))
    im = ax.imshow(grid.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(templates)), templates, rotation=90, fontsize=7)
    ax.set_yticks(range(len(units)), units, fontsize=7)
    ax.set_xlabel("template network")
    ax.set_ylabel("run / seed")
    ax.set_title(f"Matched IoU (recurs when > {iou_threshold})")
    fig.colorbar(im, ax=ax, label="IoU")
    _save_fig(fig, path)
    plt.close(fig)


def plot_layers(sizes, layout, path):
    """Neurons per layer of each template network (a templates x layers heat map)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [f"layer_{l}" for l in layout.layers]
    counts = sizes[cols].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(max(4, 0.25 * len(cols) + 2), max(2.5, 0.3 * len(sizes) + 1.5)))
    im = ax.imshow(counts, cmap="magma", aspect="auto")
    ax.set_xticks(range(len(cols)), [str(l) for l in layout.layers], fontsize=7)
    ax.set_yticks(range(len(sizes)), [f"{n} ({int(s)})" for n, s in zip(sizes.index, sizes["size"])],
                  fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("template network (size)")
    ax.set_title("Network neurons per layer")
    fig.colorbar(im, ax=ax, label="neurons")
    _save_fig(fig, path)
    plt.close(fig)
