"""Umbrella windows: settings, the grid of centres and the order chains visit them, the backbone and peptide-bond
torsions and chirality of a conformation, and the periodic harmonic bias (the one function OpenMM's restraint and
MBAR's reduced potentials share)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from ..analysis.timeseries import backbone_residues


RESTRAINT_GROUP = 30          # OpenMM force group of the restraints (a group mask of bit 31 reads as "all groups")


@dataclass(frozen=True)
class UmbrellaSettings:
    system: str = "aldp"
    dihedral: str = "phi"
    windows: int | tuple = 36          # per restrained angle: one number for all, or one per angle
    kappa: float | tuple = 200.0       # kJ/mol/rad^2, likewise
    ns_per_window: float = 0.5
    equilibration_ps: float = 50.0     # per window, after its start structure (the previous window's end) is reached
    steer_ps: float = 20.0             # moving the restraint from the minimised structure to a chain's first window
    sample_every: int = 100            # steps between dihedral samples
    frame_every: int = 2000            # steps between saved frames
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    temperature: float | None = None
    platform: str = "Reference"
    seed: int = 0
    residue: int = 1                   # whose (phi, psi): the k-th residue that has both (1 = the first)


def _settings_json(settings: UmbrellaSettings) -> dict:
    return json.loads(json.dumps(asdict(settings)))


def dihedral_atoms(topology, name: str, residue: int = 1) -> list[int]:
    """Atom indices of phi or psi of the ``residue``-th residue (1-based) that has both."""
    if name not in ("phi", "psi"):
        raise ValueError(f"unknown dihedral {name!r}; use 'phi' or 'psi'")
    res = backbone_residues(topology)
    if not res:
        raise ValueError("the topology has no residue with both phi and psi dihedrals")
    if not 1 <= int(residue) <= len(res):
        raise ValueError(f"--residue must be between 1 and {len(res)} (residues with phi and psi: "
                         f"{', '.join(r[0] for r in res)}), got {residue}")
    return res[int(residue) - 1][1 if name == "phi" else 2]


def residue_name(topology, residue: int = 1) -> str:
    """The name of the ``residue``-th residue with phi and psi (checked as in :func:`dihedral_atoms`)."""
    dihedral_atoms(topology, "phi", residue)
    return backbone_residues(topology)[int(residue) - 1][0]


def omega_atoms(topology) -> list[list[int]]:
    """Peptide-bond torsions (X-C-N-Y around every C-N bond between residues; X, Y the carbons bonded to
    C and N, e.g. CH3 of ACE, CA, C of NME). mdtraj's compute_omega skips the capping groups."""
    out = []
    for a, b in topology.bonds:
        if a.residue.index == b.residue.index:
            continue
        c, n = (a, b) if a.name == "C" else (b, a)
        if c.name != "C" or n.name != "N":
            continue
        carbons = lambda atom, other: [x for x, y in topology.bonds for x, y in ((x, y), (y, x))
                                       if y.index == atom.index and x.index != other.index and x.element.symbol == "C"]
        xs, ys = carbons(c, n), carbons(n, c)
        if xs and ys:
            out.append([xs[0].index, c.index, n.index, ys[0].index])
    return sorted(out, key=lambda q: q[1])


def chirality_atoms(topology) -> list[list[int]]:
    """(CA, N, C, CB) of every residue that has them (alanine and other non-glycine residues)."""
    out = []
    for res in topology.residues:
        names = {a.name: a.index for a in res.atoms}
        if all(k in names for k in ("CA", "N", "C", "CB")):
            out.append([names["CA"], names["N"], names["C"], names["CB"]])
    return out


def chirality(xyz: np.ndarray, quad: list[int]) -> np.ndarray:
    """Signed volume (N - CA) . ((C - CA) x (CB - CA)) (nm^3); positive for L amino acids, negative for D."""
    x = np.asarray(xyz, dtype=np.float64)
    ca, n, c, cb = (x[:, i] for i in quad)
    return np.einsum("ij,ij->i", n - ca, np.cross(c - ca, cb - ca))


def dihedral(xyz: np.ndarray, quad: list[int]) -> np.ndarray:
    """Torsion angle (radians, in [-pi, pi]) of four atoms in every frame, in float64, with the sign
    convention of OpenMM and mdtraj (IUPAC)."""
    x = np.asarray(xyz, dtype=np.float64)
    p0, p1, p2, p3 = (x[:, i] for i in quad)
    b0, b1, b2 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = np.cross(b0, b1), np.cross(b1, b2)
    y = np.linalg.norm(b1, axis=1) * np.einsum("ij,ij->i", b0, n2)
    return np.arctan2(y, np.einsum("ij,ij->i", n1, n2))


