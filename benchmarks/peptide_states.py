"""Each residue's phi > 0 state of a peptide with several residues: one-step samples (exact weights)
against a replica-exchange reference packed by `molsample pack-reference pt`, or against umbrella runs of one
residue each (`molsample umbrella SYSTEM --residue K`).

For every residue with a phi angle, p(0 < phi < pi) and dF = -log(p / (1 - p)) (kT) from each samples
file by self-normalised importance sampling (bootstrap error over samples), the files' mean with the
error of the mean taken as the larger of the bootstrap's and the spread over files, and the reference's
MBAR estimate with its error; the difference in combined standard errors. Also the Kish ESS, the det <= 0
count of each file and the effective draws inside each residue's phi > 0 state, on which its estimate rests.

    python benchmarks/peptide_states.py --system ala3 --reference systems/ala3/reference/ala3_pt_2x2ns.npz \
        [--reference systems/ala3/reference/ala3_pt_2x2.5ns_s34.npz] runs/ala3_eval/s1.npz runs/ala3_eval/s2.npz \
        [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    import mdtraj

    from molsample.analysis.basins import phi_positive
    from molsample.analysis.compare import delta_f_from_fraction
    from molsample.analysis.timeseries import residue_phi
    from molsample.estimate import ess, snis
    from molsample.targets import load_target
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("samples", nargs="*", help="`molsample sample` .npz files (independent seeds)")
    ap.add_argument("--system", required=True)
    ap.add_argument("--reference", required=True, action="append",
                    help="a `pack-reference pt` file with per-residue estimates, or an umbrella run of one residue "
                         "(`molsample umbrella --residue K`, its .npz or packed); given more than once, the runs of "
                         "each residue are pooled (the mean of the runs' populations, its error the larger of the "
                         "runs' spread and their own errors)")
    ap.add_argument("--against", action="append",
                    help="a second reference (files as for --reference, pooled alike): each residue's dF of the "
                         "two references and their difference in combined standard errors")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    target = load_target(args.system)
    try:
        ref_res = _pooled_reference(args.reference, target)
        other = _pooled_reference(args.against, target) if args.against else None
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    per_file = []
    for f in args.samples:
        d = np.load(f, allow_pickle=False)
        meta = json.loads(str(d["meta"]))
        names, phi = residue_phi(mdtraj.Trajectory(d["x"], target.topology))
        row = {"file": f, "ess": ess(d["log_w"], n_boot=0).value, "n": int(len(d["log_w"])),
               "det_nonpositive": meta.get("n_nonpositive_det"), "residues": {}}
        for j, name in enumerate(names):
            ind = phi_positive(phi[:, j]).astype(bool)
            est = snis(d["log_w"], ind, args.n_boot, rng)
            # effective draws inside the state (Kish, of the weights restricted to it): the estimate of p rests on
            # them, and with a few dozen its bootstrap error is not to be trusted
            n_in = float(ess(d["log_w"][ind], n_boot=0).value * ind.sum()) if ind.any() else 0.0
            row["residues"][name] = {"p": est.value, "p_se": est.stderr, "effective_in_state": n_in}
        per_file.append(row)
    out = {"system": args.system, "reference": args.reference, "files": per_file, "residues": {}}
    refs = " + ".join(Path(r).name for r in args.reference)
    lines = [f"# {args.system}: each residue's phi > 0 state, one-step samples vs {refs}", ""]
    if per_file:
        lines += ["p(phi > 0) of each residue, in brackets the effective draws (Kish) inside the state:", "",
                  "| file | Kish ESS | det <= 0 | " + " | ".join(f"p(phi > 0) {n}" for n in ref_res) + " |",
                  "|---|---|---|" + "---|" * len(ref_res)]
    for row in per_file:
        lines.append(f"| {Path(row['file']).name} | {row['ess']:.3f} | {row['det_nonpositive']} | "
                     + " | ".join(f"{row['residues'][n]['p']:.4f} +- {row['residues'][n]['p_se']:.4f} "
                                  f"({row['residues'][n]['effective_in_state']:,.0f})" for n in ref_res)
                     + " |")
    if per_file:
        lines += ["", "| residue | one-step dF (kT) | reference dF (kT) | difference (combined SE) |", "|---|---|---|---|"]
    for name in (ref_res if per_file else []):
        ps = np.array([r["residues"][name]["p"] for r in per_file])
        ses = np.array([r["residues"][name]["p_se"] for r in per_file])
        se_boot = float(np.sqrt((ses ** 2).sum()) / len(ps))
        se_spread = float(ps.std(ddof=1) / math.sqrt(len(ps))) if len(ps) > 1 else 0.0
        p, se = float(ps.mean()), max(se_boot, se_spread)
        mine = delta_f_from_fraction(p, se)
        rp = ref_res[name]
        ref_df = delta_f_from_fraction(float(rp["value"]), float(rp["stderr"]))
        dfs, dfs_se, rdf, rdf_se = mine["value"], mine["stderr"], ref_df["value"], ref_df["stderr"]
        z = (dfs - rdf) / math.hypot(dfs_se, rdf_se) if math.isfinite(dfs) and math.isfinite(rdf) else math.nan
        out["residues"][name] = {"p": p, "p_se": se, "p_se_bootstrap": se_boot, "p_se_spread": se_spread,
                                 "dF": dfs, "dF_se": dfs_se, "reference_p": rp, "reference_dF": rdf,
                                 "reference_dF_se": rdf_se, "z": z}
        lines.append(f"| {name} | {dfs:.3f} +- {dfs_se:.3f} | {rdf:.3f} +- {rdf_se:.3f} | {z:+.2f} |")
    if other is not None:
        lines += ["", "dF(phi > 0 vs phi < 0) of two references, each run's dF in brackets:", "",
                  f"| residue | reference dF (kT) | {' + '.join(Path(r).name for r in args.against)} dF (kT) | "
                  "difference (combined SE) |", "|---|---|---|---|"]
        out["against"] = {"files": args.against, "residues": {}}
        for name in ref_res:
            if name not in other:
                continue
            a = delta_f_from_fraction(float(ref_res[name]["value"]), float(ref_res[name]["stderr"]))
            b = delta_f_from_fraction(float(other[name]["value"]), float(other[name]["stderr"]))
            z = (a["value"] - b["value"]) / math.hypot(a["stderr"], b["stderr"])
            runs = lambda est: ", ".join(f"{-math.log(r['value'] / (1 - r['value'])):.2f}" if 0 < r["value"] < 1
                                         else "inf" for r in est.get("run_estimates", []))
            out["against"]["residues"][name] = {"reference_dF": a, "against_dF": b, "z": z}
            lines.append(f"| {name} | {a['value']:.3f} +- {a['stderr']:.3f} ({runs(ref_res[name])}) | "
                         f"{b['value']:.3f} +- {b['stderr']:.3f} ({runs(other[name])}) | {z:+.2f} |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def _pooled_reference(paths: list[str], target) -> dict:
    """{residue: p(phi > 0) {value, stderr, run_estimates}}: one file's own estimate, or the runs of several files
    pooled (see _pooled_runs)."""
    per_res = {}
    for path in paths:
        try:
            per = _reference_residues(Path(path), target)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        for name, est in per.items():
            per_res.setdefault(name, []).append(est)
    out = {}
    for name, ests in per_res.items():
        est = dict(ests[0]["p_phi_positive"]) if len(ests) == 1 else _pooled_runs(ests)
        est["run_estimates"] = [r for e in ests for r in e["runs"]]
        out[name] = est
    return out


def _reference_residues(path: Path, target) -> dict:
    """{residue: {"p_phi_positive": the file's estimate, "runs": [each run's p(phi > 0)]}} of a reference file: a
    replica-exchange file holds every residue's; an umbrella run (its .npz with its .json, or packed) holds the
    restrained residue's (the first residue with phi and psi unless the run chose another)."""
    from molsample.analysis.reference import _run_se
    from molsample.io import open_npz, reference_method, samples_kind
    from molsample.umbrella.windows import backbone_residues
    d = open_npz(path)
    if samples_kind(d) == "reference":
        est, method = json.loads(str(d["estimates"])), reference_method(d)
    elif samples_kind(d) == "umbrella" and path.with_suffix(".json").is_file():
        est, method = json.loads(path.with_suffix(".json").read_text())["estimates"], "umbrella"
    else:
        raise ValueError("not a packed reference or an umbrella run")
    if est.get("per_residue_phi_positive"):
        return est["per_residue_phi_positive"]
    if method != "umbrella":
        raise ValueError("no per-residue estimates (not a replica-exchange file of a peptide)")
    name = est.get("residue") or backbone_residues(target.topology)[0][0]
    runs = []
    for r in est.get("runs") or [est]:       # each run's p from its dF, with the delta-method error
        dF = r["dF_phi_positive_minus_negative_kT"]
        p = 1.0 / (1.0 + math.exp(float(dF["value"])))
        runs.append({"value": p, "stderr": _run_se(dF) * p * (1 - p)})
    p = est["p_phi_positive"]
    return {name: {"p_phi_positive": {"value": float(p["value"]), "stderr": _run_se(p)}, "runs": runs}}


def _pooled_runs(estimates: list[dict]) -> dict:
    """One p(phi > 0) from the runs of several references: the mean of every run's population, its error the larger
    of the runs' standard error of the mean and their own errors combined."""
    runs = [r for est in estimates for r in est["runs"]]
    p = np.array([r["value"] for r in runs])
    se = np.array([r["stderr"] for r in runs])
    spread = float(p.std(ddof=1) / math.sqrt(len(p)))
    return {"value": float(p.mean()), "stderr": max(spread, float(np.sqrt((se ** 2).sum()) / len(p))),
            "runs": len(p), "spread_se": spread}


if __name__ == "__main__":
    raise SystemExit(main())
