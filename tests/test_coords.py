"""Internal coordinates: Z-matrix from the bond graph, exact round trip, log|det| against autograd,
rigid-motion invariance, rings, float32/float64, CUDA."""
import mdtraj
import numpy as np
import pytest
import torch

from molsample.coords import InternalCoordinates, ZMatrixError, angle, build_zmatrix, dihedral, place
from molsample.targets import load_target
from molsample.targets.structures import build_capped_peptide

from conftest import random_rotation


def _molecule(name):
    """(mdtraj topology, 12 perturbed conformations (12, N, 3) float64 nm)."""
    if name in ("aldp", "aldp-vacuum"):
        target = load_target(name)
        top, x = target.topology, target.positions
    else:
        omm_top, x = build_capped_peptide({"proline": ("PRO",), "phenylalanine": ("PHE",),
                                           "tetrapeptide": ("ALA", "ALA", "ALA")}[name])
        top = mdtraj.Topology.from_openmm(omm_top)
    rng = np.random.default_rng(0)
    return top, x[None] + 0.01 * rng.normal(size=(12, *x.shape))


MOLECULES = ["aldp", "aldp-vacuum", "proline", "phenylalanine", "tetrapeptide"]


def _kabsch_rmsd_max(a, b):
    """Largest atom deviation after the best proper rotation and translation of b onto a, per frame."""
    out = []
    for p, q in zip(a, b):
        p0, q0 = p - p.mean(0), q - q.mean(0)
        u, _, vt = np.linalg.svd(q0.T @ p0)
        d = np.sign(np.linalg.det(u @ vt))
        r = u @ np.diag([1, 1, d]) @ vt
        out.append(np.abs(q0 @ r - p0).max())
    return max(out)


@pytest.mark.parametrize("name", MOLECULES)
def test_round_trip_is_exact_and_the_rest_is_a_rigid_motion(name):
    top, x = _molecule(name)
    ic = InternalCoordinates(top)
    assert ic.dim == 3 * top.n_atoms - 6
    xt = torch.as_tensor(x)
    z = ic.forward(xt)
    x2, _ = ic.inverse(z)
    assert _kabsch_rmsd_max(x, x2.numpy()) < 1e-10
    # the canonical frame: first atom at the origin, second on +x, third in the xy-plane with y > 0
    order = ic.zmatrix.order
    p = x2.numpy()[:, order]
    assert np.abs(p[:, 0]).max() < 1e-14 and np.abs(p[:, 1, 1:]).max() < 1e-14 and (p[:, 1, 0] > 0).all()
    assert np.abs(p[:, 2, 2]).max() < 1e-14 and (p[:, 2, 1] > 0).all()
    # the forward map of the reconstruction gives the same coordinates
    d = ic.forward(x2) - z
    d[:, ic.torsions] = torch.remainder(d[:, ic.torsions] + np.pi, 2 * np.pi) - np.pi
    assert d.abs().max() < 1e-12


@pytest.mark.parametrize("name", MOLECULES)
def test_z_matrix_follows_bonds_heavy_atoms_first_and_rings_close(name):
    top, _ = _molecule(name)
    zm = build_zmatrix(top)
    bonded = {frozenset((b[0].index, b[1].index)) for b in top.bonds}
    heavy = np.array([a.element.symbol != "H" for a in top.atoms])
    assert sorted(zm.order) == list(range(top.n_atoms))
    for i in range(1, top.n_atoms):
        a = zm.ref[i, 0]
        assert a < i and frozenset((zm.order[i], zm.order[a])) in bonded            # the bond is a bond
        if i >= 2:
            assert zm.ref[i, 1] < i and len({i, *zm.ref[i, :2]}) == 3
        if i >= 3:
            assert (zm.ref[i] < i).all() and len({i, *zm.ref[i]}) == 4
    assert not heavy[zm.order][np.argmax(~heavy[zm.order]):].any()                   # heavy atoms first
    n_ring_closures = len(bonded) - (top.n_atoms - 1)                                 # bonds not in the tree
    assert n_ring_closures == {"proline": 1, "phenylalanine": 1}.get(name, 0)
    # levels: every atom of a level depends only on earlier ones
    seen = {0, 1, 2}
    for level in zm.levels:
        assert all(int(r) in seen for i in level for r in zm.ref[i])
        seen |= set(int(i) for i in level)
    assert seen == set(range(top.n_atoms))


def test_phi_and_psi_are_coordinates_of_alanine_dipeptide():
    top, x = _molecule("aldp")
    ic = InternalCoordinates(top)
    tors = ic.forward(torch.as_tensor(x))[:, ic.torsions].numpy()
    traj = mdtraj.Trajectory(x, top)
    for angles in (mdtraj.compute_phi(traj)[1][:, 0], mdtraj.compute_psi(traj)[1][:, 0]):
        diff = np.angle(np.exp(1j * (tors - angles[:, None])))
        assert (np.abs(diff).max(0) < 1e-5).sum() == 1                         # exactly one torsion is it


