"""Derivative folders of a dataset: ``derivatives/<pipeline>/`` with its description."""

from __future__ import annotations

import json

from llm2nifti._version import __version__

from .io import write_json, write_text
from .naming import inside

__all__ = ["derivative_dir"]


def derivative_dir(root, pipeline, description, bids_version="1.10.0", ignore=()):
    """Create (if needed) ``root/derivatives/<pipeline>`` with its ``dataset_description.json``.

    Parameters
    ----------
    root : path
        The raw dataset.
    pipeline : str
        Folder name, e.g. ``"llm2nifti-canica"``.
    description : str
        The derivative's ``Name``.
    ignore : sequence of str
        ``.bidsignore`` patterns: files the BIDS specification does not cover yet
        (statistical maps of a contrast, connectomes, HTML pages), so that the validator
        (``--recursive``) checks the rest.

    Returns
    -------
    pathlib.Path
    """
    out = inside(root, "derivatives", pipeline)
    desc = out / "dataset_description.json"
    wanted = {
        "Name": description, "BIDSVersion": bids_version, "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "llm2nifti", "Version": __version__,
                         "Description": description}],
        "SourceDatasets": [{"URL": "file://../.."}],
    }
    if not desc.is_file() or json.loads(desc.read_text()) != wanted:
        write_json(desc, wanted)
    if ignore:
        text = "".join(f"{p}\n" for p in ignore)
        path = out / ".bidsignore"
        if not path.is_file() or path.read_text() != text:
            write_text(path, text)
    return out
