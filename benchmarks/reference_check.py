"""The checks a free-energy reference of alanine dipeptide must pass, for one or more methods, each given
as independent runs (different seeds):

    python benchmarks/reference_check.py --system aldp --md systems/aldp/reference/aldp_md_2x50ns.npz \
        --method "2D umbrella" runs/umb/aldp_2d_s11.npz runs/umb/aldp_2d_s12.npz \
        --method "replica exchange" runs/pt/aldp_pt_s1.npz runs/pt/aldp_pt_s2.npz \
        --other "1D umbrella (36 x 2 ns)" systems/aldp/reference/aldp_umbrella_phi_36x2ns.npz

Per method: each run's dF(phi > 0 vs phi < 0) and four basin populations with its error (the larger of
MBAR's and the block bootstrap where the run has one), |A - B| / combined SE between its runs (the check:
within 3), the runs combined (their mean), the CPU time spent, and the CPU time the method
would need for dF to +-0.1 and +-0.05 kT at the measured rate (error proportional to 1 / sqrt(CPU time); for a
sampler only the sampling scales, one base fit and the MD that started it are paid once).
Between methods: combined dF and populations, |difference| / combined SE. Against plain MD where MD is
converged (phi < 0): p(alpha_R | phi < 0) and KL(phi | phi < 0) in 10-degree bins, with MD's own
replica-vs-replica KL as the floor. Prints markdown; --json FILE writes every figure.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import numpy as np

from molsample.analysis.basins import BASINS, basin_indicators, phi_positive
from molsample.analysis.compare import _md_fraction
from molsample.analysis.reference import (_run_se, combine_estimates, is_packed, load_packed_runs, load_replica_run,
                                          load_umbrella_run)
from molsample.analysis.stats import histogram_kl
from molsample.io import samples_kind

EDGES_NEG = np.linspace(-math.pi, 0.0, 19)          # the 10-degree bins of `molsample compare` on phi < 0
DF = "dF_phi_positive_minus_negative_kT"


def load_runs(path: Path, system: str) -> list[dict]:
    """The independent runs in a file: one for a run's own output, all of them for a packed reference
    (whose pooled samples go with its first run, ``share`` = the runs they pool; CPU time not recorded)."""
    if is_packed(path):
        runs = load_packed_runs(path)
        for i, r in enumerate(runs):
            r.update(path=f"{path.stem}[{i}]", kind="packed", cpu_seconds=math.nan, cpu_seconds_analysis=math.nan)
        return runs
    return [load_run(path, system)]


def load_run(path: Path, system: str) -> dict:
    with np.load(path) as d:
        kind = samples_kind(d)
    if kind == "samples":
        return load_sampler_run(path, system)
    replica = kind == "replica-exchange"
    run = load_replica_run(path) if replica else load_umbrella_run(path)
    meta = run["meta"]
    if replica:
        cpu = float(meta["cpu_seconds"])                      # simulation (incl. set-up); analysis below
        cpu_analysis = float(meta.get("cpu_seconds_analysis", math.nan))
    else:
        cpu = float(meta["cpu_seconds_windows"])
        cpu_analysis = float(meta.get("cpu_seconds_analysis", math.nan))
    run.update(path=str(path), kind="replica exchange" if replica else "umbrella", cpu_seconds=cpu,
               cpu_seconds_analysis=cpu_analysis)
    return run


def _data_cpu_seconds(checkpoint: str) -> float:
    """CPU time of the frames that started a sampler's base: the `molsample md` or `molsample umbrella`
    runs named in its config's data.paths (their JSON side files: an MD run's wall time on one thread, an
    umbrella run's CPU time of its windows, the frames' cost without the MBAR). NaN if unknown (a packed
    reference records no CPU time)."""
    cfg = Path(checkpoint).parent / "config.json"
    if not cfg.is_file():
        return math.nan
    total = 0.0
    for f in json.loads(cfg.read_text()).get("data", {}).get("paths", []):
        side = Path(f).with_suffix(".json")
        if not side.is_file():
            return math.nan
        info = json.loads(side.read_text())
        total += float(info["cpu_seconds_windows"] if "cpu_seconds_windows" in info else info.get("wall_seconds", math.nan))
    return total


def load_sampler_run(path: Path, system: str) -> dict:
    """A `molsample sample` file as a reference run: self-normalised importance-sampling estimates with
    bootstrap errors; its CPU time is the sampling, the base fit and training, and the data's MD."""
    from molsample.analysis.compare import state_estimates
    from molsample.analysis.ensembles import load_ensemble
    from molsample.targets import load_target
    ens = load_ensemble([path], load_target(system))
    meta = json.loads(str(np.load(path)["meta"]))
    lw = np.asarray(ens.log_w, dtype=float)
    cpu_data = _data_cpu_seconds(meta.get("checkpoint", ""))
    cpu = float(meta["seconds"]) + float(meta.get("base_fit_cpu_seconds", 0.0)) \
        + float(meta.get("training_cpu_seconds", 0.0)) + cpu_data
    return {"phi": ens.phi, "psi": ens.psi, "log_w": lw - np.logaddexp.reduce(lw), "estimates": state_estimates(ens),
            "meta": meta, "path": str(path), "kind": "sampler", "cpu_seconds": cpu, "cpu_seconds_analysis": math.nan,
            "cpu_seconds_data": cpu_data, "cpu_seconds_fixed": cpu - float(meta["seconds"])}


