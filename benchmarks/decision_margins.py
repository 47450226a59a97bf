"""A pytest plugin that records how far each thresholding decision of a test run is from its edge.

A test that thresholds, ranks or matches on data from random models passes on one CPU and fails
on another when a value sits within rounding of the line it is compared with. This plugin wraps
the decisions of the analysis (a network's units past ``|z| > t`` or its top k, a localizer's
units past a z threshold or its top share, a recurrence match past an IoU, a lineage verdict's p
against alpha) and records, for each test, the smallest distance between a value and its line:

- ``units``: the unit nearest the threshold (a unit's membership turns on rounding below ~1e-6);
- ``empty``: how far each map's largest ``|z|`` is from the threshold, for the map nearest it
  (near zero: a network whose existence turns on rounding);
- ``rank``: the gap between the last unit kept by a top-k and the first left out;
- ``assert``: with ``-o enable_assertion_pass_hook=true``, the distance between the two numbers of
  each passing ``assert a < b`` (its values as pytest explains them).

Use it through ``benchmarks/kernel_outcomes.py --margins`` or directly::

    LLM2NIFTI_MARGINS=margins.jsonl python -m pytest -p decision_margins tests/...

with ``benchmarks/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import pkgutil
import re
import sys

import numpy as np

_current = {"test": None}
_out = None


def _record(kind, value, **info):
    if _out is None or _current["test"] is None or not np.isfinite(value):
        return
    _out.write(json.dumps({"test": _current["test"], "kind": kind, "margin": float(value), **info}) + "\n")
    _out.flush()


def _z_margins(Z, threshold, two_sided, top_k, where):
    Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
    S = np.abs(Z) if two_sided else Z
    if threshold is not None:
        _record("units", float(np.min(np.abs(S - float(threshold)))), where=where,
                threshold=float(threshold))
        _record("empty", float(np.min(np.abs(S.max(axis=1) - float(threshold)))), where=where,
                threshold=float(threshold))
    if top_k is not None and S.shape[1] > int(top_k):
        ordered = -np.sort(-S, axis=1)
        k = int(top_k)
        _record("rank", float(np.min(ordered[:, k - 1] - ordered[:, k])), where=where, top_k=k)


def _wrap_maps_to_neurons(original):
    @functools.wraps(original)
    def wrapped(img, layout, threshold=3.6, two_sided=True, top_k=None, names=None):
        from llm2nifti.analysis.decomposition import zscore_maps
        from llm2nifti.analysis.selection import load_maps

        try:
            maps = np.asarray(img, dtype=np.float64) if isinstance(img, np.ndarray) \
                else load_maps(img, layout)
            _z_margins(zscore_maps(np.atleast_2d(maps)), threshold, two_sided, top_k,
                       "maps_to_neurons")
        except Exception:  # the original raises its own error below
            pass
        return original(img, layout, threshold=threshold, two_sided=two_sided, top_k=top_k,
                        names=names)
    return wrapped


def _wrap_select_units(original):
    @functools.wraps(original)
    def wrapped(t, z, layout, name, top_percent=1.0, z_threshold=None):
        if z_threshold is not None:
            _z_margins(np.asarray(z)[None], z_threshold, False, None, "localize")
        else:
            n = max(1, int(round(len(np.ravel(t)) * float(top_percent) / 100)))
            _z_margins(np.asarray(t)[None], None, False, n, "localize")
        return original(t, z, layout, name, top_percent=top_percent, z_threshold=z_threshold)
    return wrapped


def _wrap_match_rows(original):
    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        rows = original(*args, **kwargs)
        threshold = args[-1] if len(args) >= 8 else kwargs.get("iou_threshold")
        for row in rows:
            if threshold is not None and "iou" in row:
                _record("iou", abs(float(row["iou"]) - float(threshold)), where="recurrence",
                        threshold=float(threshold))
        return rows
    return wrapped


def _wrap_lineage_verdict(original):
    @functools.wraps(original)
    def wrapped(score, p, independent, alpha=0.05):
        _record("p", abs(float(p) - float(alpha)), where="lineage_verdict", threshold=float(alpha))
        for value in dict(independent).values():
            _record("score", abs(float(score) - float(value)), where="lineage_verdict")
        return original(score, p, independent, alpha=alpha)
    return wrapped


WRAPS = {
    ("llm2nifti.analysis.selection", "maps_to_neurons"): _wrap_maps_to_neurons,
    ("llm2nifti.analysis.glm", "select_units"): _wrap_select_units,
    ("llm2nifti.analysis.matching", "_match_rows"): _wrap_match_rows,
    ("llm2nifti.analysis.compare", "lineage_verdict"): _wrap_lineage_verdict,
}


def _install():
    import llm2nifti

    for info in pkgutil.walk_packages(llm2nifti.__path__, "llm2nifti."):
        if info.name.endswith(".__main__") or ".cli" in info.name:
            continue
        try:
            importlib.import_module(info.name)
        except Exception:
            continue
    for (module, name), wrap in WRAPS.items():
        original = getattr(importlib.import_module(module), name)
        wrapped = wrap(original)
        for mod in list(sys.modules.values()):
            if getattr(mod, "__name__", "").startswith("llm2nifti") and \
                    getattr(mod, name, None) is original:
                setattr(mod, name, wrapped)


def pytest_configure(config):
    global _out
    path = os.environ.get("LLM2NIFTI_MARGINS")
    if path:
        _out = open(path, "a", encoding="utf-8")
        _install()


def pytest_assertion_pass(item, lineno, orig, expl):
    """A passing assert that compares numbers: how far its two sides are (with
    ``-o enable_assertion_pass_hook=true``; clear ``tests/__pycache__`` first)."""
    if _out is None:
        return
    first = expl.splitlines()[0] if expl else ""
    for left, op, right in _COMPARISON.findall(first):
        try:
            a, b = float(left), float(right)
        except ValueError:
            continue
        if np.isfinite(a) and np.isfinite(b):
            _out.write(json.dumps({"test": item.nodeid, "kind": "assert", "where": f"line {lineno}",
                                   "margin": abs(a - b), "assert": orig, "values": first}) + "\n")


_NUMBER = r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
_COMPARISON = re.compile(_NUMBER + r"\s*(<=|>=|<|>)\s*" + _NUMBER)


def pytest_runtest_setup(item):
    _current["test"] = item.nodeid


def pytest_runtest_teardown(item):
    _current["test"] = None


def pytest_unconfigure(config):
    if _out is not None:
        _out.close()
