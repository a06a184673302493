"""Log-volume change of a deterministic step Phi(x) = x + d b(x, t, d), on the sample space.

For particle systems the space is the zero-centroid subspace with orthonormal basis Q, and the
Jacobian of a step is Q^T (I + d db/dx) Q (dof x dof); the full-space determinant would add
s log(1 + d beta / 2) spuriously. Methods, named for what they compute:

- ``exact``: log|det(I + d Q^T J_b Q)| by slogdet of the Jacobian built from dof vector-Jacobian
  products. The change of variables of the discrete map itself: exact weights.
- ``trace``: first-order d tr(Q^T J_b Q), computed exactly.
- ``hutchinson``: first-order d v^T J_b v with Rademacher probes (unbiased for the trace).
- ``paper``: as ``hutchinson`` with one probe and the Langevin input held fixed (OSDS).

J_b includes the x-dependence of the Langevin (target-score) term unless ``paper``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .flow import Space, _bt, as_times
from .flow import direct_step_ratio, lipschitz_ratio, residual_ratio  # the step ratios live with Velocity

__all__ = ["StepVolume", "velocity_jacobian", "rademacher", "step_log_volume", "monotonicity", "step_lipschitz",
           "step_monotonicity", "residual_ratio", "direct_step_ratio", "lipschitz_ratio"]

METHODS = ("exact", "trace", "hutchinson", "paper")


@dataclass(frozen=True)
class StepVolume:
    """Result of :func:`step_log_volume`: ``log_det`` (B,), and for ``exact`` the sign of det
    (B,) and the Jacobian of the step on the space (B, dof, dof)."""
    log_det: torch.Tensor
    sign: torch.Tensor | None = None
    jacobian: torch.Tensor | None = None

    @property
    def finite(self) -> torch.Tensor:
        """(B,) bool: the step's Jacobian has only finite entries (``exact`` only)."""
        return torch.isfinite(self.jacobian).flatten(1).all(1)

    @property
    def invalid(self) -> torch.Tensor:
        """(B,) bool: det <= 0 or a non-finite (overflowing) Jacobian: an exact weight through this
        step is not valid (``exact`` only)."""
        return (self.sign <= 0) | ~self.finite

    def bijectivity(self, ratio) -> tuple[torch.Tensor, torch.Tensor]:
        """(ratio(J), lambda_min(sym J)) per sample for the step Jacobian J, ``ratio`` a bijectivity
        ratio such as :func:`direct_step_ratio`; +inf / -inf where J is not finite (an overflowing
        step certifies nothing, and the SVD / eigensolver would fail on it)."""
        jac, finite = self.jacobian.detach(), self.finite
        eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
        jac = torch.where(finite[:, None, None], jac, eye)
        r, m = ratio(jac), monotonicity(jac)
        return (torch.where(finite, r, torch.full_like(r, math.inf)),
                torch.where(finite, m, torch.full_like(m, -math.inf)))


def _vjps(out: torch.Tensor, x: torch.Tensor, vectors: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """J^T v for each v in vectors (K, B, *event) -> (K, B, *event)."""
    try:
        (r,) = torch.autograd.grad(out, x, vectors, is_grads_batched=True, retain_graph=True,
                                   create_graph=create_graph)
        return r
    except RuntimeError:   # an op without a batching rule: fall back to a loop
        return torch.stack([torch.autograd.grad(out, x, v, retain_graph=True, create_graph=create_graph)[0]
                            for v in vectors])


def velocity_jacobian(velocity, x: torch.Tensor, t, d, space: Space, create_graph: bool = False,
                      **kw) -> torch.Tensor:
    """Q^T (db/dx) Q at each sample, shape (B, dof, dof) (row k, column l: q_k^T J q_l).

    Uses the velocity's own ``jacobian`` (forward mode, much cheaper) when it has one and no graph
    is needed; otherwise dof batched vector-Jacobian products."""
    if not create_graph and not kw:
        with torch.no_grad():
            jac = velocity.jacobian(x.detach(), t, d, space.basis(x.dtype, x.device))
        if jac is not None:
            return jac
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True) if not x.requires_grad else x
        b = velocity(xg, t, d, **kw)
        q = space.basis(x.dtype, x.device)                                   # (dim, dof)
        vec = q.T.reshape(space.dof, 1, *space.event_shape).expand(space.dof, x.shape[0], *space.event_shape)
        r = _vjps(b, xg, vec, create_graph)                                  # (dof, B, *event)
    return (r.reshape(space.dof, x.shape[0], -1) @ q).permute(1, 0, 2)


