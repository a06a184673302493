"""Schedule, steps, exact log-determinants and the consistency losses against analytic answers."""
import math

import numpy as np
import pytest
import torch

from molsample.testing import random_orthogonal
from scipy import integrate as sci_integrate

from molsample.flow import CosineSchedule, DriftVelocity, Prior, Space, pf_step
from molsample.jacobian import lipschitz_ratio, monotonicity, step_log_volume, velocity_jacobian
from molsample.jacobian import step_lipschitz, step_monotonicity
from molsample.losses import (bijectivity_penalty, energy_hessian_diagonal, marginal_precision, self_consistency,
                              volume_consistency)
from molsample.nn import LangevinDrift, MLPCore
from molsample.sampler import integrate
from molsample.targets import Funnel, GaussianMixture, LennardJones

SCHED = CosineSchedule(s0=2.0)


def test_cosine_schedule_end_points_and_integral():
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    b = SCHED.beta(t)
    assert abs(b[0].item() - 5.0) < 0.01 and abs(b[1].item() - 0.005) < 1e-9
    for t0, t1 in [(0.0, 1.0), (0.25, 0.3125), (0.9, 1.0)]:
        ref, _ = sci_integrate.quad(lambda s: SCHED.beta(torch.tensor(s, dtype=torch.float64)).item(), t0, t1)
        got = SCHED.int_beta(torch.tensor(t0, dtype=torch.float64), torch.tensor(t1, dtype=torch.float64))
        assert abs(got.item() - ref) < 1e-10


def small_drift(space, target, seed=0, dtype=torch.float64, std=0.3):
    torch.manual_seed(seed)
    core = MLPCore(space, hidden=32, layers=2, n_base=8)
    for p in core.out.parameters():               # non-zero output so the Jacobian is non-trivial
        torch.nn.init.normal_(p, std=std)
    drift = LangevinDrift(core, target, Prior(space, SCHED.s0), SCHED, clip=1e3, n_base=8).to(dtype)
    return DriftVelocity(drift, SCHED)


def dense_step_jacobian(velocity, x, t, d, space):
    """Slow reference: full autograd Jacobian of one sample's step, restricted to the space."""
    q = space.basis(torch.float64)
    out = []
    for xi in x:
        f = lambda y: pf_step(velocity, y.reshape(1, *space.event_shape), t, d).reshape(-1)
        j = torch.autograd.functional.jacobian(f, xi.reshape(-1))
        out.append(q.T @ j @ q)
    return torch.stack(out)


@pytest.mark.parametrize("case", ["vector", "particles"])
@pytest.mark.parametrize("t", [0.0, 0.5])
def test_exact_log_det_matches_dense_slogdet(case, t):
    target = Funnel(dim=5) if case == "vector" else LennardJones(4)
    space = Space(target.event_shape, target.com_free)
    v = small_drift(space, target)
    gen = torch.Generator().manual_seed(1)
    x = Prior(space, 0.3 if case == "particles" else 1.0).sample(4, gen)
    if case == "particles":   # a spread-out tetrahedron plus noise, away from the soft cap
        x = x + space.project(torch.tensor([[0, 0, 0], [1.2, 0, 0], [0, 1.2, 0], [0, 0, 1.2]],
                                           dtype=torch.float64)[None])
    d = 0.25
    ref = dense_step_jacobian(v, x, t, d, space)
    vol = step_log_volume(v, x, t, d, space, "exact")
    sign, logabs = torch.linalg.slogdet(ref)
    assert torch.allclose(vol.log_det, logabs, atol=1e-10) and torch.equal(vol.sign, sign)
    tr = step_log_volume(v, x, t, d, space, "trace").log_det
    eye = torch.eye(space.dof, dtype=torch.float64)
    assert torch.allclose(tr, torch.diagonal(ref - eye, dim1=1, dim2=2).sum(-1), atol=1e-10)


def test_hutchinson_trace_is_unbiased():
    target = Funnel(dim=6)
    space = Space(target.event_shape)
    v = small_drift(space, target)
    x = Prior(space, 1.0).sample(3, torch.Generator().manual_seed(2))
    exact = step_log_volume(v, x, 0.5, 0.25, space, "trace").log_det
    gen = torch.Generator().manual_seed(3)
    est = torch.stack([step_log_volume(v, x, 0.5, 0.25, space, "hutchinson", generator=gen).log_det
                       for _ in range(4000)])
    err = (est.mean(0) - exact).abs()
    assert (err < 4 * est.std(0) / math.sqrt(4000)).all()


