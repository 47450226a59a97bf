"""Test the published claims: intervene on the networks and on controls, and compare.

:func:`plan_conditions` lists the conditions (baseline; inhibit or retain the
key set and its controls; amplify; a curve of performance against the share
of neurons kept), :func:`run_conditions` scores each with an
:class:`~llm2nifti.intervention.evaluation.Evaluator`, :func:`summarize` aggregates over
seeds and :func:`verdicts` says in plain words how the networks compare with
the controls. :func:`evaluate` does all of it for a ``networks.tsv`` and the
scan it came from, and writes ``results.tsv``, ``summary.tsv``, the figures
and ``evaluation.json``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bids_llm.dataset import Dataset
from bids_llm.io import write_json
from bids_llm.tsv import write_frame

from ..acquisition import load_documents
from ..errors import UsageError
from ..neuronset import NeuronSet
from ..sites import resolve_site
from . import controls as C

__all__ = ["Condition", "plan_conditions", "run_conditions", "summarize", "verdicts",
           "evaluate", "EvaluationResult", "CONTROLS"]

log = logging.getLogger(__name__)

CONTROLS = ("random", "spread-matched", "top-spread", "key-minus-massive", "random-minus-massive")
RESULT_COLUMNS = ["condition", "group", "mode", "ablation", "selection", "strength", "n_networks", "seed",
                  "n_neurons", "share", "overlap_key", "metric", "value", "ci_low", "ci_high",
                  "n_items"]


@dataclass
class Condition:
    """One intervention to score.

    Parameters
    ----------
    name : str
        Condition label, shared by the seeds of one control (e.g. ``"inhibit random"``).
    group : {"baseline", "main", "amplify", "curve"}
    mode : {"inhibit", "amplify", "retain"} or None
    selection : str
        ``key`` or a control name.
    neurons : dict of int -> ndarray
    seed : int, optional
    value, scale : float, optional
        Passed to the intervention.
    n_networks : int, optional
        Networks in the key set (curve points).
    ablation : {"zero", "mean"}
        What inhibit and retain put in place of a unit (see :func:`~llm2nifti.intervention.intervene`).
    """

    name: str
    group: str
    mode: str | None
    selection: str
    neurons: dict = field(default_factory=dict)
    seed: int | None = None
    value: float | None = None
    scale: float | None = None
    n_networks: int | None = None
    ablation: str = "zero"


def plan_conditions(nset, stats, width, seeds=(0, 1, 2, 3, 4), modes=("inhibit", "retain"),
                    controls=CONTROLS, amplify=(), amplify_controls=True, curve=(), curve_seeds=None,
                    curve_sets=(), massive_factor=100.0, spread_bins=20, ablations=("zero",),
                    fnk_sets=(), groups=None):
    """The conditions of an evaluation.

    Parameters
    ----------
    nset : NeuronSet
        The networks; the key set is their union.
    stats : pandas.DataFrame
        Per-neuron statistics (:func:`llm2nifti.intervention.controls.neuron_stats`).
    width : int or dict of int -> int
        Neurons per layer.
    seeds : sequence of int
        Seeds of the random controls.
    modes : sequence of {"inhibit", "retain"}
    controls : sequence of str
        Which of :data:`CONTROLS` to include.
    amplify : sequence of float
        Constants added to the key neurons (one condition each).
    amplify_controls : bool
        Also add each constant to uniform random sets (one per seed).
    curve : sequence of int
        Numbers of networks whose union is retained (the first networks of
        the table), each with uniform random sets of the same counts per layer.
    curve_seeds : sequence of int, optional
        Seeds of the curve's random sets (default: ``seeds``).
    curve_sets : sequence of (str, NeuronSet)
        More curve points: other network tables (e.g. the same maps at lower
        thresholds), each retained as a whole and labelled ``retain key @<label>``.
    massive_factor : float
        See :func:`llm2nifti.intervention.controls.massive_neurons`.
    spread_bins : int
        See :func:`llm2nifti.intervention.controls.spread_matched`.
    ablations : sequence of {"zero", "mean"}
        Each inhibit and retain condition (controls and curve included) is run with each
        kind; mean-ablation conditions are named ``inhibit-mean ...``, ``retain-mean ...``.
    fnk_sets : sequence of (int, NeuronSet)
        FN@k (:func:`llm2nifti.intervention.fnk.fn_at_k`): each union is retained and
        inhibited (``retain key @k=10``, group ``fnk``), against random sets of the same
        count per layer (``curve_seeds``).
    groups : dict of int -> ndarray, optional
        Per layer, the expert of each unit (mixture-of-experts sites): the random controls
        keep the key set's count per layer *and* per expert.

    Returns
    -------
    list of Condition
    """
    unknown = sorted(set(controls) - set(CONTROLS))
    if unknown:
        raise UsageError(f"unknown control(s) {unknown}: choose from {', '.join(CONTROLS)}")
    key = nset.per_layer()
    if not C.count(key):
        raise UsageError("the network table holds no neurons: lower the threshold of `networks`")
    sets = {"key": [(None, key)]}
    if "random" in controls:
        sets["random"] = [(s, C.random_like(key, width, s, groups=groups)) for s in seeds]
    if "spread-matched" in controls:
        sets["spread-matched"] = [(s, C.spread_matched(key, stats, s, spread_bins)) for s in seeds]
    if "top-spread" in controls:
        sets["top-spread"] = [(None, C.top_spread(key, stats))]
    massive = C.massive_neurons(stats, massive_factor)
    if "key-minus-massive" in controls:
        sets["key-minus-massive"] = [(None, C.without(key, massive))]
    if "random-minus-massive" in controls:
        sets["random-minus-massive"] = [(s, C.random_like(key, width, s, exclude=massive,
                                                          groups=groups))
                                        for s in seeds]
    bad = sorted(set(ablations) - {"zero", "mean"})
    if bad or not ablations:
        raise UsageError(f"unknown ablation(s) {bad}: choose zero, mean or both")
    out = [Condition("baseline", "baseline", None, "none")]
    for ablation, mode in ((a, m) for a in ablations for m in modes):
        label = _label(mode, ablation)
        for selection, members in sets.items():
            if mode == "retain" and selection.endswith("-minus-massive"):
                continue  # retaining: the massive neurons would be zeroed, a different question
            for seed, neurons in members:
                out.append(Condition(f"{label} {selection}", "main", mode, selection, neurons, seed,
                                     ablation=ablation))
    for value in amplify:
        out.append(Condition(f"amplify key +{value:g}", "amplify", "amplify", "key", key, None, value))
        if amplify_controls:
            for s in seeds:
                out.append(Condition(f"amplify random +{value:g}", "amplify", "amplify", "random",
                                     C.random_like(key, width, s), s, value))
    n_all = len(nset.names)
    points = [(str(m), m, kept) for m, kept in C.nested_networks(nset, sorted(set(curve)))
              if not (m == n_all and "retain" in modes)]  # all networks: the same as "retain key"
    points += [(str(label), len(other.names), other.per_layer()) for label, other in curve_sets]
    for ablation, (label, m, kept) in ((a, p) for a in ablations for p in points):
        retain = _label("retain", ablation)
        out.append(Condition(f"{retain} key @{label}", "curve", "retain", "key", kept, None,
                             n_networks=m, ablation=ablation))
        for s in (seeds if curve_seeds is None else curve_seeds):
            out.append(Condition(f"{retain} random @{label}", "curve", "retain", "random",
                                 C.random_like(kept, width, s), s, n_networks=m, ablation=ablation))
    out += _fnk_conditions(fnk_sets, width, seeds if curve_seeds is None else curve_seeds,
                           modes, ablations)
    return out


def _fnk_conditions(fnk_sets, width, seeds, modes, ablations):
    """FN@k kept alone and zeroed, each against random sets of the same count per layer."""
    out = []
    for ablation, mode, (k, nset) in ((a, m, f) for a in ablations for m in modes for f in fnk_sets):
        union = nset.per_layer()
        if not C.count(union):
            log.warning("FN@%d holds no neurons at this threshold; left out", k)
            continue
        label = _label(mode, ablation)
        out.append(Condition(f"{label} key @k={k}", "fnk", mode, "key", union, None,
                             n_networks=k, ablation=ablation))
        for s in seeds:
            out.append(Condition(f"{label} random @k={k}", "fnk", mode, "random",
                                 C.random_like(union, width, s), s, n_networks=k, ablation=ablation))
    return out


def _label(mode, ablation):
    """Condition prefix: ``inhibit`` (zero-ablation) or ``inhibit-mean``."""
    return mode if ablation == "zero" else f"{mode}-{ablation}"


def _selection(networks):
    """(threshold, two_sided) from the ``_networks.json`` beside a ``_networks.tsv``, or None."""
    if isinstance(networks, NeuronSet):
        return None
    path = Path(networks)
    try:
        sel = json.loads(path.with_name(path.name.replace("_networks.tsv", "_networks.json"))
                         .read_text())["Selection"]
        return float(sel["threshold"]), bool(sel.get("two_sided", True))
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _curve_label(path):
    """``|z|>t`` from the table's selection, else the file name."""
    sel = _selection(path)
    if sel is None:
        return Path(path).parent.name or Path(path).stem
    return f"|z|>{sel[0]:g}" if sel[1] else f"z>{sel[0]:g}"


