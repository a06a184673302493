"""Where the samples of a multi-well model sit, and where its one-step weights go wrong.

    python benchmarks/diag_multiwell.py CHECKPOINT [--n 8192] [--steps 1 2 8] [--off 0.5]

For SCDS's multi-well targets (mw54, mw52: log p~ = -(x_i^2 - s)^2 on the first n_dw coordinates,
wells at +-sqrt(s)) this prints, for the K-step deterministic samplers, the model's N_base-step SDE
and exact samples of the target:
- the fraction of double-well coordinates more than --off from the nearest well centre (exact
  samples: almost none, the wells have sd 1/sqrt(8 s)), and the spread of |x_i| - sqrt(s);
- the range of the 2^n_dw mode populations (exact: all equal);
- Kish ESS of the exact (or path) weights;
- for K < N_base, from the SAME prior draws as the N_base-step ODE: the median distance between
  the K-step and N_base-step endpoints, and the spread of their differences in log q and in
  log p~. If log p~ differs far more than log q, the K-step weights are wrong because the map
  puts points elsewhere (position), not because its volume is wrong;
- a histogram of the first coordinate (counts per bin);
- the self-consistency residual per distillation level: for each step size d = 1, 1/2, ... 2/N_base, the
  mean squared difference per coordinate between one step of size d and two half steps, at the states
  the d-step sampler visits (what `distill.states: flow` trains), averaged over those states.
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from molsample.estimate import ess
from molsample.flow import pf_step
from molsample.losses import self_consistency
from molsample.sde import simulate_path
from molsample.sampler import integrate
from molsample.targets.analytic import MultiWell
from molsample.train import load_checkpoint


def placement(x: np.ndarray, n_dw: int, centre: float, off: float):
    """(fraction of double-well coordinates farther than `off` from the nearest well, sd of |x| - centre,
    min and max population of the 2^n_dw sign patterns)."""
    dev = np.abs(x[:, :n_dw]) - centre
    modes = (x[:, :n_dw] > 0).astype(np.int64) @ (2 ** np.arange(n_dw))
    pops = np.bincount(modes, minlength=2**n_dw) / len(x)
    return float(np.mean(np.abs(dev) > off)), float(dev.std()), float(pops.min()), float(pops.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 8])
    ap.add_argument("--off", type=float, default=0.5, help="distance from a well centre counted as off-well")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    exp, ckpt = load_checkpoint(args.checkpoint)
    target, n_base = exp.target, exp.config.train.n_base
    if not isinstance(target, MultiWell):
        raise SystemExit(f"target {target.name!r} is not a multi-well target (mw54, mw52)")
    if exp.route != "energy":
        raise SystemExit("this diagnostic needs an energy-route checkpoint (it runs the model's SDE)")
    n_dw, centre = target.n_dw, math.sqrt(target.separation)
    print(f"# {target.name}: {args.checkpoint}, {ckpt['state']['iteration']} iterations, "
          f"{ckpt['state']['cpu_seconds'] / 60:.1f} CPU-min; n = {args.n}; off-well = more than {args.off} from "
          f"+-{centre:g} (well sd {1 / math.sqrt(8 * target.separation):.3f})")
    print("| sampler | off-well fraction | sd of abs(x) - centre | mode populations min / max | ESS | "
          "median distance to ODE endpoint | sd log q diff | sd log p diff |")
    print("|---|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(args.seed)
    x0 = exp.prior.sample(args.n, gen, dtype=exp.dtype)
    velocity = exp.velocity()
    runs = {}
    for k in sorted(set(args.steps) | {n_base}):
        x, log_q, *_ = integrate(velocity, exp.prior, x0, k, "exact", gen)
        log_p = -target.energy(x).detach()
        runs[k] = (x, log_q.detach(), log_p)
    xr, qr, pr = runs[n_base]
    hist_rows = []
    bins = np.linspace(-2 * centre, 2 * centre, 33)
    for k, (x, log_q, log_p) in runs.items():
        xn = x.double().numpy()
        frac, sd, lo, hi = placement(xn, n_dw, centre, args.off)
        e = ess((log_p - log_q).double().numpy(), n_boot=0).value
        if k == n_base:
            gap = "- | - | -"
        else:
            dist = (x - xr).norm(dim=1).median().item()
            gap = f"{dist:.3f} | {(log_q - qr).std().item():.2f} | {(log_p - pr).std().item():.2f}"
        print(f"| K = {k}{' (ODE)' if k == n_base else ''} | {frac:.3f} | {sd:.3f} | {lo:.4f} / {hi:.4f} | "
              f"{e:.5f} | {gap} |")
        hist_rows.append((f"K = {k}", np.histogram(xn[:, 0], bins)[0]))
    with torch.no_grad():
        path = simulate_path(exp.model, exp.schedule, exp.prior, target, args.n, n_base, gen, exp.dtype,
                             differentiable=False)
    xs = path.states[-1].double().numpy()
    frac, sd, lo, hi = placement(xs, n_dw, centre, args.off)
    e = ess(path.log_w.double().numpy(), n_boot=0).value
    print(f"| {n_base}-step SDE | {frac:.3f} | {sd:.3f} | {lo:.4f} / {hi:.4f} | {e:.5f} | - | - | - |")
    hist_rows.append((f"{n_base}-step SDE", np.histogram(xs[:, 0], bins)[0]))
    ref = target.sample_reference(args.n, torch.Generator().manual_seed(args.seed + 1)).numpy()
    frac, sd, lo, hi = placement(ref, n_dw, centre, args.off)
    print(f"| exact samples | {frac:.3f} | {sd:.3f} | {lo:.4f} / {hi:.4f} | 1 | - | - | - |")
    hist_rows.append(("exact", np.histogram(ref[:, 0], bins)[0]))
    print(f"\nhistogram of x_1 on [{bins[0]:g}, {bins[-1]:g}], {len(bins) - 1} bins:")
    for name, h in hist_rows:
        print(f"    {name:>14s}: " + " ".join(f"{c:4d}" for c in h))
    print("\nself-consistency residual (one step vs two half steps, mean square per coordinate):")
    for d in (2.0**-j for j in range(int(math.log2(n_base)))):
        x, res = x0, []
        with torch.no_grad():
            for k in range(round(1 / d)):
                t = torch.tensor(k * d, dtype=x.dtype)
                loss, _ = self_consistency(velocity, velocity, x, t, torch.tensor(d, dtype=x.dtype))
                res.append(loss.item())
                x = pf_step(velocity, x, t, d)
        print(f"    d = 1/{round(1 / d)}: {np.mean(res):.4f} (largest over the {len(res)} states {max(res):.4f})")


if __name__ == "__main__":
    main()
