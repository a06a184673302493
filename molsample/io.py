"""Reading files without trusting them: conformations (trajectories through mdtraj, PDB through
OpenMM at full precision, or an .npz with an ``xyz`` array), .npz archives of plain arrays, and
checkpoints (tensors and plain data only: nothing in a file is ever executed)."""
from __future__ import annotations

import contextlib
import os
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np

MDTRAJ_FORMATS = (".pdb", ".dcd", ".h5", ".hdf5", ".xtc", ".trr", ".nc", ".netcdf", ".gro", ".mdcrd")
ASCII_ONLY_FORMATS = (".dcd", ".xtc", ".trr")     # mdtraj's C writers encode the file name as ASCII
INTERNAL_FORMAT = "molsample-internal-1"          # the 'format' of internal-coordinate checkpoints


class InputError(ValueError):
    """A file or value given by the user that cannot be used; the message names it and says why."""


class TopologyMismatchError(InputError):
    """A file whose atoms do not match the target's topology."""


def _existing_file(path: Path, what: str = "file") -> Path:
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a {what}")
    if not path.is_file():
        raise FileNotFoundError(f"no such {what}: {path}")
    return path


def open_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, loaded; plain arrays only (no pickled objects).

    Raises :class:`InputError` naming the file when it is not a readable archive."""
    path = _existing_file(Path(path), ".npz file")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):            # a bare .npy array under an .npz name
            raise InputError(f"{path}: a single .npy array, expected an .npz archive")
        with data:
            return {k: data[k] for k in data.files}
    except InputError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc):
            raise InputError(f"{path}: not an .npz archive of plain arrays (it would need unpickling, which "
                             "molsample never does)") from None
        raise InputError(f"{path}: not a readable .npz archive ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise InputError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None


def read_checkpoint(path: str | Path, device="cpu") -> dict:
    """A molsample checkpoint, read with ``torch.load(weights_only=True)``: tensors and plain
    Python data only, so a file that carries code is refused before anything in it runs.

    Raises :class:`InputError` naming the file for a directory, a truncated file, a file that is
    not a checkpoint, or one holding anything but plain data."""
    import torch

    path = _existing_file(Path(path), "checkpoint file")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        import re
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it asks for {found.group(1)}" if found else "it is not plain data"
        raise InputError(f"{path}: refused: the file holds Python objects other than tensors and plain data "
                         f"({what}); molsample checkpoints never do, and loading it could run code") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError,
            AttributeError, TypeError) as exc:
        raise InputError(f"{path}: not a readable molsample checkpoint (truncated or another kind of file: "
                         f"{_first_line(exc)})") from None
    internal = isinstance(ckpt, dict) and ckpt.get("format") == INTERNAL_FORMAT
    needed = {"config", "model", "state"} if internal else {"config", "ema", "state"}
    if not isinstance(ckpt, dict) or not needed <= set(ckpt):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise InputError(f"{path}: not a molsample checkpoint (expected the keys {', '.join(sorted(needed))}; found "
                         f"{keys})")
    return ckpt


def check_output(path: str | Path, flag: str, suffixes: tuple[str, ...] | None = None) -> Path:
    """Check before any long work that ``path`` can be written: its suffix is one of ``suffixes``
    (if given), it is not a directory, and its directory exists or can be made and is writable
    (probed by creating and removing a file). Returns the path."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise InputError(f"{flag} {path}: unknown output format {path.suffix or '(none)'!r}; use one of "
                         f"{', '.join(suffixes)}")
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a directory, expected a file name")
    if path.suffix.lower() in ASCII_ONLY_FORMATS and not str(path.absolute()).isascii():
        raise InputError(f"{flag} {path}: mdtraj writes {path.suffix} files only to paths of ASCII characters "
                         f"(this one is {str(path.absolute())!r}); use .h5 or another folder")
    check_output_dir(path.parent, flag, shown=path)
    return path


