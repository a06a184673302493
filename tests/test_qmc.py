"""Randomised quasi-Monte Carlo prior draws: the right distribution, unbiased weights, lower variance."""
import numpy as np
import pytest
import torch
from scipy import stats

from molsample.flow import HarmonicPrior, Prior, SobolDraws, Space, Velocity, sobol_normal
from molsample.sde import simulate_path
from molsample.sampler import sample
from molsample.targets import GaussianMixture


def test_sobol_normal_is_standard_normal_and_seeded():
    z = sobol_normal(4096, 6, seed=3)
    assert z.shape == (4096, 6) and z.dtype == torch.float64 and torch.isfinite(z).all()
    for j in range(6):   # every coordinate is N(0, 1); Sobol' points are far more even than 4,096 draws need
        assert stats.kstest(z[:, j].numpy(), "norm").statistic < 0.005
    assert torch.equal(z, sobol_normal(4096, 6, seed=3))
    assert not torch.allclose(z, sobol_normal(4096, 6, seed=4))
    with pytest.raises(ValueError, match="n >= 1"):
        sobol_normal(0, 3, seed=0)


@pytest.mark.parametrize("case", ["vector", "particles", "harmonic"])
def test_sobol_prior_draws_follow_the_prior(case):
    if case == "vector":
        space = Space((5,))
        prior = Prior(space, 1.7)
    else:
        space = Space((5, 3), com_free=True)
        prior = (Prior(space, 1.3) if case == "particles"
                 else HarmonicPrior(space, 2.0, [(0, 1), (1, 2), (2, 3), (1, 4)], 0.3))
    x = prior.sample_qmc(8192, seed=0)
    assert x.shape == (8192, *space.event_shape)
    if space.com_free:
        assert x.mean(1).abs().max() < 1e-12
    # covariance on the space equals that of independent draws (and of the prior); log densities agree
    q = space.basis()
    flat = lambda a: a.reshape(len(a), -1) @ q
    ref = prior.sample(200000, torch.Generator().manual_seed(1))
    cov, cov_ref = torch.cov(flat(x).T), torch.cov(flat(ref).T)
    assert (cov - cov_ref).abs().max() < 0.02 * cov_ref.abs().max()
    assert abs(prior.log_prob(x).mean() - prior.log_prob(ref).mean()) < 0.02


class LinearFlow(Velocity):
    """b = A x: the K-step map is linear, x_K = L x_0, and every weight is a smooth Gaussian ratio."""

    def __init__(self, dim):
        g = torch.Generator().manual_seed(0)
        self.a = 0.1 * torch.randn(dim, dim, generator=g, dtype=torch.float64) + 0.25 * torch.eye(dim, dtype=torch.float64)

    def __call__(self, x, t, d, **kw):
        return x @ self.a.T


def test_sobol_draws_keep_the_weights_unbiased_and_cut_their_variance():
    # normalised Gaussian target (log Z = 0) wider than the map's output: Z_hat = mean w is unbiased
    # under both kinds of draws; over independent scramblings the Sobol' estimate varies far less
    dim = 4
    target = GaussianMixture(n_modes=1, dim=dim, means=[[0.3, -0.2, 0.1, 0.0]], std=1.0)
    prior, flow = Prior(Space((dim,)), 1.0), LinearFlow(dim)
    z_mc, z_qmc = [], []
    for r in range(24):
        kw = dict(dtype=torch.float64, batch_size=512)
        mc = sample(flow, prior, target, 1024, 2, "exact", torch.Generator().manual_seed(r), **kw)
        qmc = sample(flow, prior, target, 1024, 2, "exact", SobolDraws(r), **kw)
        assert qmc.info["prior_draws"] == "sobol" and mc.info["prior_draws"] == "independent"
        assert qmc.n_nonpositive_det == 0
        z_mc.append(mc.log_w.exp().mean().item()), z_qmc.append(qmc.log_w.exp().mean().item())
    z_mc, z_qmc = np.array(z_mc), np.array(z_qmc)
    sem = z_qmc.std(ddof=1) / np.sqrt(len(z_qmc))
    assert abs(z_qmc.mean() - 1.0) < 4 * sem + 1e-4
    assert abs(z_mc.mean() - 1.0) < 4 * z_mc.std(ddof=1) / np.sqrt(len(z_mc))
    assert z_qmc.std(ddof=1) < 0.2 * z_mc.std(ddof=1)


def test_sde_path_from_given_normals_is_the_path_of_those_draws():
    # the normals argument replaces the generator's draws one for one (prior point, then each step's noise)
    from molsample.nn import LangevinDrift, MLPCore
    from molsample.flow import CosineSchedule
    dim, n, n_base = 3, 64, 8
    target = GaussianMixture(n_modes=1, dim=dim, means=[[0.5, 0.0, -0.5]], std=1.0)
    space, sched = Space((dim,)), CosineSchedule(s0=1.0)
    prior = Prior(space, 1.0)
    torch.manual_seed(0)
    drift = LangevinDrift(MLPCore(space, 16, 1), target, prior, sched, clip=1e3).double()
    ref = simulate_path(drift, sched, prior, target, n, n_base, torch.Generator().manual_seed(5), torch.float64,
                        differentiable=False)
    g = torch.Generator().manual_seed(5)
    draws = [torch.randn((n, dim), generator=g, dtype=torch.float64) for _ in range(n_base + 1)]
    normals = torch.stack(draws, 1).reshape(n, -1)
    got = simulate_path(drift, sched, prior, target, n, n_base, None, torch.float64, differentiable=False,
                        normals=normals)
    assert torch.allclose(got.log_w, ref.log_w, atol=1e-12) and torch.allclose(got.states, ref.states, atol=1e-12)
    with pytest.raises(ValueError, match="normals must have shape"):
        simulate_path(drift, sched, prior, target, n, n_base, None, torch.float64, differentiable=False,
                      normals=normals[:, :-1])
