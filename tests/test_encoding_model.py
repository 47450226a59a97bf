"""EncodingModel: scikit-learn's contract, and its three solvers agreeing on planted data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from llm2nifti.analysis.encoding_model import EncodingModel
from llm2nifti.errors import UsageError


@pytest.fixture(scope="module")
def planted():
    """Three runs of 60 samples; voxels 0-9 follow feature 0, 10-19 feature 1, the rest noise;
    each run's columns z-scored (as encode builds them, and as the estimator makes them)."""
    from llm2nifti.analysis.encoding_model import zscore

    rng = np.random.default_rng(0)
    X = rng.standard_normal((180, 3))
    W = np.zeros((3, 40))
    W[0, :10], W[1, 10:20] = 1.0, 1.0
    Y = X @ W + rng.standard_normal((180, 40))
    groups = np.repeat([0, 1, 2], 60)
    per_run = [(zscore(X[groups == g]), zscore(Y[groups == g])) for g in range(3)]
    return (np.vstack([x for x, _ in per_run]), np.vstack([y for _, y in per_run]), groups)


def test_the_estimator_contract(planted):
    X, Y, groups = planted
    model = EncodingModel(n_permutations=50, random_state=3)
    twin = clone(model)
    assert twin.get_params() == model.get_params() and twin is not model
    assert model.fit(X, Y, groups) is model
    fitted = {k for k in vars(model) if k.endswith("_")}
    assert {"r_", "r2_", "parts_", "best_", "coef_", "p_fwe_", "null_max_"} <= fitted
    assert not {k for k in vars(clone(model)) if k.endswith("_")}  # clone forgets the fit
    assert model.n_folds_ == 3 and model.r_.shape == (40,) and model.parts_.shape == (3, 40)
    # the planted voxels rest on their feature and are found; the noise voxels are not
    assert (model.best_[:10] == 0).all() and (model.best_[10:20] == 1).all()
    assert (model.p_fwe_[:20] <= 0.05).all() and (model.p_fwe_[20:] <= 0.05).sum() <= 1
    assert model.r_[:20].min() > 0.4 > 0.2 > np.abs(model.r_[20:]).mean()
    np.testing.assert_allclose(model.predict(X), X @ model.coef_)


def test_kernel_ridge_on_per_feature_kernels_is_the_same_ridge(planted):
    """A linear kernel per feature, summed, is ridge on the design: the same penalties chosen,
    the same held-out r, and the dual weights give back the weights."""
    X, Y, groups = planted
    primal = EncodingModel(n_permutations=0).fit(X, Y, groups)
    K = np.stack([np.outer(X[:, j], X[:, j]) for j in range(3)])
    dual = EncodingModel(n_permutations=0, kernel=True).fit(K, Y, groups)
    np.testing.assert_allclose(dual.r_, primal.r_, atol=1e-6)
    np.testing.assert_allclose(dual.best_alphas_, primal.best_alphas_, rtol=1e-6)
    assert (dual.best_[:20] == primal.best_[:20]).all()
    # each feature's part: formed and correlated (kernel) or from the Gram matrix (design)
    np.testing.assert_allclose(dual.parts_, primal.parts_, atol=1e-6)
    np.testing.assert_allclose(X.T @ dual.dual_coef_, primal.coef_, atol=1e-6)
    new = np.random.default_rng(1).standard_normal((5, 3))
    np.testing.assert_allclose(dual.predict(new @ X.T), primal.predict(new), atol=1e-6)


def test_float32_gives_the_float64_fit_within_single_precision(planted):
    X, Y, groups = planted
    double = EncodingModel(n_permutations=0).fit(X, Y, groups)
    single = EncodingModel(n_permutations=0, dtype="float32").fit(X, Y, groups)
    np.testing.assert_allclose(single.r_, double.r_, atol=1e-4)