def check_output_dir(directory: str | Path, flag: str, shown: str | Path | None = None) -> Path:
    """Check that files can be created in ``directory`` (or in the folders that would be made for
    it) without creating anything: its nearest existing ancestor must be a writable directory,
    probed by creating and removing a file."""
    directory = Path(directory)
    shown = directory if shown is None else shown
    base = directory.absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise InputError(f"{flag} {shown}: cannot write there ({base} is a file, not a directory)")
    probe = base / f".molsample-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"{flag} {shown}: cannot write there ({exc.strerror or exc}: {base})") from None
    return directory


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
    """Read every frame of a file as an array of shape (B, *event_shape), B >= 1, float64.

    Parameters
    ----------
    path : str or Path
        ``.npz`` with an ``xyz`` array (nm for molecules, reduced units otherwise), a PDB (read by
        OpenMM's PDBFile at the file's full precision, every MODEL a frame), or any other trajectory
        format mdtraj reads (DCD, HDF5, XTC, ...; formats without a topology use ``topology``).
    event_shape : tuple of int
        The target's event shape, e.g. (22, 3).
    topology : mdtraj.Topology, optional
        The target's topology; frames are checked against it.
    """
    path = _existing_file(Path(path))
    suffix = path.suffix.lower()
    if suffix == ".npz":
        data = open_npz(path)
        if "xyz" not in data:
            raise InputError(f"{path}: an .npz needs an 'xyz' array; found {sorted(data)}")
        try:
            xyz = np.asarray(data["xyz"], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{path}: 'xyz' is not numeric (dtype {data['xyz'].dtype})") from None
        if xyz.shape == tuple(event_shape):
            xyz = xyz[None]
        if xyz.shape[1:] != tuple(event_shape):
            raise TopologyMismatchError(f"{path}: 'xyz' has shape {xyz.shape}, expected (B, "
                                        f"{', '.join(map(str, event_shape))})")
        return _nonempty(xyz, path)
    if suffix not in MDTRAJ_FORMATS:
        raise InputError(f"{path}: unknown file format {path.suffix!r}; use .npz or one of {MDTRAJ_FORMATS}")
    if suffix == ".pdb":
        pdb_topology, xyz = read_pdb(path)
        if topology is None:
            if len(event_shape) != 2 or event_shape[1] != 3 or xyz.shape[1] != event_shape[0]:
                raise TopologyMismatchError(f"{path}: {xyz.shape[1]} atoms, but the system has event shape "
                                            f"{tuple(event_shape)}")
        else:
            check_topology(pdb_topology, topology, str(path))
        return xyz
    import mdtraj

    own_topology = suffix in (".h5", ".hdf5", ".gro")
    if topology is None and (not own_topology or len(event_shape) != 2 or event_shape[1] != 3):
        raise InputError(f"{path}: the system has no molecular topology; give positions as .npz with 'xyz' "
                         "or as HDF5/PDB")
    try:
        with quiet_stdout():        # mdtraj's DCD reader prints "dcdplugin) ..." lines from C
            traj = mdtraj.load(str(path)) if own_topology else mdtraj.load(str(path), top=topology)
    except Exception as exc:      # mdtraj raises many kinds for unreadable files; none is the user's bug
        raise InputError(f"{path}: not a readable {suffix} trajectory ({_first_line(exc)})") from None
    if topology is None:
        if traj.n_atoms != event_shape[0]:
            raise TopologyMismatchError(f"{path}: {traj.n_atoms} particles, but the system has {event_shape[0]}")
    else:
        check_topology(traj.topology, topology, str(path))
    return _nonempty(np.asarray(traj.xyz, dtype=np.float64), path)


@contextlib.contextmanager
def quiet_stdout():
    """Silence the process's standard output at the file-descriptor level (what C libraries print)."""
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):     # no real descriptor (e.g. captured): nothing to silence
        yield
        return
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, fd)
        os.close(saved)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _nonempty(xyz: np.ndarray, path: Path) -> np.ndarray:
    if len(xyz) == 0:
        raise InputError(f"{path}: holds no frames (shape {xyz.shape}); at least one is needed")
    return xyz


