"""Analysis of a replica-exchange run: neighbour acceptance, round trips, statistical inefficiencies, MBAR over
all temperatures with a block bootstrap and independent halves, and the plain estimate at the target temperature."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .storage import _quiet_libraries, _silenced, read_storage



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

    from ..targets.openmm_target import kt_kj_per_mol
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
    from ..estimate import delta_f_from_population, log_odds
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

    from ..analysis.basins import BASINS, basin_indicators, phi_positive
    from ..analysis.timeseries import backbone_dihedrals, inefficiency_report, residue_phi
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
