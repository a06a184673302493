"""Correlated time series: statistical inefficiency, effective samples, equilibration (pymbar)."""
from __future__ import annotations

import numpy as np


def inefficiency_report(series: np.ndarray, frame_ps: float) -> dict:
    """Statistical inefficiency g (frames), effective samples N / g, and pymbar's equilibration
    detection (first frame t0 after which N_eff is largest) of one time series."""
    from pymbar import timeseries

    x = np.asarray(series, dtype=np.float64)
    if np.ptp(x) == 0:
        return {"n": len(x), "g": float("nan"), "n_eff": float("nan"), "t0": 0, "note": "constant series"}
    g = float(timeseries.statistical_inefficiency(x))
    # equilibration scan on ~200 candidate start frames (the full scan is quadratic in the length)
    t0, g_eq, n_eff_max = timeseries.detect_equilibration(x, nskip=max(1, len(x) // 200))
    return {"n": len(x), "g": g, "n_eff": len(x) / g, "correlation_time_ps": 0.5 * (g - 1) * frame_ps,
            "t0": int(t0), "t0_ps": float(t0 * frame_ps), "n_eff_after_t0": float(n_eff_max)}


def residue_phi(traj) -> tuple[list[str], np.ndarray]:
    """Each residue's phi (radians, (frames, residues)) of an mdtraj trajectory, with the residues' names
    (the residue of phi's N atom, e.g. ALA2)."""
    import mdtraj
    atoms, phi = mdtraj.compute_phi(traj)
    return [str(traj.topology.atom(int(q[1])).residue) for q in atoms], phi


def backbone_residues(topology) -> list[tuple[str, list[int], list[int]]]:
    """(name, phi atoms, psi atoms) of every residue that has both backbone torsions, in chain order
    (e.g. ALA2 of alanine dipeptide; ALA2, ALA3, ALA4 of the capped tetrapeptide). A residue is named as
    mdtraj prints it; phi belongs to the residue of its N atom, psi to the residue of its CA atom."""
    import mdtraj
    traj = mdtraj.Trajectory(np.zeros((1, topology.n_atoms, 3)), topology)
    phi, _ = mdtraj.compute_phi(traj)
    psi, _ = mdtraj.compute_psi(traj)
    by_res = {int(topology.atom(int(q[1])).residue.index): [int(i) for i in q] for q in psi}
    out = []
    for q in phi:
        res = topology.atom(int(q[1])).residue
        if res.index in by_res:
            out.append((str(res), [int(i) for i in q], by_res[res.index]))
    return out


def backbone_dihedrals(traj) -> dict[str, np.ndarray]:
    """phi and psi (radians, first residue with both) of an mdtraj trajectory, or {} if it has none."""
    import mdtraj
    _, phi = mdtraj.compute_phi(traj)
    _, psi = mdtraj.compute_psi(traj)
    if phi.shape[1] == 0 or psi.shape[1] == 0:
        return {}
    return {"phi": phi[:, 0], "psi": psi[:, 0]}
