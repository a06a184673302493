"""Particle systems in reduced units: Lennard-Jones clusters and the 2D four-particle double well.

Both energies depend only on relative positions, so the densities live on the subspace of zero
unweighted centroid (``com_free = True``).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .base import Target, remove_com
from .forcefield import soft_floor
from .linops import difference_operator

CONVENTIONS = {"pairs-once": 1.0, "dem": 2.0}


@lru_cache(maxsize=16)
def _pair_operator(n: int):
    i, j = np.triu_indices(n, k=1)
    return difference_operator([np.stack([i, j], axis=1)], n)


def pair_r2(x: torch.Tensor) -> torch.Tensor:
    """Squared distances of all pairs i < j, pair-major: shape (N (N - 1) / 2, B), from x : (B, N, s).

    Differences are one matrix product with a fixed incidence matrix (fast backward).
    """
    b, n, s = x.shape
    d = _pair_operator(n)(x.permute(1, 2, 0).reshape(n, s * b)).reshape(-1, s, b)
    return (d * d).sum(1)


class LennardJones(Target):
    """LJ cluster with a harmonic centroid tether, reduced units (bgflow / EACF convention).

    u(x) = [f * sum_{i<j} eps ((r_m/r)^12 - 2 (r_m/r)^6) + c sum_i |x_i - x_mean|^2] / tau,
    with f = 1 for ``convention='pairs-once'`` and f = 2 for ``'dem'`` (DEM / iDEM / ASBS count
    every pair twice). Squared distances pass through :func:`soft_floor` below
    ``r_cap = 0.5 r_m`` (pair energy there is already ~4000 eps), so overlapping particles give
    large finite energies.

    Parameters
    ----------
    n_particles : int
    epsilon, r_m, tether, tau : float
    convention : {'pairs-once', 'dem'}
    """

    com_free = True
    identical_particles = True
    has_openmm = True

    @property
    def positions(self):
        """A start for MD: the Mackay icosahedron of LJ13 / LJ55 at the pair minimum's spacing (None otherwise)."""
        from .structures import mackay_icosahedron
        if self.n_particles not in (13, 55):
            return None
        return mackay_icosahedron(1 if self.n_particles == 13 else 2, spacing=self.r_m)

    def __init__(self, n_particles: int = 13, epsilon: float = 1.0, r_m: float = 1.0,
                 tether: float = 0.5, tau: float = 1.0, convention: str = "pairs-once",
                 name: str = "lj", r_cap: float = 0.5):
        if convention not in CONVENTIONS:
            raise ValueError(f"{name}: unknown convention {convention!r}; use one of {sorted(CONVENTIONS)}")
        self.name, self.convention = name, convention
        self.event_shape = (n_particles, 3)
        self.epsilon, self.r_m, self.tether, self.tau = float(epsilon), float(r_m), float(tether), float(tau)
        self.c2 = (float(r_cap) * self.r_m) ** 2

    def pair_energy(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of LJ pair energies in units of eps (pairs-once, no tether, no 1/tau), shape (B,)."""
        s6 = (self.r_m**2 / soft_floor(pair_r2(x), self.c2)) ** 3
        return (s6 * s6 - 2.0 * s6).sum(0)

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        f = CONVENTIONS[self.convention]
        tether = (remove_com(x) ** 2).sum((1, 2))
        return (f * self.epsilon * self.pair_energy(x) + self.tether * tether) / self.tau

    def openmm_system(self, temperature: float = 300.0, mass: float = 1.0):
        """The same energy as an ``openmm.System`` (1 length unit = 1 nm, eps = tau kT).

        Returns (system, kT) with kT in kJ/mol, so that E_openmm / kT equals :meth:`energy`.
        """
        import openmm

        from .openmm_target import kt_kj_per_mol
        kt = kt_kj_per_mol(temperature)
        system = openmm.System()
        for _ in range(self.n_particles):
            system.addParticle(mass)
        f = CONVENTIONS[self.convention]
        lj = openmm.CustomNonbondedForce(f"{f * self.epsilon * kt / self.tau}*((rm/r)^12 - 2*(rm/r)^6)")
        lj.addGlobalParameter("rm", self.r_m)
        lj.setNonbondedMethod(openmm.CustomNonbondedForce.NoCutoff)
        for _ in range(self.n_particles):
            lj.addParticle([])
        system.addForce(lj)
        tether = openmm.CustomCentroidBondForce(2, f"{self.tether * kt / self.tau}*distance(g1, g2)^2")
        everyone = list(range(self.n_particles))
        centroid = tether.addGroup(everyone, [1.0] * self.n_particles)
        for i in everyone:
            tether.addBond([tether.addGroup([i], [1.0]), centroid], [])
        system.addForce(tether)
        return system, kt


class DoubleWell4(Target):
    """DW4: four particles in 2D, u = sum_{i<j} [a (d - d0)^4 + b (d - d0)^2 + c] / tau.

    Positions have shape (B, 4, 2); the energy has E(2) symmetry.
    """

    com_free = True
    identical_particles = True

    def __init__(self, n_particles: int = 4, a: float = 0.9, b: float = -4.0, c: float = 0.0,
                 d0: float = 4.0, tau: float = 1.0, name: str = "dw4"):
        self.name = name
        self.event_shape = (n_particles, 2)
        self.a, self.b, self.c, self.d0, self.tau = map(float, (a, b, c, d0, tau))

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        r2 = pair_r2(x)
        ok = r2 > 1e-20
        d = torch.where(ok, torch.sqrt(torch.where(ok, r2, torch.ones_like(r2))), torch.zeros_like(r2))
        s = d - self.d0
        return ((self.a * s**4 + self.b * s**2 + self.c).sum(0)) / self.tau
