"""From spatial maps to exact neurons: thresholded networks, their summaries and key neurons.

A components image (one volume per map, on the dataset's grid) is read back
through :class:`NeuronLayout`; each map is z-scored over neurons and a neuron
belongs to the map's network where ``|z| > t`` (two-sided) or ``z > t``
(one-sided), optionally keeping only the ``top_k`` strongest neurons.
Network ``FNxx`` is volume ``xx`` (0-based) of the image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..defaults import Z_THRESHOLD
from .decomposition import zscore_maps
from ..errors import UsageError
from ..neuronset import NeuronSet

__all__ = ["maps_to_neurons", "check_maps", "network_names", "site_of_image", "summarize", "key_neurons", "networks",
           "NetworksResult", "load_maps"]


def network_names(n):
    """Names of ``n`` networks: ``FN00``, ``FN01``, ... (volume index)."""
    width = max(2, len(str(n - 1)))
    return [f"FN{i:0{width}d}" for i in range(n)]


def load_maps(img, layout):
    """``(k, n_neurons)`` layer-major maps of a components image (path or image).

    Raises :class:`UsageError` when the image's grid or affine differs from ``layout``.
    """
    import nibabel as nib

    if isinstance(img, (str, Path)):
        path = Path(img)
        if not path.is_file():
            raise UsageError(f"components image {path} not found: pass the *_components.nii that "
                             "`llm2nifti decompose` wrote")
        try:
            img = nib.load(str(path))
        except Exception as exc:  # nibabel raises several types for unreadable files
            raise UsageError(f"cannot read {path} as a NIfTI image ({exc}): pass a .nii or .nii.gz "
                             "components image") from None
        from ..memory import check_fits, require_maps

        require_maps(path)
        n = int(np.prod(img.shape))
        check_fits(3 * 8 * n, f"reading the {img.shape[-1] if len(img.shape) == 4 else 1} maps of "
                              f"{path.name}", "give fewer components (decompose -k)")
    layout.check_img(img)
    if len(img.shape) != 4:
        raise UsageError(f"components image has shape {img.shape}: expected 4D, one volume per map "
                         "(for a single map, add a fourth axis of length 1)")
    try:
        X = np.atleast_2d(np.asarray(layout.unfold(img), dtype=np.float64))
    except (OSError, EOFError, ValueError) as exc:  # data shorter than the header says
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot read the components image's data ({reason}): the file is "
                         "damaged; write it again (llm2nifti decompose)") from None
    return check_maps(X)


def check_maps(maps, names=None):
    """Refuse maps that cannot be z-scored: NaN or Inf values, or constant maps.

    Returns the maps unchanged.
    """
    names = network_names(len(maps)) if names is None else list(names)
    bad = ~np.isfinite(maps)
    if bad.any():
        which = [names[i] for i in np.flatnonzero(bad.any(axis=1))]
        raise UsageError(f"map(s) {', '.join(which[:5])} hold NaN or Inf values "
                         f"({int(bad.sum())} neurons): fix the components image, or decompose again")
    flat = maps.max(axis=1) == maps.min(axis=1)
    if flat.any():
        which = [names[i] for i in np.flatnonzero(flat)]
        raise UsageError(f"map(s) {', '.join(which[:5])} are constant (e.g. all zero) and select no "
                         "neuron: drop them from the components image, or decompose again")
    return maps


def maps_to_neurons(img, layout, threshold=Z_THRESHOLD, two_sided=True, top_k=None, names=None):
    """Threshold z-scored maps into networks of exact neurons.

    Parameters
    ----------
    img : path, Niimg or ndarray of shape (k, n_neurons)
        Components image on the dataset's grid (or layer-major maps).
        Each map is z-scored over neurons (a z-scored map is unchanged).
    layout : NeuronLayout
    threshold : float or None
        Keep ``|z| > threshold`` (two-sided) or ``z > threshold``; None keeps all
        (with ``top_k``).
    two_sided : bool
    top_k : int, optional
        Keep at most the ``top_k`` strongest neurons per network (by ``|z|``
        two-sided, by ``z`` one-sided) among those past the threshold.
    names : list of str, optional
        Network names (default ``FN00``, ``FN01``, ...).

    Returns
    -------
    NeuronSet
        Rows (network, site, layer, neuron, z), networks in map order, neurons
        in layer-major order.
    """
    if threshold is None and top_k is None:
        raise UsageError("give a threshold, a top-k, or both")
    if top_k is not None and int(top_k) < 1:
        raise UsageError("top-k must be at least 1")
    if threshold is not None and not float(threshold) > 0:
        raise UsageError(f"threshold {threshold} keeps every neuron: give a positive z threshold "
                         "(the paper's 3.6 two-sided, or 1.96 one-sided)")
    maps = check_maps(np.atleast_2d(np.asarray(img, dtype=np.float64))) \
        if isinstance(img, np.ndarray) else load_maps(img, layout)
    if maps.shape[1] != layout.n_neurons:
        raise UsageError(f"maps have {maps.shape[1]} neurons, the layout {layout.n_neurons}")
    Z = zscore_maps(maps).astype(np.float64)
    names = network_names(len(Z)) if names is None else [str(n) for n in names]
    if len(names) != len(Z):
        raise UsageError(f"{len(names)} names for {len(Z)} maps")
    frames = []
    for name, z in zip(names, Z):
        score = np.abs(z) if two_sided else z
        idx = np.arange(len(z)) if threshold is None else np.flatnonzero(score > threshold)
        if top_k is not None and len(idx) > top_k:
            order = np.lexsort((idx, -score[idx]))  # strongest first, ties by index
            idx = np.sort(idx[order[: int(top_k)]])
        layer, neuron = layout.neurons(idx)
        frames.append(pd.DataFrame({"network": name, "layer": layer, "neuron": neuron,
                                    "z": np.round(z[idx], 6)}))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["network", "layer", "neuron", "z"])
    return NeuronSet(table, site=layout.site.kind)


def summarize(nset, layout, names=None):
    """One row per network: size, share of all neurons, signs, peak and count per layer.

    Parameters
    ----------
    nset : NeuronSet
        With a ``z`` column (from :func:`maps_to_neurons`).
    layout : NeuronLayout
    names : list of str, optional
        All networks to list, empty ones included (default: those in ``nset``).

    Returns
    -------
    pandas.DataFrame
        Columns network, size, share, n_positive, n_negative, peak_layer,
        peak_neuron, peak_z, then ``layer_<l>`` counts for every layer of the layout.
    """
    t = nset.table
    rows = []
    for name in (names or nset.names):
        sub = t[t["network"] == name]
        row = {"network": name, "size": len(sub), "share": round(len(sub) / layout.n_neurons, 6)}
        z = sub["z"].to_numpy() if "z" in sub else np.zeros(len(sub))
        row["n_positive"] = int((z > 0).sum())
        row["n_negative"] = int((z < 0).sum())
        if len(sub):
            i = int(np.argmax(np.abs(z)))
            row.update(peak_layer=int(sub["layer"].iloc[i]), peak_neuron=int(sub["neuron"].iloc[i]),
                       peak_z=float(z[i]))
        else:
            row.update(peak_layer="n/a", peak_neuron="n/a", peak_z="n/a")
        counts = sub["layer"].value_counts()
        for layer in layout.layers:
            row[f"layer_{layer}"] = int(counts.get(layer, 0))
        rows.append(row)
    return pd.DataFrame(rows)


def key_neurons(nset):
    """The union over networks: one row per neuron with how many networks hold it.

    Returns
    -------
    pandas.DataFrame
        Columns layer, neuron, n_networks, networks (comma-separated), max_abs_z;
        sorted by layer and neuron.
    """
    t = nset.table
    if not len(t):
        return pd.DataFrame(columns=["layer", "neuron", "n_networks", "networks", "max_abs_z"])
    t = t.assign(abs_z=t["z"].abs() if "z" in t else np.nan)
    g = t.groupby(["layer", "neuron"], sort=True)
    out = pd.DataFrame({
        "n_networks": g["network"].nunique(),
        "networks": g["network"].agg(lambda s: ",".join(dict.fromkeys(s))),
        "max_abs_z": g["abs_z"].max().round(6),
    }).reset_index()
    return out


@dataclass
class NetworksResult:
    """What :func:`networks` wrote: the neuron set and the paths of its tables."""

    neurons: NeuronSet
    summary: pd.DataFrame
    key: pd.DataFrame
    networks_tsv: Path
    summary_tsv: Path
    key_tsv: Path
    sidecar: Path


def _stem(path):
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    for suffix in ("_bold", "_components"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _participant_from_name(path):
    from bids_llm.naming import parse_name

    ents, _ = parse_name(Path(path).name)
    return ents.get("sub")


def _participant_of(components, ds, site):
    """The ``sub-`` entity of a components image's name when ``ds`` has it at ``site``, else None."""
    participant = _participant_from_name(components)
    return participant if participant in {r.participant for r in ds.runs(site=site)} else None


