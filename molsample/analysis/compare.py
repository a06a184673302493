"""`molsample compare`: a sampler (or any ensemble) side by side with a reference.

Populations and free-energy differences come with error bars: independent weighted samples by
the bootstrap over samples; MD by the statistical inefficiency of the indicator in each replica
(pymbar); an umbrella reference by its own MBAR uncertainties.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..estimate import delta_f_from_population
from ..estimate import ess as kish_ess
from .distances import pair_distances
from .basins import BASINS, STATE_DEFINITIONS, basin_indicators, phi_positive
from .ensembles import Ensemble, reduced_energies
from .stats import histogram_kl, torus_w2, wasserstein_1d
from .stats import weights_from_log as _weights

ANGLE_BINS = 36                     # 10-degree bins on [-pi, pi) for every KL


MIN_INDEPENDENT_IN_STATE = 50      # below this an MD population gets no estimate ("not sampled")


def _md_stats(indicator: np.ndarray, segments: list[int]) -> tuple[float, float, float]:
    """Mean of an indicator over MD replicas, its error from each replica's statistical inefficiency g
    (pymbar), and the independent samples inside its rarer side: sum over replicas of (frames there) / g."""
    from pymbar import timeseries
    n_eff, n_in = 0.0, 0.0
    for seg in np.split(indicator.astype(float), np.cumsum(segments)[:-1]):
        g = timeseries.statistical_inefficiency(seg) if np.ptp(seg) > 0 else float(len(seg))
        n_eff += len(seg) / g
        inside = float(seg.sum())
        n_in += min(inside, len(seg) - inside) / g
    p = float(indicator.mean())
    return p, math.sqrt(max(p * (1 - p), 0.0) / max(n_eff, 1.0)), n_in


def _md_fraction(indicator: np.ndarray, segments: list[int]) -> tuple[float, float]:
    """Mean of an indicator over MD replicas, with the error from each replica's statistical inefficiency."""
    return _md_stats(indicator, segments)[:2]


def md_independent_in_state(indicator: np.ndarray, segments: list[int]) -> float:
    """Independent MD samples inside the rarer side of an indicator: sum over replicas of (frames there) / g.

    A population that plain MD reaches only through a handful of independent visits has no meaningful
    error bar (the run cannot tell how much of the state it never entered), so `compare` reports such a
    state as not sampled instead of a number."""
    return _md_stats(indicator, segments)[2]


def _weighted_fraction(indicator, log_w, n_boot=200, seed=0) -> tuple[float, float]:
    w = np.ones(len(indicator)) if log_w is None else _weights(log_w)
    p = float((w * indicator).sum() / w.sum())
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(w), len(w))
        if w[i].sum() > 0:
            boots.append((w[i] * indicator[i]).sum() / w[i].sum())
    return p, float(np.std(boots, ddof=1))


def _indicator_log_w(ens: Ensemble, n: int, use_weights: bool):
    """The log weights that go with n per-row indicators: the angles' (umbrella, replica exchange: every sample,
    more rows than conformations) where they match, else the conformations'; None unweighted."""
    if not use_weights:
        return None
    return ens.angle_log_w if ens.angle_log_w is not None and n == len(ens.angle_log_w) else ens.log_w


def fraction(ens: Ensemble, indicator: np.ndarray, use_weights: bool = True) -> tuple[float, float]:
    """Population of a state with its standard error, by the method suited to the ensemble."""
    if ens.correlated:
        return _md_fraction(indicator, ens.segments)
    return _weighted_fraction(indicator.astype(float), _indicator_log_w(ens, len(indicator), use_weights))


def delta_f_from_fraction(p: float, dp: float) -> dict:
    """dF = F(B) - F(A) = -log(p / (1 - p)) for p = P(B), with the delta-method error, as a dict
    (:func:`molsample.estimate.delta_f_from_population`)."""
    e = delta_f_from_population(p, dp)
    return {"value": e.value, "stderr": e.stderr}


