"""The torch force field against OpenMM's Reference platform, and its guards."""
import numpy as np
import openmm
import pytest
import torch
from openmm import app

from molsample.targets import (OpenMMEvaluator, SystemBuildError, TorchForceField, UnsupportedForceError,
                               load_target)
from molsample.targets.forcefield import soft_floor

from conftest import ROOT, random_rotation


@pytest.fixture(scope="module", params=["aldp", "aldp-vacuum"])
def target(request):
    return load_target(request.param)


def test_fixture_is_far_from_minimum(target, aldp_conformations):
    u = target.energy(torch.as_tensor(aldp_conformations))
    u0 = target.energy(torch.as_tensor(target.positions[None]))
    assert len(aldp_conformations) >= 200
    assert float((u - u0).min()) > 10.0   # every conformation at least 10 kT above the built structure


def test_float64_matches_openmm_reference(target, aldp_conformations):
    e_ref, f_ref = OpenMMEvaluator(target.system, "Reference")(aldp_conformations)
    x = torch.tensor(aldp_conformations, requires_grad=True)
    e = target.energy_kj(x)
    (g,) = torch.autograd.grad(e.sum(), x)
    assert np.abs(e.detach().numpy() - e_ref).max() <= 1e-3
    assert np.abs(-g.numpy() - f_ref).max() <= 1e-3


def test_float32_close_to_openmm_reference(target, aldp_conformations):
    e_ref, f_ref = OpenMMEvaluator(target.system, "Reference")(aldp_conformations)
    x = torch.tensor(aldp_conformations, dtype=torch.float32, requires_grad=True)
    e = target.energy_kj(x)
    (g,) = torch.autograd.grad(e.sum(), x)
    assert e.dtype == torch.float32
    assert np.abs(e.detach().double().numpy() - e_ref).max() <= 0.05
    assert np.abs(-g.double().numpy() - f_ref).max() / np.abs(f_ref).max() <= 1e-4


def test_reduced_energy_is_energy_over_kt(target, aldp_conformations):
    x = torch.as_tensor(aldp_conformations[:8])
    kt = 0.0083144626 * 300.0
    assert torch.allclose(target.energy(x), target.energy_kj(x) / kt, rtol=1e-6)


def _single_torsion_system(phase: float, periodicity: int):
    system = openmm.System()
    for _ in range(4):
        system.addParticle(12.0)
    force = openmm.PeriodicTorsionForce()
    force.addTorsion(0, 1, 2, 3, periodicity, phase, 3.7)
    system.addForce(force)
    return system


@pytest.mark.parametrize("phase,n", [(0.7, 1), (2.1, 2), (-1.3, 3)])
def test_torsion_convention_with_general_phases(phase, n):
    system = _single_torsion_system(phase, n)
    x = np.random.default_rng(n).normal(size=(50, 4, 3)) * 0.2
    e_ref, f_ref = OpenMMEvaluator(system)(x)
    ff = TorchForceField.from_system(system)
    xt = torch.tensor(x, requires_grad=True)
    e = ff(xt)
    (g,) = torch.autograd.grad(e.sum(), xt)
    assert np.abs(e.detach().numpy() - e_ref).max() < 1e-9
    assert np.abs(-g.numpy() - f_ref).max() < 1e-7


def test_chunked_evaluation_equals_one_batch_with_gradients(target, aldp_conformations):
    x = torch.tensor(aldp_conformations, requires_grad=True)
    target.energy_chunk = len(x)
    try:
        u_one = target.energy(x)
        (g_one,) = torch.autograd.grad(u_one.sum(), x)
        target.energy_chunk = 37                      # chunks of 37 rows and a shorter last one
        u_chunked = target.energy(x)
        (g_chunked,) = torch.autograd.grad(u_chunked.sum(), x)
    finally:
        del target.energy_chunk                       # back to the class's value
    # the same sums up to the order of vectorised additions (rows are independent)
    assert torch.allclose(u_one, u_chunked, rtol=1e-13, atol=1e-12)
    assert torch.allclose(g_one, g_chunked, rtol=1e-12, atol=1e-10)
    assert torch.allclose(target.energy_kj(x.detach()[:5]) / target.kt, u_one.detach()[:5], rtol=1e-13)


def test_overlapping_atoms_give_large_finite_energies(target):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.as_tensor(target.positions)
    cases = [torch.zeros_like(x0),                                     # every atom at one point
             x0.clone().index_copy_(0, torch.tensor([5]), x0[4:5]),    # two bonded atoms coincide
             x0.clone().index_copy_(0, torch.tensor([10]), x0[0:1]),   # two non-bonded atoms coincide
             torch.linspace(0, 1, 22)[:, None] * torch.tensor([1.0, 0.5, 0.2], dtype=torch.float64),  # colinear
             torch.rand(22, 3, generator=gen, dtype=torch.float64) * 1e-3,
             x0 * 1e3]                                                 # absurdly stretched
    for dtype in (torch.float32, torch.float64):
        x = torch.stack(cases).to(dtype).requires_grad_(True)
        u = target.energy(x)
        (g,) = torch.autograd.grad(u.sum(), x)
        assert torch.isfinite(u).all() and torch.isfinite(g).all(), dtype
        assert (u[:3] > 1e3).all()


