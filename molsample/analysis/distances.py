"""Distances between sample sets."""
from __future__ import annotations

import numpy as np
import torch


def energy_distance(x: torch.Tensor, y: torch.Tensor, weights_x: torch.Tensor | None = None,
                    max_n: int = 4000, generator: torch.Generator | None = None) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Euclidean, squared-distance scale: its
    square root is a metric), V-statistic on at most ``max_n`` points per set.

    Parameters
    ----------
    x : Tensor, shape (M, ...); y : Tensor, shape (L, ...)
    weights_x : Tensor, shape (M,), optional
        Importance weights of x (normalised inside); None for equal weights.
    """
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    if len(x) > max_n:
        idx = torch.randperm(len(x), generator=generator)[:max_n]
        x = x[idx]
        weights_x = weights_x[idx] if weights_x is not None else None
    if len(y) > max_n:
        y = y[torch.randperm(len(y), generator=generator)[:max_n]]
    wx = torch.full((len(x),), 1.0 / len(x), dtype=torch.float64) if weights_x is None else \
        (weights_x.double() / weights_x.double().sum())
    wy = torch.full((len(y),), 1.0 / len(y), dtype=torch.float64)
    dxy = torch.cdist(x, y)
    dxx = torch.cdist(x, x)
    dyy = torch.cdist(y, y)
    return float(2 * wx @ dxy @ wy - wx @ dxx @ wx - wy @ dyy @ wy)


def pair_distances(x: np.ndarray) -> np.ndarray:
    """All pair distances of each configuration: x (M, N, s) -> (M, N (N - 1) / 2), same units."""
    i, j = np.triu_indices(x.shape[1], 1)
    return np.linalg.norm(x[:, i] - x[:, j], axis=-1)
