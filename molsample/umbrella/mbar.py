"""MBAR over umbrella windows: statistical inefficiencies that see slow motion under a fast libration,
decorrelated samples, window free energies, the overlap matrix, and unbiased weights, dF(phi > 0 vs phi < 0),
basin populations and the phi profile with MBAR's errors."""
from __future__ import annotations

import math

import numpy as np

from ..estimate import delta_f_from_population
from .windows import UmbrellaSettings, kappas, restrained_angles, window_bias, wrap_angle


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


def _state_estimates(mbar, phi: np.ndarray, psi: np.ndarray) -> dict:
    """p(phi > 0), dF(phi > 0 vs phi < 0), the basin populations and the free-energy profile along phi, with
    MBAR uncertainties, from the decorrelated samples' angles (the unbiased state: u = 0)."""
    from ..analysis.basins import BASINS, basin_indicators, phi_positive
    res = {}
    p, dp = _expect(mbar, phi_positive(phi))
    res["p_phi_positive"] = {"value": p, "stderr": dp}
    df = delta_f_from_population(p, dp)
    res["dF_phi_positive_minus_negative_kT"] = {"value": df.value, "stderr": df.stderr}
    ind = basin_indicators(phi, psi)
    res["basins"] = {}
    for name in BASINS:
        mu, sd = _expect(mbar, ind[name])
        res["basins"][name] = {"value": mu, "stderr": sd}
    edges = np.linspace(-math.pi, math.pi, 37)
    prof = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mu, sd = _expect(mbar, (phi >= lo) & (phi < hi))
        prof.append((0.5 * (lo + hi), -math.log(mu) if mu > 0 else float("inf"), sd / mu if mu > 0 else float("nan")))
    prof = np.array(prof)
    prof[:, 1] -= np.nanmin(prof[:, 1])
    res["profile_phi"] = {"centres_rad": prof[:, 0].tolist(), "F_kT": prof[:, 1].tolist(), "stderr_kT": prof[:, 2].tolist()}
    return res


def mbar_analysis(settings: UmbrellaSettings, files: list[str], kt: float) -> dict:
    """MBAR over windows; returns estimates and per-sample unbiased log weights."""
    from pymbar import MBAR
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
    phi, psi = angles_all["phi"], angles_all["psi"]
    res = _state_estimates(mbar, phi[keep], psi[keep])
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
