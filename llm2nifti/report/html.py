"""``report``: one self-contained HTML page per participant, like fMRIPrep's and nilearn's.

The page gathers what the other commands left in the dataset (its runs, networks,
recurrence, localizer maps, connectomes) and any evaluation folders given, draws what
is not drawn yet (networks as layers x neurons flat maps, network sizes per layer), and
embeds every image, so the page opens offline as one file. Each section says which
command made it and how to read its numbers; sections whose data are absent are listed
with the command that would make them.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bids_llm.outputs import DERIVATIVES
from bids_llm.tsv import read_frame

from .. import _version
from ..errors import UsageError
from ..plots.maps import flat_values

__all__ = ["report", "Section", "PIPELINE_REPORT"]

PIPELINE_REPORT = DERIVATIVES["report"].pipeline


@dataclass
class Section:
    """One section of the page: what it shows, which command made it, what the numbers mean."""

    id: str
    title: str
    command: str
    meaning: str
    blocks: list = field(default_factory=list)


def _png(fig):
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _file_png(path):
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _table(frame, max_rows=40):
    return frame.head(max_rows).to_html(index=False, escape=True, border=0, na_rep="n/a")


def _dataset_section(ds, participant):
    rows = []
    for run in ds.runs(participant=participant):
        meta = run.metadata()
        start, stop = meta.get("TokenRange", [0, 0])
        rows.append({"task": run.task, "site": run.site_kind, "run": run.run,
                     "tokens": int(stop) - int(start)})
    frame = pd.DataFrame(rows)
    summary = frame.groupby(["task", "site"], sort=True).agg(
        runs=("run", "count"), tokens=("tokens", "sum")).reset_index()
    layouts = []
    for site in summary["site"].unique():
        lay = ds.layout(participant, site)
        layouts.append({"site": site, "layers": len(lay.layers), "units per layer": lay.width,
                        "units": lay.n_neurons, "grid": "x".join(map(str, lay.shape))})
    info = next((p for p in ds.participants() if p["participant_id"] == f"sub-{participant}"), {})
    return Section(
        "dataset", "Dataset", "llm2nifti convert",
        "Each token the model read is one volume (TR = 1 s); each unit is one voxel of the grid, "
        "one layer per z slice. Tasks are the texts read; sites are the unit families recorded.",
        [{"table": _table(pd.DataFrame([info])) if info else ""},
         {"heading": "Runs", "table": _table(summary)},
         {"heading": "Unit layouts", "table": _table(pd.DataFrame(layouts))}])


def _membership_figure(nset, layout, names):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 1.5 * rows + 0.4), squeeze=False)
    for ax, name in zip(axes.flat, names):
        values = np.zeros(layout.n_neurons)
        sub = nset.table[nset.table["network"] == name]
        if len(sub):
            values[layout.global_index(sub["layer"].to_numpy(), sub["neuron"].to_numpy())] = 1
        image, _ = flat_values(values, layout)
        ax.imshow(image, aspect="auto", origin="lower", cmap="Greys", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(f"{name}: {len(sub)} units", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([0, image.shape[0] - 1], [layout.layers[0], layout.layers[-1]], fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("units of each network: layers (rows, bottom = first) x neuron index", fontsize=9)
    return fig


def _sizes_figure(summary, layout):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = summary[[f"layer_{l}" for l in layout.layers]].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(9, 1 + 0.22 * len(summary)))
    im = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(summary)), summary["network"], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_xticks(range(0, len(layout.layers), max(1, len(layout.layers) // 15)))
    ax.set_title("units per layer of each network", fontsize=9)
    fig.colorbar(im, ax=ax, label="units", fraction=0.03)
    return fig


def _components_figure(z, layout, names, threshold):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 1.5 * rows + 0.4), squeeze=False)
    images = [flat_values(np.where(np.abs(v) > threshold, v, 0.0), layout)[0] for v in z]
    limit = max([threshold] + [float(np.abs(i).max()) for i in images])  # one scale for every panel
    for ax, name, values, image in zip(axes.flat, names, z, images):
        im = ax.imshow(image, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit,
                       interpolation="nearest")
        n = int((np.abs(values) > threshold).sum())
        ax.set_title(f"{name}: {n} units with |z| > {threshold:g}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([0, image.shape[0] - 1], [layout.layers[0], layout.layers[-1]], fontsize=7)
    fig.colorbar(im, ax=list(axes.flat), label="z", fraction=0.02)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("z-scored component maps: layers (rows, bottom = first) x neuron index", fontsize=9)
    return fig


def _stability_figure(table, members):
    """ICASSO at a glance: each component's stability, and every estimate in 2-D by cluster."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    names = [f"FN{c:02d}" for c in table["component"]]
    left.bar(range(len(table)), table["stability"], color="#4477aa")
    left.axhline(0.8, color="grey", lw=0.8, ls="--")
    left.set_xticks(range(len(table)), names, rotation=90, fontsize=7)
    left.set_ylim(min(0.0, float(table["stability"].min())), 1.0)
    left.set_ylabel("stability index Iq")
    left.set_title("stability of each component (1: found alike by every decomposition)", fontsize=9)
    cmap = plt.get_cmap("tab20")
    for c in sorted(members["cluster"].unique()):
        m = members[members["cluster"] == c]
        right.scatter(m["x"], m["y"], s=9, color=cmap(c % 20), alpha=0.6, lw=0)
        centre = m[m["centrotype"].astype(bool)]
        right.scatter(centre["x"], centre["y"], s=40, color=cmap(c % 20), edgecolor="black", lw=0.8)
    right.set_xticks([])
    right.set_yticks([])
    right.set_title(f"{len(members)} estimates by cluster (distance 1 - |r|, 2-D); ringed: "
                    "centrotypes", fontsize=9)
    fig.tight_layout()
    return fig