def z(a: dict, b: dict) -> float:
    return abs(a["value"] - b["value"]) / math.hypot(a["stderr"], b["stderr"])


def neg_given(run: dict):
    phi, psi, lw = run["phi"], run["psi"], run["log_w"]
    w = np.exp(lw - lw.max())
    m = ~phi_positive(phi)
    return phi[m], psi[m], w[m]


def kl_null(md_floor: float, kl_ab: float, bins: int = len(EDGES_NEG) - 1) -> tuple[float, float]:
    """The KL(phi | phi < 0) between plain MD (all of it) and a method (its runs pooled) that sampling noise alone
    gives when both sample the same distribution, and its 95 % bound. The histogram KL of two independent samples
    of one distribution is about chi^2_(bins-1) / (2 n) with 1 / n = 1 / n_1 + 1 / n_2 (effective sample sizes),
    so MD's replica-vs-replica KL measures 4 / n_MD, the method's run-A-vs-run-B KL 4 / n_method (two halves of
    about equal size), and the pair MD vs the pooled method expects a quarter of their sum. The bound is the 95 %
    point of that pair's KL over the same estimate from noisy halves, in the same chi^2 model (simulated), so
    that it holds its 5 % false-alarm rate although the expectation is itself estimated (checked on iid draws:
    2-6 %)."""
    null = 0.25 * (md_floor + kl_ab)
    if not (math.isfinite(null) and null > 0):
        return null, math.nan
    x = np.random.default_rng(0).chisquare(bins - 1, (3, 200_000)) / (bins - 1)
    ratio = x[2] / (0.25 * (md_floor * x[0] + kl_ab * x[1]) / null)
    return null, null * float(np.quantile(ratio, 0.95))


def p_alpha_r_given_neg(est: dict) -> dict:
    a, c = est["basins"]["alpha_R"], est["basins"]["C7eq/beta"]
    s = a["value"] + c["value"]
    return {"value": a["value"] / s, "stderr": _run_se(a) / s}       # p(phi > 0) ~ 0.02: its share is small


