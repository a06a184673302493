"""molsample.losses: the consistency losses against the exact and Euler linear flows, the energy-Hessian diagonal
and the marginal precision against closed forms; flow matching; the one-step reverse KL and its energy cap."""
import math

import numpy as np
import pytest
import torch

from molsample import losses
from molsample.flow import CosineSchedule, DirectVelocity, Prior, Space, pf_step
from molsample.losses import energy_hessian_diagonal, marginal_precision, self_consistency, volume_consistency
from molsample.targets import Funnel, GaussianMixture
from molsample.testing import EulerLinearFlow, ExactLinearFlow

from conftest import ROOT

TINY = ROOT / "configs" / "tiny-aldp-data.yaml"

SCHED = CosineSchedule(s0=2.0)


def test_consistency_losses_vanish_for_the_exact_linear_flow():
    space = Space((6,))
    x = Prior(space, 1.0).sample(64, torch.Generator().manual_seed(5))
    v = ExactLinearFlow(SCHED)
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
    assert self_consistency(ExactLinearFlow(SCHED), ExactLinearFlow(SCHED), x, t, d, metric)[0].item() < 1e-28
    v = EulerLinearFlow(SCHED)
    got = self_consistency(v, v, x, t, d, metric)[0]
    x_tgt = pf_step(v, pf_step(v, x, t, d / 2), t + d / 2, d / 2)
    w = marginal_precision(funnel, SCHED, x_tgt, t + d)
    assert abs(got.item() - (w * (x_tgt - pf_step(v, x, t, d)) ** 2).mean().item()) < 1e-12
    assert got.item() != pytest.approx(self_consistency(v, v, x, t, d)[0].item(), rel=1e-3)


def test_self_consistency_of_a_step_independent_euler_drift_is_second_order():
    space = Space((4,))
    x = Prior(space, 1.0).sample(32, torch.Generator().manual_seed(6))
    errs = []
    for d in (0.25, 0.125, 0.0625, 0.03125):
        t, dd = torch.zeros(32, dtype=torch.float64), torch.full((32,), d, dtype=torch.float64)
        errs.append(math.sqrt(self_consistency(EulerLinearFlow(SCHED), EulerLinearFlow(SCHED), x, t, dd)[0].item()))
    order = np.polyfit(np.log([0.25, 0.125, 0.0625, 0.03125]), np.log(errs), 1)[0]
    assert min(errs) > 0 and abs(order - 2.0) < 0.1


def test_flow_matching_loss_is_zero_for_the_exact_conditional_velocity():
    # with a single data point x1 and a point-mass coupling, the exact velocity field is (x1 - x_t) / (1 - t)
    x1 = torch.randn(1, 5, dtype=torch.float64).expand(8, 5)
    x0 = torch.randn(8, 5, dtype=torch.float64)
    t = torch.rand(8, dtype=torch.float64) * 0.9
    exact = DirectVelocity(lambda x, tt, d: (x1 - x) / (1 - tt[:, None]))
    assert losses.flow_matching_loss(exact, x0, x1, t, 0.1) < 1e-24
    assert losses.flow_matching_loss(DirectVelocity(lambda x, tt, d: 0 * x), x0, x1, t, 0.1) > 0.1


def test_one_step_reverse_kl_uses_the_exact_weights_of_the_sampler():
    from molsample.build import build
    from molsample.config import ExperimentConfig
    from molsample.sampler import integrate
    exp = build(ExperimentConfig.load(TINY))
    exp = type(exp)(**{**vars(exp), "model": exp.model.double(), "dtype": torch.float64})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in exp.model.out.parameters():
            p.copy_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    x0 = exp.prior.sample(6, g, dtype=torch.float64)
    loss, log_w, step = losses.one_step_reverse_kl(exp.velocity(), exp.prior, exp.target, x0, cap=1e30)
    x, log_q, bad, *_ = integrate(exp.velocity(), exp.prior, x0, 1, "exact")
    u = exp.target.energy(x)
    assert torch.allclose(log_w, -u - log_q, rtol=1e-9, atol=1e-7)
    assert torch.isclose(loss, (u + log_q).mean(), rtol=1e-9)
    loss.backward()
    grads = [p.grad for p in exp.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_regularised_energy_caps_smoothly():
    u = torch.tensor([-5.0, 10.0, 1e3, 1e8], dtype=torch.float64)
    r = losses.regularised_energy(u, 100.0)
    assert torch.equal(r[:2], u[:2]) and torch.isclose(r[2], 100 + torch.log1p(torch.tensor(900.0, dtype=torch.float64)))
    assert r[3] < 120
