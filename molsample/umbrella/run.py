"""Running umbrella windows with OpenMM: the restraint forces, chains of windows in parallel processes
(each window saved as it finishes, so a rerun reuses it), and `run_umbrella`, which checks its input, runs
the windows, calls MBAR and writes the result."""
from __future__ import annotations

import json
import math
import os
import sys
import time
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..io import save_samples
from ..md import langevin_context
from ..runtime import Interrupted, progress_bar, stop_on_signal
from .mbar import mbar_analysis
from .windows import (RESTRAINT_EXPRESSION, RESTRAINT_GROUP, UmbrellaSettings, _settings_json, all_centres, chains,
                      chirality, chirality_atoms, dihedral, dihedral_atoms, kappas, omega_atoms, residue_name,
                      restrained_angles, windows_per_angle, wrap_angle)


def add_restraints(system, topology, settings: "UmbrellaSettings") -> list[str]:
    """Add one CustomTorsionForce per restrained angle to ``system`` (force group RESTRAINT_GROUP);
    the centre of angle NAME is the global parameter 'theta0_NAME', its constant 'kappa_NAME'.
    Returns the parameter names of the centres."""
    import openmm
    params = []
    for name, k in zip(restrained_angles(settings), kappas(settings)):
        f = openmm.CustomTorsionForce(RESTRAINT_EXPRESSION.format(k=f"kappa_{name}", t0=f"theta0_{name}"))
        f.addGlobalParameter(f"kappa_{name}", k)
        f.addGlobalParameter(f"theta0_{name}", 0.0)
        f.addTorsion(*dihedral_atoms(topology, name, settings.residue), [])
        f.setForceGroup(RESTRAINT_GROUP)
        system.addForce(f)
        params.append(f"theta0_{name}")
    return params


def _set_centre(ctx, params: list[str], centre) -> None:
    for p, c in zip(params, np.atleast_1d(centre)):
        ctx.setParameter(p, float(wrap_angle(c)))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _geometry(xyz: np.ndarray, topology, residue: int = 1) -> dict:
    """phi, psi (float64) of the ``residue``-th residue with both, omega torsions (n, n_bonds) and CA chirality
    volumes (n, n_residues) of frames."""
    return {"phi": dihedral(xyz, dihedral_atoms(topology, "phi", residue)),
            "psi": dihedral(xyz, dihedral_atoms(topology, "psi", residue)),
            "omega": np.stack([dihedral(xyz, q) for q in omega_atoms(topology)], axis=1),
            "chirality": np.stack([chirality(xyz, q) for q in chirality_atoms(topology)], axis=1)}


_STOP = None          # in a chain's worker process: (the event the parent sets on SIGINT / SIGTERM, the parent's pid)


def _worker_init(stop_event) -> None:
    """Chain workers ignore SIGINT and SIGTERM (the parent gets them, or the whole process group does) and stop
    when the parent sets ``stop_event`` or is gone (killed with SIGKILL)."""
    import signal
    global _STOP
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _STOP = (stop_event, os.getppid())


def _run_chain_worker(settings, chain_id, ks, workdir):
    event, parent = _STOP
    return run_chain(settings, chain_id, ks, workdir, should_stop=lambda: event.is_set() or os.getppid() != parent)


