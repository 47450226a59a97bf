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

Per voxel: the held-out Pearson r and R^2 averaged over folds; the network whose part of the
prediction (its regressor times its weight) correlates best with the held-out data; a null
from circular shifts of the held-out prediction against the data (at least ``min_shift``
seconds, longer than the HRF; for a linear model this is the prediction of circularly shifted
features), with family-wise error over voxels from the maximum r of each shift.

Written under ``FMRI/derivatives/llm2nifti-encoding/sub-<label>/func/`` in the human data's
space: ``..._stat-r_statmap.nii.gz``, ``..._stat-r2_statmap.nii.gz``,
``..._stat-pfwe_statmap.nii.gz``, ``..._stat-isc_statmap.nii.gz`` (the noise ceiling: the
correlation with the other participants who heard the same runs),
``..._desc-bestnetwork_dseg.nii.gz`` (with its labels
``.tsv``) and ``..._desc-networks_encoding.tsv`` (per network: the voxels past FWE it
predicts best and their r); every sidecar carries the parameters.
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

__all__ = ["encode", "EncodingResult", "Features", "network_features", "layer_features",
           "atlas_table",
           "word_times", "features_at_tr",
           "lanczos_at_tr", "region_units", "preferred_depth", "group_map", "PIPELINE_ENCODING"]

log = logging.getLogger(__name__)

PIPELINE_ENCODING = DERIVATIVES["encoding"].pipeline
ALPHAS = np.logspace(-2, 8, 21)


@dataclass
class Features:
    """A scan's word-level features for encoding.

    Attributes
    ----------
    kind : {"networks", "layers"}
    names : list of str
        One per feature (a network, or a layer whose principal components are its columns).
    values : ndarray of shape (n_words, n_columns)
    widths : list of int
        Columns of each feature.
    depth : ndarray
        Each feature's relative depth in the model (0: first layer).
    runs, index, words :
        The scan's runs, :class:`~llm2nifti.acquisition.WordIndex` and word table.
    """

    kind: str
    names: list
    values: np.ndarray
    widths: list
    depth: np.ndarray
    runs: list
    index: object
    words: object


def network_features(ds, participant, task, site, networks):
    """Each network's word series (signed mean of its units; a word's value its last token's)."""
    from .fingerprints import participant_networks

    nets = participant_networks(ds, participant, task, site, pool="last", networks_tsv=networks)
    return Features("networks", list(nets.names), np.asarray(nets.values, float),
                    [1] * len(nets.names), np.asarray(nets.depth), nets.runs, nets.index,
                    nets.words)


def layer_features(ds, participant, task, site, n_components):
    """Each layer's first ``n_components`` principal components of its units' word series
    (a word's value its last token's), as encoding studies use a layer's activations."""
    from sklearn.decomposition import PCA

    from bids_llm.dataset import load_run

    from ..acquisition import participant_words
    from ..memory import check_fits

    runs, _, index = participant_words(ds, participant, task, site)
    layout = ds.layout(runs[0].participant, runs[0].site_kind)
    check_fits(len(index) * layout.n_neurons * 8 * 3,
               f"the word series of {layout.n_neurons:,} units over {len(index):,} words",
               "give networks as features (no --layer-pcs), or scan fewer layers")
    words = index.pool(np.concatenate([load_run(r)[0] for r in runs]), "last")
    columns, names, widths = [], [], []
    for k, layer in enumerate(layout.site.layers):
        block = words[:, layout.offsets[k]:layout.offsets[k + 1]].astype(np.float64)
        n = min(n_components, block.shape[1], len(block) - 1)
        columns.append(PCA(n, random_state=0).fit_transform(_zscore(block)))
        names.append(f"layer{int(layer):02d}")
        widths.append(n)
    depth = np.asarray([int(l) for l in layout.site.layers], float) / layout.site.n_layers
    return Features("layers", names, np.hstack(columns), widths, depth, runs, index,
                    index.table[["document_id", "word_index", "word"]])


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
    times = (np.arange(n_scans) + slice_time_ref) * tr
    d = (times[:, None] - np.asarray(onsets)[None, :]) / tr
    kernel = np.where(np.abs(d) < window, np.sinc(d) * np.sinc(d / window), 0.0)
    return kernel @ np.asarray(values, float)


