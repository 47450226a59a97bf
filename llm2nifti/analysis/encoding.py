"""Encoding models: a language model's networks predict the fMRI of people who heard the story.

Participants listened to a story in the scanner; the model read the same words (``convert
--words`` on the story's events files, so that each token knows when its word was heard).
Each network's word series (the signed mean of its units, as ``connectivity --signals mean``,
each word's value its last token's, as encoding studies pool) is placed at the words' onsets,
convolved with an HRF and sampled at each volume's slice-time reference (nilearn's
``compute_regressor``), or resampled to the volumes (Lanczos) and repeated at delays of 1-4
volumes (finite impulse response: each voxel's response shape is learnt), with two nuisance
regressors a reviewer asks for (word rate, word
length) and the fMRIPrep confounds the user names. The first and last ``trim`` seconds of each
run are left out and each run is z-scored. himalaya's ``RidgeCV`` fits one alpha per voxel
(a log grid, chosen by leave-one-run-out inside the training runs); the outer
cross-validation leaves one run out, the same folds for every voxel.

Per voxel: the held-out Pearson r and R^2 averaged over folds; the feature whose part of the
prediction (its regressors times their weights) correlates best with the held-out data; a null
from circular shifts of every run's features (at least ``min_shift`` seconds, longer than the
HRF), every fold refitted in closed form with the voxel's chosen penalty, with family-wise
error over voxels from the maximum r of each shift (:class:`EncodingModel`).

Written under ``FMRI/derivatives/llm2nifti-encoding/sub-<label>/func/`` in the human data's
space: ``..._stat-r_statmap.nii.gz``, ``..._stat-r2_statmap.nii.gz``,
``..._stat-pfwe_statmap.nii.gz``, ``..._stat-isc_statmap.nii.gz`` (the noise ceiling: the
correlation with the other participants who heard the same runs),
``..._stat-depth_statmap.nii.gz`` (the preferred depth), ``..._desc-bestnetwork_dseg.nii.gz``
(``bestlayer`` for layers and units; with its labels ``.tsv``), ``..._desc-networks_encoding.tsv``
(per feature: the voxels past FWE it predicts best and their r), ``..._clusters.tsv`` (every
cluster past FWE) and, with an atlas, ``..._regions.tsv``; with two participants or more, the
group's z and FWE p maps at the derivative's root. Every sidecar carries the parameters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bids_llm.fmriprep import events_key, fmri_runs
from bids_llm.naming import bids_name
from bids_llm.outputs import DERIVATIVES

from ..errors import UsageError
from .encoding_model import EncodingModel, feature_columns, zscore

__all__ = ["encode", "EncodingResult", "Features", "network_features", "layer_features",
           "unit_features", "unit_kernels", "atlas_table", "cluster_table", "word_times",
           "features_at_tr", "volume_operators", "lanczos_at_tr", "region_units",
           "preferred_depth", "group_map", "PIPELINE_ENCODING", "NUISANCE"]

log = logging.getLogger(__name__)

PIPELINE_ENCODING = DERIVATIVES["encoding"].pipeline


@dataclass
class Features:
    """A scan's word-level features for encoding.

    Attributes
    ----------
    kind : {"networks", "layers", "units"}
    names : list of str
        One per feature (a network, or a layer whose principal components or units are its
        columns).
    values : ndarray of shape (n_words, n_columns)
    widths : list of int
        Columns of each feature.
    depth : ndarray
        Each feature's relative depth in the model (0: first layer).
    runs, index, words :
        The scan's runs, :class:`~llm2nifti.acquisition.WordIndex` and word table.
    layout : NeuronLayout, optional
        ``kind="units"``: the units' layout (columns are its global unit indices).
    """

    kind: str
    names: list
    values: np.ndarray
    widths: list
    depth: np.ndarray
    runs: list
    index: object
    words: object
    layout: object = None

    @property
    def bounds(self):
        """Where each feature's columns begin (and the last ends)."""
        return np.concatenate([[0], np.cumsum(self.widths)]).astype(int)


def network_features(ds, participant, task, site, networks):
    """Each network's word series (signed mean of its units; a word's value its last token's)."""
    from .fingerprints import participant_networks

    nets = participant_networks(ds, participant, task, site, pool="last", networks_tsv=networks)
    return Features("networks", list(nets.names), np.asarray(nets.values, float),
                    [1] * len(nets.names), np.asarray(nets.depth), nets.runs, nets.index,
                    nets.words)


def _unit_series(ds, participant, task, site, why):
    """Every unit's word series (a word's value its last token's), float32."""
    from bids_llm.dataset import load_run

    from ..acquisition import participant_words
    from ..memory import check_fits

    runs, _, index = participant_words(ds, participant, task, site)
    layout = ds.layout(runs[0].participant, runs[0].site_kind)
    check_fits(len(index) * layout.n_neurons * 4 * 3,
               f"the word series of {layout.n_neurons:,} units over {len(index):,} words", why)
    words = index.pool(np.concatenate([load_run(r)[0] for r in runs]), "last")
    return runs, index, layout, np.asarray(words, np.float32)


def layer_features(ds, participant, task, site, n_components):
    """Each layer's first ``n_components`` principal components of its units' word series
    (a word's value its last token's), as encoding studies use a layer's activations."""
    from sklearn.decomposition import PCA

    runs, index, layout, words = _unit_series(
        ds, participant, task, site, "give networks as features (no --layer-pcs), or scan fewer "
        "layers")
    columns, names, widths = [], [], []
    for k, layer in enumerate(layout.site.layers):
        block = words[:, layout.offsets[k]:layout.offsets[k + 1]].astype(np.float64)
        n = min(n_components, block.shape[1], len(block) - 1)
        columns.append(PCA(n, random_state=0).fit_transform(zscore(block)))
        names.append(f"layer{int(layer):02d}")
        widths.append(n)
    depth = np.asarray([int(l) for l in layout.site.layers], float) / layout.site.n_layers
    return Features("layers", names, np.hstack(columns), widths, depth, runs, index,
                    index.table[["document_id", "word_index", "word"]])


