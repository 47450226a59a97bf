"""``diff``: what changed between two checkpoints of one model, unit by unit and network by network.

Two participants of a dataset (a reference and a candidate, e.g. a base model and its
fine-tuned copy) read the same tokens at the same site; their units are the same units. The
comparison is paired over **documents** (the exchangeable blocks: neighbouring tokens are not
independent, documents are):

* **unit level** (FSL ``randomise``, nilearn's ``non_parametric_inference``): per unit and
  document the difference of the mean activation (``mean``) and the log ratio of the standard
  deviations (``amplitude``), a one-sample t over documents, and family-wise error control
  by the maximum ``|t|`` over all units under sign flips of whole documents
  (:mod:`llm2nifti.analysis.permutation`);
* **network level** (dual regression, :mod:`llm2nifti.analysis.dual_regression`): group CanICA
  over both participants' runs (stable components where the estimator repeats), then per participant
  and document each network's time course and map. A network's *shape* change is the paired
  difference of its maps (t per unit, FWE over the units of that map); its *amplitude* change
  the paired log ratio of its time courses' standard deviations (FWE over networks, with a
  bootstrap interval over documents).

Units are compared by index, so they must be the same units: a unit-permuted or independent
model is refused (``fingerprint`` compares those).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from bids_llm.outputs import DERIVATIVES

from ..errors import UsageError

__all__ = ["diff", "DiffResult", "unit_moments", "TESTS", "PIPELINE_DIFF", "MIN_CORRESPONDENCE"]

PIPELINE_DIFF = DERIVATIVES["diff"].pipeline
TESTS = ("mean", "amplitude")
MIN_CORRESPONDENCE = 0.5  # median same-index correlation some layer must reach
_TINY = 1e-30  # a dead unit's standard deviation, so that its log ratio stays finite


@dataclass
class DiffResult:
    """What :func:`diff` found (and wrote, with ``write=True``).

    Attributes
    ----------
    reference, candidate, site : str
    layout : NeuronLayout
    documents : list of str
        The documents (blocks) of the unit-level tests, in reading order.
    units : dict of str -> PermutationResult
        Per test (``mean``, ``amplitude``): t, FWE p and effect per unit (layer-major).
    networks : pandas.DataFrame
        Per group network: stability, amplitude ratio (candidate / reference) with its 95%
        interval, t and FWE p; shape: units past FWE and the largest ``|t|``.
    shape : dict of str -> PermutationResult
        Per network, its map's paired difference.
    layers : pandas.DataFrame
        Per layer and test: units past FWE, their share, the mean ``|effect|``.
    correspondence : ndarray of shape (n_layers,)
        Per layer, the median over units of the correlation of a unit with the same unit of
        the other participant over tokens.
    selected : NeuronSet
        The units past FWE ``alpha`` (one network per test).
    paths : dict
        What was written.
    timings : dict
        Seconds per stage (read, unit_tests, group_decomposition, dual_regression,
        network_tests).
    """

    reference: str
    candidate: str
    site: str
    layout: object
    documents: list
    units: dict
    networks: pd.DataFrame
    shape: dict
    layers: pd.DataFrame
    correspondence: np.ndarray
    selected: object
    alpha: float
    n_permutations: int
    seconds: float = 0.0
    paths: dict = field(default_factory=dict)
    group: object = None
    left_out: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


class _Clock:
    """Seconds spent in each named stage, in order."""

    def __init__(self):
        self.seconds, self._last = {}, time.perf_counter()

    def __call__(self, stage):
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 3)
        self._last = now


# ------------------------------------------------------------------ input checks
def _pair_runs(ds, reference, candidate, task, site):
    """Runs of both participants, paired by run number; refusals in one line."""
    if reference == candidate:
        raise UsageError(f"--reference and --candidate are both sub-{reference}: name two "
                         "participants of the dataset")
    known = {r["participant_id"].removeprefix("sub-") for r in ds.participants()}
    for who in (reference, candidate):
        if who not in known:
            raise UsageError(f"sub-{who} is not in {ds.root}/participants.tsv (it has "
                             f"{', '.join(sorted(known)) or 'none'}): convert it first")
    if site is None:
        sites = sorted({r.site_kind for r in ds.runs(participant=reference, task=task)})
        if len(sites) > 1:
            raise UsageError(f"sub-{reference} was scanned at several sites ({', '.join(sites)}): "
                             "choose one with --site")
        site = sites[0] if sites else "mlp"
    pairs = []
    for who in (reference, candidate):
        runs = ds.runs(participant=who, task=task, site=site)
        if not runs:
            raise UsageError(f"sub-{who} has no runs at site {site} (task {task or 'any'}): convert "
                             f"it with --site {site}")
        if len({r.task for r in runs}) > 1:
            raise UsageError(f"sub-{who} has runs of several tasks: choose one with --task")
        pairs.append({r.run: r for r in runs})
    if pairs[0].keys() != pairs[1].keys():
        raise UsageError(f"sub-{reference} and sub-{candidate} have different runs "
                         f"({sorted(pairs[0])} vs {sorted(pairs[1])}), so they read different tokens: "
                         "convert both on the same text with the same tokenizer and --run-tokens "
                         "(fingerprint compares models that tokenize differently)")
    la, lb = ds.layout(reference, site), ds.layout(candidate, site)
    if la != lb:
        raise UsageError(f"sub-{reference} and sub-{candidate} have different neuron layouts at "
                         f"{site} ({la.n_neurons} vs {lb.n_neurons} units): diff compares two "
                         "checkpoints of one model; use fingerprint for different models")
    return [(pairs[0][k], pairs[1][k]) for k in sorted(pairs[0])], la, site


def _documents_of(run_a, run_b):
    """Each token's document; refuses runs whose tokens differ."""
    ea, eb = run_a.events(), run_b.events()
    if len(ea) != len(eb) or not (ea["token_id"].to_numpy() == eb["token_id"].to_numpy()).all():
        raise UsageError(f"run {run_a.run}: sub-{run_a.participant} and sub-{run_b.participant} read "
                         "different tokens (another tokenizer or text): diff needs both models on "
                         "the same tokens; use fingerprint to compare models that tokenize differently")
    return ea["document_id"].astype(str).to_numpy()


