"""Which part of Neal's funnel a model reaches: the law of x_0 under its samplers, raw and reweighted.

    python benchmarks/diag_funnel.py CHECKPOINT [--n 8192] [--steps 1 4 32 1/16,1/16,1/8,1/4,1/2] [--seed 0]

For the funnel target (x_0 ~ N(0, scale^2), x_i | x_0 ~ N(0, exp(x_0))) the marginal of x_0 is known
exactly, so a sampler's coverage can be read off directly: the neck (very negative x_0, where the other
coordinates shrink to exp(x_0 / 2)) and the mouth (large x_0) are the regions a learned sampler misses,
and importance weights cannot restore mass where no sample lands. Printed per sampler (K-step
deterministic maps with exact weights, and the model's N_base-step SDE with path weights):
- quantiles of x_0, raw and self-normalised reweighted, beside the exact ones;
- the exact probability mass in the neck (x_0 < -2 scale / 3) and in the mouth (x_0 > 2 scale / 3), and the
  reweighted mass the sampler puts there;
- log of the mean weight of the samples inside each region minus the overall log Z estimate (a sampler that
  under-covers a region gives its few samples there large weights);
- Kish ESS and the log Z error of this one run.

With --consistency, also the self-consistency residual (one step of size d against two of size d / 2,
from the states of the N_base-step deterministic path at each multiple of d) per region of the path's
END point: its median size over the other coordinates in absolute units and relative to the local
scale exp(x_0 / 2) there, and the region's share of the summed squared residual (what the training loss
sees).
"""
from __future__ import annotations

import argparse
from statistics import NormalDist

import numpy as np
import torch

from molsample.estimate import ess, log_z, snis
from molsample.flow import pf_step
from molsample.losses import two_half_steps
from molsample.sde import simulate_path
from molsample.sampler import describe_steps, parse_steps, sample
from molsample.targets.analytic import Funnel
from molsample.train import load_checkpoint

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def weighted_quantiles(v: np.ndarray, log_w: np.ndarray, qs) -> np.ndarray:
    """Quantiles of v under the self-normalised weights exp(log_w)."""
    w = np.exp(log_w - log_w.max())
    order = np.argsort(v)
    cw = np.cumsum(w[order]) / w.sum()
    return v[order][np.minimum(np.searchsorted(cw, qs), len(v) - 1)]


def report(label: str, x0: np.ndarray, log_w: np.ndarray, cut: float, exact_log_z: float) -> None:
    lz = log_z(log_w, n_boot=0).value
    raw_q = np.quantile(x0, QUANTILES)
    rew_q = weighted_quantiles(x0, log_w, QUANTILES)
    print(f"| {label} | " + " | ".join(f"{a:+.2f} / {b:+.2f}" for a, b in zip(raw_q, rew_q)) + " | "
          + " | ".join(_region(log_w, lz, m) for m in (x0 < -cut, x0 > cut))
          + f" | {ess(log_w, n_boot=0).value:.4f} | {lz - exact_log_z:+.3f} |")


def _region(log_w, lz, mask) -> str:
    """Raw share / reweighted share (log mean weight in the region - log Z_hat)."""
    if not mask.any():
        return "0 samples"
    share = snis(log_w, mask, n_boot=0).value
    return f"{mask.mean():.3f} / {share:.3f} ({log_z(log_w[mask], n_boot=0).value - lz:+.2f})"


