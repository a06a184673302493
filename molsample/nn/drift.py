"""The step-conditioned drift u_theta(x, t, d) with Langevin preconditioning.

u = NN(x, t, d) + g(t, d) * clip(sigma(t) grad_x[(1 - t) log p0(x) + t log pi~(x)])

``NN`` is any core network taking (x, t, d); :class:`MLPCore` serves vector targets (and small
particle systems, flattened). The target score's x-dependence is kept (second derivatives flow
through it) whenever x requires grad, unless ``score_fixed=True`` holds it fixed.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..flow import CosineSchedule, Prior, Space, _bt


class TimeStepEmbedding(nn.Module):
    """Fourier features of t in [0, 1] and of log2(d) / log2(n_base), shape (B, 4 n_freq)."""

    def __init__(self, n_freq: int = 8, n_base: int = 32):
        super().__init__()
        self.register_buffer("freq", math.pi * 2.0 ** torch.arange(n_freq, dtype=torch.float64) / 2)
        self.log_n = math.log2(max(n_base, 2))
        self.dim = 4 * n_freq

    def forward(self, t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        s = -torch.log2(d) / self.log_n                       # 0 for d = 1, 1 for d = 1 / n_base
        a = torch.cat([t[:, None] * self.freq.to(t.dtype), s[:, None] * self.freq.to(t.dtype)], dim=1)
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


class MLPCore(nn.Module):
    """An MLP on flattened positions and the (t, d) embedding; the last layer starts at zero."""

    def __init__(self, space: Space, hidden: int = 128, layers: int = 3, n_freq: int = 8, n_base: int = 32):
        super().__init__()
        self.space = space
        self.embed = TimeStepEmbedding(n_freq, n_base)
        dims = [space.dim + self.embed.dim] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.SiLU()]
        self.body = nn.Sequential(*mods)
        self.out = nn.Linear(hidden, space.dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x.reshape(x.shape[0], -1), self.embed(t, d)], dim=1)
        return self.space.project(self.out(self.body(h)).reshape(x.shape))


class LangevinDrift(nn.Module):
    """u(x, t, d) = core(x, t, d) + g(t, d) clip(sigma(t) grad[(1 - t) log p0 + t log pi~]).

    Parameters
    ----------
    core : nn.Module taking (x, t, d)
    target : molsample.targets.Target (its ``score``); only needed where t > 0
    prior : Prior
    schedule : CosineSchedule
    clip : float
        Elementwise clip of the Langevin input.
    """

    def __init__(self, core: nn.Module, target, prior: Prior, schedule: CosineSchedule, clip: float = 100.0,
                 n_freq: int = 8, n_base: int = 32):
        super().__init__()
        self.core, self.target, self.prior, self.schedule, self.clip = core, target, prior, schedule, float(clip)
        self.gate_embed = TimeStepEmbedding(n_freq, n_base)
        self.gate = nn.Sequential(nn.Linear(self.gate_embed.dim, 64), nn.SiLU(), nn.Linear(64, 1))
        nn.init.zeros_(self.gate[-1].weight)
        nn.init.ones_(self.gate[-1].bias)

    def target_score(self, x: torch.Tensor, score_fixed: bool = False) -> torch.Tensor:
        """grad log pi~(x); differentiable in x when x requires grad and not ``score_fixed``."""
        keep = x.requires_grad and torch.is_grad_enabled() and not score_fixed
        with torch.enable_grad():
            xg = x if keep else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.target.energy(xg).sum(), xg, create_graph=keep)
        return -g

    def langevin(self, x: torch.Tensor, t: torch.Tensor, score_fixed: bool = False) -> torch.Tensor:
        """sigma(t) grad_x[(1 - t) log p0(x) + t log pi~(x)], clipped elementwise."""
        tt = _bt(t, x)
        s = (1 - tt) * self.prior.score(x)
        if bool((t > 0).any()):
            s = s + tt * self.target_score(x, score_fixed)
        return torch.clamp(_bt(self.schedule.sigma(t), x) * s, -self.clip, self.clip)

    def forward(self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor, score_fixed: bool = False) -> torch.Tensor:
        g = self.gate(self.gate_embed(t, d))[:, 0]
        return self.core(x, t, d) + _bt(g, x) * self.langevin(x, t, score_fixed)