# ------------------------------------------------------------------ pass 1: moments per document
BLOCK = 8192  # units per block of the float64 passes: memory stays at tokens x BLOCK


class _Moments:
    """Per (document, unit) count, mean and sum of squared deviations, merged across runs
    (Chan et al.'s pairwise update: exact to rounding, no catastrophic cancellation)."""

    def __init__(self):
        self.order, self.count, self.mean, self.m2 = [], {}, {}, {}
        self.documents = []  # each run's token documents, in the order of the runs added

    def add(self, doc, X):
        n = len(X)
        mean = np.empty(X.shape[1])
        m2 = np.empty(X.shape[1])
        for j in range(0, X.shape[1], BLOCK):
            x = X[:, j:j + BLOCK].astype(np.float64)
            mean[j:j + BLOCK] = x.mean(axis=0)
            m2[j:j + BLOCK] = ((x - mean[j:j + BLOCK]) ** 2).sum(axis=0)
        if doc not in self.count:
            self.order.append(doc)
            self.count[doc], self.mean[doc], self.m2[doc] = n, mean, m2
            return
        na = self.count[doc]
        delta = mean - self.mean[doc]
        total = na + n
        self.mean[doc] = self.mean[doc] + delta * (n / total)
        self.m2[doc] = self.m2[doc] + m2 + delta * delta * (na * n / total)
        self.count[doc] = total

    def arrays(self, docs):
        n = np.array([self.count[d] for d in docs], dtype=np.float64)
        mean = np.stack([self.mean[d] for d in docs])
        sd = np.sqrt(np.stack([self.m2[d] for d in docs]) / np.maximum(n - 1, 1)[:, None])
        return n, mean, sd

    def pooled(self):
        """Mean and standard deviation of each unit over all tokens."""
        docs = self.order
        n, mean, _ = self.arrays(docs)
        grand = (n[:, None] * mean).sum(0) / n.sum()
        m2 = sum(self.m2[d] for d in docs) + (n[:, None] * (mean - grand) ** 2).sum(0)
        return grand, np.sqrt(m2 / max(n.sum() - 1, 1))


def _segments(docs):
    """``(document, start, stop)`` of each contiguous stretch of one document."""
    cut = np.flatnonzero(docs[1:] != docs[:-1]) + 1
    starts = np.concatenate([[0], cut])
    stops = np.concatenate([cut, [len(docs)]])
    return [(docs[a], int(a), int(b)) for a, b in zip(starts, stops)]