def _stability_blocks(path, maps):
    """The components' stability (``decompose --n-runs``), or a line saying it is not known."""
    from ..analysis import read_stability, stability_paths

    table = read_stability(path)
    if table is None or len(table) != len(maps):
        return [{"text": "These maps rest on one decomposition: whether each recurs is not known "
                         "(llm2nifti decompose --n-runs 10 clusters ten and scores each component)."}]
    members = read_frame(stability_paths(path)[1])
    n = int(members["run"].nunique())
    iq = table["stability"]
    return [{"text": f"Stability over {n} decompositions (ICASSO): median {iq.median():.2f}, "
                     f"{int((iq >= 0.8).sum())} of {len(iq)} components at 0.8 or more."},
            {"image": _png(_stability_figure(table, members)),
             "caption": "Left: each component's stability index (mean |r| between the estimates "
                        "of its cluster minus their mean |r| to the other estimates). Right: every "
                        "estimate of every decomposition placed by its distances to the others; "
                        "a tight cluster is a component that comes back whatever the seed."}]


def _component_images(ds, participant):
    """z-scored maps of each decomposition of the participant (FN@k sweeps left out)."""
    found = DERIVATIVES["components"].find(ds.root, "_stat-z_components.nii*", participant,
                                           method="*")
    return [p for p in found if "_desc-fnk" not in p.name]


