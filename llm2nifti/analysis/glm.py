"""``localize``: the fMRI language localizer, run on a model with nilearn's GLM.

A localizer task (items of a few conditions, each token's condition in ``events.tsv``'s
``trial_type``) is fitted unit by unit with :class:`nilearn.glm.first_level.FirstLevelModel`,
set up for tokens rather than seconds:

- ``hrf_model=None``: a token's activation has no haemodynamic delay, so each condition's
  regressor is the 0/1 indicator of its tokens;
- ``drift_model=None``, no smoothing, ``signal_scaling=False`` (activations are not a
  positive signal whose mean can be divided by), ``noise_model="ols"``;
- the dataset's neuron mask, and ``t_r`` from the runs' sidecars.

The BOS token opening each item has ``trial_type`` ``n/a``: nilearn drops those rows, so
BOS tokens (with the intercept) are the baseline, and the condition regressors never sum
to the intercept. One design per run; nilearn combines the runs by fixed effects (effects
and variances summed), as it does for any multi-run first level.

Selected units (the top ``top_percent`` % by t, as in AlKhamissi et al. 2025, or z above
a threshold) are written as a ``networks.tsv`` that ``evaluate`` and ``prune`` read.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from bids_llm.outputs import DERIVATIVES

from ..errors import UsageError
from ..neuronset import NeuronSet

__all__ = ["localize", "LocalizeResult", "fit_localizer", "contrast_label", "select_units",
           "localizer_events", "DEFAULT_CONTRAST", "PIPELINE_GLM"]

log = logging.getLogger(__name__)
DEFAULT_CONTRAST = "sentences - nonwords"
PIPELINE_GLM = DERIVATIVES["glm"].pipeline
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS = {"-": "Minus", "+": "Plus", "*": "Times"}


@dataclass
class LocalizeResult:
    """What :func:`localize` fitted and wrote.

    Attributes
    ----------
    glm : FirstLevelModel
        The fitted nilearn model (its design matrices in ``glm.design_matrices_``).
    conditions : list of str
    contrasts : dict
        Contrast expression -> ``{"label", "t", "z", "effect", "t_path", "z_path",
        "networks_tsv", "n_selected"}`` (``t``, ``z``, ``effect``: layer-major arrays).
    neurons : NeuronSet
        Selected units of every contrast, one network per contrast.
    scanned : bool
        Whether the localizer runs were recorded by this call.
    """

    glm: object
    conditions: list
    contrasts: dict = field(default_factory=dict)
    neurons: NeuronSet | None = None
    scanned: bool = False


def contrast_label(expression):
    """A BIDS label for a contrast: ``"sentences - nonwords"`` -> ``"sentencesMinusNonwords"``."""
    parts = re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|[-+*]", expression)
    out = ""
    for p in parts:
        word = _OPS.get(p, p.replace("_", "").replace(".", "p"))
        out += word if not out else word[:1].upper() + word[1:]
    if not out:
        raise UsageError(f"contrast {expression!r} names no condition: write e.g. "
                         f"{DEFAULT_CONTRAST!r}")
    return out


def _check_contrast(expression, conditions):
    names = set(_NAME.findall(expression))
    unknown = sorted(names - set(conditions))
    if not names or unknown:
        raise UsageError(f"contrast {expression!r} names unknown condition(s) "
                         f"{', '.join(unknown) or '(none)'}: the task's conditions are "
                         f"{', '.join(conditions)}")
    if re.search(r"[^A-Za-z0-9_\s.+\-*]", expression):
        raise UsageError(f"contrast {expression!r}: use condition names, numbers, +, - and *")


def localizer_events(run):
    """The GLM's events of a run: onset, duration and trial_type of tokens with a condition."""
    events = run.events()
    if "trial_type" not in events:
        raise UsageError(f"{run.events_path.name} has no trial_type column: this task has no "
                         "conditions; convert a localizer (--stimuli localizer, or a table with "
                         "a condition column)")
    return events.loc[events["trial_type"].notna(), ["onset", "duration", "trial_type"]] \
        .reset_index(drop=True)