def test_langevin_hessian_enters_the_jacobian_unless_held_fixed():
    target = Funnel(dim=4)
    space = Space(target.event_shape)
    v = small_drift(space, target)
    x = Prior(space, 1.0).sample(2, torch.Generator().manual_seed(4))
    full = velocity_jacobian(v, x, 0.7, 0.25, space)
    fixed = velocity_jacobian(v, x, 0.7, 0.25, space, score_fixed=True)
    assert (full - fixed).abs().max() > 1e-3
    assert torch.allclose(velocity_jacobian(v, x, 0.0, 0.25, space),
                          velocity_jacobian(v, x, 0.0, 0.25, space, score_fixed=True))   # t = 0: prior only


class ExactLinearFlow:
    """b = (exp(0.5 int_t^{t+d} beta) - 1) x / d: the exact flow map of dx/dt = 0.5 beta x."""

    def __call__(self, x, t, d, **kw):
        t, d = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0]), torch.as_tensor(d, dtype=x.dtype).expand(x.shape[0])
        g = torch.expm1(0.5 * SCHED.int_beta(t, t + d)) / d
        return g.reshape(-1, *([1] * (x.dim() - 1))) * x


class EulerLinearFlow:
    """b = 0.5 beta(t) x, independent of the step size."""

    def __call__(self, x, t, d, **kw):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        return 0.5 * SCHED.beta(t).reshape(-1, *([1] * (x.dim() - 1))) * x


def test_consistency_losses_vanish_for_the_exact_linear_flow():
    space = Space((6,))
    x = Prior(space, 1.0).sample(64, torch.Generator().manual_seed(5))
    v = ExactLinearFlow()
    t, d = torch.full((64,), 0.25, dtype=torch.float64), torch.full((64,), 0.5, dtype=torch.float64)
    l_sd, x_mid = self_consistency(v, v, x, t, d)
    assert l_sd.item() < 1e-28
    assert volume_consistency(v, v, x, x_mid, t, d, space, "exact").item() < 1e-24
    first_order = volume_consistency(v, v, x, x_mid, t, d, space, "trace").item()
    half = lambda t0, t1: 0.5 * SCHED.int_beta(torch.tensor(t0, dtype=torch.float64),
                                               torch.tensor(t1, dtype=torch.float64)).item()
    a1, a2 = half(0.25, 0.5), half(0.5, 0.75)
    # first order: D (e^{a1} - 1) + D (e^{a2} - 1) for the two halves vs D (e^{a1 + a2} - 1)
    expected = (6 * (math.expm1(a1) + math.expm1(a2) - math.expm1(a1 + a2))) ** 2
    assert abs(first_order - expected) < 1e-9 * expected and first_order > 1e-3