def features_at_tr(values, onsets, durations, n_scans, tr, hrf="glover", slice_time_ref=0.5,
                   delays=None):
    """Word features as BOLD regressors.

    ``hrf`` (a nilearn HRF model): impulses at the words' onsets scaled by each feature,
    convolved with the HRF and sampled at each volume's ``slice_time_ref`` (nilearn's
    ``compute_regressor``). ``hrf="fir"``: the features resampled to the volumes
    (:func:`lanczos_at_tr`) and repeated at each of ``delays`` (in volumes, default 1-4), so
    that the ridge learns each voxel's response shape.

    Returns
    -------
    ndarray of shape (n_scans, n_features) or (n_scans, n_features * n_delays)
        With delays, feature ``j`` at delay ``delays[k]`` is column ``k * n_features + j``.
    """
    values = np.asarray(values, float)
    if hrf == "fir":
        base = lanczos_at_tr(values, onsets, n_scans, tr, slice_time_ref=slice_time_ref)
        out = []
        for d in (delays or (1, 2, 3, 4)):
            shifted = np.zeros_like(base)
            shifted[d:] = base[: n_scans - d]
            out.append(shifted)
        return np.hstack(out)
    from nilearn.glm.first_level import compute_regressor

    frame_times = (np.arange(n_scans) + slice_time_ref) * tr
    out = np.zeros((n_scans, values.shape[1]))
    for j in range(values.shape[1]):
        condition = np.vstack([onsets, durations, values[:, j]])
        out[:, j] = compute_regressor(condition, hrf, frame_times, con_id=str(j),
                                      oversampling=16)[0][:, 0]
    return out


def _zscore(a):
    a = a - a.mean(axis=0)
    sd = a.std(axis=0)
    return a / np.where(sd > 0, sd, 1.0)


@dataclass
class EncodingResult:
    """What :func:`encode` found per human participant.

    Attributes
    ----------
    participants : dict
        Participant -> dict of ``r``, ``r2``, ``p_fwe`` (per voxel), ``best`` (index of the
        network each voxel's prediction rests on most), ``alphas``, ``table`` and ``paths``.
    names : list of str
        The features: networks, or layers (``kind``).
    kind : {"networks", "layers"}
    group : Path or None
        The group's z map (two participants or more).
    """

    participants: dict = field(default_factory=dict)
    names: list = field(default_factory=list)
    kind: str = "networks"
    group: Path | None = None


def _model(alphas, inner, columns, banded, random_state):
    """himalaya's RidgeCV (one alpha per voxel), or BandedRidgeCV with one band per feature
    (its delays together): one regularisation per band and voxel, by random search."""
    from himalaya.ridge import BandedRidgeCV, RidgeCV

    if not banded:
        return RidgeCV(alphas=alphas, cv=inner)
    bands = np.zeros(sum(len(c) for c in columns), dtype=int)
    for j, c in enumerate(columns):
        bands[c] = j
    return BandedRidgeCV(groups=bands, cv=inner, random_state=random_state,
                         solver_params=dict(n_iter=banded, alphas=alphas, progress_bar=False))


def _unique_variance(model, X, Y, to_numpy):
    """Each band's share of the held-out R^2 (himalaya's split scores: they sum to the R^2)."""
    import warnings

    from himalaya.scoring import r2_score_split

    with warnings.catch_warnings():  # the held-out data are z-scored per run, hence centred
        warnings.filterwarnings("ignore", message="y_true has to be zero-mean")
        return to_numpy(r2_score_split(Y - Y.mean(axis=0), model.predict(X, split=True)))