def fit_localizer(run_paths, events, mask, t_r=1.0):
    """Fit nilearn's first level on the runs, set up for tokens (see the module's notes).

    Parameters
    ----------
    run_paths : list of path
    events : list of pandas.DataFrame
        One per run (onset, duration, trial_type).
    mask : path or Niimg
        The dataset's neuron mask.
    t_r : float

    Returns
    -------
    nilearn.glm.first_level.FirstLevelModel
    """
    from nilearn.glm.first_level import FirstLevelModel

    glm = FirstLevelModel(t_r=t_r, hrf_model=None, drift_model=None, smoothing_fwhm=None,
                          mask_img=str(mask), signal_scaling=False, noise_model="ols",
                          standardize=False, minimize_memory=True)
    with warnings.catch_warnings():
        # nilearn notes that the given mask is used rather than one computed: as wanted.
        warnings.filterwarnings("ignore", message=".*Generation of a mask has been requested.*")
        return glm.fit([str(p) for p in run_paths], events=events)


def _check_top(top_percent):
    if not 0 < float(top_percent) <= 100:
        raise UsageError(f"--top {top_percent}: give a percentage in (0, 100], e.g. 1")


def select_units(t, z, layout, name, top_percent=1.0, z_threshold=None):
    """Units kept for a contrast: the top ``top_percent`` % by t, or ``z > z_threshold``.

    Ties at the cut are broken by neuron index (lowest first), so the count is exact.
    """
    if z_threshold is not None:
        idx = np.flatnonzero(z > float(z_threshold))
    else:
        _check_top(top_percent)
        n = max(1, int(round(layout.n_neurons * float(top_percent) / 100)))
        order = np.lexsort((np.arange(len(t)), -t))
        idx = np.sort(order[:n])
    layer, neuron = layout.neurons(idx)
    table = pd.DataFrame({"network": name, "layer": layer, "neuron": neuron,
                          "z": np.round(z[idx], 6), "t": np.round(t[idx], 6)})
    return NeuronSet(table, site=layout.site.kind)