def site_of_image(components, ds, participant=None):
    """The site a components image belongs to: its ``acq-`` entity, else the dataset's only one.

    A BIDS name of a participant of ``ds`` without ``acq-`` is the default site.
    """
    from bids_llm.dataset import DEFAULT_SITE, site_of_label

    from ..errors import only_choice

    name = Path(components).name
    acq = re.search(r"(?:^|_)acq-([A-Za-z0-9]+)_", name)
    sites = {r.site_kind for r in ds.runs(participant=participant)}
    if acq and site_of_label(acq.group(1)) in sites:
        return site_of_label(acq.group(1))
    if not acq and _participant_from_name(components) in {r.participant for r in ds.runs()}:
        return DEFAULT_SITE
    return only_choice(sites, "site", "--site")


def _network_stability(components, names, min_stability):
    """Each network's stability (a Series by name, those at ``min_stability`` or above), or None."""
    from .stability import read_stability

    table = read_stability(components)
    if table is None:
        if min_stability is not None:
            raise UsageError("--min-stability: these maps rest on one decomposition, so no network "
                             "has a stability; decompose with --n-runs 10 first")
        return None
    if len(table) != len(names):
        raise UsageError(f"the stability table beside {Path(components).name} lists {len(table)} "
                         f"components for {len(names)} maps: decompose again")
    stability = pd.Series(table["stability"].to_numpy(), index=names)
    if min_stability is not None:
        stability = stability[stability >= min_stability]
        if stability.empty:
            raise UsageError(f"no network has a stability of {min_stability} or more (the highest "
                             f"is {table['stability'].max():.2f}): lower --min-stability")
    return stability


