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


def stage1(Y, maps):
    """Time courses ``(T, k)`` of ``maps (k, units)`` in ``Y (T, units)`` (spatial regression)."""
    S = np.asarray(maps, dtype=np.float64)
    S = S - S.mean(axis=1, keepdims=True)
    Y = np.asarray(Y, dtype=np.float64)
    Y = Y - Y.mean(axis=1, keepdims=True)
    coef, *_ = np.linalg.lstsq(S.T, Y.T, rcond=None)
    return coef.T


def stage2(Y, A):
    """Maps ``(k, units)`` of the time courses ``A (T, k)`` in ``Y (T, units)``.

    The time courses are demeaned and scaled to unit standard deviation first; the data are
    demeaned over tokens. A time course without variance gives a map of zeros.
    """
    A = np.asarray(A, dtype=np.float64)
    A = A - A.mean(axis=0)
    sd = A.std(axis=0)
    A = A / np.where(sd > 0, sd, np.inf)
    Y = np.asarray(Y, dtype=np.float64)
    Y = Y - Y.mean(axis=0)
    coef, *_ = np.linalg.lstsq(A, Y, rcond=None)
    return coef


def dual_regression(Y, maps):
    """``(A, B)``: stage-1 time courses ``(T, k)`` and stage-2 maps ``(k, units)`` of ``Y``."""
    A = stage1(Y, maps)
    return A, stage2(Y, A)