def _fit_fold(X, Y, train, test, inner, alphas, columns, chunk, banded=0, random_state=0):
    """One outer fold, in voxel chunks (each voxel's ridge is its own: chunks change nothing
    but the memory): held-out r, R^2, each feature's part's r (``banded``: its unique
    variance), the z-scored held-out prediction and data, and the alphas chosen."""
    from himalaya.backend import get_backend

    to_numpy = get_backend().to_numpy
    n_vox = Y.shape[1]
    r, r2, chosen = np.zeros(n_vox), np.zeros(n_vox), np.zeros(n_vox)
    n_features = len(columns)
    part, weights = np.zeros((n_features, n_vox)), np.zeros((n_features, n_vox))
    p_all, y_all = np.zeros((len(test), n_vox)), np.zeros((len(test), n_vox))
    for a in range(0, n_vox, chunk):
        b = min(a + chunk, n_vox)
        model = _model(alphas, inner, columns, banded, random_state).fit(X[train], Y[train, a:b])
        pred = to_numpy(model.predict(X[test]))
        y, p = _zscore(Y[test, a:b]), _zscore(pred)
        r[a:b] = (p * y).mean(axis=0)
        r2[a:b] = 1 - (((Y[test, a:b] - pred) ** 2).sum(0)
                       / np.maximum((Y[test, a:b] ** 2).sum(0), 1e-12))
        coef = to_numpy(model.coef_)
        # a feature's weight: summed over its delays (the area of its response)
        weights[:, a:b] = np.stack([coef[c].sum(axis=0) for c in columns])
        if banded:
            part[:, a:b] = _unique_variance(model, X[test], Y[test, a:b], to_numpy)
            chosen[a:b] = np.exp(-to_numpy(model.deltas_)).mean(axis=0)  # mean over bands
        else:
            part[:, a:b] = np.stack([(_zscore(X[test][:, c] @ coef[c]) * y).mean(axis=0)
                                     for c in columns])
            chosen[a:b] = to_numpy(model.best_alphas_)
        p_all[:, a:b], y_all[:, a:b] = p, y
    return r, r2, part, (p_all, y_all), chosen, weights


def _fold_scores(X, Y, groups, alphas, widths, chunk=20000, banded=0, random_state=0):
    """Leave-one-run-out: held-out r and R^2 per voxel, each feature's part's r (its columns
    of ``X``: ``widths`` columns per feature, or one each for an int, at every delay), the mean
    weights, and the held-out predictions (for the null)."""
    widths = [1] * widths if isinstance(widths, int) else list(widths)
    return _fold_scores_of(X, Y, groups, alphas, _columns(X.shape[1], widths), chunk,
                           banded, random_state)


def _columns(n_columns, widths):
    """The columns of each feature (``widths[j]`` columns: a network's one, a layer's
    principal components) at every delay (blocks of ``sum(widths)`` columns)."""
    block = int(sum(widths))
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(int)
    return [np.concatenate([np.arange(d + a, d + a + w) for d in range(0, n_columns, block)])
            for a, w in zip(starts, widths)]


def _fold_scores_of(X, Y, groups, alphas, columns, chunk, banded=0, random_state=0):
    from sklearn.model_selection import KFold, LeaveOneGroupOut

    folds = []
    for train, test in LeaveOneGroupOut().split(X, Y, groups):
        inner = (list(LeaveOneGroupOut().split(X[train], Y[train], groups[train]))
                 if len(np.unique(groups[train])) > 1 else list(KFold(5).split(X[train])))
        folds.append(_fit_fold(X, Y, train, test, inner, alphas, columns, chunk, banded,
                               random_state))
    r, r2, part, held, chosen, weights = zip(*folds)
    return (np.mean(r, axis=0), np.mean(r2, axis=0), np.mean(part, axis=0), list(held),
            np.exp(np.mean(np.log(chosen), axis=0)), np.mean(weights, axis=0))


