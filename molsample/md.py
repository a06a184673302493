"""Reference molecular dynamics with OpenMM: the same System the sampler targets.

Langevin (LangevinMiddleIntegrator) dynamics, no constraints, explicit minimisation and
equilibration, independent replicas in parallel processes. Frames are written in chunks, each an
atomic ``.npz`` holding positions, potential energies and an OpenMM checkpoint of the state at
its end, so a killed run resumes from its last chunk without losing or duplicating frames. When
every chunk is in, the replica is assembled into one trajectory (mdtraj HDF5 by default, with
potential energies; DCD/XTC with an energies ``.npz`` beside it) and a JSON file of settings.

The chunks of OUT live in ``OUT.parts/`` (e.g. ``run.h5.parts``), locked while a run writes them.
Ctrl-C (or SIGTERM) stops every replica after its current frame, writes the frames it has with
a checkpoint, and ``--resume`` continues from there.
"""
from __future__ import annotations

import json
import os
import time
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .io import InputError, check_output, save_samples
from .runtime import Interrupted, RunLock, check_platform, stop_on_signal

FORMATS = (".h5", ".dcd", ".xtc")


@dataclass(frozen=True)
class MDSettings:
    """Settings of one MD run (all replicas). Times in ps unless stated."""
    system: str
    ns: float
    temperature: float | None = None      # K; None: the system's own
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    report_every: int = 1000              # steps between frames (1 ps at 1 fs)
    equilibration_ps: float = 100.0
    minimise: bool = True
    platform: str = "Reference"
    seed: int = 0
    chunk_frames: int = 1000

    @property
    def n_frames(self) -> int:
        return int(round(self.ns * 1000.0 / (self.report_every * self.timestep_fs / 1000.0)))

    def validate(self) -> "MDSettings":
        """Check every value before any work; :class:`InputError` names the flag, value and range."""
        checks = [("--ns", self.ns, self.ns > 0, "a positive length in ns"),
                  ("--temperature", self.temperature, self.temperature is None or self.temperature > 0,
                   "a positive temperature in K"),
                  ("--timestep", self.timestep_fs, self.timestep_fs > 0, "a positive time step in fs"),
                  ("--friction", self.friction_per_ps, self.friction_per_ps >= 0, "a friction >= 0 per ps"),
                  ("--report-every", self.report_every, self.report_every >= 1, "at least 1 step"),
                  ("--equilibration", self.equilibration_ps, self.equilibration_ps >= 0, "a time >= 0 in ps"),
                  ("--chunk-frames", self.chunk_frames, self.chunk_frames >= 1, "at least 1 frame")]
        for flag, value, ok, expected in checks:
            if value is not None and (not np.isfinite(value) or not ok):
                raise InputError(f"{flag} {value}: expected {expected}")
        if self.n_frames < 1:
            raise InputError(f"--ns {self.ns}: shorter than one frame ({self.report_every} steps of "
                             f"{self.timestep_fs} fs); give a longer run or a smaller --report-every")
        check_platform(self.platform)
        return self


def initial_positions(target) -> np.ndarray:
    """A starting structure: the PDB's for force-field systems, a Mackay icosahedron for LJ13 / LJ55."""
    if target.positions is not None:
        return np.asarray(target.positions)
    raise InputError(f"no starting structure for {target.name}; MD supports force-field systems and LJ13/LJ55")


def _context(settings: MDSettings, replica: int):
    target = md_target(settings)
    temperature = run_temperature(settings, target)
    # reduced-unit systems: eps = tau kT at whatever T the integrator uses, so T only sets time scales
    system, _ = target.openmm_system() if target.temperature else target.openmm_system(temperature)
    ctx, integrator = langevin_context(system, temperature, settings.friction_per_ps, settings.timestep_fs,
                                       settings.seed * 1000 + replica + 1, settings.platform)
    return target, ctx, integrator, temperature


def langevin_context(system, temperature_k: float, friction_per_ps: float, timestep_fs: float, seed: int,
                     platform: str):
    """The OpenMM context every reference run uses (md, umbrella): LangevinMiddle dynamics at
    ``temperature_k`` with the given friction, time step and integrator seed, on ``platform``. A platform
    OpenMM cannot start is an InputError naming it. Returns (context, integrator)."""
    import openmm
    from openmm import unit
    integrator = openmm.LangevinMiddleIntegrator(temperature_k * unit.kelvin, friction_per_ps / unit.picosecond,
                                                 timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(int(seed))
    try:
        ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))
    except openmm.OpenMMException as exc:
        raise InputError(f"--platform {platform}: OpenMM could not start it here ({str(exc).strip()[:200]})") from None
    return ctx, integrator


