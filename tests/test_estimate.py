"""Estimators against closed forms, pymbar, and their 1/sqrt(M) convergence."""
import math

import numpy as np
import pytest
import torch
from pymbar.other_estimators import exp as pymbar_exp

from molsample.estimate import delta_f, elbo, ess, log_z, snis
from molsample.flow import Prior, Space, Velocity
from molsample.sampler import integrate



class _Still(Velocity):
    """b = 0: the identity map, q = the prior."""

    def __call__(self, x, t, d, **kw):
        return 0.0 * x

def test_equal_weights():
    lw = np.full(1000, -3.2)
    assert log_z(lw).value == pytest.approx(-3.2) and ess(lw).value == pytest.approx(1.0)
    assert elbo(lw).value == pytest.approx(-3.2) and elbo(lw).stderr < 1e-12


def test_log_z_agrees_with_pymbar_exp():
    rng = np.random.default_rng(0)
    lw = rng.normal(1.5, 0.7, 5000)
    est = log_z(lw, n_boot=500, rng=rng)
    ref = pymbar_exp(-lw)                       # Delta f = -log mean exp(-w), with w = -log w
    assert est.value == pytest.approx(-ref["Delta_f"], abs=1e-10)
    assert est.stderr == pytest.approx(ref["dDelta_f"], rel=0.15)


def test_ess_of_lognormal_weights():
    # log w ~ N(0, s^2): Kish ESS -> exp(-s^2)
    lw = np.random.default_rng(1).normal(0, 0.8, 400_000)
    assert ess(lw).value == pytest.approx(math.exp(-0.64), rel=0.02)


def test_delta_f_on_two_state_data_with_a_known_answer():
    # states A and B sampled uniformly (q = 1/2 each) with target weights pi(B)/pi(A) = e^{-1.3}
    rng = np.random.default_rng(2)
    in_b = rng.random(20_000) < 0.5
    lw = np.where(in_b, -1.3, 0.0)
    est = delta_f(lw, ~in_b, in_b, rng=rng)
    assert est.value == pytest.approx(1.3 + math.log((~in_b).mean()) - math.log(in_b.mean()), abs=1e-12)
    assert abs(est.value - 1.3) < 4 * est.stderr + 1e-12


def test_snis_and_nan_handling():
    lw = np.array([0.0, math.log(3.0), np.nan, -np.inf])
    f = np.array([1.0, 2.0, 100.0, 50.0])
    est = snis(lw, f)
    assert est.value == pytest.approx((1 + 6) / 4) and est.n_nonfinite == 1 and est.n == 3


def test_self_normalised_log_z_converges_at_rate_one_over_sqrt_m():
    # q = N(0, 1.5^2) in 3D (one linear step), target exp(-|x - 0.3|^2 / 2) with log Z = 1.5 log(2 pi)
    space = Space((3,))
    prior = Prior(space, 1.5)
    true = 1.5 * math.log(2 * math.pi)
    gen = torch.Generator().manual_seed(3)
    errors = {}
    for m in (500, 8000):
        vals = []
        for _ in range(60):
            x0 = prior.sample(m, gen)
            x, log_q, *_ = integrate(_Still(), prior, x0, 1, "exact")
            log_w = -0.5 * ((x - 0.3) ** 2).sum(1) - log_q
            vals.append(log_z(log_w.numpy(), n_boot=2).value - true)
        errors[m] = np.sqrt(np.mean(np.square(vals)))
    assert errors[500] / errors[8000] == pytest.approx(4.0, rel=0.3)


def test_delta_f_from_a_population_is_the_log_odds_with_the_delta_method_error():
    """One dF-from-population function for every tool: -log(p / (1 - p)), error dp / (p (1 - p)), the
    infinities at p = 0 and 1 without an error, NaN kept; it agrees with delta_f on weighted samples."""
    import math
    from molsample.estimate import delta_f_from_population, log_odds
    e = delta_f_from_population(0.2, 0.01)
    assert abs(e.value - math.log(4.0)) < 1e-15 and abs(e.stderr - 0.01 / 0.16) < 1e-15
    assert log_odds(0.0) == math.inf and log_odds(1.0) == -math.inf and math.isnan(log_odds(math.nan))
    assert delta_f_from_population(0.0, 0.0).value == math.inf and math.isnan(delta_f_from_population(0.0, 0.0).stderr)
    rng = np.random.default_rng(0)
    lw = rng.normal(size=4000)
    in_b = rng.random(4000) < 0.3
    w = np.exp(lw)
    p = w[in_b].sum() / w.sum()
    assert abs(delta_f_from_population(p, 0.0).value - delta_f(lw, ~in_b, in_b, n_boot=0).value) < 1e-12