def rademacher(space: Space, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    v = torch.randint(0, 2, like.shape, generator=generator, dtype=torch.int64).to(like) * 2 - 1
    return space.project(v)


def step_log_volume(velocity, x: torch.Tensor, t, d, space: Space, method: str = "exact",
                    n_probes: int = 1, generator: torch.Generator | None = None,
                    create_graph: bool = False, **kw) -> StepVolume:
    """Log-volume change of one step of size d from x at time t (see module docs), (B,)."""
    if method not in METHODS:
        raise ValueError(f"unknown log-volume method {method!r}; use one of {METHODS}")
    dd = as_times(d, x)
    if method in ("exact", "trace"):
        jac = velocity_jacobian(velocity, x, t, d, space, create_graph, **kw)
        if method == "trace":
            return StepVolume(dd * torch.diagonal(jac, dim1=1, dim2=2).sum(-1))
        step = torch.eye(space.dof, dtype=x.dtype, device=x.device) + dd[:, None, None] * jac
        sign, logabs = torch.linalg.slogdet(step)
        return StepVolume(logabs, sign, step)
    if method == "paper":
        n_probes, kw = 1, {**kw, "score_fixed": True}
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True) if not x.requires_grad else x
        b = velocity(xg, t, d, **kw)
        est = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for _ in range(n_probes):
            v = rademacher(space, x, generator)
            (jtv,) = torch.autograd.grad(b, xg, v, retain_graph=True, create_graph=create_graph)
            est = est + (jtv * v).reshape(x.shape[0], -1).sum(1)
    return StepVolume(dd * est / n_probes)


def monotonicity(step_jacobian: torch.Tensor) -> torch.Tensor:
    """Smallest eigenvalue of the symmetric part of a step's Jacobian on the space, per sample.
    Positive at every point (uniformly) means the step is strongly monotone, hence injective, with
    any amount of stretching allowed; the measured local version of that sufficient condition."""
    return torch.linalg.eigvalsh(0.5 * (step_jacobian + step_jacobian.transpose(-1, -2)))[..., 0]


# ------------------------------------------------------------------ stochastic estimates (training only)

def _residual_step(velocity, x, t, d):
    """(r, c) with Phi(x) = c x + r(x): c = 1 + d a(t), r = d (b - a x), a the velocity's linear rate
    (0.5 beta for the energy route, 0 for the data route)."""
    tt, dd = as_times(t, x), as_times(d, x)
    a = velocity.linear_rate(tt)

    def residual(z):
        return _bt(dd, z) * (velocity(z, tt, dd) - _bt(a, z) * z)
    return residual, 1 + dd * a


def _unit(v):
    return v / v.reshape(v.shape[0], -1).norm(dim=1).clamp_min(1e-12).reshape(-1, *[1] * (v.dim() - 1))


def _jvp_fd(residual, x, v, h):
    """J_r v by central differences (differentiable in the network's parameters)."""
    return (residual(x + h * v) - residual(x - h * v)) / (2 * h)


def _vjp(residual, x, w):
    """J_r^T w by autograd, no graph kept."""
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(residual(xg), xg, w)
    return g.detach()


