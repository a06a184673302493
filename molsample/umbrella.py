"""Enhanced-sampling reference: umbrella sampling along backbone dihedrals, combined by MBAR.

Windows restrain phi, psi, or both on a grid ('phi+psi'; first residue that has them) with a periodic
harmonic bias 0.5 kappa min(|theta - theta_k|, 2 pi - |theta - theta_k|)^2 (kJ/mol, kappa in
kJ/mol/rad^2) through one OpenMM CustomTorsionForce per restrained angle. The number of windows and
kappa may differ per angle (e.g. 30 windows with kappa 300 on phi, whose barriers are steep, and 18
with kappa 100 on psi). MBAR's reduced potentials use `bias_energy`, the same function of the same
float64 angles; each window also stores OpenMM's own restraint energy of every sample and the
analysis refuses to proceed if the two differ.

Windows are visited in chains: a chain starts from the minimised structure (minimised without the
restraint), is steered to its first window by moving the restraint centre in small steps, and every
later window starts from the end of the previous one, its grid neighbour (a serpentine path through
the grid), then equilibrates before sampling. Every sample records phi, psi, the peptide-bond
torsions omega and the chirality at each CA, so a window that flipped to D-alanine or to a cis
peptide is reported. MBAR (pymbar) runs on samples decorrelated by the slowest of several
observables the estimates depend on (the restrained and free backbone angles, omega, the restraint
energy; the potential energy's is recorded), with statistical inefficiencies that also see slow
components under a fast oscillation (block averages). Every saved sample then gets its unbiased
weight, w_n proportional to 1 / sum_k N_k exp(f_k - u_k(x_n)) with N_k the number of samples window k
saved (the mixture they were drawn from, not the decorrelated count), which yields the free-energy profile, dF(phi > 0 vs phi < 0),
basin populations, and weighted frames that `molsample compare` can use as a reference.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .estimate import delta_f_from_population
from .io import save_samples
from .md import langevin_context
from .runtime import progress_bar

RESTRAINT_GROUP = 30          # OpenMM force group of the restraints (a group mask of bit 31 reads as "all groups")


@dataclass(frozen=True)
class UmbrellaSettings:
    system: str = "aldp"
    dihedral: str = "phi"
    windows: int | tuple = 36          # per restrained angle: one number for all, or one per angle
    kappa: float | tuple = 200.0       # kJ/mol/rad^2, likewise
    ns_per_window: float = 0.5
    equilibration_ps: float = 50.0     # per window, after its start structure (the previous window's end) is reached
    steer_ps: float = 20.0             # moving the restraint from the minimised structure to a chain's first window
    sample_every: int = 100            # steps between dihedral samples
    frame_every: int = 2000            # steps between saved frames
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    temperature: float | None = None
    platform: str = "Reference"
    seed: int = 0


def _settings_json(settings: UmbrellaSettings) -> dict:
    return json.loads(json.dumps(asdict(settings)))


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


def omega_atoms(topology) -> list[list[int]]:
    """Peptide-bond torsions (X-C-N-Y around every C-N bond between residues; X, Y the carbons bonded to
    C and N, e.g. CH3 of ACE, CA, C of NME). mdtraj's compute_omega skips the capping groups."""
    out = []
    for a, b in topology.bonds:
        if a.residue.index == b.residue.index:
            continue
        c, n = (a, b) if a.name == "C" else (b, a)
        if c.name != "C" or n.name != "N":
            continue
        carbons = lambda atom, other: [x for x, y in topology.bonds for x, y in ((x, y), (y, x))
                                       if y.index == atom.index and x.index != other.index and x.element.symbol == "C"]
        xs, ys = carbons(c, n), carbons(n, c)
        if xs and ys:
            out.append([xs[0].index, c.index, n.index, ys[0].index])
    return sorted(out, key=lambda q: q[1])


def chirality_atoms(topology) -> list[list[int]]:
    """(CA, N, C, CB) of every residue that has them (alanine and other non-glycine residues)."""
    out = []
    for res in topology.residues:
        names = {a.name: a.index for a in res.atoms}
        if all(k in names for k in ("CA", "N", "C", "CB")):
            out.append([names["CA"], names["N"], names["C"], names["CB"]])
    return out