def md_target(settings: MDSettings):
    """The system of ``settings``, checked to have an OpenMM form and a start, and to take --temperature."""
    from .targets import load_target
    target = load_target(settings.system)
    if not target.has_openmm:
        raise InputError(f"system {settings.system!r} has no OpenMM form; MD needs a force-field or LJ system")
    if target.temperature is None and settings.temperature is not None:
        raise InputError(f"--temperature: {settings.system} is defined in reduced units; set its temperature "
                         "through tau in the system file")
    initial_positions(target)
    return target


def run_temperature(settings: MDSettings, target) -> float:
    """The temperature the run uses: --temperature if given, else the system's (300 K for reduced units)."""
    if settings.temperature is not None:
        return float(settings.temperature)
    return float(target.temperature or 300.0)


def _energy(ctx) -> float:
    from openmm import unit
    return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


_STOP = None          # in a replica's worker process: the event the parent sets on Ctrl-C


def _worker_init(stop_event) -> None:
    """Replica workers ignore SIGINT (the parent gets it) and stop when the parent sets ``stop_event``."""
    import signal
    global _STOP
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _STOP = stop_event


def _run_replica_worker(settings, replica, parts, show_progress):
    return run_replica(settings, replica, parts, show_progress, should_stop=_STOP.is_set)


def run_replica(settings: MDSettings, replica: int, parts: Path, show_progress: bool = True,
                should_stop=lambda: False) -> dict:
    """Run (or resume) one replica, writing chunk files into ``parts``. Returns its record, with
    ``interrupted`` True when ``should_stop()`` became true first (the frames so far are saved)."""
    import openmm
    from openmm import unit

    parts.mkdir(parents=True, exist_ok=True)
    target, ctx, integrator, temperature = _context(settings, replica)
    n_frames = settings.n_frames
    chunks = sorted(parts.glob("chunk_*.npz"))
    record_path = parts / "record.json"
    if chunks:
        with np.load(chunks[-1]) as last:
            ctx.loadCheckpoint(last["checkpoint"].tobytes())
        done = sum(int(np.load(c)["energy"].shape[0]) for c in chunks)
        record = json.loads(record_path.read_text())
    else:
        ctx.setPositions(initial_positions(target))
        record = {"replica": replica, "temperature_K": temperature, "energy_start_kj": _energy(ctx)}
        if settings.minimise:
            openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 0)
            record["energy_minimised_kj"] = _energy(ctx)
        ctx.setVelocitiesToTemperature(temperature * unit.kelvin, settings.seed * 1000 + replica + 1)
        eq_steps = int(round(settings.equilibration_ps * 1000.0 / settings.timestep_fs))
        for start in range(0, eq_steps, settings.report_every):      # in pieces, so Ctrl-C is heard
            if should_stop():
                return {**record, "interrupted": True, "frames": 0}
            integrator.step(min(settings.report_every, eq_steps - start))
        record.update(equilibration_steps=eq_steps, energy_after_equilibration_kj=_energy(ctx))
        record_path.write_text(json.dumps(record, indent=2))
        done = 0
    from .runtime import progress_bar
    bar = progress_bar(total=n_frames, initial=done, position=replica, enabled=show_progress, unit="frame",
                       desc=f"replica {replica}", mininterval=0.5)
    t0, frames_t0 = time.perf_counter(), done
    interrupted = False
    while done < n_frames and not interrupted:
        m = min(settings.chunk_frames, n_frames - done)
        xyz = np.empty((m, ctx.getSystem().getNumParticles(), 3), dtype=np.float32)
        energy = np.empty(m)
        for i in range(m):
            if should_stop():                  # keep the frames so far: a shorter chunk
                interrupted, m = True, i
                xyz, energy = xyz[:i], energy[:i]
                break
            integrator.step(settings.report_every)
            state = ctx.getState(getPositions=True, getEnergy=True)
            xyz[i] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            energy[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            bar.update(1)
            if i % 100 == 0:
                ns = (done + i + 1 - frames_t0) * settings.report_every * settings.timestep_fs * 1e-6
                bar.set_postfix(ns_per_day=f"{ns / max(time.perf_counter() - t0, 1e-9) * 86400:.0f}")
        if m == 0:
            break
        checkpoint = np.frombuffer(ctx.createCheckpoint(), dtype=np.uint8)
        save_samples(parts / f"chunk_{done:09d}.npz", "md-chunk", xyz=xyz, energy=energy, checkpoint=checkpoint)
        done += m
    bar.close()
    # production wall time summed over runs (a resumed run adds its own)
    record["wall_seconds"] = record.pop("wall_seconds_this_run", record.get("wall_seconds", 0.0)) + \
        time.perf_counter() - t0
    record_path.write_text(json.dumps(record, indent=2))
    return {**record, "interrupted": interrupted, "frames": done}


def assemble(parts: Path, topology, out: Path, kt: float, timestep_ps: float) -> Path:
    """Join a replica's chunks into one trajectory file with potential energies."""
    import mdtraj

    chunks = sorted(parts.glob("chunk_*.npz"))
    xyz = np.concatenate([np.load(c)["xyz"] for c in chunks])
    energy = np.concatenate([np.load(c)["energy"] for c in chunks])
    times = (np.arange(len(xyz)) + 1) * timestep_ps
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)          # written whole, then renamed over OUT
    if out.suffix == ".h5":
        with mdtraj.formats.HDF5TrajectoryFile(str(tmp), "w") as f:
            f.topology = topology
            f.write(coordinates=xyz, time=times, potentialEnergy=energy)
    else:
        mdtraj.Trajectory(xyz, topology, time=times).save(str(tmp))
    os.replace(tmp, out)
    save_samples(out.with_suffix(".energies.npz"), "md-energies", None, energy_kj_per_mol=energy,
                 reduced_energy=energy / kt, time_ps=times)
    return out