def run_conditions(evaluator, conditions, key, n_neurons, site=None, n_resamples=2000,
                   progress=False, means=None):
    """Score every condition.

    Parameters
    ----------
    evaluator : Evaluator
    conditions : list of Condition
    key : dict of int -> ndarray
        The key set (for the overlap column).
    n_neurons : int
        Neurons of the whole site (for the share column).
    site : Site, optional
    n_resamples : int
        Bootstrap resamples of each confidence interval.
    progress : bool
    means : array, optional
        Each unit's mean over the scan (layer-major), for mean-ablation conditions.

    Returns
    -------
    pandas.DataFrame
        One row per condition and metric (columns ``RESULT_COLUMNS``).
    """
    from tqdm.auto import tqdm

    from .hooks import intervene

    rows = []
    for cond in tqdm(conditions, desc="conditions", disable=not progress):
        t0 = time.perf_counter()
        if cond.mode is None:
            scores = evaluator.score()
        else:
            mean = cond.ablation == "mean" and cond.mode != "amplify"
            with intervene(evaluator.model, cond.neurons, mode=cond.mode, value=cond.value,
                           scale=cond.scale, site=site, ablation="mean" if mean else "zero",
                           means=means if mean else None):
                scores = evaluator.score()
        n = C.count(cond.neurons)
        base = {"condition": cond.name, "group": cond.group, "mode": cond.mode or "none",
                "ablation": cond.ablation if cond.mode in ("inhibit", "retain") else "none",
                "selection": cond.selection,
                "strength": cond.value if cond.value is not None else (cond.scale or np.nan),
                "n_networks": cond.n_networks if cond.n_networks is not None else np.nan,
                "seed": cond.seed if cond.seed is not None else np.nan,
                "n_neurons": n, "share": n / n_neurons,
                "overlap_key": C.overlap(cond.neurons, key) if n else np.nan}
        for metric, (value, lo, hi, k) in scores.metrics(n_resamples=n_resamples).items():
            rows.append(dict(base, metric=metric, value=value, ci_low=lo, ci_high=hi, n_items=k))
        log.info("%s (seed %s): %s in %.1f s", cond.name, cond.seed,
                 ", ".join(f"{r['metric']} {r['value']:.4g}" for r in rows[-2:]
                           if r["condition"] == cond.name), time.perf_counter() - t0)
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def summarize(results):
    """Aggregate seeds: one row per condition and metric.

    Columns: condition, group, mode, ablation, selection, strength, n_networks, metric,
    n_sets, n_neurons, share, overlap_key, mean, sd (over seeds; 0 for one
    set), min, max, ci_low, ci_high (bootstrap over items for one set; for
    several seeds, the lowest and highest bound of any seed).
    """
    keys = ["condition", "group", "mode", "ablation", "selection", "strength", "n_networks", "metric"]
    g = results.groupby(keys, sort=False, dropna=False)
    out = g.agg(n_sets=("value", "size"), n_neurons=("n_neurons", "mean"), share=("share", "mean"),
                overlap_key=("overlap_key", "mean"), mean=("value", "mean"),
                sd=("value", lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0),
                min=("value", "min"), max=("value", "max"),
                ci_low=("ci_low", "min"), ci_high=("ci_high", "max")).reset_index()
    return out