def networks(components, dataset, *, participant=None, site=None, threshold=Z_THRESHOLD, two_sided=True,
             top_k=None, output=None, min_stability=None):
    """Map a components image to neuron networks and write the tables.

    Parameters
    ----------
    components : path
        4D components image (from :func:`llm2nifti.decompose` or a user's nilearn
        script using the dataset's mask); refused unless on the dataset's grid and affine.
    dataset : path or Dataset
        Gives the neuron layout.
    participant : str, optional
        Default: the ``sub-`` entity of the image's name, else the only participant.
    site : str, optional
        Default: the site of the image's ``acq-`` entity (none: ``mlp``) when it is a BIDS
        name of the dataset, else the only site of the participant's runs.
    threshold, two_sided, top_k :
        See :func:`maps_to_neurons`.
    output : path, optional
        Folder of the tables (default ``DATASET/derivatives/llm2nifti-networks``).
    min_stability : float, optional
        Keep only the networks whose stability index (``decompose --n-runs``) is at least this.

    Returns
    -------
    NetworksResult

    Notes
    -----
    Writes ``<stem>_networks.tsv`` (network, site, layer, neuron, z),
    ``<stem>_summary.tsv``, ``<stem>_keyneurons.tsv`` and ``<stem>_networks.json``
    (the selection), where ``<stem>`` is the image's name without ``_bold.nii``. When the maps
    were decomposed several times (``decompose --n-runs``), each network's stability is a
    column of the networks and summary tables; otherwise the JSON says they rest on one
    decomposition.
    """
    from bids_llm.dataset import Dataset
    from bids_llm.io import write_json
    from bids_llm.tsv import write_frame
    from bids_llm.naming import inside

    from bids_llm.outputs import software

    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    if site is None:
        site = site_of_image(components, ds, participant)
    if participant is None:
        participant = _participant_of(components, ds, site)
    layout = ds.layout(participant, site)
    maps = load_maps(components, layout)
    nset = maps_to_neurons(maps, layout, threshold=threshold, two_sided=two_sided, top_k=top_k)
    n_maps = maps.shape[0]
    names = network_names(n_maps)
    stability = _network_stability(components, names, min_stability)
    if stability is not None:
        names = [n for n in names if n in stability.index]
        nset = nset.select([n for n in nset.names if n in stability.index])
        nset.table["stability"] = stability.loc[nset.table["network"]].to_numpy()
    summary = summarize(nset, layout, names=names)
    if stability is not None:
        summary.insert(1, "stability", stability.loc[summary["network"]].to_numpy())
    key = key_neurons(nset)

    out = Path(output) if output is not None else inside(ds.root, "derivatives", "llm2nifti-networks")
    stem = _stem(components)
    paths = [inside(out, f"{stem}_{s}") for s in
             ("networks.tsv", "summary.tsv", "keyneurons.tsv", "networks.json")]
    nset.to_tsv(paths[0])
    write_frame(paths[1], summary, index=False)
    write_frame(paths[2], key, index=False)
    write_json(paths[3], {
        "Components": str(Path(components).resolve()),
        "Dataset": str(ds.root.resolve()), "Participant": participant, "Site": layout.site.kind,
        "Selection": {"zscore": "each map over neurons (ddof=0)", "threshold": threshold,
                      "two_sided": bool(two_sided), "top_k": top_k},
        "NNetworks": len(names), "NMaps": n_maps, "NKeyNeurons": len(key), "NNeurons": layout.n_neurons,
        "Stability": ({"MinStability": min_stability, "Dropped": n_maps - len(names)}
                      if stability is not None else
                      "not known: the maps rest on one decomposition (decompose --n-runs 10)"),
        "KeyShare": round(len(key) / layout.n_neurons, 6),
        "Naming": "network FNxx is volume xx (0-based) of the components image",
        **software(),
    })
    return NetworksResult(nset, summary, key, *paths)
