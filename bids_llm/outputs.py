"""Every derivative llm2nifti writes, in one table: folders, file names, sidecars' provenance,
earlier names still read, and when an existing file may be reused.

Each workflow writes through :data:`DERIVATIVES` (``DERIVATIVES["networks"].path(...)``) and
every reader, the report included, finds files through it (``.find(...)``): no other module
globs file names. A derivative lives in ``DATASET/derivatives/<pipeline>/`` (or a folder the
user chose); a participant's files lie in ``sub-<label>/func/``, ``sub-<label>/`` or the
folder itself (``level``), named ``<prefix>_<suffix><ext>`` where the prefix is made of BIDS
entities (``sub-X_task-Y_desc-Z``).

===============  ==============================  =====================================================
key              folder                          files (``<prefix>_...``)
===============  ==============================  =====================================================
components       llm2nifti-<method>/sub-X/func   components.nii, stat-z_components.nii (+ .json),
                                                 stability.tsv, estimates.tsv
networks         llm2nifti-networks              networks.tsv, summary.tsv, keyneurons.tsv, .json
recurrence       llm2nifti-recurrence            recurrence.tsv, templates.tsv, networks.tsv, .png
glm              llm2nifti-glm/sub-X/func        stat-<t|z|effect>_statmap.nii, networks.tsv, flatmap.png
connectivity     llm2nifti-connectivity          meas-<m>_connectome.tsv/.png, timeseries.tsv,
                                                 connectivity.json, matches.tsv, comparison.json/.png
fingerprint      llm2nifti-fingerprint/sub-X     fingerprint.tsv/.json/.png, isc.tsv, pairs.tsv, ...
diff             llm2nifti-diff/sub-X/func       units.tsv, networks.tsv, layers.tsv/.png, diff.json
evaluation       any folder                      evaluation.json, results.tsv, summary.tsv, .png
===============  ==============================  =====================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .naming import bids_name, inside

__all__ = ["Derivative", "DERIVATIVES", "software", "reusable_components"]


def software(*packages):
    """The provenance block of every sidecar: ``{"llm2nifti": version, package: version, ...}``.

    Versions are read from the installed distributions (nothing is imported); ``"python"`` is
    the interpreter's.
    """
    import platform

    from llm2nifti._version import __version__

    out = {"llm2nifti": __version__}
    for name in packages:
        if name == "python":
            out[name] = platform.python_version()
            continue
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # pragma: no cover - a required package
            out[name] = "not installed"
    return out


@dataclass(frozen=True)
class Derivative:
    """One kind of derivative: where its files lie and how they are named.

    Parameters
    ----------
    pipeline : str
        Folder under ``derivatives/`` (``{method}`` is filled in by :meth:`root`).
    description : str
        The ``Name`` of its ``dataset_description.json``.
    level : {"func", "sub", "root"}
        Where a participant's files lie: ``sub-X/func``, ``sub-X`` or the folder itself.
    ignore : tuple of str
        ``.bidsignore`` patterns: the files BIDS does not define yet.
    legacy : tuple of (str, str)
        ``(part of a name, what an earlier version wrote instead)``: the first that applies
        to a searched suffix gives the earlier name, also found.
    """

    pipeline: str
    description: str
    level: str = "root"
    ignore: tuple = ()
    legacy: tuple = ()

    def root(self, dataset_root, output=None, **fill):
        """The derivative's folder (not created): ``output``, else under ``derivatives/``."""
        if output is not None:
            return Path(output)
        return inside(dataset_root, "derivatives", self.pipeline.format(**fill))

    def create(self, dataset_root, output=None, **fill):
        """:meth:`root`, created with its ``dataset_description.json`` and ``.bidsignore``
        (a folder of the user's, ``output``, is only created)."""
        from .derivatives import derivative_dir

        if output is not None:
            Path(output).mkdir(parents=True, exist_ok=True)
            return Path(output)
        return derivative_dir(dataset_root, self.pipeline.format(**fill),
                              self.description.format(**fill), ignore=self.ignore)

    def folder(self, root, participant):
        """Where ``participant``'s files lie under a derivative folder ``root``."""
        if self.level == "root":
            return Path(root)
        if self.level == "sub":
            return inside(root, f"sub-{participant}")
        return inside(root, f"sub-{participant}", "func")

    def path(self, root, suffix, **entities):
        """``root``'s file ``<entities>_<suffix>`` (``suffix`` holds the extension), placed by
        ``level`` under ``entities["sub"]``."""
        name = bids_name(suffix, "", **entities)
        return inside(self.folder(root, entities.get("sub")), name)

    def find(self, dataset_root, suffix, participant=None, output=None, **fill):
        """Existing files ``*_<suffix>`` of ``participant`` (every participant: None), in name
        order, earlier versions' names included; ``suffix`` may hold ``*``.

        ``fill``: the ``pipeline``'s fields (``method="*"`` searches every method's folder).
        """
        roots = ([Path(output)] if output is not None else
                 sorted((Path(dataset_root) / "derivatives").glob(self.pipeline.format(**fill))))
        sub = "*" if participant is None else participant
        suffixes = [suffix]
        for new, old in self.legacy:
            if new in suffix:
                suffixes.append(suffix.replace(new, old, 1))
                break
        found = set()
        for root in roots:
            base = root if self.level == "root" else (
                root / f"sub-{sub}" if self.level == "sub" else root / f"sub-{sub}" / "func")
            lead = f"sub-{sub}_" if self.level != "root" or participant is not None else ""
            for s in suffixes:
                found.update(p for p in _glob(base, f"{lead}*{s}") if p.is_file())
        return sorted(found, key=lambda p: (str(p.parent), p.name))


