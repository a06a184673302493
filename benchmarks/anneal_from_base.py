"""Annealed importance sampling from the structured base to the target, and a refit of the base to its particles.

A diagnostic for molecules where the base's own weights are too heavy-tailed to refit it (ala3). Particles start as
base draws in the base's latent space z = (s, eps) and are carried through pi_b ~ q^(1 - b) p^b, b = 0 .. 1 in
``--levels`` equal steps, by two Metropolis-adjusted Langevin moves per level (step size adapted towards an
acceptance of 0.6; torsions wrapped, the proposal's circular differences taken on the circle). The AIS log weights
sum (b_j - b_{j-1}) (log p - log q) over the levels: exact, so their Kish ESS says how much a short annealing adds to
the base's plain importance sampling. The base is then refitted to the weighted particles and its plain ESS
measured on fresh draws.

    OMP_NUM_THREADS=1 python benchmarks/anneal_from_base.py --system ala3 \
        --frames systems/ala3/reference/ala3_pt_2x2ns.npz --particles 4000 --levels 20
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))          # ic_base_heldout's setup


def main(argv=None) -> int:
    from ic_base_heldout import setup

    from molsample.coords.base import StructuredBase
    from molsample.coords.target import wrap
    from molsample.estimate import ess
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", default="ala3")
    ap.add_argument("--frames", default="systems/ala3/reference/ala3_pt_2x2ns.npz")
    ap.add_argument("--particles", type=int, default=4000)
    ap.add_argument("--levels", type=int, default=20)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--draws", type=int, default=20000, help="fresh draws for the refitted base's ESS (seeds 1, 2)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cart, ic, target, x, lw, recipe = setup(args.system, args.frames)
    kw = {**recipe, "local": True, "ridge": 0.1}          # the local base of benchmarks/ic_base_heldout.py
    base = StructuredBase.fit(ic, x, lw, cart.topology, **kw)
    k = len(base.soft)

    def log_p(z):
        """log p(z) up to a constant (-inf outside the domain) and its gradient, 256 rows at a time."""
        lps, grads = [], []
        for i in range(0, len(z), 256):
            zz = z[i:i + 256].detach().requires_grad_(True)
            y, ok = base.from_latent(zz)
            dom = ok & target.in_domain(y)
            u = target.energy(torch.where(dom[:, None], y, target._stand_in.to(y)))
            (g,) = torch.autograd.grad(torch.where(dom, -u, torch.zeros_like(u)).sum(), zz)
            lps.append(torch.where(dom, -u, torch.full_like(u, -math.inf)).detach())
            grads.append(g)
        return torch.cat(lps), torch.cat(grads)

    def log_q(z):
        g = torch.zeros_like(z)
        g[:, k:] = -z[:, k:]                      # the torus histograms are piecewise constant
        return base.latent_log_prob(z), g

    def circ(d):
        return torch.cat([wrap(d[:, :k]), d[:, k:]], dim=1)

    gen = torch.Generator().manual_seed(args.seed)
    c0 = time.process_time()
    n = args.particles
    z, _ = base.sample_latent(n, gen)
    (lp, gp), (lq, gq) = log_p(z), log_q(z)
    print(f"# {args.system}: {n} particles, {args.levels} levels x 2 MALA moves, local base fitted to {args.frames}\n")
    print(f"plain importance sampling of the base: Kish ESS {ess((lp - lq).numpy(), n_boot=0).value:.4f}")
    logw = torch.zeros(n, dtype=torch.float64)
    betas = np.linspace(0, 1, args.levels + 1)
    step = 0.05
    for j in range(1, args.levels + 1):
        b = betas[j]
        logw = logw + (b - betas[j - 1]) * (lp - lq)
        for _ in range(2):
            lt, gt = (1 - b) * lq + b * lp, (1 - b) * gq + b * gp
            zn = z + step * gt + math.sqrt(2 * step) * torch.randn(z.shape, generator=gen, dtype=torch.float64)
            zn = torch.cat([wrap(zn[:, :k]), zn[:, k:]], dim=1)
            (lpn, gpn), (lqn, gqn) = log_p(zn), log_q(zn)
            ltn, gtn = (1 - b) * lqn + b * lpn, (1 - b) * gqn + b * gpn
            log_a = ltn - lt - (circ(z - zn - step * gtn) ** 2).sum(1) / (4 * step) \
                + (circ(zn - z - step * gt) ** 2).sum(1) / (4 * step)
            log_a = torch.where(torch.isfinite(ltn), log_a, torch.full_like(log_a, -math.inf))
            acc = torch.log(torch.rand(n, generator=gen, dtype=torch.float64)) < log_a
            z = torch.where(acc[:, None], zn, z)
            lp, lq = torch.where(acc, lpn, lp), torch.where(acc, lqn, lq)
            gp, gq = torch.where(acc[:, None], gpn, gp), torch.where(acc[:, None], gqn, gq)
            rate = float(acc.double().mean())
            step *= math.exp(0.5 * (rate - 0.6))
        if j % 5 == 0 or j == args.levels:
            print(f"level {j}/{args.levels} (beta {b:.2f}): acceptance {rate:.2f}, step {step:.4f}, AIS Kish ESS "
                  f"{ess(logw.numpy(), n_boot=0).value:.4f}, {time.process_time() - c0:.0f} CPU-s", flush=True)
    y, _ = base.from_latent(z)
    xp, _ = target.to_cartesian(y)
    lwn = logw.numpy()
    ok = np.isfinite(lwn)
    refit = StructuredBase.fit(ic, xp.numpy()[ok], lwn[ok], cart.topology, **kw)
    for seed in (1, 2):
        yy, lqq = refit.sample(args.draws, torch.Generator().manual_seed(seed))
        print(f"base refitted to the weighted particles: Kish ESS {ess(target.log_weights(yy, lqq).numpy(), n_boot=0).value:.4f} "
              f"({args.draws:,} draws, seed {seed}); the base fitted to the frames: "
              f"{ess(target.log_weights(*base.sample(args.draws, torch.Generator().manual_seed(seed))).numpy(), n_boot=0).value:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
