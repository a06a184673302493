"""Training losses as small pure functions (see docs in METHOD: diffusion, self-consistency,
volume consistency, Jacobian penalty). Each returns a scalar loss tensor (and what later losses
reuse)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .flow import CosineSchedule, Prior, _bt, as_times, em_mean, pf_step, reference_backward_mean
from .jacobian import rademacher, step_log_volume, velocity_jacobian


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


def bijectivity_penalty(ratio: torch.Tensor, bound: float) -> torch.Tensor:
    """mean(relu(ratio - bound)): zero while every sampled step keeps its ratio below ``bound``; a
    linear hinge, so that small violations (a fold just past det = 0) still get a full gradient."""
    return torch.clamp(ratio - bound, min=0.0).mean()


def ot_coupling(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Reorder prior samples x0 to the minibatch optimal-transport coupling with x1 (squared
    Euclidean cost, exact assignment). Any coupling keeps the marginals, so flow matching stays
    valid; OT makes the paths straighter, which is what large steps need."""
    from scipy.optimize import linear_sum_assignment
    cost = torch.cdist(x0.reshape(x0.shape[0], -1).double(), x1.reshape(x1.shape[0], -1).double()).pow(2)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    perm = torch.empty(len(cols), dtype=torch.long)
    perm[torch.as_tensor(cols)] = torch.as_tensor(rows)
    return x0[perm.to(x0.device)]


def kabsch_rotation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Proper rotations R (B, s, s), det +1, minimising sum_i |a_i - b_i R|^2 for centred point sets
    a, b : (B, N, s). Reflections are excluded, so a chiral configuration stays chiral."""
    u, _, vt = torch.linalg.svd(b.transpose(1, 2) @ a)
    sign = torch.sign(torch.linalg.det(u @ vt))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    flip = torch.ones(a.shape[0], a.shape[-1], dtype=a.dtype, device=a.device)
    flip[:, -1] = sign
    return (u * flip[:, None, :]) @ vt


def _principal_rotations(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The proper rotations taking b's principal axes onto a's, one per admissible choice of axis
    signs: (2^(s-1), B, s, s) for point sets a, b : (B, N, s)."""
    _, va = torch.linalg.eigh(a.transpose(1, 2) @ a)
    _, vb = torch.linalg.eigh(b.transpose(1, 2) @ b)
    s = a.shape[-1]
    signs = torch.cartesian_prod(*[torch.tensor([1.0, -1.0], dtype=a.dtype)] * s).reshape(-1, s)
    r = vb[None] @ torch.diag_embed(signs)[:, None] @ va.transpose(1, 2)[None]       # (2^s, B, s, s)
    proper = torch.linalg.det(r) > 0                                                  # half of them per sample
    first = torch.argsort((~proper).to(torch.int8), dim=0, stable=True)[: 2 ** (s - 1)]
    return torch.gather(r, 0, first[..., None, None].expand(-1, -1, s, s))


def _assign(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Per sample, the relabelling idx of b minimising sum_i |a_i - (b R)_idx_i|^2 (Hungarian)."""
    from scipy.optimize import linear_sum_assignment
    cost = torch.cdist(a, b @ r).pow(2).cpu().numpy()
    return torch.as_tensor(np.stack([linear_sum_assignment(c)[1] for c in cost]))


def align_pairs(x0: torch.Tensor, x1: torch.Tensor, permute: bool, n_iter: int = 5) -> torch.Tensor:
    """Each configuration x1[k] (B, N, s) rotated, and with ``permute`` its identical particles
    relabelled, to lie close to its partner x0[k] (equivariant optimal-transport flow matching, Klein,
    Kraemer and Noe 2023). Without ``permute``: the optimal proper rotation (Kabsch). With it: from each
    proper rotation taking x1's principal axes onto x0's, one Hungarian assignment and Kabsch rotation;
    the closest of these is refined by up to ``n_iter`` - 1 more alternations (a local search: an upper
    estimate of the true minimum).

    The result is x1[k] moved within its orbit of the target's symmetry group (proper rotations, and
    permutations with ``permute``) by a move that depends on x0[k] equivariantly: every step commutes
    with rotating and relabelling x0 (the principal-axes starts included). The prior is invariant under
    the same group, so the moved x1 has the target's distribution again: the coupling changes, neither
    marginal does, and flow matching stays valid while the paths shorten. x1's centroid is kept.
    Computed on the CPU whatever the inputs' device (the assignments run in scipy there anyway; the
    point sets are small), and returned on x1's device."""
    a = x0.detach().double().cpu()
    a = a - a.mean(1, keepdim=True)
    b = x1.detach().double().cpu()
    centroid = b.mean(1, keepdim=True)
    b = b - centroid

    def take(z, idx):
        return torch.gather(z, 1, idx[..., None].expand_as(z))

    if not permute:
        best = b @ kabsch_rotation(a, b)
    else:
        starts = _principal_rotations(a, b)                       # (S, B, s, s)
        n_s, n_b = starts.shape[:2]
        aa, bb = a.repeat(n_s, 1, 1), b.repeat(n_s, 1, 1)          # start-major rows
        idx = _assign(aa, bb, starts.reshape(n_s * n_b, *starts.shape[2:]))
        r = kabsch_rotation(aa, take(bb, idx))
        cost = (take(bb, idx) @ r - aa).pow(2).sum((1, 2)).reshape(n_s, n_b)
        pick = cost.argmin(0) * n_b + torch.arange(n_b)
        idx, r = idx[pick], r[pick]
        for _ in range(n_iter - 1):
            new = _assign(a, b, r)
            if torch.equal(new, idx):
                break
            idx = new
            r = kabsch_rotation(a, take(b, idx))
        best = take(b, idx) @ r
    return (best + centroid).to(dtype=x1.dtype, device=x1.device)


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
    jac = velocity.jacobian(x0, t, d, prior.space.basis(x0.dtype, x0.device)) if hasattr(velocity, "jacobian") else None
    if jac is None:
        jac = velocity_jacobian(velocity, x0, t, d, prior.space, create_graph=True)
    step = torch.eye(jac.shape[-1], dtype=x0.dtype, device=x0.device) + jac
    _, logdet = torch.linalg.slogdet(step)
    u = target.energy(x)
    log_q = prior.log_prob(x0) - logdet
    return (regularised_energy(u, cap) + log_q).mean(), (-u - log_q).detach(), step
