"""Simulated listeners: a human BIDS dataset with planted truth, shaped like fMRIPrep's output.

No human fMRI dataset can be downloaded where the tests and the documentation run, so
:func:`story_events` and :func:`plant_bold` make one whose answer is known. The participants
"hear" a text read at a natural rate (about 2.5 words per second, each interval jittered,
pauses after sentence ends), in several runs; :func:`plant_bold` writes their preprocessed
runs in MNI space (nilearn's bundled MNI152 brain mask, 4 mm or 2 mm), where the voxels of a few
spherical regions follow a chosen word series (a network's, a layer's component, the word
rate) convolved with an HRF whose peak differs from voxel to voxel, plus AR(1) noise at the
level real encoding studies report (held-out r of 0.1 to 0.4); every other voxel is noise.
The brains are simulated: nothing here is a measurement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["story_events", "plant_bold", "PlantedBrain", "REGIONS_MNI"]

SPACE = "MNI152NLin2009cAsym"
# Centres (mm, MNI) of regions that language studies report; a simulation places its sources
# there only so that the maps look like brains.
REGIONS_MNI = {
    "leftSTG": (-56, -20, 4), "leftIFG": (-48, 24, 12), "leftAG": (-44, -64, 32),
    "rightHG": (48, -20, 8), "precuneus": (-4, -56, 36), "mPFC": (-4, 52, 12),
    "leftMTG": (-56, -40, -4), "rightSTG": (56, -20, 0),
}


def story_events(fmri, words, *, participants=("01", "02"), n_runs=3, task="story", rate=2.5,
                 seed=0):
    """Write the events files of a story heard in ``n_runs`` runs by every participant.

    Parameters
    ----------
    fmri : path
        The raw BIDS dataset to create.
    words : sequence of str
        The story, split into runs of equal length in order.
    participants : sequence of str
    n_runs : int
    task : str
    rate : float
        Words per second; each interval is jittered (log-normal, 25%) and a sentence's last
        word (ending in ``.``, ``!`` or ``?``) is followed by a pause of about 0.8 s.
    seed : int

    Returns
    -------
    list of Path
        The first participant's events files, in run order: what ``convert --words`` reads.
    """
    rng = np.random.default_rng(seed)
    fmri = Path(fmri)
    fmri.mkdir(parents=True, exist_ok=True)
    (fmri / "dataset_description.json").write_text(json.dumps(
        {"Name": "Simulated listeners (planted truth)", "BIDSVersion": "1.9.0",
         "DatasetType": "raw"}, indent=2) + "\n")
    parts = np.array_split(np.asarray(list(words), dtype=object), n_runs)
    tables = []
    for part in parts:
        gaps = np.exp(rng.normal(0.0, 0.25, len(part))) / rate
        ends = np.array([str(w)[-1:] in ".!?" for w in part])
        gaps += ends * rng.uniform(0.5, 1.1, len(part))
        onsets = 2.0 + np.concatenate([[0.0], np.cumsum(gaps)[:-1]])
        tables.append((part, onsets, 0.8 * np.minimum(gaps, 1.0 / rate * 1.5)))
    first = []
    from bids_llm.tsv import write_frame
    import pandas as pd

    for sub in participants:
        func = fmri / f"sub-{sub}" / "func"
        func.mkdir(parents=True, exist_ok=True)
        for i, (part, onsets, durations) in enumerate(tables):
            path = func / f"sub-{sub}_task-{task}_run-{i + 1}_events.tsv"
            write_frame(path, pd.DataFrame({"onset": np.round(onsets, 3),
                                            "duration": np.round(durations, 3),
                                            "trial_type": "word", "word": list(part)}),
                        index=False)
            if sub == participants[0]:
                first.append(path)
    return first


@dataclass
class PlantedBrain:
    """What :func:`plant_bold` planted.

    Attributes
    ----------
    labels : Path
        A labels image (``dseg``) of the planted regions, 0 elsewhere, in the runs' space.
    names : Path
        Its ``dseg.tsv``: ``index``, ``name`` (the region) and ``source`` (the word series).
    mask : ndarray of bool
        The brain mask.
    region : ndarray of int
        Per voxel of the mask (nilearn's masker order): the region's index, 0 for noise.
    sources : list of str
        Per region index (from 1): the source it follows.
    """

    labels: Path
    names: Path
    mask: np.ndarray
    region: np.ndarray
    sources: list


def _hrf(peak, dt=0.1, length=32.0):
    """A double-gamma HRF peaking near ``peak`` seconds, undershoot at about 15 s."""
    from scipy.stats import gamma

    t = np.arange(0, length, dt)
    h = gamma.pdf(t, peak + 1) - gamma.pdf(t, 16) / 6.0
    return h / h.max()


def _regressor(onsets, values, n_scans, t_r, peak, dt=0.1):
    """Word impulses scaled by ``values``, convolved with :func:`_hrf`, sampled at the middle
    of each volume, z-scored."""
    grid = np.zeros(int(np.ceil(n_scans * t_r / dt)) + 1)
    np.add.at(grid, np.minimum((np.asarray(onsets) / dt).astype(int), len(grid) - 1), values)
    conv = np.convolve(grid, _hrf(peak, dt))[: len(grid)]
    x = conv[np.minimum(((np.arange(n_scans) + 0.5) * t_r / dt).astype(int), len(grid) - 1)]
    return (x - x.mean()) / (x.std() or 1.0)


def plant_bold(fmri, sources, regions, *, task="story", t_r=2.0, resolution=4, radius=8.0,
               amplitude=(0.3, 0.5), peaks=(4.5, 6.5), ar=0.3, tail=16.0, seed=0,
               compress=False):
    """Write fMRIPrep-shaped preprocessed runs whose planted regions follow word series.

    Parameters
    ----------
    fmri : path
        The raw dataset written by :func:`story_events` (its events files give each run's
        words and their onsets, for every participant).
    sources : pandas.DataFrame
        A row per word heard, in the order of the events files' words: ``key`` (the events
        file's name without ``sub-``, e.g. ``task-story_run-1_events.tsv``) and one column per
        source (a network's word series, a layer's component, ``word_rate`` of ones).
    regions : dict
        Region name -> ``(centre_mm, source)`` or ``(centre_mm, source, amplitude)``: a sphere
        of ``radius`` mm (``centre_mm`` a triple, or a name of :data:`REGIONS_MNI`) whose voxels
        follow ``source`` (with their own amplitude range).
    t_r : float
        Seconds per volume.
    resolution : {4, 2}
        Voxel size of nilearn's MNI152 brain mask, in mm.
    amplitude : (float, float)
        Each planted voxel's signal amplitude, uniform in this range, against AR(1) noise of
        unit variance: the population correlation is ``a / sqrt(1 + a^2)`` (0.29-0.45 by
        default), less the HRF's mismatch.
    peaks : (float, float)
        Each planted voxel's HRF peak, uniform in this range (seconds).
    ar : float
        The noise's lag-one autocorrelation.
    tail : float
        Seconds recorded after the last word.
    seed : int
    compress : bool
        ``.nii.gz`` as fMRIPrep writes (slower), else ``.nii``.

    Returns
    -------
    PlantedBrain
    """
    import pandas as pd

    fmri = Path(fmri)
    rng = np.random.default_rng(seed)
    planted = _plant_regions(fmri, regions, resolution, radius, amplitude, peaks, rng)
    _description(fmri / "derivatives" / "fmriprep", "fMRIPrep-shaped simulated runs")
    for events in sorted(fmri.glob(f"sub-*/func/sub-*_task-{task}_*_events.tsv")):
        key = "_".join(p for p in events.name.split("_") if not p.startswith(("sub-", "ses-")))
        table = pd.read_csv(events, sep="\t", keep_default_na=False)
        table = table[~table["word"].isin(["", "n/a"])]
        rows = sources[sources["key"] == key]
        if len(rows) != len(table):
            raise ValueError(f"{events.name}: {len(table)} words, {len(rows)} rows of sources")
        _write_run(fmri, events, table["onset"].to_numpy(float), rows, planted, t_r, ar, tail,
                   task, compress, rng)
    return planted.brain


@dataclass
class _Planted:
    brain: PlantedBrain
    ijk: np.ndarray
    affine: np.ndarray
    zooms: tuple
    regions: dict
    amp: np.ndarray
    peak: np.ndarray


def _description(folder, name):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset_description.json").write_text(json.dumps(
        {"Name": name, "BIDSVersion": "1.9.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "llm2nifti.simulate"}]}, indent=2) + "\n")


def _plant_regions(fmri, regions, resolution, radius, amplitude, peaks, rng):
    """The brain mask, the planted spheres with each voxel's amplitude and HRF peak, and the
    truth written as a labels image under ``derivatives/truth``."""
    import nibabel as nib
    import pandas as pd
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import coord_transform

    from bids_llm.tsv import write_frame

    mask_img = load_mni152_brain_mask(resolution=resolution)
    mask = mask_img.get_fdata() > 0
    ijk = np.argwhere(mask)
    xyz = np.column_stack(coord_transform(ijk[:, 0], ijk[:, 1], ijk[:, 2], mask_img.affine))
    region = np.zeros(len(ijk), int)
    order = list(regions)
    for k, name in enumerate(order, start=1):
        centre = regions[name][0]
        centre = REGIONS_MNI[centre] if isinstance(centre, str) else centre
        inside = np.linalg.norm(xyz - np.asarray(centre, float), axis=1) <= radius
        region[inside & (region == 0)] = k
    ranges = [regions[n][2] if len(regions[n]) > 2 else amplitude for n in order]
    amp = np.array([rng.uniform(*ranges[k - 1]) if k else 0.0 for k in region])
    peak = np.where(region > 0, rng.choice(np.linspace(peaks[0], peaks[1], 5), len(region)), 0)
    truth = fmri / "derivatives" / "truth"
    _description(truth, "Planted truth of the simulated listeners")
    labels = np.zeros(mask.shape, np.int16)
    labels[tuple(ijk.T)] = region
    stem = f"space-{SPACE}_res-{resolution}mm_desc-planted_dseg"
    nib.save(nib.Nifti1Image(labels, mask_img.affine), truth / f"{stem}.nii.gz")
    write_frame(truth / f"{stem}.tsv", pd.DataFrame({
        "index": np.arange(1, len(order) + 1), "name": order,
        "source": [regions[n][1] for n in order]}), index=False)
    brain = PlantedBrain(truth / f"{stem}.nii.gz", truth / f"{stem}.tsv", mask, region,
                         [regions[n][1] for n in order])
    return _Planted(brain, ijk, mask_img.affine, tuple(mask_img.header.get_zooms()[:3]),
                    {k: regions[n][1] for k, n in enumerate(order, start=1)}, amp, peak)


def _write_run(fmri, events, onsets, rows, planted, t_r, ar, tail, task, compress, rng):
    """One participant's run: AR(1) noise, each planted voxel's source through its HRF, the
    brain mask, the sidecar and a confounds table, as fMRIPrep names them."""
    import nibabel as nib
    import pandas as pd
    from scipy.signal import lfilter

    from bids_llm.tsv import write_frame

    mask, region = planted.brain.mask, planted.brain.region
    n_scans = int(np.ceil((onsets.max() + tail) / t_r))
    data = lfilter([np.sqrt(1 - ar ** 2)], [1, -ar],
                   rng.standard_normal((n_scans, len(planted.ijk))), axis=0)
    for k, source in planted.regions.items():
        values = rows[source].to_numpy(float)
        for peak in np.unique(planted.peak[region == k]):
            voxels = np.flatnonzero((region == k) & (planted.peak == peak))
            x = _regressor(onsets, values, n_scans, t_r, peak)
            data[:, voxels] += x[:, None] * planted.amp[voxels]
    volume = np.zeros(mask.shape + (n_scans,), np.float32)
    volume[mask] = (1000.0 + 10.0 * data.T).astype(np.float32)
    func = fmri / "derivatives" / "fmriprep" / events.name.split("_")[0] / "func"
    func.mkdir(parents=True, exist_ok=True)
    base = events.name.replace("_events.tsv", f"_space-{SPACE}")
    img = nib.Nifti1Image(volume, planted.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms(tuple(float(z) for z in planted.zooms) + (t_r,))
    nib.save(img, func / f"{base}_desc-preproc_bold{'.nii.gz' if compress else '.nii'}")
    (func / f"{base}_desc-preproc_bold.json").write_text(json.dumps(
        {"RepetitionTime": t_r, "SkullStripped": False, "TaskName": task}, indent=2) + "\n")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), planted.affine),
             func / f"{base}_desc-brain_mask.nii.gz")
    motion = np.cumsum(rng.normal(0, 0.01, (n_scans, 6)), axis=0)
    conf = pd.DataFrame(motion, columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y",
                                         "rot_z"])
    conf["framewise_displacement"] = np.concatenate([[np.nan],
                                                     np.abs(np.diff(motion, axis=0)).sum(1)])
    write_frame(func / events.name.replace("_events.tsv", "_desc-confounds_timeseries.tsv"),
                conf, index=False)
