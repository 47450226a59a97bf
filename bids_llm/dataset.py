"""A BIDS-like dataset of model scans: writing it and reading it back.

Layout of a dataset::

    dataset_description.json  README  participants.tsv  participants.json  task-<set>_events.json
    code/llm2nifti/sub-<model>_task-<set>[_acq-<site>]_convert.json   settings of each convert (for --resume)
    sub-<model>/sub-<model>_scans.tsv                       finished runs + checksums
    sub-<model>/func/sub-<model>_task-<set>[_acq-<site>]_run-<n>_bold.nii   (+ .json, _events.tsv)
    derivatives/llm2nifti/dataset_description.json
    derivatives/llm2nifti/sub-<model>/anat/sub-<model>_desc-<site>_mask.nii
    derivatives/llm2nifti/sub-<model>/anat/sub-<model>_desc-<site>_dseg.nii  (+ .tsv, .json)

The default site (``mlp``) carries no ``acq`` entity; other sites (``residual``)
are told apart by ``acq-<site>``. The neuron layout is stored in every bold
sidecar (``NeuronLayout``) and in the dseg sidecar, and read back with
:meth:`Dataset.layout`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

import nibabel as nib
import numpy as np

from llm2nifti._version import __version__
from llm2nifti.errors import UsageError
from llm2nifti.layout import NeuronLayout
from llm2nifti.sites import SITE_KINDS

from .derivatives import derivative_dir
from .events import documents_tsv, read_documents, read_events
from .io import (CHECKSUMS, TMP_PREFIX, checksum_file, save_img, save_img_checksum, write_json,
                 write_text)
from .naming import bids_name, existing, inside, legacy_name, parse_name, participant_label
from .tsv import NA, TEXT_CELLS, read_rows, table_text, unescape

__all__ = ["DatasetWriter", "Dataset", "Run", "load_run", "run_layout", "check_finite", "BIDS_VERSION", "DEFAULT_SITE", "PIPELINE"]

BIDS_VERSION = "1.10.0"
DEFAULT_SITE = "mlp"
PIPELINE = "llm2nifti"
# Seconds a writer waits for another process's update of a shared table (milliseconds each).
SHARED_LOCK_TIMEOUT = 120
UNIT_STATS = ("mean", "std", "peak", "peak_token")
PARTICIPANT_COLUMNS = ("participant_id", "model", "architecture", "n_layers",
                       "neurons_per_layer", "n_parameters", "weights_sha256")
_PARTICIPANTS_JSON = {
    "participant_id": {"Description": "One participant per scanned language model"},
    "model": {"Description": "Model name, Hugging Face id or folder"},
    "architecture": {"Description": "transformers model_type"},
    "n_layers": {"Description": "Number of transformer layers"},
    "neurons_per_layer": {"Description": "MLP neurons per layer"},
    "n_parameters": {"Description": "Number of parameters"},
    "weights_sha256": {"Description": "First 16 hex digits of sha256 over the weights"},
}
EVENTS_JSON = {
    "onset": {"Description": "Token index times the TR", "Units": "s"},
    "duration": {"Description": "One TR per token", "Units": "s"},
    "token": {"Description": f"Decoded text of the token. {TEXT_CELLS}"},
    "token_id": {"Description": "Token id in the model's vocabulary"},
    "document_id": {"Description": "Identifier of the document the token belongs to (written as token)"},
    "position": {"Description": "Position of the token in its document (0: the BOS token)"},
    "char_start": {"Description": "First character of the document's text the token covers "
                                  "(the tokenizer's offset mapping; n/a: the BOS token)"},
    "char_end": {"Description": "One past the last character the token covers"},
    "word_index": {"Description": "Word of the document the token belongs to (0-based; words are "
                                  "maximal runs of non-whitespace characters; n/a: none). The "
                                  "texts are in stimuli/task-<label>_documents.tsv"},
}


HEARD_JSON = {
    "word_onset": {"Description": "When the participants heard the token's word: its onset in "
                                  "the events file it came from (convert --words; n/a: no word)",
                   "Units": "s"},
    "word_duration": {"Description": "How long the token's word lasted in that events file",
                      "Units": "s"},
    "stimulus_file": {"Description": "The events file that timed the token's word (n/a: none)"},
}


def events_description(conditions=None, heard=False):
    """The task's ``events.json``: its columns, the conditions of a localizer, and (``heard``)
    when participants heard each token's word."""
    if heard:
        return {**EVENTS_JSON, **HEARD_JSON}
    if not conditions:
        return EVENTS_JSON
    out = dict(EVENTS_JSON)
    out = {k: out[k] for k in ("onset", "duration")}
    out["trial_type"] = {
        "Description": "Condition of the item the token belongs to. The BOS token opening "
                       "each item has no row: those volumes are a GLM's baseline",
        "Levels": {c: f"tokens of {c} items" for c in conditions}}
    out.update({k: v for k, v in EVENTS_JSON.items() if k not in out})
    return out