def test_energy_hessian_diagonal_matches_the_dense_hessian_and_the_funnels_closed_form():
    g = torch.Generator().manual_seed(11)
    funnel = Funnel(dim=5)
    x = funnel.sample_reference(7, g)
    diag = energy_hessian_diagonal(funnel, x)
    s = x[:, 1:].pow(2).sum(1)
    expected = torch.cat([(1 / 9 + 0.5 * s * torch.exp(-x[:, 0]))[:, None],
                          torch.exp(-x[:, :1]).expand(-1, 4)], dim=1)       # u_00 and u_ii in closed form
    assert torch.allclose(diag, expected, rtol=1e-12)
    gmm = GaussianMixture(n_modes=3, dim=3, box=2.0, seed=1)
    y = 2 * torch.randn(4, 3, generator=g, dtype=torch.float64)
    dense = torch.stack([torch.autograd.functional.hessian(lambda z: gmm.energy(z[None])[0], yi).diagonal()
                         for yi in y])
    assert torch.allclose(energy_hessian_diagonal(gmm, y), dense, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("std", [0.3, 1.0, 2.5])
def test_marginal_precision_is_exact_for_a_gaussian_target(std):
    # one isotropic Gaussian of width std: the noised marginal at time t is Gaussian with variance
    # alpha_t^2 std^2 + s0^2 (1 - alpha_t^2); the metric is s0^2 over that, at any x
    target = GaussianMixture(n_modes=1, dim=3, box=1.0, std=std, seed=2)
    x = 3 * torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for t in (0.0, 0.3, 0.7, 0.95, 1.0):
        tt = torch.full((5,), t, dtype=torch.float64)
        alpha2 = math.exp(-SCHED.int_beta(torch.tensor(t, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)).item())
        expected = SCHED.s0**2 / (alpha2 * std**2 + SCHED.s0**2 * (1 - alpha2))
        w = marginal_precision(target, SCHED, x, tt)
        assert torch.allclose(w, torch.full_like(w, expected), rtol=1e-9), (t, w[0, 0].item(), expected)
    # at t = 1 on a funnel: the neck's width exp(x_0 / 2) sets the scale of x_1..x_4, clamped
    funnel = Funnel(dim=5)
    xf = torch.tensor([[-3.0, 0.01, 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, 0.0, 0.0], [-9.0, 0.0, 0.0, 0.0, 0.0]],
                      dtype=torch.float64)
    w = marginal_precision(funnel, SCHED, xf, torch.ones(3, dtype=torch.float64), floor=0.01, cap=100.0)
    assert torch.allclose(w[0, 1:], torch.full((4,), 4 * math.exp(3.0), dtype=torch.float64))
    assert torch.allclose(w[1, 1:], torch.full((4,), 4 * math.exp(-2.0), dtype=torch.float64))
    assert torch.all(w[2, 1:] == 100.0)


def test_self_consistency_in_the_target_metric_weights_the_residual_and_vanishes_for_the_exact_flow():
    space = Space((5,))
    funnel = Funnel(dim=5)
    x = Prior(space, 1.0).sample(16, torch.Generator().manual_seed(4))
    t, d = torch.full((16,), 0.5, dtype=torch.float64), torch.full((16,), 0.5, dtype=torch.float64)
    metric = lambda x_end, t_end: marginal_precision(funnel, SCHED, x_end, t_end)
    assert self_consistency(ExactLinearFlow(), ExactLinearFlow(), x, t, d, metric)[0].item() < 1e-28
    v = EulerLinearFlow()
    got = self_consistency(v, v, x, t, d, metric)[0]
    x_tgt = pf_step(v, pf_step(v, x, t, d / 2), t + d / 2, d / 2)
    w = marginal_precision(funnel, SCHED, x_tgt, t + d)
    assert abs(got.item() - (w * (x_tgt - pf_step(v, x, t, d)) ** 2).mean().item()) < 1e-12
    assert got.item() != pytest.approx(self_consistency(v, v, x, t, d)[0].item(), rel=1e-3)


class OverflowingFlow:
    """b = x exp(60 x_0): its Jacobian overflows float32 where x_0 > about 1.5."""

    def __call__(self, x, t, d, **kw):
        return x * torch.exp(60 * x[:, :1])


def test_a_step_whose_jacobian_overflows_is_counted_as_invalid_not_an_error():
    space = Space((3,))
    x0 = torch.tensor([[0.1, 0.2, -0.3], [2.0, 0.1, 0.1], [-1.0, 0.5, 0.5]], dtype=torch.float32)
    _, _, bad, lip, mono = integrate(OverflowingFlow(), Prior(space, 1.0), x0, 1, "exact", schedule=None)
    assert bad.tolist() == [False, True, False]
    assert math.isinf(lip[1].item()) and math.isfinite(lip[0].item()) and mono[1].item() == -math.inf


def test_self_consistency_of_a_step_independent_euler_drift_is_second_order():
    space = Space((4,))
    x = Prior(space, 1.0).sample(32, torch.Generator().manual_seed(6))
    errs = []
    for d in (0.25, 0.125, 0.0625, 0.03125):
        t, dd = torch.zeros(32, dtype=torch.float64), torch.full((32,), d, dtype=torch.float64)
        errs.append(math.sqrt(self_consistency(EulerLinearFlow(), EulerLinearFlow(), x, t, dd)[0].item()))
    order = np.polyfit(np.log([0.25, 0.125, 0.0625, 0.03125]), np.log(errs), 1)[0]
    assert min(errs) > 0 and abs(order - 2.0) < 0.1


class RandomLinearFlow:
    """b = M(t) x with a fixed random non-symmetric matrix family: x_K = L x_0 exactly."""

    def __init__(self, dim, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(dim, dim, generator=g, dtype=torch.float64) * 0.15
        self.c = torch.randn(dim, dim, generator=g, dtype=torch.float64) * 0.15

    def matrix(self, t):
        return self.a + t * self.c

    def __call__(self, x, t, d, **kw):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        m = self.a[None] + t[:, None, None] * self.c[None]
        return torch.einsum("bij,bj->bi", m, x)


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 32, [0.5, 0.25, 0.125, 0.125], [0.125, 0.375, 0.5], [0.3, 0.7]])
def test_k_step_log_q_matches_closed_form_for_a_linear_drift(steps):
    # uniform K and non-uniform step sizes: x_K = L x_0 with L the product of (I + d_k M(t_k))
    dim, s0 = 5, 1.7
    space = Space((dim,))
    prior = Prior(space, s0)
    v = RandomLinearFlow(dim)
    x0 = prior.sample(200, torch.Generator().manual_seed(7))
    x, log_q, bad, _, _ = integrate(v, prior, x0, steps, "exact")
    sizes = [1.0 / steps] * steps if isinstance(steps, int) else steps
    lmat, t = torch.eye(dim, dtype=torch.float64), 0.0
    for d in sizes:
        lmat = (torch.eye(dim, dtype=torch.float64) + v.matrix(t) * d) @ lmat
        t += d
    cov = s0**2 * lmat @ lmat.T
    ref = torch.distributions.MultivariateNormal(torch.zeros(dim, dtype=torch.float64), cov).log_prob(x)
    assert torch.allclose(x, x0 @ lmat.T, atol=1e-12)
    assert (log_q - ref).abs().max() < 1e-6 and not bad.any()


