"""Reading conformations: trajectories through mdtraj, or an .npz with an ``xyz`` array."""
from __future__ import annotations

from pathlib import Path

import numpy as np

MDTRAJ_FORMATS = (".pdb", ".dcd", ".h5", ".hdf5", ".xtc", ".trr", ".nc", ".netcdf", ".gro", ".mdcrd")


class TopologyMismatchError(ValueError):
    """A file whose atoms do not match the target's topology."""


def check_topology(found, expected, source: str) -> None:
    """Raise :class:`TopologyMismatchError` unless two mdtraj topologies have the same atoms in order.

    Atoms are compared by element, name and residue name.
    """
    if found.n_atoms != expected.n_atoms:
        raise TopologyMismatchError(f"{source}: {found.n_atoms} atoms, but the system has {expected.n_atoms}")
    for a, b in zip(found.atoms, expected.atoms):
        if (a.element, a.name, a.residue.name) != (b.element, b.name, b.residue.name):
            raise TopologyMismatchError(
                f"{source}: atom {a.index} is {a.residue.name}:{a.name} ({a.element.symbol}) in the file "
                f"but {b.residue.name}:{b.name} ({b.element.symbol}) in the system")


def read_positions(path: str | Path, event_shape: tuple[int, ...], topology=None) -> np.ndarray:
    """Read every frame of a file as an array of shape (B, *event_shape).

    Parameters
    ----------
    path : str or Path
        ``.npz`` with an ``xyz`` array (nm for molecules, reduced units otherwise), or any
        trajectory format mdtraj reads (PDB, DCD, HDF5, XTC, ...; formats without a topology
        use ``topology``).
    event_shape : tuple of int
        The target's event shape, e.g. (22, 3).
    topology : mdtraj.Topology, optional
        The target's topology; frames read through mdtraj are checked against it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix == ".npz":
        with np.load(path) as data:
            if "xyz" not in data:
                raise ValueError(f"{path}: an .npz needs an 'xyz' array; found {sorted(data.files)}")
            xyz = np.asarray(data["xyz"], dtype=np.float64)
        if xyz.shape == tuple(event_shape):
            xyz = xyz[None]
        if xyz.shape[1:] != tuple(event_shape):
            raise TopologyMismatchError(f"{path}: 'xyz' has shape {xyz.shape}, expected (B, "
                                        f"{', '.join(map(str, event_shape))})")
        return xyz
    if path.suffix.lower() not in MDTRAJ_FORMATS:
        raise ValueError(f"{path}: unknown file format {path.suffix!r}; use .npz or one of {MDTRAJ_FORMATS}")
    import mdtraj

    own_topology = path.suffix.lower() in (".pdb", ".h5", ".hdf5", ".gro")
    if topology is None:
        # particle systems (LJ): a file that carries its own topology, length unit = 1 nm in the file
        if not own_topology or len(event_shape) != 2 or event_shape[1] != 3:
            raise ValueError(f"{path}: the system has no molecular topology; give positions as .npz with 'xyz' "
                             "or as HDF5/PDB")
        traj = mdtraj.load(str(path))
        if traj.n_atoms != event_shape[0]:
            raise TopologyMismatchError(f"{path}: {traj.n_atoms} particles, but the system has {event_shape[0]}")
        return np.asarray(traj.xyz, dtype=np.float64)
    traj = mdtraj.load(str(path)) if own_topology else mdtraj.load(str(path), top=topology)
    check_topology(traj.topology, topology, str(path))
    return np.asarray(traj.xyz, dtype=np.float64)
