"""Group ICA in torch: nilearn's CanICA algorithm, fast on CPU or GPU.

The steps follow :class:`nilearn.decomposition.CanICA` (nilearn 0.14):

1. each run is z-scored per neuron over tokens (``standardize="zscore_sample"``) and reduced
   to its ``n_components`` leading right singular vectors scaled by their singular values
   (:mod:`llm2nifti.analysis.reduction`: exactly, from the run's Gram matrix, or by nilearn's
   randomized SVD for very large runs);
2. the reduced runs are stacked, each row scaled to unit norm (canonical correlation
   analysis, ``do_cca=True``) and the ``n_components`` leading right singular vectors of the
   stack are kept: exactly (eigenvectors of the stack's small Gram matrix) where nilearn
   approximates them by a randomized SVD with three power iterations;
3. FastICA (parallel, ``fun="cube"``, ``whiten="arbitrary-variance"``, ``tol=1e-4``,
   ``max_iter=200``) is run on the group components as in
   :func:`sklearn.decomposition.fastica`, from ``n_init`` starts seeded like nilearn's, all
   starts batched. The fourth-moment form of the cube step (small ``k``) runs in float64; the
   direct form iterates in float32 to the tolerance and then in float64 until the float64
   test passes (``precision="mixed"``; ``"double"`` runs float64 throughout, step for step
   scikit-learn's arithmetic). The start whose largest per-map L1 norm is smallest (the
   sparsest) is kept, and each map is flipped so that its peak is positive.

Runs are read one at a time (memory-mapped ``.nii``), so memory stays at about two copies of
the largest run plus ``n_runs * n_components`` maps.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..defaults import MAX_ITER, N_COMPONENTS, N_INIT
from .reduction import EXACT_MAX, reduce_array, run_pca, zscore_

__all__ = ["zscore_", "run_pca", "reduce_array", "group_pca", "fastica_restarts", "canica",
           "PRECISIONS"]

PRECISIONS = ("mixed", "double")

_INT32_MAX = np.iinfo(np.int32).max


def group_pca(reduced, n_components, random_state=0):
    """Group SVD of stacked reduced runs with unit-norm rows (CCA), as nilearn's MultiPCA.

    Exact (the eigenvectors of the stack's Gram matrix) when the stack has at most
    :data:`~llm2nifti.analysis.reduction.EXACT_MAX` rows; otherwise scikit-learn's
    ``randomized_svd`` with three power iterations, as nilearn does.

    Parameters
    ----------
    reduced : torch.Tensor of shape (n_rows, V)
    n_components : int
    random_state : int
        Seed of the randomized route.

    Returns
    -------
    components : torch.Tensor of shape (n_components, V)
        Orthonormal group components (right singular vectors), on ``reduced``'s device.
    singular_values : ndarray of shape (n_components,)
    """
    norms = reduced.norm(dim=1, keepdim=True)
    norms[norms == 0] = 1
    D = reduced / norms
    if D.shape[0] <= EXACT_MAX:
        w, U = torch.linalg.eigh((D @ D.T).double())
        w = w[-n_components:].flip(0).clamp_min(0)
        U = U[:, -n_components:].flip(1)
        s = w.sqrt()
        comps = (U.T @ D.double()) / torch.where(s > 0, s, 1.0)[:, None]
        return comps.to(reduced.dtype), s.cpu().numpy()
    from sklearn.utils.extmath import randomized_svd

    comps, s, _ = randomized_svd(D.cpu().numpy().T, n_components=n_components, transpose=True,
                                 random_state=random_state, n_iter=3)
    return torch.as_tensor(np.ascontiguousarray(comps.T), device=reduced.device), s


def _checked_decorrelation(W, check_rank=False):
    """``(W W^T)^(-1/2) W`` of a batch of starts, and which of them are still sound.

    Solved in float64 whatever ``W``'s dtype (float32 eigh of the small Gram fails on the
    ill-conditioned steps of some starts).

    A start is unsound when its ``W`` holds a value that is not finite, when ``eigh`` fails on
    its Gram matrix (as CUDA's does on some ill-conditioned ones), when its result is not
    finite, or, with ``check_rank`` (a start's initial ``W``), when it has lost rank (smallest
    eigenvalue of ``W W^T`` at most ``k * eps`` times the largest: repeated rows). An unsound
    start's matrix is replaced by the identity before the batched ``eigh``, so that one bad
    start cannot make the batch fail, and it comes back as it was, flagged in ``ok``. The
    sound starts get exactly scikit-learn's arithmetic (eigenvalues clipped at ``tiny``), which
    tolerates rank lost on the way, as in a small sample.
    """
    Wd = W.double()
    k = W.shape[-1]
    ok = torch.isfinite(Wd).flatten(-2).all(-1)
    eye = torch.eye(k, dtype=Wd.dtype, device=Wd.device)
    safe = torch.where(ok[..., None, None], Wd, eye)
    gram = safe @ safe.transpose(-1, -2)
    try:
        s, u = torch.linalg.eigh(gram)
    except RuntimeError:  # torch.linalg.LinAlgError: find the starts it fails on, one by one
        s, u = torch.empty(gram.shape[:-1], dtype=gram.dtype, device=gram.device), torch.empty_like(gram)
        for i in range(gram.shape[0]):
            try:
                s[i], u[i] = torch.linalg.eigh(gram[i])
            except RuntimeError:
                ok[i] = False
                s[i], u[i] = torch.ones(k, dtype=gram.dtype, device=gram.device), eye
    if check_rank:
        floor = k * torch.finfo(torch.float64).eps * s[..., -1].abs()
        ok = ok & (s[..., 0] > floor)
    s = s.clamp_min(torch.finfo(torch.float64).tiny)
    out = (u * (1.0 / s.sqrt()).unsqueeze(-2)) @ u.transpose(-1, -2) @ safe
    ok = ok & torch.isfinite(out).flatten(-2).all(-1)
    out = torch.where(ok[..., None, None], out, Wd)
    return out.to(W.dtype), ok


def use_moments(k, V, n_init, n_iter=200):
    """Whether the fourth-moment form of the cube step is cheaper than the direct one."""
    direct = n_iter * n_init * 2 * k * k * V
    moments = V * k ** 4 + n_iter * n_init * (k ** 5 + k ** 4)
    memory = (n_init + 1) * k ** 4 * 8  # M4 and one contraction per start, float64
    return moments < direct and memory < 2 ** 30


def _direct_step(X1, chunk_bytes=256 << 20):
    """FastICA's cube update ``E[g(Wx) x] - E[g'(Wx)] W`` over the samples of ``X1`` (k, V).

    ``E[g'(Wx)] = 3 w C w`` with ``C = E[x x]`` (one pass, done once); the samples are taken in
    chunks so that ``W @ X1`` for every start never exceeds ``chunk_bytes``.
    """
    k, V = X1.shape
    C = X1 @ X1.T / V

    def step(W):
        chunk = max(1024, chunk_bytes // (X1.element_size() * W.shape[0] * k))
        acc = torch.zeros_like(W)
        for start in range(0, V, chunk):
            x = X1[:, start:start + chunk]
            WX = W @ x
            WX.pow_(3)
            acc += WX @ x.T
        g_wtx = 3 * torch.einsum("nci,ij,ncj->nc", W, C, W)
        return acc / V - g_wtx.unsqueeze(-1) * W
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


def _iterate(W, step, todo, n_iter, max_iter, tol, failed):
    """Fixed-point iterations of the starts in ``todo`` until each moves less than ``tol``.

    ``n_iter`` counts each start's iterations (over calls); a start stops at ``max_iter``,
    or as soon as its update is not finite or cannot be decorrelated (it is then set in
    ``failed`` and left as it was). Returns ``W`` and the mask of the starts that passed the test here.
    """
    def running():
        return todo & ~passed & ~failed & torch.as_tensor(n_iter < max_iter, device=W.device)

    passed = torch.zeros_like(todo)
    active = running()
    while bool(active.any()):
        idx = active.nonzero().flatten()
        Wa = W[idx]
        W1, ok = _checked_decorrelation(step(Wa))
        lim = ((W1 * Wa).sum(-1).abs() - 1).abs().amax(-1)
        W[idx] = W1
        n_iter[idx.cpu().numpy()] += 1
        failed[idx[~ok]] = True
        passed[idx[ok & (lim < tol)]] = True
        active = running()
    return W, passed


def _run_starts(w_init, X1, moments, precision, max_iter, tol):
    """FastICA from each start of ``w_init`` (n, k, k): ``W``, ``n_iter``, converged, failed."""
    n = w_init.shape[0]
    W, ok = _checked_decorrelation(torch.as_tensor(w_init, dtype=torch.float64, device=X1.device),
                                   check_rank=True)
    failed = ~ok
    n_iter = np.zeros(n, dtype=int)
    if moments or precision == "double":
        step = _moment_step(X1) if moments else _direct_step(X1)
        W, converged = _iterate(W, step, ~failed, n_iter, max_iter, tol, failed)
    else:
        W32, passed = _iterate(W.float(), _direct_step(X1.float()), ~failed, n_iter, max_iter,
                               tol, failed)
        W = W32.double()
        del W32
        W, converged = _iterate(W, _direct_step(X1), passed & ~failed, n_iter, max_iter, tol,
                                failed)
    return W, n_iter, converged & ~failed, failed


def _whiten(components):
    """scikit-learn's ``whiten="arbitrary-variance"``: centred data, the whitening matrix, X1."""
    XT = components.double()
    k, V = XT.shape
    XT = XT - XT.mean(dim=1, keepdim=True)
    u, d, _ = torch.linalg.svd(XT, full_matrices=False)
    u = u * torch.sign(u[0])
    K = (u / d).T[:k]
    return XT, K, (K @ XT) * math.sqrt(V)


def fastica_restarts(components, n_init=N_INIT, random_state=0, max_iter=MAX_ITER, tol=1e-4,
                     precision="mixed", w_init=None):
    """FastICA of group components from ``n_init`` starts; the sparsest kept.

    A start that degenerates (its initial ``W`` is not finite or has lost rank; on the way, an
    update that is not finite or on which ``eigh`` fails) never takes the decomposition down:
    it is restarted once from a new seed, drawn after the starts' own from the same generator,
    and dropped when that start degenerates too. ``info`` says which starts were restarted and which dropped.

    Parameters
    ----------
    components : torch.Tensor of shape (k, V)
        Group components; ICA treats the ``V`` neurons as samples.
    n_init : int
    random_state : int or None
        Seeds the starts exactly as nilearn's CanICA does.
    max_iter : int
    tol : float
    precision : {"mixed", "double"}
        ``"mixed"``: the direct cube step iterates in float32 to ``tol``, then in float64 until
        the float64 test passes (within ``max_iter`` in all). ``"double"``: float64 throughout.
    w_init : ndarray of shape (n_init, k, k), optional
        The starts' unmixing matrices, in place of the seeded ones (the seeds are still drawn,
        so the restarts are the same either way).

    Returns
    -------
    maps : torch.Tensor of shape (k, V), float64
        Independent maps, peak positive.
    info : dict
        ``n_iter`` per start, ``converged`` per start, the ``chosen`` start, each start's
        ``sparsity`` (largest per-map L1 norm; None for a dropped start), the starts
        ``restarted`` and ``dropped``, the ``precision`` and the ``step`` form used.

    Raises
    ------
    UsageError
        When every start, restarts included, degenerated.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    rng = np.random.RandomState(random_state) if not isinstance(
        random_state, np.random.RandomState) else random_state
    seeds = rng.randint(_INT32_MAX, size=n_init)
    XT, K, X1 = _whiten(components)
    k, V = XT.shape
    if w_init is None:
        w_init = np.stack([np.random.RandomState(s).normal(size=(k, k)) for s in seeds])
    w_init = np.asarray(w_init, dtype=np.float64)
    if w_init.shape != (n_init, k, k):
        raise ValueError(f"w_init must have shape {(n_init, k, k)}, not {w_init.shape}")
    moments = use_moments(k, V, n_init)
    W, n_iter, converged, failed = _run_starts(w_init, X1, moments, precision, max_iter, tol)
    restarted = failed.nonzero().flatten().cpu().numpy()
    if restarted.size:
        again = np.stack([np.random.RandomState(s).normal(size=(k, k))
                          for s in rng.randint(_INT32_MAX, size=restarted.size)])
        W2, n2, c2, f2 = _run_starts(again, X1, moments, precision, max_iter, tol)
        at = torch.as_tensor(restarted, device=W.device)
        W[at], converged[at], failed[at] = W2, c2, f2
        n_iter[restarted] += n2
    failed = failed.cpu().numpy()
    if failed.all():
        from ..errors import UsageError

        raise UsageError(f"every FastICA start degenerated ({n_init} starts and their restarts) on "
                         f"{k} components of {V} units: ask for fewer components (-k)")
    converged = converged.cpu().numpy()
    KX = K @ XT
    sparsity = torch.stack([(W[i] @ KX).abs().sum(-1).amax() for i in range(n_init)])
    sparsity[torch.as_tensor(failed, device=sparsity.device)] = float("inf")
    best = int(torch.argmin(torch.nan_to_num(sparsity, nan=float("inf"))))
    maps = W[best] @ KX
    flip = maps.amax(dim=1) < -maps.amin(dim=1)
    maps[flip] *= -1
    sparsity = [None if f else float(v) for f, v in zip(failed, sparsity.cpu().numpy())]
    return maps, {"n_iter": n_iter.tolist(), "converged": converged.tolist(), "chosen": best,
                  "sparsity": sparsity, "restarted": restarted.tolist(),
                  "dropped": np.flatnonzero(failed).tolist(),
                  "precision": "double" if moments else precision,
                  "step": "moments" if moments else "direct"}


def canica(load_runs, n_components=N_COMPONENTS, n_init=N_INIT, random_state=0, device="cpu",
           n_oversamples=10, reduced=None, gram_dtype="auto", **fastica_options):
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
        The runs already reduced (:func:`~llm2nifti.analysis.reduction.reduce_array` of each
        run, e.g. by Dask workers or a :class:`~llm2nifti.analysis.reduction.RunReductions`);
        ``load_runs`` is then not read. Rows beyond ``n_components`` are not used.
    gram_dtype : {"auto", "float32", "bfloat16"}
        Precision of the per-run Gram matrices (see :mod:`llm2nifti.analysis.reduction`).
    **fastica_options :
        Passed to :func:`fastica_restarts` (``precision``, ``max_iter``, ``tol``).

    Returns
    -------
    maps : ndarray of shape (n_components, V), float32
    info : dict
        ``singular_values`` of the group SVD and the FastICA details.
    """
    device = torch.device(device)
    if reduced is not None:
        reduced = [torch.as_tensor(np.asarray(r)[:n_components], device=device) for r in reduced]
        load_runs = ()
    else:
        reduced = []
    for load in load_runs:
        reduced.append(reduce_array(load(), n_components, random_state, n_oversamples, device,
                                    gram_dtype=gram_dtype))
    R = torch.cat(reduced)
    del reduced
    comps, s = group_pca(R, n_components, random_state)
    del R
    maps, info = fastica_restarts(comps, n_init=n_init, random_state=random_state,
                                  **fastica_options)
    info["singular_values"] = np.asarray(s).tolist()
    return maps.float().cpu().numpy(), info
