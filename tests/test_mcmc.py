"""MALA with parallel tempering against exact samples of an asymmetric double well."""
import numpy as np
import torch

from molsample.mcmc import mala
from molsample.targets.analytic import ManyWell


def run(temperatures):
    target = ManyWell(dim=4)                 # two copies of FAB's double well: barrier ~9 kT, p(a > 0) = 0.85
    res = mala(target, n_chains=256, steps=2000, burn=500, thin=10, step=0.05, seed=1, init_scale=0.5,
               temperatures=temperatures, progress=False)
    exact = target.sample_reference(40000, torch.Generator().manual_seed(0)).numpy()
    x = res.x.reshape(-1, 4)
    return target, res, x, exact


def test_tempered_mala_matches_exact_samples_across_a_barrier():
    target, res, x, exact = run((1.0, 1.6, 2.5, 4.0, 6.4))
    assert 0.4 < res.acceptance < 0.8
    assert np.abs((x[:, ::2] > 0).mean(0) - (exact[:, ::2] > 0).mean(0)).max() < 0.04
    assert np.abs((x**2).mean(0) - (exact**2).mean(0)).max() < 0.1
    assert np.allclose(res.energy.reshape(-1), target.energy(torch.as_tensor(x)).numpy(), atol=1e-8)


def test_without_tempering_the_chains_keep_their_starting_wells():
    _, _, x, exact = run((1.0,))               # the failure the tempering exists for
    assert np.abs((x[:, ::2] > 0).mean(0) - (exact[:, ::2] > 0).mean(0)).max() > 0.15