def _not_sampled(n_independent: float) -> dict:
    return {"value": None, "stderr": None, "sampled": False,
            "note": f"not sampled: about {n_independent:.0f} independent MD samples in the state "
                    f"(fewer than {MIN_INDEPENDENT_IN_STATE}); plain MD of this length cannot estimate it"}


def state_estimates(ens: Ensemble, use_weights: bool = True) -> dict:
    """Basin populations, p(phi > 0) and dF(phi > 0 vs phi < 0) of an ensemble with angles, with errors.

    For MD, a state with fewer than MIN_INDEPENDENT_IN_STATE independent samples is reported as not
    sampled (value None) rather than as a population with an error bar."""
    def estimate(indicator):
        if not ens.correlated:
            return (*fraction(ens, indicator, use_weights), None)
        p, dp, n_in = _md_stats(indicator, ens.segments)              # one pass of g per replica
        return p, dp, _not_sampled(n_in) if n_in < MIN_INDEPENDENT_IN_STATE else None

    ind = basin_indicators(ens.phi, ens.psi)
    out = {"basins": {}}
    for name in BASINS:
        p, dp, missing = estimate(ind[name])
        out["basins"][name] = missing or {"value": p, "stderr": dp}
    ind_pos = phi_positive(ens.phi)
    p, dp, missing = estimate(ind_pos)
    out["p_phi_positive"] = missing or {"value": p, "stderr": dp}
    out["dF_phi_positive_minus_negative_kT"] = missing or delta_f_from_fraction(p, dp)
    if not ens.correlated and not missing:
        # independent draws: the estimate of p rests on the (effective) draws inside the state
        n_in = effective_in_state(ens, ind_pos, use_weights)
        for key in ("p_phi_positive", "dF_phi_positive_minus_negative_kT"):
            out[key]["effective_in_state"] = n_in
            if n_in < MIN_EFFECTIVE_IN_STATE:
                out[key]["note"] = (f"rests on {n_in:.0f} effective draws inside phi > 0 (fewer than "
                                    f"{MIN_EFFECTIVE_IN_STATE}): too few for its error bar to be trusted")
    return out


MIN_EFFECTIVE_IN_STATE = 100     # below this a weighted population's bootstrap error is not to be trusted


def effective_in_state(ens: Ensemble, indicator: np.ndarray, use_weights: bool = True) -> float:
    """Kish effective number of the independent draws inside a state, (sum w)^2 / sum w^2 over the draws with
    ``indicator`` (the count of draws when unweighted). A population estimated from a few dozen heavy-tailed
    weights is typically too low, with a bootstrap error that does not show it."""
    ind = np.asarray(indicator, dtype=bool)
    log_w = _indicator_log_w(ens, len(ind), use_weights)
    if log_w is None:
        return float(ind.sum())
    w = _weights(log_w)[ind]
    return float(w.sum() ** 2 / (w ** 2).sum()) if w.sum() > 0 else 0.0


def _angle_weights(ens: Ensemble, use_weights: bool):
    if not use_weights:
        return None
    return _weights(ens.angle_log_w if ens.angle_log_w is not None else ens.log_w)


def peptide_metrics(sample: Ensemble, ref: Ensemble, use_weights: bool) -> dict:
    """KL of phi, psi and (phi, psi) histograms (KL(reference || sample)), torus W2, basin
    populations and dF(phi > 0 vs phi < 0) with errors."""
    edges = np.linspace(-math.pi, math.pi, ANGLE_BINS + 1)
    wr, ws = _angle_weights(ref, True), _angle_weights(sample, use_weights)
    out = {"kl_phi": histogram_kl(ref.phi, sample.phi, [edges], wr, ws),
           "kl_psi": histogram_kl(ref.psi, sample.psi, [edges], wr, ws),
           "kl_phi_psi": histogram_kl(np.stack([ref.phi, ref.psi], 1), np.stack([sample.phi, sample.psi], 1),
                                      [edges, edges], wr, ws),
           "w2_torus_phi_psi": torus_w2(np.stack([ref.phi, ref.psi], 1), np.stack([sample.phi, sample.psi], 1),
                                        wr, ws)}
    out.update(state_estimates(sample, use_weights))
    return out