def unit_features(ds, participant, task, site):
    """Every unit's word series (z-scored, float32), one feature per layer: the features of
    kernel ridge (:func:`unit_kernels`)."""
    runs, index, layout, words = _unit_series(
        ds, participant, task, site, "give networks or --layer-pcs as features, or scan fewer "
        "layers")
    words -= words.mean(axis=0)
    sd = words.std(axis=0)
    words /= np.where(sd > 0, sd, 1.0)
    names = [f"layer{int(layer):02d}" for layer in layout.site.layers]
    widths = [int(b - a) for a, b in zip(layout.offsets[:-1], layout.offsets[1:])]
    depth = np.asarray([int(l) for l in layout.site.layers], float) / layout.site.n_layers
    return Features("units", names, words, widths, depth, runs, index,
                    index.table[["document_id", "word_index", "word"]], layout)


def word_times(nets):
    """When each word of a scan's networks was heard: ``onset``, ``duration``, ``key``.

    ``nets`` is a :class:`~llm2nifti.analysis.fingerprints.ParticipantNetworks` of a scan
    converted with ``--words`` (its events hold ``word_onset`` and ``stimulus_file``).
    """
    import pandas as pd

    events = pd.concat([r.events() for r in nets.runs], ignore_index=True)
    if "word_onset" not in events:
        raise UsageError("the scan was not converted from events files: convert it with "
                         "`llm2nifti convert SCAN --words EVENTS.tsv ...` so that each token "
                         "knows when its word was heard")
    first = nets.index.table["first_token"].to_numpy()
    return pd.DataFrame({"onset": events["word_onset"].to_numpy(float)[first],
                         "duration": events["word_duration"].to_numpy(float)[first],
                         "key": [events_key(s) for s in events["stimulus_file"].to_numpy()[first]],
                         "length": nets.words["word"].str.len().to_numpy()})


def lanczos_at_tr(values, onsets, n_scans, tr, window=3, slice_time_ref=0.5):
    """Word features resampled to the volumes with a Lanczos kernel (cut-off at the TR's
    Nyquist frequency, ``window`` lobes), as encoding studies resample before FIR delays.

    Returns
    -------
    ndarray of shape (n_scans, n_features)
    """
    return _lanczos(onsets, n_scans, tr, window, slice_time_ref) @ np.asarray(values, float)


def _lanczos(onsets, n_scans, tr, window=3, slice_time_ref=0.5):
    times = (np.arange(n_scans) + slice_time_ref) * tr
    d = (times[:, None] - np.asarray(onsets, float)[None, :]) / tr
    return np.where(np.abs(d) < window, np.sinc(d) * np.sinc(d / window), 0.0)


