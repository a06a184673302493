"""`molsample pt`: checks, the run with progress and resume, the analysis and the output files."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..io import save_samples
from .analysis import analyse_run
from .settings import PTSettings, _atomic_write_text, _check_output, run_directory
from .storage import _quiet_libraries, latest_snapshot, run_pt_system


def _load_pt_target(settings: PTSettings):
    from ..targets import load_target
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
