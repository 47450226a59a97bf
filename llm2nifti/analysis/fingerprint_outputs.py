"""Files of ``fingerprint``: tables, JSON and figures under ``derivatives/llm2nifti-fingerprint``."""

from __future__ import annotations


import numpy as np
import pandas as pd

__all__ = ["write_fingerprint"]

# BIDS has no suffix for these yet: the validator checks the rest of the derivative.

def _tsv(path, frame, index=False):
    from bids_llm.tsv import write_frame

    write_frame(path, frame, index=index)
    return path


def _layer_frame(values, s):
    return pd.DataFrame(np.round(values, 6), index=[f"L{l}" for l in s.layers_a],
                        columns=[f"L{l}" for l in s.layers_b])


def write_fingerprint(result, ds, task, site, pool, output=None):
    """Write what :func:`~llm2nifti.analysis.fingerprint.fingerprint` found; return the paths."""
    from bids_llm.dataset import acq_for
    from bids_llm.outputs import DERIVATIVES
    from bids_llm.io import write_json
    from bids_llm.naming import bids_name, inside

    from bids_llm.outputs import software
    from ..plots import plot_depths, plot_fingerprint, plot_rsa

    ref = result.reference
    root = DERIVATIVES["fingerprint"].create(ds.root, output)
    folder = inside(root, f"sub-{ref}")

    def name(suffix, ext, desc=None):
        return folder / bids_name(suffix, ext, sub=ref, task=task, acq=acq_for(site), desc=desc)

    paths = {"summary": _tsv(name("fingerprint", ".tsv"), result.summary)}
    for row in result.summary.to_dict("records"):
        p = row["participant"]
        paths[p] = {m: _tsv(name(m, ".tsv", p), result.matrices[p][m], index=True)
                    for m in ("spearman", "pearson")}
        paths[p]["pairs"] = _tsv(name("pairs", ".tsv", p), result.pairs[p])
        paths[p]["figure"] = plot_fingerprint(result.matrices[p]["spearman"], result.pairs[p],
                                              result.nulls[p], row, name("fingerprint", ".png", p))
        if result.rsa is not None and p in result.rsa:
            s = result.rsa[p]
            paths[p]["rsa"] = _tsv(name("rsa", ".tsv", p), _layer_frame(s.rsa, s), index=True)
            paths[p]["rsa_p"] = _tsv(name("rsap", ".tsv", p), _layer_frame(s.p, s), index=True)
            paths[p]["cka"] = _tsv(name("cka", ".tsv", p), _layer_frame(s.cka, s), index=True)
    paths["depth"] = plot_depths(result.pairs, name("depth", ".png"))
    if result.isc is not None:
        paths["isc"] = _tsv(name("isc", ".tsv"), result.isc)
    if result.rsa:
        paths["rsa"] = plot_rsa(result.rsa, name("rsa", ".png"))
    paths["json"] = name("fingerprint", ".json")
    write_json(paths["json"], {
        "Reference": ref, "Task": task, "Site": site, "Pool": pool,
        "ReferenceDecompositions": result.reference_decompositions,
        "ReferenceMinStability": result.min_stability,
        "Method": "CanICA networks (|z| past the threshold), signed mean time courses pooled "
                  "to words; Spearman correlation; Hungarian matching; score = mean matched r",
        "Comparisons": [dict(r, Null=[round(float(v), 6) for v in result.nulls[r["participant"]]])
                        for r in result.summary.to_dict("records")],
        "RSA": None if not result.rsa else {
            p: {"NItems": s.n_items, "MaxRSA": round(float(s.rsa.max()), 6),
                "DiagonalCKA": _diagonal(s)} for p, s in result.rsa.items()},
        **software(),
    })
    return paths


def _diagonal(s):
    """Mean CKA of layers at the same relative depth (nearest layer of the other model)."""
    j = np.abs(s.depth_b[None, :] - s.depth_a[:, None]).argmin(axis=1)
    return round(float(s.cka[np.arange(len(j)), j].mean()), 6)
