"""Group ICA in torch: nilearn's CanICA algorithm, fast on CPU or GPU.

The steps follow :class:`nilearn.decomposition.CanICA` (nilearn 0.14):

1. each run is z-scored per neuron over tokens (``standardize="zscore_sample"``)
   and reduced to its ``n_components`` leading right singular vectors scaled
   by their singular values: scikit-learn's randomized SVD as nilearn calls it
   (same random test matrix and number of power iterations; each iteration is
   re-orthonormalised by CholeskyQR2 where scikit-learn uses LU: the same
   subspace, far cheaper on CPU), in torch float32;
2. the reduced runs are stacked, each row scaled to unit norm (canonical
   correlation analysis, ``do_cca=True``) and reduced by scikit-learn's
   ``randomized_svd`` to ``n_components`` group components, exactly as nilearn
   does (the stacked matrix is small);
3. FastICA (parallel, ``fun="cube"``, ``whiten="arbitrary-variance"``,
   ``tol=1e-4``, ``max_iter=200``) is run on the group components as in
   :func:`sklearn.decomposition.fastica`, from ``n_init`` starts seeded like
   nilearn's; all starts run batched in float64. The start whose largest
   per-map L1 norm is smallest (the sparsest) is kept, and each map is
   flipped so that its peak is positive.

Runs are read one at a time (memory-mapped ``.nii``), so memory stays at about
two copies of the largest run plus ``n_runs * n_components`` maps.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["zscore_", "run_pca", "reduce_array", "group_pca", "fastica_restarts", "canica"]

_INT32_MAX = np.iinfo(np.int32).max


def zscore_(Z, eps=None):
    """Z-score the columns of a ``(T, V)`` tensor in place (sample std, ddof=1).

    Columns with (near) zero variance become zero, as in nilearn.
    """
    T = Z.shape[0]
    mean = Z.mean(dim=0)
    Z -= mean
    if T > 1:
        std = Z.norm(dim=0) / math.sqrt(T - 1)
        eps = float(torch.finfo(Z.dtype).eps) if eps is None else eps
        std[std < eps] = 1.0
        Z /= std
    return Z


def _orth(A):
    """Orthonormal basis of the columns of a tall ``A`` (CholeskyQR2).

    Two Cholesky passes over the small Gram matrix: for the tall, skinny
    matrices of power iterations this is far faster than LAPACK's QR or LU on
    two cores, and spans the same subspace (falls back to QR when ``A`` is
    rank-deficient).
    """
    Q = A
    for _ in range(2):
        L, info = torch.linalg.cholesky_ex(Q.T @ Q)
        if int(info) != 0:
            return torch.linalg.qr(A)[0]
        Q = torch.linalg.solve_triangular(L, Q.T, upper=False).T
    return Q


def run_pca(Z, n_components, random_state=0, n_oversamples=10):
    """A run's leading right singular vectors scaled by their singular values.

    The same computation as nilearn's per-run reduction (``_fast_svd``, i.e.
    scikit-learn's ``randomized_svd`` with the same random test matrix, seven
    power iterations when ``n_components`` is under a tenth of the run's size,
    an exact SVD for small problems), in torch; the iterations are
    re-orthonormalised with :func:`_orth` instead of LU.

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


def reduce_array(X, n_components, random_state=0, n_oversamples=10, device="cpu"):
    """One run's reduction: :func:`run_pca` of a z-scored float32 copy of ``X`` (T, V).

    The copy is made on ``device``; z-scoring works in place and never touches ``X``.
    """
    Z = torch.tensor(np.asarray(X, dtype=np.float32), device=torch.device(device))
    zscore_(Z)
    return run_pca(Z, n_components, random_state, n_oversamples=n_oversamples)


def group_pca(reduced, n_components, random_state=0):
    """Group SVD of stacked reduced runs with unit-norm rows (CCA), as nilearn's MultiPCA.

    Runs scikit-learn's ``randomized_svd`` (three power iterations) on the
    small stacked matrix, exactly as nilearn does.

    Parameters
    ----------
    reduced : torch.Tensor of shape (n_rows, V)
    n_components : int
    random_state : int

    Returns
    -------
    components : torch.Tensor of shape (n_components, V)
        Orthonormal group components (right singular vectors), on ``reduced``'s device.
    singular_values : ndarray of shape (n_components,)
    """
    from sklearn.utils.extmath import randomized_svd

    D = reduced.cpu().numpy()
    norms = np.sqrt(np.sum(D ** 2, axis=1))
    norms[norms == 0] = 1
    D = D / norms[:, None]
    comps, s, _ = randomized_svd(D.T, n_components=n_components, transpose=True,
                                 random_state=random_state, n_iter=3)
    return torch.as_tensor(np.ascontiguousarray(comps.T), device=reduced.device), s


def _sym_decorrelation(W):
    s, u = torch.linalg.eigh(W @ W.transpose(-1, -2))
    s = s.clamp_min(torch.finfo(W.dtype).tiny)
    return (u * (1.0 / s.sqrt()).unsqueeze(-2)) @ u.transpose(-1, -2) @ W


def use_moments(k, V, n_init, n_iter=200):
    """Whether the fourth-moment form of the cube step is cheaper than the direct one."""
    direct = n_iter * n_init * 2 * k * k * V
    moments = V * k ** 4 + n_iter * n_init * (k ** 5 + k ** 4)
    memory = (n_init + 1) * k ** 4 * 8  # M4 and one contraction per start, float64
    return moments < direct and memory < 2 ** 30


