"""FN@k as the paper builds it: one decomposition per k, all its networks together.

For each number of components k, the scan is decomposed with k components (CanICA, fast
backend by default), every map is thresholded, and FN@k is the union of the k networks.
Kept alone or zeroed, FN@k is compared with random sets of the same count per layer; the
curve of performance against the share of units kept or zeroed is the paper's FN@k figure.

This differs from the *threshold curve* of :func:`llm2nifti.intervention.experiment.evaluate`
(``--curve-networks``), which lowers the threshold of a single decomposition.

Decompositions are written into the scan's derivatives (``desc-fnk<k>``) and reused when
one with the same parameters and runs is already there, so an interrupted evaluation
resumes without decomposing again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import UsageError

__all__ = ["fn_at_k", "parse_ks"]

log = logging.getLogger(__name__)


def parse_ks(ks, n_tokens=None):
    """Sorted distinct numbers of components; refused when below 2 or above ``n_tokens``."""
    try:
        out = sorted({int(k) for k in ks})
    except (TypeError, ValueError):
        raise UsageError(f"--k takes whole numbers separated by commas, got {ks!r}") from None
    if any(k < 2 for k in out):
        raise UsageError(f"--k values must be at least 2 (got {out[0]})")
    if n_tokens is not None and out and out[-1] > n_tokens:
        raise UsageError(f"k={out[-1]} exceeds the {n_tokens} tokens of the scan: ask for fewer "
                         "components or scan more tokens")
    return out


def _reusable(dataset, runs, k, settings):
    """A components image of an earlier FN@k decomposition with these settings, or None."""
    from ..analysis import read_sidecar

    sources = sorted(str(Path(r.path).relative_to(dataset.root)) for r in runs)
    folder = dataset.root / "derivatives" / "llm2nifti-canica" / f"sub-{runs[0].participant}" / "func"
    found = sorted(folder.glob(f"*_desc-fnk{k}_components.nii"))
    found += sorted(folder.glob(f"*_desc-fnk{k}_bold.nii"))  # written by an earlier version
    for path in found:
        meta = read_sidecar(path) or {}
        params = meta.get("Parameters", {})
        if (sorted(meta.get("Sources", [])) == sources and meta.get("Backend") == settings["backend"]
                and params.get("n_components") == k and params.get("n_init") == settings["n_init"]
                and params.get("random_state") == settings["random_state"]
                and meta.get("Stability", {}).get("NDecompositions", 1) == settings["n_runs"]):
            return path
    return None


def fn_at_k(dataset, ks, *, participant=None, site=None, backend="fast", n_init=None,
            random_state=0, threshold=3.6, two_sided=True, device="cpu", output=None,
            progress=False, n_runs=10):
    """Decompose the scan once per k and return each FN@k (the union of its k networks).

    Parameters
    ----------
    dataset : path or Dataset
        The scan.
    ks : sequence of int
        Numbers of components.
    participant : str, optional
    site : str
    backend : {"fast", "nilearn"}
    n_init, random_state :
        CanICA's FastICA starts and seed (see :class:`~llm2nifti.analysis.Decomposition`);
        ``n_init`` None: 10 for one decomposition, 1 for each of ``n_runs``.
    n_runs : int
        Decompositions per k clustered into stable components (ICASSO,
        :class:`~llm2nifti.analysis.StableDecomposition`); 1: a single decomposition per k.
    threshold, two_sided :
        Selection of each map's neurons (see :func:`~llm2nifti.analysis.maps_to_neurons`).
    device : str
        Device of the fast backend.
    output : path, optional
        Folder for each k's ``networks.tsv`` (default: the dataset's networks derivative).
    progress : bool

    Returns
    -------
    list of (int, NeuronSet, Path)
        k, its networks (one per component), and the components image.
    """
    from tqdm.auto import tqdm

    from bids_llm.dataset import Dataset

    from ..analysis import decompose, networks, select_runs

    dataset = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    runs, layout = select_runs(dataset, participant, task="all", site=site)
    from ..analysis import resolve_n_init

    n_init = resolve_n_init(n_init, n_runs)
    settings = {"backend": backend, "n_init": n_init, "random_state": random_state,
                "n_runs": int(n_runs)}
    ks = parse_ks(ks)
    from ..analysis import RunReductions, check_decomposition_fits
    from ..memory import run_shapes

    # the largest k needs the most memory: refuse before the first decomposition starts
    check_decomposition_fits([t for t, _ in run_shapes(runs)], layout.n_neurons, max(ks), backend,
                             n_init=n_init)
    # one exact reduction per run, at the largest k, serves every k of the sweep
    reductions = RunReductions(device=device, n_components=max(ks)) if backend == "fast" else None
    out = []
    for k in tqdm(ks, desc="FN@k decompositions", disable=not progress):
        path = _reusable(dataset, runs, k, settings)
        if path is None:
            path = decompose(dataset, participant=runs[0].participant, site=site, method="canica",
                             backend=backend, n_components=k, n_init=n_init,
                             random_state=random_state, device=device, desc=f"fnk{k}",
                             reductions=reductions, n_runs=n_runs).components
        else:
            log.info("FN@%d: reusing %s", k, path)
        res = networks(path, dataset, participant=runs[0].participant, site=site,
                       threshold=threshold, two_sided=two_sided, output=output)
        out.append((k, res.neurons, Path(path)))
    return out
