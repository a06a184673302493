"""The cosine schedule and the priors (Gaussian, harmonic bond-graph) against analytic answers."""
from scipy import integrate as sci_integrate
import torch

from molsample.flow import CosineSchedule, Prior, Space
from molsample.testing import random_orthogonal

SCHED = CosineSchedule(s0=2.0)


def test_cosine_schedule_end_points_and_integral():
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    b = SCHED.beta(t)
    assert abs(b[0].item() - 5.0) < 0.01 and abs(b[1].item() - 0.005) < 1e-9
    for t0, t1 in [(0.0, 1.0), (0.25, 0.3125), (0.9, 1.0)]:
        ref, _ = sci_integrate.quad(lambda s: SCHED.beta(torch.tensor(s, dtype=torch.float64)).item(), t0, t1)
        got = SCHED.int_beta(torch.tensor(t0, dtype=torch.float64), torch.tensor(t1, dtype=torch.float64))
        assert abs(got.item() - ref) < 1e-10


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