def volume_operators(onsets, durations, n_scans, tr, hrf="glover", slice_time_ref=0.5,
                     delays=None):
    """The linear maps from the words' values to the volumes, one per delay.

    ``hrf`` (a nilearn HRF model): column ``i`` is nilearn's ``compute_regressor`` of word
    ``i`` alone (its onset and duration, amplitude 1), sampled at each volume's
    ``slice_time_ref``; a regressor of amplitudes ``v`` is then ``M @ v``, exactly as nilearn
    computes it (the regressor is linear in the amplitudes), for any number of features at
    once. ``hrf="fir"``: the Lanczos resampling (:func:`lanczos_at_tr`) shifted by each of
    ``delays`` volumes (default 1-4).

    Returns
    -------
    list of ndarray of shape (n_scans, n_words)
    """
    if hrf == "fir":
        base = _lanczos(onsets, n_scans, tr, slice_time_ref=slice_time_ref)
        out = []
        for d in (delays or (1, 2, 3, 4)):
            shifted = np.zeros_like(base)
            shifted[d:] = base[: n_scans - d]
            out.append(shifted)
        return out
    import warnings

    from nilearn.glm.first_level import compute_regressor

    frame_times = (np.arange(n_scans) + slice_time_ref) * tr
    M = np.zeros((n_scans, len(onsets)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*duration.*")
        for i, (onset, duration) in enumerate(zip(onsets, durations)):
            M[:, i] = compute_regressor(np.array([[onset], [duration], [1.0]]), hrf,
                                        frame_times, con_id="w", oversampling=16)[0][:, 0]
    return [M]


def features_at_tr(values, onsets, durations, n_scans, tr, hrf="glover", slice_time_ref=0.5,
                   delays=None):
    """Word features as BOLD regressors.

    ``hrf`` (a nilearn HRF model): impulses at the words' onsets scaled by each feature,
    convolved with the HRF and sampled at each volume's ``slice_time_ref`` (nilearn's
    ``compute_regressor``). ``hrf="fir"``: the features resampled to the volumes
    (:func:`lanczos_at_tr`) and repeated at each of ``delays`` (in volumes, default 1-4), so
    that the ridge learns each voxel's response shape. See :func:`volume_operators`.

    Returns
    -------
    ndarray of shape (n_scans, n_features) or (n_scans, n_features * n_delays)
        With delays, feature ``j`` at delay ``delays[k]`` is column ``k * n_features + j``.
    """
    values = np.asarray(values, float)
    return np.hstack([op @ values for op in volume_operators(onsets, durations, n_scans, tr, hrf,
                                                             slice_time_ref, delays)])


@dataclass
class EncodingResult:
    """What :func:`encode` found per human participant.

    Attributes
    ----------
    participants : dict
        Participant -> dict of ``r``, ``r2``, ``p_fwe`` (per voxel), ``best`` (index in
        ``names`` of the feature each voxel's prediction rests on most), ``unique`` (banded
        ridge's unique variances, else None), ``alphas``, ``isc``, ``depth``, ``model`` (the
        fitted :class:`~llm2nifti.analysis.EncodingModel`), ``masker`` and ``paths``; with
        ``regions``, ``units`` (region -> its ``networks.tsv``) and ``unit_scores`` (region ->
        every unit's absolute weight in its mean prediction).
    names : list of str
        The features: networks, or layers (``kind``), then the nuisance features.
    kind : {"networks", "layers", "units"}
    group : Path or None
        The group's z map (two participants or more).
    group_pfwe : Path or None
        Its FWE-corrected p map (sign-flipping permutations).
    """

    participants: dict = field(default_factory=dict)
    names: list = field(default_factory=list)
    kind: str = "networks"
    group: Path | None = None
    group_pfwe: Path | None = None


@dataclass
class _HeardRun:
    """One human run: the scan's word rows it heard, the maps from their values to its kept
    volumes (one per delay), and its TR."""

    rows: np.ndarray
    operators: list
    tr: float


def _design(heard, values):
    """The design of ``values`` (the scan's words x features): each run's regressors at every
    delay (delay-major columns), z-scored per run, the runs stacked."""
    values = np.asarray(values)
    return np.vstack([zscore(np.hstack([op @ values[h.rows] for op in h.operators]))
                      for h in heard])


def _check_transcript(run, rows, scan_words, column):
    """The words of a human run's events file are the scan's words of that file, in order;
    returns their onsets and durations."""
    from ..acquisition import read_word_events

    doc, t = read_word_events(run.events, column, what="the events file")
    theirs, ours = doc.text.split(" "), list(scan_words[rows])
    for i, (a, b) in enumerate(zip(theirs, ours)):
        if a != b:
            raise UsageError(f"{run.events.name} line {t.line[i]} has the word {a!r} where the "
                             f"scan read {b!r}: the transcript differs from the scan's text; "
                             "convert the scan with --words on this story's events files")
    if len(theirs) != len(ours):
        i = min(len(theirs), len(ours))
        raise UsageError(f"{run.events.name} has {len(theirs):,} words and the scan read "
                         f"{len(ours):,} of that file (first difference at word {i + 1}): "
                         "convert the scan with --words on this story's events files")
    return t.onset, t.duration


def _brain_masker(runs):
    """A masker of the runs' brain masks' intersection (else of the first run's own)."""
    from nilearn.maskers import NiftiMasker

    masks = [r.mask for r in runs if r.mask is not None]
    mask = None
    if masks:
        from nilearn.masking import intersect_masks

        mask = intersect_masks([str(m) for m in masks], threshold=1, connected=False)
    return NiftiMasker(mask_img=mask, standardize=None).fit(None if mask else str(runs[0].bold))


def _participant_data(runs, scan_times, scan_words, extra_confounds, trim, hrf, slice_time_ref,
                      delays=None, column="word"):
    """The BOLD of one participant's runs (trimmed, z-scored per run), the runs' word maps,
    the groups and the masker."""
    import nibabel as nib
    import pandas as pd

    masker = _brain_masker(runs)
    heard, Ys, groups = [], [], []
    for g, run in enumerate(runs):
        rows = np.flatnonzero(scan_times["key"].to_numpy() == run.key)
        if not len(rows):
            raise UsageError(f"{run.events.name} matches no events file the scan read "
                             f"({', '.join(sorted(set(scan_times['key'])))}): convert with "
                             "--words on this story's events files")
        onsets, durations = _check_transcript(run, rows, scan_words, column)
        n_scans = nib.load(str(run.bold)).shape[3]
        if onsets.max() >= n_scans * run.tr:
            raise UsageError(f"{run.bold.name}: {n_scans} volumes of {run.tr:g} s end at "
                             f"{n_scans * run.tr:g} s, before the last word of "
                             f"{run.events.name} ({onsets.max():g} s): the run and its events "
                             "file do not match")
        confounds = None
        if extra_confounds:
            if run.confounds is None:
                raise UsageError(f"--confounds: {run.bold.name} has no fMRIPrep confounds table")
            table = pd.read_csv(run.confounds, sep="\t")
            missing = [c for c in extra_confounds if c not in table]
            if missing:
                raise UsageError(f"--confounds {', '.join(missing)}: not columns of "
                                 f"{run.confounds.name}")
            confounds = table[list(extra_confounds)].fillna(0.0).to_numpy()
        drop = int(round(trim / run.tr))
        if n_scans - 2 * drop < 10:
            raise UsageError(f"{run.bold.name}: {n_scans} volumes leave fewer than 10 after "
                             f"trimming {trim} s at each end: lower --trim")
        keep = slice(drop, n_scans - drop)
        ops = volume_operators(onsets, durations, n_scans, run.tr, hrf, slice_time_ref, delays)
        heard.append(_HeardRun(rows, [op[keep] for op in ops], run.tr))
        Y = masker.transform(str(run.bold), confounds=confounds)
        Ys.append(zscore(Y[keep].astype(np.float64)))
        groups.append(np.full(keep.stop - keep.start, g))
    return heard, np.vstack(Ys), np.concatenate(groups), masker


def _check_memory(who, runs, n_kernels=0):
    """Refuse, from the headers, a participant whose voxels x volumes would not fit."""
    import nibabel as nib

    from ..memory import check_fits

    shapes = [nib.load(str(r.bold)).shape for r in runs]
    n_vox = int(np.prod(shapes[0][:3]))
    n_scans = sum(s[3] for s in shapes)
    # the BOLD (float32 as read, float64 z-scored), the held-out predictions and data, and
    # one chunk's ridge buffers; with units, the kernels and the dual weights
    need = n_vox * n_scans * (4 + 8 + 16) + min(n_vox, 20000) * n_scans * 8 * 4
    if n_kernels:
        need += n_scans * n_scans * 8 * n_kernels + n_vox * n_scans * 8
    check_fits(need, f"sub-{who}'s {len(runs)} runs of {n_vox:,} voxels x {n_scans:,} volumes",
               "encode fewer participants at a time (--fmri-participant), or runs in a coarser "
               "space (--space)")


def intersubject_correlation(who, runs, others, masker, Y, trim):
    """Each voxel's correlation between a participant's BOLD and the mean of the others who
    heard the same runs (a noise ceiling: what of the signal is shared, hence predictable from
    the story), on the same trimmed, z-scored volumes; None without another participant.

    ``others``: their runs; a participant is used when it has every run of ``runs`` (by the
    events file's name without ``sub-``) with the same number of volumes.
    """
    import nibabel as nib

    keys = [r.key for r in runs]
    lengths = [nib.load(str(r.bold)).shape[3] for r in runs]
    total, n = None, 0
    for q in sorted({r.participant for r in others} - {who}):
        theirs = {r.key: r for r in others if r.participant == q}
        if set(keys) - set(theirs) or any(nib.load(str(theirs[k].bold)).shape[3] != t
                                          for k, t in zip(keys, lengths)):
            log.info("sub-%s left out of sub-%s's noise ceiling: other runs", q, who)
            continue
        parts = []
        for k, t in zip(keys, lengths):
            drop = int(round(trim / theirs[k].tr))
            parts.append(zscore(masker.transform(str(theirs[k].bold))[drop:t - drop]
                                .astype(np.float64)))
        data = np.vstack(parts)
        total = data if total is None else total + data
        n += 1
    if not n:
        return None
    return (zscore(Y) * zscore(total / n)).mean(axis=0)


def _nuisance(times):
    """The nuisance features a reviewer asks for: word rate (an impulse per word) and word
    length (characters, z-scored)."""
    return np.column_stack([np.ones(len(times)), zscore(times[["length"]].to_numpy(float))])


def _unit_blocks(feats, heard, extra, chunk=2048):
    """The units' design, a block of units at a time: ``(feature, units, block)``, the block
    holding the units' columns at every delay (delay-major)."""
    for j in range(len(feats.widths)):
        a, b = feats.bounds[j], feats.bounds[j + 1]
        for c in range(a, b, chunk):
            d = min(c + chunk, b)
            yield j, np.arange(c, d), _design(heard, feats.values[:, c:d])
    for k in range(extra.shape[1]):
        yield len(feats.widths) + k, None, _design(heard, extra[:, [k]])


def unit_kernels(feats, heard, extra):
    """One linear kernel per layer of units (and per nuisance feature), each over its
    columns at every delay, scaled by the design's number of columns: the kernels of a ridge
    on all units at once, built a block of units at a time."""
    n = sum(len(h.operators[0]) for h in heard)
    n_delays = len(heard[0].operators)
    K = np.zeros((len(feats.widths) + extra.shape[1], n, n))
    for j, _, block in _unit_blocks(feats, heard, extra):
        K[j] += block @ block.T
    return K / ((feats.values.shape[1] + extra.shape[1]) * n_delays)


def _unit_weights(feats, heard, extra, dual):
    """Each unit's weight in a prediction from the dual weights ``dual`` (samples,): the
    design's transpose times them, summed over delays."""
    w = np.zeros(feats.values.shape[1])
    n_delays = len(heard[0].operators)
    for _, units, block in _unit_blocks(feats, heard, extra):
        if units is not None:
            w[units] = (block.T @ dual).reshape(n_delays, len(units)).sum(axis=0)
    return w


def encode(scan, fmri, *, estimator=None, networks=None, layer_pcs=0, units=False,
           participant=None, task=None, site=None, fmri_participants=None, space=None,
           confounds=(), hrf="glover", delays=(1, 2, 3, 4), slice_time_ref=0.5, trim=10.0,
           word_column="word", alpha=0.05, regions=(), top_percent=1.0, atlas=None,
           atlas_labels=None, output=None, threads=None, progress=False):
    """Fit, per human participant, an encoding model from the scan's features to their fMRI.

    Parameters
    ----------
    scan : path or Dataset
        A scan converted with ``--words`` on the story's events files.
    fmri : path
        The human BIDS dataset (raw events, fMRIPrep derivatives).
    estimator : EncodingModel, optional
        The ridge, its cross-validation and its null (default ``EncodingModel()``); cloned,
        with ``kernel`` set by the features (kernel ridge for ``units``).
    networks : path, optional
        The ``networks.tsv`` whose networks are the features (default: the scan's only one).
    layer_pcs : int
        N > 0: each layer's first N principal components of its units' word series are the
        features, one feature per layer; the map of the feature each voxel rests on is then
        the best-layer map.
    units : bool
        Every unit of the scan is a feature (kernel ridge: more columns than volumes), one
        feature per layer for the best-layer map; ``regions`` then rank the units by their own
        weights.
    participant, task, site : str, optional
        The scan's model, task and unit site (default: the only ones).
    fmri_participants : sequence of str, optional
        Human participants (default: all with runs of the task).
    space : str, optional
        fMRIPrep's output space (default: the only one).
    confounds : sequence of str
        Columns of fMRIPrep's confounds table regressed out of the BOLD (e.g. ``trans_x``).
    hrf : str
        nilearn's HRF model (``"glover"``, ``"spm"``), or ``"fir"``: the features resampled to
        the volumes (Lanczos) at each of ``delays`` (see :func:`features_at_tr`).
    delays : sequence of int
        ``hrf="fir"``: the delays, in volumes.
    slice_time_ref : float
        Where in each volume it is sampled (fMRIPrep's slice-timing reference is 0.5).
    trim : float
        Seconds left out at each end of each run.
    word_column : str
        The column of the human events files holding the words (as for ``convert --words``):
        each run's words must be the scan's words of that file.
    alpha : float
        FWE level of the voxels the tables count.
    regions : sequence of path
        Masks in the human data's space: for each, the units whose weights carry the region's
        prediction (see :func:`region_units`), written as a ``networks.tsv`` that ``evaluate``
        reads.
    top_percent : float
        Share of the model's units kept per region.
    atlas, atlas_labels : path, optional
        A labels image in the human data's space (and its ``dseg.tsv``): a table per
        participant of each region's voxels past FWE, r and best feature (:func:`atlas_table`).
    output : path, optional
        Default ``FMRI/derivatives/llm2nifti-encoding``.
    threads : int, optional
        torch CPU threads.
    progress : bool
        A progress bar over the human participants.

    Returns
    -------
    EncodingResult
    """
    from bids_llm.dataset import Dataset

    from ..acquisition import participant_words
    from ..models import set_threads

    set_threads(threads)
    model = _checked_model(estimator, alpha, layer_pcs, units, regions)
    ds = scan if isinstance(scan, Dataset) else Dataset(scan)
    if networks is None and not (layer_pcs or units):
        found = DERIVATIVES["networks"].find(ds.root, "_networks.tsv", participant)
        if len(found) != 1:
            raise UsageError(f"{len(found)} networks tables for the scan: choose one with "
                             "`networks` (from `llm2nifti networks`)")
        networks = found[0]
    runs, _, _ = participant_words(ds, participant, task, site)
    participant, task, site = runs[0].participant, runs[0].task, runs[0].site_kind
    humans, space = fmri_runs(fmri, task, space, fmri_participants)
    _before_any_work(humans, space, atlas, regions,
                     n_kernels=len(ds.layout(participant, site).site.layers) + 2 if units else 0)
    feats = (unit_features(ds, participant, task, site) if units else
             layer_features(ds, participant, task, site, layer_pcs) if layer_pcs else
             network_features(ds, participant, task, site, networks))
    times = word_times(feats)
    extra = _nuisance(times)
    result = EncodingResult(names=list(feats.names) + list(NUISANCE), kind=feats.kind)
    design = dict(hrf=hrf, delays=delays, slice_time_ref=slice_time_ref, trim=trim,
                  confounds=tuple(confounds), word_column=word_column)
    params = dict(features=result.names, kind=feats.kind,
                  networks=None if (layer_pcs or units) else str(networks),
                  layer_pcs=int(layer_pcs) or None, scan=str(ds.root),
                  model_participant=participant, site=site, hrf=hrf,
                  slice_time_ref=slice_time_ref, trim_s=trim,
                  delays=list(delays) if hrf == "fir" else None, confounds=list(confounds),
                  word_column=word_column, alpha=alpha, folds="leave one run out",
                  estimator={k: _jsonable(v) for k, v in model.get_params().items()})
    from tqdm.auto import tqdm

    for who in tqdm(sorted({r.participant for r in humans}), desc="participants",
                    disable=not progress):
        mine = [r for r in humans if r.participant == who]
        heard, masker = _fit_participant(result, who, mine, humans, feats, times, extra, model,
                                         design)
        result.participants[who]["paths"] = _write(
            who, task, space, masker, result, feats, mine, alpha, output, fmri,
            dict(params, runs=[r.bold.name for r in mine]))
        _extras(result, who, atlas, atlas_labels, alpha, regions, top_percent,
                (ds, participant, site, networks, feats, heard, extra))
    result.group, result.group_pfwe = group_map(result, task, space, output, fmri,
                                                n_permutations=model.n_permutations,
                                                random_state=model.random_state)
    return result


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def _checked_model(estimator, alpha, layer_pcs, units, regions):
    """The estimator to clone per participant (kernel ridge for units), after the checks."""
    from sklearn.base import clone

    if not 0 < alpha < 1:
        raise UsageError(f"alpha={alpha}: give a level between 0 and 1, e.g. 0.05")
    if layer_pcs and units:
        raise UsageError("`layer_pcs` and `units`: choose one kind of features")
    if layer_pcs and regions:
        raise UsageError("`regions` name the units of networks or of the whole model: give "
                         "networks or `units` as features, not `layer_pcs`")
    model = clone(estimator if estimator is not None else EncodingModel())
    model.set_params(kernel=bool(units))
    if model.n_permutations < 1:
        raise UsageError(f"n_permutations={model.n_permutations}: give at least 1 (1000 for a "
                         "p-value)")
    return model


def _before_any_work(humans, space, atlas, regions, n_kernels):
    """What can be refused from the headers and the masks: memory, and atlas and regions in
    another space or outside the brain."""
    for path, what in [(atlas, "--atlas"), *((r, "--region") for r in regions)]:
        _same_space(path, space, what)
    for who in sorted({r.participant for r in humans}):
        mine = [r for r in humans if r.participant == who]
        if len(mine) < 2:
            raise UsageError(f"sub-{who} has {len(mine)} run(s) of the task: leave-one-run-out "
                             "needs at least 2")
        _check_memory(who, mine, n_kernels=n_kernels)
        if atlas is not None or regions:
            masker = _brain_masker(mine)
            for path, what in [(atlas, "--atlas"), *((r, "--region") for r in regions)]:
                if path is not None:
                    _inside(path, masker, what)


def _fit_participant(result, who, mine, humans, feats, times, extra, model, design):
    """One human participant: the design (or kernels), the fit, the noise ceiling, the depth;
    into ``result.participants[who]``. Returns the runs' word maps and the masker."""
    from sklearn.base import clone

    heard, Y, groups, masker = _participant_data(
        mine, times, feats.words["word"].to_numpy(), design["confounds"], design["trim"],
        design["hrf"], design["slice_time_ref"], design["delays"], design["word_column"])
    if feats.kind == "units":
        X, columns = unit_kernels(feats, heard, extra), None
    else:
        X = _design(heard, np.column_stack([zscore(feats.values), extra]))
        if X.shape[1] > len(X):
            n_delays = len(heard[0].operators)
            what = (f"layer_pcs={feats.widths[0]}" if feats.kind == "layers"
                    else f"{len(feats.names)} networks")
            raise UsageError(f"{what} at {n_delays} delay(s) give {X.shape[1]:,} columns for "
                             f"sub-{who}'s {len(X):,} volumes: give fewer features, or set "
                             "`units` (kernel ridge)")
        columns = feature_columns(X.shape[1], list(feats.widths) + [1] * extra.shape[1])
    fitted = clone(model).fit(X, Y, groups, columns=columns, t_r=mine[0].tr)
    result.participants[who] = {
        "r": fitted.r_, "r2": fitted.r2_, "p_fwe": fitted.p_fwe_, "best": fitted.best_,
        "unique": fitted.parts_ if model.banded else None, "alphas": fitted.best_alphas_,
        "null_max": fitted.null_max_,
        "coef": None if feats.kind == "units" else fitted.feature_coef_,
        "isc": intersubject_correlation(who, mine, humans, masker, Y, design["trim"]),
        "depth": preferred_depth(fitted.parts_[: len(feats.names)], feats.depth),
        "model": fitted, "masker": masker}
    return heard, masker


NUISANCE = ("word_rate", "word_length")


def _same_space(path, space, what):
    """Refuse an image whose name says it is in another space than the runs."""
    if path is None:
        return
    from bids_llm.naming import parse_name

    name = Path(path).name
    theirs = parse_name(name)[0].get("space") if "space-" in name else None
    if theirs and space and theirs != space:
        raise UsageError(f"{what} {name} is in space {theirs}, the runs in {space}: give an "
                         f"image in {space} (resample it with nilearn or antsApplyTransforms)")


def _extras(result, who, atlas, atlas_labels, alpha, regions, top_percent, scan):
    """The cluster table, the atlas table and the units of each region, beside a
    participant's maps."""
    from bids_llm.tsv import write_frame

    res = result.participants[who]
    like = res["paths"]["table"]
    res["paths"]["clusters"] = like.with_name(like.name.replace("_encoding.tsv", "_clusters.tsv"))
    write_frame(res["paths"]["clusters"], cluster_table(result, who, alpha), index=False)
    if atlas is not None:
        res["paths"]["regions"] = like.with_name(like.name.replace("_encoding.tsv",
                                                                   "_regions.tsv"))
        write_frame(res["paths"]["regions"], atlas_table(result, who, atlas, atlas_labels, alpha),
                    index=False)
    if regions:
        res["units"], res["unit_scores"] = _region_units(scan, res, regions, top_percent, who)


def _inside(path, masker, what):
    """An image's voxels inside the runs' brain mask (nearest neighbour), refused when none."""
    from nilearn.image import resample_to_img

    img = resample_to_img(str(path), masker.mask_img_, interpolation="nearest",
                          force_resample=True, copy_header=True)
    values = np.rint(masker.transform(img).ravel()).astype(int)
    if not values.any():
        raise UsageError(f"{what} {Path(path).name} has no voxel inside the runs' brain mask: "
                         "give an image in the human data's space")
    return values


def atlas_table(result, who, atlas, labels=None, alpha=0.05):
    """Per region of an atlas (a labels image in the human data's space): its voxels, those
    past FWE, their mean and maximum r, and the feature most of them rest on.

    ``labels``: a BIDS ``dseg.tsv`` (``index``, ``name``) naming the regions.
    """
    import pandas as pd

    res = result.participants[who]
    region = _inside(atlas, res["masker"], "--atlas")
    names = {}
    if labels is not None:
        table = pd.read_csv(labels, sep="\t")
        if not {"index", "name"} <= set(table.columns):
            raise UsageError(f"--atlas-labels {Path(labels).name}: a dseg.tsv with index and "
                             "name columns")
        names = dict(zip(table["index"].astype(int), table["name"].astype(str)))
    past = res["p_fwe"] <= alpha
    rows = []
    for k in sorted(set(region) - {0}):
        inside = region == k
        rows.append({"index": int(k), "region": names.get(int(k), f"region{k}"),
                     "n_voxels": int(inside.sum()), "n_past_fwe": int((inside & past).sum()),
                     "mean_r": round(float(res["r"][inside].mean()), 6),
                     "max_r": round(float(res["r"][inside].max()), 6),
                     **_best_of(result, res, inside & past)})
    return pd.DataFrame(rows)


def _best_of(result, res, voxels):
    """The feature most of ``voxels`` rest on, and their share."""
    if not voxels.any():
        return {"best": None, "best_share": np.nan}  # written n/a
    counts = np.bincount(res["best"][voxels], minlength=len(result.names))
    return {"best": result.names[int(counts.argmax())],
            "best_share": round(float(counts.max() / voxels.sum()), 6)}


def cluster_table(result, who, alpha=0.05):
    """Every cluster of voxels past FWE ``alpha`` (faces touching, nilearn's
    ``get_clusters_table``): its peak's coordinates, its voxels, peak and mean r, the feature
    most of its voxels rest on and their share."""
    import pandas as pd
    from nilearn.reporting import get_clusters_table

    res = result.participants[who]
    columns = ["cluster", "x", "y", "z", "n_voxels", "peak_r", "mean_r", "best", "best_share"]
    past = res["p_fwe"] <= alpha
    if not past.any():
        return pd.DataFrame(columns=columns)
    masker = res["masker"]
    shown = np.where(past, res["r"], 0.0)
    floor = float(res["r"][past].min())
    img = masker.inverse_transform(shown.astype(np.float32))
    table, labels = get_clusters_table(img, floor * (1 - 1e-9), two_sided=False,
                                       return_label_maps=True)
    label = np.rint(masker.transform(labels[0]).ravel()).astype(int)
    peaks = table[table["Cluster ID"].astype(str).str.isdigit()]
    rows = []
    for _, peak in peaks.iterrows():
        k = int(peak["Cluster ID"])
        inside = (label == k) & past
        rows.append({"cluster": k, "x": float(peak["X"]), "y": float(peak["Y"]),
                     "z": float(peak["Z"]), "n_voxels": int(inside.sum()),
                     "peak_r": round(float(res["r"][inside].max()), 6),
                     "mean_r": round(float(res["r"][inside].mean()), 6),
                     **_best_of(result, res, inside)})
    return pd.DataFrame(rows, columns=columns)


def _region_label(path):
    """A region's label: its mask's ``desc`` entity, else its file name, letters and digits."""
    from bids_llm.naming import parse_name

    name = Path(path).name
    desc = parse_name(name)[0].get("desc") if "_desc-" in name else None
    return "".join(ch for ch in (desc or name.split(".")[0]) if ch.isalnum())[:32] or "region"


def preferred_depth(part, depth):
    """Each voxel's preferred model depth: the features' relative depths (mean layer of their
    units over the number of layers) weighted by their positive parts of the prediction (r of
    each part, or unique variance); NaN where no feature contributes."""
    w = np.clip(part, 0, None)
    total = w.sum(axis=0)
    return np.where(total > 0, (np.asarray(depth)[:, None] * w).sum(axis=0)
                    / np.where(total > 0, total, 1.0), np.nan)


def group_map(result, task, space, output, fmri, n_permutations=1000, random_state=0):
    """The group's r: a one-sample test over participants of each voxel's Fisher z (nilearn's
    SecondLevelModel, inside the intersection of their masks) as a z map, and its
    family-wise error corrected p map (nilearn's ``non_parametric_inference``: sign flips,
    maximum over voxels; with n participants no p is below 1 / 2^n). None, None with fewer than
    two participants."""
    import warnings

    import pandas as pd
    from nilearn.glm.second_level import SecondLevelModel, non_parametric_inference
    from nilearn.masking import intersect_masks

    from bids_llm.io import save_img, write_json
    from bids_llm.outputs import software

    people = sorted(result.participants)
    if len(people) < 2:
        return None, None
    maskers = [result.participants[p]["masker"] for p in people]
    mask = intersect_masks([m.mask_img_ for m in maskers], threshold=1, connected=False)
    maps = [m.inverse_transform(np.arctanh(np.clip(result.participants[p]["r"], -0.999999,
                                                   0.999999)).astype(np.float32))
            for p, m in zip(people, maskers)]
    design = pd.DataFrame({"intercept": np.ones(len(maps))})
    model = SecondLevelModel(mask_img=mask, smoothing_fwhm=None).fit(maps, design_matrix=design)
    z = model.compute_contrast("intercept", output_type="z_score")
    with warnings.catch_warnings():  # two participants: one degree of freedom, some t = 0/0
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        neg_log_p = non_parametric_inference(maps, design_matrix=design, mask=mask,
                                             n_perm=n_permutations, two_sided_test=False,
                                             random_state=random_state)
    root = DERIVATIVES["encoding"].create(fmri, output)
    paths = []
    for stat, img, what in [
            ("z", z, "group one-sample test of the participants' held-out r (Fisher z), nilearn "
                     "SecondLevelModel, z score"),
            ("pfwe", _p_of(neg_log_p), f"FWE-corrected p of the group test: {n_permutations} "
                                       "sign-flipping permutations, maximum over voxels (nilearn "
                                       f"non_parametric_inference); with {len(people)} "
                                       f"participants no p is below {2.0 ** -len(people):g}")]:
        path = root / bids_name("statmap", ".nii.gz", task=task, space=space or None,
                                desc=result.kind, stat=stat)
        save_img(img, path)
        write_json(path.with_name(path.name.replace(".nii.gz", ".json")), {
            "Description": what, "Participants": people, "Software": software("nilearn")})
        paths.append(path)
    return tuple(paths)


def _p_of(neg_log_p):
    from nilearn.image import math_img

    return math_img("np.power(10.0, -img)", img=neg_log_p)


def region_units(weights, sigma, coef, region, top_percent):
    """The units whose weights carry a region's prediction, best first.

    Each network's feature is the signed mean of its units (``weights``, networks x units),
    z-scored (``sigma``: its standard deviation); the region's mean ridge weight of each
    network (``coef``, features x voxels, over the ``region`` voxels) gives each unit its weight
    in the region's mean prediction, ``sum_j coef_j w_ju / sigma_j``. The ``top_percent`` of
    units by its absolute value (ties by index; units of no network are never chosen).

    Returns
    -------
    ndarray of int
        Global unit indices (layer-major).
    """
    beta = coef[: len(weights)][:, region].mean(axis=1)
    return _top_units(_network_unit_scores(weights, sigma, beta), top_percent)


def _network_unit_scores(weights, sigma, beta):
    return np.abs((beta / np.where(sigma > 0, sigma, 1.0)) @ weights)


def _top_units(score, top_percent):
    n = max(1, int(np.ceil(top_percent / 100 * len(score))))
    order = np.lexsort((np.arange(len(score)), -score))
    return np.array([u for u in order[:n] if score[u] > 0], dtype=np.int64)


def _region_units(scan, res, regions, top_percent, who):
    """A neuron-set TSV per region, beside the maps: what ``evaluate`` reads. With networks as
    features, each unit's weight through its networks (:func:`region_units`); with units as
    features, its own weight in the region's mean prediction (the design's transpose times the
    region's mean dual weights)."""
    from bids_llm.io import write_json

    from ..neuronset import NeuronSet

    ds, participant, site, networks, feats, heard, extra = scan
    layout = ds.layout(participant, site)
    masker, like = res["masker"], res["paths"]["r"]
    if feats.kind == "networks":
        from .connectomes import network_weights

        weights = network_weights(NeuronSet.from_tsv(networks), layout, list(feats.names))
        sigma = feats.values.std(axis=0)
    out, scores = {}, {}
    for path in regions:
        region = _inside(path, masker, "--region") > 0
        label = _region_label(path)
        if feats.kind == "networks":
            beta = res["coef"][: len(weights)][:, region].mean(axis=1)
            scores[label] = _network_unit_scores(weights, sigma, beta)
            how = "its mean ridge weight per network, through each unit's weight in its networks"
        else:
            dual = res["model"].dual_coef_[:, region].mean(axis=1)
            scores[label] = np.abs(_unit_weights(feats, heard, extra, dual))
            how = "each unit's own weight in the region's mean prediction (kernel ridge)"
        units = _top_units(scores[label], top_percent)
        tsv = like.with_name(like.name.split("_desc-")[0] + f"_desc-{label}_networks.tsv")
        NeuronSet.from_global(layout, units, name=f"region{label}").to_tsv(tsv)
        write_json(tsv.with_suffix(".json"), {
            "Description": f"The {top_percent:g}% of sub-{participant}'s units whose weights "
                           f"carry sub-{who}'s predicted BOLD in {Path(path).name} ({how})",
            "Region": str(path), "NVoxels": int(region.sum()), "TopPercent": top_percent,
            "Features": feats.kind, "Networks": None if networks is None else str(networks)})
        out[label] = tsv
    return out, scores


def _write(who, task, space, masker, result, feats, runs, alpha, output, fmri, params):
    """The participant's statistical maps, best-feature labels and table."""
    import pandas as pd

    from bids_llm.io import save_img, write_json
    from bids_llm.outputs import software
    from bids_llm.tsv import write_frame

    from nilearn import image

    res = result.participants[who]
    root = DERIVATIVES["encoding"].create(fmri, output)
    ents = dict(sub=who, task=task, space=space or None, desc=result.kind)
    path = DERIVATIVES["encoding"].path
    paths = {}
    fitted = res["model"]
    params = dict(params, alphas_chosen={"median": float(np.median(fitted.best_alphas_)),
                                         "min": float(fitted.best_alphas_.min()),
                                         "max": float(fitted.best_alphas_.max())},
                  n_folds=fitted.n_folds_, r_threshold_fwe=fitted.r_threshold(alpha),
                  null=fitted.null_)
    common = {"Parameters": params, "Software": software("nilearn", "himalaya", "scikit-learn")}
    stats = [("r", res["r"], "held-out Pearson r, mean over folds"),
             ("r2", res["r2"], "held-out R^2, mean over folds"),
             ("pfwe", res["p_fwe"], "FWE-corrected p of r: maximum over voxels of r under "
                                    + ("circular shifts of every run's features, folds refitted"
                                       if fitted.null_ == "refit" else
                                       "circular shifts of the held-out predictions "
                                       "(anti-conservative)"))]
    if res["unique"] is not None:
        for j, name in enumerate(result.names):
            label = "".join(ch for ch in name if ch.isalnum())
            stats.append(("r2split", res["unique"][j], f"{name}'s unique variance: its share "
                          "of the held-out R^2 (banded ridge, split scores)", label))
    stats.append(("depth", res["depth"], "preferred depth: the mean relative depth (0: first "
                  f"layer, 1: last) of the {result.kind}, weighted by each one's positive part "
                  "of the prediction"))
    if res["isc"] is not None:
        stats.append(("isc", res["isc"], "noise ceiling: correlation with the mean of the other "
                                         "participants who heard the same runs"))
    for stat, values, what, *desc in stats:
        key = stat if not desc else f"{stat}-{desc[0]}"
        named = dict(ents, desc=desc[0]) if desc else ents
        paths[key] = path(root, "statmap.nii.gz", stat=stat, **named)
        outside = 1.0 if stat == "pfwe" else 0.0  # no voxel outside the brain is significant
        img = masker.inverse_transform((values - outside).astype(np.float32))
        if outside:
            img = image.math_img(f"img + {outside}", img=img)
        save_img(img, paths[key])
        write_json(paths[key].with_name(paths[key].name.replace(".nii.gz", ".json")),
                   {"Description": what, **common})
    significant = res["p_fwe"] <= alpha
    labels = np.where(significant, res["best"] + 1, 0)
    paths["best"] = path(root, "dseg.nii.gz", **{
        **ents, "desc": "bestnetwork" if result.kind == "networks" else "bestlayer"})
    save_img(masker.inverse_transform(labels.astype(np.int16)), paths["best"])
    write_frame(paths["best"].with_name(paths["best"].name.replace(".nii.gz", ".tsv")),
                pd.DataFrame({"index": np.arange(1, len(result.names) + 1), "name": result.names}),
                index=False)
    rows = []
    for j, name in enumerate(result.names):
        mine = significant & (res["best"] == j)
        row = {"feature": name, "n_voxels": int(mine.sum()),
               "max_r": round(float(res["r"][mine].max()), 6) if mine.any() else np.nan,
               "mean_r": round(float(res["r"][mine].mean()), 6) if mine.any() else np.nan}
        if res["isc"] is not None:  # the share of the shared signal the feature predicts
            row["mean_isc"] = (round(float(res["isc"][mine].mean()), 6) if mine.any()
                               else np.nan)
        rows.append(row)
    paths["table"] = path(root, "encoding.tsv", **ents)
    write_frame(paths["table"], pd.DataFrame(rows), index=False)
    write_json(paths["table"].with_name(paths["table"].name.replace(".tsv", ".json")), {
        "Description": f"Per feature: the voxels past FWE {alpha:g} whose prediction rests on it "
                       "most", "NVoxelsPastFWE": int(significant.sum()), **common})
    return paths