def _null_max(held, n_permutations, min_shift, random_state, chunk=20000):
    """Maximum over voxels of the fold-averaged r of circularly shifted predictions."""
    rng = np.random.default_rng(random_state)
    lengths = [len(y) for _, y in held]
    if min(lengths) <= 2 * min_shift:
        raise UsageError(f"held-out runs of {min(lengths)} volumes are too short for circular "
                         f"shifts of at least {min_shift} volumes: lower --min-shift or trim less")
    shifts = np.stack([rng.integers(min_shift, n - min_shift + 1, n_permutations)
                       for n in lengths], axis=1)
    n_vox = held[0][1].shape[1]
    best = np.full(n_permutations, -np.inf)
    for a in range(0, n_vox, chunk):
        acc = np.zeros((n_permutations, min(chunk, n_vox - a)))
        for f, (p, y) in enumerate(held):
            n = len(y)
            cc = np.fft.irfft(np.fft.rfft(p[:, a:a + chunk], axis=0)
                              * np.conj(np.fft.rfft(y[:, a:a + chunk], axis=0)), n=n, axis=0) / n
            acc += cc[shifts[:, f]]
        best = np.maximum(best, (acc / len(held)).max(axis=1))
    return best


def _check_memory(who, runs):
    """Refuse, from the headers, a participant whose voxels x volumes would not fit."""
    import nibabel as nib

    from ..memory import check_fits

    shapes = [nib.load(str(r.bold)).shape for r in runs]
    n_vox = int(np.prod(shapes[0][:3]))
    n_scans = sum(s[3] for s in shapes)
    # the BOLD (float32 as read, float64 z-scored), the held-out predictions and data, and
    # one chunk's ridge buffers
    check_fits(n_vox * n_scans * (4 + 8 + 16) + min(n_vox, 20000) * n_scans * 8 * 4,
               f"sub-{who}'s {len(runs)} runs of {n_vox:,} voxels x {n_scans:,} volumes",
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
            parts.append(_zscore(masker.transform(str(theirs[k].bold))[drop:t - drop]
                                 .astype(np.float64)))
        data = np.vstack(parts)
        total = data if total is None else total + data
        n += 1
    if not n:
        return None
    return (_zscore(Y) * _zscore(total / n)).mean(axis=0)


def _participant_data(runs, scan_times, values, extra_confounds, trim, hrf, slice_time_ref,
                      delays=None):
    """Design and BOLD matrices of one participant's runs, trimmed and z-scored per run."""
    import nibabel as nib
    import pandas as pd
    from nilearn.maskers import NiftiMasker

    masks = [r.mask for r in runs if r.mask is not None]
    mask = None
    if masks:
        from nilearn.masking import intersect_masks

        mask = intersect_masks([str(m) for m in masks], threshold=1, connected=False)
    masker = NiftiMasker(mask_img=mask, standardize=None).fit(None if mask else str(runs[0].bold))
    Xs, Ys, groups = [], [], []
    for g, run in enumerate(runs):
        words = scan_times[scan_times["key"] == run.key]
        if words.empty:
            raise UsageError(f"{run.events.name} matches no events file the scan read "
                             f"({', '.join(sorted(set(scan_times['key'])))}): convert with "
                             "--words on this story's events files")
        n_scans = nib.load(str(run.bold)).shape[3]
        X = features_at_tr(values[words.index.to_numpy()], words["onset"].to_numpy(),
                           words["duration"].to_numpy(), n_scans, run.tr, hrf, slice_time_ref,
                           delays)
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
        Y = masker.transform(str(run.bold), confounds=confounds)
        keep = slice(int(round(trim / run.tr)), n_scans - int(round(trim / run.tr)))
        if keep.stop - keep.start < 10:
            raise UsageError(f"{run.bold.name}: {n_scans} volumes leave fewer than 10 after "
                             f"trimming {trim} s at each end: lower --trim")
        Xs.append(_zscore(X[keep]))
        Ys.append(_zscore(Y[keep].astype(np.float64)))
        groups.append(np.full(keep.stop - keep.start, g))
    return np.vstack(Xs), np.vstack(Ys), np.concatenate(groups), masker


def encode(scan, fmri, *, networks=None, participant=None, task=None, site=None,
           fmri_participants=None, space=None, confounds=(), hrf="glover", slice_time_ref=0.5,
           trim=10.0, alphas=ALPHAS, n_permutations=1000, min_shift=20.0, alpha=0.05,
           random_state=0, backend="numpy", output=None, threads=None, regions=(),
           top_percent=1.0, delays=(1, 2, 3, 4), banded=0, progress=False, layer_pcs=0,
           atlas=None, atlas_labels=None):
    """Fit, per human participant, an encoding model from the scan's networks to their fMRI.

    Parameters
    ----------
    scan : path or Dataset
        A scan converted with ``--words`` on the story's events files.
    fmri : path
        The human BIDS dataset (raw events, fMRIPrep derivatives).
    networks : path, optional
        The ``networks.tsv`` whose networks are the features (default: the scan's only one).
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
    banded : int
        0: one ridge per voxel. N > 0: banded ridge (himalaya's ``BandedRidgeCV``), one band per
        feature with its own regularisation, N random-search iterations; each network's unique
        variance (its share of the held-out R^2, himalaya's split scores) is written as a map
        and decides the network each voxel rests on.
    progress : bool
        A progress bar over the human participants.
    layer_pcs : int
        0: the networks are the features. N > 0: each layer's first N principal components of
        its units' word series, one feature per layer; the map of the feature each voxel rests
        on is then the best-layer map.
    atlas, atlas_labels : path, optional
        A labels image in the human data's space (and its ``dseg.tsv``): a table per
        participant of each region's voxels past FWE, r and best feature (:func:`atlas_table`).
    slice_time_ref : float
        Where in each volume it is sampled (fMRIPrep's slice-timing reference is 0.5).
    trim : float
        Seconds left out at each end of each run.
    alphas : array
        Ridge penalties searched per voxel.
    n_permutations : int
        Circular shifts of the null.
    min_shift : float
        Shortest shift of the null, in seconds.
    alpha : float
        FWE level of the voxels the table counts.
    random_state : int
    backend : {"numpy", "torch", "torch_cuda"}
        himalaya's backend.
    output : path, optional
        Default ``FMRI/derivatives/llm2nifti-encoding``.
    threads : int, optional
        torch CPU threads.
    regions : sequence of path
        Masks in the human data's space: for each, the units whose weights carry the region's
        prediction (see :func:`region_units`), written as a ``networks.tsv`` that ``evaluate``
        reads.
    top_percent : float
        Share of the model's units kept per region.

    Returns
    -------
    EncodingResult
    """
    from himalaya.backend import set_backend

    from bids_llm.dataset import Dataset

    from ..models import set_threads

    set_threads(threads)
    _checked(n_permutations, alpha, layer_pcs, regions)
    set_backend(backend, on_error="raise")
    ds = scan if isinstance(scan, Dataset) else Dataset(scan)
    if networks is None and not layer_pcs:
        found = DERIVATIVES["networks"].find(ds.root, "_networks.tsv", participant)
        if len(found) != 1:
            raise UsageError(f"{len(found)} networks tables for the scan: choose one with "
                             "`networks` (from `llm2nifti networks`)")
        networks = found[0]
    from ..acquisition import participant_words

    runs, _, _ = participant_words(ds, participant, task, site)
    participant, task, site = runs[0].participant, runs[0].task, runs[0].site_kind
    humans, space = fmri_runs(fmri, task, space, fmri_participants)
    for who in sorted({r.participant for r in humans}):  # before any work
        _check_memory(who, [r for r in humans if r.participant == who])
    nets = (layer_features(ds, participant, task, site, layer_pcs) if layer_pcs else
            network_features(ds, participant, task, site, networks))
    times = word_times(nets)
    values = np.column_stack([_zscore(nets.values), np.ones(len(times)),
                              _zscore(times[["length"]].to_numpy(float))])
    names = list(nets.names) + ["word_rate", "word_length"]
    widths = list(nets.widths) + [1, 1]
    result = EncodingResult(names=list(nets.names), kind=nets.kind)
    from tqdm.auto import tqdm

    for who in tqdm(sorted({r.participant for r in humans}), desc="participants",
                    disable=not progress):
        mine = [r for r in humans if r.participant == who]
        if len(mine) < 2:
            raise UsageError(f"sub-{who} has {len(mine)} run(s) of task {task}: leave-one-run-out "
                             "needs at least 2")
        X, Y, groups, masker = _participant_data(mine, times, values, tuple(confounds), trim,
                                                 hrf, slice_time_ref, delays)
        r, r2, part, held, chosen, coef = _fold_scores(X, Y, groups, np.asarray(alphas, float),
                                                       widths, banded=banded,
                                                       random_state=random_state)
        tr = mine[0].tr
        null = _null_max(held, n_permutations, max(1, int(round(min_shift / tr))), random_state)
        p_fwe = (1 + (null[:, None] >= r[None, :]).sum(axis=0)) / (1 + n_permutations)
        best = part[: len(nets.names)].argmax(axis=0)
        isc = intersubject_correlation(who, mine, humans, masker, Y, trim)
        result.participants[who] = {"r": r, "r2": r2, "p_fwe": p_fwe, "best": best,
                                    "unique": part if banded else None,
                                    "alphas": chosen, "null_max": null, "coef": coef,
                                    "isc": isc,
                                    "depth": preferred_depth(part[: len(nets.names)],
                                                             nets.depth),
                                    "masker": masker}
        result.participants[who]["paths"] = _write(
            who, task, space, masker, result, nets, mine, alpha, output, fmri, dict(
                networks=None if layer_pcs else str(networks), layer_pcs=int(layer_pcs) or None,
                scan=str(ds.root), model_participant=participant,
                site=site, hrf=hrf, slice_time_ref=slice_time_ref, trim_s=trim,
                alphas=[float(a) for a in alphas], n_permutations=n_permutations,
                min_shift_s=min_shift, alpha=alpha, random_state=random_state,
                delays=list(delays) if hrf == "fir" else None,
                banded_iterations=int(banded) or None,
                confounds=list(confounds), features=names, backend=backend,
                folds="leave one run out", runs=[r.bold.name for r in mine]))
        _extras(result, who, atlas, atlas_labels, alpha, regions, top_percent,
                (ds, participant, site, networks, nets))
    result.group = group_map(result, task, space, output, fmri)
    return result


def _extras(result, who, atlas, atlas_labels, alpha, regions, top_percent, scan):
    """The atlas table and the units of each region, beside a participant's maps."""
    res = result.participants[who]
    if atlas is not None:
        from bids_llm.tsv import write_frame

        like = res["paths"]["table"]
        res["paths"]["regions"] = like.with_name(like.name.replace("_encoding.tsv",
                                                                   "_regions.tsv"))
        write_frame(res["paths"]["regions"], atlas_table(result, who, atlas, atlas_labels, alpha),
                    index=False)
    if regions:
        ds, participant, site, networks, nets = scan
        res["units"] = _region_units(ds, participant, site, networks, nets, res["masker"],
                                     res["coef"], regions, top_percent, res["paths"]["r"], who)


def _checked(n_permutations, alpha, layer_pcs, regions):
    if n_permutations < 1:
        raise UsageError(f"n_permutations={n_permutations}: give at least 1 (1000 for a p-value)")
    if not 0 < alpha < 1:
        raise UsageError(f"alpha={alpha}: give a level between 0 and 1, e.g. 0.05")
    if layer_pcs and regions:
        raise UsageError("`regions` name the units of networks: give networks as features, not "
                         "layer_pcs")


def atlas_table(result, who, atlas, labels=None, alpha=0.05):
    """Per region of an atlas (a labels image in the human data's space): its voxels, those
    past FWE, their mean and maximum r, and the feature most of them rest on.

    ``labels``: a BIDS ``dseg.tsv`` (``index``, ``name``) naming the regions.
    """
    import pandas as pd
    from nilearn.image import resample_to_img

    res = result.participants[who]
    masker = res["masker"]
    img = resample_to_img(str(atlas), masker.mask_img_, interpolation="nearest",
                          force_resample=True, copy_header=True)
    region = np.rint(masker.transform(img).ravel()).astype(int)
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
        sig = inside & past
        best = (result.names[int(np.bincount(res["best"][sig]).argmax())] if sig.any()
                else "n/a")
        rows.append({"index": int(k), "region": names.get(int(k), f"region{k}"),
                     "n_voxels": int(inside.sum()), "n_past_fwe": int(sig.sum()),
                     "mean_r": round(float(res["r"][inside].mean()), 6),
                     "max_r": round(float(res["r"][inside].max()), 6), "best": best})
    if not rows:
        raise UsageError(f"--atlas {Path(atlas).name} has no labelled voxel inside the runs' "
                         "brain mask: give a labels image in the human data's space")
    return pd.DataFrame(rows)


def _region_label(path):
    """A region's label: its mask's ``desc`` entity, else its file name, letters and digits."""
    from bids_llm.naming import parse_name

    name = Path(path).name
    desc = parse_name(name)[0].get("desc") if "_desc-" in name else None
    return "".join(ch for ch in (desc or name.split(".")[0]) if ch.isalnum())[:32] or "region"


def preferred_depth(part, depth):
    """Each voxel's preferred model depth: the networks' relative depths (mean layer of their
    units over the number of layers) weighted by their positive parts of the prediction (r of
    each part, or unique variance); NaN where no network contributes."""
    w = np.clip(part, 0, None)
    total = w.sum(axis=0)
    return np.where(total > 0, (np.asarray(depth)[:, None] * w).sum(axis=0)
                    / np.where(total > 0, total, 1.0), np.nan)


def group_map(result, task, space, output, fmri):
    """The group's r: a one-sample test over participants of each voxel's Fisher z (nilearn's
    SecondLevelModel, inside the intersection of their masks), as a z map; None with fewer
    than two participants."""
    import pandas as pd
    from nilearn.glm.second_level import SecondLevelModel
    from nilearn.masking import intersect_masks

    from bids_llm.io import save_img, write_json
    from bids_llm.outputs import software

    people = sorted(result.participants)
    if len(people) < 2:
        return None
    maskers = [result.participants[p]["masker"] for p in people]
    mask = intersect_masks([m.mask_img_ for m in maskers], threshold=1, connected=False)
    maps = [m.inverse_transform(np.arctanh(np.clip(result.participants[p]["r"], -0.999999,
                                                   0.999999)).astype(np.float32))
            for p, m in zip(people, maskers)]
    design = pd.DataFrame({"intercept": np.ones(len(maps))})
    model = SecondLevelModel(mask_img=mask, smoothing_fwhm=None).fit(maps, design_matrix=design)
    z = model.compute_contrast("intercept", output_type="z_score")
    root = DERIVATIVES["encoding"].create(fmri, output)
    path = root / bids_name("statmap", ".nii.gz", task=task, space=space or None,
                            desc=result.kind, stat="z")
    save_img(z, path)
    write_json(path.with_name(path.name.replace(".nii.gz", ".json")), {
        "Description": "group one-sample test of the participants' held-out r (Fisher z), "
                       "nilearn SecondLevelModel, z score", "Participants": people,
        "Software": software("nilearn")})
    return path


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
    score = np.abs((beta / np.where(sigma > 0, sigma, 1.0)) @ weights)
    n = max(1, int(np.ceil(top_percent / 100 * weights.shape[1])))
    order = np.lexsort((np.arange(len(score)), -score))
    return np.array([u for u in order[:n] if score[u] > 0], dtype=np.int64)


def _region_units(ds, participant, site, networks, nets, masker, coef, regions, top_percent,
                  like, who):
    """A neuron-set TSV per region, beside the maps: what ``evaluate`` reads."""
    from nilearn.image import resample_to_img

    from bids_llm.io import write_json

    from ..neuronset import NeuronSet
    from .connectomes import network_weights

    layout = ds.layout(participant, site)
    weights = network_weights(NeuronSet.from_tsv(networks), layout, list(nets.names))
    sigma = nets.values.std(axis=0)
    out = {}
    for path in regions:
        region_img = resample_to_img(str(path), masker.mask_img_, interpolation="nearest",
                                     force_resample=True, copy_header=True)
        region = masker.transform(region_img).ravel() > 0.5
        if not region.any():
            raise UsageError(f"--region {Path(path).name} has no voxel inside the runs' brain "
                             "mask: give a mask in the human data's space")
        units = region_units(weights, sigma, coef, region, top_percent)
        label = _region_label(path)
        tsv = like.with_name(like.name.split("_desc-")[0] + f"_desc-{label}_networks.tsv")
        NeuronSet.from_global(layout, units, name=f"region{label}").to_tsv(tsv)
        write_json(tsv.with_suffix(".json"), {
            "Description": f"The {top_percent:g}% of sub-{participant}'s units whose weights "
                           f"carry sub-{who}'s predicted BOLD in {Path(path).name} (its mean ridge "
                           "weight per network, through each unit's weight in its networks)",
            "Region": str(path), "NVoxels": int(region.sum()), "TopPercent": top_percent,
            "Networks": str(networks)})
        out[label] = tsv
    return out


def _write(who, task, space, masker, result, nets, runs, alpha, output, fmri, params):
    """The participant's statistical maps, best-network labels and table."""
    import pandas as pd

    from bids_llm.io import save_img, write_json
    from bids_llm.outputs import software
    from bids_llm.tsv import write_frame

    res = result.participants[who]
    root = DERIVATIVES["encoding"].create(fmri, output)
    ents = dict(sub=who, task=task, space=space or None, desc=result.kind)
    path = DERIVATIVES["encoding"].path
    paths = {}
    common = {"Parameters": params, "Software": software("nilearn", "himalaya", "scikit-learn")}
    stats = [("r", res["r"], "held-out Pearson r, mean over folds"),
             ("r2", res["r2"], "held-out R^2, mean over folds"),
             ("pfwe", res["p_fwe"], "FWE-corrected p of r (max-statistic null of circular "
                                    "shifts)")]
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
        save_img(masker.inverse_transform(values.astype(np.float32)), paths[key])
        write_json(paths[key].with_name(paths[key].name.replace(".nii.gz", ".json")),
                   {"Description": what, **common})
    significant = res["p_fwe"] <= alpha
    labels = np.where(significant, res["best"] + 1, 0)
    paths["best"] = path(root, "dseg.nii.gz",
                         **{**ents, "desc": "bestlayer" if result.kind == "layers" else "bestnetwork"})
    save_img(masker.inverse_transform(labels.astype(np.int16)), paths["best"])
    write_frame(paths["best"].with_name(paths["best"].name.replace(".nii.gz", ".tsv")),
                pd.DataFrame({"index": np.arange(1, len(result.names) + 1), "name": result.names}),
                index=False)
    rows = []
    for j, name in enumerate(result.names):
        mine = significant & (res["best"] == j)
        row = {"feature" if result.kind == "layers" else "network": name,
               "n_voxels": int(mine.sum()),
               "max_r": round(float(res["r"][mine].max()), 6) if mine.any() else "n/a",
               "mean_r": round(float(res["r"][mine].mean()), 6) if mine.any() else "n/a"}
        if res["isc"] is not None:  # the share of the shared signal the network predicts
            row["mean_isc"] = (round(float(res["isc"][mine].mean()), 6) if mine.any()
                               else "n/a")
        rows.append(row)
    paths["table"] = path(root, "encoding.tsv", **ents)
    write_frame(paths["table"], pd.DataFrame(rows), index=False)
    write_json(paths["table"].with_name(paths["table"].name.replace(".tsv", ".json")), {
        "Description": f"Per network: the voxels past FWE {alpha:g} whose prediction rests on it "
                       "most", "NVoxelsPastFWE": int(significant.sum()), **common})
    return paths
