"""Internal-coordinate targets and the structured base: energies compose exactly with the Jacobian,
whitening from frames or from the force field, out-of-domain points get zero weight (never NaN),
and the base's densities are exact."""
import math

import numpy as np
import pytest
import torch

from molsample.analysis.ensembles import chirality_signs
from molsample.coords.base import StructuredBase, TorusHistogram, plain_proposal
from molsample.coords.target import InternalCoordinateTarget, Whitening, wrap
from molsample.estimate import ess


@pytest.fixture(scope="module")
def aldp(aldp_md):
    return aldp_md


@pytest.mark.parametrize("source", ["none", "frames", "forcefield"])
def test_energy_in_internal_coordinates_is_the_cartesian_energy_minus_the_log_jacobian(aldp, source):
    cart, ic, x, lw = aldp
    wh = {"none": Whitening.identity(ic.dim), "frames": Whitening.from_frames(ic, x[:500]),
          "forcefield": Whitening.from_forcefield(ic, cart)}[source]
    target = InternalCoordinateTarget(cart, wh, ic)
    xt = torch.as_tensor(x[:64])
    w = target.from_cartesian(xt)
    y = ic.forward(xt)
    x_frame, log_det = ic.inverse(y)
    expected = cart.energy(x_frame) - log_det - np.log(wh.std).sum()
    assert torch.allclose(target.energy(w), expected, rtol=1e-12, atol=1e-9)
    assert torch.allclose(cart.energy(x_frame), cart.energy(xt), rtol=1e-10)         # rigid motion: same u
    assert torch.allclose(target.internal(w), torch.where(ic.torsion_mask, wrap(y), y), atol=1e-12)
    assert target.event_shape == (60,) and int(target.torsion_mask.sum()) == 19


def test_force_field_whitening_uses_each_terms_equilibrium_and_thermal_width(aldp):
    cart, ic, x, _ = aldp
    wh = Whitening.from_forcefield(ic, cart)
    from openmm import HarmonicBondForce
    system, kt = cart.openmm_system()
    force = next(f for f in system.getForces() if isinstance(f, HarmonicBondForce))
    terms = {}
    for k in range(force.getNumBonds()):
        i, j, r0, kb = force.getBondParameters(k)
        terms[frozenset((i, j))] = (r0._value, kb._value)
    order, ref = ic.zmatrix.order, ic.zmatrix.ref
    for n, i in enumerate(range(1, ic.n_atoms)):
        r0, kb = terms[frozenset((int(order[i]), int(order[ref[i, 0]])))]
        assert wh.mean[n] == pytest.approx(r0) and wh.std[n] == pytest.approx(math.sqrt(kt / kb))
    # MD's bond widths are the force field's (other terms widen them a little), within a factor 1.5
    frames = Whitening.from_frames(ic, x)
    ratio = frames.std[ic.bonds] / wh.std[ic.bonds]
    assert 0.8 < np.median(ratio) < 1.5
    assert np.abs(frames.mean[ic.bonds] - wh.mean[ic.bonds]).max() < 0.005        # nm
    weighted = Whitening.from_frames(ic, x[:2], np.log([1.0, 3.0]))
    y = ic.forward(torch.as_tensor(x[:2])).numpy()
    assert np.allclose(weighted.mean[ic.bonds], 0.25 * y[0, ic.bonds] + 0.75 * y[1, ic.bonds])


def test_points_outside_the_domain_have_zero_weight_and_are_counted(aldp):
    cart, ic, x, _ = aldp
    target = InternalCoordinateTarget(cart, ic=ic)
    y = ic.forward(torch.as_tensor(x[:4]))
    y[0, 0] = -0.01                               # a negative bond
    y[1, ic.angles.start] = math.pi + 0.1         # an angle beyond pi
    y[2, ic.angles.start + 3] = -0.2              # a negative angle
    u = target.energy(y)
    assert torch.isinf(u[:3]).all() and torch.isfinite(u[3]) and not torch.isnan(u).any()
    assert target.out_of_domain(y) == 3
    lw = target.log_weights(y, torch.zeros(4, dtype=torch.float64))
    assert (lw[:3] == -math.inf).all() and torch.isfinite(lw[3])
    lw = target.log_weights(y, torch.tensor([0.0, 0.0, 0.0, -math.inf], dtype=torch.float64))
    assert (lw == -math.inf).all()                # outside the proposal's support: weight 0 too
    x_out, _ = target.to_cartesian(y)
    assert torch.isfinite(x_out).all()


