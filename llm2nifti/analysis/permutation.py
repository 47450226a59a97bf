"""Paired differences over exchangeable blocks: sign-flipping with max-statistic FWE control.

The one-sample t-test of FSL's ``randomise -1`` and nilearn's ``non_parametric_inference``
(one-sample design), for paired differences ``D (blocks, tests)``: under the null each block's
difference is symmetric around 0, so flipping the sign of a whole block gives another draw
of the data. The family-wise error is controlled by comparing each test's ``|t|`` with the
distribution of the largest ``|t|`` over all tests under sign flips (Nichols & Holmes 2002).

Blocks, not tokens, are flipped: neighbouring tokens of a document are not independent, the
documents are. A sign flip leaves each column's sum of squares unchanged, so the null's
t-statistics of a batch of flips are one matrix product (``flips @ D``); the flips are drawn in
batches so that memory does not grow with their number.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UsageError

__all__ = ["one_sample_t", "sign_flips", "max_t_fwe", "PermutationResult", "check_blocks"]

BATCH = 128  # sign flips per matrix product


def one_sample_t(D, sumsq=None):
    """t of the column means of ``D (blocks, tests)`` against 0 (float64).

    A column of identical nonzero differences has no spread: its t is ``+-inf``; a column of
    zeros has t 0 (nothing differs, nothing to test).
    """
    D = np.asarray(D, dtype=np.float64)
    n = D.shape[0]
    total = D.sum(axis=0)
    return _t(total, np.einsum("ij,ij->j", D, D) if sumsq is None else sumsq, n)


def _t(total, sumsq, n):
    mean = total / n
    var = np.maximum(sumsq - n * mean * mean, 0.0) / (n - 1)
    # what rounding leaves of the variance of identical values is not spread
    var = np.where(var <= 4 * np.finfo(np.float64).eps * sumsq / n, 0.0, var)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / np.sqrt(var / n)
    return np.where(var > 0, t, np.where(mean == 0, 0.0, np.copysign(np.inf, mean)))


def check_blocks(n_blocks, n_permutations, what="documents"):
    """Refuse a null that cannot hold ``n_permutations`` distinct sign flips."""
    if n_permutations < 1:
        raise UsageError("the number of permutations must be at least 1")
    if n_blocks < 2:
        raise UsageError(f"{n_blocks} {what}: a paired test over {what} needs at least 2 (convert "
                         "more text)")
    distinct = 2 ** (n_blocks - 1) - 1  # flips other than none and all, up to a global sign
    if distinct < n_permutations:
        need = math.ceil(math.log2(n_permutations + 1)) + 1
        raise UsageError(f"{n_blocks} {what} allow {distinct} distinct sign flips, fewer than the "
                         f"{n_permutations} permutations asked: convert at least {need} {what} "
                         "or ask for fewer permutations (--n-permutations)")


def sign_flips(n_blocks, n_permutations, random_state=0):
    """Yield batches of sign vectors ``(b, n_blocks)`` of +-1, none all-equal (those are the
    data itself, up to the sign ``|t|`` ignores)."""
    rng = np.random.default_rng(random_state)
    left = n_permutations
    while left > 0:
        b = min(BATCH, left)
        s = rng.integers(0, 2, size=(b, n_blocks)).astype(np.float64) * 2 - 1
        same = np.abs(s.sum(axis=1)) == n_blocks
        while same.any():
            s[same] = rng.integers(0, 2, size=(int(same.sum()), n_blocks)) * 2 - 1
            same = np.abs(s.sum(axis=1)) == n_blocks
        yield s
        left -= b


class PermutationResult:
    """What :func:`max_t_fwe` found.

    Attributes
    ----------
    t : ndarray of shape (tests,)
    p_fwe : ndarray of shape (tests,)
        ``(1 + #{null max |t| >= |t|}) / (1 + n_permutations)``.
    null_max : ndarray of shape (n_permutations,)
    effect : ndarray of shape (tests,)
        The mean difference.
    """

    def __init__(self, t, p_fwe, null_max, effect):
        self.t, self.p_fwe, self.null_max, self.effect = t, p_fwe, null_max, effect

    def threshold(self, alpha=0.05):
        """The ``|t|`` a test must exceed to pass at FWE ``alpha``."""
        return float(np.quantile(self.null_max, 1 - alpha, method="higher"))


def max_t_fwe(D, n_permutations=1000, random_state=0):
    """One-sample t per column of ``D (blocks, tests)`` with FWE-corrected p-values.

    The null is ``n_permutations`` random sign flips of whole blocks (rows), seeded; memory
    stays at a batch of flips times the tests, whatever ``n_permutations``.
    """
    D = np.ascontiguousarray(D, dtype=np.float64)
    n = D.shape[0]
    check_blocks(n, n_permutations)
    sumsq = np.einsum("ij,ij->j", D, D)
    t = _t(D.sum(axis=0), sumsq, n)
    null = np.empty(n_permutations)
    inv = np.divide(1.0, sumsq, out=np.zeros_like(sumsq), where=sumsq > 0)
    done = 0
    for s in sign_flips(n, n_permutations, random_state):
        # t^2 = (n - 1) f / (1 - f) with f = total^2 / (n sumsq): the largest |t| of a flip is
        # that of its largest f, found in two passes over the batch
        f = s @ D
        f *= f
        f *= inv
        top = f.max(axis=1) / n if D.shape[1] else np.zeros(len(s))
        with np.errstate(divide="ignore", invalid="ignore"):
            null[done:done + len(s)] = np.where(
                top < 1, np.sqrt((n - 1) * top / np.maximum(1 - top, 0)), np.inf)
        done += len(s)
    # ties count against the test (>=): an identical column never passes
    exceed = np.searchsorted(np.sort(null), np.abs(t), side="left")
    p = (1 + (n_permutations - exceed)) / (1 + n_permutations)
    return PermutationResult(t, p, null, D.mean(axis=0))