def localize(dataset, *, model=None, stimuli="localizer", task=None, participant=None,
             site=None, contrasts=(DEFAULT_CONTRAST,), top_percent=1.0, z_threshold=None,
             output=None, progress=True, **scan_options):
    """Find units selective for a contrast of conditions, like the fMRI language localizer.

    When the dataset holds no runs of ``task``, the localizer is first recorded into it
    (:func:`llm2nifti.acquisition.scan` with ``stimuli``), then the GLM is fitted.

    Parameters
    ----------
    dataset : path
        Dataset folder (created by the scan when missing).
    model : str, optional
        Model to record with, when the task is not yet recorded (default: the embedded one).
    stimuli : str or path
        ``"localizer"`` (built in: sentences, words, nonwords from the Lee corpus) or a
        ``.tsv``/``.jsonl`` table with ``id``, ``text`` and ``condition`` columns.
    task : str, optional
        BIDS task label (default: ``localizer``, or the table's file name).
    participant : str, optional
        Default: from the model's name when scanning, else the dataset's only participant.
    site : str, optional
        Unit site (``--site`` of convert). Default: the only site of the task's runs, or
        ``mlp`` when the localizer is recorded now; with several, an error lists them.
    contrasts : sequence of str
        Expressions over the conditions, e.g. ``"sentences - nonwords"``.
    top_percent : float
        Keep the top ``top_percent`` % of units by t (default 1, the paper's choice).
    z_threshold : float, optional
        Instead, keep units with z above this.
    output : path, optional
        Derivative folder (default ``DATASET/derivatives/llm2nifti-glm``).
    progress : bool
    **scan_options
        Passed to :func:`~llm2nifti.acquisition.scan` when recording (``threads``,
        ``device``, ``dtype``, ``run_tokens``, ``cache``...).

    Returns
    -------
    LocalizeResult
    """
    from bids_llm.dataset import DEFAULT_SITE, Dataset, is_dataset

    from ..acquisition import LOCALIZER, load_documents, scan, task_label
    from ..errors import only_choice

    if z_threshold is None:
        _check_top(top_percent)  # before anything is recorded
    task = task or (LOCALIZER if str(stimuli) == LOCALIZER else task_label(Path(stimuli).stem))
    scanned = False
    if site is None:
        recorded = Dataset(dataset).runs(participant=participant, task=task) if is_dataset(dataset) else []
        site = only_choice({r.site_kind for r in recorded}, "site", "--site") if recorded else DEFAULT_SITE
    if not (is_dataset(dataset) and Dataset(dataset).runs(participant=participant, task=task,
                                                          site=site)):
        # Refuse stimuli without conditions, and contrasts they cannot make, before recording.
        conditions = sorted({d.condition for d in load_documents(stimuli) if d.condition})
        if not conditions:
            raise UsageError(f"stimuli {stimuli} have no condition column: a localizer needs "
                             "items of conditions (id, text, condition), or --stimuli localizer")
        for expression in contrasts:
            _check_contrast(expression, conditions)
        res = scan(dataset, model, stimuli, task=task, label=participant, neurons=site,
                   progress=progress, resume=True, **scan_options)
        participant, scanned = res.participant, True
    ds = Dataset(dataset)
    runs, participant = _localizer_runs(ds, participant, task, site)
    ds.check_runs(runs)
    layout = ds.layout(participant, site)
    events = [localizer_events(r) for r in runs]
    conditions = sorted({c for e in events for c in e["trial_type"].unique()})
    for expression in contrasts:
        _check_contrast(expression, conditions)
    runs, events = _complete_runs(runs, events, conditions, task)
    from ..memory import check_fits, run_shapes

    # nilearn masks and fits one run at a time, in float64, beside its design and residuals
    largest = max(t * v for t, v in run_shapes(runs)) * 8
    check_fits(4 * largest, f"the GLM over runs of up to {largest // 8 // layout.n_neurons} tokens "
                            f"x {layout.n_neurons} neurons",
               "convert the localizer with a smaller --run-tokens")
    glm = fit_localizer([r.path for r in runs], events, ds.mask_path(participant, site),
                        t_r=float(runs[0].metadata().get("RepetitionTime", 1.0)))
    result = LocalizeResult(glm, conditions, scanned=scanned)
    from .glm_outputs import write_localizer

    computed = [_contrast(glm, e, layout, top_percent, z_threshold) for e in contrasts]
    write_localizer(result, ds, runs, layout, computed, top_percent, z_threshold, output)
    return result


def _contrast(glm, expression, layout, top_percent, z_threshold):
    """``(expression, label, maps, units)``: nilearn's maps of one contrast and the units kept."""
    with warnings.catch_warnings():  # every run's design has the same columns (checked)
        warnings.filterwarnings("ignore", message=".*same contrast will be used for all.*")
        maps = glm.compute_contrast(expression, stat_type="t", output_type="all")
    label = contrast_label(expression)
    units = select_units(layout.unfold(maps["stat"]).astype(np.float64),
                         layout.unfold(maps["z_score"]).astype(np.float64), layout, label,
                         top_percent, z_threshold)
    return expression, label, maps, units


def _complete_runs(runs, events, conditions, task):
    """Runs holding every condition; the others are left out with a warning (none: an error).

    A run without some condition cannot estimate a contrast that names it, and nilearn
    needs the same design columns in every run.
    """
    keep = [i for i, e in enumerate(events) if set(conditions) <= set(e["trial_type"])]
    left = [runs[i].run for i in range(len(runs)) if i not in keep]
    if not keep:
        raise UsageError(f"no run of task {task!r} holds every condition ({', '.join(conditions)}): "
                         "interleave the conditions, or use longer runs (--run-tokens)")
    if left:
        log.warning("run(s) %s of task %r lack a condition and are left out of the GLM",
                    ", ".join(map(str, left)), task)
    return [runs[i] for i in keep], [events[i] for i in keep]


def _localizer_runs(ds, participant, task, site):
    runs = ds.runs(participant=participant, task=task, site=site)
    if not runs:
        raise UsageError(f"{ds.root} has no runs of task {task!r} at site {site!r}: convert the "
                         "localizer first, or pass --stimuli")
    found = sorted({r.participant for r in runs})
    if len(found) > 1:
        raise UsageError(f"task {task!r} has several participants ({', '.join(found)}): choose "
                         "one with --participant")
    return runs, found[0]