def run_chain(settings: UmbrellaSettings, chain_id: int, ks: list[int], workdir: Path,
              should_stop=lambda: False) -> list[str]:
    """Run the windows ``ks`` in order in one OpenMM context: the first is reached from the minimised
    structure by steering the restraint centre, each later one starts from the previous window's last
    state. Finished windows (files in ``workdir``) are kept; a resumed chain continues from the last one.
    When ``should_stop()`` becomes true the chain returns the windows finished so far (the window under way
    is dropped)."""
    import openmm
    from openmm import unit

    from ..targets import load_target
    c0 = time.process_time()
    target = load_target(settings.system)
    temperature = settings.temperature or target.temperature
    system, _ = target.openmm_system()
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))   # a private copy
    if any(f.getForceGroup() == RESTRAINT_GROUP for f in system.getForces()):
        raise ValueError(f"system {settings.system!r} already uses force group {RESTRAINT_GROUP}, kept for restraints")
    names = restrained_angles(settings)
    params = add_restraints(system, target.topology, settings)
    centres = all_centres(settings)
    ctx, integrator = langevin_context(system, temperature, settings.friction_per_ps, settings.timestep_fs,
                                       settings.seed * 1000 + chain_id + 1, settings.platform)
    unbiased = set(range(32)) - {RESTRAINT_GROUP}
    steps = lambda ps: int(round(ps * 1000 / settings.timestep_fs))
    files, prev = [], None
    for k in ks:
        out = workdir / f"window_{k:04d}.npz"
        if out.is_file():
            files.append(str(out))
            prev = (k, out)
            continue
        start = {"chain": chain_id}
        if prev is None:
            ctx.setPositions(target.positions)
            for name in names:
                ctx.setParameter(f"kappa_{name}", 0.0)       # minimise the molecule, not the restraint
            openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 0)
            for name, kap in zip(names, kappas(settings)):
                ctx.setParameter(f"kappa_{name}", kap)
            x = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)[None]
            geo = _geometry(x, target.topology, settings.residue)
            s = np.array([geo[n][0] for n in names])
            delta = wrap_angle(centres[k] - s)
            ctx.setVelocitiesToTemperature(temperature * unit.kelvin, settings.seed * 1000 + chain_id + 1)
            n_blocks = max(1, steps(settings.steer_ps) // 100)
            for b in range(1, n_blocks + 1):                 # move the centre in small steps along the shortest arc
                _set_centre(ctx, params, s + delta * b / n_blocks)
                integrator.step(100)
            start.update(from_window=-1, steered_from_deg=np.degrees(s).tolist(), steer_ps=settings.steer_ps)
        else:
            with np.load(prev[1]) as p:
                ctx.setPositions(p["final_xyz"])
                ctx.setVelocities(p["final_v"])
            start.update(from_window=int(prev[0]))
        _set_centre(ctx, params, centres[k])
        integrator.step(steps(settings.equilibration_ps))
        n_samples = int(settings.ns_per_window * 1e6 / settings.timestep_fs / settings.sample_every)
        per_frame = max(settings.frame_every // settings.sample_every, 1)
        xyz = np.empty((n_samples, target.n_particles, 3))
        energy, restraint = np.empty(n_samples), np.empty(n_samples)
        for i in range(n_samples):
            if i % 50 == 0 and should_stop():
                return files
            integrator.step(settings.sample_every)
            st = ctx.getState(getPositions=True, getEnergy=True, groups=unbiased)
            xyz[i] = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            energy[i] = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            restraint[i] = ctx.getState(getEnergy=True, groups={RESTRAINT_GROUP}).getPotentialEnergy().value_in_unit(
                unit.kilojoule_per_mole)
        geo = _geometry(xyz, target.topology, settings.residue)
        ref = _geometry(np.asarray(target.positions)[None], target.topology)["chirality"][0]
        last = ctx.getState(getPositions=True, getVelocities=True)
        save_samples(out, "umbrella-window", None, centre=centres[k], phi=geo["phi"], psi=geo["psi"], omega=geo["omega"],
                      chirality_flipped=(np.sign(geo["chirality"]) != np.sign(ref)[None, :]),
                      energy=energy, restraint_kj=restraint, xyz=xyz[::per_frame].astype(np.float32),
                      frame_index=np.arange(0, n_samples, per_frame), start=json.dumps(start),
                      final_xyz=last.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
                      final_v=last.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond),
                      cpu_seconds=time.process_time() - c0)
        c0 = time.process_time()
        files.append(str(out))
        prev = (k, out)
    return files


def run_umbrella(settings: UmbrellaSettings, out: str | Path, workers: int | None = None,
                 progress: bool = True) -> dict:
    """Run every window (chains of windows in parallel processes; finished windows are reused) and
    analyse with MBAR.

    Writes OUT (.npz: phi, psi, unbiased energies and log weights of every sample, weighted frames)
    and OUT.json (settings, estimates, timings).
    """
    from ..targets import load_target
    out = Path(out)
    target = load_target(settings.system)            # checked before any window starts
    if not (target.has_openmm and target.molecular):
        raise ValueError(f"system {settings.system!r}: umbrella sampling needs a molecule with an OpenMM force field")
    for name in restrained_angles(settings):
        dihedral_atoms(target.topology, name, settings.residue)
    if out.suffix != ".npz":
        raise ValueError(f"--out must be a .npz file, got {str(out)!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    for flag, v in (("--ns-per-window", settings.ns_per_window), ("--equilibration", settings.equilibration_ps),
                    ("--steer", settings.steer_ps)):
        if not (v >= 0 and math.isfinite(v)) or (flag == "--ns-per-window" and v == 0):
            raise ValueError(f"{flag} must be a positive number of {'ns' if flag == '--ns-per-window' else 'ps'}, got {v}")
    windows_per_angle(settings), kappas(settings)
    workdir = out.with_name(out.stem + ".windows")
    workdir.mkdir(parents=True, exist_ok=True)
    settings_file = workdir / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != _settings_json(settings):
        raise ValueError(f"{workdir} holds windows of different settings; remove it or use another --out")
    _atomic_write_text(settings_file, json.dumps(asdict(settings), indent=2))
    t0 = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    target = load_target(settings.system)
    geo = _geometry(np.asarray(target.positions)[None], target.topology, settings.residue)
    paths = chains(settings, workers, np.array([geo[n][0] for n in restrained_angles(settings)]))
    n_windows = len(all_centres(settings))
    done = lambda: sum(1 for _ in workdir.glob("window_*.npz"))
    ctx = multiprocessing.get_context("spawn")
    event = ctx.Event()
    # SIGINT / SIGTERM set the stop flag: the chains end at their next check and the run says how to go on
    with stop_on_signal() as stop, \
            ProcessPoolExecutor(max_workers=len(paths), mp_context=ctx, initializer=_worker_init,
                                initargs=(event,)) as pool, \
            progress_bar(total=n_windows, initial=done(), desc=f"umbrella {settings.system}", unit="window",
                         enabled=progress) as bar:
        futures = [pool.submit(_run_chain_worker, settings, i, p, workdir) for i, p in enumerate(paths)]
        while not all(f.done() for f in futures):
            time.sleep(0.2)
            if stop and not event.is_set():
                event.set()
            bar.update(done() - bar.n)
        for f in futures:
            f.result()
        bar.update(done() - bar.n)
    if stop or done() < n_windows:
        raise Interrupted(f"interrupted; {done()} of {n_windows} windows saved in {workdir}; run the same command "
                          "again to continue from them")
    files = [str(workdir / f"window_{k:04d}.npz") for k in range(n_windows)]
    if progress:
        print(f"umbrella {settings.system}: MBAR over {n_windows} windows ...", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    kt = target.kt
    c_analysis = time.process_time()
    res, log_w, phi, psi = mbar_analysis(settings, files, kt)
    res["residue"] = residue_name(target.topology, settings.residue)
    c_analysis = time.process_time() - c_analysis
    data = [np.load(f) for f in files]
    energy = np.concatenate([d["energy"] for d in data])
    offsets = np.cumsum([0] + [len(d["phi"]) for d in data])[:-1]
    frame_rows = np.concatenate([o + d["frame_index"] for o, d in zip(offsets, data)])
    xyz = np.concatenate([d["xyz"] for d in data])
    save_samples(out, "umbrella", None, phi=phi.astype(np.float32), psi=psi.astype(np.float32), energy_kj_per_mol=energy,
                  log_w=log_w, frames_xyz=xyz, frames_log_w=log_w[frame_rows], frames_row=frame_rows,
                  kT_kj_per_mol=kt, system=settings.system)
    meta = {"settings": asdict(settings), "estimates": res, "wall_seconds": wall,
            "cpu_seconds_windows": float(sum(float(d["cpu_seconds"]) for d in data)),
            "cpu_seconds_analysis": c_analysis,
            "chains": [[int(k) for k in p] for p in paths],
            "starts": [json.loads(str(d["start"])) for d in data],
            "n_samples": int(len(phi)), "n_frames": int(len(xyz))}
    _atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=2))
    return meta
