"""Each unit's mean, standard deviation and peak over a scan, accumulated run by run.

The convert writer thread updates one :class:`RunningStats` with every run it saves, and the
result is written beside the mask as a derivative (``desc-unitstats``), so that analyses that
need these statistics (spread-matched controls, massive units, mean-ablation) read one small
image instead of every run again.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RunningStats"]


class RunningStats:
    """Streaming per-unit statistics over tokens.

    Parameters
    ----------
    n_units : int

    Attributes
    ----------
    n_tokens : int
    """

    def __init__(self, n_units):
        self.n_tokens = 0
        self._s1 = np.zeros(n_units, np.float64)
        self._s2 = np.zeros(n_units, np.float64)
        self.peak = np.zeros(n_units, np.float64)
        self.peak_token = np.zeros(n_units, np.int64)

    def update(self, X, chunk=256):
        """Add the tokens of ``X``: ``(tokens, units)`` or ``(tokens, layers, width)``, any view.

        Sums go straight into float64 (no float64 copy of the data); the token of a
        peak is searched only in the units whose peak the chunk raises.
        """
        n = self._s1.size
        for i in range(0, len(X), chunk):
            x = np.asarray(X[i:i + chunk]).reshape(-1, n)
            self._s1 += x.sum(0, dtype=np.float64)
            self._s2 += np.einsum("ij,ij->j", x, x, dtype=np.float64)
            p = np.maximum(x.max(0), -x.min(0)).astype(np.float64)
            better = np.flatnonzero(p > self.peak)  # strict: the first token of a tie is kept
            if better.size:
                self.peak[better] = p[better]
                # Gathering the columns costs a copy of the chunk; when most units are raised
                # (the first chunk of a scan), one pass over the rows costs far less.
                first = (np.abs(x[:, better]).argmax(0) if better.size * 8 < n
                         else _first_abs_argmax(x)[better])
                self.peak_token[better] = first + self.n_tokens + i
        self.n_tokens += len(X)
        return self

    @property
    def mean(self):
        return self._s1 / max(self.n_tokens, 1)

    @property
    def std(self):
        """Sample standard deviation (ddof=1)."""
        n = self.n_tokens
        var = np.maximum(self._s2 / max(n, 1) - self.mean ** 2, 0.0) * n / max(n - 1, 1)
        return np.sqrt(var)

    def volumes(self):
        """``(4, units)``: mean, std, peak |value|, token index of the peak."""
        return np.stack([self.mean, self.std, self.peak, self.peak_token.astype(np.float64)])


def _first_abs_argmax(x):
    """``np.abs(x).argmax(0)`` (the first row of a tie) by one pass over the rows of ``x``."""
    best = np.abs(x[0])
    row = np.empty_like(best)
    raised = np.empty(best.shape, bool)
    first = np.zeros(best.shape, np.int64)
    for i in range(1, len(x)):
        np.abs(x[i], out=row)
        np.greater(row, best, out=raised)
        np.copyto(best, row, where=raised)
        np.copyto(first, i, where=raised)
    return first