def replica_statistics(path: Path, topology, frame_ps: float) -> dict:
    """Statistical inefficiency of the potential energy and, for peptides, of sin(phi), cos(psi) and
    the phi > 0 indicator (the slow observable of alanine dipeptide)."""
    import mdtraj

    from .analysis.basins import phi_positive
    from .analysis.timeseries import backbone_dihedrals, inefficiency_report
    energy = np.load(path.with_suffix(".energies.npz"))["energy_kj_per_mol"]
    out = {"energy": inefficiency_report(energy, frame_ps)}
    if topology.n_residues > 1:
        dih = backbone_dihedrals(mdtraj.load(str(path), top=topology) if path.suffix != ".h5" else mdtraj.load(str(path)))
        if dih:   # periodic angles enter through sin(phi) (keeps its sign) and cos(psi)
            out["sin_phi"] = inefficiency_report(np.sin(dih["phi"]), frame_ps)
            out["cos_psi"] = inefficiency_report(np.cos(dih["psi"]), frame_ps)
        if "phi" in dih:
            ind = phi_positive(dih["phi"]).astype(float)
            out["phi_positive"] = {**inefficiency_report(ind, frame_ps), "fraction": float(ind.mean())}
    return out


def run_md(settings: MDSettings, out: str | Path, replicas: int = 1, resume: bool = False,
           show_progress: bool = True) -> dict:
    """Run ``replicas`` independent replicas in parallel processes; write OUT (one file per replica
    when replicas > 1: NAME.r0.h5, NAME.r1.h5, ...) and NAME.json with settings and records.

    Every input is checked before any work. Chunks go to ``OUT.parts/``, locked for the run. A
    fresh run refuses a parts folder that holds frames (continue it with ``resume``); one without
    frames (a run that failed before its first chunk) is started over. Ctrl-C or SIGTERM saves
    every replica's frames so far and raises :class:`Interrupted`."""
    import mdtraj
    import openmm

    settings.validate()
    if not isinstance(replicas, int) or replicas < 1:
        raise InputError(f"--replicas {replicas}: expected at least 1 replica")
    out = check_output(out, "--out", FORMATS)
    target = md_target(settings)
    work = out.with_name(out.name + ".parts")
    work.mkdir(parents=True, exist_ok=True)
    with RunLock(work / ".lock", f"--out {out}"), stop_on_signal() as stop:
        _prepare_parts(work, settings, resume)
        return _run_md_locked(settings, out, work, replicas, target, show_progress, stop, mdtraj, openmm)


