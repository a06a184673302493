"""The equivariant drift: symmetries in float32 and float64, forward-mode Jacobian vs autograd,
molecule types, and the one-step map staying centre-of-mass free."""
import numpy as np
import pytest
import torch

from molsample.testing import assert_equivariant

from molsample.flow import DirectVelocity, Space, Velocity, pf_step
from molsample.jacobian import step_log_volume, velocity_jacobian
from molsample.nn.equivariant import EquivariantCore, molecule_types
from molsample.targets import load_target



def make_core(n, s, node_types=None, edge_types=None, dtype=torch.float64, seed=0, r_max=3.0):
    torch.manual_seed(seed)
    space = Space((n, s), com_free=True)
    core = EquivariantCore(space, node_types if node_types is not None else [0] * n, edge_types,
                           hidden=16, layers=3, n_rbf=8, r_max=r_max, n_freq=4, n_base=8)
    for p in core.out.parameters():                  # the output layer starts at zero: make it non-trivial
        torch.nn.init.normal_(p, std=0.3)
    return core.to(dtype), space


def inputs(b, n, s, dtype, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, s, generator=g, dtype=torch.float64).to(dtype) * scale
    t = torch.rand(b, generator=g, dtype=torch.float64).to(dtype)
    d = (2.0 ** -torch.randint(0, 4, (b,), generator=g)).to(dtype)
    return x, t, d, g


@pytest.mark.parametrize("s", [2, 3])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_rotation_reflection_translation_permutation_equivariance(s, dtype, tol):
    n = 6
    core, _ = make_core(n, s, dtype=dtype)
    x, t, d, g = inputs(5, n, s, dtype)
    out = core(x, t, d)
    scale = out.abs().max()
    assert scale > 1e-3
    assert_equivariant(lambda y: core(y, t, d), x, g, tol, permutation=torch.randperm(n, generator=g))
    assert out.sum(1).abs().max() / scale < tol                        # zero centroid


def test_permutations_across_types_are_not_symmetries():
    core, _ = make_core(4, 3, node_types=[0, 0, 1, 1])
    x, t, d, _ = inputs(3, 4, 3, torch.float64)
    out = core(x, t, d)
    swap_same = [1, 0, 2, 3]
    swap_diff = [2, 1, 0, 3]
    assert torch.allclose(core(x[:, swap_same], t, d), out[:, swap_same], atol=1e-12)
    assert not torch.allclose(core(x[:, swap_diff], t, d), out[:, swap_diff], atol=1e-6)


def test_aldp_types_and_methyl_hydrogen_permutation():
    target = load_target("aldp")
    node, edge = molecule_types(target)
    names = [a.name for a in target.topology.atoms]
    h = [names.index(f"HB{k}") for k in (1, 2, 3)]
    assert len(set(node[h])) == 1 and node[names.index("HA")] != node[h[0]]
    ca, cb, n_ = names.index("CA"), names.index("CB"), names.index("N")
    assert edge[ca, cb] == 0 and edge[n_, cb] == 1 and edge[cb, names.index("O")] >= 2
    assert (edge == edge.T).all()
    core, _ = make_core(22, 3, node, edge, r_max=1.2)
    x = torch.as_tensor(target.positions, dtype=torch.float64)[None] + 0.01 * torch.randn(2, 22, 3, dtype=torch.float64)
    t, d = torch.full((2,), 0.3, dtype=torch.float64), torch.full((2,), 0.5, dtype=torch.float64)
    perm = list(range(22))
    perm[h[0]], perm[h[1]] = h[1], h[0]
    out = core(x, t, d)
    assert torch.allclose(core(x[:, perm], t, d), out[:, perm], atol=1e-12)


class _NoClosedForm(Velocity):
    """The network as a velocity without its forward-mode Jacobian (so the Jacobian comes from autograd)."""

    def __init__(self, net):
        self.net = net

    def __call__(self, x, t, d, **kw):
        return self.net(x, t, d)


@pytest.mark.parametrize("s", [2, 3])
def test_forward_mode_jacobian_matches_autograd(s):
    n = 5
    core, space = make_core(n, s, node_types=[0, 1, 0, 2, 1], edge_types=np.random.default_rng(0).integers(0, 3, (n, n)))
    x, t, d, _ = inputs(4, n, s, torch.float64)
    x = space.project(x)
    fast = DirectVelocity(core)
    j_fast = velocity_jacobian(fast, x, t, d, space)
    j_auto = velocity_jacobian(_NoClosedForm(core), x, t, d, space)      # no closed-form Jacobian: autograd
    assert j_fast.shape == (4, space.dof, space.dof)
    assert (j_fast - j_auto).abs().max() < 1e-11 * j_auto.abs().max()
    # and the exact log-volume of a step against slogdet of a dense autograd Jacobian of the map
    vol = step_log_volume(fast, x, t, d, space, "exact")
    q = space.basis()
    for i in range(2):
        jac = torch.autograd.functional.jacobian(lambda y: pf_step(fast, y.reshape(1, n, s), t[i:i + 1], d[i:i + 1])
                                                 .reshape(-1), x[i].reshape(-1))
        assert torch.allclose(vol.log_det[i], torch.linalg.slogdet(q.T @ jac @ q)[1], atol=1e-10)


def test_one_step_map_output_is_centre_of_mass_free():
    core, space = make_core(7, 3, dtype=torch.float32)
    x = space.project(torch.randn(16, 7, 3))
    y = pf_step(DirectVelocity(core), x, 0.0, 1.0)
    assert y.mean(1).abs().max() < 1e-6


def test_the_equivariance_assertion_fails_for_a_map_that_breaks_a_symmetry():
    """molsample.testing.assert_equivariant is a check that can fail: a map that adds a fixed vector breaks
    rotations, one that scales particle 0 breaks permutations, a chiral map breaks reflections."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    centred = lambda y: y - y.mean(1, keepdim=True)
    assert_equivariant(centred, x, g, 1e-12, permutation=torch.randperm(5, generator=g))
    with pytest.raises(AssertionError, match="rotation"):
        assert_equivariant(lambda y: centred(y) + torch.tensor([1.0, 0.0, 0.0], dtype=y.dtype), x, g, 1e-6)
    weight = torch.tensor([2.0, 1, 1, 1, 1], dtype=torch.float64)[None, :, None]
    with pytest.raises(AssertionError, match="permutation"):
        assert_equivariant(lambda y: centred(y) * weight, x, g, 1e-6, permutation=torch.tensor([1, 0, 2, 3, 4]))
    chiral = lambda y: torch.linalg.cross(centred(y), centred(y).roll(1, dims=1), dim=-1)
    with pytest.raises(AssertionError, match="reflection"):
        assert_equivariant(chiral, x, g, 1e-6, translations=False)
