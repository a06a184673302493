"""K-step deterministic sampling with log q, and deterministic-flow (DF) importance weights.

x_0 ~ p0, x_{k+1} = Phi(x_k; t_k, d_k) with t_{k+1} = t_k + d_k, t_0 = 0, t_K = 1 (uniform: d_k = 1/K);
log q(x_K) = log p0(x_0) - sum_k log|det dPhi/dx(x_k)|; log w = log pi~(x_K) - log q(x_K).
"""
from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence
from typing import NamedTuple
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch

from .flow import IndependentDraws, Prior, PriorDraws, SobolDraws, Velocity, _bt, as_times, pf_step
from .jacobian import step_log_volume


def step_grid(steps) -> list[tuple[float, float]]:
    """The (t_k, d_k) of a deterministic sampler: ``steps`` is K (K equal steps of 1/K) or a sequence
    of step sizes d_k > 0 summing to 1, e.g. ``[0.0625] * 4 + [0.25, 0.5]``: six network evaluations
    with fine steps near the prior (t = 0). Times are summed exactly (as fractions), so
    a schedule of dyadic steps visits exactly the times a uniform one of the finest step does.
    """
    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool):
        steps = int(steps)
        if steps < 1:
            raise ValueError(f"steps must be a positive number of steps, got {steps}")
        d = 1.0 / steps
        return [(k * d, d) for k in range(steps)]           # t = k d, as the uniform sampler always had
    try:
        values = [float(d) for d in steps]
    except (TypeError, ValueError):
        raise ValueError(f"steps must be an integer K or a list of step sizes, got {steps!r}") from None
    if not values:
        raise ValueError("the list of step sizes is empty")
    if any(not math.isfinite(d) or d <= 0 for d in values):
        raise ValueError(f"every step size must be positive and finite, got {values}")
    sizes = [d if isinstance(d, Fraction) else Fraction(str(v)) for d, v in zip(steps, values)]
    total = sum(sizes)
    if abs(float(total) - 1.0) > 1e-9:
        raise ValueError(f"the step sizes must sum to 1 (from t = 0 to t = 1), they sum to {float(total):.9g}: "
                         f"{[float(d) for d in sizes]}")
    grid, t = [], Fraction(0)
    for d in sizes:
        grid.append((float(t), float(d)))
        t += d
    return grid


def parse_steps(text: str):
    """A command-line step spec: ``8`` (K uniform steps) or comma-separated step sizes, each a
    number or a fraction: ``1/4,1/4,1/4,1/8,1/16,1/16``. Returns an int or a list of floats."""
    text = str(text).strip()
    if "," not in text and "/" not in text:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"steps {text!r}: give an integer K or comma-separated step sizes "
                             f"such as 1/4,1/4,1/2") from None
    try:
        sizes = [float(Fraction(part.strip())) for part in text.split(",") if part.strip()]
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"steps {text!r}: could not read the step sizes; give fractions or decimals "
                         f"separated by commas, such as 1/4,1/4,1/2") from None
    step_grid(sizes)                                         # validates (positive, sum to 1)
    return sizes


def steps_label(steps) -> str:
    """K for uniform steps, else the step sizes as fractions of the unit interval (e.g. 1/4+1/4+1/2)."""
    if isinstance(steps, numbers.Integral):
        return str(steps)
    return "+".join(str(Fraction(d).limit_denominator(1 << 20)) for _, d in step_grid(steps))


def describe_steps(steps) -> str:
    """``K = 4`` for uniform steps, ``K = 3 (1/2+1/4+1/4)`` for a schedule: the label of tables and logs."""
    if isinstance(steps, numbers.Integral):
        return f"K = {int(steps)}"
    return f"K = {len(step_grid(steps))} ({steps_label(steps)})"


def off_training_grid(steps, n_base: int) -> list[tuple[float, float]]:
    """The steps (t, d) of a schedule that are not big steps of training, d = 2^j / N_base from t a
    multiple of d (:func:`molsample.losses.sample_big_steps`, and the base step d = 1 / N_base): the
    model was never asked to be accurate there."""
    off = []
    for t, d in step_grid(steps):
        span, start = d * n_base, t * n_base
        if abs(span - round(span)) > 1e-9 or abs(start - round(start)) > 1e-9:
            off.append((t, d))
            continue
        span, start = int(round(span)), int(round(start))
        if span & (span - 1) or start % span:
            off.append((t, d))
    return off


@dataclass(frozen=True)
class Samples:
    """Samples of a K-step map with their log densities.

    x : (M, *event_shape); log_q, log_w, log_prob : (M,); ``log_prob`` is -u(x) (unnormalised).
    steps : number of network evaluations per sample; step_sizes : the d_k of the steps.
    n_nonpositive_det : samples where some step had det <= 0 or a non-finite Jacobian (``exact``
    only; their weights are not valid). lipschitz_max : largest measured bijectivity ratio
    (``exact`` only; < 1 is needed).
    """
    x: torch.Tensor
    log_q: torch.Tensor
    log_w: torch.Tensor
    log_prob: torch.Tensor
    steps: int
    method: str
    step_sizes: tuple = ()
    n_nonpositive_det: int = 0
    lipschitz_max: float = float("nan")
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


