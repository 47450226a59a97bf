"""Unit statistics computed while converting equal those computed from the runs afterwards."""

from __future__ import annotations

import numpy as np

from bids_llm.dataset import Dataset, load_run
from llm2nifti.acquisition.unitstats import RunningStats
from llm2nifti.intervention.controls import neuron_stats


def test_running_stats_match_numpy():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((700, 30)).astype(np.float32) * 5
    X[123, 7] = -400.0
    s = RunningStats(30)
    for part in np.array_split(X, 3):
        s.update(part, chunk=64)
    np.testing.assert_allclose(s.mean, X.astype(np.float64).mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.std, X.astype(np.float64).std(0, ddof=1), rtol=1e-10)
    np.testing.assert_array_equal(s.peak, np.abs(X).max(0))
    np.testing.assert_array_equal(s.peak_token, np.abs(X).argmax(0))
    assert s.peak_token[7] == 123 and s.n_tokens == 700


def test_peak_token_is_the_first_of_a_tie_on_both_search_paths():
    # Small integers tie often, and +v and -v tie on |x|: the first token must win whichever
    # way the peak is searched (one pass over the rows when most units rise, a gather when few).
    rng = np.random.default_rng(1)
    X = rng.integers(-3, 4, size=(300, 64)).astype(np.float32)
    X[:, 5] = 0.0  # a dead unit: its peak stays 0 at token 0
    for chunk in (300, 7):  # one chunk (every unit rises), then many (few units rise later)
        s = RunningStats(64).update(X, chunk=chunk)
        np.testing.assert_array_equal(s.peak, np.abs(X).max(0))
        np.testing.assert_array_equal(s.peak_token, np.abs(X).argmax(0))
    assert s.peak_token[5] == 0


def test_convert_writes_unit_stats_that_evaluate_reads(tiny_scan):
    res, _ = tiny_scan
    ds = Dataset(res.root)
    X = np.concatenate([load_run(r)[0] for r in ds.runs()]).astype(np.float64)
    saved = ds.unit_stats("tinyllama", res.task)
    assert saved is not None
    np.testing.assert_allclose(saved["mean"], X.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(saved["std"], X.std(0, ddof=1), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(saved["peak"], np.abs(X).max(0))
    np.testing.assert_array_equal(saved["peak_token"], np.abs(X).argmax(0))
    stats = neuron_stats(ds)  # read from the derivative
    np.testing.assert_array_equal(stats["mean"].to_numpy(), saved["mean"])
    assert stats["peak_token"].dtype == np.int64


def test_stale_unit_stats_are_not_used(tiny_scan):
    res, _ = tiny_scan
    ds = Dataset(res.root)
    sidecar = next((res.root / "derivatives").rglob("*desc-unitstats_statmap.json"))
    sidecar.write_text(sidecar.read_text().replace('"NTokens": ', '"NTokens": 1'))
    assert ds.unit_stats("tinyllama", res.task) is None
    X = np.concatenate([load_run(r)[0] for r in ds.runs()]).astype(np.float64)
    np.testing.assert_allclose(neuron_stats(ds)["mean"].to_numpy(), X.mean(0), rtol=1e-9, atol=1e-12)