def test_torus_histogram_is_a_normalised_density_that_its_sampler_follows():
    rng = np.random.default_rng(0)
    theta = np.stack([rng.vonmises(-1.5, 4.0, 5000), rng.vonmises(2.0, 2.0, 5000)], 1)
    hist = TorusHistogram.fit(theta, np.full(5000, 1 / 5000), bins=24, smooth_bins=1.0, floor=0.05)
    grid = -math.pi + (np.arange(24) + 0.5) * 2 * math.pi / 24
    g = torch.as_tensor(np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2))
    total = torch.exp(hist.log_prob(g)).sum() * (2 * math.pi / 24) ** 2
    assert abs(float(total) - 1.0) < 1e-10
    draws = hist.sample(200_000, torch.Generator().manual_seed(1))
    lp = hist.log_prob(draws)
    # the draws follow the table: cell frequencies against cell probabilities
    idx = torch.floor((draws + math.pi) / (2 * math.pi) * 24).long()
    counts = np.zeros((24, 24))
    np.add.at(counts, (idx[:, 0].numpy(), idx[:, 1].numpy()), 1)
    assert np.abs(counts / 200_000 - hist.prob).max() < 5 * math.sqrt(hist.prob.max() / 200_000)
    assert torch.isfinite(lp).all() and hist.prob.min() >= 0.05 / 24 ** 2 * 0.999


def test_structured_base_density_is_exact_keeps_l_alanine_and_knows_the_stiff_coordinates(aldp):
    cart, ic, x, lw = aldp
    base = StructuredBase.fit(ic, x, lw, cart.topology)
    y, log_p = base.sample(3000, torch.Generator().manual_seed(0))
    assert torch.allclose(base.log_prob(y), log_p, atol=1e-9)
    s, h = base.split(y)
    back = base.join(s, h)
    d = back - y
    d[:, ic.torsions] = wrap(d[:, ic.torsions])
    assert d.abs().max() < 1e-12
    names = [ic.zmatrix.names[ic.zmatrix.n_bonds + ic.zmatrix.n_angles + int(j)] for j in base.soft]
    assert any("ACE1:C-ALA2:N-ALA2:CA-ALA2:C" in n for n in names)          # phi is soft
    assert any("NME3:N-ALA2:C-ALA2:CA-ALA2:N" in n for n in names)          # psi is soft
    assert base.describe()["pairs"] == 1 and len(base.soft) <= 6            # phi, psi and the methyl rotors
    x_s, _ = InternalCoordinateTarget(cart, ic=ic).to_cartesian(y)
    signs = chirality_signs(x_s.numpy(), cart.topology)
    assert (signs > 0).mean() > 0.999                                       # L stays L


def test_structured_base_beats_uniform_torsions_by_orders_of_magnitude(aldp):
    cart, ic, x, lw = aldp
    target = InternalCoordinateTarget(cart, ic=ic)
    base = StructuredBase.fit(ic, x, lw, cart.topology)
    gen = torch.Generator().manual_seed(3)
    y, log_q = base.sample(2000, gen)
    e_structured = ess(target.log_weights(y, log_q).numpy(), n_boot=0).value
    wh = Whitening.from_frames(ic, x, lw)
    y_plain, log_q_plain = plain_proposal(ic, wh.mean, wh.std)(2000, gen)
    e_plain = ess(target.log_weights(y_plain, log_q_plain).numpy(), n_boot=0).value
    assert e_structured > 0.05 and e_structured > 20 * e_plain



def test_local_base_is_the_full_fit_when_nothing_is_left_out_and_sparse_otherwise(aldp):
    cart, ic, x_all, lw_all = aldp
    x, lw = x_all[::20], lw_all[::20]
    full = StructuredBase.fit(ic, x, lw, cart.topology, ridge=0.0, jitter=0.0)
    wide = StructuredBase.fit(ic, x, lw, cart.topology, ridge=0.0, jitter=0.0, local=True, parent_bonds=99,
                              torsion_bonds=99)
    # the maximum-likelihood Gaussian regression factorises into the sequential regressions
    assert np.allclose(wide.coef.numpy(), full.coef.numpy(), atol=1e-7 * np.abs(full.coef.numpy()).max())
    assert np.allclose(wide.chol.numpy(), full.chol.numpy(), atol=1e-7 * np.abs(full.chol.numpy()).max())
    diag = StructuredBase.fit(ic, x, lw, cart.topology, local=True, parent_bonds=-1, torsion_bonds=-1)
    chol = diag.chol.numpy()
    assert np.array_equal(chol, np.diag(np.diag(chol)))                  # no parents: independent coordinates
    assert not diag.coef.numpy()[1:].any() and diag.coef.numpy()[0].any()  # no torsion: constant means
    near = StructuredBase.fit(ic, x_all, lw_all, cart.topology, local=True)

    def parent_share(base):                                  # inverse Cholesky factor: diag(1 / sigma) (I - A)
        a = np.linalg.inv(base.chol.numpy())
        return (np.abs(np.tril(a, -1)) > 1e-8 * np.abs(a).max()).sum() / (len(a) * (len(a) - 1) / 2)
    assert parent_share(wide) > 0.99 and 0.05 < parent_share(near) < 0.5   # aldp: 22 atoms, 57 coordinates
    y, log_p = near.sample(2000, torch.Generator().manual_seed(0))
    assert torch.allclose(near.log_prob(y), log_p, atol=1e-9)           # exact density
    target = InternalCoordinateTarget(cart, ic=ic)
    assert ess(target.log_weights(y, log_p).numpy(), n_boot=0).value > 0.1   # 0.26 measured on 10,000 draws