class Integration(NamedTuple):
    """What :func:`integrate` returns: the end states, log q of the end states (zeros without ``method``),
    per sample whether some step had det <= 0 or a non-finite Jacobian, the largest measured bijectivity
    ratio over the steps, the smallest eigenvalue of the symmetric part of a step Jacobian over the steps
    (inf / -inf after a non-finite Jacobian), and the states saved on the way (``save``; else None)."""
    x: torch.Tensor
    log_q: torch.Tensor
    bad: torch.Tensor
    lipschitz: torch.Tensor
    monotone: torch.Tensor
    saved: torch.Tensor | None = None


def integrate(velocity: Velocity, prior: Prior, x0: torch.Tensor, steps: int | Sequence[float], method: str = "exact",
              generator: torch.Generator | None = None, save: torch.Tensor | None = None, **kw) -> Integration:
    """Run K = steps deterministic steps from x0 (the sampler's loop, used by sampling, training and
    the quickstart).

    ``steps``: K equal steps or a list of step sizes summing to 1 (:func:`step_grid`).
    ``method`` as in :func:`molsample.jacobian.step_log_volume`; ``None`` skips log q and the
    bijectivity measures. ``save`` (as diffrax's ``SaveAt``): a (B,) integer tensor, per sample the
    number of steps k in 0 .. K after which its state is kept in ``saved`` (0: x0 itself). Without
    ``method`` the loop then stops once every sample's state is saved, and steps only the samples that
    still need it.
    """
    grid = step_grid(steps)
    x = x0
    n = x0.shape[0]
    log_q = prior.log_prob(x0) if method else torch.zeros(n, dtype=x0.dtype, device=x0.device)
    bad = torch.zeros(n, dtype=torch.bool, device=x0.device)
    lip = torch.full((n,), float("nan"), dtype=x0.dtype, device=x0.device)
    mono = torch.full((n,), float("nan"), dtype=x0.dtype, device=x0.device)
    saved = None
    if save is not None:
        save = torch.as_tensor(save, device=x0.device).long()
        if save.shape != (n,) or (n and (int(save.min()) < 0 or int(save.max()) > len(grid))):
            raise ValueError(f"save: one step count in 0 .. {len(grid)} per sample, got shape {tuple(save.shape)}")
        saved = x0.detach().clone()
    rows = None
    for k, (t, d) in enumerate(grid):
        if method is None and save is not None:           # only the samples not saved yet move on
            rows = (save > k).nonzero().squeeze(1)
            if len(rows) == 0:
                break
        if method:
            vol = step_log_volume(velocity, x, t, d, prior.space, method, generator=generator, **kw)
            log_q = log_q - vol.log_det.detach()
            if vol.sign is not None:
                bad |= vol.invalid
                tt, dd = as_times(t, x), as_times(d, x)
                r, m = vol.bijectivity(lambda j: velocity.bijectivity_ratio(j, tt, dd))
                lip, mono = torch.fmax(lip, r), torch.fmin(mono, m)
        with torch.no_grad():
            if rows is None:
                x = pf_step(velocity, x, t, d, **kw)
            else:
                x = x.clone()
                x[rows] = pf_step(velocity, x[rows], t, d, **kw)
        if saved is not None:
            hit = save == k + 1
            saved[hit] = x[hit].detach()
    return Integration(x.detach(), log_q, bad, lip, mono, saved)


def sample(velocity: Velocity, prior: Prior, target, n: int, steps: int | Sequence[float], method: str = "exact",
           draws: PriorDraws | torch.Generator | None = None, batch_size: int = 1024, dtype=torch.float32,
           device="cpu") -> Samples:
    """Draw n samples with a K-step deterministic map and their DF importance weights.

    ``steps``: K equal steps, or a list of step sizes summing to 1 (:func:`step_grid`).
    ``draws``: where the prior points come from, :class:`~molsample.flow.IndependentDraws` or
    :class:`~molsample.flow.SobolDraws` (a deterministic map is what makes quasi-Monte Carlo inputs
    possible); a torch.Generator means independent draws from it. The estimators of ``method``
    that need random probes take them from the independent draws' generator.
    """
    t0 = time.perf_counter()
    if not isinstance(draws, (IndependentDraws, SobolDraws)):
        draws = IndependentDraws(draws)
    generator = draws.generator if isinstance(draws, IndependentDraws) else None
    xs, lq, lp, bad, lip, mono = [], [], [], [], [], []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        x0 = draws.take(prior, start, m, n, dtype).to(device)
        x, log_q, b, r, mn, _ = integrate(velocity, prior, x0, steps, method, generator)
        with torch.no_grad():
            log_prob = -target.energy(x)
        xs.append(x), lq.append(log_q.detach()), lp.append(log_prob), bad.append(b), lip.append(r)
        mono.append(mn)
    x, log_q, log_prob = torch.cat(xs), torch.cat(lq), torch.cat(lp)
    lip_all, mono_all = torch.cat(lip), torch.cat(mono)
    lip_max = float(lip_all[~torch.isnan(lip_all)].max()) if (~torch.isnan(lip_all)).any() else float("nan")
    grid = step_grid(steps)
    return Samples(x=x, log_q=log_q, log_w=log_prob - log_q, log_prob=log_prob, steps=len(grid), method=method,
                   step_sizes=tuple(d for _, d in grid), n_nonpositive_det=int(torch.cat(bad).sum()),
                   lipschitz_max=lip_max,
                   seconds=time.perf_counter() - t0,
                   info={"fraction_lipschitz_below_1": _share(lip_all < 1, lip_all),
                         "fraction_monotone": _share(mono_all > 0, mono_all),
                         "prior_draws": draws.kind})