_BETTER = {"perplexity": -1, "accuracy": +1, "exact_match": +1, "f1": +1}  # sign of "better"


def _get(summary, condition, metric):
    row = summary[(summary["condition"] == condition) & (summary["metric"] == metric)]
    return None if row.empty else row.iloc[0]


def _beats(key, other, sign):
    """+1 when ``key`` is clearly better than ``other`` (by ``sign``), -1 clearly worse, else 0.

    Clearly: beyond every seed of a random control and with the key set's
    bootstrap interval excluding the control's mean; for a single control
    set, with non-overlapping bootstrap intervals.
    """
    k = key["mean"] * sign
    klo, khi = sorted((key["ci_low"] * sign, key["ci_high"] * sign))
    if other["n_sets"] > 1:
        lo, hi = sorted((other["min"] * sign, other["max"] * sign))
        m = other["mean"] * sign
        if k > hi and klo > m:
            return 1
        if k < lo and khi < m:
            return -1
        return 0
    olo, ohi = sorted((other["ci_low"] * sign, other["ci_high"] * sign))
    return 1 if klo > ohi else -1 if khi < olo else 0


def massive_line(massive):
    """One sentence naming the massive-activation units (``L<layer>N<unit>``)."""
    names = [f"L{l}N{n}" for l, idx in sorted(massive.items()) for n in idx]
    if not names:
        return "Massive-activation units: none (no unit peaks above the threshold)."
    return (f"Massive-activation units ({len(names)}): {', '.join(names[:20])}"
            + (", ..." if len(names) > 20 else "") + ". Random sets that hit one of them can "
            "differ from those that miss them by orders of magnitude: compare with "
            "random-minus-massive.")


