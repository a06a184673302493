"""Exact log-determinants against dense autograd Jacobians, the trace estimators, overflowing steps, and
the bijectivity measures (Lipschitz ratio, power iteration, Lanczos monotonicity)."""
import math

import pytest
import torch

from molsample.flow import CosineSchedule, Prior, Space, Velocity
from molsample.jacobian import lipschitz_ratio, monotonicity, step_log_volume, velocity_jacobian
from molsample.jacobian import step_lipschitz, step_monotonicity
from molsample.losses import bijectivity_penalty
from molsample.sampler import integrate
from molsample.targets import Funnel, LennardJones
from molsample.testing import LinearVelocity, dense_step_jacobian, small_drift

SCHED = CosineSchedule(s0=2.0)


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


class OverflowingFlow(Velocity):
    """b = x exp(60 x_0): its Jacobian overflows float32 where x_0 > about 1.5."""

    def __call__(self, x, t, d, **kw):
        return x * torch.exp(60 * x[:, :1])


def test_a_step_whose_jacobian_overflows_is_counted_as_invalid_not_an_error():
    space = Space((3,))
    x0 = torch.tensor([[0.1, 0.2, -0.3], [2.0, 0.1, 0.1], [-1.0, 0.5, 0.5]], dtype=torch.float32)
    _, _, bad, lip, mono, _ = integrate(OverflowingFlow(), Prior(space, 1.0), x0, 1, "exact")
    assert bad.tolist() == [False, True, False]
    assert math.isinf(lip[1].item()) and math.isfinite(lip[0].item()) and mono[1].item() == -math.inf


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
        est = step_monotonicity(LinearVelocity(a), x, 0 * ones, ones, Space((dim,), False), g, k, h=1e-5)
        assert (est - lam).abs().max() < tol, (k, est, lam)


def test_monotonicity_allows_stretching_but_not_folding():
    # a stretch by 10 (Lipschitz ratio 9) is monotone; a shear with det > 0 can still fail monotonicity
    stretch = torch.diag(torch.tensor([10.0, 0.1], dtype=torch.float64))[None]
    shear = torch.tensor([[[1.0, 3.0], [0.0, 1.0]]], dtype=torch.float64)
    assert abs(monotonicity(stretch).item() - 0.1) < 1e-12
    assert abs(monotonicity(shear).item() - (1 - 1.5)) < 1e-12 and torch.linalg.det(shear).item() > 0
    fold = torch.diag(torch.tensor([1.0, -0.5], dtype=torch.float64))[None]
    assert monotonicity(fold).item() < 0
