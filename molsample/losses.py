"""Training losses as small pure functions (docs/method.md: diffusion, self-consistency,
volume consistency, Jacobian penalty). Each returns a scalar loss tensor (and what later losses
reuse)."""
from __future__ import annotations

import math

import torch

from .flow import CosineSchedule, Prior, _bt, as_times, em_mean, pf_step, reference_backward_mean
from .jacobian import rademacher, step_log_volume, velocity_jacobian
from .sde import EMPath


def kl_loss(path: EMPath) -> torch.Tensor:
    """Discrete reverse KL up to log Z: -mean(log w) of a differentiable path."""
    return -path.log_w.mean()


def log_variance_loss(drift, schedule: CosineSchedule, prior: Prior, target, path: EMPath,
                      score_fixed: bool = False) -> torch.Tensor:
    """Var(log w) with log F re-evaluated by the current network on the detached path states."""
    space, states = prior.space, path.states
    n_base = states.shape[0] - 1
    delta = 1.0 / n_base
    log_ratio = prior.log_prob(states[0])
    for k in range(n_base):
        t = k * delta
        mean, std = em_mean(drift, schedule, states[k], t, delta, score_fixed=score_fixed)
        log_f = space.gaussian_log_prob(states[k + 1] - mean, std.reshape(-1)[0] ** 2)
        b_mean, b_std = reference_backward_mean(schedule, states[k + 1], t, delta)
        log_b = space.gaussian_log_prob(states[k] - b_mean, b_std.reshape(-1)[0] ** 2)
        log_ratio = log_ratio + log_f - log_b
    log_w = -target.energy(states[-1]).detach() - log_ratio
    return log_w.var()