def md_check(md_path: Path) -> dict:
    md = np.load(md_path)
    phi, psi = md["phi"].astype(float), md["psi"].astype(float)
    seg = [int(s) for s in md["segments"]]
    neg = ~phi_positive(phi)
    alpha = basin_indicators(phi, psi)["alpha_R"]
    parts = np.split(np.arange(len(phi)), np.cumsum(seg)[:-1])
    p, se = _md_fraction(alpha[neg], [int(neg[i].sum()) for i in parts])
    halves = [phi[i][neg[i]] for i in parts]
    floor = histogram_kl(halves[1], halves[0], [EDGES_NEG]) if len(halves) > 1 else math.nan
    return {"p_alphaR_given_neg": {"value": p, "stderr": se}, "kl_floor": floor, "phi_neg": phi[neg]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", nargs="+", action="append", required=True, metavar=("NAME", "RUN"),
                    help="a method's name and its independent runs (.npz of `molsample umbrella`, `molsample pt` or "
                         "`molsample sample`, the last with the MD that started its base counted in its CPU time)")
    ap.add_argument("--md", help="packed plain-MD reference of the same system (phi < 0 check)")
    ap.add_argument("--other", nargs=2, action="append", default=[], metavar=("NAME", "FILE"),
                    help="another reference (.json or packed .npz with estimates) to compare dF with")
    ap.add_argument("--system", default="aldp")
    ap.add_argument("--json")
    args = ap.parse_args()
    md = md_check(Path(args.md)) if args.md else None
    out = {"system": args.system, "md": {k: v for k, v in md.items() if k != "phi_neg"} if md else None,
           "methods": {}}
    combined = {}
    print(f"## {args.system}\n")
    for name, *files in args.method:
        runs = [r for f in files for r in load_runs(Path(f), args.system)]
        est = [r["estimates"] for r in runs]
        both = combine_estimates(est)
        combined[name] = both
        print(f"### {name}: {len(runs)} independent runs\n")
        print("| quantity | " + " | ".join(Path(r["path"]).stem for r in runs)
              + " | |A - B| / combined SE (largest pair) | runs combined |")
        print("|---|" + "---|" * (len(runs) + 2))
        rows = [("dF(phi>0 vs phi<0) (kT)", [e[DF] for e in est], both[DF], 3)]
        rows += [(f"p({b})", [e["basins"][b] for e in est], both["basins"][b], 4) for b in BASINS]
        checks = {}
        for label, vals, comb, dig in rows:
            vals = [{"value": v["value"], "stderr": _run_se(v)} for v in vals]
            zmax = max((z(a, b) for a, b in itertools.combinations(vals, 2)), default=math.nan)
            checks[label] = zmax
            print(f"| {label} | " + " | ".join(f"{v['value']:.{dig}f} +- {v['stderr']:.{dig}f}" for v in vals)
                  + f" | {zmax:.2f} | {comb['value']:.{dig}f} +- {comb['stderr']:.{dig}f} |")
        # the error bar checked: the runs' scatter against their stated errors (chi^2 of the mean)
        vals = np.array([e[DF]["value"] for e in est])
        ses = np.array([_run_se(e[DF]) for e in est])
        spread = {}
        if len(vals) > 2:
            chi2 = float((((vals - vals.mean()) / ses) ** 2).sum())
            from scipy.stats import chi2 as chi2_dist
            spread = {"sd_of_runs": float(vals.std(ddof=1)), "se_of_mean_from_spread": float(vals.std(ddof=1) / math.sqrt(len(vals))),
                      "chi2": chi2, "dof": len(vals) - 1, "p_value": float(chi2_dist.sf(chi2, len(vals) - 1))}
            print(f"\nScatter of the {len(vals)} runs' dF: standard deviation {spread['sd_of_runs']:.3f} kT against stated "
                  f"errors {ses.min():.3f}-{ses.max():.3f}; chi^2 {chi2:.1f} on {len(vals) - 1} degrees of freedom "
                  f"(p = {spread['p_value']:.3f}); the error of the mean from the scatter is "
                  f"{spread['se_of_mean_from_spread']:.3f} kT (stated {both[DF]['stderr']:.3f})")
        # runs from a packed file record no CPU time: count them at the mean of the runs that do
        known = [r for r in runs if math.isfinite(r["cpu_seconds"])]
        cpu = len(runs) * np.mean([r["cpu_seconds"] for r in known]) if known else math.nan
        cpu_an = len(runs) * np.mean([r["cpu_seconds_analysis"] for r in known]) if known else math.nan
        se = both[DF]["stderr"]
        fixed = sum(r.get("cpu_seconds_fixed", 0.0) for r in runs) / len(runs)     # one base fit + its MD suffice
        cost = {f"cpu_minutes_to_{t}": (fixed + (cpu - len(runs) * fixed) * (se / t) ** 2) / 60 for t in (0.1, 0.05)}
        if all(r["kind"] == "sampler" for r in runs):
            md_min = sum(r["cpu_seconds_data"] for r in runs) / 60
            print(f"\nCPU: {cpu / 60:.1f} min in all ({md_min:.1f} of the MD that started the bases, "
                  f"{sum(r['cpu_seconds_fixed'] for r in runs) / 60 - md_min:.1f} of base fits and training, "
                  f"{(cpu - len(runs) * fixed) / 60:.1f} of sampling with exact weights); dF error {se:.3f} kT; "
                  f"+-0.1 kT needs {cost['cpu_minutes_to_0.1']:.1f} CPU-min and +-0.05 kT "
                  f"{cost['cpu_minutes_to_0.05']:.1f} (one base, more draws)")
        else:
            print(f"\nCPU: {cpu / 60:.1f} min of simulation" + (f" + {cpu_an / 60:.1f} min of analysis" if
                                                                 math.isfinite(cpu_an) else "")
                  + f"; dF error {se:.3f} kT; at this rate +-0.1 kT needs {cost['cpu_minutes_to_0.1']:.0f} CPU-min "
                    f"and +-0.05 kT {cost['cpu_minutes_to_0.05']:.0f} CPU-min of simulation")
        out["methods"][name] = {"runs": [{"path": r["path"], "estimates": {DF: e[DF], "basins": e["basins"]},
                                          "cpu_seconds": r["cpu_seconds"],
                                          "cpu_seconds_analysis": r["cpu_seconds_analysis"]}
                                         for r, e in zip(runs, est)],
                                "halves_z": checks, "combined": {k: v for k, v in both.items() if k != "runs"},
                                "cpu_seconds": cpu, "cpu_seconds_analysis": cpu_an, "dF_scatter": spread, **cost}
        if md is None:
            continue
        mdp = md["p_alphaR_given_neg"]
        print(f"\nAgainst plain MD where it is converged (phi < 0): MD p(alpha_R | phi<0) = {mdp['value']:.4f} +- "
              f"{mdp['stderr']:.4f}, KL(phi | phi<0) floor (MD replica vs replica) {md['kl_floor']:.4f}\n")
        print("| run | p(alpha_R given phi<0) | minus MD / combined SE | KL(phi given phi<0) vs MD |")
        print("|---|---|---|---|")
        md_rows = []
        for r, e in zip(runs, est):
            p = p_alpha_r_given_neg(e)
            if r.get("share", 1) == 0:
                phi, w = None, None
            else:
                phi, _, w = neg_given(r)
            kl = histogram_kl(md["phi_neg"], phi, [EDGES_NEG], None, w) if phi is not None else math.nan
            md_rows.append({"run": r["path"], "p_alphaR_given_neg": p, "z_vs_md": (p["value"] - mdp["value"])
                            / math.hypot(p["stderr"], mdp["stderr"]), "kl_phi_neg_vs_md": kl})
            kl_txt = "(pooled in the row above)" if phi is None else \
                f"{kl:.4f}" + (f" ({r['share']} runs pooled)" if r.get("share", 1) > 1 else "")
            print(f"| {Path(r['path']).stem} | {p['value']:.4f} +- {p['stderr']:.4f} | {md_rows[-1]['z_vs_md']:+.2f} "
                  f"| {kl_txt} |")
        with_samples = [r for r in runs if r.get("share", 1) > 0]
        pooled = [neg_given(r) for r in with_samples]
        kl_pooled = histogram_kl(md["phi_neg"], np.concatenate([p[0] for p in pooled]), [EDGES_NEG], None,
                                 np.concatenate([p[2] / p[2].sum() * r.get("share", 1)
                                                 for p, r in zip(pooled, with_samples)]))
        kl_ab = histogram_kl(pooled[0][0], pooled[1][0], [EDGES_NEG], pooled[0][2], pooled[1][2]) \
            if len(pooled) > 1 else math.nan
        null, bound = kl_null(md["kl_floor"], kl_ab)
        floor_txt = f"; MD's own floor (replica vs replica) {md['kl_floor']:.4f}"
        if math.isfinite(bound):
            verdict = "within" if kl_pooled <= bound else "ABOVE"
            print(f"\nKL(phi | phi<0): runs pooled vs MD {kl_pooled:.4f}; run A vs run B {kl_ab:.4f}{floor_txt}. "
                  f"Expected from sampling noise alone for this pair, (MD floor + A vs B) / 4 = {null:.4f}, "
                  f"95 % bound {bound:.4f}: {verdict} it\n")
        else:       # one run, or runs packed together: no A-vs-B pair to bound the noise by
            verdict = "at or below" if kl_pooled <= md["kl_floor"] else "above"
            print(f"\nKL(phi | phi<0): runs pooled vs MD {kl_pooled:.4f}{floor_txt}: {verdict} MD's floor (no pair "
                  "of separate runs, so no noise bound for the pair)\n")
        out["methods"][name].update(md_check=md_rows, kl_phi_neg_pooled_vs_md=kl_pooled, kl_phi_neg_a_vs_b=kl_ab,
                                    kl_phi_neg_null=null, kl_phi_neg_null_bound_95=bound,
                                    kl_phi_neg_at_md_floor=bool(kl_pooled <= md["kl_floor"]),
                                    kl_phi_neg_within_null=bool(kl_pooled <= bound))
    names = list(combined)
    if len(names) > 1 or args.other:
        print("### Between methods\n")
        print("| pair | dF (kT) | p(C7eq/beta) | p(alpha_R) | p(alpha_L) | p(C7ax) |")
        print("|---|---|---|---|---|---|")
        out["between"] = []
        for a, b in itertools.combinations(names, 2):
            ca, cb = combined[a], combined[b]
            zs = [z(ca[DF], cb[DF])] + [z(ca["basins"][n], cb["basins"][n]) for n in BASINS]
            out["between"].append({"pair": [a, b], "z": zs})
            print(f"| {a} vs {b} | {ca[DF]['value']:.3f} vs {cb[DF]['value']:.3f} ({zs[0]:.2f} SE) | "
                  + " | ".join(f"{zz:.2f} SE" for zz in zs[1:]) + " |")
        for oname, path in args.other:
            p = Path(path)
            eo = json.loads(p.read_text())["estimates"] if p.suffix == ".json" else json.loads(str(np.load(p)["estimates"]))
            for a in names:
                zs = [z({"value": eo[DF]["value"], "stderr": _run_se(eo[DF])}, combined[a][DF])]
                zs += [z({"value": eo["basins"][n]["value"], "stderr": _run_se(eo["basins"][n])},
                         combined[a]["basins"][n]) if n in eo.get("basins", {}) else math.nan for n in BASINS]
                out["between"].append({"pair": [oname, a], "z": zs})
                print(f"| {oname} vs {a} | {eo[DF]['value']:.3f} +- {_run_se(eo[DF]):.3f} vs "
                      f"{combined[a][DF]['value']:.3f} ({zs[0]:.2f} SE) | "
                      + " | ".join("" if math.isnan(zz) else f"{zz:.2f} SE" for zz in zs[1:]) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
