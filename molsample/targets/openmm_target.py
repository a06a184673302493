"""Targets defined by an OpenMM force field: a PDB plus force-field XML files.

Units change here and only here: OpenMM speaks kJ/mol and nm; the target's ``energy`` is
reduced, u = E / kT.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import Target
from .forcefield import TorchForceField

NONBONDED_METHODS = ("NoCutoff",)


class SystemBuildError(ValueError):
    """A PDB / force-field combination that OpenMM cannot turn into a System."""


def kt_kj_per_mol(temperature: float) -> float:
    """k_B T in kJ/mol at ``temperature`` K."""
    from openmm import unit
    return (unit.MOLAR_GAS_CONSTANT_R * temperature * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)


def _resolve_forcefield(name: str, base: Path | None) -> str:
    """A force-field file next to the system file if it exists there, else OpenMM's own by name."""
    if base is not None and (base / name).is_file():
        return str(base / name)
    return name


def build_openmm_system(pdb_path: str | Path, forcefield: tuple[str, ...],
                        nonbonded_method: str = "NoCutoff", base: Path | None = None):
    """Read a PDB and build an ``openmm.System`` with no constraints.

    Returns
    -------
    topology : openmm.app.Topology
    positions : ndarray, shape (N, 3), nm
    system : openmm.System
    """
    from openmm import app, unit

    pdb_path = Path(pdb_path)
    if not pdb_path.is_file():
        raise SystemBuildError(f"PDB file not found: {pdb_path}")
    if nonbonded_method not in NONBONDED_METHODS:
        raise SystemBuildError(f"nonbonded method {nonbonded_method!r} is not supported; use one of {NONBONDED_METHODS}")
    from ..io import load_pdbfile
    pdb = load_pdbfile(pdb_path)
    files = [_resolve_forcefield(f, base) for f in forcefield]
    try:
        ff = app.ForceField(*files)
    except (ValueError, OSError) as exc:
        raise SystemBuildError(f"could not load force field {files}: {exc} (files are looked up next to the "
                               "system file, then in OpenMM's data directory)") from exc
    try:
        system = ff.createSystem(pdb.topology, nonbondedMethod=getattr(app, nonbonded_method),
                                 constraints=None, rigidWater=False, removeCMMotion=False)
    except ValueError as exc:
        raise SystemBuildError(f"{pdb_path}: the force field {list(forcefield)} cannot match this structure: {exc}") from exc
    if any(system.isVirtualSite(i) for i in range(system.getNumParticles())):
        raise SystemBuildError(f"{pdb_path}: the System has virtual sites, which molsample does not support")
    positions = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
    return pdb.topology, positions, system


class OpenMMTarget(Target):
    """Boltzmann density of an OpenMM force field, evaluated by :class:`TorchForceField`.

    Parameters
    ----------
    name : str
    topology : openmm.app.Topology
    positions : ndarray, shape (N, 3), nm
        A reference structure (the PDB's).
    system : openmm.System
    temperature : float, K
    forcefield : tuple of str
        The XML files the system was built from (for provenance).
    """

    com_free = True
    has_openmm = True
    # rows per force-field evaluation: the pair tensors of a larger batch (B x N x N) outgrow the
    # allocator's reuse and every call pays for fresh pages (on aldp, 20,000 rows at once took 6x the
    # time of the same rows 256 at a time; benchmarks/bench_forcefield_chunk.py); each row's energy is
    # independent of the others, so the result is the same up to the order of vectorised additions
    energy_chunk = 256

    def __init__(self, name, topology, positions, system, temperature: float, forcefield=()):
        import mdtraj

        if not (np.isfinite(temperature) and temperature > 0):
            raise SystemBuildError(f"{name}: temperature = {temperature} K; a temperature must be positive and finite")
        self.name, self.temperature = name, float(temperature)
        self.openmm_topology, self.system = topology, system
        self.topology = mdtraj.Topology.from_openmm(topology)
        self.positions = np.asarray(positions, dtype=np.float64)
        self.forcefield = tuple(forcefield)
        self.kt = kt_kj_per_mol(self.temperature)
        self.forcefield_torch = TorchForceField.from_system(system)
        self.event_shape = (system.getNumParticles(), 3)

    @classmethod
    def from_files(cls, name: str, pdb: str | Path, forcefield, temperature: float = 300.0,
                   nonbonded_method: str = "NoCutoff", base: Path | None = None) -> "OpenMMTarget":
        top, pos, system = build_openmm_system(pdb, tuple(forcefield), nonbonded_method, base)
        return cls(name, top, pos, system, temperature, forcefield)

    def energy_kj(self, x: torch.Tensor) -> torch.Tensor:
        """Potential energy in kJ/mol, x : Tensor, shape (B, N, 3), nm -> (B,)."""
        return self._forcefield(self.validate(x))

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        return self._forcefield(x) / self.kt

    def _forcefield(self, x: torch.Tensor) -> torch.Tensor:
        """kJ/mol of a validated batch, :attr:`energy_chunk` rows at a time."""
        n = self.energy_chunk
        if len(x) <= n:
            return self.forcefield_torch(x)
        return torch.cat([self.forcefield_torch(x[i:i + n]) for i in range(0, len(x), n)])

    def openmm_system(self):
        """(openmm.System, kT in kJ/mol): E_openmm / kT equals :meth:`energy`."""
        return self.system, self.kt

    @property
    def mirror_symmetric(self) -> bool:
        """True when every torsion phase is 0 or pi, so mirror images have equal energy."""
        p = self.forcefield_torch.params
        phase = torch.remainder(p.torsion_phase, np.pi)
        return bool(torch.all((phase < 1e-6) | (np.pi - phase < 1e-6)))

    def describe(self) -> dict:
        return {**super().describe(), "forcefield": list(self.forcefield)}


class OpenMMEvaluator:
    """Energies and forces from OpenMM itself, one conformation per call (the reference).

    Parameters
    ----------
    system : openmm.System
    platform : str
        'Reference' (fastest for small molecules on CPU, and the accuracy reference) or 'CPU', 'CUDA'.
    """

    def __init__(self, system, platform: str = "Reference"):
        import openmm
        self.context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                                      openmm.Platform.getPlatformByName(platform))

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x : ndarray, shape (B, N, 3), nm -> energies (B,) kJ/mol, forces (B, N, 3) kJ/mol/nm."""
        from openmm import unit
        x = np.asarray(x, dtype=np.float64)
        energies = np.empty(len(x))
        forces = np.empty_like(x)
        for b, xb in enumerate(x):
            self.context.setPositions(xb)
            state = self.context.getState(getEnergy=True, getForces=True)
            energies[b] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            forces[b] = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        return energies, forces