def _same_unit_correlation(Xa, Xb):
    """Per unit, the correlation of the two participants' values over a run's tokens."""
    r = np.full(Xa.shape[1], np.nan)
    for j in range(0, Xa.shape[1], BLOCK):
        a = Xa[:, j:j + BLOCK].astype(np.float64)
        b = Xb[:, j:j + BLOCK].astype(np.float64)
        a -= a.mean(0)
        b -= b.mean(0)
        den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            r[j:j + BLOCK] = np.where(den > 0, (a * b).sum(0) / den, np.nan)
    return r, len(Xa)


def unit_moments(pairs, layout, progress=False):
    """Pass over the paired runs: per-document moments of both participants and, per unit,
    the token-weighted same-index correlation. Returns ``(moments_a, moments_b, corr)``;
    ``moments_a.documents`` holds each run pair's token documents, for the second pass."""
    from tqdm.auto import tqdm

    from bids_llm.dataset import check_finite, load_run

    ma, mb = _Moments(), _Moments()
    rsum, wsum = np.zeros(layout.n_neurons), np.zeros(layout.n_neurons)
    for ra, rb in tqdm(pairs, desc="diff: read runs", unit="run", disable=not progress):
        docs = _documents_of(ra, rb)
        ma.documents.append(docs)
        Xa, neurons = load_run(ra)
        check_finite(Xa, ra.path, neurons)
        Xb, _ = load_run(rb)
        check_finite(Xb, rb.path, neurons)
        if len(Xa) != len(docs) or Xa.shape != Xb.shape:
            raise UsageError(f"run {ra.run}: its image and events disagree in length: convert it "
                             "again with --overwrite")
        for doc, a, b in _segments(docs):
            ma.add(doc, Xa[a:b])
            mb.add(doc, Xb[a:b])
        r, n = _same_unit_correlation(Xa, Xb)
        ok = np.isfinite(r)
        rsum[ok] += r[ok] * n
        wsum[ok] += n
    with np.errstate(invalid="ignore"):
        corr = np.where(wsum > 0, rsum / wsum, np.nan)
    return ma, mb, corr


def _correspondence(corr, layout, reference, candidate):
    """Per layer, the median same-unit correlation; refuses models whose units differ."""
    layer, _ = layout.neurons()
    per_layer = np.array([np.nanmedian(corr[layer == l]) if np.isfinite(corr[layer == l]).any()
                          else np.nan for l in layout.site.layers])
    best = np.nanmax(per_layer) if np.isfinite(per_layer).any() else np.nan
    if not best >= MIN_CORRESPONDENCE:
        raise UsageError(
            f"the units of sub-{candidate} do not correspond to those of sub-{reference} (the "
            f"median correlation of a unit with the same unit is at most {best:.2f} in every "
            f"layer; same checkpoints' units exceed {MIN_CORRESPONDENCE}): it is not a "
            "checkpoint of the same model with the same units (a unit-permuted or independent "
            "model); compare such models with fingerprint")
    return per_layer


# ------------------------------------------------------------------ unit-level tests
def _unit_tests(ma, mb, n_permutations, random_state):
    """``(documents, {test: PermutationResult}, left_out)``: the paired tests per unit."""
    from .permutation import max_t_fwe

    docs = [d for d in ma.order if ma.count[d] >= 2]
    left_out = [d for d in ma.order if ma.count[d] < 2]
    _, mean_a, sd_a = ma.arrays(docs)
    _, mean_b, sd_b = mb.arrays(docs)
    D = {"mean": mean_b - mean_a,
         "amplitude": np.log(np.maximum(sd_b, _TINY)) - np.log(np.maximum(sd_a, _TINY))}
    return docs, {t: max_t_fwe(D[t], n_permutations, random_state) for t in TESTS}, left_out


def _layer_table(units, layout, alpha):
    layer, _ = layout.neurons()
    rows = []
    for test, res in units.items():
        passed = res.p_fwe <= alpha
        for l in layout.site.layers:
            here = layer == l
            rows.append({"layer": int(l), "test": test, "n_units": int(here.sum()),
                         "n_changed": int(passed[here].sum()),
                         "share_changed": float(passed[here].mean()),
                         "mean_abs_effect": float(np.abs(res.effect[here]).mean()),
                         "max_abs_t": float(np.abs(res.t[here]).max())})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ network level
def _group_maps(pairs, layout, estimator):
    from .decomposition import as_stable

    runs = [r for pair in pairs for r in pair]
    return as_stable(estimator).fit(runs, layout=layout)