def _components_section(ds, participant):
    import nibabel as nib

    from ..analysis import load_maps, network_names, site_of_image
    from ..defaults import Z_THRESHOLD as threshold

    blocks = []
    for path in _component_images(ds, participant)[:4]:
        site = site_of_image(path, ds, participant)
        layout = ds.layout(participant, site)
        maps = load_maps(nib.load(str(path)), layout)
        names = network_names(len(maps))
        shown = min(len(maps), 20)
        rel = path.relative_to(ds.root)
        blocks.append({"heading": path.name.split(".")[0],
                       "text": f"{len(maps)} components at the {site} site"
                               + (f" (the first {shown} drawn)" if shown < len(maps) else "")
                               + f". To turn them into networks: llm2nifti networks "
                                 f"{ds.root / rel} --dataset {ds.root}"})
        blocks.append({"image": _png(_components_figure(maps[:shown], layout, names[:shown], threshold)),
                       "caption": f"Each panel is one component's z-scored map, drawn where |z| > "
                                  f"{threshold:g} (the networks command's default threshold): red "
                                  "positive, blue negative; wide layers are pooled by max |z|."})
        blocks += _stability_blocks(path, maps)
    if not blocks:
        return None
    return Section("components", "Components", "llm2nifti decompose",
                   "Each component is a spatial map over units, z-scored over units. Thresholding a "
                   "map gives a network; `llm2nifti networks` writes those units as exact indices.",
                   blocks)


def _networks_section(ds, participant):
    from ..neuronset import NeuronSet

    tables = DERIVATIVES["networks"].find(ds.root, "_networks.tsv", participant)
    if not tables:
        return None
    blocks = []
    for path in tables[:4]:
        nset = NeuronSet.from_tsv(path)
        layout = ds.layout(participant, nset.site)
        stem = path.name[: -len("_networks.tsv")]
        summary_path = path.with_name(f"{stem}_summary.tsv")
        names = (read_frame(summary_path)["network"].astype(str).tolist()
                 if summary_path.is_file() else nset.names)
        key = len(nset.union())
        blocks.append({"heading": stem, "text": f"{len(names)} networks at the {nset.site} site; "
                       f"{key} units ({key / layout.n_neurons:.1%}) belong to at least one (the key set)."})
        blocks.append({"image": _png(_membership_figure(nset, layout, names)),
                       "caption": "Each panel is one network drawn as a flat map: a dark pixel is a unit "
                                  "of the network (wide layers are pooled: a pixel is dark when any "
                                  "unit under it is)."})
        if summary_path.is_file():
            summary = read_frame(summary_path, dtype={"network": str})
            blocks.append({"image": _png(_sizes_figure(summary, layout)),
                           "caption": "Network sizes per layer (from the summary table)."})
            columns = ["network", "stability"] if "stability" in summary else ["network"]
            blocks.append({"table": _table(summary[columns + ["size", "share", "n_positive",
                                                              "n_negative", "peak_layer", "peak_z"]])})
            if "stability" not in summary:
                blocks.append({"text": "These networks rest on one decomposition: whether each "
                                       "recurs is not known (decompose --n-runs 10)."})
    return Section("networks", "Networks", "llm2nifti decompose, then llm2nifti networks",
                   "A network is the set of units whose z-scored component map passes the "
                   "threshold (|z| > 3.6 by default). Units are exact (layer, neuron) indices.",
                   blocks)


def _figures_section(paths, id_, title, command, meaning, caption):
    blocks = [{"heading": p.stem, "image": _file_png(p), "caption": caption(p)} for p in paths]
    return Section(id_, title, command, meaning, blocks) if blocks else None


def _recurrence_section(ds, participant):
    find = DERIVATIVES["recurrence"].find
    paths = find(ds.root, "recurrence.png", participant) + find(ds.root, "layers.png", participant)
    return _figures_section(
        paths, "recurrence", "Recurrence", "llm2nifti recurrence",
        "Each run (and each other seed) is decomposed on its own; its networks are matched one "
        "to one to the group's templates by IoU of their units. A template recurs in a run when "
        "the matched IoU exceeds 0.2.",
        lambda p: "IoU of each template (rows) with its match in each run and seed (columns)"
        if p.name.endswith("recurrence.png") else "Template sizes per layer")


def _key_sets(ds, participant):
    from ..neuronset import NeuronSet

    return {p.name[: -len("_networks.tsv")]: NeuronSet.from_tsv(p)
            for p in DERIVATIVES["networks"].find(ds.root, "_networks.tsv", participant)}