def consistency(exp, n: int, n_base: int, cut: float, seed: int, sizes=(8, 4, 2)) -> None:
    """Self-consistency residual by region of the deterministic path's end point (see module doc)."""
    velocity = exp.velocity()
    gen = torch.Generator().manual_seed(seed)
    states = [exp.prior.sample(n, gen, dtype=exp.dtype)]
    with torch.no_grad():
        for k in range(n_base):
            states.append(pf_step(velocity, states[-1], k / n_base, 1.0 / n_base))
    end, end_dim = states[-1][:, 0].double().numpy(), states[-1].shape[1]
    scale = np.exp(end / 2)
    regions = {"neck": end < -cut, "middle": np.abs(end) <= cut, "mouth": end > cut}
    print(f"\n# self-consistency residual |Phi(x; t, d) - Phi(Phi(x; t, d/2); t + d/2, d/2)| over "
          f"x_1..x_{end_dim - 1}, "
          f"by end point of the {n_base}-step deterministic path (shares: "
          + ", ".join(f"{k} {m.mean():.3f}" for k, m in regions.items())
          + "); per region: median absolute / median relative to exp(x_0 / 2) (share of the summed square)")
    print("| d | t | " + " | ".join(regions) + " |")
    print("|---|---|" + "---|" * len(regions))
    for k in sizes:
        d, m = 1.0 / k, n_base // k
        for start in range(0, n_base, m):
            x, t = states[start], start / n_base
            with torch.no_grad():
                big = pf_step(velocity, x, t, d)
            _, two = two_half_steps(velocity, x, t, d)
            err = (big - two)[:, 1:].norm(dim=1).double().numpy()
            sq = err ** 2
            cells = [f"{np.median(err[r]):.3f} / {np.median(err[r] / scale[r]):.3f} ({sq[r].sum() / sq.sum():.2f})"
                     if r.any() else "0 samples" for r in regions.values()]
            print(f"| 1/{k} | {t:.3f} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--steps", type=parse_steps, nargs="+", default=[1, 4, 32],
                    help="K equal steps or step sizes summing to 1, e.g. 1/16,1/16,1/8,1/4,1/2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--consistency", action="store_true",
                    help="also print the self-consistency residual by region of the path's end point")
    args = ap.parse_args()
    exp, ckpt = load_checkpoint(args.checkpoint)
    target, n_base = exp.target, exp.config.train.n_base
    if not isinstance(target, Funnel):
        raise SystemExit(f"target {target.name!r} is not a funnel")
    if exp.route != "energy":
        raise SystemExit("this diagnostic needs an energy-route checkpoint (it runs the model's SDE)")
    law = NormalDist(0.0, float(target.scale))     # the exact marginal of x_0
    cut = 2.0 * law.stdev / 3.0
    exact_q = [law.inv_cdf(q) for q in QUANTILES]
    tail = law.cdf(-cut)
    print(f"# {target.name}: {args.checkpoint}, {ckpt['state']['iteration']} iterations, "
          f"{ckpt['state']['cpu_seconds'] / 60:.1f} CPU-min; n = {args.n}; seed {args.seed}")
    print("# x_0 quantiles raw / reweighted (exact: " + ", ".join(f"{q}: {v:+.2f}" for q, v in zip(QUANTILES, exact_q))
          + f"); regions: neck x_0 < {-cut:.1f}, mouth x_0 > {cut:.1f}, exact mass {tail:.3f} each;"
          " region columns: raw share / reweighted share (log mean weight there - log Z_hat)")
    print("| sampler | " + " | ".join(f"q{q}" for q in QUANTILES) + " | neck | mouth | ESS | log Z error |")
    print("|---|" + "---|" * (len(QUANTILES) + 4))
    for k in args.steps:
        gen = torch.Generator().manual_seed(args.seed)
        s = sample(exp.velocity(), exp.prior, target, args.n, k, "exact", gen, dtype=exp.dtype)
        report(describe_steps(k), s.x[:, 0].double().numpy(), s.log_w.double().numpy(), cut, target.log_z)
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        path = simulate_path(exp.model, exp.schedule, exp.prior, target, args.n, n_base, gen, exp.dtype,
                             differentiable=False)
    report(f"{n_base}-step SDE", path.states[-1][:, 0].double().numpy(), path.log_w.double().numpy(), cut,
           target.log_z)
    if args.consistency:
        consistency(exp, args.n, n_base, cut, args.seed)


if __name__ == "__main__":
    main()