def test_step_schedules_are_checked_and_dyadic_times_are_exact():
    from molsample.sampler import parse_steps, step_grid, steps_label
    assert step_grid([0.25] * 4) == step_grid(4)                 # equal sizes are the uniform sampler
    sizes = [0.25, 0.25, 0.125, 0.125] + [1 / 16] * 4
    assert [t for t, _ in step_grid(sizes)] == [0, 0.25, 0.5, 0.625, 0.75, 0.8125, 0.875, 0.9375]
    assert parse_steps("8") == 8 and parse_steps("1/2, 0.25,1/4") == [0.5, 0.25, 0.25]
    assert steps_label([0.5, 0.25, 0.25]) == "1/2+1/4+1/4" and steps_label(4) == "4"
    for bad, message in (("1/2,1/4", "sum to 1"), ("1/2,0,1/2", "positive"), ("x", "integer K"),
                         ("1/0,1", "could not read")):
        with pytest.raises(ValueError, match=message):
            parse_steps(bad)
    with pytest.raises(ValueError, match="positive number"):
        step_grid(0)
    from molsample.sampler import describe_steps, off_training_grid
    assert off_training_grid([1 / 16] * 4 + [0.25, 0.5], 32) == [] and off_training_grid(32, 32) == []
    assert off_training_grid([0.125, 0.25, 0.125, 0.5], 32) == [(0.125, 0.25)]      # t not a multiple of d
    assert off_training_grid(3, 32) == step_grid(3) and off_training_grid(64, 32) == step_grid(64)
    assert describe_steps(4) == "K = 4" and describe_steps([0.5, 0.5]) == "K = 2 (1/2+1/2)"


def test_lipschitz_ratio_of_a_known_linear_step():
    # step = (1 + d beta/2) I + (d sigma/2) J_u with J_u = diag(2, -1): ratio = (d sigma/2) * 2 / (1 + d beta/2)
    d, beta, sigma = 0.5, 1.0, 0.8
    step = torch.diag(torch.tensor([1 + d * beta / 2 + d * sigma / 2 * 2, 1 + d * beta / 2 - d * sigma / 2],
                                   dtype=torch.float64))[None]
    r = lipschitz_ratio(step, torch.tensor([sigma]), torch.tensor([beta]), torch.tensor([d]))
    assert abs(r.item() - (d * sigma) / (1 + d * beta / 2)) < 1e-12


