"""What ``localize`` writes: statistical maps, selected units, and the space-labelled view.

``derivatives/llm2nifti-glm/sub-<m>/func/``, per contrast ``<c>`` (e.g. ``sentencesMinusNonwords``)::

    sub-<m>_task-<t>[_acq-<site>]_contrast-<c>_stat-t_statmap.nii       (+ .json)
    sub-<m>_task-<t>[_acq-<site>]_contrast-<c>_stat-z_statmap.nii       (+ .json)
    sub-<m>_task-<t>[_acq-<site>]_contrast-<c>_stat-effect_statmap.nii  (+ .json)
    sub-<m>_task-<t>[_acq-<site>]_contrast-<c>_networks.tsv             selected units (+ .json)
    sub-<m>_task-<t>[_acq-<site>]_contrast-<c>_flatmap.png              t as layers x neurons
"""

from __future__ import annotations

import numpy as np

from bids_llm.outputs import software

__all__ = ["write_localizer", "statmap_path"]


def statmap_path(folder, participant, task, acq, label, stat):
    """Path of a statistical map in the GLM derivative."""
    from bids_llm.naming import inside, label as bids_label

    bids_label(label, "contrast")
    stem = "_".join(p for p in (f"sub-{participant}", f"task-{task}", acq and f"acq-{acq}",
                                f"contrast-{label}") if p)
    return inside(folder, f"sub-{participant}", "func", f"{stem}_stat-{stat}_statmap.nii")


def _design_summary(glm):
    return [{"columns": list(d.columns), "n_tokens": int(len(d)),
             "tokens_per_column": {c: int((d[c] != 0).sum()) for c in d.columns}}
            for d in glm.design_matrices_]


def write_localizer(result, ds, runs, layout, contrasts, top_percent, z_threshold, output):
    """Save each contrast's maps and units, and link the runs for nilearn.

    ``contrasts``: ``(expression, label, maps, units)`` per contrast, as the GLM computed them
    (``maps``: nilearn's ``compute_contrast`` images by output type; ``units``: the
    :class:`~llm2nifti.neuronset.NeuronSet` selected); ``pipeline``: the derivative's name.
    """
    from bids_llm.outputs import DERIVATIVES
    from bids_llm.io import save_img, write_json
    from bids_llm.space import space_view

    from ..neuronset import NeuronSet
    from ..plots import plot_flatmap

    run0 = runs[0]
    participant, task, acq = run0.participant, run0.task, run0.acq
    folder = output or DERIVATIVES["glm"].create(ds.root)
    dof = sum(int(len(d)) - int(np.linalg.matrix_rank(d.to_numpy())) for d in result.glm.design_matrices_)
    common = {"Runs": [f"bids::{r.path.relative_to(ds.root)}" for r in runs],
              "Conditions": result.conditions, "Design": _design_summary(result.glm),
              "Model": {"Software": "nilearn FirstLevelModel", "hrf_model": None,
                        "drift_model": None, "noise_model": "ols", "signal_scaling": False,
                        "smoothing_fwhm": None, "runs_combined": "fixed effects"},
              "DegreesOfFreedom": dof, **software()}
    sets = []
    for expression, label, maps, nset in contrasts:
        entry = {"label": label}
        for stat, key in (("t", "stat"), ("z", "z_score"), ("effect", "effect_size")):
            path = statmap_path(folder, participant, task, acq, label, stat)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_img(maps[key], path)
            write_json(path.with_suffix(".json"), dict(common, Contrast=expression, Statistic=stat))
            entry[stat] = layout.unfold(maps[key]).astype(np.float64)
            entry[f"{stat}_path"] = path
        stem = entry["t_path"].name.replace("_stat-t_statmap.nii", "")
        entry["networks_tsv"] = entry["t_path"].with_name(f"{stem}_networks.tsv")
        nset.to_tsv(entry["networks_tsv"])
        write_json(entry["networks_tsv"].with_suffix(".json"), {
            "Contrast": expression, "Statistic": "t", "Site": layout.site.kind,
            "Selection": ({"z_threshold": z_threshold} if z_threshold is not None
                          else {"top_percent": top_percent, "ties": "lowest neuron index first"}),
            "NSelected": len(nset), "NNeurons": layout.n_neurons, **software()})
        entry["n_selected"] = len(nset)
        entry["flatmap"] = plot_flatmap(
            entry["t"], layout, entry["t_path"].with_name(f"{stem}_flatmap.png"), label="t",
            title=f"{expression}: t per unit (sub-{participant}, task-{task}, {layout.site.kind})")
        result.contrasts[expression] = entry
        sets.append(nset.table)
    import pandas as pd

    result.neurons = NeuronSet(pd.concat(sets, ignore_index=True), site=layout.site.kind)
    space_view(ds.root, [r.path for r in runs], ds.mask_path(participant, layout.site.kind))
    return result