def site_label(site_kind):
    """BIDS label of a site kind (labels are alphanumeric: ``mlp-out`` -> ``mlpout``)."""
    return site_kind.replace("-", "")


_SITE_OF_LABEL = {site_label(k): k for k in SITE_KINDS}


def site_of_label(label):
    """The site kind of an ``acq`` label (``mlpout`` -> ``mlp-out``); unknown labels as they are."""
    return _SITE_OF_LABEL.get(label, label)


def acq_for(site_kind):
    return None if site_kind == DEFAULT_SITE else site_label(site_kind)


def _read_tsv(path):
    """Rows of a table as dicts of text (``n/a`` kept as it is)."""
    header, rows = read_rows(path)
    return [{c: v if v == NA else unescape(v) for c, v in zip(header, r)} for r in rows]


def _tsv(rows, columns):
    return table_text(columns, rows)


def _matches_checksum(path, row):
    """True when the file's checksum equals the one its ``scans.tsv`` row holds.

    The row's first checksum of :data:`~bids_llm.io.CHECKSUMS` is used; a row with none
    (a damaged table) matches nothing.
    """
    for algorithm in CHECKSUMS:
        recorded = row.get(algorithm)
        if recorded not in (None, "", "n/a"):
            return checksum_file(path, algorithm) == recorded
    return False