@pytest.mark.parametrize("case", ["vector", "particles"])
def test_trained_bijectivity_ratio_matches_the_dense_spectral_norm(case):
    # the power-iteration estimate used in training vs the spectral norm of the dense autograd
    # Jacobian of the step (target-score Hessian included), and it carries a gradient
    target = Funnel(dim=5) if case == "vector" else LennardJones(4)
    space = Space(target.event_shape, target.com_free)
    v = small_drift(space, target, std=1.0)
    gen = torch.Generator().manual_seed(3)
    x = Prior(space, 1.0).sample(6, gen)
    if case == "particles":
        x = 0.3 * x + space.project(torch.tensor([[0, 0, 0], [1.2, 0, 0], [0, 1.2, 0], [0, 0, 1.2]],
                                                 dtype=torch.float64)[None])
    t = torch.full((6,), 0.5, dtype=torch.float64)
    d = torch.full((6,), 0.5, dtype=torch.float64)
    step = dense_step_jacobian(v, x, 0.5, 0.5, space)
    exact = lipschitz_ratio(step, SCHED.sigma(t), SCHED.beta(t), d)
    est = step_lipschitz(v, x, t, d, space, gen, iterations=30, h=1e-5)
    assert (est <= exact * (1 + 1e-6)).all()                 # a power iteration never overshoots
    assert torch.allclose(est, exact, rtol=1e-3), (est, exact)
    loss = bijectivity_penalty(step_lipschitz(v, x, t, d, space, gen, iterations=30, h=1e-5), 0.5 * exact.min().item())
    loss.backward()
    grads = [p.grad for p in v.drift.parameters() if p.grad is not None]
    assert loss.item() > 0 and grads and sum(g.abs().sum() for g in grads) > 0
    assert bijectivity_penalty(exact, 2 * exact.max().item()).item() == 0.0
    # monotonicity: smallest eigenvalue of the symmetric part of the step Jacobian, over c
    c = 1 + 0.5 * d * SCHED.beta(t)
    lam = torch.linalg.eigvalsh(0.5 * (step + step.transpose(1, 2)))[:, 0] / c
    est = step_monotonicity(v, x, t, d, space, gen, iterations=space.dof, h=1e-5)   # Lanczos: exact at dof steps
    assert torch.allclose(est, lam, rtol=1e-5, atol=1e-7), (est, lam)
    few = step_monotonicity(v, x, t, d, space, gen, iterations=3, h=1e-5)
    assert (few >= lam - 1e-6 * lam.abs()).all()             # a Rayleigh quotient never undershoots
    lam_graph = step_monotonicity(v, x, t, d, space, gen, iterations=3)
    bijectivity_penalty(-lam_graph, -(lam.max().item() + 1)).backward()
    assert sum(p.grad.abs().sum() for p in v.drift.parameters() if p.grad is not None) > 0


class _LinearVelocity:
    """b(x) = A_n x with a different matrix per sample (no linear rate)."""
    def __init__(self, a):
        self.a = a

    def __call__(self, x, t, d, **kw):
        return torch.einsum("nij,nj->ni", self.a, x)

    def linear_rate(self, t):
        return torch.zeros_like(t)


def test_lanczos_monotonicity_survives_a_clustered_spectrum():
    # -3.5 I + rank 3 + small noise: the Krylov space is nearly invariant after a few steps
    # (near-breakdown); the estimate must still converge to the smallest eigenvalue
    g = torch.Generator().manual_seed(0)
    n, dim = 4, 32
    m = torch.randn(n, dim, dim, generator=g, dtype=torch.float64)
    u = torch.randn(n, dim, 3, generator=g, dtype=torch.float64)
    a = -3.5 * torch.eye(dim, dtype=torch.float64) + 0.1 * u @ u.transpose(1, 2) + 0.005 * (m + m.transpose(1, 2))
    lam = torch.linalg.eigvalsh(torch.eye(dim, dtype=torch.float64) + a)[:, 0]
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    ones = torch.ones(n, dtype=torch.float64)
    for k, tol in ((12, 0.02), (dim, 1e-8)):
        est = step_monotonicity(_LinearVelocity(a), x, 0 * ones, ones, Space((dim,), False), g, k, h=1e-5)
        assert (est - lam).abs().max() < tol, (k, est, lam)


def test_monotonicity_allows_stretching_but_not_folding():
    # a stretch by 10 (Lipschitz ratio 9) is monotone; a shear with det > 0 can still fail monotonicity
    stretch = torch.diag(torch.tensor([10.0, 0.1], dtype=torch.float64))[None]
    shear = torch.tensor([[[1.0, 3.0], [0.0, 1.0]]], dtype=torch.float64)
    assert abs(monotonicity(stretch).item() - 0.1) < 1e-12
    assert abs(monotonicity(shear).item() - (1 - 1.5)) < 1e-12 and torch.linalg.det(shear).item() > 0
    fold = torch.diag(torch.tensor([1.0, -0.5], dtype=torch.float64))[None]
    assert monotonicity(fold).item() < 0