def _localizer_section(ds, participant):
    from ..neuronset import NeuronSet

    blocks = []
    keys = _key_sets(ds, participant)
    for png in DERIVATIVES["glm"].find(ds.root, "_flatmap.png", participant):
        folder, stem = png.parent, png.name[: -len("_flatmap.png")]
        meta_path = folder / f"{stem}_networks.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        text = f"Contrast {meta.get('Contrast', '?')}: {meta.get('NSelected', '?')} units selected " \
               f"({json.dumps(meta.get('Selection', {}))})."
        blocks.append({"heading": stem, "text": text, "image": _file_png(png),
                       "caption": "t of the contrast per unit, layers (rows) x neuron index"})
        loc = NeuronSet.from_tsv(folder / f"{stem}_networks.tsv")
        rows = []
        for name, nset in keys.items():
            if nset.site != loc.site:
                continue
            n_units = meta.get("NNeurons") or ds.layout(participant, loc.site).n_neurons
            a = set(map(tuple, loc.pairs().tolist()))
            b = set(map(tuple, nset.union().pairs().tolist()))
            rows.append({"ICA networks": name, "key set": len(b), "localizer units": len(a),
                         "in both": len(a & b), "expected by chance": round(len(a) * len(b) / n_units, 1)})
        if rows:
            blocks.append({"text": "Overlap of the localizer units with each key set of the same site:",
                           "table": _table(pd.DataFrame(rows))})
    if not blocks:
        return None
    return Section("localizer", "Localizer", "llm2nifti localize",
                   "A first-level GLM per unit (nilearn FirstLevelModel; no HRF, no drift, OLS) "
                   "contrasts conditions of the localizer task; t > 0 means a higher activation "
                   "for the first condition. The selected units form a networks.tsv.", blocks)


def _connectivity_section(ds, participant):
    find = DERIVATIVES["connectivity"].find
    blocks = []
    for png in find(ds.root, "_connectome.png", participant):
        blocks.append({"heading": png.stem, "image": _file_png(png),
                       "caption": "Connectome between networks, ordered by depth (mean layer of "
                                  "their units); the diagonal is blanked."})
    for js in find(ds.root, "_comparison.json", participant):
        record = json.loads(js.read_text())
        items = [f"{kind}: r = {v['r']:.3f} over {v['n_edges']} edges; random matchings "
                 f"{v['null_low']:.3f} to {v['null_high']:.3f} (p = {v['p']:.3g})"
                 for kind, v in record.get("Similarity", {}).items()]
        blocks.append({"heading": js.stem, "text": f"{record.get('NMatched')} networks matched by "
                       f"IoU (mean {record.get('MeanIoU', 0):.2f}).", "bullets": items})
        stem = js.name[: -len("_comparison.json")]
        for png in [p for p in find(ds.root, "_comparison.png", participant)
                    if p.name.startswith(f"{stem}_meas-")]:
            blocks.append({"image": _file_png(png), "caption": "The two connectomes, matched networks "
                           "in the same order"})
    if not blocks:
        return None
    return Section("connectivity", "Connectivity", "llm2nifti connectivity",
                   "Network time courses per run (nilearn NiftiMapsMasker), then nilearn's "
                   "ConnectivityMeasure across runs. A comparison correlates the edges of two "
                   "connectomes after matching their networks by IoU; random matchings give the "
                   "range expected by chance.", blocks)


def fingerprint_networks(record_path, participant):
    """Which of the reference's networks a fingerprint compared, in words."""
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    made = record.get("ReferenceDecompositions")
    least = record.get("ReferenceMinStability")
    if made == "networks.tsv":
        return f"sub-{participant}'s networks: a given networks.tsv, every network compared."
    if made is None:
        return None
    kept = (f"those of stability {least:g} or more compared" if least is not None
            else "every network compared")
    made = ("one decomposition: they move with its seed" if made == 1
            else f"{made} clustered decompositions")
    return f"sub-{participant}'s networks rest on {made}; {kept}."