def reference_peptide_estimates(ref: Ensemble) -> dict:
    if ref.external and "dF_phi_positive_minus_negative_kT" in ref.external:      # MBAR estimates of the full run
        e = ref.external
        return {"basins": e["basins"], "p_phi_positive": e["p_phi_positive"],
                "dF_phi_positive_minus_negative_kT": e["dF_phi_positive_minus_negative_kT"]}
    return state_estimates(ref)


def energy_metrics(sample: Ensemble, ref: Ensemble, use_weights: bool) -> dict:
    ws = _weights(sample.log_w) if use_weights else None
    wr = _weights(ref.log_w)
    ok = np.isfinite(sample.energy)
    return {"energy_w1_kT": wasserstein_1d(ref.energy, sample.energy[ok], wr, None if ws is None else ws[ok], 1),
            "energy_w2_kT": wasserstein_1d(ref.energy, sample.energy[ok], wr, None if ws is None else ws[ok], 2),
            "mean_energy_kT": float(np.average(sample.energy[ok], weights=None if ws is None else ws[ok]))}


def particle_metrics(sample: Ensemble, ref: Ensemble, target, use_weights: bool, n_eq: int = 100) -> dict:
    """Pair-distance W1/W2, equivariant W2, and for LJ clusters the energy distances in the DEM
    convention (pair energy counted twice) next to the squared W2 that DEM-family papers report."""
    from .particles import equivariant_w2
    ws = _weights(sample.log_w) if use_weights else None
    wr = _weights(ref.log_w)
    n_pairs = sample.x.shape[1] * (sample.x.shape[1] - 1) // 2          # each sample's weight on its pairs
    ds, dr = pair_distances(sample.x).ravel(), pair_distances(ref.x).ravel()
    wsp = None if ws is None else np.repeat(ws, n_pairs)
    wrp = None if wr is None else np.repeat(wr, n_pairs)
    out = {"pair_distance_w1": wasserstein_1d(dr, ds, wrp, wsp, 1),
           "pair_distance_w2": wasserstein_1d(dr, ds, wrp, wsp, 2),
           "equivariant_w2": equivariant_w2(ref.x, sample.x, wr, ws, n=n_eq),
           "equivariant_w2_n": n_eq}
    from ..targets.particles import LennardJones
    if isinstance(target, LennardJones) and target.convention == "pairs-once":
        dem = LennardJones(target.n_particles, epsilon=target.epsilon, r_m=target.r_m, tether=target.tether,
                           tau=target.tau, convention="dem")
        us, ur = reduced_energies(dem, sample.x), reduced_energies(dem, ref.x)
        ok = np.isfinite(us)
        w = None if ws is None else ws[ok]
        w2 = wasserstein_1d(ur, us[ok], wr, w, 2)
        out["dem_convention"] = {"energy_w1": wasserstein_1d(ur, us[ok], wr, w, 1), "energy_w2": w2,
                                 "energy_w2_squared": w2**2}
    return out


def _same_residue(sample: Ensemble, ref: Ensemble, target) -> str | None:
    """The residue whose (phi, psi) both ensembles' angles describe. An umbrella reference restrains one residue's
    angles (``external['residue']``; the first residue with phi and psi unless the run chose another); the
    angles of an ensemble of conformations (samples, MD) are the first residue's until this recomputes them
    for the reference's residue. Two files of different residues are refused."""
    names = [(e.label, e.external.get("residue")) for e in (sample, ref) if e.external.get("residue")]
    if len({v for _, v in names}) > 1:
        raise ValueError("the two files describe different residues' angles: "
                         + ", ".join(f"{k}: {v}" for k, v in names))
    if not names or target.topology is None:
        return None
    name = names[0][1]
    from ..umbrella.windows import dihedral
    from .timeseries import backbone_residues
    res = {r[0]: r for r in backbone_residues(target.topology)}
    if name not in res:
        raise ValueError(f"residue {name!r} of the reference is not one of {target.name}'s ({', '.join(res)})")
    if name == next(iter(res)):
        return name                        # the first residue: every ensemble's angles are already its own
    for e in (sample, ref):
        if e.external.get("residue") or e.phi is None:
            continue
        if e.x is None or len(e.phi) != len(e.x):
            raise ValueError(f"{e.label} holds the first residue's angles for more rows than it has conformations, "
                             f"so they cannot be recomputed for {name}")
        e.phi, e.psi = dihedral(e.x, res[name][1]), dihedral(e.x, res[name][2])
    return name


