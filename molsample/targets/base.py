"""The target protocol: a Boltzmann density pi(x) = exp(-u(x)) / Z with u in units of kT.

Batch convention: particle targets take positions ``(B, N, s)`` (s = 3, or 2 for DW4), vector
targets ``(B, D)``; energies are ``(B,)``. The public methods validate and then delegate to
``_energy``, the one method a subclass must implement.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch


class NoReferenceSamplerError(NotImplementedError):
    """The target has no exact sampler; produce reference samples with MD or MCMC instead."""


class NonFinitePositionsError(ValueError):
    """Positions handed to a target contain NaN or inf (e.g. a diverging training path)."""


class Target(ABC):
    """A target density known up to its normalising constant.

    Attributes
    ----------
    name : str
    event_shape : tuple of int
        ``(N, s)`` for particle systems, ``(D,)`` for vector targets.
    log_z : float or None
        Exact log normalising constant of exp(-u) where known (for particle systems, on the
        centre-of-mass-free subspace, see :attr:`com_free`).
    temperature : float or None
        Kelvin for force-field targets; reduced targets have None.
    """

    name: str = "target"
    event_shape: tuple[int, ...] = ()
    log_z: float | None = None
    temperature: float | None = None
    #: True when the density is defined on the subspace of zero unweighted centroid.
    com_free: bool = False
    #: True when every particle is of one kind (LJ, DW4): relabelling particles leaves u unchanged.
    #: False for molecules, whose atoms carry force-field types.
    identical_particles: bool = False

    # -- the optional molecular protocol: every target answers it, with these defaults where it has no part
    #: The molecule's mdtraj topology (atoms, residues, the bond graph), or None (particles, vectors).
    topology = None
    #: A reference structure (N, 3) in nm to start MD from (a PDB's positions), or None.
    positions = None
    #: The force-field files the system was built from (provenance), () when there are none.
    forcefield: tuple[str, ...] = ()
    #: kT in kJ/mol for force-field targets (energies printed in kJ/mol too), None in reduced units.
    kt: float | None = None
    #: True when :meth:`openmm_system` gives the same energy as an OpenMM System (md, umbrella, pt run on it).
    has_openmm: bool = False
    #: True when mirror images have equal energy (every torsion phase 0 or pi), so a data route may reflect frames.
    mirror_symmetric: bool = False

    @property
    def molecular(self) -> bool:
        """True for a molecule with a bond graph (an OpenMM force field): internal coordinates, trajectories."""
        return self.topology is not None

    def openmm_system(self, *args, **kwargs):
        """(openmm.System, kT in kJ/mol) with E_openmm / kT equal to :meth:`energy` (``has_openmm`` targets)."""
        raise NotImplementedError(f"{self.name}: has no OpenMM form (it is evaluated in torch only)")

    @property
    def n_particles(self) -> int | None:
        """Number of particles, or None for a vector target."""
        return self.event_shape[0] if len(self.event_shape) == 2 else None

    @property
    def spatial_dim(self) -> int | None:
        """Spatial dimension s of each particle (3 or 2), or None for a vector target."""
        return self.event_shape[1] if len(self.event_shape) == 2 else None

    @property
    def dim(self) -> int:
        """Number of Cartesian coordinates, prod(event_shape)."""
        return math.prod(self.event_shape)

    @property
    def dof(self) -> int:
        """Dimension of the space the density lives on: s (N - 1) when centre-of-mass free."""
        return self.dim - (self.spatial_dim if self.com_free else 0)

    def validate(self, x: torch.Tensor) -> torch.Tensor:
        """Check shape and finiteness of a batch; return it unchanged."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name}: positions must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{self.name}: positions must be floating point, got {x.dtype}")
        if x.dim() != len(self.event_shape) + 1 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"{self.name}: expected positions of shape (B, {', '.join(map(str, self.event_shape))}),"
                             f" got {tuple(x.shape)}")
        bad = ~torch.isfinite(x.detach()).reshape(x.shape[0], -1).all(dim=1)
        if bad.any():
            idx = torch.nonzero(bad).flatten()[:5].tolist()
            raise NonFinitePositionsError(f"{self.name}: positions contain NaN or inf (batch indices {idx}"
                                          f"{' ...' if int(bad.sum()) > 5 else ''})")
        return x

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energy u(x) (units of kT).

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)

        Returns
        -------
        Tensor, shape (B,)
        """
        return self._energy(self.validate(x))

    @abstractmethod
    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energy of a validated batch."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log density -u(x), shape (B,)."""
        return -self.energy(x)

    def score(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """grad_x log pi(x) = -grad u(x) by autograd, same shape as x."""
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            u = self.energy(xg)
            (g,) = torch.autograd.grad(u.sum(), xg, create_graph=create_graph)
        return -g

    def sample_reference(self, n: int, generator: torch.Generator | None = None,
                         dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Exact samples, shape (n, *event_shape), where an exact sampler exists."""
        raise NoReferenceSamplerError(
            f"{self.name} has no exact sampler; produce reference samples with `molsample md`")

    def describe(self) -> dict:
        """Summary used by `molsample systems`."""
        return {"name": self.name, "kind": type(self).__name__, "n_particles": self.n_particles,
                "dim": self.dim, "dof": self.dof, "temperature": self.temperature,
                "log_z": self.log_z}


def remove_com(x: torch.Tensor) -> torch.Tensor:
    """Subtract the unweighted centroid of (B, N, s) positions."""
    return x - x.mean(dim=1, keepdim=True)