def _fingerprint_section(ds, participant):
    find = DERIVATIVES["fingerprint"].find
    blocks = []
    for tsv in find(ds.root, "_fingerprint.tsv", participant):
        summary = read_frame(tsv)
        cols = [c for c in ("participant", "role", "score", "n_above", "n_matched", "null_mean",
                            "null_95", "p", "null", "n_words", "verdict", "reason") if c in summary]
        blocks.append({"heading": tsv.stem, "table": _table(summary[cols]),
                       "text": fingerprint_networks(tsv.with_suffix(".json"), participant)})
    for png in find(ds.root, ".png", participant):
        blocks.append({"heading": png.stem, "image": _file_png(png),
                       "caption": "Heat map: Spearman r of every network pair at word level "
                                  "(matched pairs boxed), beside the score's null. Depth: each "
                                  "matched pair's relative depth in both models. RSA: RDM "
                                  "correlation of every layer pair (dots: corrected p <= .05)."})
    for tsv in find(ds.root, "_isc.tsv", participant):
        blocks.append({"heading": "Inter-model correlation", "table": _table(read_frame(tsv))})
    if not blocks:
        return None
    return Section("fingerprint", "Fingerprints", "llm2nifti fingerprint",
                   "This participant is the reference. Score: mean Spearman r of its networks "
                   "matched one to one with another model's, on the words both read. 'Beyond "
                   "chance' is judged against documents paired with other documents (p); "
                   "'derived' needs, in addition, a score above every independent model's.",
                   blocks)


def _diff_section(ds, participant):
    """This participant as the candidate of ``diff``: per layer and per network, what changed."""
    blocks = []
    for js in DERIVATIVES["diff"].find(ds.root, "_diff.json", participant):
        folder, record = js.parent, json.loads(js.read_text())
        stem = js.name.removesuffix("_diff.json")
        layers = read_frame(folder / f"{stem}_layers.tsv")
        totals = layers.groupby("test", sort=False)["n_changed"].sum()
        blocks.append({"heading": f"against {record['Reference']} ({record['Site']})",
                       "text": f"{len(record['Documents'])} documents, {record['NPermutations']} "
                               f"sign flips; units past FWE {record['Alpha']:g}: "
                               + ", ".join(f"{t} {int(n):,}" for t, n in totals.items()) + "."})
        png = folder / f"{stem}_layers.png"
        if png.is_file():
            blocks.append({"image": _file_png(png), "caption": "Per layer: the share of units "
                           "past FWE and the mean effect, per test"})
        nets = folder / f"{stem}_networks.tsv"
        if nets.is_file():
            blocks.append({"heading": "Group networks (dual regression)",
                           "table": _table(read_frame(nets).round(4))})
        patching = folder / f"{stem}_patching.json"
        if patching.is_file():
            blocks.append({"heading": "Patching", "bullets": json.loads(patching.read_text())["Verdicts"]})
    if not blocks:
        return None
    return Section("diff", "Changes from a base checkpoint", "llm2nifti diff, then llm2nifti patch",
                   "This participant is the candidate. Per unit, paired tests over documents of "
                   "its mean and amplitude against the base, FWE by the maximum |t| under sign "
                   "flips of whole documents; per group network, dual regression's amplitude "
                   "ratio and shape change. Patching sets the changed units to the base's values "
                   "and measures how much of the perplexity gap closes.", blocks)