def verdicts(summary):
    """Plain sentences comparing the key set with each control, per metric.

    *Inhibit*: the network selection "does better" than a control when
    inhibiting it hurts more; *retain*: when keeping it alone preserves more.
    See ``_beats`` for what counts as clearly better.
    """
    lines = []
    for metric in [m for m in _BETTER if m in set(summary["metric"])]:
        base = _get(summary, "baseline", metric)
        if base is not None:
            lines.append(f"{metric}: baseline {base['mean']:.4g} "
                         f"(95% CI {base['ci_low']:.4g}-{base['ci_high']:.4g}).")
        for mode, want, verb in (("inhibit", -1, "hurt more"), ("retain", +1, "preserve more"),
                                 ("inhibit-mean", -1, "hurt more"), ("retain-mean", +1, "preserve more")):
            key = _get(summary, f"{mode} key", metric)
            if key is None:
                continue
            for ctl in CONTROLS:
                other = _get(summary, f"{mode} {ctl}", metric)
                if other is None:
                    continue
                if other["n_sets"] > 1:
                    desc = (f"mean {other['mean']:.4g}, sd {other['sd']:.3g}, range "
                            f"{other['min']:.4g}-{other['max']:.4g} over {int(other['n_sets'])} seeds")
                else:
                    desc = f"{other['mean']:.4g} (95% CI {other['ci_low']:.4g}-{other['ci_high']:.4g})"
                b = _beats(key, other, _BETTER[metric] * want)
                word = {1: "YES", -1: "NO, the control does", 0: "NOT CLEARLY"}[b]
                lines.append(f"{metric}, {mode}: do the network neurons {verb} than {ctl}? {word}. "
                             f"{mode} key {key['mean']:.4g} (95% CI {key['ci_low']:.4g}-"
                             f"{key['ci_high']:.4g}) vs {ctl} {desc}.")
        lines.extend(_amplify_verdicts(summary, metric, base))
        lines.extend(_fnk_verdicts(summary, metric))
    return lines


