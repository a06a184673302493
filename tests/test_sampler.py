"""The K-step sampler: log q against the closed form of a linear drift, step schedules, and inverting the map."""
import pytest
import torch

from molsample.flow import CosineSchedule, Prior, Space
from molsample.sampler import integrate
from molsample.targets import GaussianMixture
from molsample.testing import RandomLinearFlow, small_drift

SCHED = CosineSchedule(s0=2.0)


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 32, [0.5, 0.25, 0.125, 0.125], [0.125, 0.375, 0.5], [0.3, 0.7]])
def test_k_step_log_q_matches_closed_form_for_a_linear_drift(steps):
    # uniform K and non-uniform step sizes: x_K = L x_0 with L the product of (I + d_k M(t_k))
    dim, s0 = 5, 1.7
    space = Space((dim,))
    prior = Prior(space, s0)
    v = RandomLinearFlow(dim)
    x0 = prior.sample(200, torch.Generator().manual_seed(7))
    x, log_q, bad, *_ = integrate(v, prior, x0, steps, "exact")
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


def _small_flow(n: int, seed: int):
    """A small drift on a 3D Gaussian mixture, its prior and n prior draws."""
    target = GaussianMixture(n_modes=3, dim=3, box=1.0, std=1.0)
    space = Space(target.event_shape)
    prior = Prior(space, SCHED.s0)
    return small_drift(space, target, std=0.1), prior, prior.sample(n, torch.Generator().manual_seed(seed))


def test_inverting_the_k_step_map_recovers_log_q():
    from molsample.sampler import log_q_of
    v, prior, x0 = _small_flow(16, seed=8)
    for steps in (1, 4, [0.5, 0.25, 0.25]):
        y, log_q, bad, lip, *_ = integrate(v, prior, x0, steps, "exact")
        assert not bad.any() and float(lip.max()) < 1.0
        log_q_inv, res = log_q_of(v, prior, y, steps, tol=1e-13, max_iter=2000)
        assert res.max() < 1e-12 and (log_q_inv - log_q).abs().max() < 1e-6


def test_integrate_saves_each_sample_after_its_own_number_of_steps():
    from molsample.flow import pf_step
    v, prior, x0 = _small_flow(10, seed=2)
    save = torch.tensor([0, 1, 2, 3, 4, 4, 3, 2, 1, 0])
    for method in ("exact", None):                     # with log q: all steps; without: stops at the last save
        res = integrate(v, prior, x0, 4, method, save=save)
        for i, k in enumerate(save.tolist()):
            x = x0[i:i + 1]
            for j in range(k):
                x = pf_step(v, x, j / 4, 1 / 4)
            assert torch.allclose(res.saved[i], x[0], atol=1e-12)
        if method:
            assert torch.allclose(res.x, integrate(v, prior, x0, 4, method).x, atol=1e-12)
    with pytest.raises(ValueError, match="one step count"):
        integrate(v, prior, x0, 4, None, save=torch.full((10,), 5))
