"""Reference samples by Metropolis-adjusted Langevin (MALA) on many parallel chains, with
optional parallel tempering.

For targets without an OpenMM form (DW4) or as an independent check of MD. Chains start from a
given or random configuration, run ``burn`` adapted steps (one step size per temperature, tuned
towards an acceptance of ``target_accept``), then ``steps`` fixed-step-size steps keeping every
``thin``-th state of the chains at temperature 1. With several temperatures every chain at
temperature T_k samples exp(-u / T_k), and after each step neighbouring temperatures of the same
chain index propose to swap states (Metropolis on the tempered product density), which lets the
T = 1 chains cross barriers and reach the right mode proportions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .flow import Space


@dataclass(frozen=True)
class MCMCResult:
    """x : (n_kept, n_chains, *event_shape); energy : (n_kept, n_chains) reduced; acceptance of
    the production steps; step : the fixed step size used."""
    x: np.ndarray
    energy: np.ndarray
    acceptance: float
    step: float


def _energy_and_grad(target, x):
    x = x.detach().requires_grad_(True)
    u = target.energy(x)
    (g,) = torch.autograd.grad(u.sum(), x)
    return u.detach(), g.detach()


def mala(target, n_chains: int, steps: int, burn: int = 2000, thin: int = 10, step: float = 0.01,
         target_accept: float = 0.6, x0: torch.Tensor | None = None, seed: int = 0, init_scale: float = 1.0,
         temperatures: tuple[float, ...] = (1.0,), dtype=torch.float64, progress: bool = True) -> MCMCResult:
    """Run MALA chains on exp(-u) (with parallel tempering over ``temperatures``, the first of
    which must be 1); particle targets stay on the zero-centroid subspace."""
    from .runtime import progress_bar
    if temperatures[0] != 1.0 or any(b <= a for a, b in zip(temperatures, temperatures[1:])):
        raise ValueError(f"temperatures must start at 1 and increase, got {temperatures}")
    gen = torch.Generator().manual_seed(seed)
    space = Space(target.event_shape, target.com_free)
    n_t = len(temperatures)
    total = n_chains * n_t                                     # chain c at temperature k is row k * n_chains + c
    temp = torch.tensor(temperatures, dtype=dtype).repeat_interleave(n_chains)
    if x0 is None:
        x = init_scale * space.randn(total, gen, dtype)
    else:
        x = space.project(x0.to(dtype).expand(total, *target.event_shape).clone())
    u, g = _energy_and_grad(target, x)
    h = torch.full((n_t,), float(step), dtype=dtype)
    shape = lambda v: v.reshape(-1, *([1] * (x.dim() - 1)))
    kept_x, kept_u, acc_sum, acc_n = [], [], 0.0, 0
    for it in progress_bar(range(burn + steps), desc=f"MALA {target.name}", enabled=progress):
        hh = h.repeat_interleave(n_chains)
        noise = space.randn(total, gen, dtype)
        y = x - shape(hh / temp) * g + shape(torch.sqrt(2 * hh)) * noise
        uy, gy = _energy_and_grad(target, y)
        # MALA on exp(-u / T): q(b | a) = N(b; a - (h / T) grad u(a), 2 h)
        fwd = (y - x + shape(hh / temp) * g).reshape(total, -1).pow(2).sum(1)
        bwd = (x - y + shape(hh / temp) * gy).reshape(total, -1).pow(2).sum(1)
        log_a = -(uy - u) / temp - (bwd - fwd) / (4 * hh)
        accept = (torch.log(torch.rand(total, generator=gen, dtype=dtype)) < log_a) & torch.isfinite(uy)
        x, u, g = torch.where(shape(accept), y, x), torch.where(accept, uy, u), torch.where(shape(accept), gy, g)
        rates = accept.reshape(n_t, n_chains).double().mean(1)
        if n_t > 1:                                            # swaps between neighbouring temperatures
            k = it % 2
            for a in range(k, n_t - 1, 2):
                lo, hi = slice(a * n_chains, (a + 1) * n_chains), slice((a + 1) * n_chains, (a + 2) * n_chains)
                d_beta = 1 / temperatures[a] - 1 / temperatures[a + 1]
                swap = torch.log(torch.rand(n_chains, generator=gen, dtype=dtype)) < d_beta * (u[lo] - u[hi])
                for arr in (x, u, g):
                    a_lo, a_hi = arr[lo].clone(), arr[hi].clone()
                    arr[lo] = torch.where(shape(swap) if arr.dim() > 1 else swap, a_hi, a_lo)
                    arr[hi] = torch.where(shape(swap) if arr.dim() > 1 else swap, a_lo, a_hi)
        if it < burn:
            h = h * torch.exp(0.05 * (rates - target_accept))
        else:
            acc_sum, acc_n = acc_sum + float(rates[0]), acc_n + 1
            if (it - burn + 1) % thin == 0:
                kept_x.append(x[:n_chains].cpu().numpy().copy())
                kept_u.append(u[:n_chains].cpu().numpy().copy())
    return MCMCResult(np.stack(kept_x), np.stack(kept_u), acc_sum / max(acc_n, 1), float(h[0]))
