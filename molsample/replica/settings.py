"""Replica-exchange settings: the temperature ladder, run length, exchanges, and the run directory."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np



STORAGE = "storage.nc"


CHECKPOINT = "storage_checkpoint.nc"


_SNAP = re.compile(r"^snap_(\d{9})$")


def parse_temperatures(text: str) -> tuple[float, ...]:
    """'Tmin:Tmax:n' (n temperatures spaced geometrically, ends included) or an explicit comma list.

    Raises ValueError unless there are at least two finite, positive, strictly increasing temperatures.
    """
    text = str(text).strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            t_min, t_max, n_text = float(parts[0]), float(parts[1]), parts[2]
            n = int(n_text)
            if str(n) != n_text.strip():
                raise ValueError
            if n < 2:
                raise ValueError(f"--temperatures {text!r}: the ladder needs n >= 2 temperatures, got n = {n}")
            if not (t_min > 0 and t_max > t_min and math.isfinite(t_max)):
                raise ValueError(f"--temperatures {text!r}: need 0 < Tmin < Tmax (kelvin)")
            temps = tuple(float(t) for t in t_min * (t_max / t_min) ** (np.arange(n) / (n - 1)))
            return temps[:-1] + (t_max,)                     # the top exactly as given
        temps = tuple(float(t) for t in text.split(","))
    except ValueError as exc:
        if str(exc).startswith("--temperatures"):
            raise
        raise ValueError(f"--temperatures {text!r}: expected Tmin:Tmax:n (geometric ladder, e.g. 300:700:8) "
                         "or a comma-separated list in kelvin (e.g. 300,350,410)") from None
    validate_temperatures(temps, text)
    return temps


def validate_temperatures(temps, label=None) -> None:
    label = label if label is not None else ",".join(f"{t:g}" for t in temps)
    if len(temps) < 2:
        raise ValueError(f"--temperatures {label!r}: parallel tempering needs at least 2 temperatures")
    if not all(math.isfinite(t) and t > 0 for t in temps):
        raise ValueError(f"--temperatures {label!r}: every temperature must be a finite number > 0 K")
    if not all(b > a for a, b in zip(temps[:-1], temps[1:])):
        raise ValueError(f"--temperatures {label!r}: temperatures must be strictly increasing")


@dataclass(frozen=True)
class PTSettings:
    """One parallel-tempering run. Times in ps unless stated; ``ns`` is per replica."""
    system: str
    ns: float
    temperatures: tuple[float, ...]
    exchange_ps: float = 1.0              # dynamics between exchange attempts (one iteration)
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    equilibration_ps: float = 100.0       # per replica, with exchanges, before iteration 1
    minimise: bool = True
    platform: str = "Reference"
    seed: int = 0
    checkpoint_every: int = 100           # iterations between snapshots
    mixing: str = "swap-neighbors"

    def __post_init__(self):
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))

    @property
    def steps_per_iteration(self) -> int:
        return int(round(self.exchange_ps * 1000.0 / self.timestep_fs))

    @property
    def n_iterations(self) -> int:
        return int(round(self.ns * 1000.0 / self.exchange_ps))

    def validate(self) -> None:
        validate_temperatures(self.temperatures)
        for name, value in (("--ns", self.ns), ("--exchange-ps", self.exchange_ps), ("--timestep", self.timestep_fs),
                            ("--friction", self.friction_per_ps)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} {value!r}: expected a number > 0")
        if not (math.isfinite(self.equilibration_ps) and self.equilibration_ps >= 0):
            raise ValueError(f"--equilibration {self.equilibration_ps!r}: expected a number >= 0 (ps)")
        if abs(self.steps_per_iteration * self.timestep_fs - self.exchange_ps * 1000.0) > 1e-6 * self.exchange_ps * 1000:
            raise ValueError(f"--exchange-ps {self.exchange_ps}: must be a whole number of --timestep "
                             f"{self.timestep_fs} fs steps")
        if self.n_iterations < 1:
            raise ValueError(f"--ns {self.ns}: shorter than one exchange interval of {self.exchange_ps} ps")
        if not (isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 1):
            raise ValueError(f"--checkpoint-every {self.checkpoint_every!r}: expected an integer >= 1 (iterations)")
        if self.mixing not in ("swap-neighbors", "swap-all"):
            raise ValueError(f"mixing {self.mixing!r}: use 'swap-neighbors' or 'swap-all'")
        import openmm
        names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
        if self.platform not in names:
            raise ValueError(f"--platform {self.platform!r}: not an OpenMM platform here; available: {', '.join(names)}")


def run_directory(out: str | Path) -> Path:
    """The directory that holds the openmmtools storage of the run whose results go to OUT (.npz)."""
    out = Path(out)
    return out.with_name(out.stem + ".pt")


def _check_output(out: Path) -> None:
    if out.suffix != ".npz":
        raise ValueError(f"--out {str(out)!r}: the results file must end in .npz (a .json is written beside it)")
    parent = out.parent if str(out.parent) else Path(".")
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {str(out)!r}: cannot write in {existing}")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