def test_path_weights_are_exact_for_the_true_score_as_steps_shrink():
    # target = prior N(0, s0^2) (normalised, log Z = 0): the Langevin drift with NN = 0 is the exact
    # score, so the ELBO of the N-step path tends to log Z = 0 and its variance to 0 as N grows
    from molsample.sde import simulate_path
    from molsample.targets import GaussianMixture
    s0 = 3.0
    target = GaussianMixture(n_modes=1, dim=4, means=[[0.0] * 4], std=s0)
    space, sched = Space((4,)), CosineSchedule(s0=s0)
    prior = Prior(space, s0)
    torch.manual_seed(0)
    drift = LangevinDrift(MLPCore(space, 16, 1), target, prior, sched, clip=1e9).double()
    stats = []
    for n_base in (8, 32, 128):
        p = simulate_path(drift, sched, prior, target, 20000, n_base, torch.Generator().manual_seed(0),
                          torch.float64, differentiable=False)
        stats.append((abs(p.log_w.mean().item()), p.log_w.std().item()))
    assert stats[1][0] < 0.01 and stats[2][0] < stats[1][0] < stats[0][0]
    assert stats[2][1] < stats[1][1] < stats[0][1]


def test_inverting_the_k_step_map_recovers_log_q():
    from molsample.sampler import log_q_of
    target = GaussianMixture(n_modes=3, dim=3, box=1.0, std=1.0)
    space = Space(target.event_shape)
    v = small_drift(space, target, std=0.1)
    prior = Prior(space, SCHED.s0)
    x0 = prior.sample(16, torch.Generator().manual_seed(8))
    for steps in (1, 4, [0.5, 0.25, 0.25]):
        y, log_q, bad, lip, _ = integrate(v, prior, x0, steps, "exact", schedule=SCHED)
        assert not bad.any() and float(lip.max()) < 1.0
        log_q_inv, res = log_q_of(v, prior, y, steps, tol=1e-13, max_iter=2000)
        assert res.max() < 1e-12 and (log_q_inv - log_q).abs().max() < 1e-6


def test_harmonic_prior_density_samples_and_score():
    from molsample.flow import HarmonicPrior
    space = Space((5, 3), com_free=True)
    bonds = [(0, 1), (1, 2), (2, 3), (1, 4)]
    prior = HarmonicPrior(space, 2.0, bonds, 0.3)
    g = torch.Generator().manual_seed(0)
    x = prior.sample(40000, g)
    assert x.mean(1).abs().max() < 1e-12                               # zero centroid
    # sample covariance on the subspace equals the inverse precision there
    q = space.basis()
    cov = torch.cov((x.reshape(len(x), -1) @ q).T)
    expected = torch.linalg.inv(q.T @ torch.kron(prior.precision, torch.eye(3, dtype=torch.float64)) @ q)
    assert (cov - expected).abs().max() < 0.03 * expected.abs().max()
    # spread_range: the narrowest and widest standard deviation of the samples over directions
    sd = torch.linalg.eigvalsh(cov).sqrt()
    lo, hi = prior.spread_range()
    assert abs(sd.min() / lo - 1) < 0.03 and abs(sd.max() / hi - 1) < 0.03
    assert Prior(space, 2.0).spread_range() == (2.0, 2.0)
    # log_prob is a normalised Gaussian density on the subspace: compare with torch's MVN there
    mvn = torch.distributions.MultivariateNormal(torch.zeros(q.shape[1], dtype=torch.float64), expected)
    y = x[:5]
    assert torch.allclose(prior.log_prob(y), mvn.log_prob(y.reshape(5, -1) @ q), atol=1e-9)
    # score = autograd gradient of log_prob; rotations leave the density unchanged
    yg = y.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(prior.log_prob(yg).sum(), yg)
    assert torch.allclose(space.project(grad), prior.score(y), atol=1e-10)
    rot = random_orthogonal(g, 3, reflect=True)
    assert torch.allclose(prior.log_prob(y @ rot.T), prior.log_prob(y), atol=1e-10)
    # without bonds it is the isotropic prior
    iso = HarmonicPrior(space, 2.0, [], 0.3)
    assert torch.allclose(iso.log_prob(y), Prior(space, 2.0).log_prob(y), atol=1e-10)