def _fnk_verdicts(summary, metric):
    """Per k and mode: does FN@k do more than random sets of the same count per layer?"""
    out = []
    rows = summary[(summary["group"] == "fnk") & (summary["selection"] == "key")
                   & (summary["metric"] == metric)].sort_values(["condition", "n_networks"])
    for _, key in rows.iterrows():
        other = _get(summary, key["condition"].replace(" key @", " random @"), metric)
        if other is None:
            continue
        mode = key["condition"].split(" ")[0]
        want, verb = (-1, "hurt more") if mode.startswith("inhibit") else (+1, "preserve more")
        word = {1: "YES", -1: "NO, the control does", 0: "NOT CLEARLY"}[
            _beats(key, other, _BETTER[metric] * want)]
        out.append(f"{metric}, {mode} FN@{int(key['n_networks'])} ({100 * key['share']:.1f}% of "
                   f"units): does it {verb} than random? {word}. {key['mean']:.4g} (95% CI "
                   f"{key['ci_low']:.4g}-{key['ci_high']:.4g}) vs random mean {other['mean']:.4g}, "
                   f"range {other['min']:.4g}-{other['max']:.4g} over {int(other['n_sets'])} seeds.")
    return out


def _amplify_verdicts(summary, metric, base):
    """Does adding a constant to the key neurons improve ``metric`` over the baseline?"""
    out = []
    amp = summary[(summary["group"] == "amplify") & (summary["selection"] == "key")
                  & (summary["metric"] == metric)]
    for _, key in amp.iterrows():
        sign = _BETTER[metric]
        if base is not None:
            b = _beats(key, base, sign)
            word = {1: "YES", -1: "NO, it is worse", 0: "NOT CLEARLY"}[b]
            text = (f"{metric}, amplify: does adding {key['strength']:g} to the network neurons "
                    f"improve on the baseline? {word}. {key['mean']:.4g} (95% CI "
                    f"{key['ci_low']:.4g}-{key['ci_high']:.4g}) vs baseline {base['mean']:.4g}")
        else:
            text = f"{metric}, amplify +{key['strength']:g}: {key['mean']:.4g}"
        ctl = _get(summary, key["condition"].replace("amplify key", "amplify random"), metric)
        if ctl is not None:
            text += (f"; random sets +{key['strength']:g}: mean {ctl['mean']:.4g}, range "
                     f"{ctl['min']:.4g}-{ctl['max']:.4g}")
        out.append(text + ".")
    return out


@dataclass
class EvaluationResult:
    """What :func:`evaluate` wrote."""

    output: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    verdicts: list
    figures: list
    settings: dict


def _check_layout(layout, site):
    if (layout.site.width, layout.site.n_layers) != (site.width, site.n_layers) or any(
            l in site.layers and site.width_of(l) != w
            for l, w in zip(layout.site.layers, layout.site.widths)):
        raise UsageError(
            f"the scan's neurons ({layout.site.n_layers} layers x {layout.site.width}) do not match "
            f"the model's ({site.n_layers} x {site.width}): evaluate the model that was scanned")


