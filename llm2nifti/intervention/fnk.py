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

from ..defaults import Z_THRESHOLD
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


def _reusable(dataset, runs, k, estimator):
    """A components image of an earlier FN@k decomposition made by ``estimator`` with ``k``
    components on these runs, or None."""
    from ..analysis import reusable

    return reusable(dataset, runs, f"fnk{k}", estimator)


def fn_at_k(dataset, ks, estimator=None, *, participant=None, site=None, threshold=Z_THRESHOLD,
            two_sided=True, output=None, progress=False):
    """Decompose the scan once per k and return each FN@k (the union of its k networks).

    Parameters
    ----------
    dataset : path or Dataset
        The scan.
    ks : sequence of int
        Numbers of components.
    estimator : Decomposition or StableDecomposition, optional
        The decomposition made for each k (cloned, its ``n_components`` set to k; default:
        ``StableDecomposition(Decomposition(backend="fast"), n_repeats=10)``, stable
        components so that the curve does not move with one seed's optimum).
    participant : str, optional
    site : str
    threshold, two_sided :
        Selection of each map's neurons (see :func:`~llm2nifti.analysis.maps_to_neurons`).
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
    from ..analysis import base_decomposition, configured

    dataset = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    estimator = configured(estimator, "fn_at_k")
    one = base_decomposition(estimator)
    runs, layout = select_runs(dataset, participant, task="all", site=site)
    ks = parse_ks(ks)
    from ..analysis import RunReductions, check_decomposition_fits
    from ..memory import run_shapes

    # the largest k needs the most memory: refuse before the first decomposition starts
    first = configured(estimator, n_components=max(ks))
    check_decomposition_fits([t for t, _ in run_shapes(runs)], layout.n_neurons, max(ks),
                             one.backend, n_init=_starts(first))
    # one exact reduction per run, at the largest k, serves every k of the sweep
    reductions = (RunReductions(device=one.device, n_components=max(ks))
                  if one.backend == "fast" else None)
    out = []
    for k in tqdm(ks, desc="FN@k decompositions", disable=not progress):
        at_k = configured(estimator, n_components=k)
        path = _reusable(dataset, runs, k, at_k)
        if path is None:
            path = decompose(dataset, at_k, participant=runs[0].participant, site=site,
                             desc=f"fnk{k}", reductions=reductions).components
        else:
            log.info("FN@%d: reusing %s", k, path)
        res = networks(path, dataset, participant=runs[0].participant, site=site,
                       threshold=threshold, two_sided=two_sided, output=output)
        out.append((k, res.neurons, Path(path)))
    return out


def _starts(estimator):
    """FastICA starts of each decomposition ``estimator`` makes."""
    from ..analysis import as_stable

    stable = as_stable(estimator)
    return stable._decomposition(0)._n_init()