def wrap_angle(theta):
    """Angles mapped into [-pi, pi)."""
    return (np.asarray(theta, dtype=np.float64) + math.pi) % (2 * math.pi) - math.pi


def window_centres(n: int) -> np.ndarray:
    return -math.pi + 2 * math.pi * (np.arange(n) + 0.5) / n


def restrained_angles(settings: "UmbrellaSettings") -> list[str]:
    """'phi', 'psi' or 'phi+psi' (a 2D grid of windows) as a list of angle names."""
    names = settings.dihedral.split("+")
    if not names or any(n not in ("phi", "psi") for n in names) or len(set(names)) != len(names):
        raise ValueError(f"dihedral must be 'phi', 'psi' or 'phi+psi', got {settings.dihedral!r}")
    return names


def _per_angle(value, n: int, flag: str, cast) -> list:
    vals = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise ValueError(f"{flag} has {len(vals)} values for {n} restrained angle(s): {value!r}")
    return [cast(v) for v in vals]


def windows_per_angle(settings: "UmbrellaSettings") -> list[int]:
    n = _per_angle(settings.windows, len(restrained_angles(settings)), "--windows", int)
    if any(v < 2 for v in n):
        raise ValueError(f"--windows must be at least 2 per angle, got {settings.windows!r}")
    return n


def kappas(settings: "UmbrellaSettings") -> list[float]:
    k = _per_angle(settings.kappa, len(restrained_angles(settings)), "--kappa", float)
    if not all(v > 0 and math.isfinite(v) for v in k):
        raise ValueError(f"--kappa must be positive (kJ/mol/rad^2), got {settings.kappa!r}")
    return k


def all_centres(settings: "UmbrellaSettings") -> np.ndarray:
    """Window centres, shape (n_windows, n_restrained_angles): a grid for 'phi+psi', phi the slow index."""
    grids = np.meshgrid(*[window_centres(n) for n in windows_per_angle(settings)], indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def serpentine_order(settings: "UmbrellaSettings") -> list[int]:
    """All windows in an order where consecutive windows are grid neighbours (one spacing in one angle):
    psi up in even phi columns, down in odd ones. With an even number of phi windows the last one is
    also the first one's neighbour (across phi = +-pi), so the path is a cycle."""
    n = windows_per_angle(settings)
    if len(n) == 1:
        return list(range(n[0]))
    order = []
    for i in range(n[0]):
        js = range(n[1]) if i % 2 == 0 else reversed(range(n[1]))
        order += [i * n[1] + j for j in js]
    return order


def chains(settings: "UmbrellaSettings", n_chains: int, start_angles: np.ndarray) -> list[list[int]]:
    """The serpentine path rotated to begin at the window nearest to the start structure's angles,
    cut into ``n_chains`` contiguous pieces (one per process)."""
    order = serpentine_order(settings)
    c = all_centres(settings)[order]
    dist = np.abs(wrap_angle(c - np.asarray(start_angles)[None, :])).sum(axis=1)
    i0 = int(np.argmin(dist))
    order = order[i0:] + order[:i0]
    n_chains = max(1, min(int(n_chains), len(order)))
    return [list(p) for p in np.array_split(np.array(order), n_chains)]


def bias_energy(theta: np.ndarray, centre: float, kappa: float) -> np.ndarray:
    """Periodic harmonic bias in kJ/mol (kappa in kJ/mol/rad^2): the function the OpenMM restraint
    evaluates, 0.5 kappa min(d, 2 pi - d)^2 with d = |theta - centre|, for theta and centre in [-pi, pi]."""
    d = np.abs(np.asarray(theta, dtype=np.float64) - float(centre))
    d = np.minimum(d, 2 * math.pi - d)
    return 0.5 * kappa * d * d


def window_bias(data_or_angles, centre: np.ndarray, names: list[str], kappa) -> np.ndarray:
    """Total restraint energy (kJ/mol) of samples in the window with the given centre; kappa one
    number or one per restrained angle."""
    ks = list(kappa) if isinstance(kappa, (list, tuple, np.ndarray)) else [kappa] * len(names)
    return sum(bias_energy(data_or_angles[n], c, k) for n, c, k in zip(names, np.atleast_1d(centre), ks))


RESTRAINT_EXPRESSION = ("0.5*{k}*dtheta^2; dtheta = min(d, 2*pi - d); d = abs(theta - {t0}); pi = " + repr(math.pi))
