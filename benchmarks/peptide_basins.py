"""Each residue's backbone basin populations by every method at hand: a check of the references on states that are
visited often (C7eq/beta against alpha_R), where plain MD has seen many transitions.

Sources, each optional and repeatable: `molsample sample` files (exact weights, self-normalised; the files' mean
with the spread over files as the error), plain MD (a packed `pack-reference md` file or trajectories; the error from
10 blocks), umbrella runs of one residue (`molsample umbrella --residue K`, MBAR, the restrained residue only) and
packed replica-exchange references (MBAR over temperatures, the first residue only, as they store it).

    python benchmarks/peptide_basins.py --system ala3 --samples runs/ala3_eval/s1.npz ... \
        --md systems/ala3/reference/ala3_md_10ns_s5.npz --umbrella runs/umb/ala3_r1.npz ... \
        --pt systems/ala3/reference/ala3_pt_2x2ns.npz [--basin C7eq/beta]
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

    from molsample.analysis.basins import BASINS, basin_indicators
    from molsample.analysis.ensembles import load_ensemble
    from molsample.estimate import snis
    from molsample.targets import load_target
    from molsample.umbrella.windows import backbone_residues, dihedral
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", required=True)
    ap.add_argument("--samples", nargs="*", default=[])
    ap.add_argument("--md", nargs="*", default=[])
    ap.add_argument("--umbrella", nargs="*", default=[])
    ap.add_argument("--pt", nargs="*", default=[])
    ap.add_argument("--basin", default="C7eq/beta", choices=list(BASINS))
    args = ap.parse_args(argv)
    target = load_target(args.system)
    residues = backbone_residues(target.topology)
    names = [r[0] for r in residues]
    rows = []

    def angles(x):
        return [(dihedral(x, r[1]), dihedral(x, r[2])) for r in residues]

    if args.samples:
        ps = []
        for f in args.samples:
            d = np.load(f, allow_pickle=False)
            x = np.asarray(d["x"], dtype=np.float64)
            ps.append([snis(d["log_w"], basin_indicators(phi, psi)[args.basin], 0).value for phi, psi in angles(x)])
        ps = np.array(ps)
        se = ps.std(axis=0, ddof=1) / math.sqrt(len(ps)) if len(ps) > 1 else np.full(len(names), math.nan)
        rows.append((f"one-step samples, {len(ps)} files (error: their spread)", dict(zip(names, zip(ps.mean(0), se)))))
    for f in args.md:
        ens = load_ensemble([f], target)          # a packed file: its evenly spaced conformations
        est = {}
        for name, (phi, psi) in zip(names, angles(ens.x)):
            ind = basin_indicators(phi, psi)[args.basin].astype(float)
            blocks = ind[: len(ind) // 10 * 10].reshape(10, -1).mean(1)
            est[name] = (float(ind.mean()), float(blocks.std(ddof=1) / math.sqrt(10)))
        rows.append((f"plain MD, {Path(f).name} ({len(ens.x):,} conformations, 10 blocks)", est))
    for f in args.umbrella:
        e = json.loads(Path(f).with_suffix(".json").read_text())["estimates"]
        b = e["basins"][args.basin]
        rows.append((f"2D umbrella, {Path(f).name} (MBAR)", {e.get("residue", names[0]): (b["value"], b["stderr"])}))
    for f in args.pt:
        e = json.loads(str(np.load(f, allow_pickle=False)["estimates"]))
        b = e["basins"][args.basin]
        se = max(v for v in (b.get("stderr"), b.get("stderr_bootstrap")) if v is not None)
        rows.append((f"replica exchange, {Path(f).name} (MBAR)", {names[0]: (b["value"], se)}))
    print(f"# {args.system}: p({args.basin}) of each residue\n")
    print("| method | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, est in rows:
        print(f"| {label} | " + " | ".join(f"{est[n][0]:.3f} +- {est[n][1]:.3f}" if n in est else "" for n in names)
              + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
