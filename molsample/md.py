"""Reference molecular dynamics with OpenMM: the same System the sampler targets.

Langevin (LangevinMiddleIntegrator) dynamics, no constraints, explicit minimisation and
equilibration, independent replicas in parallel processes. Frames are written in chunks, each an
atomic ``.npz`` holding positions, potential energies and an OpenMM checkpoint of the state at
its end, so a killed run resumes from its last chunk without losing or duplicating frames. When
every chunk is in, the replica is assembled into one trajectory (mdtraj HDF5 by default, with
potential energies; DCD/XTC with an energies ``.npz`` beside it) and a JSON file of settings.
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


def initial_positions(target) -> np.ndarray:
    """A starting structure: the PDB's for force-field systems, a Mackay icosahedron for LJ."""
    from .targets.structures import mackay_icosahedron
    if hasattr(target, "positions"):
        return np.asarray(target.positions)
    if type(target).__name__ == "LennardJones" and target.n_particles in (13, 55):
        return mackay_icosahedron(1 if target.n_particles == 13 else 2, spacing=target.r_m)
    raise ValueError(f"no starting structure for {target.name}; MD supports force-field systems and LJ13/LJ55")


def _context(settings: MDSettings, replica: int):
    import openmm
    from openmm import unit

    from .targets import load_target
    target = load_target(settings.system)
    if not hasattr(target, "openmm_system"):
        raise ValueError(f"system {settings.system!r} has no OpenMM form; MD needs a force-field or LJ system")
    if target.temperature is None and settings.temperature is not None:
        raise ValueError(f"{settings.system} is defined in reduced units; set its temperature through tau in "
                         "the system file, not --temperature")
    temperature = settings.temperature or target.temperature or 300.0
    # reduced-unit systems: eps = tau kT at whatever T the integrator uses, so T only sets time scales
    system, _ = target.openmm_system() if target.temperature else target.openmm_system(temperature)
    integrator = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin, settings.friction_per_ps / unit.picosecond,
                                                 settings.timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(settings.seed * 1000 + replica + 1)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(settings.platform))
    return target, ctx, integrator, temperature