def _prepare_parts(work: Path, settings: MDSettings, resume: bool) -> None:
    """Check (resume) or clear (fresh run without frames) the parts folder, and record the settings."""
    import shutil

    settings_file = work / "settings.json"
    chunks = sorted(work.glob("r*/chunk_*.npz"))
    if chunks and not resume:
        frames = sum(int(np.load(c)["energy"].shape[0]) for c in chunks)
        raise FileExistsError(f"{work} holds {frames} frames of an earlier run; pass --resume to continue it "
                              "(with the same settings), or remove that folder to start over")
    if resume and chunks and settings_file.is_file():
        saved = json.loads(settings_file.read_text())
        if saved != asdict(settings):
            diff = ", ".join(f"{k}: {saved.get(k)!r} then, {v!r} now" for k, v in asdict(settings).items()
                             if saved.get(k) != v)
            raise InputError(f"{work}: --resume with different settings than the run it continues ({diff}); "
                             "use the same flags, or another --out")
    if not chunks:                         # nothing to lose: start clean
        for item in work.iterdir():
            if item.name != ".lock":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    tmp = settings_file.with_name("settings.json.tmp")
    tmp.write_text(json.dumps(asdict(settings), indent=2))
    os.replace(tmp, settings_file)


def _run_md_locked(settings, out, work, replicas, target, show_progress, stop, mdtraj, openmm) -> dict:
    """The replicas, then their assembly (a stop signal during assembly lets it finish: it is short)."""
    t0 = time.perf_counter()
    dirs = [work / f"r{r}" for r in range(replicas)]
    if replicas == 1:
        records = [run_replica(settings, 0, dirs[0], show_progress, should_stop=lambda: bool(stop))]
    else:
        # spawn, not fork: forking after torch has started its thread pool can deadlock the children
        ctx = multiprocessing.get_context("spawn")
        event = ctx.Event()
        with ProcessPoolExecutor(max_workers=min(replicas, os.cpu_count() or 1), mp_context=ctx,
                                 initializer=_worker_init, initargs=(event,)) as pool:
            futures = [pool.submit(_run_replica_worker, settings, r, dirs[r], show_progress)
                       for r in range(replicas)]
            from concurrent.futures import FIRST_EXCEPTION, wait
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                if stop and not event.is_set():
                    event.set()
            records = [f.result() for f in futures]
    if any(r.get("interrupted") for r in records):
        frames = ", ".join(str(r.get("frames", 0)) for r in records)
        raise Interrupted(f"interrupted; frames saved per replica: {frames} of {settings.n_frames} in {work}; "
                          "continue with --resume (same flags)")
    for r in records:
        r.pop("interrupted", None)
        r.pop("frames", None)
    topology = target.topology
    if topology is None:
        topology = mdtraj.Topology()
        chain = topology.add_chain()
        for i in range(target.n_particles):
            topology.add_atom("Ar", mdtraj.element.argon, topology.add_residue("LJ", chain))
    from .targets.openmm_target import kt_kj_per_mol
    kt = kt_kj_per_mol(run_temperature(settings, target))
    files = []
    for r, d in enumerate(dirs):
        path = out if replicas == 1 else out.with_name(f"{out.stem}.r{r}{out.suffix}")
        files.append(str(assemble(d, topology, path, kt, settings.report_every * settings.timestep_fs / 1000.0)))
    frame_ps = settings.report_every * settings.timestep_fs / 1000.0
    for rec, path in zip(records, files):
        rec["statistics"] = replica_statistics(Path(path), topology, frame_ps)
    meta = {"settings": asdict(settings), "files": files, "replicas": records,
            "forcefield": list(target.forcefield), "kT_kj_per_mol": kt,
            "openmm_version": openmm.__version__, "wall_seconds": time.perf_counter() - t0,
            "integrator": "LangevinMiddleIntegrator", "constraints": "none"}
    side = out.with_suffix(".json")
    side.with_name(side.name + ".tmp").write_text(json.dumps(meta, indent=2))
    os.replace(side.with_name(side.name + ".tmp"), side)
    return meta
