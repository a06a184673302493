"""Distances between ensembles of identical particles (LJ clusters, DW4).

- Equivariant W2: the 2-Wasserstein distance between two point-cloud ensembles whose ground cost
  is the squared distance after optimal alignment, min over orthogonal maps R (rotations and
  reflections) and particle permutations P of sum_i |a_i - (P R b)_i|^2 (centroids removed). Both
  minimisations are done by alternating Kabsch (SVD) and Hungarian assignment, started from the
  2^s sign choices of the principal-axes alignment (molsample.align, the torch module the data route's
  coupling uses too), so each ground cost is an upper estimate of
  the true minimum (exact for transformed copies with distinct principal moments); the outer transport between the
  two n-point sets is solved exactly (linear_sum_assignment).
- Pair-distance and energy distances are 1D Wasserstein distances (stats.wasserstein_1d).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..align import aligned_sq_distances
from .stats import resample_indices


def aligned_sq_distance(a: np.ndarray, b: np.ndarray, n_iter: int = 8) -> float:
    """min over orthogonal R and permutations P of sum_i |a_i - (P b R)_i|^2 for two (N, s) point sets,
    an upper estimate (molsample.align.aligned_sq_distances, see module docs)."""
    t = torch.as_tensor(np.asarray(a, float))[None], torch.as_tensor(np.asarray(b, float))[None]
    return float(aligned_sq_distances(*t, reflections=True, n_iter=n_iter)[0])


def equivariant_w2(x: np.ndarray, y: np.ndarray, wx=None, wy=None, n: int = 200, seed: int = 0) -> float:
    """Equivariant W2 (see module docs) between two ensembles (M, N, s); weighted ensembles are
    resampled to ``n`` equal-weight members, unweighted ones subsampled to ``n``."""
    rng = np.random.default_rng(seed)

    def pick(z, w):
        return z[resample_indices(rng, len(z), n, w, replace_unweighted=False)]

    a, b = pick(np.asarray(x, float), wx), pick(np.asarray(y, float), wy)
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    ia, ib = torch.meshgrid(torch.arange(len(a)), torch.arange(len(b)), indexing="ij")
    cost = aligned_sq_distances(ta[ia.reshape(-1)], tb[ib.reshape(-1)]).numpy().reshape(len(a), len(b))
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))