def chirality(xyz: np.ndarray, quad: list[int]) -> np.ndarray:
    """Signed volume (N - CA) . ((C - CA) x (CB - CA)) (nm^3); positive for L amino acids, negative for D."""
    x = np.asarray(xyz, dtype=np.float64)
    ca, n, c, cb = (x[:, i] for i in quad)
    return np.einsum("ij,ij->i", n - ca, np.cross(c - ca, cb - ca))


def dihedral(xyz: np.ndarray, quad: list[int]) -> np.ndarray:
    """Torsion angle (radians, in [-pi, pi]) of four atoms in every frame, in float64, with the sign
    convention of OpenMM and mdtraj (IUPAC)."""
    x = np.asarray(xyz, dtype=np.float64)
    p0, p1, p2, p3 = (x[:, i] for i in quad)
    b0, b1, b2 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = np.cross(b0, b1), np.cross(b1, b2)
    y = np.linalg.norm(b1, axis=1) * np.einsum("ij,ij->i", b0, n2)
    return np.arctan2(y, np.einsum("ij,ij->i", n1, n2))


def wrap_angle(theta):
    """Angles mapped into [-pi, pi)."""
    return (np.asarray(theta, dtype=np.float64) + math.pi) % (2 * math.pi) - math.pi


def window_centres(n: int) -> np.ndarray:
    return -math.pi + 2 * math.pi * (np.arange(n) + 0.5) / n


def restrained_angles(settings: "UmbrellaSettings") -> list[str]:
    """'phi', 'psi' or 'phi+psi' (a 2D grid of windows) as a list of angle names."""
    names = settings.dihedral.split("+")
    if not names or any(n not in ("phi", "psi") for n in names) or len(set(names)) != len(names):
        raise ValueError(f"dihedral must be 'phi', 'psi' or 'phi+psi', got {settings.dihedral!r}")
    return names


def _per_angle(value, n: int, flag: str, cast) -> list:
    vals = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise ValueError(f"{flag} has {len(vals)} values for {n} restrained angle(s): {value!r}")
    return [cast(v) for v in vals]


def windows_per_angle(settings: "UmbrellaSettings") -> list[int]:
    n = _per_angle(settings.windows, len(restrained_angles(settings)), "--windows", int)
    if any(v < 2 for v in n):
        raise ValueError(f"--windows must be at least 2 per angle, got {settings.windows!r}")
    return n


def kappas(settings: "UmbrellaSettings") -> list[float]:
    k = _per_angle(settings.kappa, len(restrained_angles(settings)), "--kappa", float)
    if not all(v > 0 and math.isfinite(v) for v in k):
        raise ValueError(f"--kappa must be positive (kJ/mol/rad^2), got {settings.kappa!r}")
    return k


