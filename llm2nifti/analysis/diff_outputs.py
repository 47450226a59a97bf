"""Files of ``diff``, under ``derivatives/llm2nifti-diff/sub-<candidate>/func/``.

With ``<stem>`` = ``sub-<c>_task-<t>[_acq-<site>]`` and ``<r>`` the reference's label::

    <stem>_contrast-<test>Vs<r>_stat-t_statmap.nii        t per unit (test: mean, amplitude)
    <stem>_contrast-<test>Vs<r>_stat-pfwe_statmap.nii     FWE-corrected p per unit
    <stem>_contrast-<test>Vs<r>_stat-effect_statmap.nii   mean difference over documents
    <stem>_contrast-shapeVs<r>_stat-t_statmap.nii         per group network (4D): its map's change
    <stem>_contrast-shapeVs<r>_stat-pfwe_statmap.nii      FWE within each network's map
    <stem>_desc-vs<r>_units.tsv          units past FWE: a neuron table (one network per test)
    <stem>_desc-vs<r>_networks.tsv       per group network: amplitude ratio, CI, shape changes
    <stem>_desc-vs<r>_layers.tsv / .png  per layer and test: units changed
    <stem>_desc-group<r>_components.nii (+ stat-z, stability.tsv)   the group CanICA maps
    <stem>_desc-vs<r>_diff.json          settings, documents, correspondence per layer

Each image has a JSON sidecar; every file is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["write_diff", "diff_paths"]


def _label(text):
    from bids_llm.naming import label

    from ..errors import UsageError

    try:
        return label(text, "contrast")
    except ValueError as exc:
        raise UsageError(f"{exc}: use shorter participant labels") from None


def diff_paths(folder, candidate, reference, task, acq):
    """``(statmap(test, stat), table(suffix, ext), components(z))`` name makers."""
    stem = "_".join(p for p in (f"sub-{candidate}", f"task-{task}", acq and f"acq-{acq}") if p)
    folder = Path(folder)

    def statmap(test, stat):
        return folder / f"{stem}_contrast-{_label(f'{test}Vs{reference}')}_stat-{stat}_statmap.nii"

    def table(suffix, ext):
        return folder / f"{stem}_desc-{_label(f'vs{reference}')}_{suffix}{ext}"

    def components(z=False):
        return folder / (f"{stem}_desc-{_label(f'group{reference}')}_"
                         f"{'stat-z_' if z else ''}components.nii")
    return statmap, table, components


def _volume(layout, values):
    from nilearn.image import index_img

    return index_img(layout.to_img(np.asarray(values, dtype=np.float32)[None]), 0)


def _finite(values):
    """``+-inf`` (a difference without spread) as the largest float32, so that viewers read it."""
    values = np.asarray(values)
    return np.where(np.isfinite(values), values, np.sign(values) * np.finfo(np.float32).max)


def _write_units(result, statmap, common):
    from bids_llm.io import save_img, write_json

    out = {}
    for test, res in result.units.items():
        for stat, values in (("t", res.t), ("pfwe", res.p_fwe), ("effect", res.effect)):
            path = statmap(test, stat)
            save_img(_volume(result.layout, _finite(values)), path)
            write_json(path.with_suffix(".json"), dict(common, Test=test, Statistic=stat,
                                                       NullMaxTThreshold=res.threshold(result.alpha)))
            out[f"{test}_{stat}"] = path
    return out


def _write_shape(result, statmap, common):
    from bids_llm.io import save_img, write_json

    out = {}
    names = list(result.shape)
    for stat in ("t", "pfwe"):
        values = _finite(np.stack([getattr(result.shape[n], "t" if stat == "t" else "p_fwe")
                                   for n in names]))
        path = statmap("shape", stat)
        save_img(result.layout.to_img(values.astype(np.float32)), path)
        write_json(path.with_suffix(".json"), dict(common, Test="shape (dual regression stage 2)",
                                                   Statistic=stat, Networks=names))
        out[f"shape_{stat}"] = path
    return out


def write_diff(result, ds, pairs, output=None):
    """Write what :func:`~llm2nifti.analysis.diffs.diff` found; fills ``result.paths``."""
    from bids_llm.dataset import acq_for
    from bids_llm.outputs import DERIVATIVES
    from bids_llm.io import save_img, write_json
    from bids_llm.tsv import write_frame
    from bids_llm.naming import inside

    from bids_llm.outputs import software
    from ..plots import plot_diff_layers
    root = DERIVATIVES["diff"].create(ds.root, output)
    folder = inside(root, f"sub-{result.candidate}", "func")
    folder.mkdir(parents=True, exist_ok=True)
    statmap, table, components = diff_paths(folder, result.candidate, result.reference,
                                            result.task, acq_for(result.site))
    common = {"Reference": f"sub-{result.reference}", "Candidate": f"sub-{result.candidate}",
              "Site": result.site, "Blocks": "documents", "NPermutations": result.n_permutations,
              "Null": "sign flips of whole documents; FWE by the maximum |t| over the family",
              "Runs": [f"bids::{p.path.relative_to(ds.root)}" for pair in pairs for p in pair],
              **software()}
    paths = {**_write_units(result, statmap, common), **_write_shape(result, statmap, common)}
    paths["units"] = table("units", ".tsv")
    result.selected.to_tsv(paths["units"])
    for key in ("networks", "layers"):
        paths[key] = table(key, ".tsv")
        write_frame(paths[key], getattr(result, key), index=False)
    group = result.group
    for z in (False, True):
        save_img(group.components_img(z=z), components(z))
    paths["components"] = components()
    if group.stability_ is not None:
        from .stability import stability_paths

        stab, est = stability_paths(components())
        write_frame(stab, group.stability_, index=False)
        write_frame(est, group.members_, index=False)
    paths["figure"] = plot_diff_layers(result.layers, result.alpha, table("layers", ".png"),
                                       title=f"sub-{result.candidate} vs sub-{result.reference} "
                                             f"({result.site})")
    paths["sidecar"] = table("diff", ".json")
    one = getattr(group, "estimators_", [group])[0]  # the first decomposition a stable one ran
    write_json(paths["sidecar"], dict(
        common, Alpha=result.alpha, Documents=result.documents, LeftOut=result.left_out,
        NComponents=int(group.components_.shape[0]),
        GroupDecomposition={"n_runs": int(getattr(group, "n_repeats", 1)),
                            "backend": one.backend, "random_state": one.random_state},
        Correspondence={str(l): round(float(c), 6) for l, c in
                        zip(result.layout.site.layers, result.correspondence)},
        Seconds=round(result.seconds, 1), Timings=result.timings))
    result.paths = paths
    return paths
