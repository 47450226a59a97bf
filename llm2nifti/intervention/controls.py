"""Control neuron sets for interventions, and the per-neuron statistics they need.

Every control has the same number of neurons *per layer* as the set it
controls for (the key set of the networks):

``random``
    uniform random neurons of each layer (one set per seed);
``spread-matched``
    random neurons of each layer with the same distribution of activation
    spread (standard deviation over the scan's tokens): each layer's neurons
    are cut into ``n_bins`` rank bins of spread, and as many neurons are drawn
    from each bin as the key set has there;
``top-spread``
    the highest-spread neurons of each layer: a selection with no
    decomposition at all;
``key-minus-massive``
    the key set without the "massive activation" neurons, whose largest
    absolute activation exceeds ``factor`` times the median over neurons;
``random-minus-massive``
    uniform random neurons drawn from all but the massive ones (one set per
    seed). Where a few units carry massive activations (the ``mlp-out`` and
    ``residual`` sites), a random set that hits one of them destroys the model
    and one that misses them barely matters, so ``random`` spans orders of
    magnitude; this control shows which side the key set is on.

Random sets are drawn from all neurons, the key neurons included; how much
each overlaps the key set is reported by :func:`overlap`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import UsageError

__all__ = ["neuron_stats", "random_like", "spread_matched", "top_spread", "massive_neurons",
           "without", "overlap", "count", "nested_networks"]


def neuron_stats(dataset, participant=None, task=None, site="mlp"):
    """Mean, spread (std) and peak ``|activation|`` of every neuron over a scan's tokens.

    Read from the ``desc-unitstats`` derivative that convert writes, when the runs are
    of one task and it covers them; else computed from the runs (one pass).

    Parameters
    ----------
    dataset : path or Dataset
    participant, task : str, optional
        BIDS filters (None: all runs; the runs must share one neuron layout).
    site : str

    Returns
    -------
    stats : pandas.DataFrame
        One row per neuron (layer-major): layer, neuron, mean, std, peak, peak_token
        (index over the concatenated runs of the largest ``|activation|``).
    """
    from bids_llm.dataset import Dataset, load_run

    ds = dataset if hasattr(dataset, "runs") else Dataset(dataset)
    runs = ds.runs(participant=participant, task=task, site=site)
    if not runs:
        raise UsageError(f"no runs in {ds.root} for participant={participant}, task={task}, site={site}")
    layout = ds.layout(participant, site)  # refuses mixed layouts
    tasks = sorted({r.task for r in runs})
    saved = ds.unit_stats(runs[0].participant, tasks[0], site) if len(tasks) == 1 else None
    if saved is not None:  # computed while converting: no pass over the runs
        layer, neuron = layout.neurons()
        return pd.DataFrame({"layer": layer, "neuron": neuron, "mean": saved["mean"],
                             "std": saved["std"], "peak": saved["peak"],
                             "peak_token": saved["peak_token"].astype(np.int64)})
    total = 0
    s1 = s2 = peak = where = neurons = None
    for run in runs:
        X, neurons = load_run(run)
        X64 = X.astype(np.float64)
        a = np.abs(X)
        t = a.argmax(0)
        p = a[t, np.arange(a.shape[1])]
        if s1 is None:
            s1, s2 = X64.sum(0), (X64 ** 2).sum(0)
            peak, where = p, t
        else:
            s1 += X64.sum(0)
            s2 += (X64 ** 2).sum(0)
            better = p > peak
            peak = np.where(better, p, peak)
            where = np.where(better, t + total, where)
        total += X.shape[0]
    mean = s1 / total
    var = np.maximum(s2 / total - mean ** 2, 0.0) * total / max(total - 1, 1)
    return pd.DataFrame({"layer": neurons["layer"].to_numpy(), "neuron": neurons["neuron"].to_numpy(),
                         "mean": mean, "std": np.sqrt(var), "peak": peak.astype(np.float64),
                         "peak_token": where})


def _by_layer(stats, column):
    return {int(l): g.sort_values("neuron")[column].to_numpy()
            for l, g in stats.groupby("layer", sort=True)}


def count(per_layer):
    """Number of neurons in a ``{layer: indices}`` set."""
    return int(sum(len(v) for v in per_layer.values()))


def random_like(key, widths, seed=0, exclude=None, groups=None):
    """Uniform random neurons, as many per layer (and per expert) as ``key`` has.

    Parameters
    ----------
    key : dict of int -> ndarray
    widths : int or dict of int -> int
        Neurons per layer.
    seed : int
    exclude : dict of int -> ndarray, optional
        Neurons never drawn (e.g. :func:`massive_neurons`); a layer keeps as many
        neurons as it can when fewer are left than ``key`` has there.
    groups : dict of int -> ndarray, optional
        Per layer, a group label per unit (the expert of each unit of a mixture of experts,
        :meth:`~llm2nifti.sites.Site.groups`): units are drawn with the key's count in each
        group of the layer.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for layer in sorted(key):
        w = int(widths if np.isscalar(widths) else widths[layer])
        if exclude is None and (groups is None or groups.get(layer) is None):
            out[layer] = np.sort(rng.choice(w, size=len(key[layer]), replace=False))
            continue
        pool = np.setdiff1d(np.arange(w), (exclude or {}).get(layer, ()))
        label = None if groups is None else groups.get(layer)
        if label is None:
            out[layer] = np.sort(rng.choice(pool, size=min(len(key[layer]), pool.size), replace=False))
            continue
        chosen = []
        for g in np.unique(label[key[layer]]):
            need = int(np.sum(label[key[layer]] == g))
            in_group = pool[label[pool] == g]
            chosen.append(rng.choice(in_group, size=min(need, in_group.size), replace=False))
        out[layer] = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    return out


