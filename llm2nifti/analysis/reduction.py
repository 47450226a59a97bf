"""Each run's CanICA reduction: its leading right singular vectors scaled by their singular values.

CanICA reduces every z-scored run ``Z`` (tokens x neurons) to its ``k`` leading components
``s_i v_i`` before the group step; after CanICA's unit-norm scaling of the stacked rows, the
group step sees only the *subspace* each run spans. Two routes compute it:

``"exact"``
    The eigendecomposition of the run's Gram matrix (``Z Z^T``, tokens x tokens, or ``Z^T Z``
    when there are fewer neurons than tokens): one pass over the run, then a small symmetric
    eigenproblem. It gives every singular vector at once, so one reduction at the largest ``k``
    serves every smaller ``k`` and every seed (FN@k sweeps, recurrence over seeds).
``"randomized"``
    nilearn's own per-run reduction (scikit-learn's randomized SVD, same test matrix and number
    of power iterations, re-orthonormalised by CholeskyQR2), for runs whose smaller side exceeds
    :data:`EXACT_MAX` (a Gram matrix that large would not pay).

On the default model's scan the randomized SVD that nilearn prescribes has not converged: its
20-dimensional subspace is off the exact one by a largest principal angle of 15 degrees, its
64-dimensional one by 70 (``benchmarks/bench_decompose.py DATASET --subspace`` measures it). The exact
route is therefore closer to the decomposition nilearn approximates, not further from it.

The Gram matrix is accumulated in ``gram_dtype``: ``"auto"`` takes bfloat16 on CUDA and on CPUs
with bfloat16 matrix units (AMX or AVX512-BF16; float32 accumulation inside, bfloat16 result),
float32 elsewhere. On the demo scan the bfloat16 Gram moves the 20-dimensional subspace by a
largest angle of 0.08 degrees and the 128-dimensional one by 1.5 degrees; ``"float32"`` removes
even that at about three times the cost on such CPUs.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from bids_llm.dataset import check_finite

from ..errors import UsageError
from .scheduling import map_runs

__all__ = ["zscore_", "run_pca", "gram_pca", "reduce_array", "resolve_gram_dtype",
           "reduction_method", "reduce_run", "check_finite", "constant_tolerance", "RunReductions",
           "subspace_angle", "EXACT_MAX", "GRAM_DTYPES",
           "GRAM_DTYPE_ENV"]

EXACT_MAX = 4096
GRAM_DTYPES = ("auto", "float32", "bfloat16")
GRAM_DTYPE_ENV = "LLM2NIFTI_GRAM_DTYPE"


def _center_(Z, eps=None):
    """Centre the columns of ``Z`` (T, V) in place; return ``1 / std`` (sample std, ddof=1).

    Constant columns get a factor of 1 (they are zero once centred). A column is constant where
    its std is below ``eps`` or within rounding of its mean (``std <= sqrt(eps) * |mean|``, eps
    of the dtype): a model reading one repeated token gives units that vary by float32 rounding
    alone (a few hundred eps of their value), which z-scoring would blow up into unit-variance
    noise. Column sums go through matrix-vector products (one streaming pass each), which on
    CPU is several times faster than a reduction over the token axis.
    """
    T = Z.shape[0]
    ones = torch.ones(1, T, dtype=Z.dtype, device=Z.device)
    mean = (ones @ Z) / T
    Z -= mean
    if T < 2:
        return torch.ones(Z.shape[1], dtype=Z.dtype, device=Z.device)
    sq = torch.square(Z)
    std = ((ones @ sq)[0] / (T - 1)).sqrt_()
    del sq
    eps = float(torch.finfo(Z.dtype).eps) if eps is None else eps
    std[(std < eps) | (std <= constant_tolerance(Z.dtype) * mean[0].abs())] = 1.0
    return std.reciprocal_()


def constant_tolerance(dtype):
    """Relative spread under which a unit counts as constant: ``sqrt(eps)`` of ``dtype``.

    Rounding makes a unit that should be constant vary by a few hundred eps of its value in a
    real forward pass; a unit that really varies does so by far more than ``sqrt(eps)``
    (3.5e-4 in float32).
    """
    return float(torch.finfo(dtype).eps) ** 0.5


def zscore_(Z, eps=None):
    """Z-score the columns of a ``(T, V)`` tensor in place (sample std, ddof=1).

    Columns with (near) zero variance become zero, as in nilearn.
    """
    Z *= _center_(Z, eps)
    return Z


def _orth(A):
    """Orthonormal basis of the columns of a tall ``A`` (CholeskyQR2).

    Two Cholesky passes over the small Gram matrix: for the tall, skinny matrices of power
    iterations this is far faster than LAPACK's QR or LU on two cores, and spans the same
    subspace (falls back to QR when ``A`` is rank-deficient).
    """
    Q = A
    for _ in range(2):
        L, info = torch.linalg.cholesky_ex(Q.T @ Q)
        if int(info) != 0:
            return torch.linalg.qr(A)[0]
        Q = torch.linalg.solve_triangular(L, Q.T, upper=False).T
    return Q


def run_pca(Z, n_components, random_state=0, n_oversamples=10):
    """nilearn's per-run reduction: randomized SVD of one z-scored run, in torch.

    The same computation as nilearn's ``_fast_svd`` (scikit-learn's ``randomized_svd`` with the
    same random test matrix, seven power iterations when ``n_components`` is under a tenth of the
    run's size, an exact SVD for small problems); the iterations are re-orthonormalised with
    CholeskyQR2 instead of LU (the same subspace).

    Parameters
    ----------
    Z : torch.Tensor of shape (T, V)
        One z-scored run.
    n_components : int
        Components kept (at most ``T``).
    random_state : int
        Seed of the random test matrix (a fresh generator per run, as in nilearn).
    n_oversamples : int

    Returns
    -------
    torch.Tensor of shape (min(n_components, T), V)
    """
    T, V = Z.shape
    k = min(n_components, T)
    if max(T, V) <= 500 or not (1 <= k < 0.8 * min(T, V)):
        _, s, vt = torch.linalg.svd(Z, full_matrices=False)
        return s[:k, None] * vt[:k]
    n_iter = 7 if k < 0.1 * min(T, V) else 4
    rng = np.random.RandomState(random_state)
    Q = torch.as_tensor(rng.normal(size=(T, k + n_oversamples)), dtype=Z.dtype, device=Z.device)
    for _ in range(n_iter):  # M = Z.T is nilearn's (V, T) matrix
        Q = _orth(Z.T @ Q)
        Q = _orth(Z @ Q)
    Q = _orth(Z.T @ Q)  # (V, l)
    B = (Z @ Q).T  # Q.T @ M: (l, T)
    Uhat, s, _ = torch.linalg.svd(B, full_matrices=False)
    U = Q @ Uhat[:, :k]  # (V, k)
    return (U * s[:k]).T


def resolve_gram_dtype(gram_dtype="auto", device="cpu"):
    """The torch dtype of the Gram matrix: ``"auto"`` picks bfloat16 where the hardware has it.

    The environment variable ``LLM2NIFTI_GRAM_DTYPE`` (``float32`` or ``bfloat16``) decides for
    ``"auto"`` when it is set: the test suite sets it to ``float32`` so that its figures are the
    same on every CPU, and tests each branch by name.
    """
    if gram_dtype not in GRAM_DTYPES:
        raise UsageError(f"unknown Gram dtype {gram_dtype!r}: choose one of {', '.join(GRAM_DTYPES)}")
    if gram_dtype == "auto":
        gram_dtype = os.environ.get(GRAM_DTYPE_ENV, "auto")
        if gram_dtype not in GRAM_DTYPES:
            raise UsageError(f"{GRAM_DTYPE_ENV}={gram_dtype!r} is not a Gram dtype: choose one of "
                             f"{', '.join(GRAM_DTYPES)} (or unset it)")
    if gram_dtype != "auto":
        return getattr(torch, gram_dtype)
    if torch.device(device).type == "cuda":
        return torch.bfloat16
    cpu = getattr(torch, "cpu", None)
    amx = getattr(cpu, "_is_amx_tile_supported", lambda: False)
    bf16 = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)
    return torch.bfloat16 if (amx() or bf16()) else torch.float32


def gram_pca(Z, n_components, dtype=torch.float32):
    """Exact leading components ``s_i v_i`` of ``Z`` (T, V) from the eigenvectors of its Gram matrix.

    Returns a float32 tensor of shape ``(min(n_components, T, V), V)``, largest first; rows
    ``[:k]`` are the reduction at ``k``. The eigenproblem is solved in float64, or in float32
    for a bfloat16 Gram (whose entries carry 8 significant bits).
    """
    T, V = Z.shape
    A = Z if T <= V else Z.T
    Ad = A if A.dtype == dtype else A.to(dtype)
    eig_dtype = torch.float32 if dtype in (torch.bfloat16, torch.float16) else torch.float64
    G = (Ad @ Ad.T).to(eig_dtype)
    del Ad
    w, U = torch.linalg.eigh(G)
    k = min(n_components, A.shape[0])
    w = w[-k:].flip(0).clamp_min(0)
    U = U[:, -k:].flip(1)
    if T <= V:
        return (U.T.to(Z.dtype) @ Z).float()
    return (w.sqrt()[:, None] * U.T).float()


def reduction_method(n_tokens, n_neurons):
    """``"exact"`` when the run's smaller side is at most :data:`EXACT_MAX`, else ``"randomized"``."""
    return "exact" if min(n_tokens, n_neurons) <= EXACT_MAX else "randomized"