def _doc_blocks(pairs, run_documents, progress):
    """Yield ``(document, Xa, Xb)``: whole documents (joined across runs), in float64;
    ``run_documents``: each run pair's token documents (from the first pass)."""
    from tqdm.auto import tqdm

    from bids_llm.dataset import load_run

    current, parts_a, parts_b = None, [], []
    for (ra, rb), docs in tqdm(list(zip(pairs, run_documents)), desc="diff: dual regression",
                               unit="run", disable=not progress):
        Xa, _ = load_run(ra)
        Xb, _ = load_run(rb)
        for doc, a, b in _segments(docs):
            if doc != current and parts_a:
                yield current, np.concatenate(parts_a), np.concatenate(parts_b)
                parts_a, parts_b = [], []
            current = doc
            parts_a.append(np.asarray(Xa[a:b], dtype=np.float64))
            parts_b.append(np.asarray(Xb[a:b], dtype=np.float64))
    if parts_a:
        yield current, np.concatenate(parts_a), np.concatenate(parts_b)


def _dual_regressions(pairs, run_documents, maps, scale, min_tokens, progress):
    """Per document: stage-2 map differences ``(docs, k, units)`` (float32), the time courses'
    log standard-deviation ratios ``(docs, k)``, the documents used and those left out."""
    from .dualreg import _pinv_rows, dual_regression

    mu, sd = scale
    pinv = _pinv_rows(maps)
    shape, amp, used, left = [], [], [], []
    for doc, Xa, Xb in _doc_blocks(pairs, run_documents, progress):
        if len(Xa) < min_tokens:
            left.append(doc)
            continue
        Xa -= mu
        Xa /= sd
        Xb -= mu
        Xb /= sd
        Aa, Ba = dual_regression(Xa, maps, pinv)
        Ab, Bb = dual_regression(Xb, maps, pinv)
        shape.append((Bb - Ba).astype(np.float32))
        amp.append(np.log(np.maximum(Ab.std(0), _TINY)) - np.log(np.maximum(Aa.std(0), _TINY)))
        used.append(doc)
    return np.stack(shape) if shape else None, np.array(amp), used, left


def _bootstrap_mean_ci(x, n_boot=2000, random_state=0):
    rng = np.random.default_rng(random_state)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    means = x[idx].mean(axis=1)
    return np.quantile(means, [0.025, 0.975], axis=0)


def _network_tests(shape_d, amp, names, stability, n_permutations, random_state, alpha):
    from .permutation import max_t_fwe

    amp_res = max_t_fwe(amp, n_permutations, random_state)
    lo, hi = _bootstrap_mean_ci(amp, random_state=random_state)
    shape, rows = {}, []
    for j, name in enumerate(names):
        res = max_t_fwe(shape_d[:, j, :], n_permutations, random_state)
        shape[name] = res
        rows.append({"network": name,
                     "stability": np.nan if stability is None else float(stability[j]),
                     "amplitude_ratio": float(np.exp(amp[:, j].mean())),
                     "amplitude_ci_low": float(np.exp(lo[j])), "amplitude_ci_high": float(np.exp(hi[j])),
                     "amplitude_t": float(amp_res.t[j]), "amplitude_p_fwe": float(amp_res.p_fwe[j]),
                     "shape_n_changed": int((res.p_fwe <= alpha).sum()),
                     "shape_max_abs_t": float(np.abs(res.t).max())})
    return pd.DataFrame(rows), shape


def _membership(zmaps, names, threshold):
    """Each unit's group network: the map where its |z| is largest, past ``threshold``; else n/a."""
    z = np.abs(zmaps)
    best = z.argmax(axis=0)
    return np.where(z.max(axis=0) > threshold, np.asarray(names, dtype=object)[best], "n/a")


def _selected(units, layout, membership, alpha):
    from ..neuronset import NeuronSet

    layer, neuron = layout.neurons()
    frames = []
    for test, res in units.items():
        hit = np.flatnonzero(res.p_fwe <= alpha)
        frames.append(pd.DataFrame({
            "network": test, "layer": layer[hit], "neuron": neuron[hit], "test": test,
            "statistic": res.t[hit], "effect": res.effect[hit], "p_fwe": res.p_fwe[hit],
            "group_network": membership[hit]}))
    return NeuronSet(pd.concat(frames, ignore_index=True), site=layout.site.kind)


