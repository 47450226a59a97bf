"""A space-labelled view of a task's runs, so that nilearn's ``first_level_from_bids`` finds them.

nilearn's entry point to a GLM looks for preprocessed runs in a derivative folder, named
like fMRIPrep's (``..._space-<label>_desc-preproc_bold.nii``), and for a brain mask per
run (``..._space-<label>_desc-brain_mask.nii``). Raw runs of a model scan need no
preprocessing, so the view holds relative symbolic links to them (no copy; a hard link
where the file system has no symbolic links), plus one link to the neuron mask per run;
only the small JSON sidecars are written, with the ``SpatialReference`` a derivative needs::

    derivatives/llm2nifti-space/dataset_description.json
    derivatives/llm2nifti-space/sub-<m>/func/sub-<m>_task-<t>_run-01_space-neurons_desc-preproc_bold.nii  -> raw run
    derivatives/llm2nifti-space/sub-<m>/func/sub-<m>_task-<t>_run-01_space-neurons_desc-preproc_bold.json  the raw sidecar + SpatialReference
    derivatives/llm2nifti-space/sub-<m>/func/sub-<m>_task-<t>_run-01_space-neurons_desc-brain_mask.nii    -> neuron mask (+ .json)

The space label ``neurons`` says the grid is the dataset's neuron layout, not a brain
template. Events stay in the raw dataset, where nilearn reads them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .derivatives import derivative_dir
from .io import write_json
from .naming import bids_name, inside, parse_name

__all__ = ["space_view", "SPACE", "SPACE_PIPELINE"]

SPACE = "neurons"
SPACE_PIPELINE = "llm2nifti-space"


def _link(target, link):
    """``link`` -> ``target`` (relative), replaced atomically when it exists."""
    tmp = link.with_name(f".tmp-{os.getpid()}-{link.name}")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    try:
        tmp.symlink_to(os.path.relpath(target, link.parent))
    except OSError:  # no symbolic links here (some Windows set-ups): a hard link
        os.link(target, tmp)
    os.replace(tmp, link)


def _in_dataset(path, root):
    """``path`` relative to the dataset's root, as a BIDS URI path (both resolved)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix()


def space_view(root, runs, mask):
    """Write (or refresh) the links of ``runs`` and their mask in ``derivatives/llm2nifti-space``.

    Parameters
    ----------
    root : path
        The raw dataset.
    runs : list of path
        Bold files of one participant's task (``.nii`` or ``.nii.gz``).
    mask : path
        The neuron mask of their site.

    Returns
    -------
    list of Path
        The linked bold files, in run order.
    """
    out = derivative_dir(root, SPACE_PIPELINE,
                         "Links to the raw runs under a space label, for nilearn's first_level_from_bids")
    linked = []
    for run in runs:
        run = Path(run)
        ents, _ = parse_name(run.name)
        ext = ".nii.gz" if run.name.endswith(".nii.gz") else ".nii"
        keys = dict(sub=ents["sub"], task=ents.get("task"), acq=ents.get("acq"), run=ents.get("run"))
        func = inside(out, f"sub-{ents['sub']}", "func")
        func.mkdir(parents=True, exist_ok=True)
        stem = bids_name("bold", "", **keys).rsplit("_bold", 1)[0]
        bold = func / f"{stem}_space-{SPACE}_desc-preproc_bold{ext}"
        _link(run, bold)
        mask_link = func / f"{stem}_space-{SPACE}_desc-brain_mask.nii"
        _link(Path(mask), mask_link)
        # Sidecars are written (they are small and need a SpatialReference the raw ones lack).
        raw = json.loads(Path(str(run).split(".nii")[0] + ".json").read_text())
        reference = f"bids::{_in_dataset(mask, root)}"
        write_json(bold.with_name(bold.name.split(".nii")[0] + ".json"), dict(
            raw, SpatialReference=reference, SkullStripped=False,
            Sources=[f"bids::{_in_dataset(run, root)}"]))
        write_json(mask_link.with_suffix(".json"), {
            "SpatialReference": reference, "Type": "Brain",
            "Description": "The dataset's neuron mask (every recorded unit)"})
        linked.append(bold)
    return linked