def all_centres(settings: "UmbrellaSettings") -> np.ndarray:
    """Window centres, shape (n_windows, n_restrained_angles): a grid for 'phi+psi', phi the slow index."""
    grids = np.meshgrid(*[window_centres(n) for n in windows_per_angle(settings)], indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def serpentine_order(settings: "UmbrellaSettings") -> list[int]:
    """All windows in an order where consecutive windows are grid neighbours (one spacing in one angle):
    psi up in even phi columns, down in odd ones. With an even number of phi windows the last one is
    also the first one's neighbour (across phi = +-pi), so the path is a cycle."""
    n = windows_per_angle(settings)
    if len(n) == 1:
        return list(range(n[0]))
    order = []
    for i in range(n[0]):
        js = range(n[1]) if i % 2 == 0 else reversed(range(n[1]))
        order += [i * n[1] + j for j in js]
    return order


def chains(settings: "UmbrellaSettings", n_chains: int, start_angles: np.ndarray) -> list[list[int]]:
    """The serpentine path rotated to begin at the window nearest to the start structure's angles,
    cut into ``n_chains`` contiguous pieces (one per process)."""
    order = serpentine_order(settings)
    c = all_centres(settings)[order]
    dist = np.abs(wrap_angle(c - np.asarray(start_angles)[None, :])).sum(axis=1)
    i0 = int(np.argmin(dist))
    order = order[i0:] + order[:i0]
    n_chains = max(1, min(int(n_chains), len(order)))
    return [list(p) for p in np.array_split(np.array(order), n_chains)]


def bias_energy(theta: np.ndarray, centre: float, kappa: float) -> np.ndarray:
    """Periodic harmonic bias in kJ/mol (kappa in kJ/mol/rad^2): the function the OpenMM restraint
    evaluates, 0.5 kappa min(d, 2 pi - d)^2 with d = |theta - centre|, for theta and centre in [-pi, pi]."""
    d = np.abs(np.asarray(theta, dtype=np.float64) - float(centre))
    d = np.minimum(d, 2 * math.pi - d)
    return 0.5 * kappa * d * d


def window_bias(data_or_angles, centre: np.ndarray, names: list[str], kappa) -> np.ndarray:
    """Total restraint energy (kJ/mol) of samples in the window with the given centre; kappa one
    number or one per restrained angle."""
    ks = list(kappa) if isinstance(kappa, (list, tuple, np.ndarray)) else [kappa] * len(names)
    return sum(bias_energy(data_or_angles[n], c, k) for n, c, k in zip(names, np.atleast_1d(centre), ks))


RESTRAINT_EXPRESSION = ("0.5*{k}*dtheta^2; dtheta = min(d, 2*pi - d); d = abs(theta - {t0}); pi = " + repr(math.pi))


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
        f.addTorsion(*dihedral_atoms(topology, name), [])
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


def _geometry(xyz: np.ndarray, topology) -> dict:
    """phi, psi (float64), omega torsions (n, n_bonds) and CA chirality volumes (n, n_residues) of frames."""
    return {"phi": dihedral(xyz, dihedral_atoms(topology, "phi")), "psi": dihedral(xyz, dihedral_atoms(topology, "psi")),
            "omega": np.stack([dihedral(xyz, q) for q in omega_atoms(topology)], axis=1),
            "chirality": np.stack([chirality(xyz, q) for q in chirality_atoms(topology)], axis=1)}


def run_chain(settings: UmbrellaSettings, chain_id: int, ks: list[int], workdir: Path) -> list[str]:
    """Run the windows ``ks`` in order in one OpenMM context: the first is reached from the minimised
    structure by steering the restraint centre, each later one starts from the previous window's last
    state. Finished windows (files in ``workdir``) are kept; a resumed chain continues from the last one."""
    import openmm
    from openmm import unit

    from .targets import load_target
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
            geo = _geometry(x, target.topology)
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
            integrator.step(settings.sample_every)
            st = ctx.getState(getPositions=True, getEnergy=True, groups=unbiased)
            xyz[i] = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            energy[i] = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            restraint[i] = ctx.getState(getEnergy=True, groups={RESTRAINT_GROUP}).getPotentialEnergy().value_in_unit(
                unit.kilojoule_per_mole)
        geo = _geometry(xyz, target.topology)
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


def statistical_inefficiency(x: np.ndarray, block: int = 10) -> float:
    """Statistical inefficiency g (in samples) of a time series: the larger of pymbar's estimate and
    one from means of ``block`` consecutive samples. pymbar sums the autocorrelation function until it
    first crosses zero (after 3 lags) and sets g = 1 if the sum is negative, so a restrained angle that
    librates (alternating autocorrelation at 0.1 ps) gets g = 1 whatever slower motion lies beneath;
    block means average the oscillation out and keep the slow part: g = block g_B var(B) / var(x)."""
    from pymbar import timeseries
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        return 1.0
    g = float(timeseries.statistical_inefficiency(x))
    nb = len(x) // block
    if nb >= 8:
        xb = x[:nb * block]
        b = xb.reshape(nb, block).mean(axis=1)
        if np.ptp(b) > 0:
            g = max(g, block * float(timeseries.statistical_inefficiency(b)) * b.var() / xb.var())
    return max(g, 1.0)


def window_inefficiencies(d, centre: np.ndarray, names: list[str], kappa) -> dict[str, float]:
    """g of each observable family in one window: phi, psi (restrained: sin and cos of the offset from
    the centre; free: sin and cos), the peptide-bond torsions, the restraint and the potential energy."""
    c = dict(zip(names, np.atleast_1d(centre)))
    g = {}
    for n in ("phi", "psi"):
        a = np.asarray(d[n], dtype=np.float64) - c.get(n, 0.0)
        g[n] = max(statistical_inefficiency(np.sin(a)), statistical_inefficiency(np.cos(a)))
    if "omega" in d:
        om = np.asarray(d["omega"], dtype=np.float64)
        g["omega"] = max(statistical_inefficiency(f(om[:, j])) for j in range(om.shape[1]) for f in (np.sin, np.cos))
    g["restraint"] = statistical_inefficiency(window_bias(d, centre, names, kappa))
    if "energy" in d:
        g["energy"] = statistical_inefficiency(d["energy"])
    return g


def _expect(mbar, a: np.ndarray) -> tuple[float, float]:
    """MBAR expectation in the unbiased state with its asymptotic uncertainty; a constant
    observable (e.g. an empty basin) is returned exactly, since pymbar cannot take its log."""
    a = np.asarray(a, dtype=float)
    if np.ptp(a) == 0:
        return float(a[0]), 0.0
    with np.errstate(divide="ignore"):              # pymbar takes log(0) of an indicator's zeros; expected
        e = mbar.compute_expectations(a, u_kn=np.zeros((1, len(a))))
    return float(e["mu"][0]), float(e["sigma"][0])


def overlap_report(mbar) -> dict:
    """pymbar's overlap matrix summarised: its scalar (1 - second largest eigenvalue), its smallest
    eigenvalue, and for every window the largest overlap with any other window."""
    ov = mbar.compute_overlap()
    o = np.array(ov["matrix"])
    off = o - np.diag(np.diag(o))
    nb = off.max(axis=1)
    return {"scalar": float(ov["scalar"]), "smallest_eigenvalue": float(np.min(np.real(ov["eigenvalues"]))),
            "neighbour_overlap": nb.tolist(), "weakest_window": int(np.argmin(nb)), "weakest": float(nb.min())}


RESTRAINT_TOLERANCE_KJ = 1e-6
DECORRELATION_OBSERVABLES = ("phi", "psi", "omega", "restraint")


def mbar_analysis(settings: UmbrellaSettings, files: list[str], kt: float) -> dict:
    """MBAR over windows; returns estimates and per-sample unbiased log weights."""
    from pymbar import MBAR

    from .analysis.basins import BASINS, basin_indicators, phi_positive
    data = [dict(np.load(f)) for f in files]
    names = restrained_angles(settings)
    kap = kappas(settings)
    centres = np.array([np.atleast_1d(d["centre"]).astype(float) for d in data])   # (K, n_angles)
    for d, c, f in zip(data, centres, files):
        for n in ("phi", "psi"):
            d[n] = wrap_angle(d[n])
        if "restraint_kj" in d:        # the restraint OpenMM applied and the one MBAR uses must be one function
            err = float(np.max(np.abs(window_bias(d, c, names, kap) - d["restraint_kj"])))
            if not err < RESTRAINT_TOLERANCE_KJ:
                raise ValueError(f"{f}: the OpenMM restraint energy and the MBAR bias differ by {err:.2e} kJ/mol")
    angles_all = {n: np.concatenate([d[n] for d in data]) for n in ("phi", "psi")}
    keep, n_k, g_k, g_obs = [], [], [], []
    offset = 0
    for d, c in zip(data, centres):
        # decorrelate by the slowest observable of the window that the estimates depend on (restrained
        # angles librate in 0.1 ps; free angles, peptide bonds or a window that hops across a barrier can be
        # far slower). The potential energy's g is recorded but not used: it relaxes with the thermostat
        # (1 / friction), and neither the reduced potentials u_k(x) nor the basins depend on it
        gs = window_inefficiencies(d, c, names, kap)
        g = max(v for o, v in gs.items() if o in DECORRELATION_OBSERVABLES)
        from pymbar import timeseries
        idx = np.asarray(timeseries.subsample_correlated_data(d["phi"], g=g)) + offset
        keep.append(idx)
        n_k.append(len(idx))
        g_k.append(g)
        g_obs.append(gs)
        offset += len(d["phi"])
    keep = np.concatenate(keep)
    kept = {n: a[keep] for n, a in angles_all.items()}
    u_kn = np.stack([window_bias(kept, c, names, kap) / kt for c in centres])
    mbar = MBAR(u_kn, np.array(n_k))
    f_k = mbar.f_k
    ovr = overlap_report(mbar)
    overlap = ovr["scalar"]
    if not overlap > 1e-4:
        raise ValueError(f"umbrella windows barely overlap (MBAR overlap {overlap:.2e}); use more windows, a "
                         "smaller kappa or longer windows")
    # unbiased log weights of every sample (decorrelated or not), from the window free energies: the
    # mixture they were drawn from has each window's full sample count, not its decorrelated count
    u_all = np.stack([window_bias(angles_all, c, names, kap) / kt for c in centres])
    n_all = np.array([len(d["phi"]) for d in data], dtype=float)
    log_denom = np.logaddexp.reduce(np.log(n_all)[:, None] + f_k[:, None] - u_all, axis=0)
    log_w = -log_denom - np.logaddexp.reduce(-log_denom)
    # dF and populations with MBAR uncertainties (decorrelated samples, unbiased state u = 0)
    phi, psi = angles_all["phi"], angles_all["psi"]
    ind = basin_indicators(phi[keep], psi[keep])
    res = {}
    p, dp = _expect(mbar, phi_positive(phi[keep]))
    res["p_phi_positive"] = {"value": p, "stderr": dp}
    df = delta_f_from_population(p, dp)
    res["dF_phi_positive_minus_negative_kT"] = {"value": df.value, "stderr": df.stderr}
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
    res["overlap"] = ovr
    offsets = np.array([[np.degrees(np.angle(np.exp(1j * (d[n] - ci))).mean()) for n, ci in zip(names, c)]
                        for d, c in zip(data, centres)])
    win = {"restrained": names, "kappa": kap, "centres_rad": centres.tolist(), "n_decorrelated": [int(n) for n in n_k],
           "g": [float(g) for g in g_k], "g_by_observable": {o: [float(gs.get(o, math.nan)) for gs in g_obs]
                                                             for o in g_obs[0]},
           "slowest_observable": [max((o for o in gs if o in DECORRELATION_OBSERVABLES), key=gs.get) for gs in g_obs],
           "mean_offset_deg": offsets.round(2).tolist(), "max_abs_offset_deg": float(np.abs(offsets).max()),
           "f_k": f_k.tolist()}
    if all("omega" in d for d in data):
        win["cis_fraction"] = [float((np.abs(d["omega"]) < math.pi / 2).any(axis=1).mean()) for d in data]
        win["chirality_flipped_fraction"] = [float(np.asarray(d["chirality_flipped"]).any(axis=1).mean()) for d in data]
        win["n_windows_cis_or_flipped"] = int(sum(a > 0 or b > 0 for a, b in zip(win["cis_fraction"],
                                                                                    win["chirality_flipped_fraction"])))
    res["windows"] = win
    return res, log_w, phi, psi


def run_umbrella(settings: UmbrellaSettings, out: str | Path, workers: int | None = None,
                 progress: bool = True) -> dict:
    """Run every window (chains of windows in parallel processes; finished windows are reused) and
    analyse with MBAR.

    Writes OUT (.npz: phi, psi, unbiased energies and log weights of every sample, weighted frames)
    and OUT.json (settings, estimates, timings).
    """
    from .targets import load_target
    out = Path(out)
    target = load_target(settings.system)            # checked before any window starts
    if not (target.has_openmm and target.molecular):
        raise ValueError(f"system {settings.system!r}: umbrella sampling needs a molecule with an OpenMM force field")
    for name in restrained_angles(settings):
        dihedral_atoms(target.topology, name)
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
    geo = _geometry(np.asarray(target.positions)[None], target.topology)
    paths = chains(settings, workers, np.array([geo[n][0] for n in restrained_angles(settings)]))
    n_windows = len(all_centres(settings))
    done = lambda: sum(1 for _ in workdir.glob("window_*.npz"))
    with ProcessPoolExecutor(max_workers=len(paths), mp_context=multiprocessing.get_context("spawn")) as pool, \
            progress_bar(total=n_windows, initial=done(), desc=f"umbrella {settings.system}", unit="window",
                         enabled=progress) as bar:
        futures = [pool.submit(run_chain, settings, i, p, workdir) for i, p in enumerate(paths)]
        while not all(f.done() for f in futures):
            time.sleep(1.0)
            bar.update(done() - bar.n)
        for f in futures:
            f.result()
        bar.update(done() - bar.n)
    files = [str(workdir / f"window_{k:04d}.npz") for k in range(n_windows)]
    if progress:
        print(f"umbrella {settings.system}: MBAR over {n_windows} windows ...", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    kt = target.kt
    c_analysis = time.process_time()
    res, log_w, phi, psi = mbar_analysis(settings, files, kt)
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
