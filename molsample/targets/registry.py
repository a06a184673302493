"""Systems by name: every YAML file under ``systems/`` defines one target.

A system file has a ``kind`` and the keys of that kind's spec below; unknown keys are errors.
The systems directory is ``$MOLSAMPLE_SYSTEMS`` if set, else ``systems/`` beside the package.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ..schema import ConfigError, check_ranges, from_dict, load_yaml
from .analytic import Funnel, GaussianMixture, ManyWell, MultiWell
from .base import Target
from .openmm_target import OpenMMTarget
from .particles import DoubleWell4, LennardJones


@dataclass(frozen=True)
class OpenMMSpec:
    name: str
    kind: Literal["openmm"]
    pdb: str
    forcefield: tuple[str, ...]
    temperature: float = 300.0
    nonbonded_method: Literal["NoCutoff"] = "NoCutoff"
    description: str = ""
    reference: str = ""           # the settled reference of this system (relative to the file), compare's default

    def __post_init__(self):
        check_ranges(self, "system", {"temperature": ">0"})


@dataclass(frozen=True)
class LennardJonesSpec:
    name: str
    kind: Literal["lennard-jones"]
    n_particles: int
    epsilon: float = 1.0
    r_m: float = 1.0
    tether: float = 0.5
    tau: float = 1.0
    convention: Literal["pairs-once", "dem"] = "pairs-once"
    description: str = ""

    def __post_init__(self):
        check_ranges(self, "system", {"n_particles": ">=1", "epsilon": ">0", "r_m": ">0", "tether": ">=0", "tau": ">0"})


@dataclass(frozen=True)
class DoubleWellSpec:
    name: str
    kind: Literal["double-well"]
    n_particles: int = 4
    a: float = 0.9
    b: float = -4.0
    c: float = 0.0
    d0: float = 4.0
    tau: float = 1.0
    description: str = ""

    def __post_init__(self):
        check_ranges(self, "system", {"n_particles": ">=1", "tau": ">0"})


@dataclass(frozen=True)
class GMMSpec:
    name: str
    kind: Literal["gmm"]
    n_modes: int
    dim: int
    box: float
    std: float
    seed: int = 0
    layout: Literal["uniform", "grid"] = "uniform"
    generator: Literal["numpy-pcg64"] = "numpy-pcg64"
    description: str = ""


@dataclass(frozen=True)
class FunnelSpec:
    name: str
    kind: Literal["funnel"]
    dim: int = 10
    scale: float = 3.0
    description: str = ""


@dataclass(frozen=True)
class MultiWellSpec:
    name: str
    kind: Literal["multiwell"]
    dim: int
    n_double_wells: int
    separation: float
    description: str = ""


@dataclass(frozen=True)
class ManyWellSpec:
    name: str
    kind: Literal["manywell"]
    dim: int = 32
    description: str = ""


def _build_openmm(s: OpenMMSpec, base: Path) -> Target:
    return OpenMMTarget.from_files(s.name, base / s.pdb, s.forcefield, s.temperature, s.nonbonded_method, base)


KINDS = {
    "openmm": (OpenMMSpec, _build_openmm),
    "lennard-jones": (LennardJonesSpec, lambda s, _: LennardJones(
        s.n_particles, s.epsilon, s.r_m, s.tether, s.tau, s.convention, name=s.name)),
    "double-well": (DoubleWellSpec, lambda s, _: DoubleWell4(
        s.n_particles, s.a, s.b, s.c, s.d0, s.tau, name=s.name)),
    "gmm": (GMMSpec, lambda s, _: GaussianMixture(s.n_modes, s.dim, s.box, s.std, s.seed, name=s.name,
                                                  layout=s.layout)),
    "multiwell": (MultiWellSpec, lambda s, _: MultiWell(s.dim, s.n_double_wells, s.separation, name=s.name)),
    "funnel": (FunnelSpec, lambda s, _: Funnel(s.dim, s.scale, name=s.name)),
    "manywell": (ManyWellSpec, lambda s, _: ManyWell(s.dim, name=s.name)),
}


def systems_dir() -> Path:
    """Directory holding the system files."""
    env = os.environ.get("MOLSAMPLE_SYSTEMS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "systems"


def system_files() -> dict[str, Path]:
    """Map of system name -> YAML file, for every system file under :func:`systems_dir`."""
    out: dict[str, Path] = {}
    for path in sorted(systems_dir().rglob("*.yaml")):
        name = load_yaml(path).get("name")
        if not isinstance(name, str):
            raise ConfigError(f"{path}: a system file needs a string 'name'")
        if name in out:
            raise ConfigError(f"system name {name!r} is defined twice: {out[name]} and {path}")
        out[name] = path
    return out


def load_spec(path: str | Path, overrides: dict | None = None):
    """Parse a system file into its typed spec (with optional key overrides)."""
    path = Path(path)
    data = {**load_yaml(path), **(overrides or {})}
    kind = data.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{path}: unknown system kind {kind!r}; use one of {sorted(KINDS)}")
    return from_dict(KINDS[kind][0], data, str(path))


def load_target(name_or_path: str | Path, **overrides) -> Target:
    """Build a target from a system name (see `molsample systems`) or a path to a system YAML.

    Keyword overrides replace keys of the file, e.g. ``load_target('lj13', convention='dem')``.
    """
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        files = system_files()
        if str(name_or_path) not in files:
            raise ConfigError(f"unknown system {str(name_or_path)!r}; known systems: {', '.join(files)} "
                              "(or give the path to a system YAML file)")
        path = files[str(name_or_path)]
    spec = load_spec(path, overrides)
    return KINDS[spec.kind][1](spec, path.parent)


def spec_dict(name_or_path: str | Path) -> dict:
    """The spec of a system as a plain dict (for reports)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = system_files()[str(name_or_path)]
    return asdict(load_spec(path))


def default_reference(name_or_path: str | Path) -> Path | None:
    """The system's settled reference file (its ``reference`` key), or None if it names none."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        files = system_files()
        if str(name_or_path) not in files:
            return None
        path = files[str(name_or_path)]
    ref = getattr(load_spec(path), "reference", "")
    if not ref:
        return None
    full = path.parent / ref
    if not full.is_file():
        raise ConfigError(f"{path}: reference {ref!r} does not exist ({full})")
    return full
