"""Independent halves of an umbrella reference (runs with different seeds) against each other and against
plain MD where MD is converged (phi < 0).

    python benchmarks/umbrella_halves.py runs/A.npz runs/B.npz --md systems/aldp/reference/aldp_md_2x50ns.npz

For each half: dF(phi > 0 vs phi < 0) and the four basin populations with MBAR standard errors, and
|A - B| / sqrt(se_A^2 + se_B^2) (agreement within 3 combined SE is the check). Against MD:
p(alpha_R | phi < 0) (MD error from each replica's statistical inefficiency; umbrella error from the
MBAR errors of the basins) and KL(phi | phi < 0) in the 10-degree bins of `molsample compare`, with
MD's own half-vs-half value as the floor. Extra references (--other FILE.json or compact .npz with
`estimates`) are compared on dF.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from molsample.analysis.basins import BASINS, basin_indicators, phi_positive
from molsample.analysis.compare import _md_fraction
from molsample.analysis.stats import histogram_kl
from molsample.umbrella import wrap_angle

EDGES_NEG = np.linspace(-math.pi, 0.0, 19)


def estimates(path: Path) -> dict:
    if path.suffix == ".json":
        return json.loads(path.read_text())["estimates"]
    d = np.load(path)
    if "estimates" in d:
        return json.loads(str(d["estimates"]))
    return json.loads(path.with_suffix(".json").read_text())["estimates"]


def p_alpha_r_given_neg(est: dict) -> tuple[float, float]:
    a, c = est["basins"]["alpha_R"], est["basins"]["C7eq/beta"]
    p = a["value"] / (a["value"] + c["value"])
    return p, a["stderr"] / (a["value"] + c["value"])    # the two are anticorrelated; p(phi > 0) is ~0.01


def weighted_neg(path: Path):
    d = np.load(path)
    phi, psi, lw = wrap_angle(d["phi"]), wrap_angle(d["psi"]), d["log_w"]
    w = np.exp(lw - lw.max())
    m = ~phi_positive(phi)
    return phi[m], psi[m], w[m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--md", required=True)
    ap.add_argument("--other", action="append", default=[], help="another reference to compare dF with")
    args = ap.parse_args()
    ea, eb = estimates(Path(args.a)), estimates(Path(args.b))
    z = lambda x, y: abs(x["value"] - y["value"]) / math.sqrt(x["stderr"] ** 2 + y["stderr"] ** 2)
    print("| quantity | half A | half B | |A - B| / combined SE |")
    print("|---|---|---|---|")
    key = "dF_phi_positive_minus_negative_kT"
    print(f"| dF(phi>0 vs phi<0) (kT) | {ea[key]['value']:.3f} +- {ea[key]['stderr']:.3f} | "
          f"{eb[key]['value']:.3f} +- {eb[key]['stderr']:.3f} | {z(ea[key], eb[key]):.2f} |")
    for n in BASINS:
        x, y = ea["basins"][n], eb["basins"][n]
        print(f"| p({n}) | {x['value']:.4f} +- {x['stderr']:.4f} | {y['value']:.4f} +- {y['stderr']:.4f} | {z(x, y):.2f} |")
    both = {}
    for q in [key] + [f"p({n})" for n in BASINS]:
        x, y = (ea[key], eb[key]) if q == key else (ea["basins"][q[2:-1]], eb["basins"][q[2:-1]])
        wa, wb = 1 / x["stderr"] ** 2, 1 / y["stderr"] ** 2
        both[q] = {"value": (wa * x["value"] + wb * y["value"]) / (wa + wb), "stderr": 1 / math.sqrt(wa + wb)}
    print("\nboth halves (inverse-variance mean): " + "; ".join(f"{q} {v['value']:.4f} +- {v['stderr']:.4f}"
                                                            for q, v in both.items()))
    md = np.load(args.md)
    mphi, mpsi = wrap_angle(md["phi"]), wrap_angle(md["psi"])
    neg = mphi < 0
    ind = basin_indicators(mphi, mpsi)["alpha_R"]
    p_md, se_md = _md_fraction(ind[neg], [int(neg[:s].sum()) for s in [md["segments"][0]]] +
                               [int(neg[md["segments"][0]:].sum())])
    seg = np.cumsum(md["segments"])[:-1]
    halves = [p[n] for p, n in zip(np.split(mphi, seg), np.split(neg, seg))]
    floor = histogram_kl(halves[1], halves[0], [EDGES_NEG])
    print(f"\nplain MD (phi < 0): p(alpha_R | phi<0) = {p_md:.4f} +- {se_md:.4f}; KL(phi | phi<0) floor "
          f"(replica vs replica) {floor:.4f}")
    print("| umbrella | p(alpha_R given phi<0) | minus MD / combined SE | KL(phi given phi<0) vs MD |")
    print("|---|---|---|---|")
    for label, path, est in (("A", args.a, ea), ("B", args.b, eb)):
        p, se = p_alpha_r_given_neg(est)
        phi, _, w = weighted_neg(Path(path))
        kl = histogram_kl(mphi[neg], phi, [EDGES_NEG], None, w)
        print(f"| {label} | {p:.4f} +- {se:.4f} | {(p - p_md) / math.hypot(se, se_md):+.2f} | {kl:.4f} |")
    pa, _, wa = weighted_neg(Path(args.a))
    pb, _, wb = weighted_neg(Path(args.b))
    print(f"KL(phi | phi<0) half A vs half B: {histogram_kl(pa, pb, [EDGES_NEG], wa, wb):.4f}")
    for o in args.other:
        eo = estimates(Path(o))[key]
        print(f"dF vs {o}: {eo['value']:.3f} +- {eo['stderr']:.3f}; both halves {both[key]['value']:.3f} +- "
              f"{both[key]['stderr']:.3f}: {z(eo, both[key]):.2f} combined SE apart")


if __name__ == "__main__":
    main()