def _check_weights(ds, layout, model, participant):
    """Warn when the evaluated model's weights are not the scanned model's."""
    from ..models import weights_hash

    rows = ds.participants()
    if participant is not None:
        rows = [r for r in rows if r.get("participant_id") == f"sub-{participant}"]
    stored = {r.get("weights_sha256") for r in rows} - {None, "", "n/a"}
    if len(stored) == 1:
        current = weights_hash(model)
        if current not in stored:
            log.warning("the evaluated model's weights (sha256 %s) differ from the scanned model's "
                        "(%s): the networks may not apply to it", current, stored.pop())
            return False
    return True


def evaluate(networks, dataset, output, *, model=None, gguf_file=None, participant=None, network_names=None,
             heldout="lee-test", task="pang-lee", bigbench=None, template=None, label_words=None,
             max_new_tokens=16, n_docs=None, n_items=None,
             max_doc_tokens=128, seeds=5, controls=CONTROLS, amplify=(0.5,), amplify_controls=True,
             curve=(), curve_seeds=None, curve_networks=(), massive_factor=100.0, spread_bins=20,
             allow_overlap=False, ablations=("zero",), fnk=(), fnk_estimator=None,
             fnk_threshold=None, device="cpu", dtype="auto", threads=None, batch_size=8,
             n_resamples=2000, progress=True, loaded=None, cache=None):
    """Evaluate the networks of ``networks.tsv`` against controls; write tables and figures.

    Parameters
    ----------
    networks : path or NeuronSet
        A ``networks.tsv`` from ``llm2nifti networks``.
    dataset : path or Dataset
        The scan the networks were found on (neuron layout, statistics for
        the controls, and the documents held-out text must not share).
    output : path
        Folder for ``results.tsv``, ``summary.tsv``, ``evaluation.json`` and figures.
    model : str, optional
        The scanned model (default: the embedded SmolLM2-135M-Instruct); any form
        :mod:`llm2nifti.sources` accepts.
    gguf_file : str, optional
        Which GGUF file of a ``model`` folder holding several.
    participant : str, optional
        Participant of ``dataset`` (needed when it holds several).
    network_names : list of str, optional
        Networks to use (default: all).
    heldout : str, path or None
        Held-out text for perplexity (:func:`llm2nifti.acquisition.stimuli.load_documents`).
    task : str, path or None
        ``"pang-lee"`` or a task file (:func:`llm2nifti.intervention.tasks.load_task`): labelled
        sentences and multiple choice give accuracy, open questions exact match and F1.
    bigbench : path, optional
        A BIG-bench ``task.json``, used instead of ``task``.
    template, label_words, max_new_tokens :
        How a task file's items become prompts and answers (see ``load_task``).
    n_docs, n_items : int, optional
        Use only the first ``n_docs`` documents / ``n_items`` items (stratified).
    max_doc_tokens : int
        Held-out documents are cut to this many tokens.
    seeds : int
        Random control sets per control (at least 1; 5 or more recommended).
    controls, amplify, amplify_controls, curve, curve_seeds, massive_factor, spread_bins :
        See :func:`plan_conditions`.
    curve_networks : sequence of path
        Other ``networks.tsv`` tables of the same scan (e.g. lower thresholds) whose
        key sets are retained as more points of the curve.
    allow_overlap : bool
        Warn instead of refusing when evaluation text was in the scan.
    ablations : sequence of {"zero", "mean"}
        Inhibit and retain by zeroing units, by setting them to their mean over the
        scan's tokens, or both (controls use the same kind as the set they control).
    fnk : sequence of int
        Numbers of components of the FN@k curve: the scan is decomposed once per k
        (:func:`llm2nifti.intervention.fnk.fn_at_k`) and each union of networks is kept
        alone and zeroed against random sets (``curve_seeds``).
    fnk_estimator : Decomposition or StableDecomposition, optional
        The decomposition made for each k (see :func:`~llm2nifti.intervention.fnk.fn_at_k`;
        default: 10 fast decompositions clustered into stable components), on ``device``.
    fnk_threshold : float, optional
        ``|z|`` threshold of their networks (default: the threshold that made ``networks``, or 3.6).
    device, dtype, threads, cache :
        Model loading (see :func:`llm2nifti.models.load_model`).
    batch_size : int
    n_resamples : int
        Bootstrap resamples.
    progress : bool
    loaded : (model, tokenizer), optional
        An already loaded model.

    Returns
    -------
    EvaluationResult
    """
    from ..models import load_model, set_threads
    from .evaluation import Evaluator

    t_start = time.perf_counter()
    if int(seeds) < 1:
        raise UsageError("--seeds must be at least 1")
    nset = networks if isinstance(networks, NeuronSet) else NeuronSet.from_tsv(networks)
    if network_names:
        nset = nset.select(network_names)
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    layout = ds.layout(participant, nset.site)
    nset.check_site(layout.site)
    heldout_docs = load_documents(heldout)[:n_docs] if heldout is not None else None
    choice = _choice_task(task, bigbench, n_items, template, label_words, max_new_tokens)
    overlap_docs = _check_texts(ds, participant, heldout_docs, choice, allow_overlap)
    from ..analysis import base_decomposition, configured

    fnk_estimator = configured(fnk_estimator, "fn_at_k", device=_torch_device(device))
    fnk_sets = _fnk_sets(ds, participant, nset, networks, fnk, fnk_estimator, fnk_threshold,
                         progress)

    if threads is not None or str(device) == "cpu":
        set_threads(threads)
    lm, tok = loaded if loaded is not None else load_model(model, device=device, dtype=dtype,
                                                            cache=cache, gguf_file=gguf_file)
    site = resolve_site(lm, nset.site, layout.site.layers, experts=layout.site.expert_selection)
    _check_layout(layout, site)
    _check_weights(ds, layout, lm, participant)
    stats = C.neuron_stats(ds, participant, site=nset.site)
    seed_list = list(range(int(seeds)))
    groups = {l: site.groups(l) for l in site.layers if site.groups(l) is not None} or None
    conditions = plan_conditions(nset, stats, dict(zip(site.layers, site.widths)), seeds=seed_list,
                                 controls=controls, groups=groups,
                                 amplify=amplify, amplify_controls=amplify_controls, curve=curve,
                                 curve_seeds=curve_seeds, massive_factor=massive_factor,
                                 curve_sets=[(_curve_label(p), NeuronSet.from_tsv(p))
                                             for p in curve_networks],
                                 spread_bins=spread_bins, ablations=tuple(ablations),
                                 fnk_sets=[(k, n) for k, n, _ in fnk_sets])
    evaluator = Evaluator(lm, tok, heldout=heldout_docs, task=choice, max_doc_tokens=max_doc_tokens,
                          batch_size=batch_size)
    results = run_conditions(evaluator, conditions, nset.per_layer(), site.n_neurons, site=site,
                             n_resamples=n_resamples, progress=progress,
                             means=stats["mean"].to_numpy())
    summary = summarize(results)
    massive = C.massive_neurons(stats, massive_factor)
    lines = verdicts(summary) + [massive_line(massive)]
    output = Path(output)
    figures = _write_tables(output, results, summary)
    settings = {
        "networks": str(networks) if not isinstance(networks, NeuronSet) else "NeuronSet",
        "dataset": str(ds.root), "participant": participant,
        "model": str(getattr(lm.config, "name_or_path", model)),
        "site": site.to_dict(), "n_networks": len(nset.names), "n_key_neurons": len(nset),
        "key_share": len(nset) / site.n_neurons,
        "heldout": None if heldout is None else str(heldout),
        "n_heldout_docs": None if heldout_docs is None else len(heldout_docs),
        "max_doc_tokens": max_doc_tokens,
        "task": None if choice is None else choice.name,
        "task_kind": None if choice is None else type(choice).__name__,
        "n_items": None if choice is None else len(choice),
        "seeds": seed_list, "controls": list(controls), "ablations": list(ablations),
        "amplify": list(amplify),
        "curve": list(curve), "curve_networks": [str(p) for p in curve_networks],
        "fnk": [{"k": k, "n_neurons": len(n), "components": str(p)} for k, n, p in fnk_sets],
        "fnk_backend": base_decomposition(fnk_estimator).backend,
        "fnk_n_init": base_decomposition(fnk_estimator).n_init,
        "fnk_n_runs": int(getattr(fnk_estimator, "n_repeats", 1)),
        "fnk_max_iter": int(base_decomposition(fnk_estimator).max_iter),
        "massive_factor": massive_factor,
        "massive_neurons": [[int(l), int(n)] for l, idx in massive.items() for n in idx],
        "spread_bins": spread_bins, "n_resamples": n_resamples,
        "overlap_with_scan": overlap_docs, "scan_tokens": _scan_tokens(ds, participant, nset.site),
        "device": str(next(lm.parameters()).device),
        "seconds": round(time.perf_counter() - t_start, 1), "verdicts": lines,
    }
    write_json(output / "evaluation.json", settings)
    return EvaluationResult(output, results, summary, lines, figures, settings)