def compare(sample: Ensemble, ref: Ensemble, target) -> dict:
    """All metrics of ``sample`` against ``ref`` (raw and, when the sample has weights, reweighted)."""
    residue = _same_residue(sample, ref, target)
    variants = {"raw": False} if sample.log_w is None and sample.angle_log_w is None else {"raw": False,
                                                                                            "reweighted": True}
    if sample.kind in ("md", "umbrella", "replica-exchange"):
        variants = {"as_sampled": True}
    metrics = {"system": target.name, "sample": {"label": sample.label, "kind": sample.kind, "n": len(sample.energy)},
               "reference": {"label": ref.label, "kind": ref.kind, "n": len(ref.energy)},
               "definitions": {
                   "kl": f"KL(reference || sample) of histograms, {ANGLE_BINS} bins per angle on [-pi, pi); "
                         "empty sample bins get probability 1e-10",
                   "w2_torus": "W2 on the torus (periodic squared distance), 1500 resampled points per side",
                   "energy_w": "W1 and W2 (square root taken) of reduced energies u = E / kT",
                   "errors": "bootstrap over samples (independent samples), statistical inefficiency per "
                             "replica (MD), MBAR (umbrella)",
                   "phi_positive": STATE_DEFINITIONS["phi_positive"],
                   "basins": STATE_DEFINITIONS["basins"],
                   "particles": "pair_distance_w*: 1D W of all interparticle distances; equivariant_w2: exact "
                                "OT between n resampled members with ground cost min over O(s) and permutations "
                                "of the summed squared distance (alternating Kabsch/Hungarian, an upper "
                                "estimate); energy_w2_squared: W2^2 as DEM-family papers report (POT emd2_1d); "
                                "dem_convention: energies with every LJ pair counted twice"}}
    if residue is not None:
        metrics["residue"] = residue
    if sample.log_w is not None:
        metrics["sample"]["ess"] = kish_ess(sample.log_w, n_boot=100).as_dict()   # -inf = zero weight
    if sample.folded_fraction is not None:
        metrics["sample"]["fraction_folded_D_to_L"] = sample.folded_fraction
        metrics["sample"]["fraction_removed_mixed_chirality"] = sample.external.get("removed_mixed_chirality", 0.0)
    peptide = sample.phi is not None and ref.phi is not None
    if peptide:
        metrics["reference"]["estimates"] = reference_peptide_estimates(ref)
    for name, use_w in variants.items():
        m = energy_metrics(sample, ref, use_w)
        if peptide:
            m.update(peptide_metrics(sample, ref, use_w))
            r = metrics["reference"]["estimates"]["dF_phi_positive_minus_negative_kT"]
            s = m["dF_phi_positive_minus_negative_kT"]
            if s["value"] is None or r["value"] is None:
                m["dF_minus_reference_kT"] = {"value": None, "combined_stderr": None, "z": None,
                                              "note": "not compared: dF " + ("of the sample" if s["value"] is None
                                                                             else "of the reference") + " not sampled"}
            else:
                diff = s["value"] - r["value"]
                comb = math.hypot(s["stderr"], r["stderr"])
                m["dF_minus_reference_kT"] = {"value": diff, "combined_stderr": comb,
                                              "z": diff / comb if comb > 0 else math.nan}
        if sample.x is not None and ref.x is not None and target.n_particles and not peptide and \
                not target.molecular:
            m.update(particle_metrics(sample, ref, target, use_w))
            m["energy_w2_squared_kT2"] = m["energy_w2_kT"] ** 2           # as DEM-family papers print it
        metrics[name] = m
    return metrics