def reduce_array(X, n_components, random_state=0, n_oversamples=10, device="cpu", method="auto",
                 gram_dtype="auto"):
    """One run's reduction (``n_components`` x V, float32) from a z-scored float32 copy of ``X`` (T, V).

    The copy is made on ``device``; z-scoring works in place and never touches ``X``.
    ``method`` is ``"exact"``, ``"randomized"`` or ``"auto"`` (:func:`reduction_method`); the
    seed matters to the randomized route only.
    """
    Z = torch.tensor(np.asarray(X, dtype=np.float32), device=torch.device(device))
    zscore_(Z)
    if method == "auto":
        method = reduction_method(*Z.shape)
    if method == "exact":
        return gram_pca(Z, n_components, resolve_gram_dtype(gram_dtype, device))
    return run_pca(Z, n_components, random_state, n_oversamples=n_oversamples)


def reduce_run(path, n_components, random_state=0, n_oversamples=10, device="cpu", threads=None,
               method="auto", gram_dtype="auto", with_method=False):
    """One run's CanICA reduction, read from ``path`` where this function runs.

    Returns the ``(n_components, n_neurons)`` float32 array of
    :func:`llm2nifti.analysis.reduction.reduce_array` on the run; with ``with_method``, the pair
    ``(array, "exact" | "randomized")``.
    """
    import torch

    from bids_llm.dataset import load_run

    if threads is not None:
        torch.set_num_threads(int(threads))
    X, neurons = load_run(path, mmap=True)
    check_finite(X, path, neurons)
    if method == "auto":
        method = reduction_method(*X.shape)
    rows = reduce_array(X, n_components, random_state, n_oversamples, device, method,
                        gram_dtype).cpu().numpy()
    return (rows, method) if with_method else rows