# ------------------------------------------------------------------ the command
def _check_shape_fits(n_docs, k, n_units, longest):
    """Refuse a dual regression that would not fit: the stage-2 map differences of every
    document, and the float64 working copies of the longest document of both participants."""
    from ..memory import check_fits

    check_fits(int(n_docs) * k * n_units * 4 * 2 + 8 * int(longest) * n_units * 8 + 64 * 2**20,
               f"dual regression of {n_docs} documents (the longest {longest} tokens) x {k} "
               f"networks x {n_units} units",
               "ask for fewer components (-k) or convert shorter documents")


def diff(dataset, reference, candidate, *, task=None, site=None, estimator=None,
         n_permutations=1000, alpha=0.05, random_state=0, threads=None, progress=False,
         write=True, output=None):
    """Compare two checkpoints' units and networks on the same tokens (see the module notes).

    Parameters
    ----------
    dataset : path or Dataset
    reference, candidate : str
        Participant labels (e.g. the base model and its fine-tuned copy).
    task, site : str, optional
        The runs compared (site: ``mlp``, ``mlp-out``, ...; default: the only one).
    estimator : Decomposition or StableDecomposition, optional
        The group decomposition over both participants' runs (cloned; default:
        ``StableDecomposition(Decomposition(backend="fast"), n_repeats=10)``: networks that
        recur across seeds).
    n_permutations : int
        Sign flips of whole documents for every FWE-corrected p-value.
    alpha : float
        FWE level of the units kept in ``units.tsv`` and counted per layer.
    random_state : int
        Seed of the permutations (the estimator has its own).
    progress : bool
        Progress bars (the group decomposition's, unless its estimator says otherwise).
    write : bool
        Write the derivative (``derivatives/llm2nifti-diff``, or ``output``).

    Returns
    -------
    DiffResult
    """
    from bids_llm.dataset import Dataset

    from ..models import set_threads
    from .permutation import check_blocks

    set_threads(threads)
    t0 = time.perf_counter()
    clock = _Clock()
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    from .decomposition import base_decomposition, configured

    estimator = configured(estimator, "diff")
    if progress and not base_decomposition(estimator).progress:
        estimator = configured(estimator, progress=True)
    n_components = int(base_decomposition(estimator).n_components)
    if not 0 < alpha < 1:
        raise UsageError(f"alpha {alpha}: give a level between 0 and 1, e.g. 0.05")
    pairs, layout, site = _pair_runs(ds, reference, candidate, task, site)
    ma, mb, corr = unit_moments(pairs, layout, progress)
    check_blocks(sum(ma.count[d] >= 2 for d in ma.order), n_permutations)
    correspondence = _correspondence(corr, layout, reference, candidate)
    clock("read")
    docs, units, left_units = _unit_tests(ma, mb, n_permutations, random_state)
    layers = _layer_table(units, layout, alpha)
    clock("unit_tests")

    min_tokens = max(2 * n_components, 3)
    long_docs = sum(ma.count[d] >= min_tokens for d in ma.order)
    check_blocks(long_docs, n_permutations, f"documents of at least {min_tokens} tokens "
                                            f"(twice the {n_components} networks)")
    _check_shape_fits(long_docs, n_components, layout.n_neurons, max(ma.count.values()))
    group = _group_maps(pairs, layout, estimator)
    clock("group_decomposition")
    mu, sd = ma.pooled()
    shape_d, amp, _, left_networks = _dual_regressions(
        pairs, ma.documents, group.components_, (mu, np.where(sd > 0, sd, 1.0)), min_tokens, progress)
    clock("dual_regression")
    from ..defaults import Z_THRESHOLD
    from .selection import network_names

    names = network_names(n_components)
    stability = None if group.stability_ is None else group.stability_["stability"].to_numpy()
    networks, shape = _network_tests(shape_d, amp, names, stability, n_permutations,
                                     random_state, alpha)
    membership = _membership(group.zmaps_, names, Z_THRESHOLD)
    clock("network_tests")
    result = DiffResult(
        reference=reference, candidate=candidate, site=site, layout=layout, documents=docs,
        units=units, networks=networks, shape=shape, layers=layers, correspondence=correspondence,
        selected=_selected(units, layout, membership, alpha), alpha=alpha,
        n_permutations=n_permutations, group=group,
        left_out={"units": left_units, "networks": left_networks}, timings=clock.seconds)
    result.task = pairs[0][0].task
    result.seconds = time.perf_counter() - t0
    if write:
        from .diff_outputs import write_diff

        write_diff(result, ds, pairs, output)
    return result
