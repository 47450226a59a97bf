"""``fingerprint``: is one model's network structure another's, beyond the stimulus?

For each participant (model) of a dataset: its networks (stable CanICA maps thresholded at
``|z|`` > 3.6, decomposed once as ``desc-fingerprint`` and reused, or a ``networks.tsv`` the
user gives), each network's time
course (the signed mean of its units, as ``connectivity --signals mean``) pooled to words,
so that models with different tokenizers share one axis. The reference is then compared with
each candidate and each independent model (:mod:`llm2nifti.analysis.compare`): score,
stimulus null and p-value, and a lineage verdict from the independent models' scores.
Independent models may be other participants or randomly initialised copies of the
reference's architecture, which :func:`random_copies` scans into the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from bids_llm.outputs import DERIVATIVES

from ..defaults import Z_THRESHOLD
from ..errors import UsageError
from .decomposition import configured

__all__ = ["fingerprint", "FingerprintResult", "ParticipantNetworks", "participant_networks",
           "random_copies", "PIPELINE_FINGERPRINT", "MIN_STABILITY", "DESC"]

PIPELINE_FINGERPRINT = DERIVATIVES["fingerprint"].pipeline
# The decompositions fingerprint makes are written under this desc (reused when one made by the
# same estimator on the same runs is there): a participant's own desc-canica maps, made with
# other settings, are neither taken nor overwritten.
DESC = "fingerprint"
# The reference's networks compared by default, where its maps have stabilities: those found
# alike every time. Over the same seeds, the components below it are the ones whose alternative
# optima the two models' clusterings settle differently (all 20: 0.932-0.981 at 8,192 tokens;
# those at 0.9 or more: 0.973-0.993).
MIN_STABILITY = 0.9


@dataclass
class ParticipantNetworks:
    """One participant's networks at word level.

    Attributes
    ----------
    participant : str
    names : list of str
        Networks kept (those with at least one unit past the threshold).
    words : pandas.DataFrame
        ``document_id``, ``word_index``, ``word`` per row of ``values``.
    values : ndarray of shape (words, networks)
    depth : ndarray of shape (networks,)
        Mean layer of each network's units (weighted by ``|z|``) over the model's number of layers.
    components : Path or None
        The components image (None when a networks table was given).
    index : object
        The :class:`~llm2nifti.acquisition.words.WordIndex` (for the RSA pass).
    runs, slices : list
        The token runs and their slices in the token series.
    """

    participant: str
    names: list
    words: object
    values: np.ndarray
    depth: np.ndarray
    components: Path | None
    index: object = None
    runs: list = field(default_factory=list)
    slices: list = field(default_factory=list)


def _components(ds, participant, task, site, estimator):
    """The participant's components image made by ``estimator`` (``desc-fingerprint``):
    reused when written before by the same estimator on the same runs, else made now."""
    from .decomposition import decompose, reusable, select_runs

    runs, _ = select_runs(ds, participant, task, None, site)
    path = reusable(ds, runs, DESC, estimator)
    if path is not None:
        return path
    return decompose(ds, estimator, participant=participant, task=task, site=site,
                     desc=DESC).components


def participant_networks(ds, participant, task, site, *, pool="mean", threshold=Z_THRESHOLD,
                         estimator=None, networks_tsv=None, min_stability=None):
    """:class:`ParticipantNetworks` of one participant (see the module); ``estimator``: the
    decomposition made when no ``networks_tsv`` is given (default: fingerprint's)."""
    from bids_llm.dataset import load_run

    from ..acquisition import participant_words
    from ..neuronset import NeuronSet
    from .connectomes import network_weights
    from .selection import load_maps, maps_to_neurons, network_names

    runs, slices, index = participant_words(ds, participant, task, site)
    ds.check_runs(runs)
    layout = ds.layout(participant, site)
    from ..memory import check_fits, run_shapes

    largest = max(t * v for t, v in run_shapes(runs)) * 4
    check_fits(3 * largest, f"reading sub-{participant}'s runs of up to "
                            f"{largest // 4 // layout.n_neurons} tokens x {layout.n_neurons} neurons",
               "convert with a smaller --run-tokens so that runs are smaller")
    components = None
    if networks_tsv is None:
        components = _components(ds, participant, task, site,
                                 configured(estimator, "fingerprint"))
        maps = load_maps(components, layout)
        nset = maps_to_neurons(maps, layout, threshold=threshold)
        names = network_names(len(maps))
        if min_stability is not None:
            from .selection import _network_stability

            stable = _network_stability(components, names, min_stability).index
            names = [n for n in names if n in stable]
            nset = nset.select([n for n in nset.names if n in stable])
    else:
        nset = NeuronSet.from_tsv(networks_tsv)
        names = list(nset.names)
    weights = network_weights(nset, layout, names)
    table = nset.table  # depth: mean layer of each network's units, weighted by |z|
    w = np.abs(table["z"].to_numpy()) if "z" in table else np.ones(len(table))
    sums = table.assign(_w=w, _lw=w * table["layer"]).groupby("network")[["_lw", "_w"]].sum()
    depth = ((sums["_lw"] / sums["_w"]).reindex(names).fillna(0.0).to_numpy()
             / layout.site.n_layers)
    kept = np.flatnonzero(np.abs(weights).sum(axis=1) > 0)
    if not len(kept):
        raise UsageError(f"sub-{participant}'s networks have no unit (|z| > {threshold}): "
                         "lower --threshold")
    tokens = np.concatenate([load_run(r)[0] @ weights[kept].T for r in runs])
    return ParticipantNetworks(participant, [names[i] for i in kept],
                               index.table[["document_id", "word_index", "word"]],
                               index.pool(tokens, pool), depth[kept], components, index,
                               runs, slices)


def _model_of(ds, participant):
    row = next((r for r in ds.participants() if r["participant_id"] == f"sub-{participant}"), None)
    if row is None:
        raise UsageError(f"sub-{participant} is not in {ds.root}/participants.tsv")
    return row["model"]


def random_copies(ds, reference, task, site, n, *, seed=0, threads=None, progress=False):
    """Scan ``n`` randomly initialised copies of the reference's architecture into ``ds``.

    Each copy reads exactly the reference's documents (same tokenizer, tokens, runs); its
    participant label is ``<reference>rand<seed>``. Copies already scanned are kept.
    Returns the labels.
    """
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from bids_llm.dataset import acq_for
    from bids_llm.naming import bids_name, inside

    from ..acquisition import Document, scan
    from ..models import load_model, weights_hash

    record = json.loads(inside(ds.root, "code", "llm2nifti", bids_name(
        "convert", ".json", sub=reference, task=task, acq=acq_for(site))).read_text())
    lm, tokenizer = load_model(_model_of(ds, reference))
    texts = ds.documents(task)
    order = dict.fromkeys(e for r in ds.runs(participant=reference, task=task, site=site)
                          for e in r.events()["document_id"])
    documents = [Document(d, texts[d]) for d in order]
    layers = list(ds.layout(reference, site).site.layers)
    labels, own = [], weights_hash(lm)
    for i in range(n):
        label = f"{reference}rand{seed + i}"
        torch.manual_seed(seed + i)
        copy = AutoModelForCausalLM.from_config(lm.config).eval()
        if weights_hash(copy) == own:  # the reference is itself a seeded init
            raise UsageError(f"the random copy of seed {seed + i} has the reference's own "
                             "weights: pass another --random-state")
        scan(ds.root, f"{_model_of(ds, reference)} (random init, seed {seed + i})", documents,
             loaded=(copy, tokenizer), label=label, task=task, neurons=site, layers=layers,
             run_tokens=record["run_tokens"], max_tokens=record["n_tokens"],
             bos=record.get("bos", True), resume=True, progress=progress, threads=threads)
        labels.append(label)
    return labels


@dataclass
class FingerprintResult:
    """What :func:`fingerprint` found and wrote.

    Attributes
    ----------
    reference : str
    summary : pandas.DataFrame
        One row per compared participant: ``role`` (candidate, independent), ``score``,
        ``score_pearson``, ``n_above`` (matched pairs with ``|r|`` > 0.5), ``null_mean``,
        ``null_95``, ``p``, ``null``, ``n_words``, ``n_documents``, ``verdict``, ``reason``.
    matrices : dict
        Participant -> ``{"spearman": DataFrame, "pearson": DataFrame}`` (reference networks
        in rows).
    pairs : dict
        Participant -> DataFrame of matched pairs with both relative depths.
    nulls : dict
        Participant -> ndarray of null scores.
    isc : pandas.DataFrame or None
        Inter-model correlation per reference network (three or more participants).
    rsa : dict or None
        Participant -> :class:`~llm2nifti.analysis.rsa.LayerSimilarity`.
    reference_decompositions : int or str
        How many decompositions the reference's networks rest on (the summary's
        ``decompositions`` column says it for the others; ``"networks.tsv"``: given).
    min_stability : float or None
        The stability the reference's compared networks have at least (None: every network).
    paths : dict
    """

    reference: str
    summary: object
    matrices: dict
    pairs: dict
    nulls: dict
    isc: object = None
    rsa: dict | None = None
    reference_decompositions: object = 1
    min_stability: float | None = None
    paths: dict = field(default_factory=dict)


def _check_participants(ds, reference, candidates, independent, task, site):
    """Task and site of the comparison; refuse unknown, repeated or self comparisons."""
    from ..errors import only_choice

    known = sorted({r.participant for r in ds.runs()})
    others = list(candidates) + list(independent)
    for p in [reference, *others]:
        if p not in known:
            raise UsageError(f"unknown participant {p!r}: the dataset holds {', '.join(known)}")
    if not candidates:
        raise UsageError("no --candidate: name at least one participant to compare with the reference")
    if reference in others:
        raise UsageError(f"--candidate/--independent {reference} is the reference: compare it "
                         "with another participant")
    if len(set(others)) != len(others):
        raise UsageError("a participant is named twice among --candidate/--independent: name each once")
    runs = ds.runs(participant=reference, task=task, site=site)
    task = only_choice([r.task for r in runs], "task", "--task")
    site = only_choice([r.site_kind for r in runs], "site", "--site")
    for p in others:
        if not ds.runs(participant=p, task=task, site=site):
            raise UsageError(f"sub-{p} has no runs of task {task} at site {site}: convert it "
                             "with the same --text, --task and --site")
    return task, site


def _preflight(ds, reference, others, task, site, n_permutations):
    """Refuse, before anything is written, comparisons whose words cannot carry a null."""
    from ..acquisition import participant_words
    from .compare import align, null_kind

    ref = participant_words(ds, reference, task, site)[2].table
    for p in others:
        table = participant_words(ds, p, task, site)[2].table
        try:
            al, _ = align(ref, np.zeros((len(ref), 1)), table, np.zeros((len(table), 1)))
        except UsageError:
            raise UsageError(f"sub-{reference} and sub-{p} read no common documents of task "
                             f"{task}: convert both with the same --text") from None
        null_kind(al, n_permutations)


def _compare_pair(ref, other, n_permutations, random_state):
    """Score, matrices, matched pairs and null of one participant against the reference."""
    import pandas as pd

    from .compare import ABOVE, align, correlation_matrix, match_score, null_scores, p_value

    al, rows = align(ref.words, ref.values, other.words, other.values)
    mats = {m: correlation_matrix(al.A, al.B, m) for m in ("spearman", "pearson")}
    r, c, score = match_score(mats["spearman"])
    null, kind = null_scores(al, n_permutations, "spearman", random_state)
    pairs = pd.DataFrame({
        "reference_network": [ref.names[i] for i in r], "network": [other.names[j] for j in c],
        "spearman": mats["spearman"][r, c].round(6), "pearson": mats["pearson"][r, c].round(6),
        "reference_depth": ref.depth[r].round(4), "depth": other.depth[c].round(4)})
    row = {"participant": other.participant, "score": round(score, 6),
           "score_pearson": round(match_score(mats["pearson"])[2], 6),
           "n_above": int((np.abs(mats["spearman"][r, c]) > ABOVE).sum()),
           "n_matched": len(r), "null_mean": round(float(null.mean()), 6),
           "null_95": round(float(np.percentile(null, 95)), 6),
           "p": round(p_value(score, null), 6), "null": kind,
           "n_words": len(al.A), "n_documents": al.n_documents}
    frames = {m: pd.DataFrame(v.round(6), index=ref.names, columns=other.names)
              for m, v in mats.items()}
    return row, frames, pairs, null, rows


def _isc(ref, others, frames, random_state):
    """Inter-model correlation of the reference's networks over the words all models read."""
    import pandas as pd

    from .compare import intermodel_correlation, match_score

    keys = ref.words[["document_id", "word_index"]].assign(_0=np.arange(len(ref.words)))
    for k, net in enumerate(others, 1):
        keys = keys.merge(net.words[["document_id", "word_index"]].assign(
            **{f"_{k}": np.arange(len(net.words))}), on=["document_id", "word_index"])
    matched, signs = {}, {}
    for net in others:
        C = frames[net.participant]["spearman"].to_numpy()
        r, c, _ = match_score(C)
        matched[net.participant] = dict(zip(r, c))
        # a network matched with its negation is oriented as the reference's
        signs[net.participant] = {i: (-1.0 if C[i, j] < 0 else 1.0) for i, j in zip(r, c)}
    rows = [i for i in range(len(ref.names)) if all(i in m for m in matched.values())]
    series = np.stack([np.stack([ref.values[keys["_0"], i]] + [
        signs[net.participant][i] * net.values[keys[f"_{k}"], matched[net.participant][i]]
        for k, net in enumerate(others, 1)], axis=1) for i in rows])
    res = intermodel_correlation(series, keys["document_id"].to_numpy(), random_state=random_state)
    table = pd.DataFrame({"network": [ref.names[i] for i in rows],
                          "depth": ref.depth[rows].round(4),
                          "loo_r": res["mean"].round(6), "ci_low": res["ci_low"].round(6),
                          "ci_high": res["ci_high"].round(6), "p": res["p"].round(6)})
    for k, p in enumerate([ref.participant] + [n.participant for n in others]):
        table[f"r_{p}"] = res["loo"][:, k].round(6)
    # Shared: every model's own leave-one-out r beyond its null; else idiosyncratic.
    table["n_models_beyond_null"] = (res["p_each"] <= 0.05).sum(axis=1)
    table["shared"] = table["n_models_beyond_null"] == res["loo"].shape[1]
    return table.sort_values("loo_r", ascending=False, ignore_index=True)


def fingerprint(dataset, reference, candidates, *, independent=(), n_random=0, task=None,
                site=None, pool="mean", n_permutations=1000, threshold=Z_THRESHOLD, estimator=None,
                random_state=0, rsa=True, alpha=0.05, networks=None, output=None, threads=None,
                progress=False, min_stability="auto"):
    """Compare a reference model with candidates, as subjects reading one text.

    Parameters
    ----------
    dataset : path or Dataset
    reference : str
        Participant label of the reference model.
    candidates : sequence of str
        Participants whose lineage is asked about.
    independent : sequence of str
        Participants known to be unrelated to the reference.
    n_random : int
        Randomly initialised copies of the reference's architecture to scan (once) and use
        as independent models (see :func:`random_copies`).
    task, site : str, optional
        Inferred when the reference has one choice.
    pool : {"mean", "last"}
        How a word's value comes from its tokens.
    n_permutations : int
        Draws of the stimulus null (at least 1,000 for a p-value the verdict uses).
    threshold : float
        Networks: the ``|z|`` threshold of each participant's maps.
    estimator : Decomposition or StableDecomposition, optional
        The decomposition of each participant that has no ``networks`` table (cloned; default:
        ``StableDecomposition(Decomposition(backend="fast"), n_repeats=50)``: one
        decomposition's networks move with its seed). Written as ``desc-fingerprint`` maps
        and reused by a later run with the same estimator.
    random_state : int
        Seed of the nulls (permutations, random copies); the estimator has its own.
    min_stability : float, "auto" or None
        Compare only the reference's networks whose stability (ICASSO Iq) is at least this;
        every other model keeps all its networks, so that a network the reference finds
        every time can meet its counterpart however tightly the other model's clustering
        holds that counterpart. ``"auto"``: ``MIN_STABILITY`` (0.9) where the reference's
        maps have stabilities and one network reaches it, every network otherwise (maps of
        one decomposition, a ``networks.tsv``, nothing that stable); None: every network.
        Components below 0.9 have alternative optima that two decompositions of the same data
        settle differently (see the stable networks guide).
    rsa : bool
        Also compare every layer of the reference with every layer of each model
        (:func:`~llm2nifti.analysis.rsa.layer_similarity`).
    alpha : float
        Level of the stimulus test that a "derived" verdict needs.
    networks : dict, optional
        Participant -> ``networks.tsv`` to use instead of thresholding its CanICA maps.
    output : path, optional
        Default ``DATASET/derivatives/llm2nifti-fingerprint``.

    Returns
    -------
    FingerprintResult
    """
    import pandas as pd

    from bids_llm.dataset import Dataset

    from ..models import set_threads
    from ..neuronset import NeuronSet
    from .fingerprint_outputs import write_fingerprint

    set_threads(threads)
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    candidates, independent = list(candidates), list(independent)
    task, site = _check_participants(ds, reference, candidates, independent, task, site)
    if n_permutations < 1:
        raise UsageError(f"--n-permutations must be at least 1, got {n_permutations}")
    if pool not in ("mean", "last"):
        raise UsageError(f"--pool {pool!r}: choose mean or last")
    compared = {reference, *candidates, *independent}
    for p, path in (networks or {}).items():
        if p not in compared:
            raise UsageError(f"--networks names {p!r}, which is not compared: name the "
                             "reference, a candidate or an independent participant")
        NeuronSet.from_tsv(path)  # readable, before anything is written
    _preflight(ds, reference, candidates + independent, task, site, n_permutations)
    randoms = random_copies(ds, reference, task, site, n_random, seed=random_state,
                            threads=threads, progress=progress) if n_random else []
    estimator = configured(estimator, "fingerprint")
    least = _resolve_min_stability(ds, reference, task, site, min_stability, networks, estimator)
    nets = {p: participant_networks(ds, p, task, site, pool=pool, threshold=threshold,
                                    estimator=estimator,
                                    min_stability=least if p == reference else None,
                                    networks_tsv=(networks or {}).get(p))
            for p in [reference, *candidates, *independent, *randoms]}
    ref = nets[reference]
    rows, matrices, pairs, nulls = [], {}, {}, {}
    for p in [*candidates, *independent, *randoms]:
        row, matrices[p], pairs[p], nulls[p], _ = _compare_pair(ref, nets[p], n_permutations,
                                                                random_state)
        rows.append(dict(row, role="candidate" if p in candidates else
                         "random-init" if p in randoms else "independent",
                         decompositions=_n_decompositions(nets[p])))
    summary = _verdicts(pd.DataFrame(rows), alpha)
    group = [nets[p] for p in [*candidates, *independent]]
    isc = _isc(ref, group, matrices, random_state) if len(group) >= 2 else None
    similarity = None
    if rsa:
        from .rsa import layer_similarity

        similarity = {p: layer_similarity(ds, ref, nets[p], n_permutations=n_permutations,
                                          random_state=random_state) for p in nets if p != reference}
    result = FingerprintResult(reference, summary, matrices, pairs, nulls, isc, similarity,
                               reference_decompositions=_n_decompositions(ref),
                               min_stability=least)
    result.paths = write_fingerprint(result, ds, task, site, pool, output)
    return result


def _resolve_min_stability(ds, reference, task, site, min_stability, networks, estimator):
    """The reference's ``min_stability``: ``"auto"`` becomes ``MIN_STABILITY`` where its
    maps have stabilities (decomposing them now if missing) and one network reaches it, None
    otherwise."""
    if isinstance(min_stability, str):
        if min_stability != "auto":
            raise UsageError(f"--min-stability {min_stability!r}: give a number, auto or all")
        if (networks or {}).get(reference) is not None:
            return None
        from .stability import read_stability

        components = _components(ds, reference, task, site, estimator)
        table = read_stability(components)
        if table is None or not (table["stability"] >= MIN_STABILITY).any():
            return None  # nothing recurs that well: every network, and the CLI says so
        return MIN_STABILITY
    return None if min_stability is None else float(min_stability)


def _n_decompositions(net):
    """How many decompositions a participant's networks rest on (``"networks.tsv"``: given)."""
    from .decomposition import read_sidecar

    if net.components is None:
        return "networks.tsv"
    sidecar = read_sidecar(net.components) or {}
    return int(sidecar.get("Stability", {}).get("NDecompositions", 1))


def _verdicts(summary, alpha):
    from .compare import lineage_verdict

    indep = summary[summary["role"] != "candidate"].set_index("participant")["score"].to_dict()
    verdicts = [lineage_verdict(r.score, r.p, indep, alpha) if r.role == "candidate" else
                ("independent", "a model known to be unrelated: a yardstick for the candidates")
                for r in summary.itertuples()]
    summary["verdict"] = [v for v, _ in verdicts]
    summary["reason"] = [why for _, why in verdicts]
    return summary
