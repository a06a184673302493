"""The one-step Lipschitz residual map on the base's latent space: identity at initialisation,
exact log-determinant, a bijection (Lipschitz constant below 1, inverse by fixed point), periodic
in the torsions."""
import math

import numpy as np
import pytest
import torch

from molsample.coords.base import StructuredBase
from molsample.coords.flow import LipschitzResidualMap, OneStepSampler
from molsample.coords.target import InternalCoordinateTarget, wrap


@pytest.fixture(scope="module")
def sampler(aldp_md):
    cart, ic, x, lw = aldp_md
    base = StructuredBase.fit(ic, x, lw, cart.topology)
    flow = LipschitzResidualMap(len(base.soft), base.n_linear, hidden=32, generator=torch.Generator().manual_seed(0))
    return OneStepSampler(base, InternalCoordinateTarget(cart, ic=ic), flow)


def _opened(flow, value=3.0):
    """A copy of the map with its gate open (tanh(3) = 0.995), i.e. far from the identity."""
    other = LipschitzResidualMap(flow.k, flow.m, hidden=flow.weights[0].shape[0],
                                 generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        other.gate.fill_(value)
        for b in other.biases:
            b.normal_(0, 0.5, generator=torch.Generator().manual_seed(6))
    return other


def test_at_initialisation_the_map_is_the_identity_and_the_density_is_the_bases(sampler):
    with torch.no_grad():
        d = sampler.draw(500, torch.Generator().manual_seed(1))
    assert torch.equal(d["z0"], d["z1"])
    assert torch.allclose(sampler.base.log_prob(d["y"]), d["log_q"], atol=1e-9)


def test_a_closed_gate_skips_the_network_without_gradients_and_keeps_it_with_them(sampler, monkeypatch):
    z0, _ = sampler.latent(300, torch.Generator().manual_seed(2))
    calls = []
    original = type(sampler.flow).log_det
    monkeypatch.setattr(type(sampler.flow), "log_det", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    z_grad, ld_grad, sg_grad = sampler.run(z0)                    # gradients on: the full pass (the gate learns)
    assert calls and torch.allclose(ld_grad, torch.zeros_like(ld_grad), atol=1e-12)
    calls.clear()
    with torch.no_grad():
        z_skip, ld_skip, sg_skip = sampler.run(z0)
    assert not calls                                              # gate exactly 0 and no gradients: skipped
    assert torch.allclose(z_skip, z_grad.detach(), atol=1e-15) and torch.equal(ld_skip, torch.zeros(300).double())
    assert (sg_skip > 0).all() and (sg_grad > 0).all()
    opened = OneStepSampler(sampler.base, sampler.target, _opened(sampler.flow))
    monkeypatch.setattr(type(opened.flow), "log_det", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    with torch.no_grad():
        z_open, ld_open, _ = opened.run(z0)
    assert calls and ld_open.abs().min() > 0 and not torch.allclose(z_open, z0)


def test_log_det_is_the_slogdet_of_the_autograd_jacobian_and_positive(sampler):
    flow = _opened(sampler.flow)
    z, _ = sampler.latent(6, torch.Generator().manual_seed(2))
    log_det, sign = flow.log_det(z)
    for zi, ld in zip(z, log_det):
        jac = torch.autograd.functional.jacobian(lambda v: flow.step(v[None])[0], zi)
        s, la = torch.linalg.slogdet(jac)
        assert s > 0 and abs(float(la) - float(ld.detach())) < 1e-10
    assert (sign > 0).all()


def test_the_velocity_is_lipschitz_below_the_bound_and_the_step_inverts_by_fixed_point(sampler):
    flow = _opened(sampler.flow)
    weights = flow.normalised()
    z, _ = sampler.latent(64, torch.Generator().manual_seed(3))
    jac = torch.func.vmap(torch.func.jacfwd(lambda zi: flow.velocity(zi, weights)))(z)
    assert torch.linalg.matrix_norm(jac, ord=2).max() < flow.lipschitz
    z1 = flow.step(z, weights)
    assert (z1 - z).abs().max() > 0.05                          # it moves
    guess = z1.clone()
    for _ in range(200):                                        # z = z1 - v(z): a contraction
        guess = z1 - flow.velocity(guess, weights)
        guess = torch.cat([wrap(guess[:, : flow.k]), guess[:, flow.k:]], 1)
    d = guess - z
    d[:, : flow.k] = wrap(d[:, : flow.k])
    assert d.abs().max() < 1e-9


def test_the_velocity_is_periodic_in_the_torsions(sampler):
    flow = _opened(sampler.flow)
    w = flow.normalised()
    z, _ = sampler.latent(16, torch.Generator().manual_seed(4))
    shifted = z.clone()
    shifted[:, : flow.k] += 2 * math.pi * torch.randint(-2, 3, (16, flow.k), generator=torch.Generator().manual_seed(7))
    assert torch.allclose(flow.velocity(z, w), flow.velocity(shifted, w), atol=1e-10)


def test_lipschitz_bound_must_be_below_one():
    with pytest.raises(ValueError, match="lipschitz"):
        LipschitzResidualMap(2, 3, lipschitz=1.0)


def test_reverse_kl_has_finite_gradients_for_every_parameter(sampler):
    flow = sampler.flow
    flow.zero_grad()
    loss, logs = sampler.reverse_kl(32, torch.Generator().manual_seed(8))
    loss.backward()
    assert np.isfinite(logs["loss"]) and logs["left_out"] == 0
    assert flow.gate.grad is not None and torch.isfinite(flow.gate.grad) and flow.gate.grad != 0


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_closed_form_jacobian_equals_forward_mode_autodiff(sampler, layers):
    flow = LipschitzResidualMap(sampler.flow.k, sampler.flow.m, hidden=24, layers=layers,
                                generator=torch.Generator().manual_seed(layers))
    with torch.no_grad():
        flow.gate.fill_(1.5)
        for b in flow.biases:
            b.normal_(0, 0.5, generator=torch.Generator().manual_seed(9))
    w = flow.normalised()
    z, _ = sampler.latent(20, torch.Generator().manual_seed(7))
    ref = torch.func.vmap(torch.func.jacfwd(lambda zi: flow.velocity(zi, w)))(z)
    assert torch.allclose(flow.jacobian(z, w), ref, atol=1e-12, rtol=0)


def _opened_conditioned(sampler, seed=5):
    flow = LipschitzResidualMap(sampler.flow.k, sampler.flow.m, hidden=24, step_conditioned=True,
                                generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        flow.gate.fill_(2.0)
        for b in flow.biases:
            b.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed + 1))
    return flow


@pytest.mark.parametrize("steps", [1, 3])
def test_the_k_step_map_density_is_the_change_of_variables_of_the_whole_chain(sampler, steps):
    """K steps of a step-conditioned map: log q of each draw equals log p_base(z0) - log|det| of the
    composite map by autograd (the base's constant Jacobian aside), and every step's det is positive."""
    flow = _opened_conditioned(sampler)
    chain = OneStepSampler(sampler.base, sampler.target, flow)
    z0, log_p = chain.latent(5, torch.Generator().manual_seed(3))
    z1, log_det, sign = chain.run(z0, steps=steps)
    assert (sign > 0).all()

    def composite(v):
        z = v[None]
        for i in range(steps):
            z = flow.step(z, None, i / steps, 1.0 / steps)
        return z[0]
    for zi, ld in zip(z0, log_det):
        s, la = torch.linalg.slogdet(torch.autograd.functional.jacobian(composite, zi))
        assert s > 0 and abs(float(la) - float(ld.detach())) < 1e-9
    # the time inputs matter: the same map at another (t, d) is another step
    w = flow.normalised()
    assert not torch.allclose(flow.velocity(z0, w, 0.0, 1.0), flow.velocity(z0, w, 0.5, 0.5))


def test_self_consistency_vanishes_at_the_identity_and_not_for_an_opened_map(sampler):
    flow = LipschitzResidualMap(sampler.flow.k, sampler.flow.m, hidden=24, step_conditioned=True,
                                generator=torch.Generator().manual_seed(1))
    at_identity = OneStepSampler(sampler.base, sampler.target, flow)
    loss, logs = at_identity.self_consistency(64, torch.Generator().manual_seed(0), (1, 2, 4))
    assert float(loss.detach()) == 0.0 and logs["sc_steps"] in (2, 4)
    opened = OneStepSampler(sampler.base, sampler.target, _opened_conditioned(sampler))
    loss, _ = opened.self_consistency(64, torch.Generator().manual_seed(0), (1, 2, 4))
    assert float(loss.detach()) > 1e-6
    loss.backward()
    assert opened.flow.gate.grad is not None and opened.flow.gate.grad != 0


def test_a_single_step_map_refuses_more_steps(sampler):
    z0, _ = sampler.latent(4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="not step-conditioned"):
        sampler.run(z0, steps=2)


def test_flow_matching_is_zero_for_the_exact_velocity_to_one_point_on_the_torus(sampler, monkeypatch):
    """With every data point at one z1, the exact velocity at (z, t) is (wrap(s1 - s) / (1 - t), (eps1 - eps) /
    (1 - t)): its loss vanishes only if the interpolant goes the short way round the circle (pairs that cross
    +-pi included), and the straight chord's velocity does not."""
    k = len(sampler.base.soft)
    step = LipschitzResidualMap(k, sampler.base.n_linear, hidden=8, step_conditioned=True)
    fm = OneStepSampler(sampler.base, sampler.target, step)
    z1 = fm.latent(1, torch.Generator().manual_seed(3))[0]
    z1[0, 0] = 3.0                                           # near +pi: many base draws cross the branch cut
    batch = z1.expand(512, -1)

    def exact(z, weights, t, d):
        ds, de = wrap(z1[:, :k] - z[:, :k]), z1[:, k:] - z[:, k:]
        return torch.cat([ds, de], 1) / (1 - t)[:, None]

    monkeypatch.setattr(step, "velocity", exact)
    loss, logs = fm.flow_matching(batch, torch.Generator().manual_seed(4))
    assert loss < 1e-18 and logs["fm_loss"] == float(loss)

    def chord(z, weights, t, d):                             # the unwrapped difference: the long way round
        ds, de = z1[:, :k] - z[:, :k], z1[:, k:] - z[:, k:]
        return torch.cat([ds, de], 1) / (1 - t)[:, None]

    monkeypatch.setattr(step, "velocity", chord)
    assert fm.flow_matching(batch, torch.Generator().manual_seed(4))[0] > 0.1
    with pytest.raises(ValueError, match="step_conditioned"):
        OneStepSampler(sampler.base, sampler.target, sampler.flow).flow_matching(batch, torch.Generator())


def test_latent_of_the_base_inverts_from_latent(sampler):
    z, _ = sampler.base.sample_latent(64, torch.Generator().manual_seed(8))
    y, ok = sampler.base.from_latent(z)
    assert ok.all() and torch.allclose(sampler.base.to_latent(y), z, atol=1e-9)


def test_the_inverse_and_the_likelihood_of_data_points_match_the_draws(sampler):
    """Points drawn through the map come back to their base draws by the fixed-point inverse, and the
    likelihood the maximum-likelihood loss computes is the density of the draws."""
    flow = _opened(sampler.flow)
    chain = OneStepSampler(sampler.base, sampler.target, flow)
    z0, log_p = chain.latent(64, torch.Generator().manual_seed(11))
    with torch.no_grad():
        z1 = flow.step(z0)
        log_det, _ = flow.log_det(z0)
    back, residual = chain.inverse(z1)
    d = back - z0
    d[:, : flow.k] = wrap(d[:, : flow.k])
    assert residual < 1e-10 and d.abs().max() < 1e-9
    nll, logs = chain.max_likelihood(z1)
    assert abs(float(nll.detach()) + float((log_p - log_det).mean().detach())) < 1e-8 and logs["ml_inverse_residual"] < 1e-10


def test_the_implicit_gradient_of_the_likelihood_equals_finite_differences(sampler):
    """d nll / d theta through the inverse (implicit function theorem) against central differences of the exact
    negative log-likelihood, re-inverted at theta +- h, for the gate and one weight of every layer."""
    flow = _opened(sampler.flow, value=1.0)
    chain = OneStepSampler(sampler.base, sampler.target, flow)
    z0, _ = chain.latent(16, torch.Generator().manual_seed(12))
    with torch.no_grad():
        z1 = flow.step(z0) + 0.05 * torch.randn(z0.shape, generator=torch.Generator().manual_seed(13), dtype=z0.dtype)
    flow.zero_grad()
    nll, _ = chain.max_likelihood(z1)
    nll.backward()
    params = [(flow.gate, ())] + [(w, (1, 2)) for w in flow.weights]
    for p, idx in params:
        analytic = float(p.grad[idx])
        h = 1e-6
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                p[idx] += sign * h
            with torch.no_grad():
                values.append(float(chain.max_likelihood(z1)[0]))
            with torch.no_grad():
                p[idx] -= sign * h
        numeric = (values[0] - values[1]) / (2 * h)
        assert abs(analytic - numeric) < 1e-6 * max(1.0, abs(numeric)), (idx, analytic, numeric)
