"""Where the per-run work of a decomposition runs: in this process, or on a Dask cluster.

``scheduler`` names it:

``None`` or ``"threads"``
    In this process, one run after the other (torch's own threads work inside each run).
``"processes"``
    A :class:`dask.distributed.LocalCluster` of ``workers`` processes on this machine, one
    thread each (torch is told so), started and closed around the work.
``"tcp://host:port"``
    A running ``dask.distributed`` scheduler (``dask scheduler`` on one machine, ``dask worker
    tcp://host:port`` on each machine that sees the dataset's folder).
a :class:`dask.distributed.Client`
    Used as given (Python).

Workers read their run themselves, memory-mapped from the ``.nii`` file: only the path goes
to a worker, and only the small reduced matrix (``n_components x n_neurons``) comes back. A
worker that dies has its task run again by Dask (up to twice) with the same inputs, so the
result does not change.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import UsageError

__all__ = ["dask_client", "map_runs", "SCHEDULERS"]

SCHEDULERS = ("threads", "processes")
CONNECT_TIMEOUT = "10s"


def _is_client(obj):
    return type(obj).__name__ == "Client" and hasattr(obj, "submit")


@contextlib.contextmanager
def dask_client(scheduler=None, workers=2):
    """A Dask client for ``scheduler`` (None for in-process work), closed afterwards if made here."""
    if scheduler is None or scheduler == "threads":
        yield None
        return
    if _is_client(scheduler):
        yield scheduler
        return
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - a dependency, but say what to do
        raise UsageError("--scheduler needs dask.distributed: pip install 'dask[distributed]'") from None
    scheduler = str(scheduler)
    if scheduler == "processes":
        if int(workers) < 1:
            raise UsageError(f"--workers {workers}: give at least 1")
        # The cluster's own INFO logs only when this process logs INFO (``llm2nifti -v``):
        # distributed sets its loggers to INFO when imported, and its scheduler and nannies
        # log from this process.
        verbose = logging.getLogger().getEffectiveLevel() <= logging.INFO
        quiet = logging.getLogger("distributed")
        level = quiet.level
        if not verbose:
            quiet.setLevel(logging.ERROR)
        try:
            with LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                              dashboard_address=None,
                              silence_logs=False if verbose else logging.ERROR) as cluster, \
                    Client(cluster) as client:
                yield client
        finally:
            quiet.setLevel(level)
        return
    if not scheduler.startswith(("tcp://", "tls://", "inproc://")):
        raise UsageError(f"--scheduler {scheduler!r}: use threads, processes, or the address of a "
                         "running Dask scheduler such as tcp://host:8786")
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {scheduler} ({type(exc).__name__}): "
                         "start one with `dask scheduler` and workers with `dask worker "
                         f"{scheduler}`, or use --scheduler threads") from None
    try:
        yield client
    finally:
        client.close()


def map_runs(fn, items, client=None, progress=False, desc="runs", **kwargs):
    """``[fn(item, **kwargs) for item in items]``, in order, here or on ``client``'s workers."""
    items = list(items)
    if client is None:
        return [fn(item, **kwargs) for item in tqdm(items, desc=desc, unit="run", disable=not progress)]
    from dask.distributed import as_completed

    futures = client.map(fn, items, pure=False, retries=2, **kwargs)
    with tqdm(total=len(futures), desc=desc, unit="run", disable=not progress) as bar:
        for _ in as_completed(futures):
            bar.update(1)
    results = client.gather(futures)
    for f in futures:
        f.release()
    return results
