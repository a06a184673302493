"""K-step deterministic sampling vs the model's own N_base-step SDE at EQUAL network evaluations.

    python benchmarks/bench_equal_cost.py CHECKPOINT [--sde-n 4096] [--repeats 5] [--steps 1 2 4 8]
        [--seed-offset 1000] [--draws independent|sobol ...]
    python benchmarks/bench_equal_cost.py CHECKPOINT --steps 8 1/4,1/4,1/8,1/8,1/16,1/16,1/16,1/16 ...

The SDE draws --sde-n paths of N_base steps (sde_n * N_base network evaluations). Each K-step
deterministic sampler gets the same number of evaluations: n_K = sde_n * N_base / K samples, all
with exact weights (the weights cost K exact Jacobians per sample on top, so wall time is shown
too). A step spec is K (K equal steps) or comma-separated step sizes summing to 1 (a non-uniform
schedule of as many network evaluations as sizes); every step (t, d) must be one the model was
trained on: d = 2^j / N_base and t a multiple of d. Every configuration is repeated with --repeats
independent seeds: with heavy-tailed weights a bootstrap error from one run can be too small, so
the spread over repeats is the error that counts. Columns: mean signed log Z_hat - log Z +- its standard deviation over repeats, the RMS
error over repeats, the median bootstrap error of one run, mean Kish ESS, samples with det <= 0
(all repeats), and sampling wall seconds per repeat. Prints a Markdown table.

--draws sobol repeats every configuration with randomised quasi-Monte Carlo inputs: the K-step
maps start from a scrambled Sobol' sequence of prior points, and the SDE takes its prior point and
all N_base noise vectors from one scrambled Sobol' sequence in (N_base + 1) * dof dimensions. Seed
r of a configuration is then the scrambling seed, so the spread over seeds is again the error.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from molsample.estimate import ess, log_z
from molsample.flow import SobolDraws, sobol_normal
from molsample.sde import simulate_path
from molsample.sampler import describe_steps, off_training_grid, parse_steps, sample, step_grid, steps_label
from molsample.train import load_checkpoint


def summarise(label: str, n: int, errors, stderrs, esss, n_bad, seconds) -> str:
    e = np.asarray(errors)
    spread = e.std(ddof=1) if len(e) > 1 else float("nan")
    return (f"| {label} | {n:,} | {e.mean():+.4f} +- {spread:.4f} | {np.sqrt(np.mean(e**2)):.4f} | "
            f"{np.median(stderrs):.4f} | {np.mean(esss):.5f} | {n_bad} | {np.mean(seconds):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--sde-n", type=int, default=4096, help="SDE paths; sets the evaluation budget")
    ap.add_argument("--repeats", type=int, default=5, help="independent seeds per configuration")
    ap.add_argument("--steps", nargs="+", default=None,
                    help="K values or step-size lists such as 1/2,1/4,1/4 (default 1, 2, 4, ... N_base)")
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--seed-offset", type=int, default=1000,
                    help="seed r of each configuration is seed-offset + r (another offset: an independent rerun)")
    ap.add_argument("--draws", nargs="+", choices=("independent", "sobol"), default=["independent"],
                    help="random inputs: independent draws, scrambled Sobol' (randomised QMC), or both")
    ap.add_argument("--per-seed", action="store_true",
                    help="also print each seed's error and the share of the largest weight (heavy tails show there)")
    args = ap.parse_args()
    if args.repeats < 2:
        raise SystemExit("--repeats must be at least 2 (the spread over repeats is the error)")
    exp, ckpt = load_checkpoint(args.checkpoint)
    target, n_base = exp.target, exp.config.train.n_base
    if target.log_z is None:
        raise SystemExit(f"target {target.name!r} has no exact log Z to compare with")
    try:
        steps = [parse_steps(k) for k in args.steps] if args.steps else \
            [2**j for j in range(int(np.log2(n_base)) + 1)]
    except ValueError as e:
        raise SystemExit(str(e))
    bad = [steps_label(k) for k in steps if off_training_grid(k, n_base)]
    if bad:
        raise SystemExit(f"every step must be one the model was trained on (d = 2^j / N_base with N_base = {n_base}, "
                         f"t a multiple of d); not so for {bad}")
    budget = args.sde_n * n_base
    print(f"# {target.name}: {args.checkpoint}, trained {ckpt['state']['iteration']} iterations, "
          f"{ckpt['state']['cpu_seconds'] / 60:.1f} CPU-min | {budget:,} network evaluations per estimate | "
          f"{args.repeats} seeds from {args.seed_offset} | torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, "
          f"{platform.machine()} | {time.strftime('%Y-%m-%d')}")
    print("| sampler | samples | log Z_hat - log Z (mean +- sd over seeds) | RMS error | bootstrap error (median) | "
          "ESS | det<=0 | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for draws in args.draws:
        sobol = draws == "sobol"
        tag = ", Sobol' inputs" if sobol else ""
        for k in steps:
            n = budget // len(step_grid(k))
            errs, ses, esss, n_bad, secs = [], [], [], 0, []
            for r in range(args.repeats):
                gen = torch.Generator().manual_seed(args.seed_offset + r)
                s = sample(exp.velocity(), exp.prior, target, n, k, "exact",
                           SobolDraws(args.seed_offset + r) if sobol else gen, batch_size=args.batch, dtype=exp.dtype)
                lw = s.log_w.double().numpy()
                lz = log_z(lw, rng=np.random.default_rng(r))
                errs.append(lz.value - target.log_z), ses.append(lz.stderr)
                esss.append(ess(lw, n_boot=0).value), secs.append(s.seconds)
                n_bad += s.n_nonpositive_det
                if args.per_seed:
                    print(f"#   seed {args.seed_offset + r}: log Z_hat - log Z {errs[-1]:+.4f}, largest weight "
                          f"{np.exp(lw.max() - np.logaddexp.reduce(lw)):.3f} of the total, det <= 0 at "
                          f"{s.n_nonpositive_det}", flush=True)
            print(summarise(f"{describe_steps(k)}, exact weights{tag}", n, errs, ses, esss, n_bad, secs), flush=True)
        if exp.route != "energy":
            continue
        errs, ses, esss, secs = [], [], [], []
        dof = exp.prior.space.dof
        for r in range(args.repeats):
            gen = torch.Generator().manual_seed(args.seed_offset + r)
            normals = sobol_normal(args.sde_n, (n_base + 1) * dof, args.seed_offset + r) if sobol else None
            t0 = time.perf_counter()
            with torch.no_grad():
                path = simulate_path(exp.model, exp.schedule, exp.prior, target, args.sde_n, n_base, gen,
                                     exp.dtype, differentiable=False, normals=normals)
            secs.append(time.perf_counter() - t0)
            lw = path.log_w.double().numpy()
            lz = log_z(lw, rng=np.random.default_rng(r))
            errs.append(lz.value - target.log_z), ses.append(lz.stderr), esss.append(ess(lw, n_boot=0).value)
        print(summarise(f"{n_base}-step SDE, path weights{tag}", args.sde_n, errs, ses, esss, 0, secs), flush=True)


if __name__ == "__main__":
    main()
