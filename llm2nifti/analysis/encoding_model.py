"""The encoding estimator: ridge from word features to voxels, scored on held-out runs.

:class:`EncodingModel` follows scikit-learn's estimator contract (``__init__`` stores the
settings, ``fit`` returns the estimator, fitted attributes end in ``_``, ``clone`` works) and
nilearn's decoders, whose ``fit`` runs the outer cross-validation and keeps its scores: the
outer folds leave one run (a group) out, the same for every voxel; inside each training set
himalaya chooses each voxel's penalty by leaving one run out again. Voxels are fitted in
chunks (each voxel's ridge is its own: chunks change the memory, not the numbers).

Three solvers, one contract:

- ``kernel=False, banded=0``: himalaya's ``RidgeCV`` on the design ``X`` (samples x columns),
  one penalty per voxel;
- ``kernel=False, banded=N``: ``BandedRidgeCV``, one band per feature (its columns together),
  one penalty per band and voxel by N random-search iterations; each feature's part is its
  unique variance (himalaya's split R^2);
- ``kernel=True``: ``X`` is a stack of linear kernels, one per feature (features x samples x
  samples), summed for ``KernelRidgeCV`` (or ``MultipleKernelRidgeCV`` with ``banded``): the
  solver for designs with more columns than samples (a model's units).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator

from ..errors import UsageError

__all__ = ["EncodingModel", "ALPHAS", "feature_columns", "zscore"]

ALPHAS = np.logspace(-2, 8, 21)


def zscore(a):
    """Each column centred and scaled to unit standard deviation (a constant column: 0)."""
    a = a - a.mean(axis=0)
    sd = a.std(axis=0)
    return a / np.where(sd > 0, sd, 1.0)


def feature_columns(n_columns, widths):
    """The columns of each feature in a design of ``n_columns``: ``widths[j]`` columns per
    feature (a network's one, a layer's principal components), repeated at every delay in
    blocks of ``sum(widths)`` columns."""
    block = int(sum(widths))
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(int)
    return [np.concatenate([np.arange(d + a, d + a + w) for d in range(0, n_columns, block)])
            for a, w in zip(starts, widths)]


class EncodingModel(BaseEstimator):
    """Cross-validated ridge from word features to voxels: held-out r and R^2, each feature's
    part, and a circular-shift null with family-wise error over voxels.

    Parameters
    ----------
    alphas : array-like, optional
        Penalties searched per voxel (default: 21 on a log grid from 1e-2 to 1e8).
    banded : int
        0: one penalty per voxel. N > 0: one per feature and voxel, N random-search iterations;
        ``parts_`` are then the features' unique variances.
    kernel : bool
        ``X`` is a stack of per-feature linear kernels (features x samples x samples) rather than
        a design: for more columns than samples.
    n_permutations : int
        Circular shifts of the held-out predictions against the data (0: no null).
    min_shift : float
        Shortest shift, in seconds (``t_r`` of ``fit`` converts it): longer than the HRF.
    null : {"auto", "refit", "predictions"}
        ``"refit"``: every run's features shifted circularly and every fold refitted (in closed
        form, with each voxel's chosen penalty): exact, for one penalty per voxel only.
        ``"predictions"``: the held-out predictions shifted against the data, for any solver,
        anti-conservative (see ``null_``). ``"auto"``: refit where it can.
    backend : {"numpy", "torch", "torch_cuda"}
        himalaya's backend.
    dtype : {"float64", "float32"}
        Precision of the fit; float32 halves the memory and is faster with torch.
    chunk : int
        Voxels fitted together.
    scheduler : None, "threads", "processes", address or dask.distributed.Client
        Where the voxel chunks run, as for a decomposition: here (None, ``"threads"``), on
        ``workers`` local processes (``"processes"``), or on a Dask cluster (its address, or a
        client). The numbers do not depend on it.
    workers : int
        Processes of ``scheduler="processes"``.
    random_state : int
        Seeds the null's shifts and banded ridge's search.

    Attributes
    ----------
    r_, r2_ : ndarray of shape (n_voxels,)
        Held-out Pearson r and R^2, mean over the outer folds.
    parts_ : ndarray of shape (n_features, n_voxels)
        Each feature's part: the held-out r of its share of the prediction (its columns times
        their weights), or with ``banded`` its unique variance (split R^2).
    best_ : ndarray of shape (n_voxels,)
        The feature whose part is largest.
    best_alphas_ : ndarray of shape (n_voxels,)
        The penalty chosen, geometric mean over folds (with ``banded``: over bands too).
    coef_ : ndarray of shape (n_columns, n_voxels)
        The weights, mean over folds (``kernel=False``).
    dual_coef_ : ndarray of shape (n_samples, n_voxels)
        ``kernel=True``: each fold's dual weights on its training samples (0 on the held-out
        ones), mean over folds; ``X.T @ dual_coef_`` gives the weights of the design behind the
        kernels.
    feature_coef_ : ndarray of shape (n_features, n_voxels)
        ``kernel=False``: each feature's weights summed over its columns (its response's area).
    null_max_ : ndarray of shape (n_permutations,)
        The largest fold-averaged r over voxels of each circular shift.
    null_ : {"refit", "predictions"}
        How the null was made. ``"refit"`` (one penalty per voxel): every run's features
        shifted circularly and every fold refitted in closed form with the voxel's chosen
        penalty, an exact null of the cross-validated r given those penalties.
        ``"predictions"`` (``banded`` or ``kernel``, whose refits have no cheap closed form): the
        held-out predictions shifted against the data; it breaks the dependence between folds
        (each run trains the models that predict the others) and is anti-conservative (see the
        user guide's measured calibration).
    p_fwe_ : ndarray of shape (n_voxels,)
        Family-wise error corrected p of ``r_`` (max-statistic).
    n_folds_ : int
    """

    def __init__(self, alphas=None, banded=0, kernel=False, n_permutations=1000,
                 min_shift=20.0, null="auto", backend="numpy", dtype="float64", chunk=20000,
                 scheduler=None, workers=2, random_state=0):
        self.alphas = alphas
        self.scheduler = scheduler
        self.workers = workers
        self.null = null
        self.banded = banded
        self.kernel = kernel
        self.n_permutations = n_permutations
        self.min_shift = min_shift
        self.backend = backend
        self.dtype = dtype
        self.chunk = chunk
        self.random_state = random_state

    def __sklearn_clone__(self):
        """A clone sharing ``scheduler``: a Dask client is a connection, not a parameter to copy."""
        from sklearn.base import clone

        params = self.get_params(deep=False)
        scheduler = params.pop("scheduler")
        return type(self)(scheduler=scheduler, **{k: clone(v, safe=False)
                                                  for k, v in params.items()})

    # -- checks ------------------------------------------------------------------------------
    def _check(self, X, Y, groups, columns):
        if self.n_permutations < 0:
            raise UsageError(f"n_permutations={self.n_permutations}: give 0 (no null) or more, "
                             "1000 for a p-value")
        if self.banded < 0 or self.chunk < 1:
            raise UsageError(f"banded={self.banded}, chunk={self.chunk}: banded is 0 or a number "
                             "of iterations, chunk at least 1")
        if self.dtype not in ("float64", "float32"):
            raise UsageError(f"dtype={self.dtype!r}: float64 or float32")
        if self.null not in ("auto", "refit", "predictions"):
            raise UsageError(f"null={self.null!r}: auto, refit or predictions")
        if self.null == "refit" and (self.kernel or self.banded):
            raise UsageError("null='refit' needs one penalty per voxel: set banded=0 and "
                             "kernel=False, or null='predictions'")
        n = Y.shape[0]
        if len(groups) != n or (X.shape[1] if self.kernel else X.shape[0]) != n:
            raise UsageError(f"X, Y and groups describe different samples: {X.shape}, "
                             f"{Y.shape}, {len(groups)}")
        if len(np.unique(groups)) < 2:
            raise UsageError("one group (run): leave-one-run-out needs at least 2")
        if self.kernel:
            if X.ndim != 3 or X.shape[1] != X.shape[2]:
                raise UsageError(f"kernel=True: X is a stack of kernels (features x samples x "
                                 f"samples), not {X.shape}")
            return [np.array([j]) for j in range(X.shape[0])]
        if X.shape[1] > n:
            raise UsageError(f"X has {X.shape[1]:,} columns for {n:,} samples: ridge on more "
                             "features than samples is kernel ridge (kernel=True)")
        return ([np.array([j]) for j in range(X.shape[1])] if columns is None
                else [np.asarray(c, int) for c in columns])

    # -- fitting -----------------------------------------------------------------------------
    def _model(self, columns):
        """A maker of the himalaya estimator for given inner folds (picklable: Dask workers
        build it)."""
        from functools import partial

        alphas = ALPHAS if self.alphas is None else np.asarray(self.alphas, float)
        bands = None
        if self.banded and not self.kernel:
            bands = np.zeros(sum(len(c) for c in columns), dtype=int)
            for j, c in enumerate(columns):
                bands[c] = j
        return partial(_himalaya_model, kernel=self.kernel, banded=self.banded, alphas=alphas,
                       bands=bands, random_state=self.random_state)

    def fit(self, X, Y, groups, columns=None, t_r=1.0):
        """Leave one group out: fit on the others, score on it, for every group.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_columns), or (n_features, n_samples, n_samples)
            The design (z-scored per run), or with ``kernel=True`` one linear kernel per
            feature.
        Y : ndarray of shape (n_samples, n_voxels)
            The BOLD, z-scored per run.
        groups : ndarray of shape (n_samples,)
            The run of each sample.
        columns : list of arrays, optional
            ``kernel=False``: each feature's columns (default: one feature per column).
        t_r : float
            Seconds per sample (converts ``min_shift``).

        Returns
        -------
        self
        """
        from himalaya.backend import set_backend
        from sklearn.model_selection import KFold, LeaveOneGroupOut

        X, Y, groups = np.asarray(X), np.asarray(Y), np.asarray(groups)
        columns = self._check(X, Y, groups, columns)
        shortest = min(np.unique(groups, return_counts=True)[1])
        shift = max(1, int(round(self.min_shift / t_r)))
        if self.n_permutations and shortest <= 2 * shift:  # before any fit
            raise UsageError(f"runs of {shortest} volumes are too short for circular shifts of "
                             f"at least {shift} volumes: lower min_shift or trim less")
        Y = _per_run(Y, groups)
        if not self.kernel:
            X = _per_run(X, groups)
        set_backend(self.backend, on_error="raise")
        X, Y = X.astype(self.dtype, copy=False), Y.astype(self.dtype, copy=False)
        make = self._model(columns)
        n_vox, n_features = Y.shape[1], len(columns)
        totals = dict(r=np.zeros(n_vox), r2=np.zeros(n_vox), parts=np.zeros((n_features, n_vox)),
                      log_alpha=np.zeros(n_vox))
        coef = (np.zeros((Y.shape[0], n_vox)) if self.kernel
                else np.zeros((X.shape[1], n_vox)))
        from .scheduling import dask_client

        with dask_client(self.scheduler, self.workers) as client:
            self._fit_folds(X, Y, groups, make, columns, totals, coef, client, t_r)
        return self

    def _fit_folds(self, X, Y, groups, make, columns, totals, coef, client, t_r):
        from sklearn.model_selection import KFold, LeaveOneGroupOut

        held, fold_alphas = [], []
        folds = list(LeaveOneGroupOut().split(Y, Y, groups))
        for train, test in folds:
            inner = (list(LeaveOneGroupOut().split(Y[train], Y[train], groups[train]))
                     if len(np.unique(groups[train])) > 1 else list(KFold(5).split(Y[train])))
            *pair, chosen = self._fold(X, Y, train, test, inner, make, columns, totals, coef,
                                       client)
            held.append(pair)
            fold_alphas.append(chosen)
        k = len(folds)
        self.n_folds_ = k
        self.r_, self.r2_ = totals["r"] / k, totals["r2"] / k
        self.parts_ = totals["parts"] / k
        self.best_ = self.parts_.argmax(axis=0)
        self.best_alphas_ = np.exp(totals["log_alpha"] / k)
        if self.kernel:
            self.dual_coef_ = coef / k
        else:
            self.coef_ = coef / k
            self.feature_coef_ = np.stack([self.coef_[c].sum(axis=0) for c in columns])
        self.columns_ = columns
        if self.n_permutations:
            shift = max(1, int(round(self.min_shift / t_r)))
            if self.kernel or self.banded or self.null == "predictions":
                self.null_ = "predictions"
                self.null_max_ = _null_max(held, self.n_permutations, shift, self.random_state,
                                           self.chunk)
            else:
                self.null_ = "refit"
                del held
                self.null_max_ = _refit_null_max(X, Y, groups, folds, fold_alphas,
                                                 self.n_permutations, shift, self.random_state,
                                                 client=client, block=self.chunk)
            self.p_fwe_ = ((1 + (self.null_max_[:, None] >= self.r_[None, :]).sum(axis=0))
                           / (1 + self.n_permutations))

    def _fold(self, X, Y, train, test, inner, make, columns, totals, coef, client=None):
        """One outer fold, voxel chunk by chunk (here, or on ``client``'s Dask workers); adds
        to ``totals`` and ``coef``, returns the z-scored held-out prediction and data (for the
        null) and each voxel's penalty."""
        if self.kernel:
            fit_x = X[:, train][:, :, train] if self.banded else X[:, train][:, :, train].sum(0)
            test_x = X[:, test][:, :, train]
            new_x = test_x if self.banded else test_x.sum(0)
        else:
            fit_x, new_x, test_x = X[train], X[test], None
        n_vox = Y.shape[1]
        p_all = np.zeros((len(test), n_vox))
        y_all = np.zeros((len(test), n_vox))
        alphas = np.zeros(n_vox)
        spec = dict(make=make, inner=inner, columns=columns, banded=self.banded,
                    kernel=self.kernel, backend=self.backend)
        chunks = [(a, min(a + self.chunk, n_vox)) for a in range(0, n_vox, self.chunk)]
        if client is None:
            done = (_fit_chunk(fit_x, new_x, test_x, Y[train, a:b], Y[test, a:b], **spec)
                    for a, b in chunks)
        else:
            shared = [None if x is None else client.scatter(x, broadcast=True, hash=False)
                      for x in (fit_x, new_x, test_x)]
            futures = [client.submit(_fit_chunk, *shared, Y[train, a:b], Y[test, a:b], **spec,
                                     pure=False, retries=2) for a, b in chunks]
            done = (f.result() for f in futures)
        for (a, b), out in zip(chunks, done):
            totals["r"][a:b] += out["r"]
            totals["r2"][a:b] += out["r2"]
            totals["parts"][:, a:b] += out["parts"]
            totals["log_alpha"][a:b] += np.log(out["alphas"])
            alphas[a:b] = out["alphas"]
            if self.kernel:
                coef[train, a:b] += out["coef"]
            else:
                coef[:, a:b] += out["coef"]
            p_all[:, a:b], y_all[:, a:b] = out["p"], out["y"]
        return p_all, y_all, alphas

    def predict(self, X):
        """The mean fold model's prediction: ``X @ coef_`` for a design, or ``K @ dual_coef_``
        for a kernel between new samples and the training samples (summed over features)."""
        X = np.asarray(X, float)
        if self.kernel:
            return (X.sum(0) if X.ndim == 3 else X) @ self.dual_coef_
        return X @ self.coef_

    def r_threshold(self, alpha=0.05):
        """The held-out r past which a voxel is significant at FWE ``alpha`` (the null's
        ``1 - alpha`` quantile of the maximum over voxels)."""
        return float(np.quantile(self.null_max_, 1 - alpha, method="higher"))


def _himalaya_model(cv, *, kernel, banded, alphas, bands, random_state):
    """himalaya's RidgeCV, BandedRidgeCV (one band per feature), KernelRidgeCV or
    MultipleKernelRidgeCV on precomputed kernels."""
    from himalaya.kernel_ridge import KernelRidgeCV, MultipleKernelRidgeCV
    from himalaya.ridge import BandedRidgeCV, RidgeCV

    search = dict(n_iter=banded, alphas=alphas, progress_bar=False)
    if kernel:
        if banded:
            return MultipleKernelRidgeCV(kernels="precomputed", cv=cv, solver_params=search,
                                         random_state=random_state)
        return KernelRidgeCV(kernel="precomputed", alphas=alphas, cv=cv)
    if banded:
        return BandedRidgeCV(groups=bands, cv=cv, random_state=random_state,
                             solver_params=search)
    return RidgeCV(alphas=alphas, cv=cv)


def _fit_chunk(fit_x, new_x, test_x, y_train, y_test, *, make, inner, columns, banded, kernel,
               backend):
    """One fold's fit on a chunk of voxels: held-out r, R^2, each feature's part, the
    penalties (with ``banded``: the geometric mean over bands), the weights (dual with
    ``kernel``), and the z-scored held-out prediction and data."""
    from himalaya.backend import set_backend

    to_numpy = set_backend(backend, on_error="raise").to_numpy
    model = make(inner).fit(fit_x, y_train)
    pred = to_numpy(model.predict(new_x)).astype(np.float64)
    truth = y_test.astype(np.float64)
    y, p = zscore(truth), zscore(pred)
    out = {"r": (p * y).mean(axis=0), "p": p, "y": y,
           "r2": 1 - (((truth - pred) ** 2).sum(0) / np.maximum((truth ** 2).sum(0), 1e-12))}
    if banded:
        out["parts"] = _split_r2(model, new_x, truth, to_numpy)
        out["alphas"] = np.exp(-to_numpy(model.deltas_).mean(axis=0))
    else:
        out["alphas"] = to_numpy(model.best_alphas_).astype(np.float64)
    if kernel:
        out["coef"] = to_numpy(model.dual_coef_).astype(np.float64)
        if not banded:
            out["parts"] = np.stack([(zscore(test_x[j] @ out["coef"]) * y).mean(axis=0)
                                     for j in range(len(test_x))])
    else:
        out["coef"] = to_numpy(model.coef_).astype(np.float64)
        if not banded:  # each feature's part's r, from the held-out run's Gram matrix: its
            # columns are centred (each run z-scored), so the part's r is w.X'y / sqrt(n w'Gw)
            x = np.asarray(new_x, dtype=np.float64)
            xy, gram = x.T @ y, x.T @ x
            parts = []
            for c in columns:
                w = out["coef"][c]
                num = (w * xy[c]).sum(axis=0)
                var = len(x) * (w * (gram[np.ix_(c, c)] @ w)).sum(axis=0)
                parts.append(np.where(var > 0, num / np.sqrt(np.where(var > 0, var, 1.0)), 0.0))
            out["parts"] = np.stack(parts)
    return out


def _per_run(a, groups):
    """Each run's columns z-scored (a no-op on what :func:`encode` builds)."""
    out = np.empty(a.shape, dtype=np.float64)
    for g in np.unique(groups):
        rows = groups == g
        out[rows] = zscore(a[rows].astype(np.float64))
    return out


def _refit_null_max(X, Y, groups, folds, fold_alphas, n_permutations, min_shift, random_state,
                    budget=5e7, shifts=None, client=None, block=20000):
    """Maximum over voxels of the fold-averaged held-out r when every run's features are
    circularly shifted (one shift per run, the same in every fold) and every fold refitted
    with each voxel's chosen penalty.

    The ridge is linear in the data: with ``C_g = X_g'^T y_g`` (run ``g``'s shifted features
    against its BOLD, every shift at once by FFT), a fold's weights are
    ``U diag(1 / (lambda + alpha)) U^T sum_{g != f} C_g`` (``U``, ``lambda``: the training
    Gram matrix's eigenvectors and values) and its held-out r is ``w . C_f / sqrt(n_f w^T G_f
    w)``, with ``G_f`` the held-out run's Gram matrix (a circular shift leaves it unchanged). No
    prediction is formed; the shifted world is the one the observed r came from (shift 0 gives
    it back), so the folds' dependence (each run trains the models that predict the others)
    is kept, which shifting the held-out predictions alone would break. ``shifts``
    (permutations x runs) replaces the random ones. With a Dask ``client``, blocks of ``block``
    voxels run on its workers, with the same shifts.
    """
    runs = np.unique(groups)
    rows = [np.flatnonzero(groups == g) for g in runs]
    lengths = [len(r) for r in rows]
    if min(lengths) <= 2 * min_shift:
        raise UsageError(f"runs of {min(lengths)} volumes are too short for circular shifts of "
                         f"at least {min_shift} volumes: lower min_shift or trim less")
    if shifts is None:
        rng = np.random.default_rng(random_state)
        shifts = np.stack([rng.integers(min_shift, n - min_shift + 1, n_permutations)
                           for n in lengths], axis=1)
    n_permutations = len(shifts)
    k, n_vox = X.shape[1], Y.shape[1]
    if client is not None:
        shared = [client.scatter(x, broadcast=True, hash=False) for x in (X, groups, shifts)]
        shared.insert(2, folds)  # a list of index pairs: sent with each task
        futures = [client.submit(_refit_null_block, *shared,
                                 [al[a:a + block] for al in fold_alphas], Y[:, a:a + block],
                                 budget, pure=False, retries=2)
                   for a in range(0, n_vox, block)]
        return np.max([f.result() for f in futures], axis=0)
    from scipy import fft

    # the runs' features' spectra, (k, frequencies), single precision (the null's r need
    # no more); time is the last, contiguous, axis of every transform
    spectra = [np.conj(fft.rfft(X[r].T.astype(np.float32), axis=1)) for r in rows]
    fold = []
    for train, test in folds:
        lam, U = np.linalg.eigh(X[train].T @ X[train])
        fold.append((int(np.searchsorted(runs, groups[test[0]])), lam, U,
                     X[test].T @ X[test], len(test)))
    width = max(1, int(budget // (8 * k * max(sum(lengths), n_permutations * len(runs)))))
    best = np.full(n_permutations, -np.inf)
    for a in range(0, n_vox, width):
        b = min(a + width, n_vox)
        C = []  # per run: (k, permutations * voxels), the voxels varying fastest; float32
        for g, r in enumerate(rows):
            data = fft.rfft(Y[r, a:b].T.astype(np.float32), axis=1)  # (voxels, frequencies)
            cc = fft.irfft(spectra[g][:, None, :] * data[None, :, :], n=len(r), axis=2,
                           workers=-1)  # (k, voxels, lags)
            C.append(cc[:, :, shifts[:, g]].transpose(0, 2, 1).reshape(k, -1))
        total = np.sum(C, axis=0)
        acc = np.zeros(n_permutations * (b - a))
        z = np.empty_like(total)
        for (g, lam, U, G, n), alphas in zip(fold, fold_alphas):
            np.subtract(total, C[g], out=z)
            z = U.T.astype(np.float32) @ z
            z /= (lam[:, None] + np.tile(alphas[a:b], n_permutations)[None, :]).astype(np.float32)
            w = U.astype(np.float32) @ z
            num = np.einsum("ij,ij->j", w, C[g])
            den = np.sqrt(n * np.einsum("ij,ij->j", w, G.astype(np.float32) @ w))
            acc += np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        acc = acc.reshape(n_permutations, b - a)
        best = np.maximum(best, (acc / len(fold)).max(axis=1))
    return best


def _refit_null_block(X, groups, folds, shifts, fold_alphas, Y, budget):
    """:func:`_refit_null_max` of a block of voxels, with the shifts given (a Dask task)."""
    return _refit_null_max(X, Y, groups, folds, fold_alphas, len(shifts), 1, 0, budget=budget,
                           shifts=shifts)


def _split_r2(model, X, Y, to_numpy):
    """Each band's share of the held-out R^2 (himalaya's split scores: they sum to the R^2)."""
    from himalaya.scoring import r2_score_split

    with warnings.catch_warnings():  # the held-out data are z-scored per run, hence centred
        warnings.filterwarnings("ignore", message="y_true has to be zero-mean")
        return to_numpy(r2_score_split(Y - Y.mean(axis=0), model.predict(X, split=True)))


def _null_max(held, n_permutations, min_shift, random_state, chunk=20000):
    """Maximum over voxels of the fold-averaged r of circularly shifted predictions (the
    cross-correlation at every shift at once, by FFT)."""
    rng = np.random.default_rng(random_state)
    lengths = [len(y) for _, y in held]
    if min(lengths) <= 2 * min_shift:
        raise UsageError(f"held-out runs of {min(lengths)} volumes are too short for circular "
                         f"shifts of at least {min_shift} volumes: lower min_shift or trim less")
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