def test_soft_floor_is_identity_above_cap_and_c2_at_it():
    c2 = 0.0025
    a = 0.5 * c2

    def derivatives(r2):
        r2 = r2.clone().requires_grad_(True)
        y = soft_floor(r2, c2)
        (d1,) = torch.autograd.grad(y.sum(), r2, create_graph=True)
        (d2,) = torch.autograd.grad(d1.sum(), r2)
        return y.detach(), d1.detach(), d2

    r2 = torch.linspace(0.0, 0.01, 2001, dtype=torch.float64)
    y, d1, _ = derivatives(r2)
    above = r2 >= c2
    assert torch.equal(y[above], r2[above])
    assert (y >= 0.5 * c2).all() and (d1 > 0).all()             # floored and monotone
    s = torch.tensor([1e-5, 1e-6, 1e-7, 1e-8], dtype=torch.float64)
    _, d1, d2 = derivatives(c2 - s)
    # approaching the cap from below, y' -> 1 and y'' -> 0 (C2), at the rates of a tanh(s / a)
    assert ((d1 - 1).abs() <= 1.01 * s**2 / a**2).all()
    assert (d2.abs() <= 2.01 * s / a**2).all()


def test_nan_positions_raise(target):
    x = torch.as_tensor(target.positions[None]).clone()
    x[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        target.energy(x)


def test_batch_shape_is_validated(target):
    x = torch.as_tensor(target.positions)
    with pytest.raises(ValueError, match=r"shape \(B, 22, 3\)"):
        target.energy(x)
    with pytest.raises(ValueError, match=r"shape \(B, 22, 3\)"):
        target.energy(x[None, :21])
    assert target.energy(x[None]).shape == (1,)


def test_hessian_vector_products_are_finite_and_match_finite_differences(target, aldp_conformations):
    x = torch.tensor(aldp_conformations[:16])
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def grad(y, create_graph=False):
        y = y.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(target.energy(y).sum(), y, create_graph=create_graph)
        return g, y

    g, xg = grad(x, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), xg)
    h = 1e-6
    fd = (grad(x + h * v)[0] - grad(x - h * v)[0]) / (2 * h)
    assert torch.isfinite(hv).all()
    assert ((hv - fd).abs().max() / fd.abs().max()) < 1e-5


def test_energy_is_invariant_to_rotation_translation_and_reflection(target, aldp_conformations):
    gen = torch.Generator().manual_seed(3)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        x = torch.as_tensor(aldp_conformations[:32], dtype=dtype)
        u = target.energy(x)
        for reflect in (False, True):
            q = random_rotation(gen, 3, dtype, reflect)
            shift = torch.randn(1, 1, 3, generator=gen).to(dtype)
            u2 = target.energy(x @ q.T + shift)
            # mirror images have the same energy: every torsion phase is 0 or pi here
            assert ((u2 - u).abs() / u.abs().clamp(min=1)).max() < tol
    assert target.mirror_symmetric


def test_unsupported_force_is_named():
    system = openmm.System()
    system.addParticle(1.0)
    system.addForce(openmm.CustomExternalForce("x^2"))
    with pytest.raises(UnsupportedForceError, match="CustomExternalForce"):
        TorchForceField.from_system(system)


def test_unsupported_nonbonded_method_and_constraints():
    pdb = app.PDBFile(str(ROOT / "systems/aldp/aldp.pdb"))
    ff = app.ForceField("amber99sbildn.xml")
    system = ff.createSystem(pdb.topology, nonbondedMethod=app.CutoffNonPeriodic, constraints=None)
    with pytest.raises(UnsupportedForceError, match="only NoCutoff"):
        TorchForceField.from_system(system)
    system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    with pytest.raises(UnsupportedForceError, match="constraints"):
        TorchForceField.from_system(system)


def test_user_system_from_yaml_and_unmatched_residue(tmp_path):
    import shutil
    shutil.copy(ROOT / "systems/aldp/aldp.pdb", tmp_path / "mol.pdb")
    (tmp_path / "mol.yaml").write_text(
        "name: mymol\nkind: openmm\npdb: mol.pdb\nforcefield: [amber99sbildn.xml]\ntemperature: 350\n")
    target = load_target(tmp_path / "mol.yaml")
    assert target.temperature == 350.0 and target.n_particles == 22
    # drop the alanine's hydrogens: no template matches the residue any more
    lines = [ln for ln in (tmp_path / "mol.pdb").read_text().splitlines()
             if not (ln.startswith("ATOM") and ln[17:20] == "ALA" and ln[12:16].strip().startswith("H"))
             and not ln.startswith("CONECT")]
    (tmp_path / "mol.pdb").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemBuildError, match=r"cannot match.*ALA"):
        load_target(tmp_path / "mol.yaml")


@pytest.mark.cuda
def test_cuda_matches_cpu(aldp_conformations):
    target = load_target("aldp")
    x = torch.as_tensor(aldp_conformations[:64])
    u_cpu = target.energy(x)
    u_gpu = target.energy(x.cuda())
    assert u_gpu.device.type == "cuda"
    assert torch.allclose(u_gpu.cpu(), u_cpu, rtol=1e-10, atol=1e-8)
    assert torch.allclose(target.score(x.cuda()).cpu(), target.score(x), rtol=1e-8, atol=1e-6)
