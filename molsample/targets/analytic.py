"""Analytic targets with exact log Z and exact samplers: the place to test estimators.

Reduced energies are u = -log pi~(x); each docstring states which normalisation log Z refers to.
"""
from __future__ import annotations

import math
from functools import cached_property

import numpy as np
import torch

from .base import Target


def _to(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.to(device=x.device, dtype=x.dtype)


class GaussianMixture(Target):
    """Equally weighted isotropic Gaussians, normalised: log Z = 0.

    Means are drawn uniformly from [-box, box]^dim by ``numpy.random.default_rng(seed)`` (PCG64)
    unless given explicitly.

    Parameters
    ----------
    n_modes, dim : int
    box, std : float
    seed : int
    means : array, shape (n_modes, dim), optional
    """

    def __init__(self, n_modes: int = 40, dim: int = 2, box: float = 40.0, std: float = 1.0,
                 seed: int = 0, means=None, name: str = "gmm"):
        self.name = name
        if means is None:
            means = np.random.default_rng(seed).uniform(-box, box, size=(n_modes, dim))
        self.means = torch.as_tensor(np.asarray(means, dtype=np.float64))
        if self.means.shape != (n_modes, dim):
            raise ValueError(f"{name}: means must have shape ({n_modes}, {dim}), got {tuple(self.means.shape)}")
        self.std = float(std)
        self.event_shape = (dim,)
        self.log_z = 0.0

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        m = _to(self.means, x)
        d2 = ((x[:, None, :] - m[None]) ** 2).sum(-1) / self.std**2
        k, d = self.means.shape
        log_norm = -0.5 * d * math.log(2 * math.pi * self.std**2) - math.log(k)
        return -(torch.logsumexp(-0.5 * d2, dim=1) + log_norm)

    def sample_reference(self, n, generator=None, dtype=torch.float64):
        k = torch.randint(0, self.means.shape[0], (n,), generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return (self.means[k] + self.std * eps).to(dtype)


class Funnel(Target):
    """Neal's funnel: x_0 ~ N(0, scale^2), x_i | x_0 ~ N(0, exp(x_0)). Normalised: log Z = 0."""

    def __init__(self, dim: int = 10, scale: float = 3.0, name: str = "funnel"):
        self.name, self.scale = name, float(scale)
        self.event_shape = (dim,)
        self.log_z = 0.0

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        x0, xr = x[:, 0], x[:, 1:]
        d = xr.shape[1]
        u0 = 0.5 * (x0 / self.scale) ** 2 + math.log(self.scale) + 0.5 * math.log(2 * math.pi)
        ur = 0.5 * (xr**2).sum(1) * torch.exp(-x0) + 0.5 * d * x0 + 0.5 * d * math.log(2 * math.pi)
        return u0 + ur

    def sample_reference(self, n, generator=None, dtype=torch.float64):
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x0 = self.scale * z[:, :1]
        return torch.cat([x0, z[:, 1:] * torch.exp(0.5 * x0)], dim=1).to(dtype)


class ManyWell(Target):
    """FAB's many-well: dim/2 independent copies of log p~(a, b) = -a^4 + 6 a^2 + 0.5 a - 0.5 b^2.

    Unnormalised; log Z = (dim/2) [log int exp(-a^4 + 6 a^2 + 0.5 a) da + 0.5 log(2 pi)]
    (164.6957 for dim = 32), the a-integral by quadrature on a fine grid. Exact samples: a by
    inverse CDF on that grid, b ~ N(0, 1).
    """

    GRID = (-6.0, 6.0, 400_001)

    def __init__(self, dim: int = 32, name: str = "manywell"):
        if dim % 2:
            raise ValueError(f"{name}: dim must be even, got {dim}")
        self.name = name
        self.event_shape = (dim,)
        self.log_z = (dim // 2) * (math.log(self._a_normaliser) + 0.5 * math.log(2 * math.pi))

    @staticmethod
    def log_p_a(a):
        return -a**4 + 6 * a**2 + 0.5 * a

    @cached_property
    def _grid(self):
        a = np.linspace(*self.GRID)
        p = np.exp(self.log_p_a(a))
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(a))])
        return a, cdf

    @property
    def _a_normaliser(self) -> float:
        return float(self._grid[1][-1])

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, 0::2], x[:, 1::2]
        return -(self.log_p_a(a) - 0.5 * b**2).sum(1)

    def sample_reference(self, n, generator=None, dtype=torch.float64):
        a_grid, cdf = self._grid
        k = self.dim // 2
        u = torch.rand(n, k, generator=generator, dtype=torch.float64).numpy() * cdf[-1]
        a = torch.as_tensor(np.interp(u, cdf, a_grid))
        b = torch.randn(n, k, generator=generator, dtype=torch.float64)
        return torch.stack([a, b], dim=2).reshape(n, self.dim).to(dtype)
