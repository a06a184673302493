"""A bonded molecule's Boltzmann density in (whitened) internal coordinates: an ordinary target.

With y the internal coordinates of :class:`InternalCoordinates` and the whitening
w = (y - m) / s on bonds and angles (torsions stay angles, w = y there, wrapped to (-pi, pi]),

    u_w(w) = u(x(y(w))) - log |det dx/dy| - sum log s,

so exp(-u_w) integrates to the same Z as exp(-u) over conformations modulo rigid motion (in the
canonical frame), and every estimator, weight and free-energy difference is unchanged. A bond <= 0
or an angle outside (0, pi) lies outside the domain: its energy is +inf (weight 0), never NaN, and
:meth:`out_of_domain` counts such points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..targets.base import Target
from .transform import InternalCoordinates


def wrap(a: torch.Tensor) -> torch.Tensor:
    """Angles mapped to [-pi, pi)."""
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


@dataclass(frozen=True)
class Whitening:
    """Per-coordinate shift m and scale s of the internal coordinates (torsions: m = 0, s = 1).

    Attributes
    ----------
    mean, std : ndarray, shape (3N - 6,)
    source : str
        ``frames`` (mean and std over reference frames) or ``forcefield`` (equilibrium values and
        thermal widths sqrt(kT / k) of the harmonic bond and angle terms alone).
    """
    mean: np.ndarray
    std: np.ndarray
    source: str

    @property
    def log_scale(self) -> float:
        """sum log s: log |det dy/dw|."""
        return float(np.log(self.std).sum())

    @classmethod
    def identity(cls, dim: int) -> "Whitening":
        return cls(np.zeros(dim), np.ones(dim), "none")

    @classmethod
    def from_frames(cls, ic: InternalCoordinates, x: np.ndarray, log_w: np.ndarray | None = None) -> "Whitening":
        """Weighted mean and std of bonds and angles over frames x (M, N, 3) nm."""
        y = ic.forward(torch.as_tensor(x, dtype=torch.float64)).numpy()
        w = np.ones(len(y)) if log_w is None else np.exp(log_w - np.max(log_w))
        w = w / w.sum()
        mean, std = np.zeros(ic.dim), np.ones(ic.dim)
        lin = ~ic.torsion_mask.numpy()
        mean[lin] = w @ y[:, lin]
        std[lin] = np.sqrt(w @ (y[:, lin] - mean[lin]) ** 2)
        if (std[lin] <= 0).any():
            raise ValueError("a bond or angle does not vary over the frames; give more than one distinct frame")
        return cls(mean, std, "frames")

    @classmethod
    def from_forcefield(cls, ic: InternalCoordinates, target) -> "Whitening":
        """Equilibrium values r0, theta0 and widths sqrt(kT / k) of the target's harmonic bond and
        angle terms for each Z-matrix bond and angle."""
        p = target.forcefield_torch.params
        order, ref = ic.zmatrix.order, ic.zmatrix.ref
        bonds = {frozenset(map(int, ij)): (float(r0), float(k)) for ij, r0, k in
                 zip(p.bond_idx.tolist(), p.bond_r0.tolist(), p.bond_k.tolist())}
        angles = {}
        for (i, j, k), th, kk in zip(p.angle_idx.tolist(), p.angle_theta0.tolist(), p.angle_k.tolist()):
            angles[(i, j, k)] = angles[(k, j, i)] = (float(th), float(kk))
        mean, std = np.zeros(ic.dim), np.ones(ic.dim)
        kt = target.kt
        for n, i in enumerate(range(1, ic.n_atoms)):
            key = frozenset((int(order[i]), int(order[ref[i, 0]])))
            if key not in bonds or bonds[key][1] <= 0:
                raise ValueError(f"{ic.zmatrix.names[n]}: no harmonic bond term in the force field")
            mean[n], std[n] = bonds[key][0], math.sqrt(kt / bonds[key][1])
        for n, i in enumerate(range(2, ic.n_atoms), start=ic.n_atoms - 1):
            key = (int(order[i]), int(order[ref[i, 0]]), int(order[ref[i, 1]]))
            if key not in angles or angles[key][1] <= 0:
                raise ValueError(f"{ic.zmatrix.names[n]}: no harmonic angle term in the force field")
            mean[n], std[n] = angles[key][0], math.sqrt(kt / angles[key][1])
        return cls(mean, std, "forcefield")


class InternalCoordinateTarget(Target):
    """The Boltzmann density of a Cartesian molecular target in whitened internal coordinates.

    Parameters
    ----------
    cartesian : Target
        A molecular target with a topology (e.g. ``load_target('aldp')``), positions (B, N, 3) nm.
    whitening : Whitening, optional
        Default: identity (raw bonds in nm, angles and torsions in radians).
    ic : InternalCoordinates, optional
        Default: the Z-matrix of the target's topology.
    """

    def __init__(self, cartesian: Target, whitening: Whitening | None = None, ic: InternalCoordinates | None = None):
        self.cartesian = cartesian
        self.ic = ic or InternalCoordinates(cartesian.topology)
        self.whitening = whitening or Whitening.identity(self.ic.dim)
        self.name = f"{cartesian.name}-internal"
        self.temperature = cartesian.temperature
        self.topology = cartesian.topology
        self.event_shape = (self.ic.dim,)
        self._mean = torch.as_tensor(self.whitening.mean)
        self._std = torch.as_tensor(self.whitening.std)
        # a valid conformation in internal coordinates: the stand-in where a point is out of domain
        stand_in = torch.zeros(self.ic.dim, dtype=torch.float64)
        stand_in[self.ic.bonds], stand_in[self.ic.angles] = 0.1, 2.0
        self._stand_in = stand_in

    @property
    def torsion_mask(self) -> torch.Tensor:
        """(3N - 6,) bool: the periodic coordinates."""
        return self.ic.torsion_mask

    def internal(self, w: torch.Tensor) -> torch.Tensor:
        """Whitened w (B, 3N - 6) -> internal coordinates y (torsions wrapped)."""
        y = self._mean.to(w) + self._std.to(w) * w
        mask = self.torsion_mask.to(w.device)
        return torch.where(mask, wrap(w), y)

    def whiten(self, y: torch.Tensor) -> torch.Tensor:
        """Internal coordinates y (B, 3N - 6) -> whitened w."""
        w = (y - self._mean.to(y)) / self._std.to(y)
        return torch.where(self.torsion_mask.to(y.device), wrap(y), w)

    def in_domain(self, y: torch.Tensor) -> torch.Tensor:
        """(B,) bool: every bond > 0 and every angle in (0, pi)."""
        ic = self.ic
        return (y[:, ic.bonds] > 0).all(1) & (y[:, ic.angles] > 0).all(1) & (y[:, ic.angles] < math.pi).all(1)

    def out_of_domain(self, w: torch.Tensor) -> int:
        """How many of the whitened points w lie outside the domain (zero density)."""
        return int((~self.in_domain(self.internal(w))).sum())

    def to_cartesian(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whitened w (B, 3N - 6) -> (positions (B, N, 3) nm in the canonical frame, log|det dx/dw| (B,))."""
        y = self.internal(w)
        ok = self.in_domain(y)
        safe = torch.where(ok[:, None], y, self._stand_in.to(y))                   # finite stand-ins
        x, log_det = self.ic.inverse(safe)
        return x, log_det + self.whitening.log_scale

    def from_cartesian(self, x: torch.Tensor) -> torch.Tensor:
        """Positions (B, N, 3) nm -> whitened internal coordinates (B, 3N - 6)."""
        return self.whiten(self.ic.forward(x))

    def _energy(self, w: torch.Tensor) -> torch.Tensor:
        return self._energy_and_positions(w)[0]

    def _energy_and_positions(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ok = self.in_domain(self.internal(w))
        x, log_det = self.to_cartesian(w)
        u = self.cartesian.energy(x) - log_det
        return torch.where(ok, u, torch.full_like(u, math.inf)), x

    def log_weights(self, w: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        """log importance weights -u_w(w) - log q(w) of proposals w with log densities log_q; a point
        outside the domain (u = inf) or outside the proposal's support (log q = -inf) gets -inf."""
        return self.log_weights_and_positions(w, log_q)[0]

    def log_weights_and_positions(self, w: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log weights as :meth:`log_weights`, positions (B, N, 3) nm of :meth:`to_cartesian`) from one
        placement of the atoms."""
        u, x = self._energy_and_positions(self.validate(w))
        ok = torch.isfinite(u) & torch.isfinite(log_q)
        return torch.where(ok, -u - torch.where(ok, log_q, torch.zeros_like(log_q)), torch.full_like(u, -math.inf)), x

    def describe(self) -> dict:
        return {**super().describe(), "whitening": self.whitening.source,
                "n_torsions": int(self.torsion_mask.sum())}