def spread_matched(key, stats, seed=0, n_bins=20):
    """Random neurons matched per layer on activation spread (see the module notes).

    Parameters
    ----------
    key : dict of int -> ndarray
    stats : pandas.DataFrame
        From :func:`neuron_stats`.
    seed : int
    n_bins : int
        Rank bins of spread per layer.
    """
    rng = np.random.default_rng(seed)
    spread = _by_layer(stats, "std")
    out = {}
    for layer in sorted(key):
        s = spread[layer]
        rank = np.empty(len(s), dtype=np.int64)
        rank[np.argsort(s, kind="stable")] = np.arange(len(s))
        bins = rank * n_bins // len(s)
        chosen = []
        for b in np.unique(bins[key[layer]]):
            need = int(np.sum(bins[key[layer]] == b))
            chosen.append(rng.choice(np.flatnonzero(bins == b), size=need, replace=False))
        out[layer] = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    return out


def top_spread(key, stats):
    """The highest-spread neurons of each layer, as many as ``key`` has there."""
    spread = _by_layer(stats, "std")
    return {layer: np.sort(np.argsort(-spread[layer], kind="stable")[: len(key[layer])])
            for layer in sorted(key)}


def massive_neurons(stats, factor=100.0):
    """Neurons whose peak ``|activation|`` exceeds ``factor`` times the median peak.

    Returns
    -------
    dict of int -> ndarray
    """
    peak = stats["peak"].to_numpy()
    hit = stats[peak > factor * np.median(peak)]
    return {int(l): np.sort(g["neuron"].to_numpy()) for l, g in hit.groupby("layer")}


def without(a, b):
    """Set difference ``a - b`` of two ``{layer: indices}`` sets (empty layers dropped)."""
    out = {}
    for layer, idx in a.items():
        rest = np.setdiff1d(idx, b.get(layer, ()))
        if rest.size:
            out[layer] = rest
    return out


def overlap(a, b):
    """Share of the neurons of ``a`` that are also in ``b`` (0 when ``a`` is empty)."""
    n = count(a)
    if not n:
        return 0.0
    both = sum(len(np.intersect1d(idx, b.get(layer, ()))) for layer, idx in a.items())
    return both / n


def nested_networks(nset, steps):
    """Growing unions of networks: the first 1, 2, ... networks (in table order).

    Parameters
    ----------
    nset : NeuronSet
    steps : sequence of int
        Numbers of networks in each union.

    Returns
    -------
    list of (int, dict of int -> ndarray)
    """
    names = nset.names
    out = []
    for m in steps:
        m = int(min(max(m, 1), len(names)))
        out.append((m, nset.select(names[:m]).per_layer()))
    return out
