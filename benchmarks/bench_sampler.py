"""The papers' table from ONE trained model: K = 1, 2, 4, ... N_base deterministic steps.

    python benchmarks/bench_sampler.py CHECKPOINT [--n 4096] [--reference 4096] [--seed 0]

For each K: |delta log Z| with `exact` and `paper` weights side by side (log Z_hat = log mean w,
bootstrap error), Kish ESS (exact weights), samples with det <= 0, the measured bijectivity
ratio, the energy distance of the raw samples to exact samples of the target, and the EUBO
(mean log w at exact target samples, log q there by inverting the K-step map; >= log Z, and
EUBO - log Z bounds how far q is from pi in forward KL). The last row
is the model's own N_base-step stochastic (Euler-Maruyama) sampler with its path weights.
Prints a Markdown table and the training cost recorded in the checkpoint.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from molsample.analysis import energy_distance
from molsample.estimate import ess, log_z
from molsample.sde import simulate_path
from molsample.estimate import eubo
from molsample.sampler import log_q_of, sample
from molsample.train import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--n", type=int, default=4096, help="samples per K")
    ap.add_argument("--reference", type=int, default=4096, help="exact target samples for the distance")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eubo", type=int, default=1024, help="exact samples used for the EUBO (0 to skip)")
    args = ap.parse_args()
    exp, ckpt = load_checkpoint(args.checkpoint)
    target, n_base = exp.target, exp.config.train.n_base
    true = target.log_z
    ref = target.sample_reference(args.reference, torch.Generator().manual_seed(args.seed + 1))
    print(f"# {target.name}: {args.checkpoint}, trained {ckpt['state']['iteration']} iterations, "
          f"{ckpt['state']['cpu_seconds'] / 60:.1f} CPU-min | {platform.node()} | {time.strftime('%Y-%m-%d')}")
    print("| K | abs dlogZ (exact) | abs dlogZ (paper) | ESS (exact) | det<=0 | bijectivity ratio | monotone | "
          "energy distance | EUBO - log Z (unconverged inversions) | sampling s (exact) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    k = 1
    while k <= n_base:
        row = {}
        for method in ("exact", "paper"):
            gen = torch.Generator().manual_seed(args.seed)
            s = sample(exp.velocity(), exp.prior, target, args.n, k, method, gen, dtype=exp.dtype)
            lw = s.log_w.double().numpy()
            row[method] = (log_z(lw, rng=np.random.default_rng(0)), s)
        lz_e, s_e = row["exact"]
        lz_p, _ = row["paper"]
        dist = energy_distance(s_e.x, ref, generator=torch.Generator().manual_seed(0))
        eu = "-"
        if args.eubo:
            y = ref[: args.eubo].to(exp.dtype)
            lq, res = log_q_of(exp.velocity(), exp.prior, y, k)
            ok = torch.isfinite(lq) & (res < 1e-4)
            lw_ref = (-target.energy(y) - lq).detach().double().numpy()
            if ok.any():
                e = eubo(lw_ref[ok.numpy()])
                eu = f"{e.value - true:.3f} +- {e.stderr:.3f} ({int((~ok).sum())})"
            else:
                eu = f"- (all {len(ok)} unconverged)"
        print(f"| {k} | {abs(lz_e.value - true):.3f} +- {lz_e.stderr:.3f} | {abs(lz_p.value - true):.3f} +- "
              f"{lz_p.stderr:.3f} | {ess(s_e.log_w.double().numpy(), n_boot=0).value:.4f} | "
              f"{s_e.n_nonpositive_det} | {s_e.lipschitz_max:.3f} | {100 * s_e.info['fraction_monotone']:.1f} % | {dist:.4f} | {eu} | {s_e.seconds:.1f} |")
        k *= 2
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        path = simulate_path(exp.model, exp.schedule, exp.prior, target, args.n, n_base, gen, exp.dtype,
                             differentiable=False)
    lw = path.log_w.double().numpy()
    lz = log_z(lw, rng=np.random.default_rng(0))
    dist = energy_distance(path.states[-1], ref, generator=torch.Generator().manual_seed(0))
    print(f"| {n_base}-step SDE (path weights) | {abs(lz.value - true):.3f} +- {lz.stderr:.3f} | - | "
          f"{ess(lw, n_boot=0).value:.4f} | - | - | - | {dist:.4f} | - | - |")
    x_ref = target.sample_reference(args.reference, torch.Generator().manual_seed(args.seed + 2))
    floor = energy_distance(x_ref, ref, generator=torch.Generator().manual_seed(0))
    print(f"\nenergy distance between two independent exact sample sets (the floor): {floor:.4f}")


if __name__ == "__main__":
    main()
