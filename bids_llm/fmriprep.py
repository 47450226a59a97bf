"""A human fMRI dataset as fMRIPrep leaves it: the preprocessed runs, their masks, confounds
and events, and the TR.

``fmri_runs`` finds, under a raw BIDS dataset's ``derivatives/``, every
``*_task-<t>_*space-<s>_desc-preproc_bold.nii*`` with its ``desc-brain_mask``, its
``desc-confounds_timeseries.tsv`` and the raw ``events.tsv`` of the run, and the TR from the
run's sidecar (else its header).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llm2nifti.errors import UsageError

__all__ = ["HumanRun", "fmri_runs", "events_key"]


@dataclass
class HumanRun:
    """One preprocessed fMRI run of one participant, and what it needs.

    Attributes
    ----------
    participant : str
    bold, mask, events, confounds : Path or None
        fMRIPrep's ``desc-preproc_bold``, its ``desc-brain_mask``, the raw ``events.tsv``, and
        fMRIPrep's ``desc-confounds_timeseries.tsv``.
    tr : float
    key : str
        The events file's name without ``sub-``/``ses-`` entities: pairs the run with the
        scan's words of the same events file (``task-pieman_run-1_events.tsv``).
    """

    participant: str
    bold: Path
    mask: Path | None
    events: Path
    confounds: Path | None
    tr: float
    key: str


def events_key(name):
    """An events file's name without the entities that differ between participants."""
    parts = [p for p in Path(name).name.split("_") if not p.startswith(("sub-", "ses-"))]
    return "_".join(parts)


def _tr(bold):
    import nibabel as nib

    sidecar = Path(str(bold).split(".nii")[0] + ".json")
    tr = json.loads(sidecar.read_text()).get("RepetitionTime") if sidecar.is_file() else None
    header = nib.load(str(bold)).header
    zooms = header.get_zooms()
    unit = header.get_xyzt_units()[1] if hasattr(header, "get_xyzt_units") else "sec"
    scale = {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
    in_header = float(zooms[3]) * scale if len(zooms) > 3 and zooms[3] > 0 else None
    if tr and in_header and abs(float(tr) - in_header) > 1e-3 * float(tr):
        raise UsageError(f"{Path(bold).name}: RepetitionTime {float(tr):g} s in its sidecar but "
                         f"{in_header:g} s in its header: correct the one that is wrong")
    if not (tr or in_header):
        raise UsageError(f"{Path(bold).name}: no RepetitionTime in its sidecar or header")
    return float(tr or in_header)


def fmri_runs(fmri, task, space=None, participants=None):
    """The preprocessed runs of a human BIDS dataset with fMRIPrep derivatives.

    Parameters
    ----------
    fmri : path
        The raw dataset (``sub-*/func/*_events.tsv``); fMRIPrep's outputs under
        ``derivatives/`` (any pipeline folder holding ``*_desc-preproc_bold.nii*``).
    task : str
    space : str, optional
        fMRIPrep's output space (default: the only one).
    participants : sequence of str, optional
        Default: every participant with runs of the task.

    Returns
    -------
    list of HumanRun
    """
    from bids_llm.naming import parse_name, participant_label

    root = Path(fmri)
    found = sorted((root / "derivatives").glob(f"*/sub-*/**/sub-*_task-{task}_*desc-preproc_bold.nii*"))
    if not found:
        raise UsageError(f"no fMRIPrep runs of task {task!r} under {root / 'derivatives'}: give "
                         "the raw dataset whose derivatives/ holds fMRIPrep's "
                         "*_desc-preproc_bold.nii.gz")
    spaces = sorted({parse_name(p.name)[0].get("space", "") for p in found})
    if space is None:
        if len(spaces) > 1:
            raise UsageError(f"runs in several spaces ({', '.join(spaces)}): choose one with --space")
        space = spaces[0]
    wanted = None if not participants else {participant_label(p) for p in participants}
    runs = []
    for bold in found:
        ents, _ = parse_name(bold.name)
        if ents.get("space", "") != space or (wanted and ents["sub"] not in wanted):
            continue
        stem = bold.name.split("_space-")[0]
        sub_dir = [f"sub-{ents['sub']}"] + ([f"ses-{ents['ses']}"] if "ses" in ents else [])
        events = root.joinpath(*sub_dir, "func", f"{stem}_events.tsv")
        if not events.is_file():
            raise UsageError(f"{bold.name} has no events file ({events.relative_to(root)}): the "
                             "words each run heard are read there")
        mask = bold.with_name(bold.name.replace("_desc-preproc_bold", "_desc-brain_mask"))
        confounds = bold.parent / f"{stem}_desc-confounds_timeseries.tsv"
        runs.append(HumanRun(ents["sub"], bold, mask if mask.is_file() else None, events,
                             confounds if confounds.is_file() else None, _tr(bold),
                             events_key(events.name)))
    if not runs:
        raise UsageError(f"no runs of task {task!r} in space {space!r} for participants "
                         f"{sorted(wanted) if wanted else 'any'}")
    return runs, space