def test_banded_ridge_splits_the_variance_by_feature(planted):
    X, Y, groups = planted
    model = EncodingModel(n_permutations=0, banded=10, random_state=0).fit(X, Y, groups)
    assert (model.parts_[:, :10].argmax(0) == 0).all() and (model.parts_[:, 10:20].argmax(0) == 1).all()
    # split R^2 sums to each voxel's R^2 on the held-out run (mean over folds)
    assert np.abs(model.parts_.sum(0) - model.r2_)[:20].max() < 0.05


def test_refusals_name_the_parameter(planted):
    X, Y, groups = planted
    with pytest.raises(UsageError, match="kernel=True"):
        EncodingModel().fit(np.hstack([X] * 70), Y, groups)  # 210 columns, 180 samples
    with pytest.raises(UsageError, match="at least 2"):
        EncodingModel().fit(X, Y, np.zeros(180))
    with pytest.raises(UsageError, match="dtype"):
        EncodingModel(dtype="float16").fit(X, Y, groups)
    with pytest.raises(UsageError, match="runs of 60 volumes are too short .* min_shift"):
        EncodingModel(min_shift=30.0).fit(X, Y, groups, t_r=1.0)  # refused before any fit


def test_the_refit_null_at_shift_zero_is_the_observed_fit(planted):
    """The closed-form refit of every fold with the features unshifted gives back each voxel's
    held-out r: the null is drawn from the world the statistic came from."""
    from sklearn.model_selection import LeaveOneGroupOut

    from llm2nifti.analysis.encoding_model import _refit_null_max

    X, Y, groups = planted
    model = EncodingModel(n_permutations=0).fit(X, Y, groups)
    folds = list(LeaveOneGroupOut().split(X, Y, groups))
    for v in (0, 15, 30):  # a voxel alone: the maximum over voxels is its own r
        alphas = [np.full(1, a) for a in _fold_alphas(X, Y[:, [v]], groups)]
        null = _refit_null_max(X, Y[:, [v]], groups, folds, alphas, 1, 1, 0,
                               shifts=np.zeros((1, 3), int))
        np.testing.assert_allclose(null, [model.r_[v]], atol=1e-5)  # the null runs in float32


def _fold_alphas(X, y, groups):
    from himalaya.ridge import RidgeCV
    from sklearn.model_selection import LeaveOneGroupOut

    from llm2nifti.analysis.encoding_model import ALPHAS

    out = []
    for train, _ in LeaveOneGroupOut().split(X, y, groups):
        inner = list(LeaveOneGroupOut().split(X[train], y[train], groups[train]))
        out.append(float(RidgeCV(alphas=ALPHAS, cv=inner).fit(X[train], y[train]).best_alphas_[0]))
    return out


def test_the_null_is_chosen_by_the_solver(planted):
    X, Y, groups = planted
    assert EncodingModel(n_permutations=20).fit(X, Y, groups).null_ == "refit"
    assert EncodingModel(n_permutations=20, banded=5).fit(X, Y, groups).null_ == "predictions"
    assert EncodingModel(n_permutations=20, null="predictions").fit(X, Y, groups).null_ == \
        "predictions"
    with pytest.raises(UsageError, match="null='refit' needs one penalty per voxel"):
        EncodingModel(n_permutations=20, banded=5, null="refit").fit(X, Y, groups)


def test_voxel_chunks_on_dask_workers_give_the_same_fit(planted):
    """The chunks of every fold and of the null run on a local Dask cluster of two processes:
    the same numbers as in this process, to float64 rounding."""
    X, Y, groups = planted
    here = EncodingModel(n_permutations=100, chunk=15, random_state=1).fit(X, Y, groups)
    there = EncodingModel(n_permutations=100, chunk=15, random_state=1, scheduler="processes",
                          workers=2).fit(X, Y, groups)
    for name in ("r_", "r2_", "parts_", "coef_", "best_alphas_"):
        np.testing.assert_allclose(getattr(there, name), getattr(here, name), rtol=1e-9,
                                   atol=1e-12)
    np.testing.assert_allclose(there.null_max_, here.null_max_, atol=1e-5)  # float32 null
    assert clone(there).scheduler == "processes"