def _encoding_blocks(path, alpha):
    """One human participant's encoding maps: a glass brain of r past FWE, the preferred depth
    on the MNI template, and the tables (per feature, per cluster, per atlas region)."""
    import matplotlib.pyplot as plt
    import nibabel as nib
    from nilearn import image, plotting

    p_path = path.with_name(path.name.replace("_stat-r_", "_stat-pfwe_"))
    r_img = nib.load(str(path))
    past = image.math_img(f"p <= {alpha}", p=str(p_path)) if p_path.is_file() else None
    keep = image.math_img("m * r", m=past, r=r_img) if past is not None else r_img
    n_past = int(past.get_fdata().sum()) if past is not None else 0
    kind = path.name.split("_desc-")[1].split("_")[0]
    display = plotting.plot_glass_brain(keep, colorbar=True, plot_abs=False, cmap="RdBu_r",
                                        threshold=1e-6, symmetric_cbar=True,
                                        title=f"held-out r, voxels past FWE {alpha:g}")
    fig = display.frame_axes.figure
    blocks = [{"heading": path.name.split("_space-")[0],
               "text": f"{n_past:,} voxels past FWE {alpha:g}; max r "
                       f"{float(r_img.get_fdata().max()):.3f}. Features: the model's {kind}.",
               "image": _png(fig), "caption": "Held-out correlation between each voxel's BOLD and "
               f"its prediction from the model's {kind} (glass brain, voxels past FWE)."}]
    depth = path.with_name(path.name.replace("_stat-r_", "_stat-depth_"))
    if depth.is_file() and past is not None and n_past:
        shown = image.math_img("np.where(m > 0, np.nan_to_num(d), 0)", m=past, d=str(depth))
        cuts = plotting.find_cut_slices(past, direction="z", n_cuts=6)
        display = plotting.plot_stat_map(shown, display_mode="z", cut_coords=cuts, cmap="viridis",
                                         vmin=0, vmax=1, colorbar=True, symmetric_cbar=False,
                                         title="preferred depth (0: first layer, 1: last)")
        blocks.append({"image": _png(display.frame_axes.figure),
                       "caption": "The layer preference of the voxels past FWE: the mean relative "
                                  "depth of the features, weighted by each one's part of the "
                                  "prediction (nilearn's MNI152 template behind)."})
        plt.close("all")
    for suffix, what in [("_encoding.tsv", "Per feature: the voxels past FWE whose prediction "
                                           "rests on it most."),
                         ("_clusters.tsv", "Each cluster of voxels past FWE: its peak, r and the "
                                           "feature most of its voxels rest on."),
                         ("_regions.tsv", "Per atlas region: voxels past FWE, r and best "
                                          "feature.")]:
        table = path.with_name(path.name.replace("_stat-r_statmap.nii.gz", suffix))
        if table.is_file():
            blocks.append({"text": what, "table": _table(read_frame(table))})
    return blocks


def _encoding_section(encodings, participant):
    """The encoding folders whose features are this participant's networks."""
    blocks = []
    for folder in encodings:
        for path in DERIVATIVES["encoding"].find(None, "_stat-r_statmap.nii.gz", output=folder):
            if "sub-" not in path.name:
                continue
            sidecar = path.with_name(path.name.replace(".nii.gz", ".json"))
            params = json.loads(sidecar.read_text()).get("Parameters", {}) if sidecar.is_file() else {}
            if params.get("model_participant") not in (None, participant):
                continue
            blocks += _encoding_blocks(path, params.get("alpha", 0.05))
    if not blocks:
        return None
    return Section("encoding", "Encoding: human brains", "llm2nifti encode",
                   "People heard the story the model read; the model's features (its networks' "
                   "word series, its layers' components or its units), placed at the words' "
                   "onsets, predict each voxel of their fMRI (ridge, leave one run out), with "
                   "word rate and word length as nuisance features. Per feature, cluster and "
                   "region: the voxels past FWE whose prediction rests on it most.",
                   blocks)


def _interventions_section(evaluations):
    blocks = []
    for folder in evaluations:
        folder = Path(folder)
        record = json.loads((folder / "evaluation.json").read_text())
        blocks.append({"heading": str(folder.name), "bullets": record.get("verdicts", [])})
        for name in ("interventions.png", "curve.png", "fnk.png"):
            if (folder / name).is_file():
                blocks.append({"image": _file_png(folder / name), "caption": name})
    if not blocks:
        return None
    return Section("interventions", "Interventions", "llm2nifti evaluate",
                   "Network units are inhibited, kept alone or amplified with hooks; controls are "
                   "random sets with the same count per layer (over several seeds: the range is "
                   "shown). 'not clearly' means the network lies inside the controls' range.",
                   blocks)