def check_pdb_text(path: Path) -> None:
    """Check a PDB file's coordinate records before a parser sees them, so that a damaged file is
    reported with its line: at least one ATOM/HETATM record, and x, y, z readable in columns 31-54."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    n_atoms = 0
    for number, line in enumerate(lines, 1):
        if line.startswith(("ATOM", "HETATM")):
            n_atoms += 1
            try:
                [float(line[a:b]) for a, b in ((30, 38), (38, 46), (46, 54))]
            except ValueError:
                raise InputError(f"{path}, line {number}: x, y, z in columns 31-54 are not numbers: "
                                 f"{line.rstrip()[:80]!r}") from None
    if n_atoms == 0:
        raise InputError(f"{path}: no ATOM or HETATM records; not a PDB file")


def load_pdbfile(path: str | Path):
    """OpenMM's ``PDBFile`` of a checked PDB file; errors name the file (and the line where known)."""
    from openmm import app

    path = _existing_file(Path(path), "PDB file")
    check_pdb_text(path)
    try:
        return app.PDBFile(str(path))
    except Exception as exc:      # OpenMM's parser raises assorted kinds on malformed records
        raise InputError(f"{path}: not a readable PDB file ({_first_line(exc)})") from None


def read_pdb(path: str | Path):
    """(mdtraj topology, positions (M, N, 3) float64 nm) of every MODEL of a PDB file, through
    OpenMM's PDBFile (the file's own precision, not float32)."""
    import mdtraj
    from openmm import unit

    pdb = load_pdbfile(path)
    xyz = [np.asarray(pdb.getPositions(asNumpy=True, frame=i).value_in_unit(unit.nanometer), dtype=np.float64)
           for i in range(pdb.getNumFrames())]
    return mdtraj.Topology.from_openmm(pdb.topology), _nonempty(np.stack(xyz), Path(path))


# ------------------------------------------------------------------ samples files

SAMPLES_SCHEMA = 1
SAMPLE_KINDS = ("samples", "positions", "mcmc", "umbrella", "umbrella-window", "replica-exchange", "reference", "md-energies", "md-chunk")


def save_samples(path: str | Path, kind: str, meta: dict | None = None, compressed: bool = False,
                 **arrays) -> Path:
    """Write a molsample .npz: the arrays, ``kind`` (one of SAMPLE_KINDS), the schema version and a JSON
    ``meta`` record, to a temporary file beside ``path`` renamed over it (never half-written).

    kind 'samples' (a sampler's output) holds x (M, N, s) nm (or reduced units), log_q (M,) and log_w (M,);
    'positions' holds xyz (unweighted conformations); 'md-chunk' a resumable MD run's frames (xyz, energy) and
    the OpenMM checkpoint after them; 'mcmc' holds xyz and energy; the reference kinds hold what their writers document."""
    import json
    import os
    if kind not in SAMPLE_KINDS:
        raise ValueError(f"unknown samples kind {kind!r}; use one of {SAMPLE_KINDS}")
    if kind == "samples" and not {"x", "log_q", "log_w"} <= set(arrays):
        raise ValueError("a 'samples' file needs x, log_q and log_w")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, kind=kind, schema=SAMPLES_SCHEMA,
                                                          meta=json.dumps(meta or {}, default=float), **arrays)
    os.replace(tmp, path)
    return path


def samples_kind(data: dict) -> str:
    """The kind of a molsample .npz: recorded since schema 1; for older files the one rule that tells them
    apart by the arrays they hold."""
    if "kind" in data and "schema" in data:
        return str(data["kind"])
    keys = set(data)
    if "compact_reference" in keys:
        return "reference"
    if "temperatures_K" in keys:
        return "replica-exchange"
    if "centre" in keys:
        return "umbrella-window"
    if "frames_xyz" in keys:
        return "umbrella"
    if "x" in keys and "log_q" in keys:
        return "samples"
    if "xyz" in keys and "energy" in keys and "meta" in keys:
        return "mcmc"
    if "energy_kj_per_mol" in keys and "reduced_energy" in keys:
        return "md-energies"
    if "xyz" in keys or "x" in keys:
        return "positions"
    raise InputError(f"not a molsample samples file: it holds {sorted(keys)}")


def reference_method(data: dict) -> str:
    """The method of a packed reference ('md', 'umbrella', 'replica-exchange'): its ``method`` entry (files
    of schema 1, whose ``kind`` is 'reference'), or the ``kind`` entry older packed files used for it."""
    return str(data["method"]) if "method" in data else str(data["kind"])


def read_meta(data: dict, path) -> dict:
    """The JSON 'meta' record of a molsample .npz ({} if it has none)."""
    import json
    if "meta" not in data:
        return {}
    try:
        meta = json.loads(str(data["meta"]))
    except json.JSONDecodeError:
        raise InputError(f"{path}: its 'meta' entry is not JSON") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: its 'meta' entry is not a JSON object")
    return meta