def _energy(ctx) -> float:
    from openmm import unit
    return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def _atomic_savez(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def run_replica(settings: MDSettings, replica: int, parts: Path, show_progress: bool = True) -> dict:
    """Run (or resume) one replica, writing chunk files into ``parts``. Returns its record."""
    import openmm
    from openmm import unit

    parts.mkdir(parents=True, exist_ok=True)
    target, ctx, integrator, temperature = _context(settings, replica)
    n_frames = int(round(settings.ns * 1000.0 / (settings.report_every * settings.timestep_fs / 1000.0)))
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
        integrator.step(eq_steps)
        record.update(equilibration_steps=eq_steps, energy_after_equilibration_kj=_energy(ctx))
        record_path.write_text(json.dumps(record, indent=2))
        done = 0
    from tqdm import tqdm
    bar = tqdm(total=n_frames, initial=done, position=replica, disable=not show_progress, unit="frame",
               desc=f"replica {replica}", dynamic_ncols=True)
    t0, frames_t0 = time.perf_counter(), done
    while done < n_frames:
        m = min(settings.chunk_frames, n_frames - done)
        xyz = np.empty((m, ctx.getSystem().getNumParticles(), 3), dtype=np.float32)
        energy = np.empty(m)
        for i in range(m):
            integrator.step(settings.report_every)
            state = ctx.getState(getPositions=True, getEnergy=True)
            xyz[i] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            energy[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            bar.update(1)
            if i % 100 == 0:
                ns = (done + i + 1 - frames_t0) * settings.report_every * settings.timestep_fs * 1e-6
                bar.set_postfix(ns_per_day=f"{ns / max(time.perf_counter() - t0, 1e-9) * 86400:.0f}")
        checkpoint = np.frombuffer(ctx.createCheckpoint(), dtype=np.uint8)
        _atomic_savez(parts / f"chunk_{done // settings.chunk_frames:06d}.npz", xyz=xyz, energy=energy,
                      checkpoint=checkpoint)
        done += m
    bar.close()
    # production wall time summed over runs (a resumed run adds its own)
    record["wall_seconds"] = record.pop("wall_seconds_this_run", record.get("wall_seconds", 0.0)) + \
        time.perf_counter() - t0
    record_path.write_text(json.dumps(record, indent=2))
    return record


def assemble(parts: Path, topology, out: Path, kt: float, timestep_ps: float) -> Path:
    """Join a replica's chunks into one trajectory file with potential energies."""
    import mdtraj

    chunks = sorted(parts.glob("chunk_*.npz"))
    xyz = np.concatenate([np.load(c)["xyz"] for c in chunks])
    energy = np.concatenate([np.load(c)["energy"] for c in chunks])
    times = (np.arange(len(xyz)) + 1) * timestep_ps
    if out.suffix == ".h5":
        with mdtraj.formats.HDF5TrajectoryFile(str(out), "w") as f:
            f.topology = topology
            f.write(coordinates=xyz, time=times, potentialEnergy=energy)
    else:
        mdtraj.Trajectory(xyz, topology, time=times).save(str(out))
    np.savez(out.with_suffix(".energies.npz"), energy_kj_per_mol=energy, reduced_energy=energy / kt, time_ps=times)
    return out


def replica_statistics(path: Path, topology, frame_ps: float) -> dict:
    """Statistical inefficiency of the potential energy and, for peptides, of sin(phi), cos(psi) and
    the phi > 0 indicator (the slow observable of alanine dipeptide)."""
    import mdtraj

    from .analysis.timeseries import backbone_dihedrals, inefficiency_report
    energy = np.load(path.with_suffix(".energies.npz"))["energy_kj_per_mol"]
    out = {"energy": inefficiency_report(energy, frame_ps)}
    if topology.n_residues > 1:
        dih = backbone_dihedrals(mdtraj.load(str(path), top=topology) if path.suffix != ".h5" else mdtraj.load(str(path)))
        if dih:   # periodic angles enter through sin(phi) (keeps its sign) and cos(psi)
            out["sin_phi"] = inefficiency_report(np.sin(dih["phi"]), frame_ps)
            out["cos_psi"] = inefficiency_report(np.cos(dih["psi"]), frame_ps)
        if "phi" in dih:
            ind = (dih["phi"] > 0).astype(float)
            out["phi_positive"] = {**inefficiency_report(ind, frame_ps), "fraction": float(ind.mean())}
    return out


def run_md(settings: MDSettings, out: str | Path, replicas: int = 1, resume: bool = False,
           show_progress: bool = True) -> dict:
    """Run ``replicas`` independent replicas in parallel processes; write OUT (one file per replica
    when replicas > 1: NAME.r0.h5, NAME.r1.h5, ...) and NAME.json with settings and records."""
    import mdtraj
    import openmm

    from .targets import load_target
    out = Path(out)
    if out.suffix not in FORMATS:
        raise ValueError(f"{out}: use one of the formats {FORMATS}")
    work = out.with_name(out.stem + ".parts")
    if work.exists() and not resume:
        raise FileExistsError(f"{work} exists from an earlier run; pass --resume to continue it")
    work.mkdir(parents=True, exist_ok=True)
    settings_file = work / "settings.json"
    if resume and settings_file.is_file() and json.loads(settings_file.read_text()) != asdict(settings):
        raise ValueError(f"{work}: the run was started with different settings: {settings_file.read_text()}")
    settings_file.write_text(json.dumps(asdict(settings), indent=2))
    t0 = time.perf_counter()
    dirs = [work / f"r{r}" for r in range(replicas)]
    if replicas == 1:
        records = [run_replica(settings, 0, dirs[0], show_progress)]
    else:
        # spawn, not fork: forking after torch has started its thread pool can deadlock the children
        with ProcessPoolExecutor(max_workers=min(replicas, os.cpu_count() or 1),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_replica, settings, r, dirs[r], show_progress) for r in range(replicas)]
            records = [f.result() for f in futures]
    target = load_target(settings.system)
    topology = getattr(target, "topology", None)
    if topology is None:
        topology = mdtraj.Topology()
        chain = topology.add_chain()
        for i in range(target.n_particles):
            topology.add_atom("Ar", mdtraj.element.argon, topology.add_residue("LJ", chain))
    from .targets.openmm_target import kt_kj_per_mol
    kt = kt_kj_per_mol(settings.temperature or target.temperature or 300.0)
    files = []
    for r, d in enumerate(dirs):
        path = out if replicas == 1 else out.with_name(f"{out.stem}.r{r}{out.suffix}")
        files.append(str(assemble(d, topology, path, kt, settings.report_every * settings.timestep_fs / 1000.0)))
    frame_ps = settings.report_every * settings.timestep_fs / 1000.0
    for rec, path in zip(records, files):
        rec["statistics"] = replica_statistics(Path(path), topology, frame_ps)
    meta = {"settings": asdict(settings), "files": files, "replicas": records,
            "forcefield": list(getattr(target, "forcefield", ())), "kT_kj_per_mol": kt,
            "openmm_version": openmm.__version__, "wall_seconds": time.perf_counter() - t0,
            "integrator": "LangevinMiddleIntegrator", "constraints": "none"}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return meta
