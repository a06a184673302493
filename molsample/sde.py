"""The base sampler's stochastic (Euler-Maruyama) path from the prior to the target, with the log weight
of the path density ratio that the diffusion losses use (docs/method.md)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .flow import CosineSchedule, Prior, em_mean, reference_backward_mean


@dataclass(frozen=True)
class EMPath:
    """An Euler-Maruyama path of the base sampler.

    states : (N + 1, B, *event_shape), detached; log_w : (B,) log pi~(x_N) - log of the path
    density ratio (its mean is the ELBO), differentiable when the path was.
    """
    states: torch.Tensor
    log_w: torch.Tensor


def simulate_path(drift, schedule: CosineSchedule, prior: Prior, target, n: int, n_base: int,
                  generator: torch.Generator | None, dtype=torch.float32, device="cpu",
                  differentiable: bool = True, score_fixed: bool = False, noise_scale: float = 1.0,
                  normals: torch.Tensor | None = None) -> EMPath:
    """Simulate the N_base-step SDE from the prior and accumulate log w along it.

    log w = log pi~(x_N) - [log p0(x_0) + sum_k (log F(x_{k+1}|x_k) - log B(x_k|x_{k+1}))].
    With ``differentiable`` the loss backpropagates through the whole path (reverse KL).
    ``noise_scale`` != 1 draws the states with the kernel noise scaled (an exploration behaviour
    for the log-variance loss); log w still uses the model's kernel F. ``normals`` (n, (n_base + 1)
    dof), standard normal coordinates of the space, replaces the generator's draws: the first dof
    columns give the prior point, the next dof the first step's noise, and so on (e.g. a scrambled
    Sobol' sequence, :func:`molsample.flow.sobol_normal`).
    """
    space = prior.space
    delta = 1.0 / n_base
    if normals is not None:
        if tuple(normals.shape) != (n, (n_base + 1) * space.dof):
            raise ValueError(f"normals must have shape ({n}, {(n_base + 1) * space.dof}), got {tuple(normals.shape)}")
        blocks = normals.to(torch.float64).reshape(n, n_base + 1, space.dof)
        x = prior.from_standard(blocks[:, 0]).to(dtype=dtype, device=device)
    else:
        x = prior.sample(n, generator, dtype=dtype).to(device)
    log_ratio = prior.log_prob(x)
    states = [x.detach()]
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        for k in range(n_base):
            t = k * delta
            mean, std = em_mean(drift, schedule, x, t, delta, score_fixed=score_fixed)
            if normals is not None:
                eps = space.from_coordinates(blocks[:, k + 1]).to(dtype=dtype, device=device)
            else:
                eps = space.randn(n, generator, dtype=dtype).to(device)
            x_next = mean + noise_scale * std * eps
            log_f = space.gaussian_log_prob(x_next - mean, std.reshape(-1)[0] ** 2)
            b_mean, b_std = reference_backward_mean(schedule, x_next, t, delta)
            log_b = space.gaussian_log_prob(x - b_mean, b_std.reshape(-1)[0] ** 2)
            log_ratio = log_ratio + log_f - log_b
            x = x_next
            states.append(x.detach())
        log_w = -target.energy(x) - log_ratio
    return EMPath(torch.stack(states), log_w)
