"""Decomposition: planted networks come back neuron-exactly, with every backend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from planted import PARTICIPANT, make_planted, recovered_exactly
from scipy.optimize import linear_sum_assignment

from llm2nifti.analysis.decomposition import (Decomposition, StableDecomposition, decompose,
                                              explained_variance, zscore_maps)
from llm2nifti.errors import UsageError
from llm2nifti.analysis.fastica import canica, fastica_restarts, run_pca, zscore_
from llm2nifti.analysis.selection import maps_to_neurons


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted") / "ds"
    layout, sets = make_planted(root, signs=[1, -1, 1, 1])
    return root, layout, sets


@pytest.mark.parametrize("backend,method", [("nilearn", "canica"), ("fast", "canica"),
                                            ("nilearn", "dictlearning")])
def test_planted_networks_recovered_neuron_exactly(planted, backend, method):
    root, layout, sets = planted
    res = decompose(root, Decomposition(backend=backend, method=method, n_components=4, n_init=3),
                    desc=f"{backend}{method}")
    nset = maps_to_neurons(res.zmaps, layout, threshold=3.6)
    assert recovered_exactly(nset, layout, sets)
    assert len(nset) == sum(len(s) for s in sets)  # nothing else passes the threshold
    assert 0.1 < res.explained_variance_total <= 1
    assert res.explained_variance.shape == (4,)


def test_fast_backend_matches_nilearn(planted):
    root, layout, _ = planted
    from bids_llm.dataset import Dataset

    runs = Dataset(root).runs()
    a = Decomposition(n_components=4, n_init=3, backend="nilearn").fit(runs, layout=layout).components_
    b = Decomposition(n_components=4, n_init=3, backend="fast").fit(runs, layout=layout).components_
    r = np.abs(np.corrcoef(a, b)[:4, 4:])
    i, j = linear_sum_assignment(-r)
    assert r[i, j].min() > 0.999


def test_fastica_matches_sklearn_exactly():
    from sklearn.decomposition import fastica

    rng = np.random.default_rng(0)
    X = rng.laplace(size=(3, 2000)) ** 3  # three sparse "maps"
    comps = rng.standard_normal((3, 3)) @ X
    maps, info = fastica_restarts(torch.as_tensor(comps), n_init=1, random_state=5)
    seed = np.random.RandomState(5).randint(np.iinfo(np.int32).max, size=1)[0]
    _, _, S = fastica(comps.T, whiten="arbitrary-variance", fun="cube", random_state=seed)
    ref = S.T.copy()
    for m in ref:
        if m.max() < -m.min():
            m *= -1
    np.testing.assert_allclose(maps.numpy(), ref, rtol=1e-6, atol=1e-8)
    assert info["converged"] == [True]


def test_fastica_keeps_the_sparsest_start():
    rng = np.random.default_rng(1)
    comps = torch.as_tensor(rng.standard_normal((3, 3)) @ rng.laplace(size=(3, 500)) ** 3)
    maps, info = fastica_restarts(comps, n_init=4, random_state=0)
    assert info["chosen"] == int(np.argmin(info["sparsity"]))
    assert np.isclose(np.abs(maps.numpy()).sum(1).max(), min(info["sparsity"]))
    assert (maps.amax(1) >= -maps.amin(1)).all()  # peaks positive


@pytest.mark.parametrize("precision", ["mixed", "double"])
def test_a_degenerate_start_is_restarted_and_the_maps_are_still_found(precision):
    # Planted sparse sources; start 0 holds a NaN, start 1 two equal rows (rank lost): on a
    # GPU one such start made the batched eigh fail and took the decomposition down.
    rng = np.random.default_rng(3)
    S = rng.laplace(size=(4, 3000)) ** 3
    comps = torch.as_tensor(rng.standard_normal((4, 4)) @ S)
    w = np.stack([np.random.RandomState(s).normal(size=(4, 4)) for s in range(4)])
    w[0, 1, 2] = np.nan
    w[1, 2] = w[1, 0]
    maps, info = fastica_restarts(comps, n_init=4, random_state=0, w_init=w, precision=precision)
    assert info["restarted"] == [0, 1] and info["dropped"] == []
    assert all(info["converged"]) and all(v is not None for v in info["sparsity"])
    r = np.abs(np.corrcoef(maps.numpy(), S)[:4, 4:])
    assert r.max(1).min() > 0.999 and sorted(r.argmax(1)) == [0, 1, 2, 3]
    # The sound starts are untouched by the others' trouble: same as running them alone.
    alone, _ = fastica_restarts(comps, n_init=4, random_state=0, precision=precision)
    np.testing.assert_allclose(np.abs(np.corrcoef(alone.numpy(), maps.numpy())[:4, 4:]).max(1), 1,
                               atol=1e-6)


def test_a_start_that_degenerates_on_the_way_is_dropped_not_fatal(monkeypatch):
    from llm2nifti.analysis import fastica as F

    rng = np.random.default_rng(4)
    comps = torch.as_tensor(rng.standard_normal((3, 3)) @ rng.laplace(size=(3, 800)) ** 3)
    real = F._moment_step
    calls = {"n": 0}

    def poisoned(X1):
        step = real(X1)
        calls["n"] += 1

        def bad_first_start(W):
            out = step(W)
            if calls["n"] == 1 and W.shape[0] == 3:  # start 0 blows up in its first step
                out[0] = float("inf")
            return out
        return bad_first_start

    monkeypatch.setattr(F, "_moment_step", poisoned)
    maps, info = F.fastica_restarts(comps, n_init=3, random_state=0)
    assert info["restarted"] == [0] and info["dropped"] == [] and calls["n"] == 2
    assert torch.isfinite(maps).all()

    monkeypatch.setattr(F, "_moment_step", lambda X1: (lambda W: W * float("nan")))
    from llm2nifti.errors import UsageError

    with pytest.raises(UsageError, match="every FastICA start degenerated .* ask for fewer"):
        F.fastica_restarts(comps, n_init=3, random_state=0)


def test_zscore_matches_nilearn_convention():
    X = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    Z = zscore_(X.clone())
    ref = (X - X.mean(0)) / X.std(0, unbiased=True)
    assert torch.allclose(Z[:, [0, 2]], ref[:, [0, 2]])
    assert torch.all(Z[:, 1] == 0)  # constant neuron: zeros, not NaN


def test_fixed_seed_gives_identical_output(planted, tmp_path):
    root, _, _ = planted
    copy = tmp_path / "ds"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("derivatives"))
    shutil.copytree(root / "derivatives" / "llm2nifti", copy / "derivatives" / "llm2nifti")
    outs = []
    for backend in ("fast", "fast", "nilearn", "nilearn"):
        res = decompose(copy, Decomposition(backend=backend, n_components=4, n_init=2,
                                            random_state=3), desc=backend)
        sidecar = json.loads(res.sidecar.read_text())
        sidecar.pop("Timing")
        outs.append((res.components.read_bytes(), res.zmaps.read_bytes(), sidecar))
    assert outs[0] == outs[1]
    assert outs[2] == outs[3]
    other = decompose(copy, Decomposition(backend="fast", n_components=4, n_init=2, random_state=4),
                      desc="fast")
    assert other.components.read_bytes() != outs[0][0]


def test_derivative_files_and_bids_validator(planted):
    root, layout, _ = planted
    # two decompositions clustered: the stability tables are part of what the validator reads
    two = StableDecomposition(Decomposition(backend="fast", n_components=4, n_init=2), n_repeats=2)
    res = decompose(root, two, run=[1], desc="single")
    assert res.components.with_name(f"sub-{PARTICIPANT}_task-planted_run-01_desc-single_stability.tsv").is_file()
    assert res.components.parent == root / "derivatives" / "llm2nifti-canica" / f"sub-{PARTICIPANT}" / "func"
    assert res.components.name == f"sub-{PARTICIPANT}_task-planted_run-01_desc-single_components.nii"
    img = nib.load(res.components)
    assert img.shape == layout.shape + (4,)
    np.testing.assert_array_equal(img.affine, layout.affine)
    zs = layout.unfold(nib.load(res.zmaps))
    np.testing.assert_allclose(zs.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(zs.std(1), 1, atol=1e-4)
    side = json.loads(res.sidecar.read_text())
    assert side["Sources"] == [f"sub-{PARTICIPANT}/func/sub-{PARTICIPANT}_task-planted_run-01_bold.nii"]
    assert side["NTokens"] == 200 and side["Parameters"]["smoothing_fwhm"] is None
    desc = json.loads((root / "derivatives" / "llm2nifti-canica" / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "llm2nifti"
    assert desc["SourceDatasets"]
    from test_bids import validation_errors

    errors, _ = validation_errors(root)
    assert "/derivatives/llm2nifti-canica/" in errors
    assert all(e == [] for e in errors.values()), errors
    assert (res.components.parents[2] / ".bidsignore").read_text().splitlines() == [
        "*_components.*", "*_stability.tsv", "*_estimates.tsv"]  # what BIDS does not define yet


def test_explained_variance_of_the_data_itself(planted):
    root, layout, sets = planted
    from bids_llm.dataset import Dataset

    runs = Dataset(root).runs()
    truth = np.zeros((len(sets), layout.n_neurons))
    for i, s in enumerate(sets):
        truth[i, s] = 1
    per, total = explained_variance(runs, truth)
    noise = np.random.default_rng(0).standard_normal((4, layout.n_neurons))
    per_noise, total_noise = explained_variance(runs, noise)
    assert total > 0.15 and total_noise < 0.05
    assert np.all(per > per_noise.max())


def test_zscore_maps_rows():
    z = zscore_maps(np.array([[0.0, 0.0, 3.0, 1.0], [2.0, 2.0, 2.0, 2.0]]))
    np.testing.assert_allclose(z[0].mean(), 0, atol=1e-6)
    np.testing.assert_allclose(z[0].std(), 1, atol=1e-6)
    assert np.all(z[1] == 0)


def test_bad_requests_are_usage_errors(planted):
    root, layout, _ = planted
    with pytest.raises(UsageError, match="backend='fast' runs CanICA only"):
        decompose(root, Decomposition(backend="fast", method="dictlearning", n_components=2))
    with pytest.raises(UsageError, match="exceeds"):
        decompose(root, Decomposition(n_components=500), run=[1])
    with pytest.raises(UsageError, match="no runs"):
        decompose(root, task="nosuchtask")
    with pytest.raises(UsageError, match="letters and digits"):
        decompose(root, Decomposition(n_components=2), desc="../x")
    assert not (root.parent / "x").exists()


def test_canica_streams_runs_without_modifying_them():
    rng = np.random.default_rng(0)
    runs = [rng.standard_normal((50, 30)).astype(np.float32) for _ in range(2)]
    before = [r.copy() for r in runs]
    maps, info = canica([lambda r=r: r for r in runs], n_components=3, n_init=2, random_state=0)
    assert maps.shape == (3, 30) and maps.dtype == np.float32
    assert len(info["singular_values"]) == 3
    for a, b in zip(runs, before):
        np.testing.assert_array_equal(a, b)


def test_run_pca_is_nilearns_per_run_reduction():
    from nilearn.decomposition._base import _fast_svd

    rng = np.random.default_rng(0)
    Z = (rng.standard_normal((600, 40)) @ rng.standard_normal((40, 700))).astype(np.float32)
    Z += 0.1 * rng.standard_normal(Z.shape).astype(np.float32)
    ours = run_pca(torch.from_numpy(Z), 5, random_state=3).numpy()
    U, S, _ = _fast_svd(Z.T, 5, random_state=3)  # nilearn's call: (voxels, tokens)
    ref = (U * S).T
    signs = np.sign((ours * ref).sum(1, keepdims=True))
    np.testing.assert_allclose(ours * signs, ref, rtol=0, atol=2e-3 * np.abs(ref).max())


def test_moment_and_direct_fastica_steps_agree(monkeypatch):
    import llm2nifti.analysis.fastica as F

    rng = np.random.default_rng(2)
    comps = torch.as_tensor(rng.standard_normal((5, 5)) @ rng.laplace(size=(5, 3000)) ** 3)
    monkeypatch.setattr(F, "use_moments", lambda *a: True)
    a, info_a = F.fastica_restarts(comps, n_init=3, random_state=1)
    monkeypatch.setattr(F, "use_moments", lambda *a: False)
    b, info_b = F.fastica_restarts(comps, n_init=3, random_state=1, precision="double")
    assert (info_a["step"], info_b["step"]) == ("moments", "direct")
    assert info_a["n_iter"] == info_b["n_iter"]
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-7, atol=1e-9)


def test_mixed_precision_fastica_lands_on_the_double_precision_maps(monkeypatch):
    import llm2nifti.analysis.fastica as F

    monkeypatch.setattr(F, "use_moments", lambda *a: False)
    rng = np.random.default_rng(4)
    k = 12
    comps = torch.as_tensor(rng.standard_normal((k, k)) @ rng.laplace(size=(k, 20000)) ** 3)
    a, info_a = fastica_restarts(comps, n_init=4, random_state=2, precision="double")
    b, info_b = fastica_restarts(comps, n_init=4, random_state=2, precision="mixed")
    assert info_b["step"] == "direct" and info_b["precision"] == "mixed"
    assert all(info_a["converged"]) and all(info_b["converged"])
    # every start lands where its float64 twin does (the sparsest may swap between near-ties)
    np.testing.assert_allclose(info_a["sparsity"], info_b["sparsity"], rtol=1e-4)
    r = np.abs(np.corrcoef(a.numpy(), b.numpy())[:k, k:])
    i, j = linear_sum_assignment(-r)
    assert r[i, j].min() > 0.9999


def test_exact_reduction_is_the_svd_and_serves_every_smaller_k():
    from llm2nifti.analysis.reduction import RunReductions, gram_pca, reduce_array

    rng = np.random.default_rng(5)
    X = (rng.standard_normal((300, 30)) @ rng.standard_normal((30, 900))).astype(np.float32)
    X += 0.3 * rng.standard_normal(X.shape).astype(np.float32)
    Z = zscore_(torch.from_numpy(X.copy()))
    _, s, vt = np.linalg.svd(Z.double().numpy(), full_matrices=False)
    for A in (Z, Z.T.contiguous()):  # tokens < neurons and the other way round
        rows = gram_pca(A, 8, dtype=torch.float32).double().numpy()
        ref = s[:8, None] * (vt[:8] if A is Z else np.linalg.svd(A.double().numpy(),
                                                                  full_matrices=False)[2][:8])
        signs = np.sign((rows * ref).sum(1, keepdims=True))
        np.testing.assert_allclose(rows * signs, ref, atol=1e-3 * np.abs(ref).max())
    # Two reductions at two k take one Gram and one eigh but products of other shapes, which
    # other BLAS kernels compute: equal within the float32 bound of a T-term dot product of a
    # unit eigenvector with a z-scored column (norm sqrt(T - 1)), not bit for bit.
    big = reduce_array(X, 12, method="exact", gram_dtype="float32").numpy()
    small = reduce_array(X, 5, method="exact", gram_dtype="float32").numpy()
    T = X.shape[0]
    np.testing.assert_allclose(big[:5], small, rtol=0,
                               atol=T * np.finfo(np.float32).eps * np.sqrt(T - 1))


def _write_runs(root, arrays, n_layers=2):
    """Runs of ``(T, V)`` arrays written as convert writes them; their bold paths."""
    from bids_llm.dataset import DatasetWriter
    from llm2nifti.layout import NeuronLayout
    from llm2nifti.sites import Site

    width = arrays[0].shape[1] // n_layers
    layout = NeuronLayout(Site(kind="mlp", architecture="llama", hook="pre", width=width,
                               module_template="model.layers.{layer}.mlp.down_proj",
                               n_layers=n_layers))
    w = DatasetWriter(root, "m", "t", layout)
    w.init_dataset()
    w.add_participant({"model": "m"})
    paths = []
    for r, X in enumerate(arrays, 1):
        buf = layout.fill_buffer(layout.empty_buffer(len(X)), X)
        paths.append(w.write_run(r, layout.buffer_to_img(buf), {
            "TaskName": "t", "RepetitionTime": 1.0, "NeuronLayout": layout.to_dict()},
            "onset\tduration\n", ".nii"))
    return paths


def test_the_cache_serves_exactly_the_rows_of_its_one_reduction(tmp_path):
    # One reduction at the largest k serves each smaller k: exactly its leading rows.
    from llm2nifti.analysis.reduction import RunReductions

    rng = np.random.default_rng(6)
    (path,) = _write_runs(tmp_path, [rng.standard_normal((40, 90)).astype(np.float32)])
    cache = RunReductions(gram_dtype="float32", n_components=12)
    (big,) = cache.of([path], 12)
    for k in (12, 7, 1):
        (rows,) = cache.of([path], k)
        assert rows.shape == (k, 90)
        np.testing.assert_array_equal(np.asarray(rows), np.asarray(big)[:k])


def test_a_run_shorter_than_k_contributes_all_its_components(tmp_path):
    from llm2nifti.analysis.reduction import RunReductions

    rng = np.random.default_rng(7)
    # the last runs of a text: 3 tokens, then 1
    paths = _write_runs(tmp_path, [rng.standard_normal((T, 50)).astype(np.float32)
                                   for T in (30, 3, 1)])
    cache = RunReductions(gram_dtype="float32")
    rows = cache.of(paths, 8)
    assert [len(r) for r in rows] == [8, 3, 1]
    assert [len(r) for r in cache.of(paths, 4)] == [4, 3, 1]  # from the cache, no crash
    maps, info = canica((), n_components=8, n_init=2, reduced=cache.of(paths, 8))
    assert maps.shape == (8, 50) and np.isfinite(maps).all()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_gram_dtype_gives_the_leading_subspace_on_any_machine(dtype):
    # Each branch forced by name, so a CPU without bfloat16 units tests the bfloat16 arithmetic
    # too. Planted: rank-8 signal plus small noise; the bound is Davis-Kahan's, sin(angle) <=
    # |E| / gap, with |E| <= 4 eps |A|_F^2 for a Gram of A rounded to the dtype.
    from llm2nifti.analysis.reduction import gram_pca, subspace_angle

    rng = np.random.default_rng(8)
    k = 8
    A = (rng.standard_normal((200, k)) * 10) @ rng.standard_normal((k, 600))
    A = (A + 0.1 * rng.standard_normal(A.shape)).astype(np.float32)
    Z = zscore_(torch.from_numpy(A.copy()))
    Zd = Z.double().numpy()
    _, s, vt = np.linalg.svd(Zd, full_matrices=False)
    rows = gram_pca(Z, k, dtype=getattr(torch, dtype))
    assert rows.dtype == torch.float32 and rows.shape == (k, 600)
    eps = float(torch.finfo(getattr(torch, dtype)).eps)
    gap = s[k - 1] ** 2 - s[k] ** 2
    bound = np.degrees(np.arcsin(min(1.0, 4 * eps * (s ** 2).sum() / gap)))
    angle = subspace_angle(rows, vt[:k])
    assert angle <= bound, (angle, bound)
    # and the rows are s_i v_i: their norms are the singular values, within the same bound
    np.testing.assert_allclose(rows.double().norm(dim=1).numpy(), s[:k], rtol=4 * eps * k)


@pytest.mark.parametrize("amx, avx512_bf16, device, env, expected", [
    (False, False, "cpu", None, "float32"),
    (True, False, "cpu", None, "bfloat16"),
    (False, True, "cpu", None, "bfloat16"),
    (False, False, "cuda", None, "bfloat16"),
    (True, True, "cpu", "float32", "float32"),
    (False, False, "cpu", "bfloat16", "bfloat16"),
])
def test_auto_gram_dtype_follows_the_cpu_flags(monkeypatch, amx, avx512_bf16, device, env, expected):
    from llm2nifti.analysis.reduction import GRAM_DTYPE_ENV, resolve_gram_dtype

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    if env is None:
        monkeypatch.delenv(GRAM_DTYPE_ENV, raising=False)
    else:
        monkeypatch.setenv(GRAM_DTYPE_ENV, env)
    assert resolve_gram_dtype("auto", device) == getattr(torch, expected)
    assert resolve_gram_dtype("float32", device) == torch.float32  # a name always wins


def test_a_bad_gram_dtype_in_the_environment_is_one_line(monkeypatch):
    from llm2nifti.analysis.reduction import GRAM_DTYPE_ENV, resolve_gram_dtype
    from llm2nifti.errors import UsageError

    monkeypatch.setenv(GRAM_DTYPE_ENV, "float8")
    with pytest.raises(UsageError, match="LLM2NIFTI_GRAM_DTYPE='float8' is not a Gram dtype"):
        resolve_gram_dtype("auto")


def test_run_reductions_read_each_run_once_for_a_sweep(planted, monkeypatch):
    from bids_llm.dataset import Dataset
    from llm2nifti.analysis import reduction
    from llm2nifti.analysis.reduction import RunReductions

    root, layout, _ = planted
    runs = Dataset(root).runs()
    calls = []
    real = reduction.reduce_run
    monkeypatch.setattr(reduction, "reduce_run", lambda p, **kw: calls.append(p) or real(p, **kw))
    cache = RunReductions(n_components=6, gram_dtype="float32")
    for k, seed in ((6, 0), (4, 0), (3, 7)):
        out = cache.of(runs, k, seed)
        assert [len(r) for r in out] == [k] * len(runs)
    assert sorted(calls) == sorted(str(r.path) for r in runs)  # once each, for every k and seed
    a = Decomposition(n_components=4, n_init=2, backend="fast", gram_dtype="float32").fit(
        runs, layout=layout, reduced=cache)
    b = Decomposition(n_components=4, n_init=2, backend="fast", gram_dtype="float32").fit(runs, layout=layout)
    np.testing.assert_array_equal(a.components_, b.components_)
    assert b.info_["reduction"] == ["exact"]


def test_the_task_is_inferred_when_one_is_left(tiny_scan, tokenizer, text_file):
    """One task: used without --task. Two: an error lists them; 'all' takes them together."""
    from llm2nifti.acquisition.convert import scan

    res, model = tiny_scan
    fast = Decomposition(backend="fast", n_components=2, n_init=1)
    one = decompose(res.root, fast)
    assert "_task-stories_" in one.components.name
    scan(res.root, "tinyllama", text_file, task="other", run_tokens=100, progress=False,
         loaded=(model, tokenizer), threads=1)
    with pytest.raises(UsageError, match=r"several tasks \(other, stories\): choose one with --task "
                                         r"\(or --task all to take them together\)"):
        decompose(res.root, fast)
    both = decompose(res.root, fast, task="all", desc="both")
    assert "_task-otherstories_" in both.components.name
    assert len(json.loads(both.sidecar.read_text())["Sources"]) == 2 * len(res.runs)


# ---------------------------------------------------------------------------------------------
# The estimator contract: fitted on run images or paths as nilearn's CanICA is, cloned,
# held in a scikit-learn Pipeline, with transform, inverse_transform, score, components_img_.

@pytest.mark.parametrize("cls", ["Decomposition", "StableDecomposition"])
def test_decompositions_follow_the_estimator_contract(planted, cls):
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    import llm2nifti
    from bids_llm.dataset import Dataset

    root, layout, sets = planted
    paths = [str(r.path) for r in Dataset(root).runs()]
    est = llm2nifti.Decomposition(n_components=4, n_init=2, backend="fast", random_state=3)
    name = "n_components"
    if cls == "StableDecomposition":  # a meta-estimator: the decomposition's parameters nested
        est, name = llm2nifti.StableDecomposition(est, n_repeats=3), "estimator__n_components"
    copy = clone(est)
    assert copy.get_params()[name] == 4 and not hasattr(copy, "components_")
    assert copy.set_params(**{name: 3}).get_params()[name] == 3 and est.get_params()[name] == 4
    assert est.fit(paths) is est  # the layout comes from the runs' sidecars
    img = est.components_img_
    assert img.shape[-1] == 4 and layout.check_img(img) is None
    np.testing.assert_array_equal(layout.unfold(img), est.components_)
    with_layout = clone(est).fit(paths, layout=layout)  # the same computation, given the layout
    np.testing.assert_array_equal(with_layout.components_, est.components_)
    # each planted network is one map: its time course is the planted source's
    courses = est.transform(paths)
    assert [c.shape for c in courses] == [(nib.load(p).shape[-1], 4) for p in paths]
    # transform then inverse_transform rebuilds the z-scored runs with the R^2 that score gives
    rebuilt = est.inverse_transform(courses)
    residual = total = 0.0
    for p, back in zip(paths, rebuilt):
        Z = next(est._runs_data([p]))
        R = Z - layout.unfold(back)
        residual, total = residual + (R ** 2).sum(), total + (Z ** 2).sum()
    np.testing.assert_allclose(1 - residual / total, est.score(paths), rtol=1e-4)
    assert est.score(paths, per_component=True).shape == (4,)
    # in a Pipeline: the time courses of every run, stacked
    pipe = make_pipeline(clone(est), FunctionTransformer(np.concatenate))
    stacked = pipe.fit_transform(paths)
    assert stacked.shape == (sum(c.shape[0] for c in courses), 4)


def test_a_decomposition_refuses_what_it_cannot_read(planted, tmp_path):
    from sklearn.exceptions import NotFittedError

    from bids_llm.dataset import Dataset

    root, layout, _ = planted
    paths = [str(r.path) for r in Dataset(root).runs()]
    with pytest.raises(NotFittedError):
        Decomposition(n_components=4).transform(paths)
    lone = tmp_path / "sub-x_task-t_run-01_bold.nii"  # an image without its sidecar
    shutil.copy(paths[0], lone)
    with pytest.raises(UsageError, match="has no sidecar with a NeuronLayout"):
        Decomposition(n_components=4, backend="fast").fit([lone])


@pytest.mark.parametrize("check", ["check_no_attributes_set_in_init",
                                   "check_parameters_default_constructible",
                                   "check_get_params_invariance", "check_set_params",
                                   "check_estimator_cloneable", "check_estimator_repr",
                                   "check_do_not_raise_errors_in_init_or_set_params",
                                   "check_mixin_order"])
@pytest.mark.parametrize("cls", ["Decomposition", "StableDecomposition"])
def test_scikit_learn_estimator_checks(cls, check):
    """The checks of scikit-learn that do not fit on numeric arrays (these estimators fit on
    run images, as nilearn's decompositions do: the others feed arrays and do not apply)."""
    import sklearn.utils.estimator_checks as checks

    import llm2nifti

    est = getattr(llm2nifti, cls)()
    getattr(checks, check)(cls, est)


def test_a_fastica_setting_reaches_every_decomposing_command(planted, tmp_path):
    """--tol: on the command line of every command that decomposes, passed to FastICA (a loose
    tolerance stops the starts sooner), recorded in the sidecar, part of the reuse rule, and
    refused with the nilearn backend, whose FastICA it cannot reach."""
    from click.testing import CliRunner

    from llm2nifti.analysis.decomposition import reusable, select_runs
    from llm2nifti.cli.main import main
    from bids_llm.dataset import Dataset

    root = tmp_path / "ds"
    shutil.copytree(planted[0], root, ignore=shutil.ignore_patterns("llm2nifti-*"))
    for command in ("decompose", "recurrence", "fingerprint", "diff"):
        assert "--tol" in {o for p in main.commands[command].params for o in p.opts}, command
    assert "--k-tol" in {o for p in main.commands["evaluate"].params for o in p.opts}
    iterations = {}
    for tol in ("1e-4", "1e-1"):
        r = CliRunner().invoke(main, ["decompose", str(root), "--backend", "fast", "-k", "4",
                                      "--n-init", "2", "--tol", tol, "--desc", f"tol{tol[-1]}",
                                      "-q"])
        assert r.exit_code == 0, r.output
        sidecar = json.loads(next((root / "derivatives" / "llm2nifti-canica").rglob(
            f"*_desc-tol{tol[-1]}_components.json")).read_text())
        assert sidecar["Parameters"]["tol"] == float(tol)
        iterations[tol] = sum(sidecar["BackendDetails"]["n_iter"])
    assert iterations["1e-1"] < iterations["1e-4"]
    runs, _ = select_runs(Dataset(root), None, None, None, None)
    loose = Decomposition(backend="fast", n_components=4, n_init=2, tol=0.1)
    assert reusable(Dataset(root), runs, "tol1", loose) is not None
    assert reusable(Dataset(root), runs, "tol1", loose.set_params(tol=0.01)) is None
    r = CliRunner().invoke(main, ["decompose", str(root), "--tol", "0.1", "-q"])
    assert r.exit_code == 2 and "--tol 0.1 needs --backend fast" in r.output, r.output