def sample_big_steps(n: int, n_base: int, generator: torch.Generator | None):
    """Per sample: step d = 2^j / N_base with j ~ U{1..log2 N_base}, a start time on the grid at
    a multiple of d, and the index of that time on the base path. Returns (t, d, index), (n,)."""
    levels = int(round(math.log2(n_base)))
    if 2**levels != n_base:
        raise ValueError(f"n_base must be a power of two, got {n_base}")
    j = torch.randint(1, levels + 1, (n,), generator=generator)
    span = 2**j                                              # base steps per big step
    m = (torch.rand(n, generator=generator, dtype=torch.float64) * (n_base // span)).long()
    index = m * span
    return index.double() / n_base, span.double() / n_base, index


def two_half_steps(teacher, x: torch.Tensor, t, d):
    """The self-consistency target: two steps of size d / 2 from (x, t), without gradient.
    Returns (x_mid, x_tgt)."""
    with torch.no_grad():
        x_mid = pf_step(teacher, x, t, d / 2)
        return x_mid, pf_step(teacher, x_mid, t + d / 2, d / 2)


def self_consistency(student, teacher, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor, metric=None):
    """L_SD = mean over dims and batch of w (x_tgt - x_pred)^2; two teacher half steps vs one
    student step. ``metric``: None (w = 1), or a callable (x_tgt, t + d) -> w of x's shape
    (detached), e.g. :func:`marginal_precision` (the residual in the local scale of the
    distribution the step ends in). Returns (loss, x_mid) with x_mid the teacher's midpoint."""
    x_mid, x_tgt = two_half_steps(teacher, x, t, d)
    x_pred = pf_step(student, x, t, d)
    sq = (x_tgt - x_pred).pow(2)
    if metric is not None:
        sq = metric(x_tgt, as_times(t, x) + as_times(d, x)) * sq
    return sq.mean(), x_mid


def energy_hessian_diagonal(target, y: torch.Tensor) -> torch.Tensor:
    """Diagonal of the Hessian of the target's reduced energy u at y, exactly: one backward pass of
    the score per coordinate (cost grows with the dimension; meant for small vector targets).
    Returns a detached tensor of y's shape."""
    with torch.enable_grad():
        yg = y.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(target.energy(yg).sum(), yg, create_graph=True)
        flat = g.reshape(y.shape[0], -1)
        diag = torch.empty_like(flat)
        for j in range(flat.shape[1]):
            (hj,) = torch.autograd.grad(flat[:, j].sum(), yg, retain_graph=j + 1 < flat.shape[1])
            diag[:, j] = hj.reshape(y.shape[0], -1)[:, j]
    return diag.detach().reshape(y.shape)


def marginal_precision(target, schedule: CosineSchedule, x: torch.Tensor, t: torch.Tensor,
                       floor: float = 0.01, cap: float = 100.0) -> torch.Tensor:
    """Per-coordinate precision of the time-t marginal near x, in units of the prior's (1 / s0^2).

    The noising process maps a target sample y to alpha_t y + s0 sqrt(1 - alpha_t^2) eps, alpha_t =
    exp(-0.5 int_t^1 beta); with the target locally Gaussian at y = x / alpha_t with precision h (the
    diagonal of u's Hessian there) the marginal's precision is 1 / (alpha_t^2 / h + s0^2 (1 - alpha_t^2)).
    Exact for a Gaussian target with diagonal covariance; h on a funnel's neck is exp(-x_0), so a state
    error counts relative to the neck's width there. Returned as s0^2 x precision clamped to [floor, cap]
    (a non-positive h, e.g. on a barrier, gives the floor; an undefined (NaN) one counts as 1). Detached."""
    tt = as_times(t, x)
    alpha = torch.exp(-0.5 * schedule.int_beta(tt, torch.ones_like(tt)))
    a = _bt(alpha, x)
    h = energy_hessian_diagonal(target, x.detach() / a)
    s2 = schedule.s0**2
    prec = 1.0 / (a**2 / h.clamp_min(floor / s2) + s2 * (1 - a**2))
    w = (s2 * prec).clamp(floor, cap)
    return torch.where(torch.isnan(h), torch.ones_like(w), w)


def volume_consistency(student, teacher, x, x_mid, t, d, space, method: str = "paper",
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """L_vol = (l_teacher(x; t, d/2) + l_teacher(x_mid; t + d/2, d/2) - l_student(x; t, d))^2.

    ``method`` is the log-volume of :func:`step_log_volume`: ``paper`` (first-order trace, one
    probe, Langevin input fixed) or ``exact`` (slogdet; exact log-dets add up once L_SD = 0).
    """
    l1 = step_log_volume(teacher, x, t, d / 2, space, method, generator=generator).log_det.detach()
    l2 = step_log_volume(teacher, x_mid, t + d / 2, d / 2, space, method, generator=generator).log_det.detach()
    ls = step_log_volume(student, x, t, d, space, method, generator=generator, create_graph=True).log_det
    return (l1 + l2 - ls).pow(2).mean()


def jacobian_penalty(drift, x: torch.Tensor, t, d, space, generator: torch.Generator | None) -> torch.Tensor:
    """E[|J_u^T v|^2] with a Rademacher v (an unbiased estimate of ||J_u||_F^2)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        u = drift(xg, t, d, score_fixed=True)
        v = rademacher(space, xg, generator)
        (jtv,) = torch.autograd.grad(u, xg, v, create_graph=True)
    return jtv.reshape(x.shape[0], -1).pow(2).sum(1).mean()


def bijectivity_penalty(ratio: torch.Tensor, bound: float) -> torch.Tensor:
    """mean(relu(ratio - bound)): zero while every sampled step keeps its ratio below ``bound``; a
    linear hinge, so that small violations (a fold just past det = 0) still get a full gradient."""
    return torch.clamp(ratio - bound, min=0.0).mean()


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Linear interpolant x_t = (1 - t) x0 + t x1, t : (B,)."""
    return (1 - _bt(t, x0)) * x0 + _bt(t, x0) * x1


def flow_matching_loss(velocity, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, d) -> torch.Tensor:
    """Conditional flow matching for the linear interpolant: mean of (b(x_t, t, d) - (x1 - x0))^2
    over dims and batch, with d the base step size the velocity is conditioned on."""
    xt = interpolate(x0, x1, t)
    return (velocity(xt, t, d) - (x1 - x0)).pow(2).mean()


def regularised_energy(u: torch.Tensor, cap: float) -> torch.Tensor:
    """u below ``cap``, cap + log(1 + u - cap) above it (finite, slowly growing for clashes)."""
    over = torch.clamp(u - cap, min=0.0)
    return torch.where(u < cap, u, cap + torch.log1p(over))


def one_step_reverse_kl(velocity, prior, target, x0: torch.Tensor,
                        cap: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reverse KL of the one-step map x = Phi(x0; 0, 1) = x0 + b(x0, 0, 1) to exp(-u), up to log Z:
    mean[u_reg(x) + log p0(x0) - log|det(I + Q^T J_b(x0) Q)|], with the exact, differentiable
    log-determinant (the velocity's forward-mode Jacobian when it has one, else vector-Jacobian
    products with a graph). Returns (loss, per-sample log w, detached; the step Jacobian on the space,
    with its graph, for a bijectivity hinge: log|det| alone does not see a fold)."""
    n = x0.shape[0]
    t = torch.zeros(n, dtype=x0.dtype, device=x0.device)
    d = torch.ones(n, dtype=x0.dtype, device=x0.device)
    x = pf_step(velocity, x0, t, d)
    jac = velocity.jacobian(x0, t, d, prior.space.basis(x0.dtype, x0.device))
    if jac is None:
        jac = velocity_jacobian(velocity, x0, t, d, prior.space, create_graph=True)
    step = torch.eye(jac.shape[-1], dtype=x0.dtype, device=x0.device) + jac
    _, logdet = torch.linalg.slogdet(step)
    u = target.energy(x)
    log_q = prior.log_prob(x0) - logdet
    return (regularised_energy(u, cap) + log_q).mean(), (-u - log_q).detach(), step
