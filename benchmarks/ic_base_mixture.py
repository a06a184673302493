"""Importance sampling of a peptide's rare states from a mixture of structured bases, each fitted to one state.

A structured base fitted to all frames proposes each residue's phi > 0 state with few effective draws (a few dozen
of 250,000 on ala3), so its estimate of p(phi > 0) rests on a handful of weights. Here the proposal is the exact
mixture q(y) = sum_c pi_c q_c(y) of the checkpoint's base (pi_0; its map, if any, is not used) and, per residue k, a base of the same settings
fitted only to the frames of the data files whose phi_k > 0 (weighted by w^power), each pi_k = (1 - pi_0) / K.
The weights -u(y) - log q(y) are exact for every draw whichever component drew it, so p(phi_k > 0) by
self-normalised importance sampling is consistent; the output is each residue's p and dF with the bootstrap error,
the effective draws inside the state, and the overall Kish ESS, per seed.

    OMP_NUM_THREADS=1 python benchmarks/ic_base_mixture.py CHECKPOINT --frames UMBRELLA_ALA2.npz \
        --frames UMBRELLA_ALA3.npz --frames UMBRELLA_ALA4.npz [--pi0 0.7] [--n 250000] [--seeds 1 2 3 4]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from molsample.analysis.basins import phi_positive
    from molsample.analysis.compare import delta_f_from_fraction
    from molsample.coords.base import StructuredBase
    from molsample.coords.model import load_internal_checkpoint
    from molsample.coords.target import InternalCoordinateTarget
    from molsample.data import load_frames
    from molsample.estimate import ess, snis
    from molsample.umbrella.windows import backbone_residues, dihedral
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--frames", action="append", required=True,
                    help="frames whose phi_k > 0 part fits residue k's component (all files pooled)")
    ap.add_argument("--power", type=float, default=0.5, help="frames weighted by w^power")
    ap.add_argument("--pi0", type=float, default=0.7, help="mixture weight of the checkpoint's base")
    ap.add_argument("--n", type=int, default=250000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if not 0 < args.pi0 < 1:
        print("--pi0 must lie in (0, 1)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    sampler, ckpt = load_internal_checkpoint(args.checkpoint)
    base0 = sampler.base
    cart, ic = sampler.cartesian, base0.ic
    target = InternalCoordinateTarget(cart, ic=ic)
    from molsample.coords.config import ICBaseConfig
    from molsample.schema import from_dict
    kw = from_dict(ICBaseConfig, ckpt["config"]["base"], "base").fit_kwargs()
    residues = backbone_residues(cart.topology)
    xs, lws = [], []
    for f in args.frames:
        x, lw = load_frames(f, cart)
        xs.append(x)
        lws.append(args.power * (lw - np.logaddexp.reduce(lw)))
    x, lw = np.concatenate(xs), np.concatenate(lws)
    comps, names = [base0], []
    for name, phi_atoms, _ in residues:
        m = dihedral(x, phi_atoms) > 0
        comps.append(StructuredBase.fit(ic, x[m], lw[m], cart.topology, **kw))
        names.append(name)
        print(f"component {name}: fitted to {int(m.sum()):,} frames with phi > 0 "
              f"(Kish {ess(lw[m], n_boot=0).value * m.sum():,.0f})", file=sys.stderr)
    log_pi = np.log(np.r_[args.pi0, np.full(len(comps) - 1, (1 - args.pi0) / (len(comps) - 1))])

    def mixture_log_q(y):
        return torch.logsumexp(torch.stack([c.log_prob(y) + float(lp) for c, lp in zip(comps, log_pi)]), dim=0)

    rng = np.random.default_rng(0)
    rows = []
    for seed in args.seeds:
        gen = torch.Generator().manual_seed(seed)
        lw_all, phis = [], []
        with torch.no_grad():
            for start in range(0, args.n, 20000):
                n = min(20000, args.n - start)
                which = torch.multinomial(torch.as_tensor(np.exp(log_pi)), n, replacement=True, generator=gen)
                ys = []
                for c, comp in enumerate(comps):
                    k = int((which == c).sum())
                    if k:
                        ys.append(comp.sample(k, gen)[0])
                y = torch.cat(ys)
                log_q = mixture_log_q(y)
                w, xx = target.log_weights_and_positions(y, log_q)
                lw_all.append(w.numpy())
                xx = xx.numpy()
                phis.append(np.stack([dihedral(xx, r[1]) for r in residues], axis=1))
        lw_s, phi = np.concatenate(lw_all), np.concatenate(phis)
        row = {"seed": seed, "ess": ess(lw_s, n_boot=0).value, "residues": {}}
        for j, name in enumerate(names):
            ind = phi_positive(phi[:, j]).astype(bool)
            est = snis(lw_s, ind, 200, rng)
            n_in = float(ess(lw_s[ind], n_boot=0).value * ind.sum()) if ind.any() else 0.0
            row["residues"][name] = {"p": est.value, "p_se": est.stderr, "effective_in_state": n_in}
        rows.append(row)
        print(f"seed {seed}: ESS {row['ess']:.4f}; " + "; ".join(
            f"{n} p {r['p']:.4f} +- {r['p_se']:.4f} ({r['effective_in_state']:,.0f})" for n, r in row["residues"].items()),
            file=sys.stderr, flush=True)
    print(f"# {cart.name}: mixture of {args.checkpoint}'s base (pi {args.pi0}) and one base per residue's phi > 0 "
          f"frames of {', '.join(args.frames)} (w^{args.power}); {args.n:,} draws per seed\n")
    print("| seed | Kish ESS | " + " | ".join(f"p(phi > 0) {n} (effective in state)" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for r in rows:
        print(f"| {r['seed']} | {r['ess']:.4f} | " + " | ".join(
            f"{r['residues'][n]['p']:.4f} +- {r['residues'][n]['p_se']:.4f} ({r['residues'][n]['effective_in_state']:,.0f})"
            for n in names) + " |")
    print("\n| residue | dF (kT), mean of the seeds' p | error: bootstrap | error: spread of the seeds |")
    print("|---|---|---|---|")
    out = {"rows": rows, "residues": {}}
    for n in names:
        ps = np.array([r["residues"][n]["p"] for r in rows])
        se_boot = float(np.sqrt(sum(r["residues"][n]["p_se"] ** 2 for r in rows)) / len(rows))
        se_spread = float(ps.std(ddof=1) / math.sqrt(len(ps))) if len(ps) > 1 else math.nan
        d_b = delta_f_from_fraction(float(ps.mean()), se_boot)
        d_s = delta_f_from_fraction(float(ps.mean()), se_spread) if len(ps) > 1 else {"stderr": math.nan}
        out["residues"][n] = {"p": float(ps.mean()), "dF": d_b["value"], "dF_se_bootstrap": d_b["stderr"],
                              "dF_se_spread": d_s["stderr"]}
        print(f"| {n} | {d_b['value']:.3f} | {d_b['stderr']:.3f} | {d_s['stderr']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
