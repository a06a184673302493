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

    ``layout='uniform'``: means drawn uniformly from [-box, box]^dim by
    ``numpy.random.default_rng(seed)`` (PCG64). ``layout='grid'`` (2D): a sqrt(n) x sqrt(n) grid
    over [-box, box]^2 (SCDS's 9-mode GMM: box 5, std sqrt(0.3)). Or give ``means`` explicitly.

    Parameters
    ----------
    n_modes, dim : int
    box, std : float
    seed : int
    means : array, shape (n_modes, dim), optional
    """

    def __init__(self, n_modes: int = 40, dim: int = 2, box: float = 40.0, std: float = 1.0,
                 seed: int = 0, means=None, name: str = "gmm", layout: str = "uniform"):
        self.name = name
        if means is None and layout == "grid":
            side = int(round(math.sqrt(n_modes)))
            if side * side != n_modes or dim != 2:
                raise ValueError(f"{name}: a grid layout needs a square number of modes in 2D")
            g = np.linspace(-box, box, side)
            means = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        elif means is None and layout == "uniform":
            means = np.random.default_rng(seed).uniform(-box, box, size=(n_modes, dim))
        elif means is None:
            raise ValueError(f"{name}: unknown layout {layout!r}; use 'uniform' or 'grid'")
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


class MultiWell(Target):
    """SCDS's multi-well: n_double_wells coordinates with log p~ = -(x^2 - separation)^2, the rest
    unnormalised standard Gaussians exp(-x^2 / 2).

    log Z = n_dw log int exp(-(x^2 - s)^2) dx + (dim - n_dw)/2 log(2 pi), the integral by
    quadrature on a fine grid; exact samples by inverse CDF on that grid (double-well coordinates)
    and N(0, 1) (the rest). MW54 = (dim 5, 5 wells, separation 4); MW52 = (dim 50, 5, 2).
    """

    def __init__(self, dim: int = 5, n_double_wells: int = 5, separation: float = 4.0, name: str = "multiwell"):
        if not 0 < n_double_wells <= dim:
            raise ValueError(f"{name}: need 1 <= n_double_wells <= dim, got {n_double_wells} and {dim}")
        self.name, self.n_dw, self.separation = name, int(n_double_wells), float(separation)
        self.event_shape = (dim,)
        a, cdf = self._grid
        self.log_z = self.n_dw * math.log(cdf[-1]) + 0.5 * (dim - self.n_dw) * math.log(2 * math.pi)

    @cached_property
    def _grid(self):
        half = math.sqrt(self.separation) + 6.0
        a = np.linspace(-half, half, 400_001)
        p = np.exp(-((a**2 - self.separation) ** 2))
        return a, np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(a))])

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        dw, g = x[:, : self.n_dw], x[:, self.n_dw:]
        return ((dw**2 - self.separation) ** 2).sum(1) + 0.5 * (g**2).sum(1)

    def sample_reference(self, n, generator=None, dtype=torch.float64):
        a_grid, cdf = self._grid
        u = torch.rand(n, self.n_dw, generator=generator, dtype=torch.float64).numpy() * cdf[-1]
        dw = torch.as_tensor(np.interp(u, cdf, a_grid))
        g = torch.randn(n, self.dim - self.n_dw, generator=generator, dtype=torch.float64)
        return torch.cat([dw, g], dim=1).to(dtype)
