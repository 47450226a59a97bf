"""Dask schedulers: the same maps as in-process, workers that die are replaced, clear errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bids_llm.dataset import Dataset
from sklearn.base import clone

from llm2nifti.analysis.decomposition import Decomposition, select_runs
from llm2nifti.analysis.matching import recurrence
from llm2nifti.analysis.reduction import reduce_run
from llm2nifti.analysis.scheduling import dask_client, map_runs
from llm2nifti.errors import UsageError

from planted import make_planted, recovered_exactly

distributed = pytest.importorskip("dask.distributed")


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 worker processes, one thread each, shared by this module's tests."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need _dies_once
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("sched") / "ds"
    layout, sets = make_planted(root, n_runs=4, n_tokens=200)
    runs, layout = select_runs(Dataset(root))
    return root, runs, layout, sets


def _fit(runs, layout, scheduler=None, seed=0):
    return Decomposition(backend="fast", n_components=4, n_init=3, random_state=seed,
                         scheduler=scheduler).fit(runs, layout=layout)


def test_same_maps_on_a_cluster_as_in_process(planted, client):
    from llm2nifti.analysis.selection import maps_to_neurons

    _, runs, layout, sets = planted
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on each worker: the same float operations in the same order
    try:
        here = _fit(runs, layout)
    finally:
        torch.set_num_threads(threads)
    there = _fit(runs, layout, scheduler=client)
    np.testing.assert_array_equal(here.components_, there.components_)
    assert recovered_exactly(maps_to_neurons(there.components_, layout), layout, sets)


def test_recurrence_on_a_cluster(planted, client, tmp_path):
    root = planted[0]
    kw = dict(n_seeds=1, figures=False, threads=1)
    one = Decomposition(backend="fast", n_components=4, n_init=2)
    here = recurrence(root, one, output=tmp_path / "here", **kw)
    there = recurrence(root, clone(one).set_params(scheduler=client), output=tmp_path / "there",
                       **kw)
    assert here.table.equals(there.table)
    assert (there.summary["recurrence"] == 1).all()


def _dies_once(path, marker, **kwargs):
    """Kill the worker process the first time it is called (the marker file is the switch)."""
    if Path(marker).exists():
        Path(marker).unlink()
        os._exit(1)
    return reduce_run(path, **kwargs)


def test_a_dying_worker_changes_nothing(planted, client, tmp_path):
    _, runs, layout, _ = planted
    paths = [str(r.path) for r in runs]
    expected = map_runs(reduce_run, paths, None, n_components=4, threads=1)
    marker = tmp_path / "die"
    marker.touch()
    got = map_runs(_dies_once, paths, client, marker=str(marker), n_components=4, threads=1)
    assert not marker.exists(), "no worker died: the test did not test anything"
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)


def test_unreachable_scheduler_and_bad_names(monkeypatch):
    import socket

    from llm2nifti.analysis import scheduling

    monkeypatch.setattr(scheduling, "CONNECT_TIMEOUT", "1s")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UsageError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
        with dask_client(f"tcp://127.0.0.1:{port}"):
            pass
    with pytest.raises(UsageError, match="use threads, processes, or the address"):
        with dask_client("cluster"):
            pass


def test_scheduler_needs_the_fast_backend(planted):
    _, runs, layout, _ = planted
    with pytest.raises(UsageError, match="set backend='fast'"):  # the CLI: --backend fast
        Decomposition(backend="nilearn", scheduler="processes").fit(runs, layout=layout)


@pytest.mark.parametrize("verbose", [False, True])
def test_quiet_means_quiet_on_a_local_cluster(planted, verbose):
    """-q prints nothing but the result; the cluster's INFO logs appear only with -v."""
    import subprocess

    root = planted[0]
    args = [*(["-v"] if verbose else []), "decompose", str(root), "--backend", "fast", "-k", "2",
            "--n-init", "1", "--scheduler", "processes", "--workers", "2", "-q",
            "--desc", f"quiet{int(verbose)}"]
    r = subprocess.run([sys.executable, "-c", "from llm2nifti.cli.main import main; main()", *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cluster_lines = [l for l in (r.stdout + r.stderr).splitlines() if "distributed." in l]
    assert bool(cluster_lines) == verbose, r.stdout + r.stderr
