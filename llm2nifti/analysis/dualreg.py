"""Dual regression: each participant's own time courses and maps of a group's networks.

Beckmann, Mackay, Filippini & Smith (2009), as FSL's ``dual_regression`` computes it:

* stage 1 (spatial regression): each token's pattern over units is regressed on the group
  maps (both demeaned over units), giving each network's time course ``A (T, k)``;
* stage 2 (temporal regression): the data are regressed on those time courses (demeaned and
  scaled to unit variance, FSL's ``--des_norm``), giving the participant's own version of
  every map ``B (k, units)``.

With normalised time courses the stage-2 maps hold a network's *shape* and the time courses'
standard deviation its *amplitude* (Nickerson et al. 2017). Here both run per document, so that
documents are the exchangeable blocks of the paired tests.
"""

from __future__ import annotations

import numpy as np

__all__ = ["stage1", "stage2", "dual_regression"]


def _pinv_rows(maps):
    """``P (units, k)`` with ``Y @ P`` the stage-1 regression of any ``Y (T, units)``.

    With the maps demeaned over units, ``1 @ P = 0``: demeaning ``Y`` over units changes
    nothing, so it is not done.
    """
    S = np.asarray(maps, dtype=np.float64)
    S = S - S.mean(axis=1, keepdims=True)
    return S.T @ np.linalg.pinv(S @ S.T)


def stage1(Y, maps, pinv=None):
    """Time courses ``(T, k)`` of ``maps (k, units)`` in ``Y (T, units)`` (spatial regression);
    ``pinv``: :func:`_pinv_rows` of the maps, when it is reused."""
    P = _pinv_rows(maps) if pinv is None else pinv
    return np.asarray(Y, dtype=np.float64) @ P


def stage2(Y, A):
    """Maps ``(k, units)`` of the time courses ``A (T, k)`` in ``Y (T, units)``.

    The time courses are demeaned and scaled to unit standard deviation first (their
    columns then sum to 0, so demeaning ``Y`` over tokens changes nothing and is not done).
    A time course without variance gives a map of zeros.
    """
    A = np.asarray(A, dtype=np.float64)
    A = A - A.mean(axis=0)
    sd = A.std(axis=0)
    A = A / np.where(sd > 0, sd, np.inf)
    G = A.T @ A
    return np.linalg.pinv(G) @ (A.T @ np.asarray(Y, dtype=np.float64))


def dual_regression(Y, maps, pinv=None):
    """``(A, B)``: stage-1 time courses ``(T, k)`` and stage-2 maps ``(k, units)`` of ``Y``."""
    Y = np.asarray(Y, dtype=np.float64)
    A = stage1(Y, maps, pinv)
    return A, stage2(Y, A)
