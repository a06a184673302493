"""Noise schedule, priors and how their points are drawn, velocities (with their step ratios), Euler-Maruyama and
probability-flow steps.

Time t in [0, 1]: t = 0 is the prior, t = 1 the target. A *velocity* ``b(x, t, d)`` defines the
deterministic step Phi(x; t, d) = x + d b(x, t, d); the drift network enters through
``b = 0.5 sigma(t) u(x, t, d) + 0.5 beta(t) x`` (:class:`DriftVelocity`). Everything works on
batches of shape (B, *event_shape); particle systems live on the subspace of zero centroid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch



@dataclass(frozen=True)
class CosineSchedule:
    """Cosine VP schedule (as the OSDS code): with tau = 1 - t,
    beta = 0.5 (beta_max - beta_min) cos^2(0.5 pi (1 + c - tau) / (1 + c)) + 0.5 beta_min,
    sigma(t) = s0 sqrt(beta(t)). About 5 at t = 0 and 0.005 at t = 1 with the defaults.
    """
    s0: float = 1.0
    beta_min: float = 0.01
    beta_max: float = 10.0
    c: float = 0.008

    def _theta(self, t):
        return 0.5 * math.pi * (self.c + t) / (1 + self.c)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.beta_max - self.beta_min) * torch.cos(self._theta(t)) ** 2 + 0.5 * self.beta_min

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.s0 * torch.sqrt(self.beta(t))

    def int_beta(self, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        """Closed-form integral of beta over [t0, t1]."""
        a = 0.5 * (self.beta_max - self.beta_min)
        k = (1 + self.c) / (2 * math.pi)
        prim = lambda t: a * (0.5 * t + k * torch.sin(2 * self._theta(t))) + 0.5 * self.beta_min * t
        return prim(t1) - prim(t0)


class Space:
    """The space samples live in: R^D, or the zero-centroid subspace of (N, s) particle positions.

    Parameters
    ----------
    event_shape : tuple of int
    com_free : bool
        Project onto the zero-centroid subspace (particles only).
    """

    def __init__(self, event_shape: tuple[int, ...], com_free: bool = False):
        self.event_shape = tuple(event_shape)
        self.com_free = bool(com_free) and len(event_shape) == 2
        self.dim = math.prod(event_shape)
        self.dof = self.dim - (event_shape[1] if self.com_free else 0)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(dim=1, keepdim=True) if self.com_free else x

    def randn(self, n: int, generator: torch.Generator | None, dtype=torch.float64, device=None) -> torch.Tensor:
        """Standard normal on the space, shape (n, *event_shape); drawn on the CPU (where the
        project's generators live, so a seed gives the same draws on every device), then moved."""
        z = self.project(torch.randn((n, *self.event_shape), generator=generator, dtype=dtype))
        return z.to(device) if device is not None else z

    def from_coordinates(self, z: torch.Tensor) -> torch.Tensor:
        """Map coordinates z : (n, dof) in the orthonormal basis of the space to points (n, *event_shape)
        (x = Q z; standard normal z gives the standard normal of the space)."""
        q = self.basis(dtype=z.dtype, device=z.device)
        return (z @ q.T).reshape(z.shape[0], *self.event_shape)

    def gaussian_log_prob(self, diff: torch.Tensor, var: torch.Tensor | float) -> torch.Tensor:
        """log N(diff; 0, var I) on the space (dof dimensions), diff : (B, *event_shape) -> (B,)."""
        var = torch.as_tensor(var, dtype=diff.dtype, device=diff.device)
        sq = diff.reshape(diff.shape[0], -1).pow(2).sum(1)
        return -0.5 * sq / var - 0.5 * self.dof * torch.log(2 * math.pi * var)

    def particle_basis(self) -> torch.Tensor:
        """Orthonormal basis of the particle vectors orthogonal to (1, ..., 1), float64 (N, N - 1)."""
        n = self.event_shape[0]
        ones = torch.ones(n, 1, dtype=torch.float64)
        q, _ = torch.linalg.qr(torch.cat([ones, torch.eye(n, dtype=torch.float64)[:, : n - 1]], dim=1))
        return q[:, 1:].contiguous()

    def basis(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """Orthonormal basis Q of the space in flattened coordinates, shape (dim, dof)."""
        if not self.com_free:
            return torch.eye(self.dim, dtype=dtype, device=device)
        s = self.event_shape[1]
        return torch.kron(self.particle_basis(), torch.eye(s, dtype=torch.float64)).to(dtype=dtype, device=device)


def sobol_normal(n: int, dim: int, seed: int) -> torch.Tensor:
    """n points of a randomised quasi-Monte Carlo (scrambled Sobol') sequence in dim dimensions,
    mapped to standard normal coordinates by the inverse normal CDF; float64 (n, dim).

    Every point is marginally N(0, I) (the scrambling makes each one uniform on the cube), so a
    sample mean over them is an unbiased estimate; the points are spread more evenly than
    independent draws, which lowers the variance of smooth integrands. n a power of two keeps
    Sobol's balance properties; independent seeds give independent randomisations (their spread is
    the honest error bar, not a bootstrap over points).
    """
    import warnings

    from scipy.special import ndtri
    from scipy.stats import qmc

    if n < 1 or dim < 1:
        raise ValueError(f"sobol_normal needs n >= 1 and dim >= 1, got n={n}, dim={dim}")
    if dim > 21201:
        raise ValueError(f"Sobol' sequences are defined up to 21201 dimensions, got {dim}")
    engine = qmc.Sobol(d=dim, scramble=True, seed=np.random.default_rng(seed))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*balance properties of Sobol.*")
        u = engine.random(n)
    u = np.clip(u, 0.5 / 2**52, 1 - 0.5 / 2**52)
    return torch.from_numpy(ndtri(u))


class Prior:
    """p0 = N(0, s0^2 I) on a :class:`Space`."""

    def __init__(self, space: Space, s0: float):
        self.space, self.s0 = space, float(s0)

    def sample(self, n: int, generator=None, dtype=torch.float64, device=None) -> torch.Tensor:
        return self.s0 * self.space.randn(n, generator, dtype, device)

    def from_standard(self, z: torch.Tensor) -> torch.Tensor:
        """Prior points from standard normal coordinates z : (n, dof) of the space (float64)."""
        return self.s0 * self.space.from_coordinates(z)

    def sample_qmc(self, n: int, seed: int, dtype=torch.float64, device=None) -> torch.Tensor:
        """n prior draws from a scrambled Sobol' sequence (see :func:`sobol_normal`)."""
        x = self.from_standard(sobol_normal(n, self.space.dof, seed))
        return x.to(dtype=dtype, device=device if device is not None else "cpu")

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.space.gaussian_log_prob(x, self.s0**2)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return -x / self.s0**2

    def spread_range(self) -> tuple[float, float]:
        """Smallest and largest standard deviation of the prior along any direction of the space."""
        return self.s0, self.s0


class IndependentDraws:
    """Prior points drawn independently from ``generator`` (None: torch's default), batch by batch."""
    kind = "independent"

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def take(self, prior: Prior, start: int, m: int, n: int, dtype) -> torch.Tensor:
        """Points start .. start + m of the n a run draws."""
        return prior.sample(m, self.generator, dtype=dtype)


class SobolDraws:
    """Prior points from one scrambled Sobol' sequence of the run's n points (randomised quasi-Monte
    Carlo, :func:`sobol_normal`, seeded by ``seed``): still one exact weight per point and an unbiased
    mean weight, with a lower variance where the weight is a smooth function of the prior point. Take
    n a power of two."""
    kind = "sobol"

    def __init__(self, seed: int):
        self.seed, self._points = seed, None

    def take(self, prior: Prior, start: int, m: int, n: int, dtype) -> torch.Tensor:
        if self._points is None or len(self._points) != n:
            self._points = prior.sample_qmc(n, self.seed, dtype=dtype)
        return self._points[start:start + m]


PriorDraws = IndependentDraws | SobolDraws


class HarmonicPrior(Prior):
    """p0(x) proportional to exp(-0.5 x^T (L / b^2 + I / s0^2) x) on the zero-centroid subspace,
    with L the Laplacian of the molecule's bond graph (a "harmonic prior": bonded atoms start about
    b apart, the chain as a whole about s0 wide). E(3)-invariant; with no bonds it is the
    isotropic prior.

    Parameters
    ----------
    space : Space with event_shape (N, s), centre-of-mass free
    s0 : float
        Overall scale (length unit of the target).
    bonds : sequence of (i, j)
    bond_scale : float
        b, the standard deviation of a bond vector per coordinate.
    """

    def __init__(self, space: Space, s0: float, bonds, bond_scale: float):
        super().__init__(space, s0)
        if not space.com_free:
            raise ValueError("a harmonic prior needs a centre-of-mass-free particle space")
        n = space.event_shape[0]
        lap = torch.zeros(n, n, dtype=torch.float64)
        for i, j in bonds:
            lap[i, i] += 1
            lap[j, j] += 1
            lap[i, j] -= 1
            lap[j, i] -= 1
        self.bond_scale = float(bond_scale)
        prec = lap / self.bond_scale**2 + torch.eye(n, dtype=torch.float64) / self.s0**2
        qn = space.particle_basis()                    # (n, n - 1), orthogonal to the centroid direction
        evals, v = torch.linalg.eigh(qn.T @ prec @ qn)
        self.precision = prec                          # (n, n), commutes with centring
        self.evals, self.evecs = evals, qn @ v         # (n - 1,), (n, n - 1)
        self.log_norm = 0.5 * space.event_shape[1] * (torch.log(self.evals).sum().item()
                                                       - (n - 1) * math.log(2 * math.pi))

    def sample(self, n: int, generator=None, dtype=torch.float64, device=None) -> torch.Tensor:
        z = torch.randn((n, self.space.dof), generator=generator, dtype=torch.float64)
        return self.from_standard(z).to(dtype=dtype, device=device if device is not None else "cpu")

    def from_standard(self, z: torch.Tensor) -> torch.Tensor:
        k, s = self.evals.shape[0], self.space.event_shape[1]
        z = z.to(torch.float64).reshape(z.shape[0], k, s)
        return torch.einsum("ik,bks->bis", self.evecs / torch.sqrt(self.evals), z)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        p = self.precision.to(x.dtype).to(x.device)
        return -0.5 * torch.einsum("bis,ij,bjs->b", x, p, x) + self.log_norm

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.einsum("ij,bjs->bis", self.precision.to(x.dtype).to(x.device), x)

    def spread_range(self) -> tuple[float, float]:
        return 1 / math.sqrt(self.evals.max().item()), 1 / math.sqrt(self.evals.min().item())


def _bt(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a (B,) tensor against x : (B, ...)."""
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def as_times(value, x: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) time / step size as a (B,) tensor in x's dtype and device."""
    v = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    return v.expand(x.shape[0]) if v.dim() == 0 else v


# ------------------------------------------------------------------ measured bijectivity ratios of a step

def residual_ratio(step_jacobian: torch.Tensor, c: torch.Tensor | float) -> torch.Tensor:
    """||J - c I||_2 / c per sample for a step Phi = c x + r(x) with Jacobian J on the space: the
    measured ratio Lip(r) / c, below 1 where Phi is locally a bijection (a lower estimate of the
    global constant). ``c``: a scalar or (B,)."""
    eye = torch.eye(step_jacobian.shape[-1], dtype=step_jacobian.dtype, device=step_jacobian.device)
    c = torch.as_tensor(c, dtype=step_jacobian.dtype, device=step_jacobian.device)
    c = c.expand(step_jacobian.shape[0]) if c.dim() == 0 else c
    return torch.linalg.matrix_norm(step_jacobian - c[:, None, None] * eye, ord=2) / c


def direct_step_ratio(step_jacobian: torch.Tensor) -> torch.Tensor:
    """Measured bijectivity ratio ||I + d Q^T J_b Q - I||_2 = d ||Q^T J_b Q||_2 per sample of a
    step Phi = x + d b(x): Phi is a bijection when d Lip(b) < 1 (a local, lower estimate)."""
    return residual_ratio(step_jacobian, 1.0)


def lipschitz_ratio(step_jacobian: torch.Tensor, sigma: torch.Tensor, beta: torch.Tensor,
                    d: torch.Tensor) -> torch.Tensor:
    """Measured bijectivity ratio ||(d sigma / 2) du/dx||_2 / (1 + d beta / 2) per sample.

    ``step_jacobian`` is I + d Q^T J_b Q with J_b = 0.5 sigma J_u + 0.5 beta I. Phi is a bijection
    when (d sigma / 2) Lip(u) < 1 + d beta / 2; a ratio below 1 at every sample is the local,
    measured version of that bound (a lower estimate of the global constant).
    """
    return residual_ratio(step_jacobian, 1 + 0.5 * d * beta)   # J - c I = (d sigma / 2) Q^T J_u Q


class Velocity:
    """A step velocity b(x, t, d): the step is Phi(x; t, d) = x + d b(x, t, d). A velocity knows its linear
    part a(t) (b = a(t) x + the rest) and the measured ratio that certifies its step a bijection; this
    base has no linear part, so its step is a bijection where d Lip(b) < 1."""

    def __call__(self, x, t, d, **kw):
        raise NotImplementedError

    def linear_rate(self, t: torch.Tensor) -> torch.Tensor:
        """a(t) in b = a(t) x + (the rest); here 0."""
        return torch.zeros_like(t)

    def bijectivity_ratio(self, step_jacobian: torch.Tensor, t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Per sample, the local ratio that must stay below 1 for the step with this Jacobian to be a
        bijection (a lower estimate of the global constant): ||J - I||_2 = d ||J_b||_2."""
        return direct_step_ratio(step_jacobian)

    def jacobian(self, x: torch.Tensor, t, d, basis: torch.Tensor) -> torch.Tensor | None:
        """Q^T (db/dx) Q (B, dof, dof) in closed form or forward mode, or None when the velocity has
        none (then autograd is used); here None."""
        return None


class DriftVelocity(Velocity):
    """b(x, t, d) = 0.5 sigma(t) u(x, t, d) + 0.5 beta(t) x for a drift u (e.g. a network)."""

    def __init__(self, drift: Callable, schedule: CosineSchedule):
        self.drift, self.schedule = drift, schedule

    def __call__(self, x, t, d, **kw):
        t, d = as_times(t, x), as_times(d, x)
        u = self.drift(x, t, d, **kw)
        return 0.5 * _bt(self.schedule.sigma(t), x) * u + 0.5 * _bt(self.schedule.beta(t), x) * x

    def linear_rate(self, t: torch.Tensor) -> torch.Tensor:
        """a(t) in b = a(t) x + (the rest): 0.5 beta(t). A step is then (1 + d a) x + d (b - a x)."""
        return 0.5 * self.schedule.beta(t)

    def bijectivity_ratio(self, step_jacobian: torch.Tensor, t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """(d sigma / 2) ||du/dx||_2 / (1 + d beta / 2): the step is a bijection where it is below 1."""
        return lipschitz_ratio(step_jacobian, self.schedule.sigma(t), self.schedule.beta(t), d)


class DirectVelocity(Velocity):
    """b(x, t, d) = net(x, t, d): the velocity of a flow learned on data (linear interpolant
    x_t = (1 - t) x_0 + t x_1 from the prior). Keyword options of the drift route are ignored."""

    def __init__(self, net: Callable):
        self.net = net

    def __call__(self, x, t, d, **kw):
        return self.net(x, as_times(t, x), as_times(d, x))

    def jacobian(self, x, t, d, basis):
        """Q^T (db/dx) Q (B, dof, dof) by the network's own forward-mode Jacobian, or None when
        the network has none (then autograd is used)."""
        if not hasattr(self.net, "jacobian"):
            return None
        return self.net.jacobian(x, as_times(t, x), as_times(d, x), basis)


def pf_step(velocity: Velocity, x: torch.Tensor, t, d, **kw) -> torch.Tensor:
    """Deterministic step Phi(x; t, d) = x + d b(x, t, d)."""
    t, d = as_times(t, x), as_times(d, x)
    return x + _bt(d, x) * velocity(x, t, d, **kw)


def em_mean(drift: Callable, schedule: CosineSchedule, x, t, d, **kw):
    """Mean and std of the Euler-Maruyama kernel x' = x + d [sigma u + 0.5 beta x] + sigma sqrt(d) eps."""
    t, d = as_times(t, x), as_times(d, x)
    sig = _bt(schedule.sigma(t), x)
    mean = x + _bt(d, x) * (sig * drift(x, t, d, **kw) + 0.5 * _bt(schedule.beta(t), x) * x)
    return mean, sig * torch.sqrt(_bt(d, x))


def reference_backward_mean(schedule: CosineSchedule, x_next, t, d):
    """Mean and std of the discretised VP noising kernel B(x_k | x_{k+1}) = N((1 - d beta/2) x_{k+1},
    sigma^2 d), with beta and sigma at t = t_k, the same time as the forward kernel F(x_{k+1} | x_k).

    With the same time in both kernels, F and B are the same reversible Gaussian kernel when the
    drift is the exact prior score, so the path log-ratio telescopes and the ELBO of a target equal
    to the prior is exact up to an O(d) change of the kernel's stationary variance.
    """
    t, d = as_times(t, x_next), as_times(d, x_next)
    mean = x_next - 0.5 * _bt(d * schedule.beta(t), x_next) * x_next
    return mean, _bt(schedule.sigma(t) * torch.sqrt(d), x_next)