_ABSENT = {"components": "Components: run `llm2nifti decompose`",
           "networks": "Networks: run `llm2nifti networks` on a components image of `llm2nifti decompose`",
           "recurrence": "Recurrence: run `llm2nifti recurrence`",
           "localizer": "Localizer: run `llm2nifti localize`",
           "connectivity": "Connectivity: run `llm2nifti connectivity`",
           "interventions": "Interventions: run `llm2nifti evaluate`, then pass its folder with --evaluation",
           "fingerprint": "Fingerprints: run `llm2nifti fingerprint -r PARTICIPANT -c OTHER`",
           "diff": "Changes from a base: run `llm2nifti diff -r BASE -c PARTICIPANT`",
           "encoding": "Encoding: run `llm2nifti encode` on a human dataset, then pass its "
                       "output folder with --encode-output"}


def _evaluations(ds, evaluations):
    found = [Path(p) for p in evaluations]
    for folder in found:
        if not (folder / "evaluation.json").is_file():
            raise UsageError(f"{folder} holds no evaluation.json: pass the --output folder of "
                             "`llm2nifti evaluate`")
    found += [p.parent for p in DERIVATIVES["evaluation"].find(ds.root, "evaluation.json")]
    return list(dict.fromkeys(found))


def report(dataset, participant=None, output=None, evaluations=(), encodings=()):
    """Write one self-contained HTML page per participant.

    Parameters
    ----------
    dataset : path
    participant : str, optional
        Default: every participant.
    output : path, optional
        Folder (default ``DATASET/derivatives/llm2nifti-report``); pages ``sub-<label>.html``.
    evaluations : sequence of path
        Output folders of ``llm2nifti evaluate`` (folders under ``derivatives`` holding an
        ``evaluation.json`` are found on their own).
    encodings : sequence of path
        Output folders of ``llm2nifti encode`` (``FMRI/derivatives/llm2nifti-encoding``: they
        live in the human dataset, so they are named here).

    Returns
    -------
    list of Path
    """
    import jinja2

    from bids_llm.dataset import Dataset
    from bids_llm.io import write_text

    ds = Dataset(dataset)
    found = sorted({r.participant for r in ds.runs()})
    if participant is not None and participant not in found:
        raise UsageError(f"no participant {participant!r} in {ds.root}: it has {', '.join(found) or 'none'}")
    evals = _evaluations(ds, evaluations)
    out = Path(output) if output is not None else DERIVATIVES["report"].create(ds.root)
    env = jinja2.Environment(loader=jinja2.PackageLoader("llm2nifti.report", "templates"),
                             autoescape=True)
    template = env.get_template("report.html.j2")
    pages = []
    for p in [participant] if participant else found:
        built = {"dataset": _dataset_section(ds, p), "components": _components_section(ds, p),
                 "networks": _networks_section(ds, p),
                 "recurrence": _recurrence_section(ds, p), "localizer": _localizer_section(ds, p),
                 "connectivity": _connectivity_section(ds, p),
                 "fingerprint": _fingerprint_section(ds, p), "diff": _diff_section(ds, p),
                 "interventions": _interventions_section(evals),
                 "encoding": _encoding_section(encodings, p)}
        info = next((r for r in ds.participants() if r["participant_id"] == f"sub-{p}"), {})
        page = template.render(
            participant=p, model=info.get("model", p), version=_version.__version__,
            subtitle=f"{info.get('architecture', '')} model, scanned as a brain: {ds.root.resolve()}",
            sections=[s for s in built.values() if s is not None],
            missing=[_ABSENT[k] for k, s in built.items() if s is None])
        path = out / f"sub-{p}.html"
        out.mkdir(parents=True, exist_ok=True)
        write_text(path, page)
        pages.append(path)
    return pages