def _cell(est: dict, digits: int) -> str:
    if est.get("value") is None:
        return "not sampled"
    return f"{est['value']:.{digits}f} +- {est['stderr']:.{digits}f}"


def write_report(metrics: dict, sample: Ensemble, ref: Ensemble, out_dir: Path) -> Path:
    """metrics.json, figures and report.md in ``out_dir``."""
    from . import plots
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    with np.errstate(invalid="ignore", divide="ignore"):      # a curve with no samples in range is drawn empty
        figs = plots.comparison_figures(sample, ref, out_dir)
    lines = [f"# {metrics['system']}: {sample.label} vs {ref.label}", "",
             f"Sample: {metrics['sample']['kind']}, {metrics['sample']['n']} conformations"
             + (f", ESS {metrics['sample']['ess']['value']:.4f}" if "ess" in metrics["sample"] else "")
             + (f", {100 * metrics['sample']['fraction_folded_D_to_L']:.1f} % folded D -> L"
                if metrics["sample"].get("fraction_folded_D_to_L") else "") + ".",
             f"Reference: {metrics['reference']['kind']}, {metrics['reference']['n']} conformations.", ""]
    variants = [k for k in ("raw", "reweighted", "as_sampled") if k in metrics]
    rows = [("energy W1 (kT)", lambda m: f"{m['energy_w1_kT']:.3f}"),
            ("energy W2 (kT)", lambda m: f"{m['energy_w2_kT']:.3f}")]
    if "kl_phi" in metrics[variants[0]]:
        rows += [("KL phi", lambda m: f"{m['kl_phi']:.4f}"), ("KL psi", lambda m: f"{m['kl_psi']:.4f}"),
                 ("KL (phi, psi)", lambda m: f"{m['kl_phi_psi']:.4f}"),
                 ("W2 torus (phi, psi)", lambda m: f"{m['w2_torus_phi_psi']:.4f}"),
                 ("dF(phi>0 vs phi<0) (kT)", lambda m: _cell(m["dF_phi_positive_minus_negative_kT"], 3)),
                 ("effective draws in phi > 0", lambda m: "" if "effective_in_state" not in
                  m["dF_phi_positive_minus_negative_kT"] else
                  f"{m['dF_phi_positive_minus_negative_kT']['effective_in_state']:,.0f}"
                  + (" (too few to trust the error)" if m["dF_phi_positive_minus_negative_kT"]["effective_in_state"]
                     < MIN_EFFECTIVE_IN_STATE else "")),
                 ("dF - reference (z)", lambda m: "not compared" if m["dF_minus_reference_kT"]["value"] is None
                  else "{:.3f} ({:.1f} sigma)".format(m["dF_minus_reference_kT"]["value"],
                                                      m["dF_minus_reference_kT"]["z"]))]
        rows += [(f"p({b})", (lambda b: lambda m: _cell(m["basins"][b], 4))(b)) for b in BASINS]
    lines += ["| metric | " + " | ".join(variants) + " | reference |", "|---|" + "---|" * (len(variants) + 1)]
    ref_est = metrics["reference"].get("estimates", {})
    for label, fmt in rows:
        ref_cell = ""
        if label.startswith("dF(") and ref_est:
            ref_cell = _cell(ref_est["dF_phi_positive_minus_negative_kT"], 3)
        elif label.startswith("p(") and ref_est:
            ref_cell = _cell(ref_est["basins"][label[2:-1]], 4)
        lines.append(f"| {label} | " + " | ".join(fmt(metrics[v]) for v in variants) + f" | {ref_cell} |")
    lines += ["", *[f"![{f.stem}]({f.name})" for f in figs], "", "Definitions:", ""]
    lines += [f"- {k}: {v}" for k, v in metrics["definitions"].items()]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