class RunReductions:
    """Each run's reduction, computed once and shared by every decomposition of those runs.

    An exact reduction (the usual case) is kept at the largest ``k`` asked for and serves every
    smaller ``k`` and every seed; a randomized one serves its own ``(k, seed)``. Runs missing
    from the cache are reduced together, so that on a Dask cluster they run in parallel.

    Parameters
    ----------
    client : dask.distributed.Client or None
    device : str
    progress : bool
    gram_dtype : {"auto", "float32", "bfloat16"}
    n_components : int, optional
        Compute exact reductions at least this large up front (the largest ``k`` of a sweep), so
        that no run is read twice.
    """

    def __init__(self, client=None, device="cpu", progress=False, gram_dtype="auto",
                 n_components=None):
        self.client, self.device, self.progress = client, device, progress
        self.gram_dtype, self.n_components = gram_dtype, n_components
        self.exact = {}
        self.whole = set()  # runs whose exact reduction is all of their components
        self.randomized = {}

    def _served(self, path, k, seed):
        rows = self.exact.get(path)
        # A run of rank below the k it was reduced at holds all its components: it serves
        # every k with all it has (a short last run contributes its rank, not a crash).
        if rows is not None and (len(rows) >= k or path in self.whole):
            return rows[:k]
        return self.randomized.get((path, k, seed))

    def of(self, runs, k, seed=0):
        """The reductions of ``runs`` at ``k`` components, in order (arrays of shape ``(k, V)``).

        A run of fewer than ``k`` tokens (or neurons) has fewer components: its array holds
        all of them (``min(k, T, V)`` rows).
        """
        paths = [str(getattr(r, "path", r)) for r in runs]
        self.randomized = {key: v for key, v in self.randomized.items() if key[2] == seed}
        missing = [p for p in dict.fromkeys(paths) if self._served(p, k, seed) is None]
        if missing:
            want = max(k, int(self.n_components or 0))
            results = map_runs(reduce_run, missing, self.client, self.progress,
                               desc="reduce runs", n_components=want, random_state=seed,
                               device=self.device, threads=None if self.client is None else 1,
                               gram_dtype=self.gram_dtype, with_method=True)
            for p, (rows, method) in zip(missing, results):
                if method == "exact":
                    self.exact[p] = rows
                    if len(rows) < want:
                        self.whole.add(p)
                else:
                    self.randomized[(p, k, seed)] = rows[:k]
        return [self._served(p, k, seed) for p in paths]

    def methods(self, runs):
        """``"exact"`` or ``"randomized"`` for each of ``runs`` already reduced."""
        return ["exact" if str(getattr(r, "path", r)) in self.exact else "randomized" for r in runs]


def subspace_angle(A, B):
    """Largest principal angle (degrees) between the row spaces of ``A`` and ``B`` (k x V each)."""
    qa = torch.linalg.qr(torch.as_tensor(A, dtype=torch.float64).T)[0]
    qb = torch.linalg.qr(torch.as_tensor(B, dtype=torch.float64).T)[0]
    s = torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)
    return float(math.degrees(math.acos(float(s.min()))))
