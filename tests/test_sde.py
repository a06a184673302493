"""The Euler-Maruyama path weights against the true score as the steps shrink."""
import torch

from molsample.flow import CosineSchedule, Prior, Space
from molsample.nn import LangevinDrift, MLPCore
from molsample.targets import GaussianMixture

SCHED = CosineSchedule(s0=2.0)


def test_path_weights_are_exact_for_the_true_score_as_steps_shrink():
    # target = prior N(0, s0^2) (normalised, log Z = 0): the Langevin drift with NN = 0 is the exact
    # score, so the ELBO of the N-step path tends to log Z = 0 and its variance to 0 as N grows
    from molsample.sde import simulate_path
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
