"""Running replica exchange on openmmtools and its storage: quiet imports, atomic snapshots of the NetCDF files,
restoring the newest one on --resume, and reading a run back ordered by temperature."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .settings import CHECKPOINT, STORAGE, _SNAP, PTSettings, _atomic_write_text



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
    cache, _, multistate, _ = _import_openmmtools()
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
            progress = _create_run(system, positions, settings, reporter())
            progress["cpu_seconds_setup"] = time.process_time() - c0
            _take_snapshot(work, 0, progress)
        else:
            progress = json.loads((snap / "progress.json").read_text())
            _restore_snapshot(snap, work)
        sampler = multistate.ParallelTemperingSampler.from_storage(reporter())
    from ..runtime import progress_bar
    bar = progress_bar(total=n_total, initial=int(sampler.iteration), enabled=show_progress, unit="it", desc=desc,
                       mininterval=5.0)
    try:
        done = _run_segments(sampler, settings, work, progress, bar)
    finally:
        bar.close()
        if sampler._reporter.is_open():
            sampler._reporter.close()
    progress["iteration"] = done
    progress["this_call_wall_seconds"] = time.perf_counter() - w0
    return progress


def _create_run(system, positions, settings: PTSettings, reporter) -> dict:
    """Create the openmmtools sampler in its storage: every replica from ``positions``, minimised and
    equilibrated as ``settings`` say. Returns the first progress record."""
    from openmm import unit
    _, mcmc, multistate, states = _import_openmmtools()
    np.random.seed([settings.seed, 0])
    move = mcmc.LangevinDynamicsMove(timestep=settings.timestep_fs * unit.femtosecond,
                                     collision_rate=settings.friction_per_ps / unit.picosecond,
                                     n_steps=settings.steps_per_iteration, reassign_velocities=True)
    sampler = multistate.ParallelTemperingSampler(mcmc_moves=move, number_of_iterations=settings.n_iterations,
                                                  replica_mixing_scheme=settings.mixing)
    thermo = states.ThermodynamicState(system=system, temperature=settings.temperatures[0] * unit.kelvin)
    start = [states.SamplerState(positions=np.asarray(positions, dtype=float) * unit.nanometer)
             for _ in settings.temperatures]
    sampler.create(thermo, start, reporter, temperatures=[t * unit.kelvin for t in settings.temperatures],
                   n_temperatures=len(settings.temperatures))
    if settings.minimise:
        sampler.minimize(tolerance=10.0 * unit.kilojoule_per_mole / unit.nanometer)
    n_eq = int(round(settings.equilibration_ps / settings.exchange_ps))
    if n_eq:
        sampler.equilibrate(n_eq)
    sampler._reporter.close()
    return {"cpu_seconds": 0.0, "wall_seconds": 0.0, "equilibration_iterations": n_eq}


def _run_segments(sampler, settings: PTSettings, work: Path, progress: dict, bar) -> int:
    """Extend the run to ``settings.n_iterations`` one snapshot segment at a time (exchanges seeded per
    segment, so a resumed run repeats the uninterrupted one), updating ``progress`` and the bar (ns/day,
    neighbour acceptance). Returns the iterations done."""
    n_total, done = settings.n_iterations, int(sampler.iteration)
    n_acc = np.zeros((len(settings.temperatures),) * 2)
    n_prop = np.zeros_like(n_acc)
    ns_per_it = settings.exchange_ps * 1e-3 * len(settings.temperatures)
    t_run, it_run = time.perf_counter(), 0
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
    return done


def read_storage(work: str | Path) -> dict:
    """Per-iteration data of the newest snapshot of a run (iterations 1..n; iteration 0 is the start).

    Returns arrays indexed [iteration, temperature] (``energy_kj_per_mol``, ``replica``),
    [iteration, replica] (``state``), positions [iteration, replica, atom, xyz] nm, and the summed
    exchange matrices ``accepted``, ``proposed`` [state_i, state_j].
    """
    import netCDF4

    from ..targets.openmm_target import kt_kj_per_mol
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
