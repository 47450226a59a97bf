"""Derivative folders of a dataset: ``derivatives/<pipeline>/`` with its description."""

from __future__ import annotations

import json

from llm2nifti._version import __version__

from .io import write_json
from .naming import inside

__all__ = ["derivative_dir"]


def derivative_dir(root, pipeline, description, bids_version="1.10.0"):
    """Create (if needed) ``root/derivatives/<pipeline>`` with its ``dataset_description.json``.

    Parameters
    ----------
    root : path
        The raw dataset.
    pipeline : str
        Folder name, e.g. ``"llm2nifti-canica"``.
    description : str
        The derivative's ``Name``.

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
    return out
