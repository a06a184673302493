"""Distances between ensembles of identical particles (LJ clusters, DW4).

- Equivariant W2: the 2-Wasserstein distance between two point-cloud ensembles whose ground cost
  is the squared distance after optimal alignment, min over orthogonal maps R (rotations and
  reflections) and particle permutations P of sum_i |a_i - (P R b)_i|^2 (centroids removed). Both
  minimisations are done by alternating Kabsch (SVD) and Hungarian assignment, started from the
  2^s sign choices of the principal-axes alignment, so each ground cost is an upper estimate of
  the true minimum (exact for transformed copies with distinct principal moments); the outer transport between the
  two n-point sets is solved exactly (linear_sum_assignment).
- Pair-distance and energy distances are 1D Wasserstein distances (stats.wasserstein_1d).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from .stats import resample_indices


def _centre(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=-2, keepdims=True)


def orthogonal_align(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The orthogonal R (reflections allowed) minimising |a - b R|^2 for centred (N, s) arrays."""
    u, _, vt = np.linalg.svd(b.T @ a)
    return u @ vt


def _principal_starts(a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Orthogonal maps taking b's principal axes onto a's, one per choice of axis signs."""
    _, va = np.linalg.eigh(a.T @ a)
    _, vb = np.linalg.eigh(b.T @ b)
    s = a.shape[1]
    return [vb @ np.diag(signs) @ va.T for signs in np.array(np.meshgrid(*[[1.0, -1.0]] * s)).reshape(s, -1).T]


def aligned_sq_distance(a: np.ndarray, b: np.ndarray, n_iter: int = 8) -> float:
    """min over orthogonal R and permutations P of sum_i |a_i - (P b R)_i|^2, an upper estimate by
    alternating Hungarian / Kabsch from the principal-axes starts (see module docs)."""
    a, b = _centre(np.asarray(a, float)), _centre(np.asarray(b, float))
    best = np.inf
    for r in _principal_starts(a, b):
        perm = None
        for _ in range(n_iter):
            br = b @ r
            cost = ((a[:, None, :] - br[None, :, :]) ** 2).sum(-1)
            _, perm_new = linear_sum_assignment(cost)
            r = orthogonal_align(a, b[perm_new])
            if perm is not None and np.array_equal(perm_new, perm):
                break
            perm = perm_new
        best = min(best, float(((a - b[perm] @ r) ** 2).sum()))
    return best


def equivariant_w2(x: np.ndarray, y: np.ndarray, wx=None, wy=None, n: int = 200, seed: int = 0) -> float:
    """Equivariant W2 (see module docs) between two ensembles (M, N, s); weighted ensembles are
    resampled to ``n`` equal-weight members, unweighted ones subsampled to ``n``."""
    rng = np.random.default_rng(seed)

    def pick(z, w):
        return z[resample_indices(rng, len(z), n, w, replace_unweighted=False)]

    a, b = pick(np.asarray(x, float), wx), pick(np.asarray(y, float), wy)
    cost = np.array([[aligned_sq_distance(ai, bj) for bj in b] for ai in a])
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))
