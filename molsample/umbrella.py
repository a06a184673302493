"""Enhanced-sampling reference: umbrella sampling along a backbone dihedral, combined by MBAR.

Windows restrain phi, psi, or both on a grid ('phi+psi'; first residue that has them) with a periodic
harmonic bias 0.5 kappa min(|theta - theta_k|, 2 pi - |theta - theta_k|)^2 through an OpenMM
CustomTorsionForce; windows run in parallel processes. MBAR (pymbar) on samples decorrelated by
each window's statistical inefficiency gives the window free energies; every saved sample then
gets its unbiased weight, w_n proportional to 1 / sum_k N_k exp(f_k - u_k(x_n)), which yields the
free-energy profile, dF(phi > 0 vs phi < 0), basin populations, and weighted frames that
`molsample compare` can use as a reference.
"""
from __future__ import annotations

import json
import math
import os
import time
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .analysis.timeseries import backbone_dihedrals
from .md import _atomic_savez


@dataclass(frozen=True)
class UmbrellaSettings:
    system: str = "aldp"
    dihedral: str = "phi"
    windows: int = 36
    kappa: float = 200.0               # kJ/mol/rad^2
    ns_per_window: float = 0.5
    equilibration_ps: float = 50.0
    sample_every: int = 100            # steps between dihedral samples
    frame_every: int = 2000            # steps between saved frames
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    temperature: float | None = None
    platform: str = "Reference"
    seed: int = 0


def dihedral_atoms(topology, name: str) -> list[int]:
    """Atom indices of phi or psi of the first residue that has it."""
    import mdtraj
    fn = {"phi": mdtraj.compute_phi, "psi": mdtraj.compute_psi}.get(name)
    if fn is None:
        raise ValueError(f"unknown dihedral {name!r}; use 'phi' or 'psi'")
    idx, _ = fn(mdtraj.Trajectory(np.zeros((1, topology.n_atoms, 3)), topology))
    if len(idx) == 0:
        raise ValueError(f"the topology has no {name} dihedral")
    return [int(i) for i in idx[0]]


def window_centres(n: int) -> np.ndarray:
    return -math.pi + 2 * math.pi * (np.arange(n) + 0.5) / n


def restrained_angles(settings: "UmbrellaSettings") -> list[str]:
    """'phi', 'psi' or 'phi+psi' (a 2D grid of windows x windows) as a list of angle names."""
    names = settings.dihedral.split("+")
    if not names or any(n not in ("phi", "psi") for n in names) or len(set(names)) != len(names):
        raise ValueError(f"dihedral must be 'phi', 'psi' or 'phi+psi', got {settings.dihedral!r}")
    return names


