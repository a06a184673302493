"""Importance sampling of a bonded molecule in internal coordinates with NO network: how much of
the one-step sampler's job the base distribution already does.

Three proposals on the internal coordinates of the Z-matrix, each with exact densities:
  plain-frames     bonds/angles N(mean, std) from the frames, every torsion Uniform(-pi, pi]
  plain-forcefield bonds/angles N(r0 or theta0, sqrt(kT/k)) from the force field, torsions uniform
  structured       molsample.coords.StructuredBase fitted to the frames (stiff torsions with the
                   bonds and angles, means following (phi, psi), full covariance, smoothed
                   histograms on the soft torsions)
For each: Kish ESS (bootstrap error), draws outside the domain or support (weight 0), time per
sample (draw + Cartesian reconstruction + energy), and the reweighted p(phi > 0), dF(phi > 0 vs
phi < 0) and basin populations.

    python benchmarks/bench_ic_base.py --system aldp --frames systems/aldp/reference/aldp_md_2x50ns.npz --n 20000

``--frames`` takes several files, each FILE or FILE:SHARE (the share of the total weight its frames
get; default equal shares), e.g. 300 K MD with 10 % of the weight on 500 K MD frames so that the
base also proposes the states 300 K MD does not visit. ``--seeds`` repeats the draws with
independent seeds and prints the spread of each estimate beside its bootstrap error (heavy-tailed
weights make the bootstrap too small; the spread over seeds is the honest error).
"""
from __future__ import annotations

import argparse
import json
import time

import mdtraj
import numpy as np
import torch

from molsample.analysis.basins import BASINS, basin_indicators, phi_positive
from molsample.coords import InternalCoordinates
from molsample.coords.base import StructuredBase, plain_proposal
from molsample.coords.target import InternalCoordinateTarget, Whitening
from molsample.data import load_frames
from molsample.estimate import delta_f, ess, snis
from molsample.targets import load_target


def plain(ic: InternalCoordinates, whitening: Whitening):
    """N(mean, std) on bonds and angles, uniform torsions: sample(n, gen) -> (y, log q)."""
    return plain_proposal(ic, whitening.mean, whitening.std)


def setup(system: str, frames: list[str]):
    """(Cartesian target, internal coordinates, internal-coordinate target, frames, their log weights,
    structured base fitted to them, CPU-s of the fit) for ``system``."""
    cart = load_target(system)
    ic = InternalCoordinates(cart.topology)
    target = InternalCoordinateTarget(cart, ic=ic)
    x, log_w = mixed_frames(frames, cart)
    t0 = time.process_time()
    base = StructuredBase.fit(ic, x, log_w, cart.topology)
    return cart, ic, target, x, log_w, base, time.process_time() - t0


def evaluate(name, sample, target: InternalCoordinateTarget, n: int, seed: int, chunk: int = 4096) -> dict:
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    lw, phi, psi, ood, unsupported = [], [], [], 0, 0
    topology = target.topology
    for start in range(0, n, chunk):
        y, log_q = sample(min(chunk, n - start), gen)
        with torch.no_grad():
            lw.append(target.log_weights(y, log_q).numpy())
            ood += target.out_of_domain(y)
            unsupported += int((~torch.isfinite(log_q)).sum())
            x, _ = target.to_cartesian(y)
        traj = mdtraj.Trajectory(x.numpy().astype(np.float32), topology)
        phi.append(mdtraj.compute_phi(traj)[1][:, 0])
        psi.append(mdtraj.compute_psi(traj)[1][:, 0])
    seconds = time.perf_counter() - t0
    lw, phi, psi = np.concatenate(lw), np.concatenate(phi), np.concatenate(psi)
    rng = np.random.default_rng(seed)
    pos = phi_positive(phi)
    out = {"proposal": name, "n": n, "ess": ess(lw, rng=rng).as_dict(), "out_of_domain": ood,
           "outside_support": unsupported, "ms_per_sample": 1e3 * seconds / n,
           "p_phi_positive": snis(lw, pos.astype(float), rng=rng).as_dict(),
           "dF_phi_positive_minus_negative_kT": delta_f(lw, ~pos, pos, rng=rng).as_dict(),
           "raw_p_phi_positive": float(pos.mean())}
    ind = basin_indicators(phi, psi)
    out["basins"] = {b: snis(lw, ind[b].astype(float), rng=rng).as_dict() for b in BASINS}
    return out


def mixed_frames(specs: list[str], target) -> tuple[np.ndarray, np.ndarray]:
    """Frames of several files, each FILE or FILE:SHARE, with log weights giving each file its share."""
    xs, lws, shares = [], [], []
    for spec in specs:
        path, _, share = spec.partition(":")
        x, lw = load_frames(path, target)
        lw = lw - np.logaddexp.reduce(lw)                      # normalised within the file
        xs.append(x)
        lws.append(lw)
        shares.append(float(share) if share else 1.0 / len(specs))
    total = sum(shares)
    return np.concatenate(xs), np.concatenate([lw + np.log(s / total) for lw, s in zip(lws, shares)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--system", default="aldp")
    p.add_argument("--frames", nargs="+", default=["systems/aldp/reference/aldp_md_2x50ns.npz"])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=1, help="independent repeats (seeds seed, seed + 1, ...)")
    p.add_argument("--proposals", nargs="+", default=["plain-frames", "plain-forcefield", "structured"])
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cart, ic, target, x, log_w, base, fit_cpu = setup(args.system, args.frames)
    proposals = {"plain-frames": plain(ic, Whitening.from_frames(ic, x, log_w)),
                 "plain-forcefield": plain(ic, Whitening.from_forcefield(ic, cart)),
                 "structured": lambda n, gen: base.sample(n, gen)}
    rows = [evaluate(name, proposals[name], target, args.n, args.seed + k) for name in args.proposals
            for k in range(args.seeds)]
    print(f"# {args.system}: {ic.dim} internal coordinates, frames {' '.join(args.frames)} ({len(x)}), "
          f"structured base {base.describe()} fitted in {fit_cpu:.1f} CPU-s; {args.n} draws, seed {args.seed}")
    print(f"{'proposal':<18} {'ESS':>16} {'ood':>5} {'supp':>5} {'ms':>6} {'p(phi>0)':>18} {'dF (kT)':>16}")
    for r in rows:
        e, pp, df = r["ess"], r["p_phi_positive"], r["dF_phi_positive_minus_negative_kT"]
        print(f"{r['proposal']:<18} {e['value']:>8.4f} +- {e['stderr']:.4f} {r['out_of_domain']:>5d} "
              f"{r['outside_support']:>5d} {r['ms_per_sample']:>6.2f} {pp['value']:>9.5f} +- {pp['stderr']:.5f} "
              f"{df['value']:>7.3f} +- {df['stderr']:.3f}")
    if args.seeds > 1:
        for name in args.proposals:
            sel = [r for r in rows if r["proposal"] == name]
            for key in ("ess", "p_phi_positive", "dF_phi_positive_minus_negative_kT"):
                v = np.array([r[key]["value"] for r in sel])
                se = np.array([r[key]["stderr"] for r in sel])
                print(f"{name:<18} {key}: mean {v.mean():.5g}, spread over {len(v)} seeds {v.std(ddof=1):.3g} "
                      f"(standard error of the mean {v.std(ddof=1) / np.sqrt(len(v)):.3g}); median bootstrap "
                      f"error {np.median(se):.3g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "base": base.describe(), "fit_cpu_seconds": fit_cpu, "rows": rows}, f,
                      indent=2, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