def _choice_task(task, bigbench, n_items, template=None, label_words=None, max_new_tokens=16):
    """The task: a BIG-bench file, the built-in Pang-Lee sentences, a user's file, or none."""
    from .tasks import load_task

    if bigbench is not None:
        task = bigbench
    if task is None:
        return None
    return load_task(task, template=template, label_words=label_words,
                     max_new_tokens=max_new_tokens).subset(n_items)


def _torch_device(device):
    """The torch device of the FN@k decompositions: the model's (``auto``: CUDA if there)."""
    if str(device) != "auto":
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _fnk_sets(ds, participant, nset, networks, ks, estimator, threshold, progress):
    """FN@k for each k (decomposed or reused), after the ks are checked against the scan."""
    from ..defaults import Z_THRESHOLD
    from .fnk import fn_at_k, parse_ks

    if not ks:
        return []
    parse_ks(ks, _scan_tokens(ds, participant, nset.site))
    if threshold is None:
        threshold, two_sided = _selection(networks) or (Z_THRESHOLD, True)
    else:
        two_sided = True
    return fn_at_k(ds, ks, estimator, participant=participant, site=nset.site,
                   threshold=threshold, two_sided=two_sided, progress=progress)


def _check_texts(ds, participant, heldout_docs, choice, allow_overlap):
    """Ids of evaluation texts the scan read, per kind; refused unless ``allow_overlap``."""
    from .evaluation import check_overlap

    policy = "warn" if allow_overlap else "error"
    overlap = {}
    if heldout_docs is not None:
        overlap["heldout"] = check_overlap(heldout_docs, ds, participant, policy)
    if choice is not None:
        overlap["task"] = check_overlap(choice.documents(), ds, participant, policy)
    return overlap


def _write_tables(output, results, summary):
    """``results.tsv``, ``summary.tsv`` and the figures; returns the figures' paths."""
    from ..plots import plot_curve, plot_fnk, plot_interventions

    output.mkdir(parents=True, exist_ok=True)
    write_frame(output / "results.tsv", results, index=False, float_format="%.8g")
    write_frame(output / "summary.tsv", summary, index=False, float_format="%.8g")
    figures = [plot_interventions(summary, output / "interventions.png")]
    if (summary["group"] == "curve").any():
        figures.append(plot_curve(summary, output / "curve.png"))
    if (summary["group"] == "fnk").any():
        figures.append(plot_fnk(summary, output / "fnk.png"))
    return figures


def _scan_tokens(ds, participant, site):
    """Tokens in the scan's runs of ``site``."""
    return int(sum(r.metadata()["TokenRange"][1] - r.metadata()["TokenRange"][0]
                   for r in ds.runs(participant=participant, site=site)))
