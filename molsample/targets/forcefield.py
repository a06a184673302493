"""A batched, differentiable torch force field compiled from an ``openmm.System``.

Supported forces (everything ``amber*.xml`` + ``amber*_obc.xml`` creates with ``NoCutoff``):
``HarmonicBondForce``, ``HarmonicAngleForce``, ``PeriodicTorsionForce``, ``NonbondedForce``
(NoCutoff: Coulomb + Lennard-Jones + exceptions) and ``GBSAOBCForce`` (OBC-II, with the ACE
surface-area term). ``CMMotionRemover`` is skipped: it is not an energy term. Any other force
raises :class:`UnsupportedForceError`.

All parameters are read from the System itself. Energies are in kJ/mol, positions in nm; the
conversion to reduced units happens in :class:`molsample.targets.openmm_target.OpenMMTarget`.

Soft cap
--------
Every squared distance of a nonbonded or GB pair enters the energy through :func:`soft_floor`,
which is the identity for ``r >= r_c`` (``r_c = 0.02 nm`` by default: a fifth of a covalent
X-H bond, closer than any two atoms come in a conformation with finite Boltzmann weight) and,
below it, a smooth (C2) monotone curve that levels off at ``r^2 = r_c^2 / 2``. Overlapping
atoms therefore give large but finite energies and finite gradients (LJ at the floor is
~1e16 kJ/mol, within float32 range), and every physically reachable conformation is exact.
Bonded terms need no cap (harmonic bonds and angles are finite everywhere); their square roots,
angles and dihedrals are guarded (double-where) so gradients stay finite when atoms coincide
or lie on a line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from .linops import LinearOperator, difference_operator, selection_operator

ONE_4PI_EPS0 = 138.93545764438198  # kJ nm / (mol e^2), the CODATA-2018 value OpenMM 8 uses
OBC_ALPHA, OBC_BETA, OBC_GAMMA = 1.0, 0.8, 4.85  # OBC-II
DIELECTRIC_OFFSET = 0.009  # nm
PROBE_RADIUS = 0.14  # nm
SUPPORTED_FORCES = ("HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce",
                    "NonbondedForce", "GBSAOBCForce")
SKIPPED_FORCES = ("CMMotionRemover",)


class UnsupportedForceError(ValueError):
    """An OpenMM force (or force option) that the torch force field does not implement."""


def soft_floor(r2: torch.Tensor, c2: float) -> torch.Tensor:
    """Smoothly floored squared distance: ``r2`` for ``r2 >= c2``, else ``c2 - a tanh((c2 - r2)/a)``.

    With ``a = c2 / 2`` the result is C2-continuous at ``c2``, monotone in ``r2`` and never below
    ``c2 / 2``.
    """
    a = 0.5 * c2
    return torch.where(r2 >= c2, r2, c2 - a * torch.tanh((c2 - r2) / a))


def _safe_norm(v2: torch.Tensor, tiny: float) -> torch.Tensor:
    """sqrt with a double-where guard: finite value and gradient (zero) at v2 = 0."""
    ok = v2 > tiny
    return torch.where(ok, torch.sqrt(torch.where(ok, v2, torch.ones_like(v2))), torch.zeros_like(v2))


@dataclass(frozen=True)
class ForceFieldParameters:
    """Index and parameter tensors; indices are int64, parameters float64 until moved."""
    bond_idx: torch.Tensor       # (nb, 2)
    bond_k: torch.Tensor         # (nb,) kJ/mol/nm^2
    bond_r0: torch.Tensor        # (nb,) nm
    angle_idx: torch.Tensor      # (na, 3)
    angle_k: torch.Tensor        # (na,) kJ/mol/rad^2
    angle_theta0: torch.Tensor   # (na,) rad
    torsion_idx: torch.Tensor    # (nt, 4)
    torsion_k: torch.Tensor      # (nt,) kJ/mol
    torsion_n: torch.Tensor      # (nt,)
    torsion_phase: torch.Tensor  # (nt,) rad
    pair_i: torch.Tensor         # (P,) all pairs i < j
    pair_j: torch.Tensor         # (P,)
    pair_qq: torch.Tensor        # (P,) ONE_4PI_EPS0 * q_i q_j, kJ nm/mol (0 for exclusions)
    pair_sig2: torch.Tensor      # (P,) sigma^2, nm^2
    pair_eps4: torch.Tensor      # (P,) 4 epsilon, kJ/mol
    gb_charge: torch.Tensor      # (N,) e (empty without GBSAOBCForce)
    gb_radius: torch.Tensor      # (N,) nm
    gb_scale: torch.Tensor       # (N,)
    gb_prefactor: torch.Tensor   # () -ONE_4PI_EPS0 (1/eps_solute - 1/eps_solvent)
    gb_sa_energy: torch.Tensor   # () 4 pi gamma_SA, kJ/mol/nm^2

    def to(self, dtype: torch.dtype, device: torch.device) -> "ForceFieldParameters":
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            out[f.name] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        return ForceFieldParameters(**out)


def _t(values, dtype=torch.float64, shape=(0,)) -> torch.Tensor:
    arr = np.asarray(values, dtype=np.float64 if dtype == torch.float64 else np.int64)
    return torch.as_tensor(arr.reshape(shape) if arr.size == 0 else arr, dtype=dtype)


def parameters_from_system(system) -> ForceFieldParameters:
    """Read every supported force of an ``openmm.System`` into :class:`ForceFieldParameters`.

    Raises
    ------
    UnsupportedForceError
        For a force type, nonbonded method or option the torch force field does not implement.
    """
    n = system.getNumParticles()
    terms = {"HarmonicBondForce": [], "HarmonicAngleForce": [], "PeriodicTorsionForce": []}
    nonbonded, gb = None, None
    if system.getNumConstraints() > 0:
        raise UnsupportedForceError(f"the System has {system.getNumConstraints()} constraints; "
                                    "build it with constraints=None (the sampler moves every atom)")
    for force in system.getForces():
        name = type(force).__name__
        if name in SKIPPED_FORCES:
            continue
        if name not in SUPPORTED_FORCES:
            raise UnsupportedForceError(
                f"OpenMM force {name} is not implemented by the torch force field "
                f"(supported: {', '.join(SUPPORTED_FORCES)}; skipped: {', '.join(SKIPPED_FORCES)})")
        if name in terms:
            terms[name] += _bonded_terms(force, name)
        elif name == "NonbondedForce":
            nonbonded = _nonbonded_parameters(force, n)
        elif name == "GBSAOBCForce":
            gb = _gb_parameters(force, n)
    iu, ju = np.triu_indices(n, k=1)
    qq, s_pair, e_pair = _pair_parameters(nonbonded, n, iu, ju)
    gbq, gbr, gbs, pref, sa = gb if gb is not None else (np.zeros(0), np.zeros(0), np.zeros(0), 0.0, 0.0)
    b = np.array(terms["HarmonicBondForce"], dtype=float).reshape(-1, 4)
    a = np.array(terms["HarmonicAngleForce"], dtype=float).reshape(-1, 5)
    t = np.array(terms["PeriodicTorsionForce"], dtype=float).reshape(-1, 7)
    return ForceFieldParameters(
        bond_idx=_t(b[:, :2], torch.int64, (0, 2)), bond_k=_t(b[:, 3]), bond_r0=_t(b[:, 2]),
        angle_idx=_t(a[:, :3], torch.int64, (0, 3)), angle_k=_t(a[:, 4]), angle_theta0=_t(a[:, 3]),
        torsion_idx=_t(t[:, :4], torch.int64, (0, 4)), torsion_k=_t(t[:, 6]),
        torsion_n=_t(t[:, 4]), torsion_phase=_t(t[:, 5]),
        pair_i=_t(iu, torch.int64), pair_j=_t(ju, torch.int64), pair_qq=_t(ONE_4PI_EPS0 * qq),
        pair_sig2=_t(s_pair**2), pair_eps4=_t(4.0 * e_pair),
        gb_charge=_t(gbq), gb_radius=_t(gbr), gb_scale=_t(gbs),
        gb_prefactor=torch.tensor(pref, dtype=torch.float64),
        gb_sa_energy=torch.tensor(sa, dtype=torch.float64))


def _bonded_terms(force, name: str) -> list[tuple]:
    """Rows (atoms..., parameters) of a harmonic bond or angle force or a periodic torsion force, in nm, rad and
    kJ/mol."""
    from openmm import unit
    kj = unit.kilojoule_per_mole
    if name == "HarmonicBondForce":
        return [(i, j, r0.value_in_unit(unit.nanometer), k.value_in_unit(kj / unit.nanometer**2))
                for i, j, r0, k in map(force.getBondParameters, range(force.getNumBonds()))]
    if name == "HarmonicAngleForce":
        return [(i, j, k_, th.value_in_unit(unit.radian), k.value_in_unit(kj / unit.radian**2))
                for i, j, k_, th, k in map(force.getAngleParameters, range(force.getNumAngles()))]
    return [(i, j, k_, l, per, ph.value_in_unit(unit.radian), k.value_in_unit(kj))
            for i, j, k_, l, per, ph, k in map(force.getTorsionParameters, range(force.getNumTorsions()))]


def _nonbonded_parameters(force, n: int):
    """Per-particle charges (e), sigma (nm), epsilon (kJ/mol) and the exceptions {(i, j): (qq, sigma, eps)} of a
    NoCutoff NonbondedForce."""
    import openmm
    from openmm import unit
    if force.getNonbondedMethod() != openmm.NonbondedForce.NoCutoff:
        raise UnsupportedForceError(
            "NonbondedForce with nonbonded method "
            f"{force.getNonbondedMethod()} is not supported; only NoCutoff is implemented")
    if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets():
        raise UnsupportedForceError("NonbondedForce parameter offsets are not supported")
    charges, sig, eps = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        q, s, e = force.getParticleParameters(i)
        charges[i] = q.value_in_unit(unit.elementary_charge)
        sig[i] = s.value_in_unit(unit.nanometer)
        eps[i] = e.value_in_unit(unit.kilojoule_per_mole)
    exceptions = {}
    for x in range(force.getNumExceptions()):
        i, j, qq, s, e = force.getExceptionParameters(x)
        exceptions[(min(i, j), max(i, j))] = (
            qq.value_in_unit(unit.elementary_charge**2), s.value_in_unit(unit.nanometer),
            e.value_in_unit(unit.kilojoule_per_mole))
    return charges, sig, eps, exceptions


def _pair_parameters(nonbonded, n: int, iu, ju):
    """Charge products, Lorentz-Berthelot sigma and epsilon of every pair i < j, exceptions applied (no
    NonbondedForce: zero charges and Lennard-Jones)."""
    charges, sig, eps, exceptions = nonbonded if nonbonded is not None else (None, np.zeros(n), np.zeros(n), {})
    qq = charges[iu] * charges[ju] if charges is not None else np.zeros(len(iu))
    s_pair = 0.5 * (sig[iu] + sig[ju])
    e_pair = np.sqrt(eps[iu] * eps[ju])
    index = {(int(i), int(j)): k for k, (i, j) in enumerate(zip(iu, ju))}
    for key, (q2, s, e) in exceptions.items():
        k = index[key]
        qq[k], s_pair[k], e_pair[k] = q2, s, e
    return qq, s_pair, e_pair


def _gb_parameters(gb, n: int):
    """Per-particle OBC charges, radii and scale factors, the GB prefactor and the surface-area energy of a
    NoCutoff GBSAOBCForce."""
    import openmm
    from openmm import unit
    if gb.getNonbondedMethod() != openmm.GBSAOBCForce.NoCutoff:
        raise UnsupportedForceError("GBSAOBCForce is only supported with NoCutoff")
    vals = np.array([gb.getParticleParameters(i) for i in range(n)], dtype=object)
    gbq = np.array([v.value_in_unit(unit.elementary_charge) for v in vals[:, 0]])
    gbr = np.array([v.value_in_unit(unit.nanometer) for v in vals[:, 1]])
    gbs = np.array([float(v) for v in vals[:, 2]])
    eps_in, eps_out = gb.getSoluteDielectric(), gb.getSolventDielectric()
    pref = -ONE_4PI_EPS0 * (1.0 / eps_in - 1.0 / eps_out) if eps_in and eps_out else 0.0
    sa = 4 * math.pi * gb.getSurfaceAreaEnergy().value_in_unit(unit.kilojoule_per_mole / unit.nanometer**2)
    return gbq, gbr, gbs, pref, sa


def _dot(a, b):
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _cross(a, b):
    return torch.stack([a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1],
                        a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
                        a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]], dim=1)


def _col(t: torch.Tensor) -> torch.Tensor:
    return t[:, None]


def _bond_energy(d, p: ForceFieldParameters, tiny: float) -> torch.Tensor:
    """d : (nb, 3, B) bond vectors."""
    r = _safe_norm(_dot(d, d), tiny)
    return (_col(0.5 * p.bond_k) * (r - _col(p.bond_r0)) ** 2).sum(0)


def _angle_energy(u, v, p: ForceFieldParameters, tiny: float) -> torch.Tensor:
    """u, v : (na, 3, B) vectors from the central atom to the outer atoms."""
    c = _cross(u, v)
    theta = torch.atan2(_safe_norm(_dot(c, c), tiny), _dot(u, v))
    return (_col(0.5 * p.angle_k) * (theta - _col(p.angle_theta0)) ** 2).sum(0)


def _torsion_energy(b1, b2, b3, p: ForceFieldParameters, tiny: float) -> torch.Tensor:
    """b1, b2, b3 : (nt, 3, B) consecutive bond vectors of each torsion."""
    n1 = _cross(b1, b2)
    n2 = _cross(b2, b3)
    cos_part = _dot(n1, n2)
    sin_part = _safe_norm(_dot(b2, b2), tiny) * _dot(b1, n2)
    ok = cos_part * cos_part + sin_part * sin_part > tiny
    phi = torch.atan2(torch.where(ok, sin_part, torch.zeros_like(sin_part)),
                      torch.where(ok, cos_part, torch.ones_like(cos_part)))
    return (_col(p.torsion_k) * (1.0 + torch.cos(_col(p.torsion_n) * phi - _col(p.torsion_phase)))).sum(0)


def _nonbonded_energy(r2: torch.Tensor, p: ForceFieldParameters) -> torch.Tensor:
    """r2 : (P, B) softly floored squared pair distances."""
    inv_r2 = 1.0 / r2
    s6 = (_col(p.pair_sig2) * inv_r2) ** 3
    return (_col(p.pair_qq) * torch.sqrt(inv_r2) + _col(p.pair_eps4) * (s6 * s6 - s6)).sum(0)


class _GBOperators:
    """Gather/scatter operators of the OBC pair sums over ordered pairs."""

    def __init__(self, pair_i: np.ndarray, pair_j: np.ndarray, n: int):
        recv = np.concatenate([pair_i, pair_j])
        self.recv, self.other = recv, np.concatenate([pair_j, pair_i])
        m = len(recv)
        self.scatter = LinearOperator(recv, np.arange(m), np.ones(m), (n, m))   # sum over partners
        self.gather_i = selection_operator(pair_i, n)
        self.gather_j = selection_operator(pair_j, n)


def _born_radii(r: torch.Tensor, p: ForceFieldParameters, ops: _GBOperators) -> torch.Tensor:
    """OBC-II effective Born radii, shape (N, B), nm, as OpenMM's ReferenceObc computes them.

    r : (P, B) pair distances (i < j).
    """
    r = torch.cat([r, r], dim=0)                               # ordered pairs: (i, j) then (j, i)
    rho = p.gb_radius - DIELECTRIC_OFFSET                      # offset radii, (N,)
    rho_i = _col(rho[ops.recv])
    s_j = _col((rho * p.gb_scale)[ops.other])                  # scaled offset radii of partners
    upper = r + s_j
    lower = torch.maximum(rho_i, torch.abs(r - s_j))
    l_inv, u_inv = 1.0 / lower, 1.0 / upper
    l2, u2 = l_inv * l_inv, u_inv * u_inv
    inv_r = 1.0 / r
    term = (l_inv - u_inv + 0.25 * r * (u2 - l2) + 0.5 * inv_r * torch.log(lower * u_inv)
            + 0.25 * s_j * s_j * inv_r * (l2 - u2))
    term = term + torch.where(rho_i < s_j - r, 2.0 * (1.0 / rho_i - l_inv), torch.zeros_like(r))
    term = torch.where(rho_i < upper, term, torch.zeros_like(r))   # both branches are finite
    psi = ops.scatter(term) * _col(0.5 * rho)
    tanh_sum = torch.tanh(psi * (OBC_ALPHA - psi * (OBC_BETA - OBC_GAMMA * psi)))
    return 1.0 / (_col(1.0 / rho) - tanh_sum / _col(p.gb_radius))


def _gbsa_energy(r2: torch.Tensor, r: torch.Tensor, p: ForceFieldParameters,
                 ops: _GBOperators) -> torch.Tensor:
    born = _born_radii(r, p, ops)
    q = p.gb_charge
    bb = ops.gather_i(born) * ops.gather_j(born)
    f = torch.sqrt(r2 + bb * torch.exp(-0.25 * r2 / bb))
    e_pair = (_col(p.gb_prefactor * q[ops.gather_i.cols] * q[ops.gather_j.cols]) / f).sum(0)
    ratio = _col(p.gb_radius) / born
    ratio3 = ratio * ratio * ratio
    e_self_sa = (_col(0.5 * p.gb_prefactor * q * q) / born
                 + _col(p.gb_sa_energy * (p.gb_radius + PROBE_RADIUS) ** 2) * ratio3 * ratio3).sum(0)
    return e_pair + e_self_sa


class TorchForceField:
    """Energy of a batch of conformations from the parameters of an ``openmm.System``.

    Parameters
    ----------
    params : ForceFieldParameters
    n_atoms : int
    r_cap : float, nm
        Distance below which :func:`soft_floor` softens all pair distances (see module docs).

    Calling ``ff(x)`` with ``x : Tensor, shape (B, N, 3), nm`` returns energies, shape (B,),
    kJ/mol, in ``x``'s dtype and on its device; parameters are converted once per
    (dtype, device) and cached. Internally conformations are laid out as (N, 3 B) columns so
    that every gather and scatter is one matrix product.
    """

    def __init__(self, params: ForceFieldParameters, n_atoms: int, r_cap: float = 0.02):
        self.params = params
        self.n_atoms = int(n_atoms)
        self.c2 = float(r_cap) ** 2
        p = params
        pairs = np.stack([p.pair_i.numpy(), p.pair_j.numpy()], axis=1)
        a, t = p.angle_idx.numpy(), p.torsion_idx.numpy()
        blocks = [pairs, p.bond_idx.numpy(), a[:, [1, 0]], a[:, [1, 2]],
                  t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 3]]]
        self._split = [len(b) for b in blocks]
        self._diff = difference_operator(blocks, self.n_atoms)
        self._gb = _GBOperators(pairs[:, 0], pairs[:, 1], self.n_atoms) if p.gb_radius.numel() else None
        self._cache: dict = {}

    @classmethod
    def from_system(cls, system, r_cap: float = 0.02) -> "TorchForceField":
        return cls(parameters_from_system(system), system.getNumParticles(), r_cap)

    def _params(self, x: torch.Tensor) -> ForceFieldParameters:
        key = (x.dtype, x.device)
        if key not in self._cache:
            self._cache[key] = self.params.to(x.dtype, x.device)
        return self._cache[key]

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Energy per term (kJ/mol, each shape (B,)): bonds, angles, torsions, nonbonded, gbsa."""
        p = self._params(x)
        b = x.shape[0]
        tiny = torch.finfo(x.dtype).tiny ** 0.5   # guards exact zeros only (1e-19 in float32)
        cols = x.permute(1, 2, 0).reshape(self.n_atoms, 3 * b)
        d = self._diff(cols).reshape(-1, 3, b)
        pair, bond, au, av, t1, t2, t3 = torch.split(d, self._split, dim=0)
        out = {"bonds": _bond_energy(bond, p, tiny), "angles": _angle_energy(au, av, p, tiny),
               "torsions": _torsion_energy(t1, t2, t3, p, tiny)}
        r2 = soft_floor(_dot(pair, pair), self.c2)
        out["nonbonded"] = _nonbonded_energy(r2, p)
        if self._gb is not None:
            out["gbsa"] = _gbsa_energy(r2, torch.sqrt(r2), p, self._gb)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return sum(self.terms(x).values())
