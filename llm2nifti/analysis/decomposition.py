"""Decompose a scan into spatial maps over neurons: nilearn's CanICA / DictLearning or a torch backend.

nilearn's defaults are wrong for neurons (see the dataset README): every
estimator here gets the dataset's all-ones neuron mask, ``smoothing_fwhm=None``,
``detrend=False``, ``standardize="zscore_sample"`` and ``threshold=None``.
Components come back in *layer-major* neuron order, whatever the backend, and
are written as 4D images on the dataset's grid through :class:`NeuronLayout`.

:func:`decompose` reads the runs of a dataset selected by BIDS entities and
writes a derivative ``derivatives/llm2nifti-<method>/``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..errors import UsageError

__all__ = ["Decomposition", "StableDecomposition", "default_decomposition", "configured",
           "base_decomposition", "as_stable", "reusable", "WORKFLOW_DECOMPOSITIONS",
           "decompose", "DecomposeResult", "zscore_maps",
           "explained_variance", "nilearn_estimator", "METHODS", "BACKENDS", "select_runs"]

log = logging.getLogger(__name__)

from ..defaults import (BACKENDS, MAX_ITER, METHODS, N_COMPONENTS, N_INIT,  # noqa: F401
                       WORKFLOW_DECOMPOSITIONS)

#: The fast backend's FastICA settings: passed to :func:`~llm2nifti.analysis.fastica.canica`,
#: refused with the nilearn backend unless at their default, recorded in the sidecar and
#: compared before a decomposition is reused.
FASTICA_OPTIONS = ("max_iter", "tol")


def nilearn_estimator(method, mask_img, n_components=N_COMPONENTS, n_init=N_INIT, random_state=0,
                      n_jobs=1, alpha=10.0, verbose=0):
    """A nilearn decomposition estimator with the settings that suit neurons.

    Parameters
    ----------
    method : {"canica", "dictlearning"}
    mask_img : Niimg-like
        The dataset's neuron mask (all neurons, nothing else).
    n_components, n_init, random_state, n_jobs, alpha, verbose :
        Passed on (``n_init`` to CanICA, ``alpha`` to DictLearning).

    Returns
    -------
    nilearn.decomposition.CanICA or nilearn.decomposition.DictLearning
    """
    from nilearn.decomposition import CanICA, DictLearning

    common = dict(mask=mask_img, n_components=n_components, smoothing_fwhm=None,
                  detrend=False, standardize="zscore_sample", random_state=random_state,
                  n_jobs=n_jobs, verbose=verbose, memory=None)
    if method == "canica":
        return CanICA(threshold=None, n_init=n_init, do_cca=True, **common)
    if method == "dictlearning":
        return DictLearning(alpha=alpha, **common)
    raise UsageError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")


def zscore_maps(components):
    """Z-score each map over neurons: ``(c - mean) / std`` per row (ddof=0)."""
    C = np.asarray(components, dtype=np.float64)
    mean = C.mean(axis=1, keepdims=True)
    std = C.std(axis=1, keepdims=True)
    std[std == 0] = 1.0
    return ((C - mean) / std).astype(np.float32)


def _load_fn(run):
    from bids_llm.dataset import load_run

    return lambda: load_run(run, mmap=True)[0]


def explained_variance(runs, components, device="cpu"):
    """Share of the z-scored runs' variance that the maps explain.

    Parameters
    ----------
    runs : list of Run or path
    components : ndarray of shape (k, n_neurons)
        Layer-major maps.
    device : str

    Returns
    -------
    per_component : ndarray of shape (k,)
        ``||Z c||^2 / ||Z||^2`` for each unit-norm map ``c`` (nilearn's score).
    total : float
        R^2 of regressing every token on all maps together.
    """
    import torch

    from .reduction import zscore_

    C = torch.as_tensor(np.asarray(components, dtype=np.float32), device=device)
    norms = C.norm(dim=1, keepdim=True)
    norms[norms == 0] = 1
    C = C / norms
    gram_inv = torch.linalg.pinv(C.double() @ C.double().T)
    proj = np.zeros(C.shape[0])
    fitted = 0.0
    total = 0.0
    for run in runs:
        X = np.array(_load_fn(run)(), dtype=np.float32, copy=True)
        Z = zscore_(torch.from_numpy(X).to(device))
        P = (Z @ C.T).double()  # (T, k)
        proj += (P ** 2).sum(0).cpu().numpy()
        fitted += float(((P @ gram_inv) * P).sum())
        total += float((Z.double() ** 2).sum())
    total = total or 1.0
    return proj / total, fitted / total


def _layout_of(runs, layout):
    """``layout``, or the one neuron layout of the runs' sidecars."""
    if layout is not None:
        return layout
    from bids_llm.dataset import run_layout

    found = {run_layout(r) for r in runs}
    if len(found) > 1:
        raise UsageError("imgs have different neuron layouts: decompose the runs of one "
                         "participant and site together")
    return found.pop()


class _MapsMixin(TransformerMixin):
    """What a fitted decomposition offers, as nilearn's decompositions do.

    ``components_img_`` (the maps as a 4D image), ``transform`` (each run's component time
    courses), ``inverse_transform`` (back to runs) and ``score`` (explained variance). Runs are
    z-scored over their tokens (ddof 1, as the fit reads them) and regressed on the maps by
    least squares, as nilearn's ``NiftiMapsMasker`` does.
    """

    def _runs_data(self, imgs):
        from bids_llm.dataset import load_run, run_layout

        for img in imgs:
            if run_layout(img) != self.layout_:
                raise UsageError(f"{Path(str(getattr(img, 'path', img))).name} was recorded with "
                                 "another neuron layout than the maps: pass runs of the "
                                 "participant and site the decomposition was fitted on")
            X = np.array(load_run(img, mmap=True)[0], dtype=np.float64)
            std = X.std(axis=0, ddof=1, keepdims=True) if len(X) > 1 else np.zeros((1, X.shape[1]))
            X -= X.mean(axis=0, keepdims=True)
            yield np.divide(X, std, out=np.zeros_like(X), where=std > 0)

    def transform(self, imgs):
        """Each run's component time courses.

        Parameters
        ----------
        imgs : list of Run or path
            4D runs of the layout the maps were fitted on.

        Returns
        -------
        list of ndarray of shape (n_tokens, n_components)
        """
        check_is_fitted(self, "components_")
        pinv = np.linalg.pinv(np.asarray(self.components_, dtype=np.float64))
        return [Z @ pinv for Z in self._runs_data(_as_list(imgs))]

    def inverse_transform(self, loadings):
        """Runs rebuilt from component time courses (as :meth:`transform` returns them).

        Returns
        -------
        list of nibabel.Nifti1Image
            One 4D image per run, one volume per token, on the dataset's grid.
        """
        check_is_fitted(self, "components_")
        C = np.asarray(self.components_, dtype=np.float64)
        return [self.layout_.to_img(np.atleast_2d(L) @ C) for L in loadings]

    def score(self, imgs, y=None, per_component=False):
        """Share of the z-scored runs' variance the maps explain (R^2 of the regression).

        ``per_component``: each map's share alone (see :func:`explained_variance`).
        """
        check_is_fitted(self, "components_")
        per, total = explained_variance(_as_list(imgs), self.components_)
        return per if per_component else total

    def components_img(self, z=False):
        """The maps (or z-maps) as a 4D image, one volume per component."""
        return self.layout_.to_img(self.zmaps_ if z else self.components_)

    def _set_fitted_maps(self):
        self.zmaps_ = zscore_maps(self.components_)
        self.components_img_ = self.layout_.to_img(self.components_)


def _as_list(imgs):
    return [imgs] if isinstance(imgs, (str, Path)) or hasattr(imgs, "path") else list(imgs)


class Decomposition(_MapsMixin, BaseEstimator):
    """Spatial decomposition of runs into maps over neurons.

    A scikit-learn estimator fitted on runs as nilearn's CanICA is (``fit(run_paths)``, the
    neuron layout read from the runs' sidecars). Once fitted it has ``components_img_``,
    ``transform(imgs)`` (each run's component time courses: least squares of the z-scored run
    on the maps), ``inverse_transform(loadings)`` (runs rebuilt as images) and ``score(imgs)``
    (the share of the runs' variance the maps explain); ``clone`` and a ``Pipeline`` work.

    Parameters
    ----------
    method : {"canica", "dictlearning"}
    n_components : int
    n_init : int or "auto"
        FastICA starts (CanICA); the sparsest result is kept. ``"auto"``: 10 for a
        decomposition on its own, 1 for each repeat of a :class:`StableDecomposition` (the
        clusters do the choosing: on the embedded model's scan, 10 decompositions of one start
        each cost 1.0x (k = 20) and 1.5x (k = 64) one decomposition of 10 starts, and agree
        across seeds better).
    random_state : int
        Fixed value, identical output.
    max_iter : int
        FastICA iterations per start at most (the fast backend; nilearn's CanICA always runs
        scikit-learn's 200, so the nilearn backend takes no other value). A start that has not
        converged by then is counted in ``info_["n_not_converged"]``.
    tol : float
        FastICA's convergence tolerance: a start stops when its unmixing matrix moves less
        (the fast backend; nilearn's CanICA runs scikit-learn's 1e-4).
    backend : {"nilearn", "fast"}
        ``"fast"``: the same CanICA algorithm in torch (``llm2nifti.analysis.fastica``).
    n_jobs : int
        nilearn's parallel jobs.
    device : str
        torch device of the fast backend (``"cpu"``, ``"cuda"``).
    alpha : float
        DictLearning sparsity.
    verbose : int
    scheduler : None, "threads", "processes", "tcp://host:port" or dask.distributed.Client
        Where the fast backend's per-run reductions run (see
        ``llm2nifti.analysis.scheduling``); the group SVD and FastICA stay here.
        The same seed gives the same maps whatever the scheduler.
    workers : int
        Worker processes of ``scheduler="processes"``.
    progress : bool
        A progress bar over the fast backend's runs.
    gram_dtype : {"auto", "float32", "bfloat16"}
        Fast backend: precision of each run's Gram matrix (exact reduction; see
        :class:`~llm2nifti.analysis.RunReductions`).
    precision : {"mixed", "double"}
        Fast backend: FastICA in float32 with a float64 finish, or float64 throughout.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_neurons)
        Maps in layer-major neuron order (float32).
    components_img_ : nibabel.Nifti1Image
        The maps as a 4D image on the dataset's grid, one volume per component (nilearn's
        name).
    zmaps_ : ndarray of shape (n_components, n_neurons)
        Each map z-scored over neurons.
    singular_values_ : ndarray or None
        Group-SVD singular values (CanICA).
    layout_ : NeuronLayout
    n_runs_, n_tokens_ : int
    fit_seconds_ : float
    info_ : dict
        Backend details (per-run reduction, FastICA starts, convergence).
    """

    def __init__(self, method="canica", n_components=N_COMPONENTS, n_init="auto", random_state=0,
                 backend="nilearn", n_jobs=1, device="cpu", alpha=10.0, verbose=0,
                 scheduler=None, workers=2, progress=False, gram_dtype="auto", precision="mixed",
                 max_iter=MAX_ITER, tol=1e-4):
        self.max_iter = max_iter
        self.tol = tol
        self.gram_dtype = gram_dtype
        self.precision = precision
        self.progress = progress
        self.scheduler = scheduler
        self.workers = workers
        self.method = method
        self.n_components = n_components
        self.n_init = n_init
        self.random_state = random_state
        self.backend = backend
        self.n_jobs = n_jobs
        self.device = device
        self.alpha = alpha
        self.verbose = verbose

    def __sklearn_clone__(self):
        """A clone sharing ``scheduler``: a Dask client is a connection, not a parameter to copy."""
        from sklearn.base import clone

        params = self.get_params(deep=False)
        scheduler = params.pop("scheduler")
        return type(self)(scheduler=scheduler, **{k: clone(v, safe=False) for k, v in params.items()})

    def _fastica_options(self):
        """The FastICA settings of the fast backend (``FASTICA_OPTIONS``), as given."""
        return {name: getattr(self, name) for name in FASTICA_OPTIONS}

    def _n_init(self):
        """The FastICA starts this decomposition runs (``n_init``, ``"auto"`` resolved)."""
        return N_INIT if self.n_init == "auto" else int(self.n_init)

    def _check(self, runs):
        if self.method not in METHODS:
            raise UsageError(f"method={self.method!r} is unknown: choose one of {', '.join(METHODS)}")
        if self.backend not in BACKENDS:
            raise UsageError(f"backend={self.backend!r} is unknown: choose one of {', '.join(BACKENDS)}")
        if self.backend == "fast" and self.method != "canica":
            raise UsageError("backend='fast' runs CanICA only: set backend='nilearn' for "
                             "method='dictlearning'")
        if int(self.n_components) < 1:
            raise UsageError(f"n_components={self.n_components}: ask for at least 1 component")
        if self.n_init != "auto" and int(self.n_init) < 1:
            raise UsageError(f"n_init={self.n_init}: give at least 1 FastICA start (or auto)")
        defaults = type(self)().get_params()
        for name in FASTICA_OPTIONS:
            value = getattr(self, name)
            if not value > 0:
                raise UsageError(f"{name}={value}: give a positive value")
            if self.backend == "nilearn" and value != defaults[name]:
                raise UsageError(f"{name}={value} needs backend='fast': nilearn's CanICA runs "
                                 f"scikit-learn's FastICA with {name}={defaults[name]}")
        if not runs:
            raise UsageError("no runs to decompose: check the participant/task/run filters")
        if self.scheduler not in (None, "threads") and self.backend != "fast":
            raise UsageError("scheduler distributes the fast backend's per-run work: set "
                             "backend='fast' (nilearn's backend parallelises with n_jobs)")

    def fit(self, imgs, y=None, *, layout=None, reduced=None):
        """Decompose the runs ``imgs``, as nilearn's CanICA fits on images.

        Parameters
        ----------
        imgs : list of Run or path
            4D bold images of one neuron layout.
        y : None
            Ignored (scikit-learn's signature, so that a Pipeline can hold the estimator).
        layout : NeuronLayout, optional
            The runs' layout (default: read from their sidecars).
        reduced : list of ndarray or RunReductions, optional
            Fast backend: each run's reduction already made (at least ``n_components`` rows,
            as ``llm2nifti.analysis.reduction.reduce_run`` makes them), or a
            :class:`~llm2nifti.analysis.RunReductions` shared between decompositions.

        Returns
        -------
        self
        """
        import nibabel as nib

        runs = _as_list(imgs)
        self._check(runs)
        layout = _layout_of(runs, layout)
        self.layout_ = layout
        paths = [str(getattr(r, "path", r)) for r in runs]
        shapes = []
        for p in paths:
            img = nib.load(p, mmap=True)
            layout.check_img(img)
            shapes.append(img.shape[3] if len(img.shape) == 4 else 1)
        self.n_runs_ = len(paths)
        self.n_tokens_ = int(sum(shapes))
        if self.n_components > self.n_tokens_:
            raise UsageError(f"n_components={self.n_components} exceeds the {self.n_tokens_} tokens "
                             "of the selected runs: ask for fewer components or more tokens")
        if self.n_components > layout.n_neurons:
            raise UsageError(f"n_components={self.n_components} exceeds the {layout.n_neurons} units "
                             "of the selected runs: ask for fewer components (-k) or scan more units")
        rank = sum(t - 1 for t in shapes)  # each run is z-scored over its own tokens
        if self.method == "canica" and self.n_components > rank:
            raise UsageError(f"n_components={self.n_components} exceeds the rank of the selected runs "
                             f"({rank}: a run of T tokens, z-scored over them, adds T - 1): ask for "
                             "fewer components (-k) or convert more text into fewer runs")
        self._check_memory(paths, shapes, layout)
        t0 = time.perf_counter()
        if self.backend == "fast":
            from . import fastica
            from .reduction import RunReductions, resolve_gram_dtype
            from .scheduling import dask_client

            methods = None
            if reduced is None:
                with dask_client(self.scheduler, self.workers) as client:
                    cache = RunReductions(client, self.device, self.progress, self.gram_dtype)
                    reduced = cache.of(paths, self.n_components, self.random_state)
                methods = cache.methods(paths)
            elif isinstance(reduced, RunReductions):
                cache, reduced = reduced, reduced.of(paths, self.n_components, self.random_state)
                methods = cache.methods(paths)
            maps, info = fastica.canica((), self.n_components,
                                        n_init=self._n_init(), random_state=self.random_state,
                                        device=self.device, reduced=reduced,
                                        precision=self.precision, **self._fastica_options())
            info["reduction"] = sorted(set(methods)) if methods else "given"
            info["gram_dtype"] = str(resolve_gram_dtype(self.gram_dtype, self.device)).split(".")[-1]
            self.components_ = maps.astype(np.float32)
            self.singular_values_ = np.asarray(info.pop("singular_values"))
            self.info_ = info
        else:
            import warnings

            from bids_llm.dataset import load_run

            from .reduction import check_finite

            for p in paths:  # nilearn would decompose NaN and inf without a word
                X, neurons = load_run(p, mmap=True)
                check_finite(X, p, neurons)
                del X
            est = nilearn_estimator(self.method, layout.mask_img(), self.n_components, self._n_init(),
                                    self.random_state, self.n_jobs, self.alpha, self.verbose)
            from sklearn.exceptions import ConvergenceWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                # DictLearning's inner lasso steps warn on every batch; the maps are still used
                warnings.simplefilter("ignore", ConvergenceWarning)
                # a one-token run: nothing to z-score; nilearn leaves it as it is (zero, centred)
                warnings.filterwarnings("ignore", "Standardization of 3D signal", UserWarning)
                est.fit(paths)
            self.components_ = layout.from_masked(np.asarray(est.components_)).astype(np.float32)
            var = getattr(est, "variance_", None)
            self.singular_values_ = None if var is None else np.asarray(var)
            self.info_ = {}
        self.fit_seconds_ = time.perf_counter() - t0
        self._set_fitted_maps()
        return self

    def _check_memory(self, paths, tokens, layout):
        """Refuse, before any work, a decomposition that would not fit in memory."""
        check_decomposition_fits(tokens, layout.n_neurons, self.n_components, self.backend,
                                 self.method, self._n_init())


class StableDecomposition(_MapsMixin, BaseEstimator):
    """A decomposition repeated ``n_repeats`` times, its maps clustered into stable components
    (ICASSO).

    A meta-estimator, as scikit-learn's are: it wraps the decomposition it repeats
    (``StableDecomposition(Decomposition(n_components=64, n_init=1), n_repeats=10)``) and reaches
    its parameters as ``estimator__n_components`` through ``get_params``/``set_params``. Fitted,
    it has what a fitted :class:`Decomposition` has (``components_img_``, ``transform``,
    ``inverse_transform``, ``score``), for the centrotypes.

    Parameters
    ----------
    estimator : Decomposition, optional
        The decomposition repeated, each time with another seed (from ``stability.run_seeds``
        and the estimator's ``random_state``); default ``Decomposition()``. One FastICA start
        each (``n_init=1``) is usual: the repeats take the place of the restarts.
    n_repeats : int
        Decompositions (``n_repeats=1`` is the single decomposition, bit for bit).
    bootstrap : bool
        Each decomposition after the first reads a resample of the runs (drawn with
        replacement), so that stability covers the choice of text as well as the start.

    Attributes
    ----------
    components_, zmaps_ : ndarray of shape (n_components, n_neurons)
        Centrotypes (clusters in decreasing stability) and their z-maps.
    components_img_ : nibabel.Nifti1Image
        The centrotypes as a 4D image, one volume per component.
    stability_ : pandas.DataFrame
        One row per component (see :func:`~llm2nifti.analysis.stability.icasso`); None when
        ``n_repeats == 1``.
    members_ : pandas.DataFrame
        Every estimate's cluster and 2-D position (see
        :func:`~llm2nifti.analysis.stability.icasso`); None when ``n_repeats == 1``.
    estimators_ : list of Decomposition
        The ``n_repeats`` decompositions (their maps are kept in ``members_`` order).
    seeds_ : list of int
    layout_, n_runs_, n_tokens_, singular_values_, info_, fit_seconds_ :
        As :class:`Decomposition`'s, for the first
        decomposition (``info_`` adds the ICASSO settings; ``n_runs_`` counts BOLD runs).
    """

    def __init__(self, estimator=None, n_repeats=10, bootstrap=False):
        self.estimator = estimator
        self.n_repeats = n_repeats
        self.bootstrap = bootstrap

    def _base(self):
        return Decomposition() if self.estimator is None else self.estimator

    def _decomposition(self, seed):
        from sklearn.base import clone

        one = clone(self._base()).set_params(random_state=seed)
        return one.set_params(n_init=1) if one.n_init == "auto" and self.n_repeats > 1 else one

    def fit(self, imgs, y=None, *, layout=None, reduced=None):
        """Decompose the runs ``imgs`` ``n_repeats`` times and cluster the maps.

        Parameters
        ----------
        imgs : list of Run or path
        y : None
            Ignored (scikit-learn's signature).
        layout : NeuronLayout, optional
            The runs' layout (default: read from their sidecars).
        reduced : RunReductions, optional
            Fast backend: per-run reductions shared by every decomposition (made here when
            not given).

        Returns
        -------
        self
        """
        from .stability import check_stable, run_seeds

        runs = _as_list(imgs)
        layout = _layout_of(runs, layout)
        base = self._base()
        check_stable(self.n_repeats, self.bootstrap, len(runs), base.n_components, layout.n_neurons)
        self.seeds_ = run_seeds(base.random_state, self.n_repeats)
        if base.backend == "fast" and reduced is None and self.n_repeats > 1:
            from .reduction import RunReductions
            from .scheduling import dask_client

            with dask_client(base.scheduler, base.workers) as client:
                cache = RunReductions(client, base.device, base.progress, base.gram_dtype,
                                      n_components=base.n_components)
                return self._fit(runs, layout, cache)
        return self._fit(runs, layout, reduced)

    def _fit(self, runs, layout, reduced):
        t0 = time.perf_counter()
        rng = np.random.default_rng(self.seeds_[-1])
        self.estimators_ = []
        for i, seed in enumerate(self.seeds_):
            chosen = runs
            if self.bootstrap and i > 0:
                chosen = [runs[j] for j in np.sort(rng.integers(0, len(runs), len(runs)))]
            self.estimators_.append(self._decomposition(seed).fit(chosen, layout=layout,
                                                                  reduced=reduced))
        first = self.estimators_[0]
        for name in ("layout_", "n_runs_", "n_tokens_", "singular_values_"):
            setattr(self, name, getattr(first, name))
        self.info_ = dict(first.info_)
        if self.n_repeats == 1:
            self.components_, self.stability_, self.members_ = first.components_, None, None
        else:
            from .stability import icasso

            maps, self.stability_, self.members_ = icasso([e.components_ for e in self.estimators_],
                                                          self._base().n_components)
            self.components_ = maps.astype(np.float32)
            self.info_["icasso"] = {
                "n_runs": int(self.n_repeats), "bootstrap": bool(self.bootstrap), "seeds": self.seeds_,
                "linkage": "average", "similarity": "|r| between maps",
                "mean_stability": round(float(self.stability_["stability"].mean()), 6)}
        self._set_fitted_maps()
        self.fit_seconds_ = time.perf_counter() - t0
        return self


def default_decomposition(workflow="decompose"):
    """A new instance of the decomposition ``workflow`` runs when given none.

    Parameters
    ----------
    workflow : str
        A key of ``WORKFLOW_DECOMPOSITIONS``.

    Returns
    -------
    Decomposition or StableDecomposition
        ``Decomposition(backend=...)``, wrapped in ``StableDecomposition(..., n_repeats=N)``
        where the workflow clusters ``N > 1`` decompositions.
    """
    backend, repeats, _ = WORKFLOW_DECOMPOSITIONS[workflow]
    one = Decomposition(backend=backend)
    return one if repeats == 1 else StableDecomposition(one, n_repeats=repeats)


def base_decomposition(estimator):
    """The :class:`Decomposition` an estimator runs (itself, or the one a
    :class:`StableDecomposition` repeats)."""
    return estimator._base() if isinstance(estimator, StableDecomposition) else estimator


def configured(estimator, workflow="decompose", **params):
    """A clone of ``estimator`` (default: ``workflow``'s) with ``params`` set on the
    decomposition it runs (e.g. ``n_components`` of each FN@k, ``progress``).

    Refuses (:class:`UsageError`) what is neither a :class:`Decomposition` nor a
    :class:`StableDecomposition`.
    """
    from sklearn.base import clone

    if estimator is None:
        estimator = default_decomposition(workflow)
    if not isinstance(estimator, (Decomposition, StableDecomposition)):
        raise UsageError(f"estimator={type(estimator).__name__}: give a Decomposition or a "
                         "StableDecomposition")
    est = clone(estimator)
    if isinstance(est, StableDecomposition):
        return est.set_params(estimator=clone(est._base()).set_params(**params)) if params else est
    return est.set_params(**params)


def as_stable(estimator):
    """``estimator`` as a :class:`StableDecomposition` (one repeat: the same decomposition, bit
    for bit)."""
    if isinstance(estimator, StableDecomposition):
        return estimator
    return StableDecomposition(estimator, n_repeats=1)


def reuse_parameters(estimator):
    """What an existing decomposition's sidecar must record for ``estimator`` to reuse it:
    the backend, the parameters that change the maps, and the number of decompositions."""
    est = as_stable(estimator)
    one = est._base()
    params = {"n_components": int(one.n_components),
              "n_init": int(est._decomposition(one.random_state)._n_init()),
              "random_state": one.random_state}
    if one.backend == "fast":
        params.update(one._fastica_options())
    defaults = Decomposition().get_params()  # what a sidecar written before a setting existed ran
    return {"Backend": one.backend, "Parameters": params, "NDecompositions": int(est.n_repeats),
            "Defaults": {name: defaults[name] for name in FASTICA_OPTIONS}}


def reusable(dataset, runs, desc, estimator):
    """The components image of ``runs`` named ``desc`` that ``estimator`` would make, if one
    was written before (see :func:`bids_llm.outputs.reusable_components`), else None."""
    from bids_llm.outputs import reusable_components

    return reusable_components(dataset.root, runs, desc, base_decomposition(estimator).method,
                               reuse_parameters(estimator))


@dataclass
class DecomposeResult:
    """What :func:`decompose` wrote.

    Attributes
    ----------
    estimator : StableDecomposition
        The fitted decomposition (one repeat where a :class:`Decomposition` was given).
    components, zmaps, sidecar : Path
        The 4D maps, their z-scored version and the JSON with parameters.
    explained_variance : ndarray
    explained_variance_total : float
    """

    estimator: StableDecomposition
    components: Path
    zmaps: Path
    sidecar: Path
    explained_variance: np.ndarray
    explained_variance_total: float


def check_decomposition_fits(tokens, n_neurons, n_components, backend="fast", method="canica",
                             n_init=10):
    """Refuse (:class:`UsageError`) a decomposition of runs of ``tokens`` that would not fit in memory."""
    from ..memory import check_fits, decomposition_bytes

    need = decomposition_bytes([(t, n_neurons) for t in tokens], n_components, backend, n_init)
    advice = ("use --backend fast (it reads one run at a time), fewer components or runs "
              "(--runs)" if backend == "nilearn" else
              "fewer components, or convert with a smaller --run-tokens so that runs are smaller")
    check_fits(need, f"{backend} {method} with k={n_components} over {len(tokens)} run(s) of "
                     f"{max(tokens)} tokens x {n_neurons} neurons", advice)


ALL_TASKS = "all"  # select_runs(task=ALL_TASKS): the runs of every task, decomposed together


def select_runs(dataset, participant=None, task=None, run=None, site=None, verify=True):
    """Runs and layout of one participant and site chosen by BIDS entities.

    ``site`` None: the only site among the matching runs; ``task`` None: the only task
    (several: an error lists them); ``task="all"``: every task's runs together.
    With ``verify``, damaged runs are refused (see :meth:`bids_llm.dataset.Dataset.check_runs`).
    """
    from ..errors import only_choice

    if task is None:
        found = dataset.runs(participant=participant, run=run, site=site)
        if found:
            task = only_choice([r.task for r in found], "task",
                               "--task (or --task all to take them together)")
    runs = dataset.runs(participant=participant, task=None if task == ALL_TASKS else task, run=run,
                        site=site)
    if not runs:
        raise UsageError(f"no runs in {dataset.root} match participant={participant}, task={task}, "
                         f"run={run}, site={site}")
    if site is None:
        site = only_choice([r.site_kind for r in runs], "site", "--site")
        runs = [r for r in runs if r.site_kind == site]
    subs = sorted({r.participant for r in runs})
    if len(subs) > 1:
        raise UsageError(f"the runs belong to several participants {subs}: choose one with --participant")
    if verify:
        # finiteness is checked where each run is read anyway (reduce_run; nilearn's preflight)
        dataset.check_runs(runs, finite=False)
    return runs, dataset.layout(subs[0], site)


def _entities(runs, desc):
    tasks = sorted({r.task for r in runs})
    ents = {"sub": runs[0].participant, "task": "".join(tasks),
            "acq": runs[0].acq, "run": runs[0].run if len(runs) == 1 else None, "desc": desc}
    return ents


def decompose(dataset, estimator=None, *, participant=None, task=None, run=None, site=None,
              desc=None, threads=None, reductions=None):
    """Decompose a dataset's runs and write a BIDS derivative.

    Parameters
    ----------
    dataset : path or Dataset
        A dataset written by ``llm2nifti convert``.
    estimator : Decomposition or StableDecomposition, optional
        The decomposition, cloned before it is fitted (default: ``Decomposition()``, nilearn's
        CanICA with k = 20). A :class:`StableDecomposition` repeats it and keeps the clusters'
        centrotypes with their stability.
    participant, task, run : str, int, list or None
        BIDS entity filters; the runs must belong to one participant. ``participant`` and
        ``task`` None: the only one (several: an error lists them); ``task="all"``: every
        task's runs together (their labels joined in the outputs' names). ``run`` None: all.
    site : str, optional
        Neuron site (``"mlp"``, ``"mlp-out"``, ...); default: the only one among the runs.
    desc : str, optional
        BIDS ``desc`` label of the outputs (letters and digits; default: the method).
    threads : int, optional
        torch CPU threads.
    reductions : RunReductions, optional
        Fast backend: per-run reductions shared with other decompositions of these runs
        (an FN@k sweep reduces each run once, at its largest ``k``).

    Returns
    -------
    DecomposeResult

    Notes
    -----
    Files written under ``derivatives/llm2nifti-<method>/sub-<label>/func/``::

        sub-<label>_task-<t>[_run-<n>]_desc-<desc>_components.nii         maps, volume i = component i
        sub-<label>_task-<t>[_run-<n>]_desc-<desc>_components.json        parameters, variance, timing
        sub-<label>_task-<t>[_run-<n>]_desc-<desc>_stat-z_components.nii  maps z-scored over neurons (+ .json)
        sub-<label>_task-<t>[_run-<n>]_desc-<desc>_stability.tsv           n_repeats > 1: each component's stability
        sub-<label>_task-<t>[_run-<n>]_desc-<desc>_estimates.tsv           n_repeats > 1: every estimate's cluster

    ``run`` appears when a single run was decomposed; several tasks join their labels.
    The names follow tedana's ICA derivatives, so that a BIDS query for ``bold`` finds time
    series only; the folder's ``.bidsignore`` lists ``*_components.*``, which BIDS does not
    define yet. The 4th axis is the component.
    """
    from bids_llm.dataset import Dataset
    from bids_llm.io import save_img, write_json
    from bids_llm.naming import label, legacy_name
    from bids_llm.outputs import DERIVATIVES, software

    if threads is not None:
        from ..models import set_threads

        set_threads(threads)
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    est = as_stable(configured(estimator, "decompose"))
    one = est._base()
    method, backend = one.method, one.backend
    if method not in METHODS:
        raise UsageError(f"method={method!r} is unknown: choose one of {', '.join(METHODS)}")
    try:
        desc = label(desc or method, "desc")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    runs, layout = select_runs(ds, participant, task, run, site)
    est.fit(runs, layout=layout, reduced=reductions)
    t0 = time.perf_counter()
    ev, ev_total = explained_variance(runs, est.components_,
                                      device=one.device if backend == "fast" else "cpu")
    ev_seconds = time.perf_counter() - t0

    ents = _entities(runs, desc)
    outputs = DERIVATIVES["components"]
    out = outputs.create(ds.root, method=method)
    comp_path = outputs.path(out, "components.nii", **ents)
    z_path = outputs.path(out, "components.nii", stat="z", **ents)
    json_path = comp_path.with_suffix(".json")
    sidecar = {
        "Description": f"{method} maps over neurons: volume i is component i (not a time point); "
                       "voxels are neurons through the NeuronLayout",
        "TaskName": ents["task"], "RepetitionTime": 1.0, "SkullStripped": False,
        "Method": method, "Backend": backend,
        "Parameters": {"n_components": int(one.n_components),
                       "n_init": int(est.estimators_[0]._n_init()),
                       "random_state": one.random_state,
                       "alpha": one.alpha if method == "dictlearning" else None,
                       "mask": "all neurons of the layout", "smoothing_fwhm": None, "detrend": False,
                       "standardize": "zscore_sample", "threshold": None,
                       **({"gram_dtype": one.gram_dtype, "precision": one.precision,
                           **one._fastica_options()} if backend == "fast" else {})},
        "Sources": [str(Path(r.path).relative_to(ds.root)) for r in runs],
        "NTokens": est.n_tokens_, "NRuns": est.n_runs_,
        "ZMaps": z_path.name,
        "SingularValues": None if est.singular_values_ is None else est.singular_values_.tolist(),
        "ExplainedVariance": [float(x) for x in ev],
        "ExplainedVarianceTotal": float(ev_total),
        "BackendDetails": est.info_,
        "Stability": _stability_record(est, comp_path),
        "Software": software("nilearn", "scikit-learn", *(("torch",) if backend == "fast" else ())),
        "NeuronLayout": layout.to_dict(),
        "Timing": {"fit_seconds": round(est.fit_seconds_, 3),
                   "explained_variance_seconds": round(ev_seconds, 3)},
    }
    save_img(est.components_img(), comp_path)
    save_img(est.components_img(z=True), z_path)
    for path in (comp_path, z_path):  # an earlier version's names for the same maps
        old = path.with_name(legacy_name(path.name))
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    write_json(z_path.with_suffix(".json"), {
        **{k: sidecar[k] for k in ("TaskName", "RepetitionTime", "SkullStripped", "Method",
                                   "Backend", "Sources", "NeuronLayout")},
        "Description": f"{method} maps z-scored over neurons (volume i: component i); "
                       f"threshold these to select neurons",
        "RawMaps": comp_path.name})
    _write_stability(est, comp_path)
    write_json(json_path, sidecar)
    return DecomposeResult(est, comp_path, z_path, json_path, ev, ev_total)


def _stability_record(est, comp_path):
    """The sidecar's ``Stability``: how many decompositions the maps rest on, and where the
    table of each component's stability is."""
    from .stability import stability_paths

    if est.n_repeats == 1:
        return {"NDecompositions": 1, "Note": "one ICA optimum: whether each map recurs is not "
                                              "known (decompose --n-runs 10)"}
    table, members = stability_paths(comp_path)
    return {"NDecompositions": int(est.n_repeats), "Bootstrap": bool(est.bootstrap),
            "Seeds": est.seeds_, "Method": "ICASSO: average-linkage clusters of |r| between maps; "
            "centrotypes; Iq = mean |r| within - mean |r| to the others",
            "MeanStability": round(float(est.stability_["stability"].mean()), 6),
            "Table": table.name, "Estimates": members.name}


def _write_stability(est, comp_path):
    """Write the stability tables beside the maps (``n_runs > 1``); remove stale ones (``n_runs = 1``)."""
    from bids_llm.tsv import write_frame

    from .stability import stability_paths

    table, members = stability_paths(comp_path)
    if est.n_repeats == 1:
        table.unlink(missing_ok=True)
        members.unlink(missing_ok=True)
        return
    write_frame(table, est.stability_, index=False)
    write_frame(members, est.members_, index=False)


def read_sidecar(components_path):
    """The JSON written beside a components image, or None."""
    p = Path(str(components_path).split(".nii")[0] + ".json")
    return json.loads(p.read_text()) if p.is_file() else None
