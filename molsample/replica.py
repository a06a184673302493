"""Temperature replica exchange (parallel tempering) as an MD reference, on openmmtools.

One replica per temperature of a ladder runs Langevin dynamics (LangevinMiddleIntegrator through
openmmtools' ``LangevinDynamicsMove``) on the system's own ``openmm.System``; between segments of
``exchange_ps`` neighbouring temperatures attempt to swap configurations (Metropolis on
(beta_i - beta_j)(E_i - E_j)). Velocities are redrawn from Maxwell-Boltzmann at the replica's
temperature at the start of every segment, so an exchanged configuration never carries velocities
of another temperature.

Storage and resume: openmmtools' MultiStateReporter writes NetCDF files (``storage.nc``,
``storage_checkpoint.nc``) in the run directory. Every ``checkpoint_every`` iterations the files are
closed and copied into a new ``snap_<iteration>`` directory that appears by an atomic rename, after
which older snapshots are removed. ``--resume`` restores the newest complete snapshot and continues
from its last iteration with openmmtools' ``from_storage``: iterations after the snapshot (and
whatever a kill -9 left half-written in the live files) are discarded and run again, so none is lost
or counted twice.

Analysis (:func:`analyse_run`, on a finished or a partial run) reads the newest snapshot, orders the
data by temperature (energies, phi/psi per iteration and temperature) and combines all temperatures
with MBAR (pymbar) on samples decorrelated by each temperature's statistical inefficiency, with
reduced potentials u_k(x) = E(x) / (k_B T_k): dF(phi > 0 vs phi < 0) and the basin populations at the
system's temperature, with MBAR's asymptotic errors, a block bootstrap and independent halves; beside
it the plain estimate from the replica at that temperature, neighbour acceptance, round trips and the
statistical inefficiency of the phi > 0 indicator.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .io import save_samples

STORAGE = "storage.nc"
CHECKPOINT = "storage_checkpoint.nc"
_SNAP = re.compile(r"^snap_(\d{9})$")


# ----------------------------------------------------------------------------------------------------
# settings and validation
# ----------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------
# quiet openmmtools / pymbar
# ----------------------------------------------------------------------------------------------------

def _quiet_libraries() -> None:
    for name in ("openmmtools", "pymbar", "mpiplus"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def _silenced():
    """Swallow what openmmtools prints (citations, timing reports) to stdout."""
    _quiet_libraries()
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _import_openmmtools():
    _quiet_libraries()
    with _silenced():
        from openmmtools import cache, mcmc, multistate, states
        multistate.MultiStateSampler._global_citation_silence = True
    return cache, mcmc, multistate, states


# ----------------------------------------------------------------------------------------------------
# snapshots
# ----------------------------------------------------------------------------------------------------

def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def latest_snapshot(work: Path) -> Path | None:
    """The newest complete snapshot directory of a run, or None."""
    snaps = [p for p in Path(work).iterdir() if _SNAP.match(p.name) and (p / "progress.json").is_file()] \
        if Path(work).is_dir() else []
    return max(snaps, key=lambda p: int(_SNAP.match(p.name).group(1))) if snaps else None


def _take_snapshot(work: Path, iteration: int, progress: dict) -> Path:
    final = work / f"snap_{iteration:09d}"
    if final.exists():
        return final
    tmp = work / f"snap_{iteration:09d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name in (STORAGE, CHECKPOINT):
        shutil.copyfile(work / name, tmp / name)
        _fsync_path(tmp / name)
    (tmp / "progress.json").write_text(json.dumps({**progress, "iteration": iteration}, indent=2))
    _fsync_path(tmp / "progress.json")
    os.rename(tmp, final)                                  # atomic: a snapshot is complete or absent
    _fsync_path(work)
    for p in work.iterdir():                               # older snapshots and leftovers of a kill
        m = _SNAP.match(p.name)
        if (m and int(m.group(1)) < iteration) or p.name.endswith(".tmp"):
            shutil.rmtree(p, ignore_errors=True)
    return final


def _restore_snapshot(snap: Path, work: Path) -> None:
    for name in (STORAGE, CHECKPOINT):
        tmp = work / (name + ".restore")
        shutil.copyfile(snap / name, tmp)
        os.replace(tmp, work / name)


# ----------------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------------

def _set_platform(cache, platform: str) -> None:
    import openmm
    props = {"Threads": "1"} if platform == "CPU" else None
    cache.global_context_cache = cache.ContextCache(platform=openmm.Platform.getPlatformByName(platform),
                                                    platform_properties=props)


def run_pt_system(system, positions: np.ndarray, settings: PTSettings, work: str | Path, resume: bool = False,
                  show_progress: bool = True, desc: str = "pt") -> dict:
    """Run or resume parallel tempering of an ``openmm.System`` with storage in ``work``.

    ``positions`` (N, 3) nm start every replica. Returns the progress record of the newest snapshot.
    """
    from openmm import unit

    cache, mcmc, multistate, states = _import_openmmtools()
    work = Path(work)
    snap = latest_snapshot(work)
    if snap is not None and not resume:
        raise FileExistsError(f"{work} holds an earlier run; pass --resume to continue it")
    work.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(work / "settings.json", json.dumps(asdict(settings), indent=2))
    _set_platform(cache, settings.platform)
    n_total = settings.n_iterations
    n_atoms = system.getNumParticles()
    storage = str(work / STORAGE)

    def reporter():
        return multistate.MultiStateReporter(storage, checkpoint_interval=settings.checkpoint_every,
                                             analysis_particle_indices=list(range(n_atoms)),
                                             position_interval=1, velocity_interval=0)

    c0, w0 = time.process_time(), time.perf_counter()
    with _silenced():
        if snap is None:
            for name in (STORAGE, CHECKPOINT):                 # a start that never reached a snapshot
                (work / name).unlink(missing_ok=True)
            np.random.seed([settings.seed, 0])
            move = mcmc.LangevinDynamicsMove(timestep=settings.timestep_fs * unit.femtosecond,
                                             collision_rate=settings.friction_per_ps / unit.picosecond,
                                             n_steps=settings.steps_per_iteration, reassign_velocities=True)
            sampler = multistate.ParallelTemperingSampler(mcmc_moves=move, number_of_iterations=n_total,
                                                          replica_mixing_scheme=settings.mixing)
            thermo = states.ThermodynamicState(system=system, temperature=settings.temperatures[0] * unit.kelvin)
            start = [states.SamplerState(positions=np.asarray(positions, dtype=float) * unit.nanometer)
                     for _ in settings.temperatures]
            sampler.create(thermo, start, reporter(), temperatures=[t * unit.kelvin for t in settings.temperatures],
                           n_temperatures=len(settings.temperatures))
            if settings.minimise:
                sampler.minimize(tolerance=10.0 * unit.kilojoule_per_mole / unit.nanometer)
            n_eq = int(round(settings.equilibration_ps / settings.exchange_ps))
            if n_eq:
                sampler.equilibrate(n_eq)
            sampler._reporter.close()
            progress = {"cpu_seconds": 0.0, "wall_seconds": 0.0,
                        "cpu_seconds_setup": time.process_time() - c0,
                        "equilibration_iterations": n_eq}
            _take_snapshot(work, 0, progress)
        else:
            progress = json.loads((snap / "progress.json").read_text())
            _restore_snapshot(snap, work)
        sampler = multistate.ParallelTemperingSampler.from_storage(reporter())
    done = int(sampler.iteration)
    from .runtime import progress_bar
    bar = progress_bar(total=n_total, initial=done, enabled=show_progress, unit="it", desc=desc, mininterval=5.0)
    n_acc = np.zeros((len(settings.temperatures),) * 2)
    n_prop = np.zeros_like(n_acc)
    ns_per_it = settings.exchange_ps * 1e-3 * len(settings.temperatures)
    t_run, it_run = time.perf_counter(), 0
    try:
        while done < n_total:
            seg_end = min((done // settings.checkpoint_every + 1) * settings.checkpoint_every, n_total)
            np.random.seed([settings.seed, done + 1])           # exchanges reproducible per segment
            c_seg, w_seg = time.process_time(), time.perf_counter()
            with _silenced():
                while sampler.iteration < seg_end:
                    sampler.extend(1)
                    n_acc += sampler._n_accepted_matrix
                    n_prop += sampler._n_proposed_matrix
                    it_run += 1
                    bar.update(1)
                    if it_run % 10 == 0 or sampler.iteration == seg_end:
                        pairs = [n_acc[i, i + 1] / n_prop[i, i + 1] for i in range(len(n_acc) - 1)
                                 if n_prop[i, i + 1] > 0]
                        rate = it_run * ns_per_it / max(time.perf_counter() - t_run, 1e-9) * 86400
                        bar.set_postfix_str(f"{rate:.0f} ns/day (all replicas), neighbour acceptance "
                                            f"{np.mean(pairs) if pairs else float('nan'):.2f}", refresh=False)
                sampler._reporter.close()
            done = int(sampler.iteration)
            progress["cpu_seconds"] += time.process_time() - c_seg
            progress["wall_seconds"] += time.perf_counter() - w_seg
            _take_snapshot(work, done, progress)
            if done < n_total:
                sampler._reporter.open(mode="a")
    finally:
        bar.close()
        if sampler._reporter.is_open():
            sampler._reporter.close()
    progress["iteration"] = done
    progress["this_call_wall_seconds"] = time.perf_counter() - w0
    return progress


# ----------------------------------------------------------------------------------------------------
# reading storage
# ----------------------------------------------------------------------------------------------------

def read_storage(work: str | Path) -> dict:
    """Per-iteration data of the newest snapshot of a run (iterations 1..n; iteration 0 is the start).

    Returns arrays indexed [iteration, temperature] (``energy_kj_per_mol``, ``replica``),
    [iteration, replica] (``state``), positions [iteration, replica, atom, xyz] nm, and the summed
    exchange matrices ``accepted``, ``proposed`` [state_i, state_j].
    """
    import netCDF4

    from .targets.openmm_target import kt_kj_per_mol
    work = Path(work)
    for attempt in range(3):          # a running job may replace the newest snapshot while we open it
        snap = latest_snapshot(work)
        if snap is None:
            raise FileNotFoundError(f"{work}: no completed snapshot of a parallel-tempering run")
        try:
            progress = json.loads((snap / "progress.json").read_text())
            with netCDF4.Dataset(str(snap / STORAGE), "r") as nc:
                last = int(nc.variables["last_iteration"][0])
                sl = slice(1, last + 1)
                u = np.asarray(nc.variables["energies"][sl], dtype=np.float64)        # (T, R, K) reduced
                state = np.asarray(nc.variables["states"][sl], dtype=np.int64)         # (T, R)
                xyz = np.asarray(nc.variables["positions"][sl], dtype=np.float32)      # (T, R, N, 3)
                acc = np.asarray(nc.variables["accepted"][sl], dtype=np.float64).sum(axis=0)
                prop = np.asarray(nc.variables["proposed"][sl], dtype=np.float64).sum(axis=0)
            break
        except (FileNotFoundError, OSError):
            if attempt == 2:
                raise
            time.sleep(1.0)
    settings = json.loads((work / "settings.json").read_text()) if (work / "settings.json").is_file() else None
    n_it, n_rep, n_states = u.shape
    if settings is None:
        raise FileNotFoundError(f"{work / 'settings.json'}: missing; cannot tell the run's temperatures")
    temps = np.asarray(settings["temperatures"], dtype=float)
    kt = np.array([kt_kj_per_mol(t) for t in temps])
    # the replica in state k at each iteration, and its energy from its reduced potential there
    replica = np.argsort(state, axis=1)                                        # (T, K): state k <- replica
    rows = np.arange(n_it)[:, None]
    u_own = u[rows, replica, np.arange(n_states)[None, :]]
    energy = u_own * kt[None, :]
    return {"iterations": np.arange(1, n_it + 1), "temperatures": temps,
            "exchange_ps": float(settings["exchange_ps"]) if settings else 1.0, "kt": kt, "state": state,
            "replica": replica, "energy_kj_per_mol": energy, "positions": xyz, "reduced_potentials": u,
            "accepted": acc, "proposed": prop, "progress": progress, "snapshot": str(snap)}


# ----------------------------------------------------------------------------------------------------
# analysis: exchange statistics
# ----------------------------------------------------------------------------------------------------

def neighbour_acceptance(accepted: np.ndarray, proposed: np.ndarray) -> list[dict]:
    out = []
    for i in range(len(accepted) - 1):
        n = proposed[i, i + 1]
        out.append({"pair": [i, i + 1], "proposed": int(n), "accepted": int(accepted[i, i + 1]),
                    "acceptance": float(accepted[i, i + 1] / n) if n > 0 else None})
    return out


def round_trips(state: np.ndarray, n_states: int) -> np.ndarray:
    """Round trips lowest -> highest -> lowest temperature of each replica.

    state : (iterations, replicas) state index of every replica; returns counts per replica. A trip
    starts when the replica is at the lowest temperature, so the first arrival there does not count.
    """
    state = np.asarray(state)
    top = n_states - 1
    counts = np.zeros(state.shape[1], dtype=int)
    for r in range(state.shape[1]):
        phase = None                     # None: lowest not reached yet; 'up': heading for the top; 'down': back
        for s in state[:, r]:
            if s == 0:
                if phase == "down":
                    counts[r] += 1
                phase = "up"
            elif s == top and phase == "up":
                phase = "down"
    return counts


# ----------------------------------------------------------------------------------------------------
# analysis: MBAR over temperatures
# ----------------------------------------------------------------------------------------------------

def _inefficiency(x: np.ndarray) -> float:
    _quiet_libraries()
    from pymbar import timeseries
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0:
        return 1.0
    return max(float(timeseries.statistical_inefficiency(x)), 1.0)


def _mbar_solve(energy_n: np.ndarray, n_k: np.ndarray, kt: np.ndarray, initial_f_k=None):
    from pymbar import MBAR
    u_kn = energy_n[None, :] / kt[:, None]
    with _silenced():
        return MBAR(u_kn, n_k, initial_f_k=initial_f_k, verbose=False)


def _mbar_expect(mbar, a_n: np.ndarray, u_target: np.ndarray) -> tuple[float, float]:
    a_n = np.asarray(a_n, dtype=float)
    if np.ptp(a_n) == 0:
        return float(a_n[0]), 0.0
    with _silenced(), np.errstate(divide="ignore"):                 # log(0) of indicator values is expected
        e = mbar.compute_expectations(a_n, u_kn=u_target[None, :])
    return float(e["mu"][0]), float(e["sigma"][0])


def mbar_temperatures(energy: np.ndarray, temperatures, target_temperature: float, observables: dict,
                      slow: list | None = None, n_boot: int = 100, n_blocks: int = 20, seed: int = 0) -> dict:
    """MBAR over every temperature of a ladder at ``target_temperature``.

    energy : (iterations, K) potential energy (kJ/mol) of the sample at each temperature;
    observables : name -> (iterations, K) values (e.g. indicators) whose expectation is wanted;
    slow : further (iterations, K) series whose statistical inefficiency limits the decorrelation.
    Each temperature's series is subsampled with g_k, the largest statistical inefficiency of its
    energy and the slow series (pymbar); reduced potentials are u_k = E / (k_B T_k).

    Returns per observable: MBAR value and asymptotic stderr, the block-bootstrap stderr (n_blocks
    contiguous blocks of iterations, resampled with replacement, n_boot times), and the values from
    the first and second half of the iterations analysed separately; plus 'mean_energy_kj_per_mol'.
    """
    _quiet_libraries()
    from pymbar import timeseries

    from .targets.openmm_target import kt_kj_per_mol
    energy = np.asarray(energy, dtype=np.float64)
    n_it, n_states = energy.shape
    kt = np.array([kt_kj_per_mol(t) for t in temperatures])
    kt_target = kt_kj_per_mol(target_temperature)
    slow = list(slow or [])
    keep, g_k = [], []
    for k in range(n_states):
        g = max([_inefficiency(energy[:, k])] + [_inefficiency(np.asarray(s)[:, k]) for s in slow])
        idx = np.asarray(timeseries.subsample_correlated_data(energy[:, k], g=g), dtype=int) if g > 1 \
            else np.arange(n_it)
        keep.append(idx)
        g_k.append(g)
    t_n = np.concatenate(keep)
    k_n = np.concatenate([np.full(len(i), k) for k, i in enumerate(keep)])
    e_n = energy[t_n, k_n]
    obs = {"mean_energy_kj_per_mol": e_n, **{name: np.asarray(a, dtype=float)[t_n, k_n]
                                             for name, a in observables.items()}}

    def estimate(mask, initial_f_k=None, with_error=True):
        n_k = np.bincount(k_n[mask], minlength=n_states)
        order = np.argsort(k_n[mask], kind="stable")        # pymbar wants samples grouped by state
        e = e_n[mask][order]
        mbar = _mbar_solve(e, n_k, kt, initial_f_k)
        u_t = e / kt_target
        vals = {name: _mbar_expect(mbar, a[mask][order], u_t) for name, a in obs.items()}
        return mbar, vals if with_error else {n: v[0] for n, v in vals.items()}

    everything = np.ones(len(t_n), dtype=bool)
    mbar, full = estimate(everything)
    halves = [estimate(t_n < n_it // 2, mbar.f_k, False)[1], estimate(t_n >= n_it // 2, mbar.f_k, False)[1]]
    rng = np.random.default_rng(seed)
    block = np.minimum(t_n * n_blocks // max(n_it, 1), n_blocks - 1)
    members = [np.flatnonzero(block == b) for b in range(n_blocks)]
    boot = []
    for _ in range(n_boot):
        pick = np.concatenate([members[b] for b in rng.integers(0, n_blocks, n_blocks)])
        if len(np.unique(k_n[pick])) < n_states:
            continue
        sel = np.zeros(len(t_n), dtype=int)
        np.add.at(sel, pick, 1)
        mask = np.repeat(np.arange(len(t_n)), sel)
        boot.append(_boot_estimate(e_n[mask], k_n[mask], {n: a[mask] for n, a in obs.items()}, kt, kt_target,
                                   n_states, mbar.f_k))
    out = {}
    for name in obs:
        b = np.array([x[name] for x in boot]) if boot else np.array([])
        out[name] = {"value": full[name][0], "stderr": full[name][1],
                     "stderr_bootstrap": float(np.std(b, ddof=1)) if len(b) > 1 else math.nan,
                     "halves": [halves[0][name], halves[1][name]],
                     "stderr_halves": abs(halves[0][name] - halves[1][name]) / 2,
                     "_bootstrap": b}
    overlap = mbar.compute_overlap()["matrix"]
    info = {"g": [float(g) for g in g_k], "n_decorrelated": [int(len(i)) for i in keep],
            "f_k": [float(f) for f in mbar.f_k], "n_bootstrap": len(boot), "n_blocks": n_blocks,
            "neighbour_overlap": [float(overlap[i, i + 1]) for i in range(n_states - 1)]}
    return {"observables": out, "mbar": info}


def _boot_estimate(e, k, obs, kt, kt_target, n_states, f_k):
    order = np.argsort(k, kind="stable")
    n_k = np.bincount(k, minlength=n_states)
    mbar = _mbar_solve(e[order], n_k, kt, f_k)
    u_t = e[order] / kt_target
    return {name: _mbar_expect(mbar, a[order], u_t)[0] for name, a in obs.items()}


def _with_dF(p: dict) -> dict:
    """dF = -ln(p / (1 - p)) with each error of p carried through (delta method; bootstrap directly)."""
    from .estimate import delta_f_from_population, log_odds
    est = delta_f_from_population(p["value"], p["stderr"])
    b = np.array([log_odds(x) for x in p.get("_bootstrap", [])])
    b = b[np.isfinite(b)]
    out = {"value": est.value, "stderr": est.stderr,
           "stderr_bootstrap": float(np.std(b, ddof=1)) if len(b) > 1 else math.nan}
    if "halves" in p:
        h = [log_odds(x) for x in p["halves"]]
        out.update(halves=h, stderr_halves=abs(h[0] - h[1]) / 2 if all(map(math.isfinite, h)) else math.nan)
    return out


def _public(p: dict) -> dict:
    return {k: v for k, v in p.items() if not k.startswith("_")}


def _plain_estimate(ind: np.ndarray) -> dict:
    """Fraction of a correlated 0/1 series with its stderr sqrt(p (1 - p) g / n)."""
    ind = np.asarray(ind, dtype=float)
    p, g = float(ind.mean()), _inefficiency(ind)
    return {"value": p, "stderr": math.sqrt(p * (1 - p) * g / len(ind)), "g": g}


def analyse_run(work: str | Path, target, target_temperature: float | None = None, n_boot: int = 100,
                seed: int = 0) -> tuple[dict, dict]:
    """Estimates of a finished or partial run (its newest snapshot); returns (estimates, arrays)."""
    import mdtraj

    from .analysis.basins import BASINS, basin_indicators, phi_positive
    from .analysis.timeseries import backbone_dihedrals, inefficiency_report, residue_phi
    data = read_storage(work)
    temps, energy = data["temperatures"], data["energy_kj_per_mol"]
    n_it, n_states = energy.shape
    if n_it < 4:
        raise ValueError(f"{work}: only {n_it} iteration(s) stored; nothing to analyse yet")
    t_target = float(target_temperature if target_temperature is not None else target.temperature)
    rows = np.arange(n_it)[:, None]
    xyz = data["positions"][rows, data["replica"]]                        # (T, K, N, 3) by temperature
    topology = target.topology
    dih, traj = {}, None
    if topology is not None and topology.n_residues > 1:
        traj = mdtraj.Trajectory(xyz.reshape(-1, *xyz.shape[2:]), topology)
        dih = {k: v.reshape(n_it, n_states) for k, v in backbone_dihedrals(traj).items()}
    arrays = {"iteration": data["iterations"], "temperatures_K": temps, "energy_kj_per_mol": energy,
              "replica": data["replica"].astype(np.int16), "state": data["state"].astype(np.int16),
              "accepted": data["accepted"], "proposed": data["proposed"]}
    pairs = neighbour_acceptance(data["accepted"], data["proposed"])
    trips = round_trips(data["state"], n_states)
    frame_ps = data["exchange_ps"]
    res = {"temperature_K": t_target, "n_iterations": int(n_it),
           "exchange": {"neighbour_acceptance": pairs,
                        "mean_neighbour_acceptance": float(np.mean([p["acceptance"] for p in pairs
                                                                    if p["acceptance"] is not None])),
                        "round_trips_per_replica": trips.tolist(), "round_trips": int(trips.sum())},
           "mean_energy_per_temperature_kj_per_mol": energy.mean(axis=0).tolist()}
    observables, slow = {}, []
    per_residue = {}
    if traj is not None:
        names, phi_all = residue_phi(traj)
        if len(names) > 1:                # a peptide with several residues: each one's phi > 0 state
            for j, name in enumerate(names):
                per_residue[name] = f"phi_positive:{name}"
                observables[per_residue[name]] = phi_positive(phi_all[:, j].reshape(n_it, n_states))
                slow.append(observables[per_residue[name]].astype(float))     # its decorrelation counts too
    if "phi" in dih:
        phi, psi = dih["phi"], dih["psi"]
        arrays.update(phi=phi.astype(np.float32), psi=psi.astype(np.float32))
        pos = phi_positive(phi)
        observables["p_phi_positive"] = pos
        ind = basin_indicators(phi, psi)
        for name in BASINS:
            observables[f"basin:{name}"] = ind[name]
        slow += [pos.astype(float), np.sin(phi), np.cos(psi)]
        res["p_phi_positive_per_temperature"] = pos.mean(axis=0).tolist()
    m = mbar_temperatures(energy, temps, t_target, observables, slow, n_boot=n_boot, seed=seed)
    obs = m["observables"]
    res["mbar"] = m["mbar"]
    res["mean_energy_kj_per_mol"] = _public(obs["mean_energy_kj_per_mol"])
    at = np.flatnonzero(np.abs(temps - t_target) < 1e-6)
    if "p_phi_positive" in obs:
        p = obs["p_phi_positive"]
        res["p_phi_positive"] = _public(p)
        res["dF_phi_positive_minus_negative_kT"] = _with_dF(p)
        res["basins"] = {name: _public(obs[f"basin:{name}"]) for name in BASINS}
        if len(at):
            k = int(at[0])
            series = observables["p_phi_positive"][:, k].astype(float)
            plain = _plain_estimate(series)
            res["replica_at_temperature"] = {
                "p_phi_positive": plain,
                "dF_phi_positive_minus_negative_kT": _with_dF(plain),
                "basins": {name: _plain_estimate(observables[f"basin:{name}"][:, k]) for name in BASINS}}
            res["phi_positive_inefficiency"] = inefficiency_report(series, frame_ps)
    if per_residue:
        res["per_residue_phi_positive"] = {
            name: {"p_phi_positive": _public(obs[key]), "dF_phi_positive_minus_negative_kT": _with_dF(obs[key])}
            for name, key in per_residue.items()}
    if len(at):
        k = int(at[0])
        stride = max(1, n_it // 5000)
        arrays["frames_xyz"] = xyz[::stride, k].astype(np.float32)
        arrays["frames_iteration"] = data["iterations"][::stride]
    return res, arrays


# ----------------------------------------------------------------------------------------------------
# the molsample front end
# ----------------------------------------------------------------------------------------------------

def _load_pt_target(settings: PTSettings):
    from .targets import load_target
    target = load_target(settings.system)
    if not target.has_openmm:
        raise ValueError(f"system {settings.system!r} has no OpenMM form; parallel tempering needs a force-field system")
    if target.temperature is None or target.positions is None:
        raise ValueError(f"system {settings.system!r} is defined in reduced units (no temperature in kelvin); "
                         "parallel tempering needs a force-field system")
    t = target.temperature
    if not (settings.temperatures[0] - 1e-6 <= t <= settings.temperatures[-1] + 1e-6):
        raise ValueError(f"--temperatures {settings.temperatures[0]:g}..{settings.temperatures[-1]:g} K: the ladder "
                         f"must contain the system's temperature {t:g} K")
    return target


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_resume_settings(saved: dict, settings: PTSettings, work: Path) -> None:
    new = json.loads(json.dumps(asdict(settings)))
    diff = [k for k in new if k != "ns" and new[k] != saved.get(k)]
    if diff:
        raise ValueError(f"{work}: the run was started with different settings ("
                         + ", ".join(f"{k}: {saved.get(k)!r} there, {new[k]!r} now" for k in diff) + ")")
    if settings.ns < saved["ns"]:
        raise ValueError(f"--ns {settings.ns}: the run in {work} was started with --ns {saved['ns']}; "
                         "resume with at least that (more extends it)")


def run_pt(settings: PTSettings, out: str | Path, resume: bool = False, show_progress: bool = True,
           analyse_only: bool = False, n_boot: int = 100) -> dict:
    """Run (or resume, or only analyse) parallel tempering of a molsample system.

    Writes OUT (.npz: per-iteration energies, phi, psi, replica/state indices by temperature, frames
    at the system's temperature) and OUT.json (settings, estimates, exchange statistics, CPU time,
    versions). The openmmtools storage lives in OUT's run directory (NAME.pt/).
    """
    _quiet_libraries()
    import openmm
    import openmmtools
    import pymbar

    out = Path(out)
    settings.validate()
    _check_output(out)
    target = _load_pt_target(settings)
    work = run_directory(out)
    settings_file = work / "settings.json"
    if analyse_only or resume:
        if not work.is_dir() or not settings_file.is_file():
            raise FileNotFoundError(f"{work}: no parallel-tempering run there to "
                                    + ("analyse" if analyse_only else "resume") + "; start one without --resume")
        saved = json.loads(settings_file.read_text())
        if analyse_only:
            settings = PTSettings(**{**saved, "temperatures": tuple(saved["temperatures"])})
        else:
            _check_resume_settings(saved, settings, work)
    elif work.exists():
        raise FileExistsError(f"{work} exists from an earlier run; pass --resume to continue it")
    progress = None
    if not analyse_only:
        work.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(settings_file, json.dumps(asdict(settings), indent=2))
        system, _ = target.openmm_system()
        progress = run_pt_system(system, target.positions, settings, work, resume=resume,
                                 show_progress=show_progress, desc=f"pt {target.name}")
    c_analysis = time.process_time()
    res, arrays = analyse_run(work, target, n_boot=n_boot, seed=settings.seed)
    c_analysis = time.process_time() - c_analysis
    snap = latest_snapshot(work)
    progress = json.loads((snap / "progress.json").read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    save_samples(out, "replica-exchange", None, compressed=True, **arrays, kT_kj_per_mol=target.kt, system=target.name)
    meta = {"settings": asdict(settings), "estimates": res, "method": "parallel tempering (openmmtools "
            "ParallelTemperingSampler, LangevinDynamicsMove = LangevinMiddleIntegrator, velocities redrawn "
            f"every iteration, {settings.mixing}), MBAR over all temperatures (pymbar)",
            "system": target.name, "forcefield": list(target.forcefield), "constraints": "none",
            "n_iterations": res["n_iterations"], "n_iterations_target": settings.n_iterations,
            "complete": res["n_iterations"] >= settings.n_iterations,
            "ns_per_replica_done": res["n_iterations"] * settings.exchange_ps / 1000.0,
            "cpu_seconds": progress["cpu_seconds"] + progress.get("cpu_seconds_setup", 0.0),
            "cpu_seconds_production": progress["cpu_seconds"], "wall_seconds_production": progress["wall_seconds"],
            "cpu_seconds_analysis": c_analysis,
            "ns_per_day_all_replicas": (res["n_iterations"] * settings.exchange_ps * 1e-3 * len(settings.temperatures)
                                        / progress["wall_seconds"] * 86400 if progress["wall_seconds"] > 0 else None),
            "run_directory": str(work), "snapshot": str(snap),
            "openmm_version": openmm.__version__, "openmmtools_version": openmmtools.__version__,
            "pymbar_version": pymbar.__version__,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=2, default=_json_default))
    return meta


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x))