def _direct_step(X1):
    """FastICA's cube update ``E[g(Wx) x] - E[g'(Wx)] W`` over the samples of ``X1`` (k, V)."""
    V = X1.shape[1]

    def step(W):
        WX = W @ X1
        return (WX ** 3) @ X1.T / V - 3 * (WX ** 2).mean(-1).unsqueeze(-1) * W
    return step


def _moment_step(X1):
    """The same update from the moments of ``X1``: exact for ``g(u) = u^3``.

    ``E[(w.x)^3 x_l] = sum w_i w_j w_m M4[i, j, m, l]`` and ``E[3 (w.x)^2] = 3 w C w``
    with ``M4 = E[x x x x]`` and ``C = E[x x]``: after one pass over the V samples
    each iteration costs O(k^5) instead of O(k^2 V).
    """
    k, V = X1.shape
    M4 = torch.zeros(k * k, k * k, dtype=X1.dtype, device=X1.device)
    for start in range(0, V, 8192):  # bounded memory: k^2 x 8192 products at a time
        x = X1[:, start:start + 8192]
        Y = (x.unsqueeze(0) * x.unsqueeze(1)).reshape(k * k, -1)  # x_i x_j per sample
        M4 += Y @ Y.T
    M4 = (M4 / V).reshape(k, k, k, k)
    C = X1 @ X1.T / V

    def step(W):
        A = torch.einsum("nci,ijml->ncjml", W, M4)
        A = torch.einsum("ncj,ncjml->ncml", W, A)
        A = torch.einsum("ncm,ncml->ncl", W, A)
        g_wtx = 3 * torch.einsum("nci,ij,ncj->nc", W, C, W)
        return A - g_wtx.unsqueeze(-1) * W
    return step


def fastica_restarts(components, n_init=10, random_state=0, max_iter=200, tol=1e-4):
    """FastICA of group components from ``n_init`` starts; the sparsest kept.

    Parameters
    ----------
    components : torch.Tensor of shape (k, V)
        Group components; ICA treats the ``V`` neurons as samples.
    n_init : int
    random_state : int or None
        Seeds the starts exactly as nilearn's CanICA does.
    max_iter : int
    tol : float

    Returns
    -------
    maps : torch.Tensor of shape (k, V), float64
        Independent maps, peak positive.
    info : dict
        ``n_iter`` per start, ``converged`` per start, the ``chosen`` start
        and each start's ``sparsity`` (largest per-map L1 norm).
    """
    rng = np.random.RandomState(random_state) if not isinstance(
        random_state, np.random.RandomState) else random_state
    seeds = rng.randint(_INT32_MAX, size=n_init)
    XT = components.double()
    k, V = XT.shape
    XT = XT - XT.mean(dim=1, keepdim=True)
    u, d, _ = torch.linalg.svd(XT, full_matrices=False)
    u = u * torch.sign(u[0])
    K = (u / d).T[:k]
    X1 = (K @ XT) * math.sqrt(V)
    w_init = np.stack([np.random.RandomState(s).normal(size=(k, k)) for s in seeds])
    W = _sym_decorrelation(torch.as_tensor(w_init, dtype=torch.float64, device=XT.device))
    step = _moment_step(X1) if use_moments(k, V, n_init) else _direct_step(X1)
    active = torch.ones(n_init, dtype=torch.bool, device=XT.device)
    n_iter = np.zeros(n_init, dtype=int)
    for it in range(max_iter):
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            break
        Wa = W[idx]
        W1 = _sym_decorrelation(step(Wa))
        lim = ((W1 * Wa).sum(-1).abs() - 1).abs().amax(-1)
        W[idx] = W1
        n_iter[idx.cpu().numpy()] = it + 1
        active[idx[lim < tol]] = False
    converged = (~active).cpu().numpy()
    S = W @ (K @ XT)  # (n_init, k, V)
    sparsity = S.abs().sum(-1).amax(-1)
    best = int(torch.argmin(sparsity))
    maps = S[best].clone()
    flip = maps.amax(dim=1) < -maps.amin(dim=1)
    maps[flip] *= -1
    return maps, {"n_iter": n_iter.tolist(), "converged": converged.tolist(), "chosen": best,
                  "sparsity": sparsity.cpu().numpy().tolist()}


def canica(load_runs, n_components=20, n_init=10, random_state=0, device="cpu",
           n_oversamples=10, reduced=None):
    """CanICA on runs loaded one at a time.

    Parameters
    ----------
    load_runs : iterable of callables
        Each returns one run as a ``(T, V)`` float32 array (may be memory-mapped).
    n_components, n_init, random_state :
        As in :class:`nilearn.decomposition.CanICA`.
    device : str or torch.device
    n_oversamples : int
        Extra dimensions of the per-run randomized SVD.
    reduced : list of array, optional
        The runs already reduced (``run_pca`` of each z-scored run, e.g. by Dask workers:
        :func:`llm2nifti.analysis.scheduling.reduce_run`); ``load_runs`` is then not read.

    Returns
    -------
    maps : ndarray of shape (n_components, V), float32
    info : dict
        ``singular_values`` of the group SVD and the FastICA details.
    """
    device = torch.device(device)
    if reduced is not None:
        reduced = [torch.as_tensor(np.asarray(r), device=device) for r in reduced]
        load_runs = ()
    else:
        reduced = []
    for load in load_runs:
        reduced.append(reduce_array(load(), n_components, random_state, n_oversamples, device))
    R = torch.cat(reduced)
    del reduced
    comps, s = group_pca(R, n_components, random_state)
    del R
    maps, info = fastica_restarts(comps, n_init=n_init, random_state=random_state)
    info["singular_values"] = np.asarray(s).tolist()
    return maps.float().cpu().numpy(), info
