"""Lennard-Jones clusters and DW4 against slow references, known minima and OpenMM."""
import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from molsample.targets import DoubleWell4, LennardJones, OpenMMEvaluator, load_target
from molsample.targets.structures import mackay_icosahedron

from conftest import random_rotation

def lj_double_loop(x: np.ndarray, eps=1.0, rm=1.0, tether=0.5) -> float:
    """Slow reference: one conformation (N, 3)."""
    e = 0.0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            r = np.linalg.norm(x[i] - x[j])
            e += eps * ((rm / r) ** 12 - 2 * (rm / r) ** 6)
    return e + tether * ((x - x.mean(0)) ** 2).sum()


def mackay(shells: int) -> np.ndarray:
    x = mackay_icosahedron(shells)
    assert x.shape == ({1: 13, 2: 55}[shells], 3)
    return x


@pytest.mark.parametrize("n,shells,expected", [(13, 1, -44.326801), (55, 2, -279.248470)])
def test_global_minimum_of_pair_energy(n, shells, expected):
    target = LennardJones(n)
    start = mackay(shells)
    assert start.shape == (n, 3)

    def fun(flat):
        x = torch.tensor(flat.reshape(1, n, 3), requires_grad=True)
        e = target.pair_energy(x).sum()
        (g,) = torch.autograd.grad(e, x)
        return e.item(), g.numpy().ravel()

    res = minimize(fun, start.ravel(), jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "maxiter": 5000})
    assert abs(res.fun - expected) < 1e-5


def test_vectorised_lj_matches_double_loop():
    target = LennardJones(13)
    x = mackay(1)[None] * 1.1 + np.random.default_rng(0).normal(size=(6, 13, 3)) * 0.15
    d = np.linalg.norm(x[:, :, None] - x[:, None], axis=-1) + 9 * np.eye(13)
    assert d.min() > 0.5   # above the soft cap, where the energy must be exact
    u = target.energy(torch.tensor(x)).numpy()
    assert np.allclose(u, [lj_double_loop(xi) for xi in x], rtol=1e-12)


def test_dem_convention_doubles_the_pair_part_only():
    x = torch.tensor(np.random.default_rng(1).normal(size=(4, 13, 3)))
    once, dem = LennardJones(13), LennardJones(13, convention="dem")
    tether = 0.5 * ((x - x.mean(1, keepdim=True)) ** 2).sum((1, 2))
    assert torch.allclose(dem.energy(x) - tether, 2 * (once.energy(x) - tether))
    assert load_target("lj13", convention="dem").convention == "dem"
    with pytest.raises(ValueError, match="convention"):
        LennardJones(13, convention="triple")


@pytest.mark.parametrize("n", [13, 55])
def test_lj_openmm_system_gives_the_same_reduced_energy(n):
    target = LennardJones(n)
    system, kt = target.openmm_system(temperature=120.0)
    x = mackay(1 if n == 13 else 2)[None] * 1.05 + np.random.default_rng(n).normal(size=(5, n, 3)) * 0.05
    e, f = OpenMMEvaluator(system)(x)
    xt = torch.tensor(x, requires_grad=True)
    u = target.energy(xt)
    (g,) = torch.autograd.grad(u.sum(), xt)
    assert np.allclose(e / kt, u.detach().numpy(), rtol=1e-9, atol=1e-8)
    assert np.allclose(f / kt, -g.numpy(), rtol=1e-7, atol=1e-6)


def test_lj_overlap_is_finite():
    target = LennardJones(13)
    for dtype in (torch.float32, torch.float64):
        x = torch.zeros(2, 13, 3, dtype=dtype)
        x[1, :, 0] = torch.linspace(0, 1e-3, 13)
        x.requires_grad_(True)
        u = target.energy(x)
        (g,) = torch.autograd.grad(u.sum(), x)
        assert torch.isfinite(u).all() and torch.isfinite(g).all() and (u > 1e6).all()


def dw4_double_loop(x, a=0.9, b=-4.0, c=0.0, d0=4.0):
    e = 0.0
    for i in range(4):
        for j in range(i + 1, 4):
            d = np.linalg.norm(x[i] - x[j])
            e += a * (d - d0) ** 4 + b * (d - d0) ** 2 + c
    return e


def test_dw4_matches_double_loop_and_shape():
    target = DoubleWell4()
    x = np.random.default_rng(2).normal(size=(5, 4, 2)) * 2
    assert np.allclose(target.energy(torch.tensor(x)).numpy(), [dw4_double_loop(xi) for xi in x])
    assert target.event_shape == (4, 2) and target.dof == 6
    with pytest.raises(ValueError, match=r"\(B, 4, 2\)"):
        target.energy(torch.zeros(3, 4, 3))


@pytest.mark.parametrize("name", ["lj13", "lj55", "dw4"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_particle_energies_are_e3_and_permutation_invariant(name, dtype, tol):
    target = load_target(name)
    assert target.identical_particles       # the promise this test checks: relabelling leaves u unchanged
    gen = torch.Generator().manual_seed(4)
    n, s = target.event_shape
    x = (torch.randn(8, n, s, generator=gen, dtype=torch.float64) * n ** (1 / s) * 0.6).to(dtype)
    u = target.energy(x)
    q = random_rotation(gen, s, dtype, reflect=True)
    perm = torch.randperm(n, generator=gen)
    u2 = target.energy((x @ q.T + 3.0)[:, perm])
    assert ((u2 - u).abs() / u.abs().clamp(min=1)).max() < tol


def test_molecule_atoms_are_not_interchangeable(aldp_conformations):
    """aldp says its atoms are not identical particles, and indeed swapping a carbon with a hydrogen
    changes the energy; the equivariant network then takes its node types from the force field."""
    from molsample.build import particle_types

    target = load_target("aldp")
    assert not target.identical_particles
    x = torch.as_tensor(aldp_conformations[:4])
    elements = [a.element.symbol for a in target.topology.atoms]
    i, j = elements.index("C"), elements.index("H")
    swapped = x.clone()
    swapped[:, [i, j]] = x[:, [j, i]]
    assert (target.energy(swapped) - target.energy(x)).abs().min() > 1.0
    node, edge = particle_types(target)
    assert len(set(node.tolist())) > 1 and edge is not None


def test_score_is_minus_gradient_by_finite_differences():
    target = LennardJones(13)
    x = torch.tensor(mackay(1)[None] * 1.1 + np.random.default_rng(5).normal(size=(1, 13, 3)) * 0.05)
    score = target.score(x)
    h, i = 1e-6, (0, 4, 1)
    e = torch.zeros_like(x)
    e[i] = h
    fd = (target.energy(x + e) - target.energy(x - e)) / (2 * h)
    assert abs(-score[i].item() - fd.item()) < 1e-6