def step_lipschitz(velocity, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor, space,
                   generator: torch.Generator | None, iterations: int = 3, h: float = 1e-3) -> torch.Tensor:
    """Differentiable estimate of each sample's Lipschitz ratio of Phi = c x + r(x): ||J_r||_2 / c
    (METHOD's bound, target-score Hessian included). Phi is a bijection when it is below 1.

    The top right-singular vector is found by ``iterations`` power steps (J v by central
    differences, J^T w by autograd, no graph kept); ||J_r v|| is then evaluated by central
    differences with the graph, so its gradient reaches the network. A lower estimate of the
    spectral norm that becomes tight as the iteration converges.
    """
    residual, c = _residual_step(velocity, x, t, d)
    x = x.detach()
    v = _unit(space.project(torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x)))
    for _ in range(iterations):
        with torch.no_grad():
            jv = space.project(_jvp_fd(residual, x, v, h))
        v = _unit(space.project(_vjp(residual, x, jv)))
    jv = space.project(_jvp_fd(residual, x, v, h))
    return jv.reshape(x.shape[0], -1).norm(dim=1) / c


def step_monotonicity(velocity, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor, space,
                      generator: torch.Generator | None, iterations: int = 12, h: float = 1e-3) -> torch.Tensor:
    """Differentiable estimate of each sample's smallest eigenvalue of the symmetric part of the
    step Jacobian, divided by c: lambda_min((J + J^T) / 2) / c with J = c I + J_r on the space.

    If it is positive everywhere (uniformly), Phi is strongly monotone, (Phi(x) - Phi(y)).(x - y) > 0,
    hence injective, with no limit on expansion (optimal-transport maps, gradients of convex
    functions, are monotone); a weaker requirement than the Lipschitz ratio below 1 whenever the
    map must stretch some directions. The direction is the Ritz vector of the smallest Ritz value
    after ``iterations`` Lanczos steps on S_r, the symmetric part of J_r (S_r v = (J_r v + J_r^T v)/2:
    central differences and autograd, no graph kept; full reorthogonalisation), batched over
    samples; the returned value is the Rayleigh quotient in that direction WITH the graph, so its
    gradient reaches the network (an upper estimate of the minimum, tight once Lanczos converged;
    exact after dof steps).
    """
    residual, c = _residual_step(velocity, x, t, d)
    x = x.detach()
    n = x.shape[0]
    k = max(1, min(iterations, space.dof))

    def sym(v):
        with torch.no_grad():
            jv = _jvp_fd(residual, x, v, h)
        return space.project(0.5 * (jv + _vjp(residual, x, v))).reshape(n, -1)

    def dot(a, b):
        return (a * b).sum(1)

    v = space.project(torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x)).reshape(n, -1)
    basis = [v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)]
    alpha, beta = [], []
    for j in range(k):
        w = sym(basis[j].reshape(x.shape))
        alpha.append(dot(w, basis[j]))
        for _ in range(2):                               # full reorthogonalisation, twice (k is small;
            for q in basis:                              # one pass is not enough after near-breakdown)
                w = w - dot(w, q)[:, None] * q
        if j == k - 1:
            break
        b = w.norm(dim=1)
        beta.append(b)
        basis.append(w / b[:, None].clamp_min(1e-30))
    tri = torch.diag_embed(torch.stack(alpha, 1))
    if beta:
        off = torch.diag_embed(torch.stack(beta, 1), offset=1)
        tri = tri + off + off.transpose(1, 2)
    _, vecs = torch.linalg.eigh(tri.double())
    ritz = (torch.stack(basis, 2) * vecs[:, None, :, 0].to(x)).sum(2)          # (n, dim)
    u = (ritz / ritz.norm(dim=1, keepdim=True).clamp_min(1e-30)).reshape(x.shape)
    quotient = (u * _jvp_fd(residual, x, u, h)).reshape(n, -1).sum(1)
    return 1 + quotient / c
