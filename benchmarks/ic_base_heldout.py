"""How well the structured base's conditional Gaussian generalises: fitted to one run's frames, scored on another's.

The base is fitted to the first half of a reference file's frames (for a packed replica-exchange reference: the
first run's 300 K frames) and scored on the second half (the other run): the mean log q of the frames it was fitted
to and of the held-out ones (the gap is what the fit learned of its own frames' noise), the spread of the
log-weights log w = -u - log q over the held-out frames (0 for a perfect base; a Kish ESS near exp(-var) when they
are near-normal), and the Kish ESS of fresh draws. Variants: the full covariance with global Fourier means, and the
local network (`base.local`) at two radii.

    OMP_NUM_THREADS=1 python benchmarks/ic_base_heldout.py --system ala3 \
        --frames systems/ala3/reference/ala3_pt_2x2ns.npz [--draws 20000 --seeds 1 2] [--refit-draws 200000]

``--refit-draws``: also refit each variant (fitted to all frames) once to that many of its own draws weighted by
w^beta for beta in 0.25, 0.5, 1 (the cross-entropy step of `base.refine_rounds`), and report the mean log q of all
frames and the ESS after the refit.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "full covariance": {},
    "local, parents sharing an atom, torsions touching (parent_bonds 0, torsion_bonds 0)":
        {"local": True, "ridge": 0.1},
    "local, one bond further (parent_bonds 1, torsion_bonds 1)":
        {"local": True, "ridge": 0.1, "parent_bonds": 1, "torsion_bonds": 1},
}


RECIPE = ROOT / "configs" / "ala3-ic.yaml"      # the untuned recipe whose base settings both variants start from


def setup(system: str, frames: str):
    """(Cartesian target, internal coordinates, internal-coordinate target, frames, their log weights, the base
    fit settings of configs/ala3-ic.yaml) for the base diagnostics in benchmarks/."""
    from molsample.coords.config import ICExperimentConfig
    from molsample.coords.target import InternalCoordinateTarget
    from molsample.coords.transform import InternalCoordinates
    from molsample.data import load_frames
    from molsample.targets import load_target
    cart = load_target(system)
    ic = InternalCoordinates(cart.topology)
    x, lw = load_frames(frames, cart)
    return cart, ic, InternalCoordinateTarget(cart, ic=ic), x, lw, ICExperimentConfig.load(RECIPE).base.fit_kwargs()


def main(argv=None) -> int:
    from molsample.coords.base import StructuredBase
    from molsample.estimate import ess
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", default="ala3")
    ap.add_argument("--frames", default="systems/ala3/reference/ala3_pt_2x2ns.npz")
    ap.add_argument("--draws", type=int, default=20000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--refit-draws", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cart, ic, target, x, lw, kw = setup(args.system, args.frames)
    half = np.arange(len(x)) < len(x) // 2

    def mean_log_q(base, frames):
        return float(base.log_prob(ic.forward(torch.as_tensor(frames, dtype=torch.float64))).mean())

    def log_w_frames(base, frames):
        y = ic.forward(torch.as_tensor(frames, dtype=torch.float64))
        return target.log_weights(y, base.log_prob(y)).numpy()

    def draws(base, n, seed):
        xs, lws = [], []
        gen = torch.Generator().manual_seed(seed)
        for start in range(0, n, 20000):
            y, log_q = base.sample(min(20000, n - start), gen)
            w, xx = target.log_weights_and_positions(y, log_q)
            xs.append(xx.numpy())
            lws.append(w.numpy())
        return np.concatenate(xs), np.concatenate(lws)

    print(f"# {args.system}: base fitted to frames 1-{half.sum()} of {args.frames}, scored on the other "
          f"{(~half).sum()}; ESS of {args.draws:,} draws per seed {args.seeds}\n")
    print("| base | fit CPU-s | mean log q, fitted frames | held-out frames | gap | sd of log w, held-out frames | "
          "Kish ESS (fit to all frames) |")
    print("|---|---|---|---|---|---|---|")
    fitted = {}
    for name, extra in VARIANTS.items():
        c0 = time.process_time()
        b = StructuredBase.fit(ic, x[half], lw[half], cart.topology, **{**kw, **extra})
        cpu = time.process_time() - c0
        tr, te = mean_log_q(b, x[half]), mean_log_q(b, x[~half])
        sd = float(np.std(log_w_frames(b, x[~half])))
        full = StructuredBase.fit(ic, x, lw, cart.topology, **{**kw, **extra})
        fitted[name] = full
        e = [ess(draws(full, args.draws, s)[1], n_boot=0).value for s in args.seeds]
        print(f"| {name} | {cpu:.2f} | {tr:.2f} | {te:.2f} | {tr - te:.2f} | {sd:.2f} | "
              f"{', '.join(f'{v:.4f}' for v in e)} |", flush=True)
    if args.refit_draws:
        print(f"\nOne refit to {args.refit_draws:,} own draws weighted by w^beta (base fitted to all frames; mean log q "
              f"over all {len(x)} frames, which the unrefitted base was fitted to; ESS of {args.draws:,} draws, "
              f"seed {args.seeds[0]}):\n")
        print("| base | beta | ESS of w^beta | mean log q of the frames | Kish ESS after |")
        print("|---|---|---|---|---|")
        for name, extra in VARIANTS.items():
            b0 = fitted[name]
            xs, lws = draws(b0, args.refit_draws, 1000 + args.seeds[0])
            ok = np.isfinite(lws)
            print(f"| {name} | unrefitted | {ess(lws, n_boot=0).value:.4f} | {mean_log_q(b0, x):.2f} | |", flush=True)
            for beta in (0.25, 0.5, 1.0):
                lb = np.where(ok, beta * lws, -np.inf)
                b1 = StructuredBase.fit(ic, xs[ok], lb[ok], cart.topology, **{**kw, **extra})
                e1 = ess(draws(b1, args.draws, args.seeds[0])[1], n_boot=0).value
                print(f"| | {beta} | {ess(lb, n_boot=0).value:.3f} | {mean_log_q(b1, x):.2f} | {e1:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