def test_local_base_options_need_the_local_network():
    from molsample.coords.config import ICBaseConfig
    from molsample.schema import ConfigError
    with pytest.raises(ConfigError, match="base.parent_bonds"):
        ICBaseConfig(parent_bonds=2)
    with pytest.raises(ConfigError, match="torsion_bonds"):
        ICBaseConfig(local=True, torsion_bonds=-2)
    assert ICBaseConfig(local=True, parent_bonds=-1).fit_kwargs()["parent_bonds"] == -1


def test_state_mixture_base_is_exact_restorable_and_proposes_the_rare_state_from_its_own_fit(aldp, tmp_path):
    # the base of all frames (70 %) and one fitted to the phi > 0 frames (30 %): the density of every draw is the
    # exact mixture density whichever component drew it, it survives a checkpoint, and 30 % of the draws come from
    # the fit to the rare state
    from molsample.analysis.basins import phi_positive
    from molsample.coords.base import StateMixtureBase
    from molsample.coords.config import ICExperimentConfig
    from molsample.coords.model import base_from_state, base_state
    from molsample.data import load_frames
    from molsample.schema import ConfigError
    from molsample.umbrella.windows import dihedral, dihedral_atoms
    from conftest import ROOT
    cart, ic, x_md, lw_md = aldp
    x, lw = load_frames(ROOT / "systems" / "aldp" / "reference" / "aldp_umbrella_2d_30x18.npz", cart)
    x, lw = x[::3], lw[::3]
    base = StructuredBase.fit(ic, x, lw, cart.topology)
    mix = StateMixtureBase.fit(base, x, lw, cart.topology, share=0.3, power=0.5)
    assert mix.names == ["ALA2 phi > 0"] and np.allclose(mix.log_pi.exp().numpy(), [0.7, 0.3])
    y, log_q = mix.sample(4000, torch.Generator().manual_seed(5))
    ok = torch.isfinite(log_q)
    assert ok.float().mean() > 0.99
    direct = torch.log(0.7 * base.log_prob(y).exp() + 0.3 * mix.components[1].log_prob(y).exp())
    assert torch.allclose(log_q[ok], direct[ok], atol=1e-8) and torch.allclose(mix.log_prob(y)[ok], log_q[ok])
    again = base_from_state(ic, base_state(mix))
    assert isinstance(again, StateMixtureBase) and torch.allclose(again.log_prob(y), mix.log_prob(y), atol=1e-12)
    target = InternalCoordinateTarget(cart, ic=ic)
    phi_atoms = dihedral_atoms(cart.topology, "phi")

    def share_in_state(yy):
        xx, _ = target.to_cartesian(yy)
        return phi_positive(dihedral(xx.numpy(), phi_atoms)).mean()
    y0, _ = base.sample(4000, torch.Generator().manual_seed(5))
    # the component fitted to the phi > 0 frames draws (nearly) only there: 30 % of the draws on top of the base's
    assert share_in_state(y) > share_in_state(y0) + 0.25
    # the sampler draws it as the base alone (no map), with exact weights, and refuses a map or more steps
    from molsample.coords.flow import LipschitzResidualMap
    from molsample.coords.model import InternalSampler
    flow = LipschitzResidualMap(len(base.soft), base.n_linear, hidden=8, layers=1, lipschitz=0.9,
                                generator=torch.Generator().manual_seed(0))
    sampler = InternalSampler(cart, mix, flow)
    d = sampler.draw(500, torch.Generator().manual_seed(1))
    fin = torch.isfinite(d["log_q"])
    assert (d["sign"] > 0).all() and fin.float().mean() > 0.99 and torch.isfinite(d["log_w"][fin]).all()
    y_back = ic.forward(d["x"])
    assert torch.allclose(mix.log_prob(y_back)[fin], d["log_q"][fin], atol=1e-6)
    with pytest.raises(ValueError, match="mixture base"):
        sampler.draw(10, torch.Generator().manual_seed(1), steps=2)
    with pytest.raises(ValueError, match="frames with ALA2's phi > 0"):     # 300 K MD never visits phi > 0
        StateMixtureBase.fit(base, x_md, lw_md, cart.topology, share=0.3, power=0.5)
    from molsample.coords.config import ICBaseConfig
    yaml_file = tmp_path / "mix.yaml"
    yaml_file.write_text("route: internal\ntarget: aldp\ndata: {paths: [x.npz]}\nbase: {state_mixture: 0.3}\n"
                         "train: {iterations: 10}\n")
    with pytest.raises(ConfigError, match="set train.iterations: 0"):
        ICExperimentConfig.load(yaml_file)
    with pytest.raises(ConfigError, match="state_mixture"):
        ICBaseConfig(state_mixture=1.0)