def _writer_alive(tmp_name):
    """True when a temporary file's name says it belongs to another running process."""
    pid = tmp_name[len(TMP_PREFIX):].split("-", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def is_dataset(root):
    return (Path(root) / "dataset_description.json").is_file()


class DatasetWriter:
    """Writes runs, sidecars, events and derivatives of one ``(participant, task, site)``.

    Parameters
    ----------
    root : path
        Dataset folder (created if missing).
    participant, task : str
        BIDS labels (letters and digits).
    layout : NeuronLayout
    name : str
        Dataset name for a new ``dataset_description.json``.
    conditions : sequence of str, optional
        A localizer's conditions (the ``trial_type`` levels the task's ``events.json`` lists).
    heard : bool
        The events hold when participants heard each token's word (``convert --words``).
    """

    def __init__(self, root, participant, task, layout, name="llm2nifti scans", conditions=None,
                 heard=False):
        self.root = Path(root)
        self.participant = participant
        self.task = task
        self.layout = layout
        self.acq = acq_for(layout.site.kind)
        self.name = name
        self.conditions = list(conditions) if conditions else None
        self.heard = bool(heard)

    # ----------------------------------------------------------------- paths
    @property
    def sub_dir(self):
        return inside(self.root, f"sub-{self.participant}")

    def bold_path(self, run, ext=".nii"):
        return self.sub_dir / "func" / bids_name(
            "bold", ext, sub=self.participant, task=self.task, acq=self.acq, run=run)

    def sidecar_path(self, run):
        return self.bold_path(run, ".json")

    def events_path(self, run):
        return self.sub_dir / "func" / bids_name(
            "events", ".tsv", sub=self.participant, task=self.task, acq=self.acq, run=run)

    @property
    def scans_path(self):
        return self.sub_dir / f"sub-{self.participant}_scans.tsv"

    @property
    def deriv_dir(self):
        return inside(self.root, "derivatives", PIPELINE)

    @property
    def plan_path(self):
        """Settings of this convert, kept under ``code/`` (which BIDS leaves unvalidated)."""
        return inside(self.root, "code", PIPELINE, bids_name(
            "convert", ".json", sub=self.participant, task=self.task, acq=self.acq))

    def anat_path(self, suffix, ext):
        return self.deriv_dir / f"sub-{self.participant}" / "anat" / bids_name(
            suffix, ext, sub=self.participant, desc=site_label(self.layout.site.kind))

    @property
    def unit_stats_path(self):
        """Each unit's mean, std, peak over this task's tokens (a derivative, float64)."""
        return self.deriv_dir / f"sub-{self.participant}" / "func" / bids_name(
            "statmap", ".nii", sub=self.participant, task=self.task, acq=self.acq, desc="unitstats")

    def write_unit_stats(self, volumes, n_tokens, runs):
        """Write ``(4, n_neurons)`` layer-major statistics (mean, std, peak, peak token)."""
        layout = self.layout
        buf = layout.empty_buffer(len(volumes), dtype=np.float64)
        layout.fill_buffer(buf, np.asarray(volumes))
        save_img(layout.buffer_to_img(buf, tr=1.0), self.unit_stats_path)
        write_json(self.unit_stats_path.with_suffix(".json"), {
            "TaskName": self.task, "RepetitionTime": 1.0, "SkullStripped": False,
            "Description": "Each unit over every token of this task's runs: volume 0 mean, 1 standard "
                           "deviation (ddof=1), 2 peak |activation|, 3 token of the peak (index over "
                           "the runs in order); written by llm2nifti convert",
            "Volumes": list(UNIT_STATS), "NTokens": int(n_tokens),
            "Runs": [f"sub-{self.participant}/func/{Path(r).name}" for r in runs],
        })
        old = self.unit_stats_path.with_name(legacy_name(self.unit_stats_path.name))
        for stale in (old, old.with_suffix(".json")):  # an earlier version's name, now replaced
            stale.unlink(missing_ok=True)

    # ----------------------------------------------------------------- locks
    def _lock_path(self, name):
        path = inside(self.root, "code", PIPELINE, name)  # code/ is not validated by BIDS
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.contextmanager
    def exclusive(self):
        """Hold this (participant, task, site) for one writer; refuse a second at once."""
        name = "." + bids_name("convert", ".lock", sub=self.participant, task=self.task, acq=self.acq)
        lock = FileLock(self._lock_path(name), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise UsageError(
                f"another llm2nifti convert is writing sub-{self.participant} task-{self.task}"
                f"{'' if self.acq is None else ' acq-' + self.acq} in {self.root}: wait for it to "
                "finish (then --resume), or choose another --task, --participant or output") from None
        try:
            yield self
        finally:
            lock.release()

    @contextlib.contextmanager
    def shared(self):
        """Hold the dataset's shared tables (participants.tsv, scans.tsv, top-level files)."""
        lock = FileLock(self._lock_path(".dataset.lock"), timeout=SHARED_LOCK_TIMEOUT)
        try:
            lock.acquire()
        except Timeout:
            raise UsageError(f"{self.root} stayed locked by another llm2nifti process for "
                             f"{SHARED_LOCK_TIMEOUT} s: check that no convert hangs, then retry") from None
        try:
            yield
        finally:
            lock.release()

    # ------------------------------------------------------------- top level
    def existing_runs(self):
        """Paths of this (participant, task, site)'s bold files already on disk."""
        func = self.sub_dir / "func"
        if not func.is_dir():
            return []
        out = []
        for p in sorted(func.glob("*_bold.nii*")):
            ents, _ = parse_name(p.name)
            if ents.get("task") == self.task and ents.get("acq") == self.acq:
                out.append(p)
        return out

    def remove_existing(self):
        """Delete this (participant, task, site)'s runs and conversion record (``--overwrite``)."""
        for bold in self.existing_runs():
            ents, _ = parse_name(bold.name)
            for p in (bold, self.sidecar_path(ents["run"]), self.events_path(ents["run"])):
                p.unlink(missing_ok=True)
        self.plan_path.unlink(missing_ok=True)
        with self.shared():
            rows = [r for r in self.finished().values()]
            self._write_scans([r for r in rows if not self._ours(r["filename"])])

    def _ours(self, filename):
        ents, _ = parse_name(filename)
        return ents.get("task") == self.task and ents.get("acq") == self.acq

    @property
    def documents_path(self):
        """The texts this task's documents hold (BIDS ``stimuli/``), for the word axis."""
        return inside(self.root, "stimuli", bids_name("documents", ".tsv", task=self.task))

    def check_documents(self, documents):
        """The task's stimuli table, refused when it gives one of ``documents``' ids another text."""
        path = self.documents_path
        known = read_documents(path) if path.is_file() else {}
        for doc_id, text in documents:
            if known.get(doc_id, text) != text:
                raise UsageError(
                    f"task {self.task} already holds document {doc_id!r} with another text: "
                    "pass another --task for other texts")
        return known

    def write_documents(self, documents):
        """Add ``(document_id, text)`` pairs to the task's stimuli table.

        Refused when the table already holds one of the ids with another text: two
        participants of one task must have read the same documents.
        """
        path = self.documents_path
        with self.shared():
            known = self.check_documents(documents)
            new = dict(known, **dict(documents))
            if new != known or not path.is_file():
                write_text(path, documents_tsv(new.items()))

    def init_dataset(self):
        """Write the top-level files if missing (a second model adds to them)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.shared():
            self._init_dataset()

    def _init_dataset(self):
        if not is_dataset(self.root):
            write_json(self.root / "dataset_description.json", {
                "Name": self.name, "BIDSVersion": BIDS_VERSION, "DatasetType": "raw",
                "GeneratedBy": [{"Name": PIPELINE, "Version": __version__}],
            })
        if not (self.root / "README").is_file():
            write_text(self.root / "README", README_TEXT)
        if not (self.root / "participants.json").is_file():
            write_json(self.root / "participants.json", _PARTICIPANTS_JSON)
        events_json = self.root / bids_name("events", ".json", task=self.task)
        if not events_json.is_file():
            write_json(events_json, events_description(self.conditions, self.heard))
        derivative_dir(self.root, PIPELINE, "Neuron masks and labels", BIDS_VERSION,
                       ignore=("*_statmap.*",))

    def add_participant(self, row):
        """Add or replace this participant's row in ``participants.tsv``."""
        path = self.root / "participants.tsv"
        pid = f"sub-{self.participant}"
        with self.shared():
            rows = _read_tsv(path) if path.is_file() else []
            rows = [r for r in rows if r["participant_id"] != pid]
            rows.append({"participant_id": pid, **row})
            rows.sort(key=lambda r: r["participant_id"])
            write_text(path, _tsv(rows, PARTICIPANT_COLUMNS))

    def check_layout(self):
        """Refuse when the participant already has a different layout for this site."""
        dseg_json = self.anat_path("dseg", ".json")
        if dseg_json.is_file():
            stored = NeuronLayout.from_dict(json.loads(dseg_json.read_text())["NeuronLayout"])
            if stored != self.layout:
                raise UsageError(
                    f"sub-{self.participant} already has a {self.layout.site.kind} layout with "
                    f"layers {list(stored.layers)}: pass --participant for a new participant or a new --output")

    def write_layout(self):
        """Mask, label image and label table of the layout under ``derivatives/llm2nifti``."""
        with self.shared():
            self._write_layout()

    def _write_layout(self):
        self.check_layout()
        dseg_json = self.anat_path("dseg", ".json")
        if dseg_json.is_file():
            return
        save_img(self.layout.mask_img(), self.anat_path("mask", ".nii"))
        save_img(self.layout.label_img(), self.anat_path("dseg", ".nii"))
        layer, neuron = self.layout.neurons()
        site = self.layout.site
        rows = [{"index": g + 1, "name": f"L{l}N{n}", "site": site.kind, "layer": l, "neuron": n,
                 "head": site.head(n)} for g, (l, n) in enumerate(zip(layer, neuron))]
        columns = ("index", "name", "site", "layer", "neuron") + (("head",) if site.head_dim else ())
        write_text(self.anat_path("dseg", ".tsv"), _tsv(rows, columns))
        write_json(dseg_json, {"Description": "Neuron labels: label = 1 + layer-major neuron index",
                               "NeuronLayout": self.layout.to_dict()})

    # ------------------------------------------------------------------ runs
    def finished(self):
        """Finished runs recorded in ``scans.tsv``: ``{filename: row}``."""
        if not self.scans_path.is_file():
            return {}
        return {r["filename"]: r for r in _read_tsv(self.scans_path)}

    def _write_scans(self, rows):
        rows = sorted(rows, key=lambda r: r["filename"])
        # One column per checksum in use: runs kept from an older convert keep their sha256.
        sums = tuple(c for c in CHECKSUMS if any(r.get(c) not in (None, "", "n/a") for r in rows))
        write_text(self.scans_path, _tsv(rows, ("filename",) + (sums or CHECKSUMS[:1]) + ("n_volumes",)))

    def run_done(self, run, ext=".nii", verify=True):
        """True when ``run`` is recorded as finished and its file matches its checksum."""
        bold = self.bold_path(run, ext)
        rel = f"func/{bold.name}"
        row = self.finished().get(rel)
        if row is None or not bold.is_file():
            return False
        if not (self.sidecar_path(run).is_file() and self.events_path(run).is_file()):
            return False
        return not verify or _matches_checksum(bold, row)

    def write_run(self, run, img, sidecar, events_text, ext=".nii"):
        """Write one run's bold image, sidecar and events, then record it as finished.

        Each file is renamed into place only once complete; the run counts as
        finished only after all three exist and its checksum is in ``scans.tsv``.
        """
        bold = self.bold_path(run, ext)
        write_text(self.events_path(run), events_text)
        write_json(self.sidecar_path(run), sidecar)
        digest = save_img_checksum(img, bold, CHECKSUMS[0])
        rel = f"func/{bold.name}"
        row = {"filename": rel, CHECKSUMS[0]: digest, "n_volumes": img.shape[3]}
        with self.shared():
            rows = self.finished()
            rows[rel] = row
            self._write_scans(rows.values())
        return bold

    def clean_temporaries(self):
        """Remove temporary files that interrupted writers left behind.

        A temporary file is named after the process writing it; those of a
        process still running (another convert into the same dataset) are kept.
        """
        if not self.root.is_dir():
            return
        with self.shared():
            for p in self.root.rglob(f"{TMP_PREFIX}*"):
                if _writer_alive(p.name):
                    continue
                if p.is_file():
                    p.unlink(missing_ok=True)
                elif p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)


README_TEXT = """\
Scans of language models made by llm2nifti.

Each participant (sub-<label>) is a language model; each run is one forward pass of the
model over a stretch of text; each volume is one token (TR = 1 s, a convention); each voxel
is one neuron. Every layer is one z slice and its neurons are folded into an x-y grid; the
exact neuron of each voxel is given by the label image and table in
derivatives/llm2nifti/sub-<label>/anat/ (label = 1 + layer-major neuron index) and by the
NeuronLayout field of each bold sidecar. Voxels outside the mask are padding.

The images share one identity affine: with nilearn, always pass the dataset's mask
(derivatives/llm2nifti/.../_mask.nii), smoothing_fwhm=None, detrend=False and
standardize="zscore_sample"; never resample.

Events: one row per token (onset, duration, token text, token id, document id, position in
the document, the characters of the document it covers and the word it belongs to). The texts
read are in stimuli/task-<label>_documents.tsv.
"""


@dataclass
class Run:
    """One run of a dataset: its bold path and entities."""

    path: Path
    participant: str
    task: str
    run: int
    acq: str | None

    @property
    def sidecar(self):
        return Path(str(self.path).split(".nii")[0] + ".json")

    @property
    def events_path(self):
        return Path(str(self.path).split("_bold.nii")[0] + "_events.tsv")

    @property
    def site_kind(self):
        return _SITE_OF_LABEL.get(self.acq, self.acq) if self.acq else DEFAULT_SITE

    def metadata(self):
        return json.loads(self.sidecar.read_text())

    def events(self):
        return read_events(self.events_path)


class Dataset:
    """Read a dataset written by ``llm2nifti convert``.

    Parameters
    ----------
    root : path
    """

    def __init__(self, root):
        self.root = Path(root)
        if not is_dataset(self.root):
            raise UsageError(f"{self.root} is not a dataset (no dataset_description.json): "
                             "pass the folder `llm2nifti convert` wrote")

    def participants(self):
        path = self.root / "participants.tsv"
        return _read_tsv(path) if path.is_file() else []

    def runs(self, participant=None, task=None, run=None, site=None):
        """Runs matching the BIDS entity filters (each a value, a list, or None for all).

        A participant is named with or without its ``sub-`` prefix, as BIDS apps take it.
        """
        if participant is not None:
            participant = ([participant_label(p) for p in participant]
                           if isinstance(participant, (list, tuple, set)) else participant_label(participant))
        def ok(value, wanted):
            if wanted is None:
                return True
            wanted = wanted if isinstance(wanted, (list, tuple, set)) else [wanted]
            return value in {type(value)(w) if value is not None else w for w in wanted}

        found = []
        for p in sorted(self.root.glob("sub-*/func/sub-*_bold.nii*")):
            if p.name.startswith(TMP_PREFIX):
                continue
            ents, _ = parse_name(p.name)
            r = Run(p, ents["sub"], ents.get("task"), ents.get("run"), ents.get("acq"))
            if (ok(r.participant, participant) and ok(r.task, task) and ok(r.run, run)
                    and ok(r.site_kind, site)):
                found.append(r)
        return found

    def layout(self, participant=None, site=None):
        """The :class:`NeuronLayout` of a participant's runs (must be unique)."""
        runs = self.runs(participant=participant, site=site)
        if not runs:
            raise UsageError(f"no runs in {self.root} for participant={participant}, site={site}")
        layouts = {NeuronLayout.from_dict(r.metadata()["NeuronLayout"]) for r in runs}
        if len(layouts) > 1:
            raise UsageError("the selected runs have different neuron layouts: "
                             "choose one participant and site (--participant, --site)")
        return layouts.pop()

    def check_runs(self, runs, finite=True):
        """Refuse runs that are damaged: unreadable, truncated, not what convert recorded, or
        holding values that are not finite (with ``finite``, :func:`check_finite`).

        Each run's checksum is compared with the one ``scans.tsv`` holds (one read
        of every file). Raises :class:`UsageError` naming the run and how to redo it.
        """
        redo = "redo it with `llm2nifti convert` and the same options plus --resume"
        recorded = {}
        for run in runs:
            if run.participant not in recorded:
                path = self.root / f"sub-{run.participant}" / f"sub-{run.participant}_scans.tsv"
                recorded[run.participant] = ({r["filename"]: r for r in _read_tsv(path)}
                                             if path.is_file() else {})
            row = recorded[run.participant].get(f"func/{run.path.name}")
            if row is None:
                raise UsageError(f"{run.path.name} is not recorded as finished in "
                                 f"sub-{run.participant}_scans.tsv: {redo}")
            _check_size(run.path, redo)
            if not _matches_checksum(run.path, row):
                raise UsageError(f"{run.path.name} does not match its checksum in scans.tsv "
                                 f"(it changed after convert wrote it): {redo}")
            if finite:
                X, neurons = load_run(run)
                check_finite(X, run.path, neurons)
                del X

    def unit_stats(self, participant, task, site=DEFAULT_SITE):
        """``{mean, std, peak, peak_token}`` arrays (layer-major) written by convert, or None.

        None when the derivative is missing (a dataset of an older version) or does not
        cover the task's runs as they are now.
        """
        acq = None if site == DEFAULT_SITE else site_label(site)
        path = existing(inside(self.root, "derivatives", PIPELINE, f"sub-{participant}", "func",
                               bids_name("statmap", ".nii", sub=participant, task=task, acq=acq,
                                         desc="unitstats")))
        sidecar = path.with_suffix(".json")
        runs = self.runs(participant=participant, task=task, site=site)
        if not (path.is_file() and sidecar.is_file() and runs):
            return None
        meta = json.loads(sidecar.read_text())
        tokens = sum(int(r.metadata()["TokenRange"][1] - r.metadata()["TokenRange"][0]) for r in runs)
        if meta.get("NTokens") != tokens:
            return None
        layout = self.layout(participant, site)
        values = layout.unfold(nib.load(str(path)))
        return dict(zip(meta.get("Volumes", UNIT_STATS), values))

    def documents(self, task):
        """``{document_id: text}`` of the task's stimuli table, or None (older datasets)."""
        path = inside(self.root, "stimuli", bids_name("documents", ".tsv", task=task))
        return read_documents(path) if path.is_file() else None

    def mask_path(self, participant, site=DEFAULT_SITE):
        return inside(self.root, "derivatives", PIPELINE, f"sub-{participant}", "anat",
                      bids_name("mask", ".nii", sub=participant, desc=site_label(site)))

    def label_path(self, participant, site=DEFAULT_SITE):
        return inside(self.root, "derivatives", PIPELINE, f"sub-{participant}", "anat",
                      bids_name("dseg", ".nii", sub=participant, desc=site_label(site)))


def _check_size(path, redo):
    """An uncompressed run must hold the bytes its header announces."""
    try:
        img = nib.load(str(path), mmap=False)
    except Exception as exc:  # nibabel raises several types for unreadable headers
        raise UsageError(f"cannot read {path.name} as NIfTI ({exc}): {redo}") from None
    if path.suffix != ".nii":
        return
    header = img.header
    expected = int(header.get_data_offset()) + int(np.prod(img.shape)) * header.get_data_dtype().itemsize
    size = path.stat().st_size
    if size < expected:
        raise UsageError(f"{path.name} is truncated ({size} of {expected} bytes): {redo}")


def check_finite(X, path, neurons):
    """Refuse a run ``(T, units)`` holding NaN or inf, in one line naming its first such value.

    A model run in float16 can overflow (``convert`` refuses such a run, but an older version
    or another tool may have written one); one such value makes every analysis of the run
    undefined (an SVD fails; nilearn would carry it on silently).
    """
    bad = ~np.isfinite(X)
    if bad.any():
        t, u = np.argwhere(bad)[0]
        raise UsageError(
            f"{Path(path).name} holds {int(bad.sum())} values that are not finite (NaN or inf), the "
            f"first at token {t}, layer {neurons['layer'].iloc[u]} neuron {neurons['neuron'].iloc[u]}: "
            "the model overflowed while it was recorded; convert it again with --dtype float32 "
            "and --overwrite")


def _as_run(run):
    if isinstance(run, Run):
        return run
    p = Path(run)
    ents, _ = parse_name(p.name)
    return Run(p, ents.get("sub"), ents.get("task"), ents.get("run"), ents.get("acq"))


def run_layout(run):
    """The :class:`NeuronLayout` a run was recorded with (from its sidecar).

    Parameters
    ----------
    run : Run or path
        A :class:`Run` or the path of a ``_bold.nii[.gz]`` with its sidecar.

    Raises
    ------
    UsageError
        When the run has no sidecar or its sidecar no ``NeuronLayout``.
    """
    run = _as_run(run)
    try:
        layout = run.metadata()["NeuronLayout"]
    except (OSError, ValueError, KeyError):
        raise UsageError(f"{run.path.name} has no sidecar with a NeuronLayout: pass runs that "
                         "`llm2nifti convert` wrote, or give the layout") from None
    return NeuronLayout.from_dict(layout)


def load_run(run, mmap=True):
    """Load a run back as a ``(tokens, neurons)`` float32 array.

    Parameters
    ----------
    run : Run or path
        A :class:`Run` or the path of a ``_bold.nii[.gz]`` with its sidecar.
    mmap : bool
        Memory-map uncompressed ``.nii`` files.

    Returns
    -------
    X : ndarray of shape (n_tokens, n_neurons)
        Layer-major columns.
    neurons : pandas.DataFrame
        One row per column: ``layer`` and ``neuron``.
    """
    import pandas as pd

    run = _as_run(run)
    layout = run_layout(run)
    img = nib.load(str(run.path), mmap=mmap)
    X = np.ascontiguousarray(layout.unfold(img), dtype=np.float32)
    layer, neuron = layout.neurons()
    return X, pd.DataFrame({"layer": layer, "neuron": neuron})