@pytest.mark.parametrize("name", ["aldp", "proline"])
def test_log_det_equals_slogdet_of_the_autograd_jacobian_in_the_frame(name):
    top, x = _molecule(name)
    ic = InternalCoordinates(top)
    z = ic.forward(torch.as_tensor(x[:3]))
    order = torch.as_tensor(ic.zmatrix.order)
    signs = set()
    for zi in z:
        def free(zv):        # the 3N - 6 free Cartesian coordinates of the canonical frame
            p = ic.inverse(zv[None])[0][0][order]
            return torch.cat([p[1, :1], p[2, :2], p[3:].reshape(-1)])
        jac = torch.autograd.functional.jacobian(free, zi)
        sign, logabs = torch.linalg.slogdet(jac)
        _, log_det = ic.inverse(zi[None])
        assert abs(float(logabs) - float(log_det[0])) < 1e-9
        signs.add(float(sign))
    assert len(signs) == 1             # one orientation everywhere: a diffeomorphism onto its image


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_internal_coordinates_are_invariant_under_rotation_and_translation(dtype):
    top, x = _molecule("aldp")
    ic = InternalCoordinates(top)
    xt = torch.as_tensor(x, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    rot = random_rotation(gen, dtype=dtype)
    shifted = xt @ rot.T + torch.randn(3, generator=gen, dtype=torch.float64).to(dtype)
    z, z2 = ic.forward(xt), ic.forward(shifted)
    d = z2 - z
    d[:, ic.torsions] = torch.remainder(d[:, ic.torsions] + np.pi, 2 * np.pi) - np.pi
    tol = 1e-4 if dtype == torch.float32 else 1e-11
    assert d.abs().max() < tol
    # a mirror image flips every torsion: the stereocentres are in the coordinates
    mirrored = ic.forward(xt * torch.tensor([-1.0, 1.0, 1.0], dtype=dtype))
    assert torch.allclose(mirrored[:, ic.torsions], -z[:, ic.torsions], atol=tol * 10)
    x2, ld = ic.inverse(z)
    assert x2.dtype == dtype and ld.dtype == dtype and torch.isfinite(ld).all()


def test_inverse_is_differentiable():
    top, x = _molecule("aldp")
    ic = InternalCoordinates(top)
    z = ic.forward(torch.as_tensor(x[:2])).requires_grad_(True)

    def f(zv):
        xv, ld = ic.inverse(zv)
        return (xv ** 2).sum() + ld.sum()
    assert torch.autograd.gradcheck(f, (z,), eps=1e-7, atol=1e-5)


def test_nerf_places_a_point_with_the_requested_bond_angle_and_torsion():
    gen = torch.Generator().manual_seed(2)
    a, b, c = torch.randn(3, 50, 3, generator=gen, dtype=torch.float64)
    r = torch.rand(50, generator=gen, dtype=torch.float64) + 0.1
    theta = torch.rand(50, generator=gen, dtype=torch.float64) * 3.0 + 0.05
    phi = (torch.rand(50, generator=gen, dtype=torch.float64) * 2 - 1) * np.pi
    p = place(a, b, c, r, theta, phi)
    assert torch.allclose((p - a).norm(dim=-1), r, atol=1e-12)
    assert torch.allclose(angle(p, a, b), theta, atol=1e-10)
    assert torch.allclose(dihedral(p, a, b, c), phi, atol=1e-10)
    traj = mdtraj.Trajectory(torch.stack([p, a, b, c], 1).numpy(), _four_atom_topology())
    assert np.allclose(mdtraj.compute_dihedrals(traj, [[0, 1, 2, 3]])[:, 0], phi.numpy(), atol=1e-5)


def _four_atom_topology():
    top = mdtraj.Topology()
    res = top.add_residue("X", top.add_chain())
    for k in range(4):
        top.add_atom(f"C{k}", mdtraj.element.carbon, res)
    return top


def test_a_topology_without_bonds_or_with_two_molecules_is_refused():
    top = _four_atom_topology()
    with pytest.raises(ZMatrixError, match="no bonds"):
        build_zmatrix(top)
    atoms = list(top.atoms)
    top.add_bond(atoms[0], atoms[1])
    top.add_bond(atoms[2], atoms[3])
    with pytest.raises(ZMatrixError, match="not one connected molecule"):
        build_zmatrix(top)


@pytest.mark.cuda
def test_round_trip_on_cuda_equals_cpu():
    top, x = _molecule("aldp")
    ic = InternalCoordinates(top)
    xt = torch.as_tensor(x)
    z_cpu, (x_cpu, ld_cpu) = ic.forward(xt), ic.inverse(ic.forward(xt))
    z_gpu = ic.forward(xt.cuda())
    x_gpu, ld_gpu = ic.inverse(z_gpu)
    assert torch.allclose(z_gpu.cpu(), z_cpu, atol=1e-12)
    assert torch.allclose(x_gpu.cpu(), x_cpu, atol=1e-12) and torch.allclose(ld_gpu.cpu(), ld_cpu, atol=1e-12)