def concat_samples(parts: Sequence[Samples]) -> Samples:
    """One :class:`Samples` from consecutive parts drawn with the same map (counts summed, the
    largest bijectivity ratio kept, shares weighted by the parts' sizes, seconds summed)."""
    if len(parts) == 1:
        return parts[0]
    sizes = np.array([len(p.log_w) for p in parts], dtype=float)

    def share(key):
        v = np.array([p.info.get(key, float("nan")) for p in parts], dtype=float)
        return float(np.sum(v * sizes) / sizes.sum()) if np.isfinite(v).all() else float("nan")

    lips = [p.lipschitz_max for p in parts if not math.isnan(p.lipschitz_max)]
    first = parts[0]
    return Samples(x=torch.cat([p.x for p in parts]), log_q=torch.cat([p.log_q for p in parts]),
                   log_w=torch.cat([p.log_w for p in parts]), log_prob=torch.cat([p.log_prob for p in parts]),
                   steps=first.steps, method=first.method, step_sizes=first.step_sizes,
                   n_nonpositive_det=sum(p.n_nonpositive_det for p in parts),
                   lipschitz_max=max(lips) if lips else float("nan"), seconds=sum(p.seconds for p in parts),
                   info={**first.info, "fraction_lipschitz_below_1": share("fraction_lipschitz_below_1"),
                         "fraction_monotone": share("fraction_monotone")})


def _share(condition: torch.Tensor, measured: torch.Tensor) -> float:
    """Fraction of samples where ``condition`` holds; NaN when nothing was measured (no exact weights)."""
    return float(condition.double().mean()) if (~torch.isnan(measured)).any() else float("nan")


def invert_step(velocity, y: torch.Tensor, t, d, max_iter: int = 200, tol: float = 1e-6):
    """Solve Phi(x; t, d) = y for a :class:`~molsample.flow.DriftVelocity` by the fixed-point
    iteration x <- (y - (d sigma / 2) u(x)) / (1 + d beta / 2).

    It converges exactly when (d sigma / 2) Lip(u) < 1 + d beta / 2, the bijectivity condition.
    Returns (x, residual) with residual the max-norm change of the last iteration per sample.
    """
    sched = velocity.schedule
    tt, dd = as_times(t, y), as_times(d, y)
    scale = _bt(1 + 0.5 * dd * sched.beta(tt), y)
    coef = _bt(0.5 * dd * sched.sigma(tt), y)
    x = y / scale
    res = torch.full((y.shape[0],), float("inf"), dtype=y.dtype, device=y.device)
    with torch.no_grad():
        for _ in range(max_iter):
            x_new = (y - coef * velocity.drift(x, tt, dd)) / scale
            res = (x_new - x).reshape(y.shape[0], -1).abs().amax(1)
            x = x_new
            if bool((res < tol).all()):
                break
    return x, res


def log_q_of(velocity, prior: Prior, y: torch.Tensor, steps: int | Sequence[float], method: str = "exact",
             tol: float = 1e-6, max_iter: int = 200, **kw):
    """log q(y) of the K-step map at given points y (e.g. exact target samples), by inverting the
    steps. Returns (log_q, residual) with residual the largest fixed-point residual per sample
    (large residuals mean y is not in the range of the map, or the map is not invertible there)."""
    grid = step_grid(steps)
    xs, res = [y], torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
    for t, d in reversed(grid):
        x, r = invert_step(velocity, xs[-1], t, d, max_iter, tol)
        xs.append(x)
        res = torch.fmax(res, r)
    xs = xs[::-1]                                             # x_0 ... x_K
    log_q = prior.log_prob(xs[0])
    for k, (t, d) in enumerate(grid):
        log_q = log_q - step_log_volume(velocity, xs[k], t, d, prior.space, method, **kw).log_det.detach()
    return log_q, res