def _glob(base, pattern):
    """``base.glob(pattern)`` where ``base`` may itself hold ``*``."""
    parts = Path(base).parts
    for i, part in enumerate(parts):
        if "*" in part:
            return Path(*parts[:i]).glob(str(Path(*parts[i:], pattern)))
    return Path(base).glob(pattern)


#: Every derivative, by key.
DERIVATIVES = {
    "components": Derivative(
        "llm2nifti-{method}", "llm2nifti {method}: spatial maps over neurons", level="func",
        ignore=("*_components.*", "*_stability.tsv", "*_estimates.tsv"),
        legacy=(("_stat-z_components.", "Z_bold."), ("_components.", "_bold."))),
    "networks": Derivative("llm2nifti-networks", "llm2nifti networks: exact neuron sets"),
    "recurrence": Derivative("llm2nifti-recurrence", "llm2nifti recurrence"),
    "glm": Derivative("llm2nifti-glm", "GLM localizer statistical maps", level="func",
                      ignore=("*_statmap.*", "*_networks.*", "*_flatmap.png")),
    "connectivity": Derivative(
        "llm2nifti-connectivity", "Connectomes between networks (nilearn ConnectivityMeasure)",
        ignore=("*_connectome.*", "*_timeseries.tsv", "*_connectivity.json", "*_matches.tsv",
                "*_comparison.*")),
    "fingerprint": Derivative(
        "llm2nifti-fingerprint", "Functional-network fingerprints", level="sub",
        ignore=("**/*_fingerprint.tsv", "**/*_fingerprint.json", "**/*_spearman.tsv",
                "**/*_pearson.tsv", "**/*_pairs.tsv", "**/*_isc.tsv", "**/*_rsa.tsv",
                "**/*_rsap.tsv", "**/*_cka.tsv", "**/*.png")),
    "diff": Derivative(
        "llm2nifti-diff", "Differences between two checkpoints", level="func",
        ignore=("**/*_statmap.*", "**/*_units.*", "**/*_networks.*", "**/*_layers.*",
                "**/*_diff.json", "**/*_components.*", "**/*_stability.tsv",
                "**/*_estimates.tsv")),
    "words": Derivative("llm2nifti-words", "Word-level runs"),
    "encoding": Derivative(
        "llm2nifti-encoding", "Encoding models: a language model's networks predicting fMRI",
        level="func", ignore=("**/*_statmap.*", "**/*_encoding.*", "**/*_networks.*",
                              "**/*_dseg.*", "**/*_regions.*")),
    "report": Derivative("llm2nifti-report", "HTML reports, one page per participant",
                         ignore=("*.html",)),
    "evaluation": Derivative("*", "llm2nifti evaluate"),
}


def reusable_components(dataset_root, runs, desc, method, parameters):
    """An existing components image of ``runs`` named ``desc`` whose sidecar records
    ``parameters``, or None: the one rule by which a decomposition is reused.

    Parameters
    ----------
    dataset_root : path
    runs : list of Run
        The runs it must have been made from (its ``Sources``, in any order).
    desc : str
        Its ``desc`` label.
    method : str
        Its method (the folder ``llm2nifti-<method>``).
    parameters : dict
        Sidecar fields it must hold (``Backend``, ``Parameters`` -- a subset of the sidecar's
        -- and ``NDecompositions``); a parameter the sidecar lacks counts as its default in
        ``defaults``.
    """
    root = Path(dataset_root)
    sources = sorted(str(Path(r.path).relative_to(root)) for r in runs)
    want_params = dict(parameters.get("Parameters", {}))
    defaults = parameters.get("Defaults", {})
    found = DERIVATIVES["components"].find(root, f"_desc-{desc}_components.nii",
                                           participant=runs[0].participant, method=method)
    for path in found:
        sidecar = Path(str(path).split(".nii")[0] + ".json")
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        params = {**defaults, **meta.get("Parameters", {})}
        if (sorted(meta.get("Sources", [])) == sources
                and meta.get("Backend") == parameters.get("Backend")
                and all(params.get(k) == v for k, v in want_params.items())
                and meta.get("Stability", {}).get("NDecompositions", 1)
                == parameters.get("NDecompositions", 1)):
            return path
    return None
