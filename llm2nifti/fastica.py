"""Group ICA in torch: nilearn's CanICA algorithm, fast on CPU or GPU.

The steps follow :class:`nilearn.decomposition.CanICA` (nilearn 0.14):

1. each run is z-scored per neuron over tokens (``standardize="zscore_sample"``)
   and reduced to its ``n_components`` leading right singular vectors scaled
   by their singular values (randomized SVD with power iterations, float32);
2. the reduced runs are stacked, each row scaled to unit norm (canonical
   correlation analysis, ``do_cca=True``) and reduced by an SVD to
   ``n_components`` group components (float64 Gram matrix of the small
   stacked matrix: exact);
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

__all__ = ["zscore_", "run_pca", "group_pca", "fastica_restarts", "canica"]

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


def run_pca(Z, n_components, generator, n_iter=4, n_oversamples=10):
    """Leading right singular vectors of ``Z`` scaled by singular values.

    Parameters
    ----------
    Z : torch.Tensor of shape (T, V)
        One z-scored run.
    n_components : int
        Components kept (at most ``T``).
    generator : torch.Generator
        Source of the random test matrix.
    n_iter, n_oversamples : int
        Power iterations and extra dimensions of the randomized SVD.

    Returns
    -------
    torch.Tensor of shape (min(n_components, T), V)
    """
    T, V = Z.shape
    k = min(n_components, T)
    width = k + n_oversamples
    if width >= min(T, V):
        _, s, vt = torch.linalg.svd(Z, full_matrices=False)
        return s[:k, None] * vt[:k]
    omega = torch.randn(V, width, generator=generator, dtype=torch.float32).to(Z.device, Z.dtype)
    Q, _ = torch.linalg.qr(Z @ omega)
    for _ in range(n_iter):
        P, _ = torch.linalg.qr(Z.T @ Q)
        Q, _ = torch.linalg.qr(Z @ P)
    B = Q.T @ Z  # (width, V)
    # small SVD through the Gram matrix of B, in float64
    G = (B.double() @ B.double().T)
    evals, evecs = torch.linalg.eigh(G)
    order = torch.argsort(evals, descending=True)[:k]
    evecs = evecs[:, order]
    return (evecs.T.to(B.dtype) @ B)  # = S_k V_k^T


def group_pca(reduced, n_components):
    """Group SVD of stacked reduced runs with unit-norm rows (CCA).

    Parameters
    ----------
    reduced : torch.Tensor of shape (n_rows, V)
    n_components : int

    Returns
    -------
    components : torch.Tensor of shape (n_components, V), float64
        Orthonormal group components (right singular vectors).
    singular_values : torch.Tensor of shape (n_components,)
    """
    D = reduced.double()
    norms = D.norm(dim=1, keepdim=True)
    norms[norms == 0] = 1.0
    D = D / norms
    G = D @ D.T
    evals, evecs = torch.linalg.eigh(G)
    order = torch.argsort(evals, descending=True)[:n_components]
    evals = evals[order].clamp_min(torch.finfo(torch.float64).tiny)
    s = evals.sqrt()
    comps = (evecs[:, order].T @ D) / s[:, None]
    return comps, s


def _sym_decorrelation(W):
    s, u = torch.linalg.eigh(W @ W.transpose(-1, -2))
    s = s.clamp_min(torch.finfo(W.dtype).tiny)
    return (u * (1.0 / s.sqrt()).unsqueeze(-2)) @ u.transpose(-1, -2) @ W


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
    active = torch.ones(n_init, dtype=torch.bool, device=XT.device)
    n_iter = np.zeros(n_init, dtype=int)
    for it in range(max_iter):
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            break
        Wa = W[idx]
        WX = Wa @ X1  # (a, k, V)
        gwtx = WX ** 3
        g_wtx = (3 * WX ** 2).mean(dim=-1)
        W1 = _sym_decorrelation(gwtx @ X1.T / V - g_wtx.unsqueeze(-1) * Wa)
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
           n_iter=4, n_oversamples=10):
    """CanICA on runs loaded one at a time.

    Parameters
    ----------
    load_runs : iterable of callables
        Each returns one run as a ``(T, V)`` float32 array (may be memory-mapped).
    n_components, n_init, random_state :
        As in :class:`nilearn.decomposition.CanICA`.
    device : str or torch.device
    n_iter, n_oversamples : int
        Randomized SVD settings of the per-run reduction.

    Returns
    -------
    maps : ndarray of shape (n_components, V), float32
    info : dict
        ``singular_values`` of the group SVD and the FastICA details.
    """
    device = torch.device(device)
    seed = random_state if isinstance(random_state, (int, np.integer)) else \
        np.random.RandomState(random_state).randint(_INT32_MAX)
    generator = torch.Generator().manual_seed(int(seed))
    reduced = []
    for load in load_runs:
        # a copy: z-scoring works in place and must not touch the caller's array
        Z = torch.tensor(np.asarray(load(), dtype=np.float32), device=device)
        zscore_(Z)
        reduced.append(run_pca(Z, n_components, generator, n_iter=n_iter,
                               n_oversamples=n_oversamples))
        del Z
    R = torch.cat(reduced)
    del reduced
    comps, s = group_pca(R, n_components)
    del R
    maps, info = fastica_restarts(comps, n_init=n_init, random_state=random_state)
    info["singular_values"] = s.cpu().numpy().tolist()
    return maps.float().cpu().numpy(), info
