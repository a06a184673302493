"""Analytic targets: normalisation by quadrature, energies against scipy, exact samplers."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from molsample.targets import Funnel, GaussianMixture, ManyWell, NoReferenceSamplerError, load_target


def test_gmm40_is_normalised_by_quadrature():
    target = load_target("gmm40")
    assert target.means.shape == (40, 2) and target.means.abs().max() <= 40
    g = torch.linspace(-48, 48, 1601, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    u = target.energy(torch.stack([xx.ravel(), yy.ravel()], 1))
    z = torch.exp(-u).sum() * (g[1] - g[0]) ** 2
    assert abs(math.log(z.item()) - target.log_z) < 1e-6


def test_gmm_energy_against_scipy_and_seed_pinning():
    target = GaussianMixture(n_modes=5, dim=3, box=10, std=1.5, seed=7)
    means = np.random.default_rng(7).uniform(-10, 10, size=(5, 3))
    x = np.random.default_rng(0).normal(size=(10, 3)) * 5
    ref = np.log(np.mean([stats.multivariate_normal(m, 1.5**2 * np.eye(3)).pdf(x) for m in means], axis=0))
    assert np.allclose(-target.energy(torch.tensor(x)).numpy(), ref, rtol=1e-10)


def test_funnel_energy_against_scipy_and_2d_quadrature():
    target = Funnel(dim=10)
    x = np.random.default_rng(1).normal(size=(20, 10))
    ref = stats.norm(0, 3).logpdf(x[:, 0]) + stats.norm(0, np.exp(x[:, :1] / 2)).logpdf(x[:, 1:]).sum(1)
    assert np.allclose(-target.energy(torch.tensor(x)).numpy(), ref, rtol=1e-10)
    f2 = Funnel(dim=2)
    dens = lambda x1, x0: math.exp(-f2.energy(torch.tensor([[x0, x1]], dtype=torch.float64)).item())
    z, _ = integrate.dblquad(dens, -25, 25, lambda x0: -12 * math.exp(x0 / 2), lambda x0: 12 * math.exp(x0 / 2))
    assert abs(z - 1.0) < 1e-6


def test_manywell_log_z_by_independent_quadrature():
    target = load_target("manywell32")
    za, _ = integrate.quad(lambda a: math.exp(-a**4 + 6 * a**2 + 0.5 * a), -np.inf, np.inf)
    expected = 16 * (math.log(za) + 0.5 * math.log(2 * math.pi))
    assert abs(target.log_z - expected) < 1e-6
    assert abs(target.log_z - 164.6957) < 1e-4


@pytest.mark.parametrize("name", ["gmm40", "funnel10", "manywell32"])
def test_exact_samplers_match_moments(name):
    target = load_target(name)
    gen = torch.Generator().manual_seed(0)
    x = target.sample_reference(200_000, generator=gen)
    assert x.shape == (200_000, target.dim) and x.dtype == torch.float64
    if name == "gmm40":
        expected_mean, expected_var0 = target.means.mean(0), target.means[:, 0].var(unbiased=False) + 1.0
        assert torch.allclose(x.mean(0), expected_mean, atol=0.2)
        assert abs(x[:, 0].var().item() / expected_var0.item() - 1) < 0.02
    elif name == "funnel10":
        assert abs(x[:, 0].var().item() - 9.0) < 0.15
        z = x[:, 1:] * torch.exp(-0.5 * x[:, :1])          # standard normal given x0
        assert abs(z.var().item() - 1.0) < 0.01 and abs(z.mean().item()) < 0.01
    else:
        m1, _ = integrate.quad(lambda a: a * math.exp(ManyWell.log_p_a(a)), -6, 6)
        z, _ = integrate.quad(lambda a: math.exp(ManyWell.log_p_a(a)), -6, 6)
        assert abs(x[:, 0::2].mean().item() - m1 / z) < 0.01
        assert abs(x[:, 1::2].var().item() - 1.0) < 0.01


def test_particle_targets_have_no_exact_sampler():
    with pytest.raises(NoReferenceSamplerError, match="molsample md"):
        load_target("lj13").sample_reference(10)


@pytest.mark.parametrize("name,dim,n_dw,sep", [("mw54", 5, 5, 4.0), ("mw52", 50, 5, 2.0)])
def test_scds_multiwell_log_z_energy_and_sampler(name, dim, n_dw, sep):
    target = load_target(name)
    za, _ = integrate.quad(lambda a: math.exp(-((a * a - sep) ** 2)), -np.inf, np.inf)
    assert abs(target.log_z - (n_dw * math.log(za) + 0.5 * (dim - n_dw) * math.log(2 * math.pi))) < 1e-6
    x = np.random.default_rng(0).normal(size=(7, dim))
    ref = ((x[:, :n_dw] ** 2 - sep) ** 2).sum(1) + 0.5 * (x[:, n_dw:] ** 2).sum(1)
    assert np.allclose(target.energy(torch.tensor(x)).numpy(), ref)
    s = target.sample_reference(200_000, torch.Generator().manual_seed(1))
    m2, _ = integrate.quad(lambda a: a * a * math.exp(-((a * a - sep) ** 2)), -np.inf, np.inf)
    assert abs(s[:, :n_dw].pow(2).mean().item() - m2 / za) < 0.01
    assert abs(s[:, 0].mean().item()) < 0.02


def test_scds_gmm9_grid():
    target = load_target("gmm9")
    assert target.means.shape == (9, 2) and set(target.means[:, 0].tolist()) == {-5.0, 0.0, 5.0}
    assert target.std == pytest.approx(math.sqrt(0.3))
    g = torch.linspace(-10, 10, 1001, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    z = torch.exp(-target.energy(torch.stack([xx.ravel(), yy.ravel()], 1))).sum() * (g[1] - g[0]) ** 2
    assert abs(z.item() - 1.0) < 1e-6