def all_centres(settings: "UmbrellaSettings") -> np.ndarray:
    """Window centres, shape (n_windows, n_restrained_angles): a grid for 'phi+psi'."""
    c = window_centres(settings.windows)
    grids = np.meshgrid(*[c] * len(restrained_angles(settings)), indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def window_bias(data_or_angles, centre: np.ndarray, names: list[str], kappa: float) -> np.ndarray:
    """Total restraint energy (kJ/mol) of samples in the window with the given centre."""
    return sum(bias_energy(data_or_angles[n], c, kappa) for n, c in zip(names, np.atleast_1d(centre)))


def bias_energy(theta: np.ndarray, centre: float, kappa: float) -> np.ndarray:
    """Periodic harmonic bias in kJ/mol."""
    d = np.abs(np.angle(np.exp(1j * (theta - centre))))
    return 0.5 * kappa * d * d


def run_window(settings: UmbrellaSettings, k: int, workdir: Path) -> str:
    import mdtraj
    import openmm
    from openmm import unit

    from .targets import load_target
    out = workdir / f"window_{k:03d}.npz"
    if out.is_file():
        return str(out)                                   # finished windows are kept on resume
    c0 = time.process_time()
    target = load_target(settings.system)
    temperature = settings.temperature or target.temperature
    system, _ = target.openmm_system()
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))   # a private copy
    names = restrained_angles(settings)
    centre = all_centres(settings)[k]
    force = openmm.CustomTorsionForce("0.5*kappa*dtheta^2; dtheta = min(d, 2*pi - d); d = abs(theta - theta0);"
                                      f" pi = {math.pi}")
    force.addGlobalParameter("kappa", settings.kappa)
    force.addPerTorsionParameter("theta0")
    for name, c in zip(names, centre):
        force.addTorsion(*dihedral_atoms(target.topology, name), [float(c)])
    system.addForce(force)
    integrator = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin, settings.friction_per_ps / unit.picosecond,
                                                 settings.timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(settings.seed * 1000 + k + 1)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(settings.platform))
    ctx.setPositions(target.positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 0)
    ctx.setVelocitiesToTemperature(temperature * unit.kelvin, settings.seed * 1000 + k + 1)
    integrator.step(int(settings.equilibration_ps * 1000 / settings.timestep_fs))
    n_samples = int(settings.ns_per_window * 1e6 / settings.timestep_fs / settings.sample_every)
    per_frame = max(settings.frame_every // settings.sample_every, 1)
    xyz = np.empty((n_samples, target.n_particles, 3), dtype=np.float32)
    for i in range(n_samples):
        integrator.step(settings.sample_every)
        st = ctx.getState(getPositions=True)
        xyz[i] = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    angles = backbone_dihedrals(mdtraj.Trajectory(xyz, target.topology))
    import torch
    with torch.no_grad():
        energy = target.energy_kj(torch.as_tensor(xyz, dtype=torch.float64)).numpy()   # unbiased, kJ/mol
    _atomic_savez(out, centre=centre, phi=angles["phi"], psi=angles["psi"], energy=energy, xyz=xyz[::per_frame],
                  frame_index=np.arange(0, n_samples, per_frame), cpu_seconds=time.process_time() - c0)
    return str(out)


def _expect(mbar, a: np.ndarray) -> tuple[float, float]:
    """MBAR expectation in the unbiased state with its asymptotic uncertainty; a constant
    observable (e.g. an empty basin) is returned exactly, since pymbar cannot take its log."""
    a = np.asarray(a, dtype=float)
    if np.ptp(a) == 0:
        return float(a[0]), 0.0
    e = mbar.compute_expectations(a, u_kn=np.zeros((1, len(a))))
    return float(e["mu"][0]), float(e["sigma"][0])


def mbar_analysis(settings: UmbrellaSettings, files: list[str], kt: float) -> dict:
    """MBAR over windows; returns estimates and per-sample unbiased log weights."""
    from pymbar import MBAR, timeseries

    data = [np.load(f) for f in files]
    names = restrained_angles(settings)
    centres = np.array([np.atleast_1d(d["centre"]).astype(float) for d in data])   # (K, n_angles)
    angles_all = {n: np.concatenate([d[n] for d in data]) for n in ("phi", "psi")}
    keep, n_k, g_k = [], [], []
    offset = 0
    for d in data:
        # a restrained angle decorrelates in ~0.1 ps, an unrestrained backbone angle (and with it the
        # window's distribution) in tens of ps: decorrelate by the slowest of them
        c = np.atleast_1d(d["centre"]).astype(float)
        series = [np.sin(d[n] - ci) for n, ci in zip(names, c)]
        series += [f(d[n]) for n in ("phi", "psi") if n not in names for f in (np.cos, np.sin)]
        g = max(timeseries.statistical_inefficiency(x) if np.ptp(x) > 0 else 1.0 for x in series)
        idx = np.asarray(timeseries.subsample_correlated_data(d["phi"], g=g)) + offset
        keep.append(idx)
        n_k.append(len(idx))
        g_k.append(g)
        offset += len(d["phi"])
    keep = np.concatenate(keep)
    kept = {n: a[keep] for n, a in angles_all.items()}
    u_kn = np.stack([window_bias(kept, c, names, settings.kappa) / kt for c in centres])
    mbar = MBAR(u_kn, np.array(n_k))
    f_k = mbar.f_k
    overlap = mbar.compute_overlap()["scalar"]
    if not overlap > 1e-4:
        raise ValueError(f"umbrella windows barely overlap (MBAR overlap {overlap:.2e}); use more windows, a "
                         "smaller kappa or longer windows")
    # unbiased log weights of every sample (decorrelated or not), from the window free energies
    u_all = np.stack([window_bias(angles_all, c, names, settings.kappa) / kt for c in centres])
    log_denom = np.logaddexp.reduce(np.log(np.array(n_k))[:, None] + f_k[:, None] - u_all, axis=0)
    log_w = -log_denom - np.logaddexp.reduce(-log_denom)
    # dF and populations with MBAR uncertainties (decorrelated samples, unbiased state u = 0)
    phi = np.concatenate([d["phi"] for d in data])
    psi = np.concatenate([d["psi"] for d in data])
    from .analysis.basins import BASINS, basin_indicators
    ind = basin_indicators(phi[keep], psi[keep])
    res = {}
    p, dp = _expect(mbar, phi[keep] > 0)
    res["p_phi_positive"] = {"value": p, "stderr": dp}
    with np.errstate(divide="ignore"):
        df = -math.log(p / (1 - p)) if 0 < p < 1 else (math.inf if p == 0 else -math.inf)
    res["dF_phi_positive_minus_negative_kT"] = {"value": df, "stderr": dp / (p * (1 - p)) if 0 < p < 1 else math.nan}
    res["basins"] = {}
    for name in BASINS:
        mu, sd = _expect(mbar, ind[name])
        res["basins"][name] = {"value": mu, "stderr": sd}
    edges = np.linspace(-math.pi, math.pi, 37)
    prof = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mu, sd = _expect(mbar, (phi[keep] >= lo) & (phi[keep] < hi))
        prof.append((0.5 * (lo + hi), -math.log(mu) if mu > 0 else float("inf"), sd / mu if mu > 0 else float("nan")))
    prof = np.array(prof)
    prof[:, 1] -= np.nanmin(prof[:, 1])
    res["profile_phi"] = {"centres_rad": prof[:, 0].tolist(), "F_kT": prof[:, 1].tolist(), "stderr_kT": prof[:, 2].tolist()}
    res["mbar_overlap"] = float(overlap)
    res["windows"] = {"restrained": names, "centres_rad": centres.tolist(), "n_decorrelated": [int(n) for n in n_k],
                      "g": [float(g) for g in g_k], "f_k": f_k.tolist()}
    return res, log_w, phi, psi


def run_umbrella(settings: UmbrellaSettings, out: str | Path, workers: int | None = None) -> dict:
    """Run every window (in parallel processes; finished windows are reused) and analyse with MBAR.

    Writes OUT (.npz: phi, psi, unbiased energies and log weights of every sample, weighted frames)
    and OUT.json (settings, estimates, timings).
    """
    from .targets import load_target
    out = Path(out)
    target = load_target(settings.system)            # checked before any window starts
    if not hasattr(target, "openmm_system") or getattr(target, "topology", None) is None:
        raise ValueError(f"system {settings.system!r}: umbrella sampling needs a molecule with an OpenMM force field")
    for name in restrained_angles(settings):
        dihedral_atoms(target.topology, name)
    workdir = out.with_name(out.stem + ".windows")
    workdir.mkdir(parents=True, exist_ok=True)
    settings_file = workdir / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != asdict(settings):
        raise ValueError(f"{workdir} holds windows of different settings; remove it or use another --out")
    settings_file.write_text(json.dumps(asdict(settings), indent=2))
    t0 = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    from tqdm import tqdm
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_window, settings, k, workdir) for k in range(len(all_centres(settings)))]
        files = [f.result() for f in tqdm(futures, desc="umbrella windows", unit="window")]
    wall = time.perf_counter() - t0
    target = load_target(settings.system)
    kt = target.kt
    res, log_w, phi, psi = mbar_analysis(settings, files, kt)
    data = [np.load(f) for f in files]
    energy = np.concatenate([d["energy"] for d in data])
    offsets = np.cumsum([0] + [len(d["phi"]) for d in data])[:-1]
    frame_rows = np.concatenate([o + d["frame_index"] for o, d in zip(offsets, data)])
    xyz = np.concatenate([d["xyz"] for d in data])
    np.savez(out, phi=phi.astype(np.float32), psi=psi.astype(np.float32), energy_kj_per_mol=energy,
             log_w=log_w, frames_xyz=xyz, frames_log_w=log_w[frame_rows], frames_row=frame_rows,
             kT_kj_per_mol=kt, system=settings.system)
    meta = {"settings": asdict(settings), "estimates": res, "wall_seconds": wall,
            "cpu_seconds_windows": float(sum(float(d["cpu_seconds"]) for d in data)),
            "n_samples": int(len(phi)), "n_frames": int(len(xyz))}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return meta
